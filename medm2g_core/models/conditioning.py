"""The cross-guided condition path of MedM2G (DESIGN.md §1.5).

Three parts:

1. ``SharedCrossAttention`` — ONE set of diffusers ``Attention`` layers shared by every flow of a
   bundle. Image denoisers put its layers in place of their low-resolution ``attn2`` modules and the
   text-latent denoiser uses them as its cross-attention sub-layers, so sharing is literal (the same
   parameter objects). Saved once (``flows/shared/``) and excluded from each flow's weights.
2. Condition assembly for many sources (pure functions): ``ConditionInputs`` holds the semantic
   sources (aligned tokens, pooled embedding, CoDi weight) and the spatial (registered image) sources
   of one batch; ``assemble_condition(inputs, keep=...)`` turns it into the tensors a denoiser
   consumes (``Condition``): tokens concatenated with their masks, pooled = weighted sum of the kept
   sources' pooled embeddings, spatial sources zeroed where dropped plus presence flags. ``keep``
   (B, S) selects sources per sample: random in training (condition dropout), per guidance branch at
   sampling. The per-flow adaptive parameters (scale/shift from ``pooled``) and the learned null
   token live in the denoisers.
3. Joint generation (CoDi's environment encoders): ``EnvironmentEncoder`` projects a modality's
   latent into condition tokens; ``joint_predictions`` gives each diffuser the environment tokens of
   its PARTNERS' latents (CoDi's released code feeds a diffuser its own latent — a bug not copied).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
from torch import nn

from medm2g_core.models.pretrained import PretrainedModule


# --------------------------------------------------------------------------- shared cross-attention
@dataclass
class SharedCrossAttentionConfig:
    """``num_layers`` diffusers ``Attention`` layers: queries of width ``query_dim``, keys/values
    from condition tokens of width ``condition_dim``; ``heads`` × (query_dim // heads)."""

    num_layers: int = 4
    query_dim: int = 64
    condition_dim: int = 64
    heads: int = 4


class SharedCrossAttention(PretrainedModule):
    """The cross-attention sub-layers shared by all flows (``layers[k]`` = insertion point k).

    ``layers[k](hidden (B, L, query_dim), encoder_hidden_states=(B, N, condition_dim),
    attention_mask=bias (B, 1, N)) -> (B, L, query_dim)``.
    """

    config_class = SharedCrossAttentionConfig

    def __init__(self, config: SharedCrossAttentionConfig):
        super().__init__()
        from diffusers.models.attention_processor import Attention

        if config.query_dim % config.heads:
            raise ValueError(f"query_dim {config.query_dim} must be divisible by heads {config.heads}")
        self.config = config
        self.layers = nn.ModuleList(
            Attention(
                query_dim=config.query_dim,
                cross_attention_dim=config.condition_dim,
                heads=config.heads,
                dim_head=config.query_dim // config.heads,
                bias=False,
                out_bias=True,
            )
            for _ in range(config.num_layers)
        )

    def parameter_ids(self) -> set[int]:
        return {id(p) for p in self.parameters()}


class UsesSharedCrossAttention(PretrainedModule):
    """A component whose cross-attention is the bundle's ``SharedCrossAttention`` (the denoisers, a flow's
    network). The shared layers are held by reference, not as a registered child, because the bundle
    owns them: they are neither saved with this component nor expected in its weights file."""

    def _refer_to_shared(self, shared: SharedCrossAttention) -> None:
        object.__setattr__(self, "_shared", shared)

    @property
    def shared(self) -> SharedCrossAttention:
        return self._shared

    def external_parameter_ids(self) -> set[int]:
        return self._shared.parameter_ids()

    def shared_layers_used(self) -> list[int]:
        """Indices k of the shared ``layers[k]`` this component calls (they are among its submodules); the
        others are not in its forward pass (a conv UNet cross-attends only where its width is ``query_dim``,
        the text denoiser uses its first ``layers``)."""
        mine = {id(module) for module in self.modules()}
        return [k for k, layer in enumerate(self._shared.layers) if id(layer) in mine]


def mask_to_bias(mask: torch.Tensor, *, dtype: torch.dtype) -> torch.Tensor:
    """Bool/0-1 key mask (B, N) → additive attention bias (B, 1, N): 0 where kept, −10000 where masked
    (diffusers' convention; finite so that a fully masked row cannot produce NaN)."""
    return ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)


# --------------------------------------------------------------------------- condition assembly
@dataclass
class SemanticSource:
    """One semantic condition source of a batch (aligned embeddings of an X-ray, a report, an MRI...).

    Attributes:
        tokens: (B, N, C) condition tokens (C = ``SharedCrossAttentionConfig.condition_dim``).
        mask: (B, N) bool, True = real token; ``None`` = all real.
        pooled: (B, C) pooled embedding driving the adaptive parameters; ``None`` = masked mean of tokens.
        weight: CoDi composition weight of this source in ``pooled`` (``--weights 0.7,0.3``).
        name: informative (``"xray"``, ``"report"``).
    """

    tokens: torch.Tensor
    mask: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    weight: float = 1.0
    name: str = ""

    def resolved(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = self.mask if self.mask is not None else torch.ones(self.tokens.shape[:2], dtype=torch.bool, device=self.tokens.device)
        mask = mask.bool()
        if self.pooled is not None:
            pooled = self.pooled
        else:
            weights = mask.to(self.tokens.dtype).unsqueeze(-1)
            pooled = (self.tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.tokens, mask, pooled


@dataclass
class ConditionInputs:
    """All condition sources of one batch, in the flow's source order.

    ``semantic[i] = None`` or ``spatial[j] = None`` marks a source missing at inference (it is then
    treated as dropped for every sample). Source index order for ``keep`` masks and per-source
    guidance: semantic sources first, then spatial ones.

    Attributes:
        semantic: cross-attention sources (``SemanticSource``).
        spatial: registered images concatenated channel-wise to the denoiser input, each
            (B, c_j, H, W) on the target's grid (for latent flows: the source latent).
    """

    semantic: list[SemanticSource | None] = field(default_factory=list)
    spatial: list[torch.Tensor | None] = field(default_factory=list)

    @property
    def num_sources(self) -> int:
        return len(self.semantic) + len(self.spatial)

    @property
    def batch_size(self) -> int:
        for source in self.semantic:
            if source is not None:
                return source.tokens.shape[0]
        for image in self.spatial:
            if image is not None:
                return image.shape[0]
        raise ValueError("ConditionInputs has no source present; give at least one, or pass batch size explicitly")

    def present(self) -> list[bool]:
        return [s is not None for s in self.semantic] + [s is not None for s in self.spatial]


@dataclass
class Condition:
    """Assembled condition tensors a denoiser consumes (``denoiser(noisy, t, condition=...)``).

    Attributes:
        tokens: (B, N, C) concatenated semantic tokens (dropped sources zeroed); N may be 0.
        mask: (B, N) bool key mask.
        pooled: (B, C) weighted sum of the kept sources' pooled embeddings (zeros if none kept).
        spatial: per spatial source (B, c_j, H, W) zeroed where dropped, or ``None`` when missing.
        presence: (B, n_spatial) float, 1 where the spatial source is present and kept.
        mask_is_full: True when every token is real, so denoisers may skip the attention mask (lets
            PyTorch pick its fastest attention kernel); computed once at assembly, not per step.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    spatial: list[torch.Tensor | None]
    presence: torch.Tensor
    mask_is_full: bool = False

    @staticmethod
    def cat(conditions: Sequence["Condition"]) -> "Condition":
        """Concatenate along the batch axis (guidance branches evaluated in one forward pass)."""
        first = conditions[0]
        spatial = [
            None if first.spatial[j] is None else torch.cat([c.spatial[j] for c in conditions])
            for j in range(len(first.spatial))
        ]
        return Condition(
            tokens=torch.cat([c.tokens for c in conditions]),
            mask=torch.cat([c.mask for c in conditions]),
            pooled=torch.cat([c.pooled for c in conditions]),
            spatial=spatial,
            presence=torch.cat([c.presence for c in conditions]),
            mask_is_full=all(c.mask_is_full for c in conditions),
        )


def assemble_condition(inputs: ConditionInputs, *, keep: torch.Tensor | None = None, condition_dim: int | None = None,
                       batch_size: int | None = None) -> Condition:
    """Join many sources into one ``Condition`` (pure function).

    Args:
        inputs: the sources of a batch of size B.
        keep: (B, S) bool, which sources each sample keeps (S = ``inputs.num_sources``); ``None`` =
            keep every present source. Missing sources are never kept.
        condition_dim: C, needed only when no semantic source is present.
        batch_size: B, needed only when no source is present at all.

    Semantic tokens are concatenated (dropped sources: mask False, tokens zeroed); ``pooled`` =
    Σ_s keep·w_s·pooled_s / Σ_s keep·w_s (CoDi's weighted combination, renormalised over the kept
    sources; zeros when none is kept — the denoiser's learned biases then act as the null condition).
    """
    batch = batch_size if batch_size is not None else inputs.batch_size
    present_semantic = [s for s in inputs.semantic if s is not None]
    device = (present_semantic[0].tokens.device if present_semantic
              else next((x.device for x in inputs.spatial if x is not None), torch.device("cpu")))
    if keep is None:
        keep = torch.ones(batch, inputs.num_sources, dtype=torch.bool, device=device)
    if tuple(keep.shape) != (batch, inputs.num_sources):
        raise ValueError(f"keep mask has shape {tuple(keep.shape)}, expected ({batch}, {inputs.num_sources})")
    keep = keep.to(device).bool() & torch.tensor(inputs.present(), dtype=torch.bool, device=device)

    if present_semantic:
        dim, dtype = present_semantic[0].tokens.shape[-1], present_semantic[0].tokens.dtype
    elif condition_dim is not None:
        dim, dtype = condition_dim, torch.float32
    else:
        raise ValueError("no semantic source present; pass condition_dim= so that empty tokens can be built")

    token_parts, mask_parts = [], []
    pooled = torch.zeros(batch, dim, dtype=dtype, device=device)
    total_weight = torch.zeros(batch, 1, dtype=dtype, device=device)
    for index, source in enumerate(inputs.semantic):
        if source is None:
            continue
        tokens, mask, source_pooled = source.resolved()
        kept = keep[:, index]
        token_parts.append(tokens * kept.to(dtype)[:, None, None])
        mask_parts.append(mask & kept[:, None])
        weight = kept.to(dtype)[:, None] * float(source.weight)
        pooled = pooled + weight * source_pooled
        total_weight = total_weight + weight
    pooled = pooled / total_weight.clamp_min(1e-8)
    tokens = torch.cat(token_parts, 1) if token_parts else torch.zeros(batch, 0, dim, dtype=dtype, device=device)
    mask = torch.cat(mask_parts, 1) if mask_parts else torch.zeros(batch, 0, dtype=torch.bool, device=device)

    offset = len(inputs.semantic)
    spatial: list[torch.Tensor | None] = []
    for j, image in enumerate(inputs.spatial):
        kept = keep[:, offset + j]
        spatial.append(None if image is None else image * kept.to(image.dtype).reshape(-1, *([1] * (image.ndim - 1))))
    presence = keep[:, offset:].to(dtype)
    return Condition(tokens=tokens, mask=mask, pooled=pooled, spatial=spatial, presence=presence,
                     mask_is_full=bool(mask.all()))


def stack_spatial(condition: Condition, *, channels: Sequence[int], like: torch.Tensor) -> torch.Tensor | None:
    """Channel stack of the spatial sources (zeros for a missing one) followed by one presence
    channel per source: (B, Σc_j + n_spatial, *like.shape[2:]); ``None`` when the flow has none."""
    if not channels:
        return None
    spatial = condition.spatial if condition.spatial else [None] * len(channels)  # no sources given: all missing
    if len(spatial) != len(channels):
        raise ValueError(f"condition has {len(condition.spatial)} spatial sources, the denoiser was built for {len(channels)}")
    batch, size = like.shape[0], like.shape[2:]
    parts = []
    for image, count in zip(spatial, channels):
        if image is None:
            image = like.new_zeros(batch, count, *size)
        elif image.shape[1] != count or tuple(image.shape[2:]) != tuple(size):
            raise ValueError(f"spatial source has shape {tuple(image.shape[1:])}, expected ({count}, {', '.join(map(str, size))})")
        parts.append(image.to(like.dtype))
    if not condition.spatial:  # no sources given: every spatial source is missing
        presence = like.new_zeros(batch, len(channels))
    elif condition.presence.shape[1] != len(channels):
        raise ValueError(f"condition has {condition.presence.shape[1]} presence flags for {len(channels)} spatial sources")
    else:
        presence = condition.presence
    presence = presence.to(like.dtype).reshape(batch, -1, *([1] * len(size))).expand(batch, len(channels), *size)
    return torch.cat(parts + [presence], dim=1)


# --------------------------------------------------------------------------- environment encoders
@dataclass
class EnvironmentEncoderConfig:
    """Projects one modality's (noisy) latent to condition tokens for its partners' cross-attention.

    ``kind="image"``: latent (B, channels, H, W) → patches of ``patch_size`` → (B, HW/p², condition_dim).
    ``kind="tokens"``: latent (B, N, channels) (the text latent) → (B, N, condition_dim).
    """

    kind: Literal["image", "tokens"] = "image"
    channels: int = 1
    condition_dim: int = 64
    patch_size: int = 8


class EnvironmentEncoder(PretrainedModule):
    """CoDi's environment encoder V: ``forward(latent) -> SemanticSource`` (tokens (B, N, C))."""

    config_class = EnvironmentEncoderConfig

    def __init__(self, config: EnvironmentEncoderConfig):
        super().__init__()
        self.config = config
        if config.kind == "image":
            self.project = nn.Conv2d(config.channels, config.condition_dim, config.patch_size, stride=config.patch_size)
        elif config.kind == "tokens":
            self.project = nn.Linear(config.channels, config.condition_dim)
        else:
            raise ValueError(f"EnvironmentEncoderConfig.kind {config.kind!r}; valid: image, tokens")
        self.norm = nn.LayerNorm(config.condition_dim)

    def forward(self, latent: torch.Tensor, *, name: str = "environment") -> SemanticSource:
        if self.config.kind == "image":
            tokens = self.project(latent).flatten(2).transpose(1, 2)
        else:
            tokens = self.project(latent)
        return SemanticSource(tokens=self.norm(tokens), name=name)


def environment_tokens(partner_latent: torch.Tensor, *, encoder: EnvironmentEncoder) -> SemanticSource:
    """The environment condition a diffuser receives in joint generation: its PARTNER's latent
    (B, ...) projected by the partner modality's environment encoder."""
    return encoder(partner_latent, name="environment")


def joint_predictions(*, denoisers: Sequence[Callable[..., torch.Tensor]], noisy: Sequence[torch.Tensor],
                      timesteps: torch.Tensor, environment_encoders: Sequence[EnvironmentEncoder],
                      inputs: Sequence[ConditionInputs] | None = None) -> dict[str, list]:
    """One joint-generation step over modalities 0..M-1 (CoDi's joint diffusion, partner-fed).

    Diffuser i receives ``inputs[i]`` plus, as extra semantic sources, the environment tokens of every
    partner j ≠ i — ``environment_encoders[j](noisy[j])`` — never of its own latent.

    Returns ``{"predictions": [pred_i], "environment": [[SemanticSource fed to i]]}``.
    """
    count = len(denoisers)
    if not (len(noisy) == len(environment_encoders) == count):
        raise ValueError("joint_predictions needs one noisy latent and one environment encoder per denoiser")
    inputs = list(inputs) if inputs is not None else [ConditionInputs() for _ in range(count)]
    encoded = [environment_tokens(noisy[j], encoder=environment_encoders[j]) for j in range(count)]
    predictions, environment = [], []
    for i in range(count):
        partners = [encoded[j] for j in range(count) if j != i]
        full = ConditionInputs(semantic=list(inputs[i].semantic) + partners, spatial=list(inputs[i].spatial))
        condition = assemble_condition(full, batch_size=noisy[i].shape[0])
        predictions.append(denoisers[i](noisy[i], timesteps, condition=condition))
        environment.append(partners)
    return {"predictions": predictions, "environment": environment}
