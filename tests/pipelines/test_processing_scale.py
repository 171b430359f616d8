"""One pre/post-processing per flow: a tiny flow trained with a non-default CT window and MRI percentiles is
read and written on that scale by training, translate (the MedM2G Python API), generate and the
regression baseline — training and inference cannot normalise differently."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flows"))
from flow_fixtures import TINY_RECIPE  # noqa: E402

from medm2g_core import io
from medm2g_core.inference.processing import Processing
from medm2g_core.modalities import Modality

CT_WINDOW = (-200.0, 400.0)
MRI_PERCENTILES = (2.0, 98.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from medm2g_core.data.synth import synthesize_cohort
    from medm2g_core.workflows.align import align
    from medm2g_core.workflows.baselines import fit_baselines
    from medm2g_core.workflows.train_flow import train_flow

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("scale")
    head = root / "head"
    synthesize_cohort(head, patients=5, anatomy="head", seed=1, size=32, workers=0)
    recipe = yaml.safe_load(TINY_RECIPE)
    recipe["data"].update(ct_window=list(CT_WINDOW), mri_percentiles=list(MRI_PERCENTILES))
    recipe["align"]["modalities"] = ["ct", "mri-t1"]
    path = root / "scaled.yaml"
    path.write_text(yaml.safe_dump(recipe))
    bundle = root / "scaled.m2g"
    align(head, bundle, recipe=path, steps=2, workers=0)
    train_flow(head, bundle, pair="mri-ct", recipe=path, steps=3)
    fit_baselines(head, bundle, pair="mri-ct", recipe=path, steps=3)
    return {"head": head, "bundle": bundle, "recipe": path}


def test_the_flow_records_and_training_reads_the_recipe_scale(trained):
    from medm2g_core.data.datasets import PairSliceDataset
    from medm2g_core.data.manifest import scan_cohort
    from medm2g_core.inference.model import MedM2G

    flow = MedM2G.from_pretrained(trained["bundle"], device="cpu").flow("mri-ct")
    processing = Processing.of(flow)
    assert processing == Processing(ct_window=CT_WINDOW, mri_percentiles=MRI_PERCENTILES)
    records = scan_cohort(trained["head"])[:1]
    dataset = PairSliceDataset(records, sources=["mri-t1"], target="ct", image_size=32, slices="middle",
                               preprocess=processing.preprocess)
    item = dataset[0]
    assert item["target_norm"]["low"] == CT_WINDOW[0] and item["target_norm"]["high"] == CT_WINDOW[1]
    assert tuple(item["source_norm"][0]["percentiles"]) == MRI_PERCENTILES


def test_translate_through_the_python_api_writes_on_the_flow_scale(trained):
    from medm2g_core import MedM2G

    model = MedM2G.from_pretrained(trained["bundle"], device="cpu")
    volume, meta = io.read(trained["head"] / "P0001" / "mri-t1.nii.gz")
    result = model.translate(volume, meta, to="ct", steps=1)
    assert result.flow == "mri-t1__ct" and result.meta.modality == "ct" and result.image.shape == volume.shape
    # [-1, 1] mapped back through the recorded window: nothing outside [-200, 400] HU
    assert CT_WINDOW[0] - 1e-3 <= result.image.min() and result.image.max() <= CT_WINDOW[1] + 1e-3


def test_the_regression_baseline_writes_on_the_flow_scale(trained, tmp_path):
    from medm2g_core.workflows.baselines import predict_baselines

    outputs = predict_baselines(trained["bundle"], pair="mri-ct", inputs=trained["head"], out_dir=tmp_path, split=None,
                                patients=["P0001"])
    image, _ = io.read(outputs["regression"] / "P0001" / "ct.nii.gz")
    assert CT_WINDOW[0] - 1 <= image.min() and image.max() <= CT_WINDOW[1] + 1  # int16 HU, rounded


def test_generate_reads_image_sources_on_the_flow_scale(trained):
    from medm2g_core.inference.generate import _image_tensor
    from medm2g_core.types import ImageMeta

    processing = Processing(ct_window=CT_WINDOW, mri_percentiles=MRI_PERCENTILES)
    hu = np.full((8, 8, 3), CT_WINDOW[1], dtype=np.float32)
    hu[:4] = CT_WINDOW[0]
    meta = ImageMeta(spacing=(1.0, 1.0, 1.0), shape=hu.shape, modality="ct", units="HU")
    tensor = _image_tensor((hu, meta), Modality.CT, size=8, channels=1, processing=processing)
    assert tensor.shape == (1, 1, 8, 8)
    assert torch.allclose(tensor[0, 0, :4], torch.tensor(-1.0)) and torch.allclose(tensor[0, 0, 4:], torch.tensor(1.0))
    # generated X-rays come back through the same pair: [-1, 1] → the uint16 range
    state = processing.target_state(Modality.XRAY)
    image = processing.postprocess(np.array([[-1.0, 1.0]], dtype=np.float32), Modality.XRAY, state)
    assert image.dtype == np.uint16 and image.tolist() == [[0, 65535]]

