"""A tiny phantom cohort + aligned bundle shared by the flow tests (built once per test session)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

TINY_RECIPE = """
name: tiny-flows
data: {image_size: 32, split_fractions: [0.6, 0.4, 0.0]}
training: {steps: 6, batch_size: 4, lr: 0.002, warmup_steps: 1, save_every: 0, val_every: 0, val_batches: 1}
align:
  embed_dim: 16
  image_widths: [8, 16]
  text_width: 16
  text_layers: 1
  text_heads: 2
  vocab_size: 200
  max_tokens: 64
  modalities: [xray, ct, mri-t1, mri-t2]
  training: {steps: 4, batch_size: 2}
text_vae: {width: 32, heads: 2, encoder_layers: 1, decoder_layers: 1, latent_tokens: 4, latent_dim: 8, max_tokens: 64,
           training: {steps: 6}}
autoencoders: {channels: [8, 16], attention_levels: [false, false], norm_num_groups: 4, latent_channels: 2, training: {steps: 4}}
flows:
  shared_attention: {num_layers: 2, query_dim: 16, condition_dim: 16, heads: 2}
  image_denoiser: {block_out_channels: [8, 16], norm_num_groups: 4, attention_heads: 2}
  text_denoiser: {layers: 2}
  objective: {warm_start_fraction: 0.25, sampling_steps: 3}
  slices: 4
  val_items: 8
  sample_items: 2
  forgetting: {val_batches: 1, psnr_samples: 2}
"""


def build_aligned(root: Path, *, patients: int = 6) -> tuple[Path, Path, Path]:
    """(chest cohort, head cohort, recipe path) plus ``root/aligned.m2g`` (align stage only)."""
    from medm2g_core.data.synth import synthesize_cohort
    from medm2g_core.pipelines.align import align

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
