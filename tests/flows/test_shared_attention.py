"""Shared cross-attention across flows: every layer is trained by the first flow that uses it, ``finetune`` is
guarded, and earlier flows are re-measured with their own recorded settings (issue #19, item 2)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from flow_fixtures import build_aligned, fresh_bundle  # noqa: E402

from medm2g_core.bundle import Bundle
from medm2g_core.serialization import load_weights
from medm2g_core.workflows.train_flow import plan_shared_layers, train_flow


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    chest, head, recipe = build_aligned(root)
    return root, chest, head, recipe


def _layers(weights: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    return {k: v for k, v in weights.items() if k.startswith(f"layers.{index}.")}


def test_image_first_order_trains_the_layers_the_later_flow_uses_first(cohorts):
    """mri-ct (UNet mid block: layer 0) first, then xray-report (text denoiser: layers 0 and 1) under ``frozen``:
    layer 1 was never trained, so xray-report trains it; layer 0 stays exactly as mri-ct left it."""
    root, chest, head, recipe = cohorts
    bundle = fresh_bundle(root, "image-first.m2g")
    train_flow(head, bundle, pair="mri-ct", recipe=recipe)
    data = Bundle.open(bundle).data
    assert data["stages"]["flows/shared"]["layers"] == {"0": ["mri-t1__ct"]}  # layer 1: unused, untrained
    before = {name: load_weights(bundle / "flows" / "shared" / name) for name in ("model.safetensors", "ema.safetensors")}
    train_flow(chest, bundle, pair="xray-report", recipe=recipe)
    for name, weights in before.items():
        after = load_weights(bundle / "flows" / "shared" / name)
        assert all(torch.equal(v, after[k]) for k, v in _layers(weights, 0).items()), name
        assert all(not torch.equal(v, after[k]) for k, v in _layers(weights, 1).items()), name
    data = Bundle.open(bundle).data
    assert data["stages"]["flows/shared"]["layers"] == {"0": ["mri-t1__ct"], "1": ["xray__report"]}
    stage = data["stages"]["flows/xray__report"]
    assert stage["shared_layers"]["trained"] == [1] and stage["shared_layers"]["frozen"] == [0]
    assert "frozen (reused) [0]" in stage["shared"]
    report = data["forgetting"]["xray__report"]["mri-t1__ct"]
    assert report["before"] == report["after"]


def test_layer_plan_by_mode():
    trainers = {0: ["mri-t1__ct"]}
    frozen = plan_shared_layers([0, 1], trainers, flow="xray__report", mode="frozen", anchor=1.0)
    assert (frozen["trained"], frozen["frozen"], frozen["anchored"]) == ([1], [0], [])
    tuned = plan_shared_layers([0, 1], trainers, flow="xray__report", mode="finetune", anchor=1.0)
    assert (tuned["trained"], tuned["frozen"], tuned["anchored"], tuned["anchor"]) == ([0, 1], [], [0], 1.0)
    assert plan_shared_layers([0, 1], trainers, flow="xray__report", mode="finetune", anchor=0.0)["anchored"] == []
    # Resuming (or re-running) the flow that trained a layer trains it again.
    assert plan_shared_layers([0], trainers, flow="mri-t1__ct", mode="frozen")["trained"] == [0]


FINETUNE_TOLERANCE = 0.002  # relative change of an earlier flow's validation loss that finetune may cost it


def test_finetune_with_the_guard_keeps_the_earlier_flow_within_tolerance(cohorts, tmp_path):
    """xray-report (layers 0, 1), then 60 steps of mri-ct fine-tuning the shared layer 0 they both use. Unguarded
    (shared_anchor: 0) xray-report's validation loss moves by 0.76 % on this cohort; with the default L2-SP guard
    it stays within 0.2 %, while layer 0 still trains (a guard, not a freeze)."""
    import yaml
    from flow_fixtures import TINY_RECIPE

    root, chest, head, recipe = cohorts
    bundle = fresh_bundle(root, "finetune.m2g")
    train_flow(chest, bundle, pair="xray-report", recipe=recipe)
    before = load_weights(bundle / "flows" / "shared" / "ema.safetensors")
    finetune = yaml.safe_load(TINY_RECIPE)
    finetune["flows"]["shared"] = "finetune"  # shared_anchor: its default
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(finetune))
    train_flow(head, bundle, pair="mri-ct", recipe=path, steps=60)
    data = Bundle.open(bundle).data
    stage = data["stages"]["flows/mri-t1__ct"]["shared_layers"]
    assert stage["trained"] == [0] and stage["anchored"] == [0] and stage["anchor"] == 1.0
    assert data["stages"]["flows/shared"]["layers"]["0"] == ["xray__report", "mri-t1__ct"]
    after = load_weights(bundle / "flows" / "shared" / "ema.safetensors")
    assert not torch.equal(before["layers.0.to_q.weight"], after["layers.0.to_q.weight"])
    report = data["forgetting"]["mri-t1__ct"]["xray__report"]
    change = report["after"]["loss"] / report["before"]["loss"] - 1
    assert abs(change) <= FINETUNE_TOLERANCE, report


def test_forgetting_rebuilds_the_earlier_flows_data_with_its_recorded_settings(cohorts, tmp_path):
    """mri-ct at 32² with the full CT window, then t1-t2 from a recipe at 16² with a brain window: mri-ct is
    re-measured on 32² slices in its own window; its shared layer is frozen, so before equals after exactly."""
    import yaml
    from flow_fixtures import TINY_RECIPE

    root, _, head, recipe = cohorts
    bundle = fresh_bundle(root, "recorded.m2g")
    train_flow(head, bundle, pair="mri-ct", recipe=recipe)
    other = yaml.safe_load(TINY_RECIPE)
    other["data"].update(image_size=16, ct_window=[-100, 200])
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(other))
    train_flow(head, bundle, pair="t1-t2", recipe=path)
    report = Bundle.open(bundle).data["forgetting"]["mri-t1__mri-t2"]["mri-t1__ct"]
    assert report["before"] == report["after"] and "psnr" in report["after"]
