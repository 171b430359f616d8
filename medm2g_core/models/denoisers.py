"""Cross-guided denoisers: ``ImageDenoiser`` (a diffusers UNet) and ``TextLatentDenoiser``.

Both are called the same way — ``denoiser(noisy, timesteps, condition=Condition) -> prediction`` —
and both take the bundle's ``SharedCrossAttention`` at construction: its layers ARE their
cross-attention sub-layers (the same module objects in every flow), while everything else is the
flow's own, including the **adaptive parameters**: the pooled condition becomes a per-flow
scale/shift of every normalisation layer (ResNet GroupNorms of the UNet via
``class_embed_type="projection"`` + ``resnet_time_scale_shift="scale_shift"``; AdaLN in the text
denoiser) and a learned null token that keeps cross-attention defined when every source is dropped.

``save_pretrained`` stores only the flow's own weights; the shared layers are saved once by
``SharedCrossAttention.save_pretrained`` (``flows/shared/``) and passed back in with
``from_pretrained(dir, shared=shared)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medm2g_core.models.conditioning import Condition, SharedCrossAttention, UsesSharedCrossAttention, mask_to_bias, stack_spatial


def _timesteps_for(timesteps: torch.Tensor | int | float, batch: int, device: torch.device) -> torch.Tensor:
    timesteps = torch.as_tensor(timesteps, device=device)
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(batch)
    return timesteps


def _with_null_token(null_token: torch.Tensor, condition: Condition) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepend the learned null token (always attended) to the condition tokens: (B, 1+N, C), (B, 1+N)."""
    batch = condition.pooled.shape[0]
    null = null_token.to(condition.tokens.dtype).expand(batch, -1, -1)
    tokens = torch.cat([null, condition.tokens.to(null.dtype)], dim=1)
    mask = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=tokens.device), condition.mask.bool()], dim=1)
    return tokens, mask


# --------------------------------------------------------------------------- image denoiser
IMAGE_BACKBONES = ("unet2d", "conv")


@dataclass
class ImageDenoiserConfig:
    """A tiny-by-default ``UNet2DConditionModel`` with the shared cross-attention at low resolution.

    Attributes:
        sample_size: image (or latent) side in pixels.
        target_channels: channels of the generated image/latent.
        spatial_channels: channels of each spatial (registered) source; the UNet input is
            target + Σ spatial + one presence channel per spatial source.
        block_out_channels: UNet widths per level; the last must equal the shared ``query_dim``.
        layers_per_block: ResNet layers per level.
        cross_attention_at_lowest: also cross-attend in the lowest-resolution down/up blocks (more
            insertion points, slower); otherwise only the mid block cross-attends (DESIGN §8: attention
            at high resolution is ~4× slower on CPU).
        condition_dim: width C of condition tokens/pooled embedding.
        attention_heads: heads of the mid block's self-attention.
        norm_num_groups: GroupNorm groups (``unet2d``); the ``conv`` backbone normalises per channel.
        adaptive: pooled condition → per-flow scale/shift of every ResNet GroupNorm.
        backbone: ``unet2d`` — diffusers' ``UNet2DConditionModel`` (paper scale); ``conv`` — a plain
            convolutional UNet (two 3×3 convolutions per level, max-pool down, transposed-conv up, skip
            concatenation, as MONAI's ``BasicUNet``) with the time + pooled-condition embedding as a
            scale/shift of every block and the shared cross-attention at every level whose width equals
            the shared ``query_dim``. On CPU at 64² it steps ~3× faster than ``unet2d`` and learns
            more per step (see ``recipes/demo-cpu.yaml``).
    """

    sample_size: int = 64
    target_channels: int = 1
    spatial_channels: tuple[int, ...] = ()
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    cross_attention_at_lowest: bool = False
    condition_dim: int = 64
    attention_heads: int = 4
    norm_num_groups: int = 8
    adaptive: bool = True
    backbone: str = "unet2d"

    def __post_init__(self) -> None:
        if self.backbone not in IMAGE_BACKBONES:
            raise ValueError(f"image denoiser backbone {self.backbone!r}; valid: {', '.join(IMAGE_BACKBONES)}")

    @property
    def in_channels(self) -> int:
        return self.target_channels + sum(self.spatial_channels) + len(self.spatial_channels)


def build_image_unet(config: ImageDenoiserConfig):
    """The bare diffusers ``UNet2DConditionModel`` of ``config`` (before the shared layers are tied in)."""
    from diffusers import UNet2DConditionModel

    levels = len(config.block_out_channels)
    lowest_down = "CrossAttnDownBlock2D" if config.cross_attention_at_lowest else "DownBlock2D"
    lowest_up = "CrossAttnUpBlock2D" if config.cross_attention_at_lowest else "UpBlock2D"
    return UNet2DConditionModel(
        sample_size=config.sample_size,
        in_channels=config.in_channels,
        out_channels=config.target_channels,
        down_block_types=tuple(["DownBlock2D"] * (levels - 1) + [lowest_down]),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=tuple([lowest_up] + ["UpBlock2D"] * (levels - 1)),
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        cross_attention_dim=config.condition_dim,
        attention_head_dim=config.attention_heads,
        class_embed_type="projection" if config.adaptive else None,
        projection_class_embeddings_input_dim=config.condition_dim if config.adaptive else None,
        resnet_time_scale_shift="scale_shift" if config.adaptive else "default",
    )


class _ConvBlock(nn.Module):
    """Two 3×3 convolutions, each normalised per channel; the first modulated by ``emb`` (scale, shift)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm1 = nn.GroupNorm(out_channels, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(out_channels, out_channels)
        self.modulation = nn.Linear(emb_dim, 2 * out_channels)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, hidden: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(emb)[:, :, None, None].chunk(2, dim=1)
        hidden = F.leaky_relu(self.norm1(self.conv1(hidden)) * (1 + scale) + shift, 0.1)
        return F.leaky_relu(self.norm2(self.conv2(hidden)), 0.1)


class _CrossAttentionPoint(nn.Module):
    """Residual cross-attention of a feature map (B, C, H, W) to condition tokens through one shared layer."""

    def __init__(self, channels: int, layer: nn.Module):
        super().__init__()
        self.norm = nn.GroupNorm(min(8, channels), channels)
        self.layer = layer  # the shared module object

    def forward(self, hidden: torch.Tensor, tokens: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        batch, channels, height, width = hidden.shape
        query = self.norm(hidden).flatten(2).transpose(1, 2)
        attended = self.layer(query, encoder_hidden_states=tokens, attention_mask=bias)
        return hidden + attended.transpose(1, 2).reshape(batch, channels, height, width)


class ConvUNet(nn.Module):
    """The ``conv`` backbone: ``forward(sample (B, in, H, W), timesteps (B,), tokens (B, N, C), bias, pooled (B, C))``.

    Level i works at H/2^i with ``block_out_channels[i]`` channels; the decoder mirrors the encoder with
    skip concatenation. The embedding (sinusoidal time → MLP, plus the projected pooled condition when
    ``adaptive``) scales and shifts every block; the shared cross-attention layers are inserted after the
    encoder and decoder blocks of each level whose width equals ``shared.config.query_dim``.
    """

    def __init__(self, config: ImageDenoiserConfig, *, shared: SharedCrossAttention):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        widths = tuple(config.block_out_channels)
        if len(widths) < 2:
            raise ValueError(f"the conv backbone needs at least 2 levels, got block_out_channels={list(widths)}")
        if config.sample_size % 2 ** (len(widths) - 1):
            raise ValueError(f"sample_size {config.sample_size} is not divisible by 2^{len(widths) - 1} "
                             f"({len(widths)} levels); use fewer block_out_channels or another image size")
        emb_dim = 4 * widths[0]
        self.config = config
        self.time_proj = Timesteps(widths[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(widths[0], emb_dim)
        self.condition_embedding = nn.Linear(config.condition_dim, emb_dim) if config.adaptive else None
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList(_ConvBlock(widths[max(i - 1, 0)], width, emb_dim) for i, width in enumerate(widths))
        self.up_sample = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(len(widths) - 1))
        self.up = nn.ModuleList(_ConvBlock(2 * widths[i], widths[i], emb_dim) for i in range(len(widths) - 1))
        self.conv_out = nn.Conv2d(widths[0], config.target_channels, 1)
        levels = [i for i, width in enumerate(widths) if width == shared.config.query_dim]
        points = [("down", i) for i in levels] + [("up", i) for i in reversed(levels) if i < len(widths) - 1]
        if len(points) > shared.config.num_layers:
            raise ValueError(f"the conv UNet has {len(points)} cross-attention points but SharedCrossAttention has "
                             f"{shared.config.num_layers} layers; raise num_layers")
        self.attention = nn.ModuleDict({f"{side}{level}": _CrossAttentionPoint(widths[level], shared.layers[k])
                                        for k, (side, level) in enumerate(points)})
        # Convolutions in channels-last (NHWC), oneDNN's fast CPU layout and cuDNN's for tensor cores: the whole
        # forward + backward at 64², batch 16, 2 cores, took 66 vs 75 ms. Loading weights keeps the layout.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                module.to(memory_format=torch.channels_last)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, *, tokens: torch.Tensor, bias: torch.Tensor | None,
                pooled: torch.Tensor) -> torch.Tensor:
        emb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
        if self.condition_embedding is not None:
            emb = emb + self.condition_embedding(pooled.to(sample.dtype))
        hidden = self.conv_in(sample)
        skips = []
        for level, block in enumerate(self.down):
            if level:
                hidden = F.max_pool2d(hidden, 2)
            hidden = block(hidden, emb)
            if f"down{level}" in self.attention:
                hidden = self.attention[f"down{level}"](hidden, tokens, bias)
            skips.append(hidden)
        skips.pop()
        for level in reversed(range(len(self.up))):
            hidden = self.up[level](torch.cat([skips.pop(), self.up_sample[level](hidden)], dim=1), emb)
            if f"up{level}" in self.attention:
                hidden = self.attention[f"up{level}"](hidden, tokens, bias)
        return self.conv_out(hidden)


class ImageDenoiser(UsesSharedCrossAttention):
    """Image (or image-latent) denoiser of one flow.

    ``forward(noisy (B, target_channels, H, W), timesteps (B,) or scalar, *, condition: Condition)
    -> (B, target_channels, H, W)`` — the prediction named by the flow's ``prediction_type``.
    """

    config_class = ImageDenoiserConfig

    def __init__(self, config: ImageDenoiserConfig, *, shared: SharedCrossAttention):
        super().__init__()
        self.config = config
        if config.backbone == "unet2d" and config.block_out_channels[-1] != shared.config.query_dim:
            raise ValueError(
                f"the lowest UNet level has width {config.block_out_channels[-1]} but the shared cross-attention "
                f"expects query_dim {shared.config.query_dim}; make block_out_channels[-1] equal to it"
            )
        if config.condition_dim != shared.config.condition_dim:
            raise ValueError(f"condition_dim {config.condition_dim} != shared condition_dim {shared.config.condition_dim}")
        self.null_token = nn.Parameter(torch.randn(1, 1, config.condition_dim) * 0.02)
        if config.backbone == "conv":
            self.unet: nn.Module = ConvUNet(config, shared=shared)
            self.cross_attention_points = len(self.unet.attention)
            self._refer_to_shared(shared)
            return
        self.unet = build_image_unet(config)
        # Tie the shared layers in place of every cross-attention (attn2) of the UNet, in module order.
        points = [(name, module) for name, module in self.unet.named_modules() if hasattr(module, "attn2") and module.attn2 is not None]
        if len(points) > shared.config.num_layers:
            raise ValueError(f"the UNet has {len(points)} cross-attention points but SharedCrossAttention has "
                             f"{shared.config.num_layers} layers; raise num_layers")
        for index, (_, block) in enumerate(points):
            block.attn2 = shared.layers[index]
        self.cross_attention_points = len(points)
        self._refer_to_shared(shared)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor | int, *, condition: Condition) -> torch.Tensor:
        spatial = stack_spatial(condition, channels=self.config.spatial_channels, like=noisy)
        sample = noisy if spatial is None else torch.cat([noisy, spatial], dim=1)
        tokens, mask = _with_null_token(self.null_token, condition)
        steps = _timesteps_for(timesteps, noisy.shape[0], noisy.device)
        if self.config.backbone == "conv":
            bias = None if condition.mask_is_full else mask_to_bias(mask, dtype=noisy.dtype)
            return self.unet(sample, steps, tokens=tokens.to(noisy.dtype), bias=bias, pooled=condition.pooled)
        output = self.unet(
            sample,
            steps,
            encoder_hidden_states=tokens.to(noisy.dtype),
            encoder_attention_mask=None if condition.mask_is_full else mask,
            class_labels=condition.pooled.to(noisy.dtype) if self.config.adaptive else None,
            return_dict=False,
        )[0]
        return output

    @torch.no_grad()
    def zero_init_noise_path(self) -> None:
        """Zero the noisy-target input channels and the time-embedding projection so the model starts
        as (and can be warm-started from) a regressor of the condition alone (DESIGN §8)."""
        self.unet.conv_in.weight[:, : self.config.target_channels].zero_()
        self.unet.time_embedding.linear_2.weight.zero_()
        self.unet.time_embedding.linear_2.bias.zero_()


# --------------------------------------------------------------------------- text-latent denoiser
@dataclass
class TextLatentDenoiserConfig:
    """Transformer over the text latent (``latent_tokens`` × ``latent_dim``).

    Attributes:
        width: model width W; must equal the shared ``query_dim``.
        layers: blocks, each self-attention → shared cross-attention (layer i of the shared set) → MLP,
            all AdaLN-modulated (shift, scale, gate) from time + pooled condition.
    """

    latent_tokens: int = 8
    latent_dim: int = 32
    width: int = 64
    layers: int = 4
    heads: int = 4
    condition_dim: int = 64
    mlp_ratio: int = 4


class _AdaLNBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int, cross_attention: nn.Module):
        super().__init__()
        from diffusers.models.attention_processor import Attention

        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.self_attention = Attention(query_dim=width, heads=heads, dim_head=width // heads, bias=True, out_bias=True)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.cross_attention = cross_attention  # the shared module object
        self.norm3 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width * mlp_ratio), nn.GELU(approximate="tanh"), nn.Linear(width * mlp_ratio, width))
        # AdaLN-zero (DiT): shift/scale/gate per sub-layer, zero-initialised so each block starts as identity.
        self.modulation = nn.Linear(width, 9 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, hidden: torch.Tensor, emb: torch.Tensor, tokens: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        mods = self.modulation(nn.functional.silu(emb)).unsqueeze(1).chunk(9, dim=-1)
        shift1, scale1, gate1, shift2, scale2, gate2, shift3, scale3, gate3 = mods
        hidden = hidden + gate1 * self.self_attention(self.norm1(hidden) * (1 + scale1) + shift1)
        hidden = hidden + gate2 * self.cross_attention(self.norm2(hidden) * (1 + scale2) + shift2,
                                                       encoder_hidden_states=tokens, attention_mask=bias)
        hidden = hidden + gate3 * self.mlp(self.norm3(hidden) * (1 + scale3) + shift3)
        return hidden


class TextLatentDenoiser(UsesSharedCrossAttention):
    """Denoiser of the text latent.

    ``forward(noisy (B, latent_tokens, latent_dim), timesteps (B,) or scalar, *, condition: Condition)
    -> (B, latent_tokens, latent_dim)``.
    """

    config_class = TextLatentDenoiserConfig

    def __init__(self, config: TextLatentDenoiserConfig, *, shared: SharedCrossAttention):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        if config.width != shared.config.query_dim or config.condition_dim != shared.config.condition_dim:
            raise ValueError(
                f"TextLatentDenoiser width/condition_dim ({config.width}, {config.condition_dim}) must equal the shared "
                f"cross-attention's query_dim/condition_dim ({shared.config.query_dim}, {shared.config.condition_dim})"
            )
        if config.layers > shared.config.num_layers:
            raise ValueError(f"{config.layers} layers need {config.layers} shared cross-attention layers, "
                             f"SharedCrossAttention has {shared.config.num_layers}")
        self.config = config
        width = config.width
        self.input_projection = nn.Linear(config.latent_dim, width)
        self.position = nn.Parameter(torch.randn(1, config.latent_tokens, width) * 0.02)
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(width, width)
        self.condition_embedding = nn.Linear(config.condition_dim, width)  # adaptive parameters' input
        self.null_token = nn.Parameter(torch.randn(1, 1, config.condition_dim) * 0.02)
        self.blocks = nn.ModuleList(
            _AdaLNBlock(width, config.heads, config.mlp_ratio, shared.layers[index]) for index in range(config.layers)
        )
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Linear(width, 2 * width)
        nn.init.zeros_(self.final_modulation.weight)
        nn.init.zeros_(self.final_modulation.bias)
        self.output_projection = nn.Linear(width, config.latent_dim)
        self._refer_to_shared(shared)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor | int, *, condition: Condition) -> torch.Tensor:
        batch = noisy.shape[0]
        steps = _timesteps_for(timesteps, batch, noisy.device)
        emb = self.time_embedding(self.time_proj(steps).to(noisy.dtype))
        emb = emb + self.condition_embedding(condition.pooled.to(noisy.dtype))
        tokens, mask = _with_null_token(self.null_token, condition)
        bias = None if condition.mask_is_full else mask_to_bias(mask, dtype=noisy.dtype)
        hidden = self.input_projection(noisy) + self.position
        for block in self.blocks:
            hidden = block(hidden, emb, tokens.to(noisy.dtype), bias)
        shift, scale = self.final_modulation(nn.functional.silu(emb)).unsqueeze(1).chunk(2, dim=-1)
        return self.output_projection(self.final_norm(hidden) * (1 + scale) + shift)

    @torch.no_grad()
    def zero_init_noise_path(self) -> None:
        """Zero the noisy-latent input projection and the time-embedding projection (regression warm start)."""
        self.input_projection.weight.zero_()
        self.time_embedding.linear_2.weight.zero_()
        self.time_embedding.linear_2.bias.zero_()
