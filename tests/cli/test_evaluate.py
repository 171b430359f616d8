import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medm2g_cli.main import app

runner = CliRunner()


def test_cli_passes_options_to_the_core(monkeypatch, tmp_path):
    from medm2g_core.workflows import evaluate as pipeline

    seen = {}

    def fake(task, **kwargs):
        seen.update(task=task, **kwargs)
        return pipeline.EvaluationResult(task=task, ref_dir=kwargs["ref_dir"], systems={
            "model": pipeline.SystemResult("model", kwargs["pred_dir"], {"X[y]": pipeline.MetricSummary("X[y]", 1.5, 0.1, 3)})})

    monkeypatch.setattr(pipeline, "evaluate", fake)
    result = runner.invoke(app, ["evaluate", "--task", "report", "--pred", str(tmp_path), "--ref", str(tmp_path / "r"),
                                 "--baseline", f"nn={tmp_path / 'nn'}", "--html", str(tmp_path / "e.html"), "--json"])
    assert result.exit_code == 0, result.output
    assert seen["task"] == "report" and seen["baselines"] == {"nn": tmp_path / "nn"} and seen["html"] == tmp_path / "e.html"
    assert seen["cleaning"] == "iu_xray" and seen["features"] is None
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["systems"]["model"]["metrics"]["X[y]"]["value"] == 1.5


def test_cli_usage_errors(tmp_path):
    result = runner.invoke(app, ["evaluate", "--task", "nope", "--pred", str(tmp_path), "--ref", str(tmp_path)])
    assert result.exit_code == 2
    result = runner.invoke(app, ["evaluate", "--task", "translation", "--pred", str(tmp_path), "--ref", str(tmp_path), "--baseline", "identity"])
    assert result.exit_code == 2 and "bundle" in result.output.lower()  # a bare name is computed from --model's fitted baselines
    result = runner.invoke(app, ["evaluate", "--task", "report", "--pred", str(tmp_path), "--ref", str(tmp_path), "--baseline", "identity"])
    assert result.exit_code == 2 and "retrieval" in result.output
    result = runner.invoke(app, ["evaluate", "--task", "xray", "--pred", str(tmp_path), "--ref", str(tmp_path)])
    assert result.exit_code == 2 and "--features" in result.output


def test_cli_real_report_run(tmp_path: Path):
    from medm2g_core import io

    for n, (pred, ref) in enumerate([("No pleural effusion.", "No effusion."), ("The heart is enlarged.", "Cardiomegaly.")]):
        io.write_report(tmp_path / "pred" / f"P{n}" / "report.txt", f"FINDINGS: {pred}", synthetic=True)
        io.write_report(tmp_path / "ref" / f"P{n}" / "report.txt", f"FINDINGS: {ref}", synthetic=True)
    io.write_report(tmp_path / "ref" / "P9" / "report.txt", "FINDINGS: Normal.", synthetic=True)
    args = ["evaluate", "--task", "report", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--json"]
    lenient = runner.invoke(app, args)
    assert lenient.exit_code == 0, lenient.output  # P9 has no prediction: a note, not a failure
    assert "P9" in lenient.output and "not scored" in lenient.output
    result = runner.invoke(app, [*args, "--strict"])
    assert result.exit_code == 1  # with --strict P9 counts: reported, not a crash
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["systems"]["model"]["metrics"]["CE-f1[rule-based, micro, uncertain=positive]"]["value"] == 1.0
    assert "P9: missing prediction" in result.output


def test_xray_fid_on_the_bundles_aligned_encoder(tmp_path: Path):
    """`--features aligned` (what the README promises): FID/KID on the --model bundle's aligned X-ray encoder,
    named with the bundle, equal to the extractor's features computed directly."""
    import sys

    import numpy as np

    from medm2g_core import io
    from medm2g_core.metrics.distribution import frechet_distance
    from medm2g_core.workflows.evaluate import aligned_xray_extractor, _unit_float

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from test_align import TINY_RECIPE
    from tiny_cohort import write_cohort

    cohort = tmp_path / "cohort"
    write_cohort(cohort, patients=8, size=16)
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    aligned = runner.invoke(app, ["align", "--data", str(cohort), "--out", str(tmp_path / "b"), "--recipe", str(tmp_path / "tiny.yaml"),
                                  "--steps", "2", "--device", "cpu"])
    assert aligned.exit_code == 0, aligned.output
    rng = np.random.default_rng(0)
    patients = sorted(p.name for p in cohort.iterdir() if p.is_dir())
    for folder in (cohort / p for p in patients):
        image, meta = io.read(folder / "xray.png")
        noisy = np.clip(image.astype(np.float64) + rng.normal(0, 0.2 * float(np.ptp(image)) + 1, image.shape), 0, np.iinfo(image.dtype).max)
        io.write(tmp_path / "pred" / folder.name / "xray.png", noisy.astype(image.dtype), meta)
    args = ["evaluate", "--task", "xray", "--pred", str(tmp_path / "pred"), "--ref", str(cohort)]
    missing = runner.invoke(app, args)
    assert missing.exit_code == 2 and "--features aligned" in " ".join(missing.output.split())
    result = runner.invoke(app, [*args, "--features", "aligned", "--model", str(tmp_path / "b"), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])["systems"]["model"]["metrics"]
    name = next(n for n in metrics if n.startswith("FID["))
    assert name.startswith("FID[aligned-xray[b, ") and metrics[name]["count"] == 8
    extractor = aligned_xray_extractor(tmp_path / "b")
    features = {side: np.concatenate([extractor(_unit_float(io.read(root / p / "xray.png")[0])[None]) for p in patients])
                for side, root in (("pred", tmp_path / "pred"), ("ref", cohort))}
    assert metrics[name]["value"] == pytest.approx(frechet_distance(features["pred"], features["ref"]))


def test_xray_fid_on_a_saved_classifier_folder(tmp_path: Path):
    """`--features OUT/xray-probe` (the demo's fixed probe): FID/KID on that classifier's features, named by the folder
    and its weights' sha256; a folder that holds no classifier is refused with exit 2."""
    import sys

    import numpy as np

    from medm2g_core import io
    from medm2g_core.baselines.classifier import ImageClassifier, ImageClassifierConfig, classifier_features, weights_sha256
    from medm2g_core.metrics.distribution import frechet_distance
    from medm2g_core.workflows.evaluate import _unit_float

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from tiny_cohort import write_cohort

    cohort = tmp_path / "cohort"
    write_cohort(cohort, patients=6, size=16)
    probe = ImageClassifier(ImageClassifierConfig(classes=["effusion", "pacemaker"], size=16, channels=[4, 8], strides=[2, 2],
                                                  multi_label=True)).save(tmp_path / "xray-probe")
    rng = np.random.default_rng(1)
    patients = sorted(p.name for p in cohort.iterdir() if p.is_dir())
    for name in patients:
        image, meta = io.read(cohort / name / "xray.png")
        noisy = np.clip(image.astype(np.float64) + rng.normal(0, 0.2 * float(np.ptp(image)) + 1, image.shape), 0, np.iinfo(image.dtype).max)
        io.write(tmp_path / "pred" / name / "xray.png", noisy.astype(image.dtype), meta)
    args = ["evaluate", "--task", "xray", "--pred", str(tmp_path / "pred"), "--ref", str(cohort), "--json"]
    result = runner.invoke(app, [*args, "--features", str(probe)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])["systems"]["model"]["metrics"]
    name = next(n for n in metrics if n.startswith("FID["))
    assert name == f"FID[xray-probe[sha256 {weights_sha256(probe)[:12]}]]" and metrics[name]["count"] == 6
    extractor = classifier_features(probe)
    features = {side: np.concatenate([extractor(_unit_float(io.read(root / p / "xray.png")[0])[None]) for p in patients])
                for side, root in (("pred", tmp_path / "pred"), ("ref", cohort))}
    assert metrics[name]["value"] == pytest.approx(frechet_distance(features["pred"], features["ref"]))
    (tmp_path / "empty").mkdir()
    refused = runner.invoke(app, [*args, "--features", str(tmp_path / "empty")])
    assert refused.exit_code == 2 and "not a saved classifier" in refused.output
