"""`medm2g demo --real --quick` end to end on the real samples in ../shared/data (read in place; skipped where absent).

The data root holds only the AANLIB slice pairs and the IU X-ray reports (links to the shared folders), so BraTS, IXI
and the paediatric X-rays are the missing sets that must each be skipped with one line — and the run stays short
(the volumes are the slow part; the X-rays have their own test, ``test_demo_real_cxr.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medm2g_cli.main import app
from medm2g_core import io
from medm2g_core.modalities import CT_WINDOW_8BIT_UNITS

runner = CliRunner()


@pytest.fixture(scope="module")
def real_demo(shared_set, tmp_path_factory: pytest.TempPathFactory) -> dict:
    sources = {name: shared_set(name) for name in ("ct_mri_brain_aanlib", "iu_xray")}
    root = tmp_path_factory.mktemp("data-root")
    for name, source in sources.items():
        (root / name).symlink_to(source, target_is_directory=True)
    out = tmp_path_factory.mktemp("real") / "demo"
    result = runner.invoke(app, ["demo", "--real", "--quick", "--data-root", str(root), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return {"out": out, "root": root, "stdout": result.stdout, "stderr": result.stderr}


def test_each_missing_set_is_skipped_with_one_line(real_demo: dict) -> None:
    lines = [line for line in real_demo["stderr"].splitlines() if "skipped" in line]
    folders = {"brats": "brain_mri_brats", "ixi": "brain_mri_ixi002", "kermany": "cxr_pediatric_pneumonia"}
    assert sorted(line.split(":")[0] for line in lines) == [f"skipped {key}" for key in sorted(folders)]
    assert all(folders[line.split(":")[0].split()[1]] in line for line in lines)
    summary = json.loads((real_demo["out"] / "summary.json").read_text())
    assert sorted(summary["skipped"]) == sorted(folders) and sorted(summary["sets"]) == ["aanlib", "iu"]


def test_summary_has_every_task_beside_its_baselines_and_budgets(real_demo: dict) -> None:
    summary = json.loads((real_demo["out"] / "summary.json").read_text())
    assert summary["real"] is True and summary["synthetic"] is False and summary["quick"] is True
    rows = {(row["task"], row["system"]): row for row in summary["rows"]}
    assert {("t2-ct", "model"), ("t2-ct", "identity"), ("t2-ct", "regression"), ("report-autoencoder", "model")} <= set(rows)
    model, regression = rows[("t2-ct", "model")], rows[("t2-ct", "regression")]
    assert model["budget"]["steps"] == regression["budget"]["steps"] > 0 and model["budget"]["seconds"] > 0
    # the plain peer (benchmarks/peer.py) trained for the flow's wall-clock seconds, scored in the same table
    peer = rows[("t2-ct", "peer")]
    assert peer["budget"]["seconds"] == pytest.approx(model["budget"]["seconds"], abs=0.1) and peer["budget"]["steps"] > 0
    assert {"MAE", "PSNR dB", "SSIM"} <= set(peer["metrics"])
    # model, regression and peer at equal inference: all three translated with test-time mirroring
    assert summary["settings"]["mirror"] is True
    assert json.loads((real_demo["out"] / "predictions" / "t2-ct" / "model" / "run.json").read_text())["arguments"]["mirror"]
    assert any((real_demo["out"] / "peer" / "t2-ct-mirror").rglob("*.nii.gz"))
    assert {"MAE", "PSNR dB", "SSIM"} <= set(model["metrics"]) and "8-bit" in model["convention"]  # grey levels, never HU
    assert model["held_out"] == 2  # two held-out AANLIB cases (val + test), never trained on
    text = rows[("report-autoencoder", "model")]
    assert 0.0 <= text["metrics"]["ROUGE-L"] <= 1.0 and text["budget"]["steps"] > 0 and text["held_out"] > 0
    for name in ("report.html", "montage.png", "summary.json"):
        assert (real_demo["out"] / name).stat().st_size > 0
    assert "REAL DATA" in (real_demo["out"] / "report.html").read_text(encoding="utf-8")
    # the CLI's --json carries the same rows, and stdout holds nothing else
    assert json.loads(real_demo["stdout"])["rows"] == summary["rows"]


def test_bundle_records_real_data_and_its_outputs_are_not_called_phantoms(real_demo: dict, tmp_path: Path) -> None:
    bundle = real_demo["out"] / "real.m2g"
    data = json.loads((bundle / "bundle.json").read_text())["data"]
    assert data["real"] is True and data["synthetic"] is False
    assert sorted(data["real_sets"]) == ["aanlib", "iu"] and "CC BY-NC-ND 4.0" in data["real_sets"]["iu"]
    assert "AANLIB" in data["real_sets"]["aanlib"]
    assert "Trained on real public scans" in (bundle / "README.md").read_text(encoding="utf-8")
    splits = json.loads((real_demo["out"] / "cohort" / "brain" / "aanlib" / "splits.json").read_text())
    case = sorted(splits["test"])[0]
    source = real_demo["out"] / "cohort" / "brain" / "aanlib" / case / "mri-t2.nii.gz"
    result = runner.invoke(app, ["translate", str(source), "--to", "ct", "--model", str(bundle), "--out", str(tmp_path / "ct")])
    assert result.exit_code == 0, result.output
    assert "phantom" not in result.output.lower()
    written = tmp_path / "ct" / case / "ct.nii.gz"
    image, meta = io.read(written)
    _, source_meta = io.read(source)
    assert meta.units == CT_WINDOW_8BIT_UNITS and 0 <= float(image.min()) and float(image.max()) <= 255  # never HU
    assert meta.same_grid(source_meta, tolerance_mm=1e-3)  # the output overlays its input
    card = json.loads(next((tmp_path / "ct" / case).glob("*.json")).read_text())
    assert card["trained_on_synthetic_phantoms"] is False and sorted(card["trained_on_real_data"]) == ["aanlib", "iu"]


def test_no_set_under_the_root_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--real", "--data-root", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "brain_mri_brats/" in result.output and "--data-root" in result.output


def test_data_root_needs_real(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--data-root", str(tmp_path)])
    assert result.exit_code == 2 and "--real" in result.output


def test_a_missing_device_is_refused_before_any_set_is_imported(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is for machines without it")
    result = runner.invoke(app, ["demo", "--real", "--device", "cuda", "--data-root", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "cuda" in result.output.lower()
    assert not (tmp_path / "out").exists()
