"""`medm2g data import brats|aanlib|kermany|ixi --register` end to end through the real CLI on the real
samples in ../shared/data (read in place, small subsets; skipped where the data is absent)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from medm2g_cli.main import app
from medm2g_core import io
from medm2g_core.modalities import CT_WINDOW_8BIT_UNITS

runner = CliRunner()


def _import(*args: str) -> dict:
    result = runner.invoke(app, ["data", "import", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip())


def _index(cohort: Path) -> list[dict]:
    result = runner.invoke(app, ["data", "index", str(cohort), "--json"])
    assert result.exit_code in (0, 1), result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _splits(cohort: Path) -> dict[str, str]:
    data = json.loads((cohort / "splits.json").read_text())
    return {pid: name for name, ids in data.items() for pid in ids}


def test_brats_real_four_contrasts_on_one_grid(shared_set, tmp_path: Path) -> None:
    source = shared_set("brain_mri_brats")
    summary = _import("brats", str(source), "--out", str(tmp_path / "c"))
    assert summary["patients"] == 3 and summary["problems"] == []
    assert summary["files"] == {f"mri-{c}.nii.gz": 3 for c in ("flair", "t1", "t1c", "t2")}
    assert summary["splits"] == {"train": 2, "test": 1}  # a subject held out, never slices of one
    records = _index(tmp_path / "c")
    assert len(records) == 3 and all(r["problems"] == [] for r in records)  # the four contrasts share a grid
    assert {tuple(s) for r in records for s in r["shapes"].values()} == {(240, 240, 155)}
    assert os.readlink(tmp_path / "c" / "TCGA-DU-7294" / "mri-t1c.nii.gz").endswith("TCGA-DU-7294/t1c.nii.gz")


def test_aanlib_real_cases_split_by_case_ct_never_hu(shared_set, tmp_path: Path) -> None:
    source = shared_set("ct_mri_brain_aanlib")
    summary = _import("aanlib", str(source), "--out", str(tmp_path / "c"), "--limit", "2")
    assert summary["patients"] == 8 and summary["problems"] == [] and summary["mode"] == "converted"
    assert summary["splits"] == {"train": 6, "val": 1, "test": 1}
    ct, ct_meta = io.read(tmp_path / "c" / "case16" / "ct.nii.gz")
    mri, mri_meta = io.read(tmp_path / "c" / "case16" / "mri-t2.nii.gz")
    assert ct.shape == mri.shape == (256, 256, 2) and ct.dtype == np.uint8 and ct_meta.same_grid(mri_meta)
    assert ct_meta.units == CT_WINDOW_8BIT_UNITS and ct.max() == 255  # bone saturated: a window, not HU
    from PIL import Image

    first = json.loads((tmp_path / "c" / "case16" / "slices.json").read_text())["slices"][0]
    assert np.array_equal(ct[:, :, 0], np.asarray(Image.open(source / "ct" / first)))  # pixels as the source has them
    assert all(r["problems"] == [] for r in _index(tmp_path / "c"))


def test_kermany_real_split_by_child_with_label_text(shared_set, tmp_path: Path) -> None:
    source = shared_set("cxr_pediatric_pneumonia")
    summary = _import("kermany", str(source), "--out", str(tmp_path / "c"), "--limit", "4", "--seed", "1")
    assert summary["problems"] == [] and summary["files"]["xray.jpeg"] == summary["patients"] >= 12
    cohort = tmp_path / "c"
    where = _splits(cohort)
    children: dict[str, set[str]] = {}
    for patient_id, split in where.items():
        child = patient_id.split("_")[0] if patient_id.startswith("person") else patient_id.rsplit("-", 1)[0]
        children.setdefault(child, set()).add(split)
    assert all(len(splits) == 1 for splits in children.values())  # one child, one split
    assert any(len([p for p in where if p.startswith(c + "_")]) > 1 for c in children if c.startswith("person"))
    report = io.read_report(cohort / "person1_bacteria_1" / "report.txt")
    assert report.label_derived and "Bacterial pneumonia" in report.impression
    assert (cohort / "person1_bacteria_1" / "report.txt").read_text().startswith("# LABEL-DERIVED")
    records = _index(cohort)
    assert all(r["problems"] == [] and set(r["files"]) == {"xray", "report"} for r in records)


def test_ixi_register_puts_t2_on_the_t1_grid(shared_set, tmp_path: Path) -> None:
    source = shared_set("brain_mri_ixi002")
    plain = _import("ixi", str(source), "--out", str(tmp_path / "plain"))
    assert plain["problems"] == []
    assert any("different grids" in p for p in _index(tmp_path / "plain")[0]["problems"])
    summary = _import("ixi", str(source), "--out", str(tmp_path / "c"), "--register")
    assert summary["problems"] == [] and summary["files"] == {"mask.nii.gz": 1, "mri-t1.nii.gz": 1, "mri-t2.nii.gz": 1}
    patient = tmp_path / "c" / "IXI002-Guys-0828"
    assert not (patient / "mri-t2.nii.gz").is_symlink() and (patient / "mri-t1.nii.gz").is_symlink()
    t1, t1_meta = io.read(patient / "mri-t1.nii.gz")
    t2, t2_meta = io.read(patient / "mri-t2.nii.gz")
    mask, _ = io.read(patient / "mask.nii.gz")
    assert t2_meta.same_grid(t1_meta) and t2.dtype == np.int16
    assert "scanner affines" in t2_meta.extra["registration"]["method"]
    assert t2_meta.extra["registration"]["from_shape"] == [256, 256, 130]
    # the resampled T2 brain lies inside the T1 brain mask (skull-stripped both): same anatomy per voxel
    assert (t2[mask > 0] > 0).mean() > 0.99 and (t2[mask == 0] > 0).mean() < 0.05
    assert _index(tmp_path / "c")[0]["problems"] == []
    assert _import("ixi", str(source), "--out", str(tmp_path / "c"), "--register")["written"] == 0  # re-run: unchanged


def test_aanlib_ct_is_evaluated_in_grey_levels_never_hu(shared_set, tmp_path: Path) -> None:
    source = shared_set("ct_mri_brain_aanlib")
    _import("aanlib", str(source), "--out", str(tmp_path / "ref"), "--limit", "2")
    ct, meta = io.read(tmp_path / "ref" / "case16" / "ct.nii.gz")
    noisy = np.clip(ct.astype(np.int16) + np.random.default_rng(0).integers(-4, 5, ct.shape), 0, 255).astype(np.uint8)
    io.write(tmp_path / "pred" / "case16" / "ct.nii.gz", noisy, meta)
    result = runner.invoke(app, ["evaluate", "--task", "translation", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["systems"]["model"]["metrics"]
    assert metrics and not any("HU" in name or metric["unit"] == "HU" for name, metric in metrics.items())
    mae = metrics["ct: MAE[8-bit window, grey levels, mask]"]
    assert mae["unit"] == "grey levels" and 1.0 < mae["value"] < 3.0  # |uniform −4..4| ≈ 2.2 grey levels
