"""A tiny text→image flow (report → X-ray) trained a few hundred steps must draw the X-ray its report describes.

It can fail: a flow whose X-ray does not depend on the report draws one chest for every report, which is no
closer to each patient's own X-ray than the mean training X-ray is (the text-free baseline); so does an
under-trained one (measured, 1 thread: 300 steps 0.061 against the mean X-ray's 0.123, generated X-rays spread 0.129
against the real 0.156 — passes; 20 steps 0.171, spread 0.032 — fails). Scored on the training reports, as the image→text test is: the question is whether the
report reaches the image at all; held-out rendering of findings is measured with the fixed probe
(``benchmarks/probe_xray.py``) in the README's performance section.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from tiny_recipe import tiny_recipe, trained_chest_flow  # noqa: E402

MARGIN = 0.7  # mean |generated − own X-ray| at most 70 % of |mean training X-ray − own X-ray|
RECIPE = tiny_recipe(
    "tiny-xray-learns",
    data={"image_size": 32, "split_fractions": [1.0, 0.0, 0.0]},
    align={"training": {"steps": 60, "batch_size": 8}},
    flows={"image_denoiser": {"backbone": "conv", "block_out_channels": [8, 16, 32]},
           "objective": {"warm_start_fraction": 0.5, "loss": "l2", "warm_start_loss": "l2", "timesteps": "sampler",
                         "sampling_steps": 4},
           "training": {"steps": 300, "batch_size": 8, "lr": 0.003, "warmup_steps": 10}},
)


@pytest.mark.slow
def test_tiny_report_to_xray_flow_draws_the_reported_chest(tmp_path):
    from medm2g_core import io
    from medm2g_core.modalities import Modality

    flow, chest, patients, real = trained_chest_flow(tmp_path, RECIPE, "report-xray")
    reports = [io.read_report(chest / p / "report.txt").text for p in patients]
    generated = flow.predict({Modality.REPORT: reports}, seed=0).mean
    assert generated.shape == real.shape

    model = (generated - real).abs().mean().item()
    mean_xray = (real.mean(0, keepdim=True) - real).abs().mean().item()
    assert model <= MARGIN * mean_xray, (model, mean_xray)
    # Different reports give different X-rays: the spread between generated X-rays is a real part of the spread
    # between the real ones.
    assert generated.std(0).mean().item() >= 0.3 * real.std(0).mean().item()
