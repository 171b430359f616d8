"""`medm2g translate` CLI: options reach the core unchanged; usage errors exit 2 with one line; stdout only --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medm2g_cli.main import app
from medm2g_core.jobs import runs as batch
from medm2g_core.modalities import Modality

runner = CliRunner()


def test_options_reach_the_core(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict = {}

    def fake(inputs, **kwargs):
        seen.update(kwargs, inputs=inputs)
        item = batch.ItemResult("a.nii.gz", "ok", output="out/P/ct.nii.gz")
        kwargs["on_result"](item)
        return batch.BatchResult(items=[item], seconds=0.1)

    monkeypatch.setattr("medm2g_core.jobs.translate.translate_batch", fake)
    result = runner.invoke(app, ["translate", "a.nii.gz", "-", "--to", "ct", "--from", "mri-t2,mri-pd", "--out", str(tmp_path),
                                 "--samples", "4", "--seed", "7", "--shard", "1/3", "--device", "cpu", "--batch-size", "16",
                                 "--skip-existing", "--max-memory", "2G", "--weights", "0.7,0.3", "--json"])
    assert result.exit_code == 0, result.output
    assert seen["inputs"] == ["a.nii.gz", "-"]
    # the CLI parses flag syntax; the core receives typed values
    assert seen["to"] is Modality.CT and seen["sources"] == (Modality.MRI_T2, Modality.MRI_PD) and seen["out"] == tmp_path
    assert (seen["samples"], seen["seed"], seen["shard"], seen["device"], seen["batch_size"]) == (4, 7, (1, 3), "cpu", 16)
    assert seen["skip_existing"] and seen["max_memory"] == 2 * 2**30 and seen["weights"] == [0.7, 0.3]
    assert json.loads(result.stdout.strip().splitlines()[-1])["status"] == "ok"


def test_failed_inputs_exit_1_with_one_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(inputs, **kwargs):
        items = [batch.ItemResult("good", "ok"), batch.ItemResult("bad.nii.gz", "failed", message="bad.nii.gz: not a readable NIfTI file")]
        for item in items:
            kwargs["on_result"](item)
        return batch.BatchResult(items=items)

    monkeypatch.setattr("medm2g_core.jobs.translate.translate_batch", fake)
    result = runner.invoke(app, ["translate", "good", "bad.nii.gz", "--to", "ct"])
    assert result.exit_code == 1
    assert "bad.nii.gz: not a readable NIfTI file" in result.stderr
    assert result.stdout == ""  # nothing on stdout without --json


def test_zero_inputs_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["translate", "-", "--to", "ct", "--model", str(tmp_path)], input="")
    assert result.exit_code == 2
    assert "no inputs" in result.stderr and "Traceback" not in result.output


def test_no_model_tells_the_user_to_run_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDM2G_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEDM2G_MODEL", raising=False)
    scan = tmp_path / "P0001" / "mri-t1.nii.gz"
    scan.parent.mkdir()
    scan.write_bytes(b"x")
    result = runner.invoke(app, ["translate", str(scan), "--to", "ct"])
    assert result.exit_code == 2
    assert "medm2g demo" in result.stderr and "--model" in result.stderr


def test_missing_cuda_device_is_exit_2_not_a_fallback(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text('{"format_version": 1}')
    scan = tmp_path / "P0001" / "mri-t1.nii.gz"
    scan.parent.mkdir()
    scan.write_bytes(b"x")
    result = runner.invoke(app, ["translate", str(scan), "--to", "ct", "--model", str(bundle), "--device", "cuda:0"])
    assert result.exit_code == 2 and "no CUDA device" in result.stderr


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--to", "report"], "use `medm2g generate"),
        (["--to", "ct", "--format", "png"], "--format 'png'"),
        (["--to", "ct", "--overwrite", "--skip-existing"], "contradict"),
        (["--to", "ct", "--shard", "3/3"], "--shard"),
        (["--to", "ct", "--out", "x", "-o", "y.nii.gz"], "either --out DIR or -o FILE"),
    ],
)
def test_usage_errors_exit_2(arguments: list[str], message: str) -> None:
    result = runner.invoke(app, ["translate", "in.nii.gz", *arguments])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
