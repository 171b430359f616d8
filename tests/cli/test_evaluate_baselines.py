"""`medm2g evaluate --baseline identity --baseline regression --model BUNDLE`: model and baselines in one table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "baselines"))
from baseline_fixtures import build_with_baselines  # noqa: E402

from medm2g_cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_with_baselines(tmp_path_factory.mktemp("evaluate-baselines"))


def _model_predictions(head: Path, out: Path) -> Path:
    """A stand-in "model": each reference CT plus noise, on the reference grid."""
    from medm2g_core import io

    rng = np.random.default_rng(0)
    for ct in sorted(head.glob("*/ct.nii.gz")):
        image, meta = io.read(ct)
        io.write(out / ct.parent.name / "ct.nii.gz", (image + rng.normal(0, 30, image.shape)).astype(np.int16), meta.replace(synthetic=True))
    return out


def test_evaluate_prints_model_and_bundle_baselines_in_one_table(built, tmp_path):
    pred = _model_predictions(built["head"], tmp_path / "pred")
    args = ["evaluate", "--task", "translation", "--pred", str(pred), "--ref", str(built["head"]), "--model", str(built["bundle"]),
            "--baseline", "identity", "--baseline", "regression", "--baseline-out", str(tmp_path / "kept")]
    result = runner.invoke(app, args, env={"COLUMNS": "240"})  # wide enough that rich keeps one header line
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "metric" in line)
    assert "model" in header and "identity" in header and "regression" in header
    assert any("PSNR" in line for line in result.output.splitlines())
    assert (tmp_path / "kept" / "identity" / "P0001" / "ct.nii.gz").is_file()

    result = runner.invoke(app, [*args[:-2], "--json"])
    data = json.loads(result.stdout.strip().splitlines()[-1])
    name = "ct: PSNR[synthrad, HU -1024..3000, mask: HU>-500]"
    psnr = {system: data["systems"][system]["metrics"][name]["value"] for system in ("model", "identity", "regression")}
    assert psnr["model"] > psnr["identity"] and psnr["model"] > psnr["regression"], psnr


def test_missing_fitted_baseline_is_a_usage_error(built, tmp_path):
    import shutil

    bundle = tmp_path / "copy.m2g"
    shutil.copytree(built["bundle"], bundle)
    shutil.rmtree(bundle / "baselines" / "mri-t1__ct-regression")
    pred = _model_predictions(built["head"], tmp_path / "pred")
    result = runner.invoke(app, ["evaluate", "--task", "translation", "--pred", str(pred), "--ref", str(built["head"]),
                                 "--model", str(bundle), "--baseline", "regression"])
    assert result.exit_code == 2 and "regression" in result.output
    assert "medm2g train-flow --pair mri-ct" in " ".join(result.output.split()) and "--baselines" in result.output


def test_regression_baseline_is_mirrored_when_the_predictions_were(built, tmp_path):
    """Predictions written by `translate --mirror` (their run.json says so): the regression baseline is translated with
    the same test-time mirroring, so model and baseline are compared at equal inference."""
    from medm2g_core import io

    pred = _model_predictions(built["head"], tmp_path / "pred")
    kept = {}
    for mirrored in (False, True):
        (pred / "run.json").write_text(json.dumps({"command": "translate", "arguments": {"to": "ct", "mirror": mirrored}}))
        out = tmp_path / f"kept-{mirrored}"
        result = runner.invoke(app, ["evaluate", "--task", "translation", "--pred", str(pred), "--ref", str(built["head"]),
                                     "--model", str(built["bundle"]), "--baseline", "regression", "--baseline-out", str(out), "--json"])
        assert result.exit_code == 0, result.output
        kept[mirrored] = io.read(out / "regression" / "P0001" / "ct.nii.gz")[0]
    assert kept[False].shape == kept[True].shape
    assert float(np.abs(kept[True].astype(np.float32) - kept[False]).mean()) > 0.5  # the regression is deterministic
    # shards of one folder translated both ways: refused, not scored against either
    (pred / "run.shard-1-of-2.json").write_text(json.dumps({"command": "translate", "arguments": {"to": "ct"}}))
    result = runner.invoke(app, ["evaluate", "--task", "translation", "--pred", str(pred), "--ref", str(built["head"]),
                                 "--model", str(built["bundle"]), "--baseline", "regression"])
    assert result.exit_code == 2 and "--mirror" in result.output
