"""`medm2g demo --real --quick` on the real paediatric X-rays alone (read in place; skipped where absent).

The quick settings import 4 children per class: every Kermany stage runs (its own aligned bundle, both flows, the
plain classifier, generation, evaluation); the numbers mean little at that size, so these tests check what the
run must hold whatever the numbers: the held-out children are never trained on, every system has its budget,
the generated files exist and are marked, and the probe is named by its weights' hash.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from medm2g_cli.main import app
from medm2g_core import io

runner = CliRunner()


@pytest.fixture(scope="module")
def cxr_demo(shared_set, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("data-root")
    (root / "cxr_pediatric_pneumonia").symlink_to(shared_set("cxr_pediatric_pneumonia"), target_is_directory=True)
    out = tmp_path_factory.mktemp("real-cxr") / "demo"
    result = runner.invoke(app, ["demo", "--real", "--quick", "--data-root", str(root), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return {"out": out, "stdout": result.stdout, "summary": json.loads((out / "summary.json").read_text())}


def test_every_cxr_system_is_scored_beside_its_budget(cxr_demo: dict) -> None:
    rows = {(row["task"], row["system"]): row for row in cxr_demo["summary"]["rows"]}
    assert {("xray-report", s) for s in ("model", "retrieval", "most-frequent", "classifier")} <= set(rows)
    assert {("report-xray", s) for s in ("model", "retrieval", "real held-out")} <= set(rows)
    assert rows[("xray-report", "model")]["budget"]["steps"] > 0 and rows[("xray-report", "classifier")]["budget"]["steps"] > 0
    assert "no gradient steps" in rows[("xray-report", "most-frequent")]["budget"]["training"]
    for system in ("model", "retrieval"):
        metrics = rows[("report-xray", system)]["metrics"]
        assert {"FID", "probe accuracy"} <= set(metrics) and 0.0 <= metrics["probe accuracy"] <= 1.0
    probe = rows[("report-xray", "model")]["convention"]
    assert probe.startswith("cxr-classifier[sha256 ") and len(probe.split()[-1].rstrip("]")) == 12


def test_held_out_children_are_never_trained_on(cxr_demo: dict) -> None:
    out = cxr_demo["out"]
    splits = json.loads((out / "cohort" / "cxr" / "splits.json").read_text())
    held = set(splits.get("val", [])) | set(splits.get("test", []))
    assert held and not held & set(splits["train"])
    # split by child: no child has images on both sides
    child = lambda pid: pid.split("_")[0] if pid.startswith("person") else pid.rsplit("-", 1)[0]  # noqa: E731
    assert not {child(p) for p in held} & {child(p) for p in splits["train"]}
    generated = sorted((out / "predictions" / "report-xray" / "model").glob("*/xray.png"))
    assert {p.parent.name for p in generated} == held
    image, meta = io.read(generated[0])
    assert meta.synthetic and image.ndim == 2
    reports = sorted((out / "predictions" / "xray-report" / "model").glob("*/report.txt"))
    assert {p.parent.name for p in reports} == held and all(io.read_report(p).synthetic for p in reports)


def test_the_cxr_bundle_records_its_real_set(cxr_demo: dict) -> None:
    bundle = cxr_demo["out"] / "real-cxr.m2g"
    data = json.loads((bundle / "bundle.json").read_text())["data"]
    assert data["real"] is True and sorted(data["real_sets"]) == ["kermany"] and "CC BY 4.0" in data["real_sets"]["kermany"]
    assert json.loads(cxr_demo["stdout"])["cxr_bundle"] == str(bundle)
    assert not (cxr_demo["out"] / "real.m2g").exists()  # no brain or IU set under this root: no brain bundle
