"""The tiny recipe the flow and reliability tests train with: one definition, each suite overriding a few keys."""

from __future__ import annotations

import copy
from typing import Any

import yaml

BASE: dict[str, Any] = {
    "data": {"image_size": 32, "split_fractions": [0.6, 0.4, 0.0]},
    "training": {"steps": 6, "batch_size": 4, "lr": 0.002, "warmup_steps": 1, "save_every": 0, "val_every": 0, "val_batches": 1},
    "align": {
        "embed_dim": 16, "image_widths": [8, 16], "text_width": 16, "text_layers": 1, "text_heads": 2,
        "vocab_size": 200, "max_tokens": 64, "modalities": ["xray", "ct", "mri-t1", "mri-t2"],
        "training": {"steps": 4, "batch_size": 2},
    },
    "flows": {
        "shared_attention": {"num_layers": 2, "query_dim": 16, "condition_dim": 16, "heads": 2},
        "image_denoiser": {"block_out_channels": [8, 16], "norm_num_groups": 4, "attention_heads": 2},
        "text_denoiser": {"layers": 2},
        "objective": {"warm_start_fraction": 0.25, "sampling_steps": 3},
        "slices": 4,
        "val_items": 8,
        "sample_items": 2,
        "forgetting": {"val_batches": 1, "psnr_samples": 2},
    },
}


def _merge(into: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def tiny_recipe(name: str, **sections: Any) -> str:
    """YAML of ``BASE`` named ``name`` with ``sections`` merged in (nested dicts merge key by key)."""
    recipe = {"name": name, **copy.deepcopy(BASE)}
    _merge(recipe, sections)
    return yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None, width=200)  # leaf mappings inline, as hand-written


def aligned_phantoms(root, recipe_text: str, *, anatomy: str, patients: int, seed: int, size: int = 32):
    """A phantom cohort ``root/<anatomy>`` and a bundle ``root/b.m2g`` aligned with ``recipe_text`` (written to
    ``root/recipe.yaml``), on one thread: ``(cohort, recipe path, bundle)``, for the learning tests."""
    import torch

    from medm2g_core.data.synth import synthesize_cohort
    from medm2g_core.workflows.align import align

    torch.set_num_threads(1)
    cohort = root / anatomy
    synthesize_cohort(cohort, patients=patients, anatomy=anatomy, seed=seed, size=size, workers=0)
    recipe = root / "recipe.yaml"
    recipe.write_text(recipe_text)
    bundle = root / "b.m2g"
    align(cohort, bundle, recipe=recipe)
    return cohort, recipe, bundle


def trained_chest_flow(root, recipe_text: str, pair: str):
    """Align 12 chest phantoms (seed 0) with ``recipe_text``, train the flow ``pair`` on them, and load it:
    ``(flow, cohort, patients, xrays)`` — ``xrays`` (12, 1, H, W) are the patients' X-rays as the flow sees them."""
    import torch

    from medm2g_core import io
    from medm2g_core.flows.model import FlowModel
    from medm2g_core.inference.generate import _image_tensor
    from medm2g_core.inference.processing import Processing
    from medm2g_core.modalities import Modality
    from medm2g_core.workflows.train_flow import train_flow

    chest, recipe, bundle = aligned_phantoms(root, recipe_text, anatomy="chest", patients=12, seed=0)
    train_flow(chest, bundle, pair=pair, recipe=recipe)
    patients = sorted(p.name for p in chest.iterdir() if p.is_dir())
    flow = FlowModel.load(bundle, pair)
    processing = Processing.of(flow)
    xrays = torch.cat([_image_tensor(io.read(chest / p / "xray.png"), Modality.XRAY, size=flow.image_size, channels=1,
                                     processing=processing) for p in patients])
    return flow, chest, patients, xrays
