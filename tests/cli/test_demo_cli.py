"""`medm2g demo`: options reach run_demo, the summary and --json render; one real run on tiny settings."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medm2g_cli.main import app

runner = CliRunner()


def _fake_result(out: Path, quick: bool):
    from medm2g_core.workflows.demo import DemoResult, StageRecord

    metrics = {"retrieval": {"report->xray": {"R@1": 0.5, "chance_R@1": 0.1, "n": 10}},
               "mri-ct": {"model": {"PSNR dB": 30.0, "MAE HU": 40.0}, "identity": {"PSNR dB": 20.0}},
               "xray-report": {"model": {"BLEU-4": 0.25}}}
    return DemoResult(out_dir=out, bundle=out / "demo.m2g", report_html=out / "report.html", summary_json=out / "summary.json",
                      state=out / "demo-state.json", stages=[StageRecord("cohort", 0.0, True), StageRecord("align", 12.0, False)],
                      stage_seconds={"cohort": 3.0, "align": 12.0}, metrics=metrics, tables={}, files={"predictions": out / "predictions"},
                      quick=quick, seconds=12.5)


def test_demo_passes_options_to_the_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_run_demo(out_dir, **kwargs):
        seen.update(kwargs, out_dir=out_dir)
        kwargs["progress"](__import__("medm2g_core.types", fromlist=["ProgressEvent"]).ProgressEvent(task="demo", completed=0, total=9, message="cohort"))
        return _fake_result(Path(out_dir), kwargs["quick"])

    monkeypatch.setattr("medm2g_core.workflows.demo.run_demo", fake_run_demo)
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--quick", "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert seen["out_dir"] == tmp_path / "d" and seen["quick"] is True and seen["seed"] == 3 and callable(seen["progress"])
    summary = json.loads(result.stdout)  # stdout holds the JSON only
    assert summary["synthetic"] is True and summary["metrics"]["mri-ct"]["model"]["PSNR dB"] == 30.0
    assert summary["stages"][0] == {"name": "cohort", "seconds": 0.0, "reused": True}
    assert "report.html" in result.stderr and "PSNR dB 30" in result.stderr and "SYNTHETIC" in result.stderr


def test_demo_defaults_to_medm2g_demo_in_the_current_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_run_demo(out_dir, **kwargs):
        seen.update(kwargs, out_dir=out_dir)
        return _fake_result(Path(out_dir), kwargs["quick"])

    monkeypatch.setattr("medm2g_core.workflows.demo.run_demo", fake_run_demo)
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert seen["out_dir"] == Path("medm2g-demo") and seen["quick"] is False and seen["seed"] == 0
    assert result.stdout == ""  # no --json: nothing on stdout


@pytest.mark.slow
def test_demo_quick_for_real_then_translate_without_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real pipeline through the CLI (tiny settings substituted for --quick), then the promised translate."""
    from medm2g_core.workflows import demo as demo_module

    monkeypatch.setenv("MEDM2G_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEDM2G_MODEL", raising=False)
    tiny = replace(demo_module.QUICK, chest_patients=20, head_patients=12, align_steps=8, text_vae_steps=12,
                   flow_steps={"xray-report": 8, "report-xray": 6, "mri-ct": 6, "t1-t2": 6}, regression_steps=6,
                   samples=1, sampler_steps=2)
    monkeypatch.setattr(demo_module, "QUICK", tiny)
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["quick"] is True and Path(summary["report_html"]).is_file() and summary["synthetic"] is True
    assert "identity" in summary["metrics"]["mri-ct"] and "PSNR dB" in summary["metrics"]["mri-ct"]["model"]
    source = out / "cohort" / "head" / "P0001" / "mri-t1.nii.gz"
    translated = runner.invoke(app, ["translate", str(source), "--to", "ct", "--out", str(tmp_path / "ct"), "--sampler-steps", "1"])
    assert translated.exit_code == 0, translated.output
    assert (tmp_path / "ct" / "P0001" / "ct.nii.gz").is_file() and "synthetic" in translated.stderr
