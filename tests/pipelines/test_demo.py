"""`run_demo` end to end on tiny settings: files, page, default bundle, and a rerun that reuses every stage."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from medm2g_core.modalities import Modality
from medm2g_core.workflows.demo import QUICK, STATE_FILE, DemoSettings, headline_metrics, run_demo

# Smaller than --quick so that the suite stays fast; every stage still runs for real.
TINY = replace(QUICK, chest_patients=20, head_patients=12, align_steps=10, text_vae_steps=16,
               flow_steps={"xray-report": 12, "report-xray": 8, "mri-ct": 8, "t1-t2": 8}, regression_steps=None,
               samples=2, sampler_steps=2, batch_size=8, translate_patients=1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("medm2g-home")
    patch = pytest.MonkeyPatch()
    patch.setenv("MEDM2G_HOME", str(home))
    out = tmp_path_factory.mktemp("demo") / "medm2g-demo"
    events = []
    result = run_demo(out, settings=TINY, progress=events.append)
    yield {"out": out, "result": result, "events": events, "home": home, "patch": patch}
    patch.undo()


@pytest.mark.slow
def test_demo_writes_every_output(demo) -> None:
    out, result = demo["out"], demo["result"]
    assert result.bundle == out / "demo.m2g" and (out / "demo.m2g" / "bundle.json").is_file()
    bundle = json.loads((out / "demo.m2g" / "bundle.json").read_text())
    assert bundle["data"]["synthetic"] is True
    assert {"xray__report", "report__xray", "mri-t1__ct", "mri-t1__mri-t2"} <= set(bundle["flows"])
    for anatomy in ("chest", "head"):
        assert (out / "cohort" / anatomy / "P0001" / "report.txt").is_file()
        assert (out / "cohort" / f"{anatomy}-preview.png").is_file()
    for pair, name in (("mri-ct", "ct.nii.gz"), ("t1-t2", "mri-t2.nii.gz"), ("xray-report", "report.txt"), ("report-xray", "xray.png")):
        assert list((out / "predictions" / pair / "model").glob(f"*/{name}")), pair
    # translate_patients=1: one whole held-out head volume per translation; every held-out chest patient
    assert len(list((out / "predictions" / "mri-ct" / "model").glob("*/ct.nii.gz"))) == 1
    assert len(list((out / "predictions" / "xray-report" / "model").glob("*/report.txt"))) > 1
    for pair in ("mri-ct", "t1-t2"):
        for system in ("identity", "regression"):
            assert list((out / "predictions" / pair / system).glob("*/*.nii.gz")), (pair, system)
        assert list((out / "predictions" / pair / "model").glob("*/*.std.nii.gz"))  # samples > 1: uncertainty maps
    for pair in ("mri-ct", "t1-t2", "xray-report", "report-xray"):
        page = json.loads((out / "evaluation" / f"{pair}.json").read_text())
        assert page["synthetic"] is True and page["columns"][0] == "model"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["synthetic"] is True and set(summary["stage_seconds"]) >= {"cohort", "align", "flow mri-ct", "report"}


@pytest.mark.slow
def test_report_page_shows_model_and_baselines(demo) -> None:
    page = (demo["out"] / "report.html").read_text()
    assert "SYNTHETIC" in page
    for text in ("MRI T1 → CT", "MRI T1 → T2", "report generation", "FID", "retrieval", "identity", "regression",
                 "retrieval", "most-frequent", "data:image/png;base64"):
        assert text in page, text
    metrics = demo["result"].metrics
    assert set(metrics["mri-ct"]) == {"model", "identity", "regression"}
    assert {"PSNR dB", "MAE HU"} <= set(metrics["mri-ct"]["model"])
    assert "PSNR dB" in metrics["t1-t2"]["model"]
    assert {"BLEU-4", "ROUGE-L", "CE-F1"} <= set(metrics["xray-report"]["model"])
    assert set(metrics["xray-report"]) == {"model", "retrieval", "most-frequent"}
    assert "FID" in metrics["report-xray"]["model"]
    # the fixed probe: per-finding AUC of the generated X-rays beside its AUC on the real held-out DRRs, FID on its features
    probe = json.loads((demo["out"] / "evaluation" / "report-xray.json").read_text())
    assert probe["probe"]["name"].startswith("xray-probe[") and len(probe["probe"]["sha256"]) == 64
    assert any(k.startswith("FID[xray-probe[") for k in probe["values"]["model"])
    assert (demo["out"] / "xray-probe" / "model.safetensors").is_file()
    assert any("R@1" in values for values in metrics["retrieval"].values())


@pytest.mark.slow
def test_every_number_stands_beside_its_budget_and_the_regression_gets_the_flows(demo) -> None:
    budgets = demo["result"].budgets
    summary = json.loads((demo["out"] / "summary.json").read_text())
    assert summary["budgets"] == budgets
    for pair in ("mri-ct", "t1-t2"):
        model, regression = budgets[pair]["model"], budgets[pair]["regression"]
        assert model["steps"] == regression["steps"] == TINY.flow_steps[pair]  # like-for-like, not a starved baseline
        assert model["seconds"] > 0 and regression["seconds"] > 0
        assert "no gradient steps" in budgets[pair]["identity"]["training"]
    assert set(budgets["xray-report"]) == {"model", "retrieval", "most-frequent"}
    page = (demo["out"] / "report.html").read_text()
    assert "training budget" in page and f"{TINY.flow_steps['mri-ct']} steps" in page


@pytest.mark.slow
def test_bundle_is_the_default_model(demo) -> None:
    from medm2g_core.bundle import default_bundle
    from medm2g_core.jobs.translate import translate_batch

    assert default_bundle() == (demo["out"] / "demo.m2g").resolve()
    source = demo["out"] / "cohort" / "head" / "P0001" / "mri-t1.nii.gz"
    batch = translate_batch([source], to=Modality.CT, out=demo["out"] / "after", steps=1)  # no model given
    assert batch.counts["ok"] == 1 and (demo["out"] / "after" / "P0001" / "ct.nii.gz").is_file()


@pytest.mark.slow
def test_progress_names_every_stage(demo) -> None:
    stages = [e.message for e in demo["events"] if e.task == "demo"]
    assert stages[0] == "cohort" and "align" in stages and "flow t1-t2" in stages and stages[-1] == "done"
    assert any(e.task.startswith("flow mri-ct: ") for e in demo["events"])


@pytest.mark.slow
def test_rerun_reuses_every_stage(demo) -> None:
    out = demo["out"]
    state = (out / STATE_FILE).read_text()
    html = (out / "report.html").stat().st_mtime_ns
    started = time.monotonic()
    again = run_demo(out, settings=TINY)
    assert time.monotonic() - started < 15
    assert all(stage.reused for stage in again.stages)
    assert (out / STATE_FILE).read_text() == state and (out / "report.html").stat().st_mtime_ns == html
    assert again.metrics == demo["result"].metrics


@pytest.mark.slow
def test_changed_settings_rerun_only_later_stages(demo) -> None:
    out = demo["out"]
    before = json.loads((out / STATE_FILE).read_text())["stages"]
    again = run_demo(out, settings=replace(TINY, samples=1, mirror=False))
    reused = {stage.name for stage in again.stages if stage.reused}
    assert reused == {"cohort", "align", "flow xray-report", "flow report-xray", "flow mri-ct", "flow t1-t2", "baselines", "probe"}
    after = json.loads((out / STATE_FILE).read_text())["stages"]
    assert after["align"] == before["align"] and after["predict"]["key"] != before["predict"]["key"]
    assert not list((out / "predictions" / "mri-ct" / "model").glob("*/*.std.nii.gz"))  # one sample, not mirrored: no std map


def test_interrupted_stage_resumes_and_later_stages_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage that raised stays 'started'; the next run gives it resume=True and runs nothing after it first."""
    from medm2g_core.workflows import demo as demo_module

    calls: list[tuple[str, bool]] = []

    def plan(self):
        def action(name, fail=False):
            def run(resume):
                calls.append((name, resume))
                if fail and not resume:
                    raise KeyboardInterrupt
                return {"name": name}
            return run

        stages = [demo_module._Stage("one", {"a": 1}, (), action("one")),
                  demo_module._Stage("two", {"b": 2}, ("one",), action("two", fail=True), resumable=True),
                  demo_module._Stage("three", {}, ("two",), action("three"))]
        self.total = len(stages)
        return stages

    monkeypatch.setattr(demo_module._Run, "plan", plan)
    monkeypatch.setattr(demo_module._Run, "report", lambda self, resume: {})
    with pytest.raises(KeyboardInterrupt):
        run_demo(tmp_path, settings=DemoSettings(), register_default=False)
    assert calls == [("one", False), ("two", False)]
    state = json.loads((tmp_path / STATE_FILE).read_text())["stages"]
    assert state["one"]["status"] == "finished" and state["two"]["status"] == "started"
    calls.clear()
    result = run_demo(tmp_path, settings=DemoSettings(), register_default=False)
    assert calls == [("two", True), ("three", False)]
    assert [s.reused for s in result.stages] == [True, False, False]


def test_headline_metrics_pick_the_named_conventions() -> None:
    tables = {"mri-ct": {"values": {"model": {"ct: MAE[synthrad, HU, mask: HU>-500, no clip]": 40.0, "ct: PSNR[synthrad, HU -1024..3000, mask: HU>-500]": 30.0},
                                    "identity": {"ct: PSNR[synthrad, HU -1024..3000, mask: HU>-500]": 20.0}}},
              "xray-report": {"values": {"model": {"BLEU-4[r2gen-clean, corpus]": 0.3, "ROUGE-L[r2gen-clean, beta 1.2]": 0.5,
                                                   "CE-f1[rule-based, macro, uncertain=positive]": 0.1, "CE-f1[rule-based, micro, uncertain=positive]": 0.8}}}}
    metrics = headline_metrics(tables, {"heldout": {"report->xray": {"R@1": 0.5, "chance_R@1": 0.1, "n": 10}}})
    assert metrics["mri-ct"]["model"] == {"PSNR dB": 30.0, "MAE HU": 40.0}
    assert metrics["mri-ct"]["identity"] == {"PSNR dB": 20.0}
    assert metrics["xray-report"]["model"] == {"BLEU-4": 0.3, "ROUGE-L": 0.5, "CE-F1": 0.8}
    assert metrics["retrieval"]["report->xray"] == {"R@1": 0.5, "chance_R@1": 0.1, "n": 10}
