import json
from pathlib import Path

import numpy as np
import pytest

from medm2g_core import io
from medm2g_core.errors import InputError
from medm2g_core.metrics.distribution import CallableExtractor
from medm2g_core.metrics.image import body_mask, synthrad_metrics
from medm2g_core.workflows.evaluate import evaluate
from medm2g_core.serialization import to_jsonable
from medm2g_core.types import ImageMeta

SHAPE = (24, 20, 8)


def _meta(shape=SHAPE, units="HU"):
    return ImageMeta(spacing=(1.5, 1.5, 3.0), origin=(10.0, -5.0, 2.0), shape=shape, units=units)


def _phantom(rng, shape=SHAPE):
    ct = np.full(shape, -1000.0)
    ct[4:20, 3:17, :] = 40 + rng.normal(0, 20, (16, 14, shape[2]))
    ct[9:13, 8:11, :] = 900
    return ct.astype(np.int16)


@pytest.fixture
def cohort(tmp_path: Path):
    rng = np.random.default_rng(0)
    ref, pred, base = tmp_path / "ref", tmp_path / "pred", tmp_path / "identity"
    for n in range(4):
        patient = f"P000{n}"
        ct = _phantom(rng)
        t1 = np.clip((ct.astype(float) + 1000) / 10 + rng.normal(0, 2, SHAPE), 0, None).astype(np.float32)
        io.write(ref / patient / "ct.nii.gz", ct, _meta())
        io.write(ref / patient / "mri-t1.nii.gz", t1, _meta(units="a.u."))
        io.write_report(ref / patient / "report.txt", "FINDINGS: The heart is enlarged. No pleural effusion.\nIMPRESSION: Cardiomegaly.", synthetic=True)
        if n == 3:
            continue  # P0003: prediction missing
        shape = (24, 20, 9) if n == 2 else SHAPE  # P0002: a different grid
        noisy = (ct[:, :, : shape[2]] if n != 2 else np.zeros(shape)) + rng.normal(0, 25, shape)
        io.write(pred / patient / "ct.nii.gz", noisy.astype(np.float32), _meta(shape))
        io.write(pred / patient / "ct.std.nii.gz", np.full(shape, 25, np.float32), _meta(shape))
        io.write(pred / patient / "mri-t1.nii.gz", (t1 * 1.05 + rng.normal(0, 2, SHAPE)).astype(np.float32), _meta(units="a.u."))
        io.write(base / patient / "ct.nii.gz", (ct + rng.normal(0, 80, SHAPE)).astype(np.float32), _meta())
        text = "FINDINGS: The heart is enlarged. No effusion." if n else "FINDINGS: Heart size is normal. Small pleural effusion."
        io.write_report(pred / patient / "report.txt", text, synthetic=True)
    return ref, pred, base


def test_translation_scores_match_the_metric_functions_and_report_problems(cohort, tmp_path):
    ref, pred, base = cohort
    events = []
    page = tmp_path / "eval.html"
    result = evaluate("translation", pred_dir=pred, ref_dir=ref, html=page, baselines={"identity": base}, strict=True,
                      progress=events.append)
    model = result.model
    psnr_name = "ct: PSNR[synthrad, HU -1024..3000, mask: HU>-500]"
    assert model.metrics[psnr_name].count == 2  # P0000 and P0001 only
    problems = "\n".join(result.problems)
    assert "P0003: missing prediction" in problems and "P0002: ct.nii.gz: prediction grid" in problems
    # identical to calling the metric function directly
    reference, _ = io.read(ref / "P0000" / "ct.nii.gz")
    prediction, _ = io.read(pred / "P0000" / "ct.nii.gz")
    direct = synthrad_metrics(prediction, reference, mask=body_mask(reference))
    patient = next(p for p in model.patients if p.patient_id == "P0000")
    assert patient.values[psnr_name] == pytest.approx(direct["psnr"])
    assert "mri-t1: PSNR[syndiff, mean1-max1, per slice]" in model.metrics
    columns, rows = result.table()
    assert columns == ["model", "identity"] and any(name == psnr_name for name, _ in rows)
    assert result.systems["identity"].metrics[psnr_name].value < model.metrics[psnr_name].value
    assert events and events[-1].completed == events[-1].total
    text = page.read_text()
    assert text.count("data:image/png;base64,") >= 8 and "P0003: missing prediction" in text
    json.dumps(to_jsonable(result), allow_nan=False)


def test_the_datasets_mask_is_used_and_named_when_the_reference_folder_has_one(cohort):
    """SynthRAD ships mask.nii.gz; evaluate scores with it (as the challenge does) and says so in the name,
    derives the HU>-500 mask only where there is none, and never averages the two conventions together."""
    ref, pred, _ = cohort
    reference, meta = io.read(ref / "P0000" / "ct.nii.gz")
    dataset_mask = np.zeros(SHAPE, np.uint8)
    dataset_mask[6:18, 5:15, 2:6] = 1  # smaller than the HU>-500 body: the two conventions give other numbers
    io.write(ref / "P0000" / "mask.nii.gz", dataset_mask, _meta(units=""))
    result = evaluate("translation", pred_dir=pred, ref_dir=ref)
    model = result.model
    dataset, threshold = "ct: PSNR[synthrad, HU -1024..3000, mask: dataset]", "ct: PSNR[synthrad, HU -1024..3000, mask: HU>-500]"
    assert model.metrics[dataset].count == 1 and model.metrics[threshold].count == 1  # P0000 | P0001
    prediction, _ = io.read(pred / "P0000" / "ct.nii.gz")
    values = next(p for p in model.patients if p.patient_id == "P0000").values
    direct = synthrad_metrics(prediction, reference, mask=dataset_mask > 0)
    assert values[dataset] == pytest.approx(direct["psnr"]) and threshold not in values
    assert values["ct: MAE[synthrad, HU, mask: dataset, no clip]"] == pytest.approx(direct["mae"])
    assert direct["mae"] != pytest.approx(synthrad_metrics(prediction, reference, mask=body_mask(reference))["mae"])
    io.write(ref / "P0001" / "mask.nii.gz", np.ones((8, 8, 8), np.uint8), _meta((8, 8, 8), units=""))  # another grid
    again = evaluate("translation", pred_dir=pred, ref_dir=ref)
    assert any("P0001: ct.nii.gz: the dataset mask" in p and "not on the grid" in p for p in again.problems)
    assert threshold not in again.model.metrics  # not silently scored with the other convention


def test_reference_patients_without_prediction_are_notes_unless_strict(cohort):
    ref, pred, _ = cohort
    result = evaluate("translation", pred_dir=pred, ref_dir=ref)
    assert not any("missing prediction" in p for p in result.problems)
    assert any("P0003" in note and "not scored" in note for note in result.notes)
    assert "P0002: ct.nii.gz: prediction grid" in "\n".join(result.problems)  # real problems stay problems


def test_report_task(cohort):
    ref, pred, _ = cohort
    result = evaluate("report", pred_dir=pred, ref_dir=ref)
    metrics = result.model.metrics
    assert metrics["BLEU-4[r2gen-clean, corpus]"].count == 3
    assert "CE-f1[rule-based, micro, uncertain=positive]" in metrics
    # P0000 says "heart size is normal" where the reference says enlarged: a CE miss.
    assert metrics["CE-recall[rule-based, micro, uncertain=positive]"].value < 1.0


def test_xray_task_needs_an_extractor_and_uses_it(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    rng = np.random.default_rng(0)
    for n in range(5):
        meta = ImageMeta(spacing=(0.5, 0.5), shape=(32, 32), units="a.u.")
        io.write(ref / f"P{n}" / "xray.png", (rng.random((32, 32)) * 255).astype(np.uint8), meta)
        io.write(pred / f"P{n}" / "xray.png", (rng.random((32, 32)) * 200).astype(np.uint8), meta)
    with pytest.raises(InputError, match="--features"):
        evaluate("xray", pred_dir=pred, ref_dir=ref)
    extractor = CallableExtractor(name="moments", function=lambda x: np.stack([x.mean(axis=(1, 2)), x.std(axis=(1, 2)), (x**2).mean(axis=(1, 2))], 1))
    result = evaluate("xray", pred_dir=pred, ref_dir=ref, features=extractor)
    assert result.model.metrics["FID[moments]"].value > 0 and result.model.metrics["FID[moments]"].count == 5
    assert "KID[moments, poly d3]" in result.model.metrics


def test_nothing_to_score_is_an_input_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(InputError, match="no prediction could be scored"):
        evaluate("translation", pred_dir=tmp_path / "a", ref_dir=tmp_path / "b")
    with pytest.raises(InputError, match="does not exist"):
        evaluate("report", pred_dir=tmp_path / "missing", ref_dir=tmp_path / "b")
