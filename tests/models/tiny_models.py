"""Tiny real components shared by the model, flow and sampling tests (built small, never mocked)."""

from __future__ import annotations

import torch

from medm2g_core.models.conditioning import SharedCrossAttention, SharedCrossAttentionConfig
from medm2g_core.models.denoisers import ImageDenoiser, ImageDenoiserConfig, TextLatentDenoiser, TextLatentDenoiserConfig

C = 8  # condition width
W = 16  # shared query width


def tiny_shared(num_layers: int = 2) -> SharedCrossAttention:
    return SharedCrossAttention(SharedCrossAttentionConfig(num_layers=num_layers, query_dim=W, condition_dim=C, heads=2))


def tiny_image_config(**changes) -> ImageDenoiserConfig:
    values = dict(sample_size=16, block_out_channels=(8, W), norm_num_groups=4, condition_dim=C, attention_heads=2)
    values.update(changes)
    return ImageDenoiserConfig(**values)


def tiny_image_denoiser(shared: SharedCrossAttention, **changes) -> ImageDenoiser:
    return ImageDenoiser(tiny_image_config(**changes), shared=shared)


def tiny_text_denoiser(shared: SharedCrossAttention) -> TextLatentDenoiser:
    return TextLatentDenoiser(TextLatentDenoiserConfig(latent_tokens=4, latent_dim=6, width=W, layers=2, heads=2, condition_dim=C),
                              shared=shared)


def perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Give zero-initialised (AdaLN-zero) parameters non-zero values so every path matters in a test."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
