"""A tiny phantom cohort + aligned bundle shared by the flow tests (built once per test session)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from tiny_recipe import tiny_recipe  # noqa: E402

TINY_RECIPE = tiny_recipe(
    "tiny-flows",
    text_vae={"width": 32, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "latent_tokens": 4, "latent_dim": 8,
              "max_tokens": 64, "training": {"steps": 6}},
    autoencoders={"channels": [8, 16], "attention_levels": [False, False], "norm_num_groups": 4, "latent_channels": 2,
                  "training": {"steps": 4}},
)


def build_aligned(root: Path, *, patients: int = 6) -> tuple[Path, Path, Path]:
    """(chest cohort, head cohort, recipe path) plus ``root/aligned.m2g`` (align stage only)."""
    from medm2g_core.data.synth import synthesize_cohort
    from medm2g_core.workflows.align import align

    torch.set_num_threads(1)
    chest, head = root / "chest", root / "head"
    synthesize_cohort(chest, patients=patients, anatomy="chest", seed=0, size=32, workers=0)
    synthesize_cohort(head, patients=patients, anatomy="head", seed=1, size=32, workers=0)
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    align(chest, root / "aligned.m2g", recipe=recipe)
    return chest, head, recipe


def fresh_bundle(root: Path, name: str) -> Path:
    """A copy of the aligned bundle to train flows into."""
    target = root / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(root / "aligned.m2g", target)
    return target
