"""`medm2g data import`: the command passes its options to the core, renders, and maps errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medm2g_cli.main import app
from medm2g_core.data.importers import ImportResult
from medm2g_core.modalities import Modality

runner = CliRunner()


def test_passes_options_to_the_core(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict = {}

    def fake_import(dataset, source, **kwargs):
        seen.update(dataset=dataset, source=source, **kwargs)
        return ImportResult(dataset=dataset, source=Path(source), out=Path(kwargs["out"]), patients=3)

    monkeypatch.setattr("medm2g_core.data.importers.import_dataset", fake_import)
    result = runner.invoke(app, ["data", "import", "synthrad", str(tmp_path), "--out", str(tmp_path / "c"), "--copy", "--mr-as", "t1", "--json"])
    assert result.exit_code == 0, result.output
    assert seen["dataset"] == "synthrad" and seen["source"] == tmp_path
    assert seen["out"] == tmp_path / "c" and seen["copy"] is True and seen["mr_modality"] is Modality.MRI_T1
    assert callable(seen["progress"])
    assert json.loads(result.stdout.strip())["patients"] == 3


def test_bad_mr_as_is_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "import", "synthrad", str(tmp_path), "--out", str(tmp_path / "c"), "--mr-as", "ct"])
    assert result.exit_code == 2
    assert "--mr-as" in result.output


def test_missing_source_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "import", "iu-xray", str(tmp_path / "nope"), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_unknown_dataset_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "import", "chexpert", str(tmp_path), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert "iu-xray" in result.output


def test_problems_give_exit_1_and_are_listed(tmp_path: Path) -> None:
    source = tmp_path / "iu" / "ecgen-radiology"
    source.mkdir(parents=True)
    (source / "1.xml").write_text("<eCitation><AbstractText Label='IMPRESSION'>Normal.</AbstractText></eCitation>")
    (source / "2.xml").write_text("<eCitation>broken")
    result = runner.invoke(app, ["data", "import", "iu-xray", str(tmp_path / "iu"), "--out", str(tmp_path / "c")])
    assert result.exit_code == 1
    assert "CXR2" in result.output and "not well-formed" in result.output
    assert (tmp_path / "c" / "CXR1" / "report.txt").is_file()


def test_imported_real_iu_xray_passes_data_index(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "iu_xray"
    if not source.is_dir():
        pytest.skip("no iu_xray in shared data")
    imported = runner.invoke(app, ["data", "import", "iu-xray", str(source), "--out", str(tmp_path / "c"), "--json"])
    assert imported.exit_code == 0, imported.output
    summary = json.loads(imported.stdout.strip())
    assert summary["patients"] == 3336 and summary["reports_only"] == 3334 and summary["problems"] == []
    assert summary["splits"] == {"train": 2069, "val": 296}
    result = runner.invoke(app, ["data", "index", str(tmp_path / "c"), "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(records) == 3336
    assert sum(1 for r in records if set(r["files"]) == {"report"}) == 3334
    assert {r["patient_id"] for r in records if "xray" in r["files"]} == {"CXR7", "CXR1900"}
    # Imported files are symlinks into ../shared/data: index lists them by their place in the cohort.
    cxr7 = next(r for r in records if r["patient_id"] == "CXR7")
    assert cxr7["files"] == {"xray": "CXR7/xray.png", "report": "CXR7/report.txt"}
    assert cxr7["extras"] == {"xray-lateral": "CXR7/xray-lateral.png"}
    assert all(r["problems"] == [] for r in records)
