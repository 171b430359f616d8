"""scan_cohort on a small real cohort written with medm2g_core.io: what it finds and the problems it names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medm2g_core import io
from medm2g_core.data.manifest import MANIFEST_NAME, scan_cohort, write_manifest
from medm2g_core.errors import InputError
from medm2g_core.modalities import Modality
from medm2g_core.types import ImageMeta

GRID = ImageMeta(spacing=(2.0, 2.0, 3.0), origin=(-16.0, -16.0, 10.0), shape=(16, 16, 6))


def build_cohort(root: Path) -> Path:
    """chest/P0001 complete and clean; head/P0001 with a DICOM series on another grid than its CT;
    P0003 with every kind of damage."""
    rng = np.random.default_rng(0)
    good = root / "chest" / "P0001"
    io.write(good / "ct.nii.gz", rng.integers(-1000, 1000, GRID.shape).astype(np.int16), GRID.replace(modality="ct", units="HU", synthetic=True))
    io.write(good / "mri-t1.nii.gz", rng.random(GRID.shape, dtype=np.float32), GRID.replace(modality="mri-t1", synthetic=True))
    io.write(good / "xray.png", rng.integers(0, 65535, (32, 24)).astype(np.uint16), ImageMeta(spacing=(0.5, 0.5), shape=(32, 24), modality="xray"))
    io.write_report(good / "report.txt", io.Report.from_sections(findings="Clear lungs.", impression="Normal."), synthetic=True)
    (good / "labels.json").write_text(json.dumps({"cardiomegaly": 0, "effusion": 1}))
    (good / "ct.nii.gz.json").write_text("{}")  # a sidecar: ignored

    head = root / "head" / "P0001"
    io.write(head / "ct.nii.gz", np.zeros(GRID.shape, np.int16), GRID.replace(modality="ct", units="HU"))
    other = GRID.replace(spacing=(1.0, 1.0, 3.0), modality="mri-t1")
    io.write(head / "mri-t1", rng.integers(0, 900, GRID.shape).astype(np.int16), other)  # DICOM series folder

    bad = root / "P0003"
    path = io.write(bad / "ct.nii.gz", rng.integers(-1000, 1000, (40, 40, 30)).astype(np.int16), GRID.replace(shape=(40, 40, 30)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    io.write(bad / "xray.nii.gz", np.zeros((8, 8, 4), np.uint8), GRID.replace(shape=(8, 8, 4)))
    (bad / "report.txt").write_text("  \n")
    (bad / "notes.docx").write_bytes(b"PK\x03\x04")
    (bad / "labels.json").write_text("[1, 2]")
    latin = root / "P0004"
    latin.mkdir()
    (latin / "report.txt").write_bytes("Befund: vergr\u00f6\u00dfert".encode("latin-1"))
    (root / "README.md").write_text("not a patient")
    return root


def by_id(records):
    return {record.patient_id: record for record in records}


def test_scan_finds_nested_patients_and_names_problems(tmp_path):
    records = by_id(scan_cohort(build_cohort(tmp_path / "cohort")))
    assert sorted(records) == ["P0003", "P0004", "chest/P0001", "head/P0001"]

    good = records["chest/P0001"]
    assert set(good.files) == {Modality.CT, Modality.MRI_T1, Modality.XRAY, Modality.REPORT}
    assert good.labels == {"cardiomegaly": 0, "effusion": 1}
    assert good.shapes[Modality.XRAY] == (32, 24) and good.spacings[Modality.CT] == (2.0, 2.0, 3.0)
    assert good.synthetic
    assert [p for p in good.problems if "duplicate" not in p] == []

    head = records["head/P0001"]
    assert head.files[Modality.MRI_T1].is_dir() and head.shapes[Modality.MRI_T1] == (16, 16, 6)
    assert any("different grids" in p for p in head.problems)
    assert any("duplicate patient folder name 'P0001'" in p for p in head.problems)
    assert any("duplicate patient folder name 'P0001'" in p for p in good.problems)

    bad = records["P0003"].problems
    assert any(p.startswith("ct.nii.gz:") and "truncated" in p for p in bad), bad
    assert any("X-ray is not 2D" in p for p in bad)
    assert any(p == "report.txt: empty report" for p in bad)
    assert any(p.startswith("notes.docx: unrecognised file") for p in bad)
    assert any(p.startswith("labels.json:") for p in bad)
    assert any("not UTF-8" in p for p in records["P0004"].problems)


def test_write_manifest_is_jsonl_with_relative_paths(tmp_path):
    root = build_cohort(tmp_path / "cohort")
    path = write_manifest(root, scan_cohort(root))
    assert path == root / MANIFEST_NAME
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    first = next(line for line in lines if line["patient_id"] == "chest/P0001")
    assert first["files"]["ct"] == "chest/P0001/ct.nii.gz" and first["folder"] == "chest/P0001"
    assert first["labels"] == {"cardiomegaly": 0, "effusion": 1}
    assert len(lines) == 4
    # Re-indexing with the manifest present finds the same patients.
    assert len(scan_cohort(root)) == 4


def test_root_errors(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        scan_cohort(tmp_path / "missing")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InputError, match="no patient folders"):
        scan_cohort(tmp_path / "empty")
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        scan_cohort(file)
