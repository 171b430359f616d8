"""Modality encoders of the aligned space (DESIGN §1.1).

- ``ImageEncoder``: a small ResNet-style CNN (``spatial_dims`` 2 or 3) that returns a pooled embedding
  in the shared space and a token grid for the flows' cross-attention.
- ``TextEncoder``: a Hugging Face encoder — a small ``BertModel`` built from a ``BertConfig`` (trained
  from scratch with a WordPiece tokenizer) or any local encoder folder — mean-pooled over the attention
  mask and projected to the shared space; its hidden states are the text tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medm2g_core.config import IMAGE_POOLINGS


def _conv(spatial_dims: int) -> type[nn.Module]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims}")
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResidualBlock(nn.Module):
    """conv-norm-SiLU-conv-norm + skip (1×1 strided conv when the shape changes), then SiLU."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, spatial_dims: int):
        super().__init__()
        conv = _conv(spatial_dims)
        self.conv1 = conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(out_channels)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm(out_channels)
        self.skip = (
            nn.Identity() if stride == 1 and in_channels == out_channels else conv(in_channels, out_channels, 1, stride=stride, bias=False)
        )
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return self.act(h + self.skip(x))


def projection_head(in_dim: int, out_dim: int) -> nn.Sequential:
    """Linear-GELU-Linear projection to the shared space (CLIP/ConVIRT style)."""
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim))


@dataclass(frozen=True)
class ImageEncoderConfig:
    """``widths``: channels per stage (each stage halves the resolution); ``token_dim`` 0 = last width.

    ``pooling``: how the token grid becomes one embedding — ``"mean"`` (global average, position-blind),
    ``"gem"`` (``GeMPool``: generalised mean, between the mean and the max; small bright findings count)
    or ``"attention"`` (CLIP's ResNet attention pool: one query, the mean token, attends over the tokens
    plus a learned positional embedding, so *where* a feature is counts — the side of an effusion, the
    width of the heart). ``pool_grid``: tokens per side the positional embedding is learned at
    (``image_size / 2**len(widths)``); other grids interpolate it.
    """

    in_channels: int = 1
    widths: tuple[int, ...] = (16, 32, 64)
    embed_dim: int = 64
    token_dim: int = 0
    spatial_dims: int = 2
    pooling: str = "mean"
    pool_grid: int = 8


class GeMPool(nn.Module):
    """(B, C, *grid) → (B, C): generalised mean ``(mean x^p)^(1/p)`` per channel with a learned ``p ≥ 1``.

    Radenović et al., TPAMI 2019. ``p = 1`` is the mean and ``p → ∞`` the max; from ``p = 3`` a finding
    on a few tokens (a pacemaker on one of 64) is not averaged away, while the whole grid still votes.
    Features are clamped at ``eps`` first (``ResidualBlock`` ends in SiLU, which dips just below 0).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        return features.flatten(2).clamp(min=self.eps).pow(p).mean(dim=2).pow(1.0 / p)


class AttentionPool(nn.Module):
    """(B, C, *grid) → (B, C): multi-head attention of the mean token over all tokens, with learned positions."""

    def __init__(self, channels: int, *, grid: int, spatial_dims: int, heads: int = 4):
        super().__init__()
        self.spatial_dims = spatial_dims
        self.position = nn.Parameter(torch.randn(1, channels, *([grid] * spatial_dims)) * channels**-0.5)
        self.query_position = nn.Parameter(torch.zeros(1, 1, channels))
        self.attention = nn.MultiheadAttention(channels, heads if channels % heads == 0 else 1, batch_first=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        position = self.position
        if position.shape[2:] != features.shape[2:]:
            mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
            position = nn.functional.interpolate(position, size=features.shape[2:], mode=mode, align_corners=False)
        tokens = (features + position.to(features.dtype)).flatten(2).transpose(1, 2)  # (B, N, C)
        query = features.flatten(2).mean(dim=2)[:, None] + self.query_position.to(features.dtype)
        pooled, _ = self.attention(query, tokens, tokens, need_weights=False)
        return pooled[:, 0]


class ImageEncoder(nn.Module):
    """Small ResNet: (B, C, H, W[, D]) in [-1, 1] → pooled (B, embed_dim) and tokens (B, N, token_dim).

    N = (H / 2^S)·(W / 2^S)[·(D / 2^S)] for S stages. The pooled embedding is *not* normalised.
    """

    def __init__(self, config: ImageEncoderConfig):
        super().__init__()
        self.config = config
        conv = _conv(config.spatial_dims)
        widths = config.widths
        self.stem = nn.Sequential(conv(config.in_channels, widths[0], 3, padding=1, bias=False), _norm(widths[0]), nn.SiLU())
        blocks, previous = [], widths[0]
        for width in widths:
            blocks += [ResidualBlock(previous, width, stride=2, spatial_dims=config.spatial_dims),
                       ResidualBlock(width, width, stride=1, spatial_dims=config.spatial_dims)]
            previous = width
        self.blocks = nn.Sequential(*blocks)
        token_dim = config.token_dim or widths[-1]
        self.token_projection = nn.Identity() if token_dim == widths[-1] else nn.Linear(widths[-1], token_dim)
        if config.pooling not in IMAGE_POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(IMAGE_POOLINGS)}, not {config.pooling!r}")
        self.pool: nn.Module | None = None  # mean
        if config.pooling == "gem":
            self.pool = GeMPool()
        elif config.pooling == "attention":
            self.pool = AttentionPool(widths[-1], grid=config.pool_grid, spatial_dims=config.spatial_dims)
        self.head = projection_head(widths[-1], config.embed_dim)

    @property
    def token_dim(self) -> int:
        return self.config.token_dim or self.config.widths[-1]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.blocks(self.stem(images))  # (B, C, h, w[, d])
        tokens = features.flatten(2).transpose(1, 2)  # (B, N, C)
        pooled = self.head(tokens.mean(dim=1) if self.pool is None else self.pool(features))
        return pooled, self.token_projection(tokens)


class TextEncoder(nn.Module):
    """A Hugging Face encoder + mean pooling + projection head.

    ``forward(input_ids (B, L), attention_mask (B, L))`` → pooled (B, embed_dim), tokens (B, L, hidden).
    Build with ``TextEncoder.small_bert(...)`` or ``TextEncoder.from_hf_config(config)``; weights of a
    pretrained folder are loaded by the caller (``AlignModel``).
    """

    def __init__(self, backbone: nn.Module, *, embed_dim: int):
        super().__init__()
        self.backbone = backbone
        hidden = int(backbone.config.hidden_size)
        self.head = projection_head(hidden, embed_dim)

    @classmethod
    def small_bert(cls, *, vocab_size: int, width: int, layers: int, heads: int, max_tokens: int, embed_dim: int) -> "TextEncoder":
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * width,
            max_position_embeddings=max(max_tokens, 8),
            pad_token_id=0,
        )
        return cls(BertModel(config, add_pooling_layer=False), embed_dim=embed_dim)

    @classmethod
    def from_hf_config(cls, config: Any, *, embed_dim: int) -> "TextEncoder":
        """Architecture from a transformers config object (weights loaded separately)."""
        from transformers import AutoModel

        return cls(AutoModel.from_config(config), embed_dim=embed_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.head(pooled), hidden
