from __future__ import annotations

import json
import sys
from pathlib import Path

from typer.testing import CliRunner

from medm2g_cli.main import app

sys.path.insert(0, str(Path(__file__).parents[1] / "flows"))
from flow_fixtures import build_aligned, fresh_bundle  # noqa: E402

runner = CliRunner()


def test_train_flow_passes_options_to_the_core(tmp_path, monkeypatch):
    seen = {}

    def fake(data, bundle, **kwargs):
        from medm2g_core.workflows.train_flow import StageReport, TrainFlowResult

        seen.update(kwargs, data=data, bundle=bundle)
        return TrainFlowResult(bundle=bundle, pair="xray__report", stages=[StageReport("flows/xray__report", 3, 1.0, None, {"loss": 2.0}, {"loss": 1.0})])

    monkeypatch.setattr("medm2g_core.workflows.train_flow.train_flow", fake)
    result = runner.invoke(app, ["train-flow", "--pair", "xray-report", "--data", str(tmp_path), "--bundle", str(tmp_path / "b"),
                                 "--steps", "3", "--resume", "--gradient-checkpointing", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    assert seen["pair"] == "xray-report" and seen["steps"] == 3 and seen["resume"] is True and seen["gradient_checkpointing"] is True
    assert seen["baselines"] is False and seen["device"] == "cpu"
    flagged = runner.invoke(app, ["train-flow", "--pair", "mri-ct", "--data", str(tmp_path), "--bundle", str(tmp_path / "b"), "--baselines"])
    assert flagged.exit_code == 0, flagged.output
    assert seen["baselines"] is True
    assert json.loads(result.stdout)["stages"][0]["val_end"]["loss"] == 1.0
    missing = runner.invoke(app, ["train-flow", "--data", str(tmp_path), "--bundle", str(tmp_path / "b")])
    assert missing.exit_code == 2 and "--pair" in missing.output


def test_train_flow_end_to_end_and_info_shows_forgetting(tmp_path):
    chest, head, recipe = build_aligned(tmp_path)
    bundle = fresh_bundle(tmp_path, "cli.m2g")
    first = runner.invoke(app, ["train-flow", "--pair", "report-xray", "--data", str(chest), "--bundle", str(bundle), "--recipe", str(recipe), "--json"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["train-flow", "--pair", "mri-ct", "--data", str(head), "--bundle", str(bundle), "--recipe", str(recipe), "--json"])
    assert second.exit_code == 0, second.output
    assert "report__xray" in json.loads(second.stdout)["forgetting"]
    info = runner.invoke(app, ["info", str(bundle)])
    assert info.exit_code == 0 and "forgetting" in info.output and "report__xray" in info.output
    assert "earlier flow" in info.output and "{'" not in info.output  # a table, not a dict dump
    unaligned = runner.invoke(app, ["train-flow", "--pair", "mri-ct", "--data", str(head), "--bundle", str(tmp_path / "nope")])
    assert unaligned.exit_code == 2


def test_forgetting_rows_show_the_change():
    from medm2g_cli.commands.info import forgetting_rows

    rows = forgetting_rows({"mri-t1__ct": {"report__xray": {"before": {"loss": 0.5, "psnr": 20.0}, "after": {"loss": 0.75, "psnr": 19.5}}}})
    assert rows == [["mri-t1__ct", "report__xray", "loss", "0.5", "0.75", "+0.25"],
                    ["mri-t1__ct", "report__xray", "psnr", "20", "19.5", "-0.5"]]


def _stand_in_predictions(head: Path, out: Path) -> Path:
    """A stand-in "model": each reference CT plus noise, on the reference grid."""
    import numpy as np

    from medm2g_core import io

    rng = np.random.default_rng(0)
    for ct in sorted(head.glob("*/ct.nii.gz")):
        image, meta = io.read(ct)
        io.write(out / ct.parent.name / "ct.nii.gz", (image + rng.normal(0, 30, image.shape)).astype(np.int16), meta.replace(synthetic=True))
    return out


def test_train_flow_fits_the_baselines_evaluate_uses(tmp_path):
    """train-flow fits the cheap baselines after the flow; --baselines adds the regression (same recipe
    and step budget as the flow); `evaluate --baseline NAME` then computes them from the bundle."""
    _, head, recipe = build_aligned(tmp_path)
    bundle = fresh_bundle(tmp_path, "baselines.m2g")
    common = ["--pair", "mri-ct", "--data", str(head), "--bundle", str(bundle), "--recipe", str(recipe), "--json"]
    trained = runner.invoke(app, ["train-flow", *common])
    assert trained.exit_code == 0, trained.output
    assert set(json.loads(trained.stdout)["baselines"]) == {"identity"}
    record = json.loads((bundle / "bundle.json").read_text())["baselines"]["mri-t1__ct"]
    assert "identity" in record and "regression" not in record
    # inference normalises with what training used (the recipe's data section), recorded with the flow
    flow_config = json.loads((bundle / "flows" / "mri-t1__ct" / "config.json").read_text())
    assert flow_config["normalisation"] == {"ct_window": [-1024.0, 3000.0], "mri_percentiles": [0.5, 99.5], "ct_units": "HU"}

    pred = _stand_in_predictions(head, tmp_path / "pred")
    evaluate = ["evaluate", "--task", "translation", "--pred", str(pred), "--ref", str(head), "--model", str(bundle), "--json"]
    identity = runner.invoke(app, [*evaluate, "--baseline", "identity"])
    assert identity.exit_code == 0, identity.output
    assert "identity" in json.loads(identity.stdout.strip().splitlines()[-1])["systems"]
    missing = runner.invoke(app, [*evaluate, "--baseline", "regression"])
    assert missing.exit_code == 2
    assert f"medm2g train-flow --pair mri-ct --data {head.resolve()} --bundle {bundle} --baselines" in " ".join(missing.output.split())

    again = runner.invoke(app, ["train-flow", *common, "--baselines"])
    assert again.exit_code == 0, again.output
    fitted = json.loads(again.stdout)["baselines"]
    assert set(fitted) == {"identity", "regression"}
    data = json.loads((bundle / "bundle.json").read_text())
    flow_stage = data["stages"]["flows/mri-t1__ct"]
    assert fitted["regression"]["steps"] == flow_stage["steps"]  # the flow's step budget
    assert fitted["regression"]["batch_size"] == 4  # the recipe given to train-flow, not the default one
    assert {"identity", "regression"} <= set(data["baselines"]["mri-t1__ct"])
    regression = runner.invoke(app, [*evaluate, "--baseline", "regression"])
    assert regression.exit_code == 0, regression.output
    assert "regression" in json.loads(regression.stdout.strip().splitlines()[-1])["systems"]

    no_baselines = runner.invoke(app, ["train-flow", "--pair", "report-xray", "--data", str(head), "--bundle", str(bundle),
                                       "--recipe", str(recipe), "--baselines"])
    assert no_baselines.exit_code == 2 and "--baselines" in no_baselines.output
