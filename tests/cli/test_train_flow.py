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
        from medm2g_core.pipelines.train_flow import StageReport, TrainFlowResult

        seen.update(kwargs, data=data, bundle=bundle)
        return TrainFlowResult(bundle=bundle, pair="xray__report", stages=[StageReport("flows/xray__report", 3, 1.0, None, {"loss": 2.0}, {"loss": 1.0})])

    monkeypatch.setattr("medm2g_core.pipelines.train_flow.train_flow", fake)
    result = runner.invoke(app, ["train-flow", "--pair", "xray-report", "--data", str(tmp_path), "--bundle", str(tmp_path / "b"),
                                 "--steps", "3", "--resume", "--gradient-checkpointing", "--json"])
    assert result.exit_code == 0, result.output
    assert seen["pair"] == "xray-report" and seen["steps"] == 3 and seen["resume"] is True and seen["gradient_checkpointing"] is True
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
    unaligned = runner.invoke(app, ["train-flow", "--pair", "mri-ct", "--data", str(head), "--bundle", str(tmp_path / "nope")])
    assert unaligned.exit_code == 2
