"""`medm2g data index` through CliRunner: table on stderr, JSONL on stdout, --write, exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from typer.testing import CliRunner

from medm2g_cli.main import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from test_manifest import build_cohort  # noqa: E402  (the same real cohort the manifest tests use)

runner = CliRunner()


def test_table_and_problems_exit_zero(tmp_path):
    root = build_cohort(tmp_path / "cohort")
    result = runner.invoke(app, ["data", "index", str(root)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "chest/P0001" in result.stderr and "with problems" in result.stderr
    assert not (root / "manifest.jsonl").exists()


def test_json_lines_on_stdout_and_write(tmp_path):
    root = build_cohort(tmp_path / "cohort")
    result = runner.invoke(app, ["data", "index", str(root), "--json", "--write"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["patient_id"] for r in records] == ["P0003", "P0004", "chest/P0001", "head/P0001"]
    assert (root / "manifest.jsonl").is_file()


def test_missing_and_empty_folders_exit_two_with_one_line(tmp_path):
    result = runner.invoke(app, ["data", "index", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "no such folder" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["data", "index", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no patient folders" in result.stderr


def test_allow_irregular_reads_a_series_with_a_gap_as_a_warning(tmp_path):
    import numpy as np

    from medm2g_core import io
    from medm2g_core.types import ImageMeta

    root = tmp_path / "cohort"
    series = io.write(root / "P1" / "ct", np.zeros((8, 8, 6), np.int16), ImageMeta(spacing=(1.0, 1.0, 2.5), shape=(8, 8, 6), modality="ct"))
    sorted(series.iterdir())[2].unlink()
    (tmp_path / "seg-download.nii.gz").write_bytes(b"not read")
    (root / "P1" / "mask.nii.gz").symlink_to(tmp_path / "seg-download.nii.gz")  # an extra, listed by its own name
    strict = runner.invoke(app, ["data", "index", str(root), "--json"])
    assert strict.exit_code == 0, strict.output
    record = json.loads(strict.stdout)
    assert record["files"] == {} and "missing" in record["problems"][0]
    result = runner.invoke(app, ["data", "index", str(root), "--json", "--allow-irregular"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["files"] == {"ct": "P1/ct"} and record["extras"] == {"mask": "P1/mask.nii.gz"}
    assert record["problems"] == [] and "irregular series read anyway" in record["warnings"][0]
    assert "1 with warnings" in result.stderr
    table = runner.invoke(app, ["data", "index", str(root), "--allow-irregular"])
    assert table.exit_code == 0 and "warning:" in table.stderr and "(+ mask)" in table.stderr
