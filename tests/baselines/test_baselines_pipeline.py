"""fit_baselines / predict_baselines on a size-32 phantom cohort: the regression learns, predictions keep the
input geometry, missing baselines are clear errors, report baselines return training reports."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from baseline_fixtures import REGRESSION_STEPS, build_with_baselines  # noqa: E402

from medm2g_core import io
from medm2g_core.baselines.intensity import IntensityMap
from medm2g_core.bundle import Bundle
from medm2g_core.errors import BundleError
from medm2g_core.workflows.baselines import fit_baselines, predict_baselines


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_with_baselines(tmp_path_factory.mktemp("baselines"))


def test_regression_trains_for_the_given_steps_and_its_loss_decreases(built):
    regression = built["fit"]["baselines"]["regression"]
    assert regression["steps"] == REGRESSION_STEPS and len(regression["losses"]) == REGRESSION_STEPS
    losses = regression["losses"]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    folder = built["bundle"] / "baselines" / "mri-t1__ct-regression"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file() and (folder / "shared" / "model.safetensors").is_file()
    record = Bundle.open(built["bundle"]).data["baselines"]["mri-t1__ct"]
    assert record["regression"]["path"] == "baselines/mri-t1__ct-regression"
    assert record["identity"]["path"] == "baselines/mri-t1__ct/intensity_map.json"
    assert record["regression"]["flow_steps"] == Bundle.open(built["bundle"]).data["stages"]["flows/mri-t1__ct"]["steps"]


def test_identity_map_is_monotone(built):
    mapping = IntensityMap.load(built["bundle"] / "baselines" / "mri-t1__ct" / "intensity_map.json")
    assert mapping.patients and np.all(np.diff(mapping.target_values) >= 0) and np.all(np.diff(mapping.source_values) > 0)


def test_predictions_keep_the_input_grid_and_are_marked_synthetic(built, tmp_path):
    outputs = predict_baselines(built["bundle"], pair="mri-ct", inputs=built["head"], out_dir=tmp_path, split=None,
                                patients=["P0001", "P0002"])
    assert set(outputs) == {"identity", "regression"}
    source, source_meta = io.read(built["head"] / "P0001" / "mri-t1.nii.gz")
    for name, folder in outputs.items():
        assert sorted(p.name for p in folder.iterdir()) == ["P0001", "P0002"]
        image, meta = io.read(folder / "P0001" / "ct.nii.gz")
        assert image.shape == source.shape and meta.same_grid(source_meta, tolerance_mm=1e-3), name
        assert meta.synthetic and meta.modality == "ct" and image.min() >= -1024 and image.max() <= 3000
        assert np.std(image) > 0


def test_missing_baselines_name_the_fix(built, tmp_path):
    with pytest.raises(BundleError, match=r"medm2g train-flow --pair t1-t2 .*--baselines"):
        predict_baselines(built["bundle"], pair="t1-t2", inputs=built["head"], out_dir=tmp_path)


def test_report_baselines_write_training_reports(built, tmp_path):
    chest = built["chest"]
    fit = fit_baselines(chest, built["bundle"], pair="xray-report", recipe=built["recipe"])
    assert set(fit["baselines"]) == {"retrieval", "most-frequent"}
    outputs = predict_baselines(built["bundle"], pair="xray-report", inputs=chest, out_dir=tmp_path, split=None)
    training = {" ".join(io.read_report(p).text.split()) for p in chest.glob("*/report.txt")}
    mode = Bundle.open(built["bundle"]).data["baselines"]["xray__report"]["most-frequent"]
    for name in ("retrieval", "most-frequent"):
        written = sorted(outputs[name].glob("*/report.txt"))
        assert len(written) == len(list(chest.glob("*/xray.png")))
        for path in written:
            report = io.read_report(path)
            assert report.synthetic and " ".join(report.text.split()) in training
    assert mode["count"] >= 1
