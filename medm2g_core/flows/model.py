"""One flow of a bundle: its network (``FlowNetwork``), its condition path, and inference (``FlowModel``).

Condition path (DESIGN §1.5). Every source modality of a flow gives one **semantic source**
built from the frozen aligned encoders of the bundle (``align/``):

- its aligned pooled embedding (the shared, text-hub-aligned space) — L2-normalised, scaled to unit
  RMS, projected by the flow's ``pooled_projection`` — drives the per-flow adaptive parameters and is
  also the first condition token;
- its encoder tokens (X-ray/CT/MRI token grid, report word states) projected per encoder family by the
  flow's ``adapters`` follow as cross-attention tokens, plus a learned per-source embedding.

Registered image flows (``mri-ct``, ``t1-t2``, ``t2+pd-t1``) also give each source as a **spatial
source** (its slice, plus 2.5D context slices) concatenated channel-wise. Dropping a source (training
dropout, or absent at inference) drops both its semantic and its spatial part.

Composition (CoDi-style) is ``FlowModel.predict(sources, weights=...)`` on ONE flow:
sources beyond the flow's own (any modality the bundle's align stage encodes) are added as extra
semantic sources; the adaptive parameters see the weighted mean of every kept source's aligned pooled
embedding (``assemble_condition``: Σ w_s·p_s / Σ w_s), and cross-attention sees all their tokens. A
source whose encoder family the flow was not trained with contributes only its aligned pooled token
(the aligned space is shared across modalities; its raw encoder tokens are not). So a ``t2-t1`` flow
trained with T2 alone can be driven by T2 and PD together (same MRI encoder family), and an
``report-xray`` flow by a report plus a prior image.

Inference contract: docs/architecture.md, "Flow inference".
"""

from __future__ import annotations

import math
import numbers
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medm2g_core.bundle import EMA_WEIGHTS, SHARED, TOKENIZER, align_dir, autoencoder_dir, flow_dir, shared_dir, text_vae_dir
from medm2g_core.errors import BundleError, ConfigError
from medm2g_core.flows.config import FlowConfig
from medm2g_core.flows.recipe import CONDITION_NORMS
from medm2g_core.modalities import CT_HU_RANGE, MRI_PERCENTILES, Modality, Pair, parse_modality, parse_pair
from medm2g_core.models.conditioning import ConditionInputs, SemanticSource, SharedCrossAttention, UsesSharedCrossAttention
from medm2g_core.models.denoisers import ImageDenoiser, ImageDenoiserConfig, TextLatentDenoiser, TextLatentDenoiserConfig
from medm2g_core.serialization import dataclass_from_dict

SHARED_NAME = SHARED
EMA_NAME = EMA_WEIGHTS


def family_of(modality: Modality) -> str:
    """Aligned encoder family of a modality (``report`` for text)."""
    return modality.encoder_family


# --------------------------------------------------------------------------- network
@dataclass
class FlowNetworkConfig:
    """Everything needed to rebuild one flow (``flows/<pair>/config.json``).

    Attributes:
        sources / target: modality names (``Modality.value``), sources in condition order.
        kind: ``"image"`` (UNet over an image or image latent) or ``"text"`` (transformer over the text latent).
        image_size: pixels per side of images entering and leaving the flow.
        context_slices: 2.5D neighbouring slices per side in each spatial source.
        spatial: registered image flow (sources concatenated channel-wise).
        embed_dim: width of the aligned pooled embeddings; token_dims: encoder family → token width.
        flow: ``FlowConfig`` fields; denoiser: ``ImageDenoiserConfig``/``TextLatentDenoiserConfig`` fields.
        condition_encoders: image encoder family → ``ImageEncoderConfig`` fields of the flow's OWN copy of
            that aligned encoder (``FlowRecipe.condition_encoder: finetune``), initialised from ``align/`` and
            trained with the flow; empty = the frozen aligned encoders condition the flow.
        condition_norm: ``FlowRecipe.condition_norm`` — ``batch`` standardises each source family's pooled
            embedding and tokens per channel (``BatchNorm1d``, no affine); ``none`` (flows saved before it).
        ct_source_windows: extra HU windows of a CT source on the spatial path (``FlowRecipe``): each
            adds ``1 + 2·context_slices`` channels, computed from the normalised CT by ``window_channels``.
        normalisation: how images were mapped to [-1, 1] in training (the recipe's ``data.ct_window`` and
            ``data.mri_percentiles``); inference normalises sources and denormalises a CT target with the
            same numbers (``inference.processing``); a config without it means the defaults.
    """

    sources: tuple[str, ...] = ()
    target: str = ""
    kind: str = "image"
    image_size: int = 64
    context_slices: int = 0
    spatial: bool = False
    embed_dim: int = 64
    token_dims: dict[str, int] = field(default_factory=dict)
    flow: dict[str, Any] = field(default_factory=dict)
    denoiser: dict[str, Any] = field(default_factory=dict)
    ct_source_windows: list[list[float]] = field(default_factory=list)
    condition_encoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    condition_norm: str = "none"
    normalisation: dict[str, Any] = field(
        default_factory=lambda: {"ct_window": list(CT_HU_RANGE), "mri_percentiles": list(MRI_PERCENTILES), "ct_units": "HU"})

    @property
    def normalise_options(self) -> dict[str, Any]:
        """``ct_window``, ``mri_percentiles`` (``transforms.normalize`` keywords) and ``ct_units`` (what the CT
        window's numbers are: HU, or ``modalities.CT_WINDOW_8BIT_UNITS``; flows saved before it existed: HU)."""
        return {"ct_window": tuple(self.normalisation.get("ct_window", CT_HU_RANGE)),
                "mri_percentiles": tuple(self.normalisation.get("mri_percentiles", MRI_PERCENTILES)),
                "ct_units": str(self.normalisation.get("ct_units", "HU"))}

    @property
    def pair(self) -> Pair:
        return Pair(tuple(parse_modality(s) for s in self.sources), parse_modality(self.target))

    @property
    def flow_config(self) -> FlowConfig:
        values = dict(self.flow)
        values.pop("extra", None)  # an empty, never-read field that flows saved before FlowConfig dropped it carry
        if isinstance(values.get("source_dropout"), list):
            values["source_dropout"] = tuple(values["source_dropout"])
        return dataclass_from_dict(FlowConfig, values, where="flow config")

    @property
    def denoiser_config(self) -> ImageDenoiserConfig | TextLatentDenoiserConfig:
        cls = ImageDenoiserConfig if self.kind == "image" else TextLatentDenoiserConfig
        return dataclass_from_dict(cls, dict(self.denoiser), where="denoiser config")


class FlowNetwork(UsesSharedCrossAttention):
    """The learnable parts of one flow: condition adapters + denoiser (the shared cross-attention is
    held by reference and saved once in ``flows/shared/``).

    ``forward(noisy, timesteps, *, condition: Condition) -> prediction`` (the denoiser's call), and
    ``semantic_source(modality, pooled (B, D), tokens (B, N, c), mask (B, N)) -> SemanticSource``.
    """

    config_class = FlowNetworkConfig

    def __init__(self, config: FlowNetworkConfig, *, shared: SharedCrossAttention):
        super().__init__()
        self.config = config
        width = shared.config.condition_dim
        self.adapters = nn.ModuleDict(
            {family: nn.Sequential(nn.Linear(dim, width), nn.LayerNorm(width)) for family, dim in config.token_dims.items()}
        )
        self.pooled_projection = nn.Linear(config.embed_dim, width)
        if config.condition_norm == "batch":
            self.pooled_norms = nn.ModuleDict({family: nn.BatchNorm1d(config.embed_dim, affine=False) for family in config.token_dims})
            self.token_norms = nn.ModuleDict({family: nn.BatchNorm1d(dim, affine=False) for family, dim in config.token_dims.items()})
        elif config.condition_norm not in CONDITION_NORMS:
            raise ConfigError(f"condition_norm {config.condition_norm!r}; valid: {', '.join(CONDITION_NORMS)}")
        self.source_embedding = nn.ParameterDict(
            {name: nn.Parameter(torch.randn(width) * 0.02) for name in config.sources}
        )
        from medm2g_core.models.encoders import ImageEncoder, ImageEncoderConfig

        self.condition_encoders = nn.ModuleDict({
            family: ImageEncoder(dataclass_from_dict(ImageEncoderConfig, dict(values), where=f"condition encoder {family}"))
            for family, values in config.condition_encoders.items()
        })
        denoiser_config = config.denoiser_config
        if config.kind == "image":
            self.denoiser: nn.Module = ImageDenoiser(denoiser_config, shared=shared)
        elif config.kind == "text":
            self.denoiser = TextLatentDenoiser(denoiser_config, shared=shared)
        else:
            raise ConfigError(f"flow kind {config.kind!r}; valid: image, text")
        self._refer_to_shared(shared)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor | int, *, condition) -> torch.Tensor:
        return self.denoiser(noisy, timesteps, condition=condition)

    @torch.no_grad()
    def init_condition_encoders(self, align: Any) -> None:
        """Start the flow's own condition encoders from the aligned ones they copy."""
        for family, encoder in self.condition_encoders.items():
            encoder.load_state_dict(align.images[family].state_dict())

    @staticmethod
    def _standardised(norm: nn.BatchNorm1d, values: torch.Tensor) -> torch.Tensor:
        """Per-channel standardisation of (N, C) values: batch statistics in training (a batch of one, which
        has none, uses the running ones), running statistics in evaluation."""
        if norm.training and values.shape[0] < 2:
            return F.batch_norm(values, norm.running_mean, norm.running_var, training=False, eps=norm.eps)
        return norm(values)

    def semantic_source(self, modality: Modality, *, pooled: torch.Tensor, tokens: torch.Tensor | None,
                        mask: torch.Tensor | None, weight: float = 1.0) -> SemanticSource:
        """Condition tokens of one source from its aligned encoder outputs (see the module docstring)."""
        family = family_of(modality)
        scale = math.sqrt(pooled.shape[-1])
        unit = F.normalize(pooled.float(), dim=-1) * scale
        standardise = self.config.condition_norm == "batch" and family in self.pooled_norms
        if standardise:
            unit = self._standardised(self.pooled_norms[family], unit)
        projected = self.pooled_projection(unit)
        parts, masks = [projected[:, None]], [torch.ones(pooled.shape[0], 1, dtype=torch.bool, device=pooled.device)]
        if tokens is not None and family in self.adapters:
            tokens = tokens.float()
            if standardise:
                tokens = self._standardised(self.token_norms[family], tokens.flatten(0, 1)).view_as(tokens)
            parts.append(self.adapters[family](tokens))
            masks.append(torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device) if mask is None else mask.bool())
        condition_tokens = torch.cat(parts, 1)
        if modality.value in self.source_embedding:
            condition_tokens = condition_tokens + self.source_embedding[modality.value]
        return SemanticSource(tokens=condition_tokens, mask=torch.cat(masks, 1), pooled=projected, weight=weight, name=modality.value)


# --------------------------------------------------------------------------- condition from sources
def center_channels(source: torch.Tensor, *, context_slices: int) -> torch.Tensor:
    """The centre slice (B, 1, H, W) of a source with 2.5D context channels (B, 2c+1, H, W)."""
    return source[:, context_slices : context_slices + 1]


@torch.no_grad()
def encode_aligned(align: Any, modality: Modality, value: torch.Tensor | Sequence[str], *, context_slices: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Frozen aligned encoder outputs of one source: pooled (B, D), tokens (B, N, c), mask (B, N) or None."""
    if modality is Modality.REPORT:
        pooled, tokens, mask = align.encode_text(list(value))
        return pooled.float(), tokens.float(), mask.bool()
    image = center_channels(value, context_slices=context_slices) if value.ndim == 4 else value
    pooled, tokens = align.encode_image(image.float(), modality)
    return pooled.float(), tokens.float(), None


def build_condition(network: FlowNetwork, align: Any, sources: dict[Modality, Any], *,
                    weights: dict[Modality, float] | None = None, spatial: dict[Modality, torch.Tensor] | None = None,
                    encoded: dict[Modality, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] | None = None,
                    ) -> tuple[ConditionInputs, list[Modality]]:
    """``ConditionInputs`` of a batch and the modality of each semantic source.

    Semantic order: the flow's sources (``None`` when absent), then extra sources (composition) in the
    order given. Spatial order: the flow's sources (registered flows only); ``spatial`` may replace the
    image given to the spatial path (e.g. autoencoder latents of latent flows).
    """
    config = network.config
    own = [parse_modality(s) for s in config.sources]
    extra = [m for m in sources if m not in own]
    semantic: list[SemanticSource | None] = []
    order: list[Modality] = []
    for modality in own + extra:
        order.append(modality)
        value = sources.get(modality)
        if value is None:
            semantic.append(None)
            continue
        if modality not in own and not modality.is_image and modality is not Modality.REPORT:
            raise ValueError(f"cannot condition on {modality.value}")
        family = family_of(modality)
        if family in network.condition_encoders and isinstance(value, torch.Tensor):
            image = center_channels(value, context_slices=config.context_slices) if value.ndim == 4 else value
            pooled, tokens = network.condition_encoders[family](image.float())
            mask = None
        elif encoded and modality in encoded:
            pooled, tokens, mask = encoded[modality]
        else:
            pooled, tokens, mask = encode_aligned(align, modality, value, context_slices=config.context_slices)
        weight = 1.0 if weights is None else float(weights.get(modality, 1.0))
        semantic.append(network.semantic_source(modality, pooled=pooled, tokens=tokens, mask=mask, weight=weight))
    spatial_inputs: list[torch.Tensor | None] = []
    if config.spatial:
        for modality in own:
            value = (spatial or {}).get(modality, sources.get(modality))
            if value is not None and modality is Modality.CT and config.ct_source_windows and modality not in (spatial or {}):
                value = window_channels(value, config.normalise_options["ct_window"], config.ct_source_windows)
            spatial_inputs.append(None if value is None else value.float())
    return ConditionInputs(semantic=semantic, spatial=spatial_inputs), order


def window_channels(ct: torch.Tensor, ct_window: Sequence[float], windows: Sequence[Sequence[float]]) -> torch.Tensor:
    """(B, c, H, W) CT normalised with ``ct_window`` → (B, c·(1 + len(windows)), H, W): the input, then each
    HU window of ``windows`` mapped to [-1, 1] (clipped) — an affine map of the normalised values, so
    training and inference compute it identically from what they already have."""
    from medm2g_core.data.transforms import NormState, denormalize

    hu = denormalize(ct.float(), NormState(Modality.CT.value, "window", float(ct_window[0]), float(ct_window[1]), units="HU"))
    parts = [ct]
    for w_low, w_high in windows:
        parts.append(((hu - float(w_low)) / (float(w_high) - float(w_low)) * 2.0 - 1.0).clamp(-1.0, 1.0).to(ct.dtype))
    return torch.cat(parts, 1)


def expand_keep(keep: torch.Tensor, *, spatial: bool, unconditional: torch.Tensor | None = None) -> torch.Tensor:
    """Per-modality keep mask (B, S) → per-condition-source mask (semantic then spatial parts).

    ``unconditional`` (B, 1) marks the samples of classifier-free guidance's unconditional branch: they drop
    every semantic source, while a registered flow's spatial sources (its anatomy) stay as ``keep`` says."""
    semantic = keep if unconditional is None else keep & ~unconditional
    return torch.cat([semantic, keep], 1) if spatial else semantic


# --------------------------------------------------------------------------- inference
@dataclass
class Prediction:
    """Output of ``FlowModel.predict``.

    Image targets: ``mean`` (B, 1, H, W) in [-1, 1], ``std`` (B, 1, H, W) or None when samples == 1,
    ``samples`` (K, B, 1, H, W). Report targets: ``texts`` B × K strings; ``mean``/``samples`` then hold
    the text latents ((B, T, d) and (K, B, T, d)) and ``std`` is None.
    """

    mean: torch.Tensor
    std: torch.Tensor | None
    samples: torch.Tensor
    texts: list[list[str]] | None = None


# Flows loaded in one process share ONE SharedCrossAttention object per bundle state (and one AlignModel),
# so the shared cross-attention is literally shared at inference as in training. Weak values: freed when
# no flow uses them any more; the key includes the weight files' mtimes so a retrained bundle reloads.
_LOADED: "weakref.WeakValueDictionary[tuple, nn.Module]" = weakref.WeakValueDictionary()


def _cache_key(kind: str, directory: Path, *, device: str, use_ema: bool) -> tuple:
    stamps = tuple(p.stat().st_mtime_ns if p.is_file() else 0 for p in (directory / "model.safetensors", directory / EMA_NAME))
    return (kind, str(directory.resolve()), stamps, str(device), use_ema)


def _read_shared(bundle: Path, *, device: str, use_ema: bool, cached: bool = False) -> SharedCrossAttention:
    from medm2g_core.serialization import load_weights

    directory = shared_dir(bundle)
    if not (directory / "config.json").is_file():
        raise BundleError(f"{directory} is missing; train a flow with `medm2g train-flow` first")
    key = _cache_key("shared", directory, device=device, use_ema=use_ema)
    if cached and key in _LOADED:
        return _LOADED[key]
    shared = SharedCrossAttention.from_pretrained(directory, device=device)
    if use_ema and (directory / EMA_NAME).is_file():
        shared.load_own_state(load_weights(directory / EMA_NAME), where=str(directory / EMA_NAME))
    shared.eval()
    if cached:
        _LOADED[key] = shared
    return shared


def _read_align(bundle: Path, *, device: str) -> nn.Module:
    from medm2g_core.align.model import AlignModel

    directory = align_dir(bundle)
    key = _cache_key("align", directory, device=device, use_ema=False)
    if key not in _LOADED:
        model = AlignModel.from_pretrained(directory, device=device)
        _LOADED[key] = model
        return model
    return _LOADED[key]


class FlowModel:
    """A trained flow loaded from a bundle, ready to ``predict`` (docs/architecture.md "Flow inference").

    Attributes:
        pair, config (``FlowConfig``), image_size, context_slices, normalise_options (the training
        normalisation: ``transforms.normalize`` keywords); network (``FlowNetwork``), align
        (``AlignModel``), shared (``SharedCrossAttention``), text_vae + tokenizer (report targets),
        autoencoders (latent flows: modality → ``ImageAutoencoder``).
    """

    def __init__(self, *, network: FlowNetwork, align: Any, text_vae: Any = None, tokenizer: Any = None,
                 autoencoders: dict[Modality, Any] | None = None, device: str = "cpu"):
        self.network = network.eval()
        self.align = align.eval()
        self.text_vae = None if text_vae is None else text_vae.eval()
        self.tokenizer = tokenizer
        self.autoencoders = autoencoders or {}
        self.device = device
        self.pair: Pair = network.config.pair
        self.config: FlowConfig = network.config.flow_config
        self.image_size: int = network.config.image_size
        self.context_slices: int = network.config.context_slices
        self.normalise_options: dict[str, Any] = network.config.normalise_options

    @property
    def shared(self) -> SharedCrossAttention:
        return self.network.shared

    @classmethod
    def load(cls, bundle: str | Path, pair: Pair | str, *, device: str = "cpu", use_ema: bool = True,
             shared: SharedCrossAttention | None = None, align: Any = None) -> "FlowModel":
        """Load ``flows/<pair>`` with what it needs from ``bundle``.

        Flows of one bundle loaded in one process use the same ``SharedCrossAttention`` and
        ``AlignModel`` objects (cached while in use); ``shared``/``align`` pass them explicitly.
        """
        from medm2g_core.serialization import load_weights, refuse_pickles

        bundle = Path(bundle)
        refuse_pickles(bundle)  # the same refusal as Bundle.open: this is a public entry point too
        pair = parse_pair(pair) if isinstance(pair, str) else pair
        directory = flow_dir(bundle, pair.name)
        if not (directory / "config.json").is_file():
            from medm2g_core.bundle import Bundle  # noqa: PLC0415 - only for the error message

            known = ", ".join(Bundle.open(bundle).flows) or "none"
            raise BundleError(f"{bundle}: has no flow {pair.name} (flows: {known}); train it with `medm2g train-flow --pair ...`")
        shared = shared if shared is not None else _read_shared(bundle, device=device, use_ema=use_ema, cached=True)
        network = FlowNetwork.from_pretrained(directory, device=device, shared=shared)
        if use_ema and (directory / EMA_NAME).is_file():
            network.load_own_state(load_weights(directory / EMA_NAME), where=str(directory / EMA_NAME))
        align = align if align is not None else _read_align(bundle, device=device)
        text_vae = tokenizer = None
        if pair.target is Modality.REPORT:
            text_vae, tokenizer = load_text_vae(bundle, device=device)
        autoencoders = {}
        if network.config.flow_config.latent:
            from medm2g_core.models.autoencoders import ImageAutoencoder

            # The target's autoencoder decodes the samples; a registered flow's sources are encoded by theirs.
            needed = {pair.target} | (set(pair.sources) if network.config.spatial else set())
            for modality in (*pair.sources, pair.target):
                folder = autoencoder_dir(bundle, modality.value)
                if modality.is_image and (folder / "config.json").is_file():
                    autoencoders[modality] = ImageAutoencoder.from_pretrained(folder, device=device).eval()
                elif modality.is_image and modality in needed:
                    raise BundleError(f"{bundle}: the latent flow {pair.name} needs the {modality.value} autoencoder and {folder} is "
                                      f"missing; restore it or retrain it with `medm2g train-flow --stage autoencoder --modality "
                                      f"{modality.value} --data COHORT --bundle {bundle}` (then retrain the flow: its latents are that "
                                      "autoencoder's)")
        return cls(network=network, align=align, text_vae=text_vae, tokenizer=tokenizer, autoencoders=autoencoders, device=device)

    # -- helpers shared with training ---------------------------------------------------------------
    def target_shape(self, batch: int) -> tuple[int, ...]:
        cfg = self.network.config.denoiser_config
        if self.network.config.kind == "text":
            return (batch, cfg.latent_tokens, cfg.latent_dim)
        return (batch, cfg.target_channels, cfg.sample_size, cfg.sample_size)

    def condition(self, sources: dict[Modality, Any], *, weights: dict[Modality, float] | None = None) -> ConditionInputs:
        """``ConditionInputs`` for ``sources`` (image tensors moved to the device; latents for latent flows)."""
        moved = {m: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for m, v in sources.items()}
        spatial = None
        if self.network.config.spatial and self.autoencoders:
            spatial = {m: encode_channels(self.autoencoders[m], v) for m, v in moved.items() if m in self.autoencoders and m in self.pair.sources}
        inputs, _ = build_condition(self.network, self.align, moved, weights=weights, spatial=spatial)
        return inputs

    @torch.no_grad()
    def predict(self, sources: dict[Modality | str, torch.Tensor | list[str]], *, samples: int = 1, seed: int | Sequence[int] = 0,
                steps: int | None = None, guidance: float | Sequence[float] | None = None,
                weights: dict[Modality | str, float] | None = None) -> Prediction:
        """Generate the target for a batch of sources (shapes and ranges: docs/architecture.md).

        Args:
            sources: modality → (B, 1 + 2·context_slices, H, W) tensor in [-1, 1] at ``image_size``, or a
                list of B report strings. Flow sources may be missing (multi-source flows); modalities
                beyond the flow's own are composed CoDi-style (module docstring).
            samples: K samples per input (mean and per-pixel std returned).
            seed: one int seeds the whole call; a sequence of B ints seeds each input on its own (its
                K samples included), so an input's output does not depend on the rest of the batch.
                Same seed → identical output.
            steps, guidance: sampler overrides (default: the flow's ``FlowConfig``).
            weights: CoDi composition weight per source modality (missing ones: 1.0).
        """
        from medm2g_core.sampling.sample import make_sampling_scheduler, sample_many

        parsed, batch = self.checked_sources(sources)
        parsed_weights = None if weights is None else {parse_modality(m) if isinstance(m, str) else m: float(w) for m, w in weights.items()}
        inputs = self.condition(parsed, weights=parsed_weights)
        config = self.config
        drawn = sample_many(
            self.network, make_sampling_scheduler(config), self.target_shape(batch), samples=samples, condition=inputs,
            steps=steps or config.sampling_steps, guidance=config.guidance if guidance is None else guidance,
            generator=self.generators(seed, batch), prediction_type=config.prediction_type, clip_sample=config.clip_sample,
            clip_range=config.clip_range, eta=config.eta, device=self.device,
        )
        return self.finish(drawn.samples)

    def checked_sources(self, sources: dict[Modality | str, Any]) -> tuple[dict[Modality, Any], int]:
        """``sources`` keyed by ``Modality`` (None values dropped), shapes checked (``predict``), and the batch size."""
        parsed = {parse_modality(m) if isinstance(m, str) else m: v for m, v in sources.items() if v is not None}
        if not parsed:
            raise ValueError(f"no source given; the {self.pair} flow takes {', '.join(s.value for s in self.pair.sources)}")
        for modality, value in parsed.items():
            if isinstance(value, torch.Tensor):
                expected = (1 + 2 * self.context_slices, self.image_size, self.image_size)
                if value.ndim != 4 or (modality in self.pair.sources and tuple(value.shape[1:]) != expected) \
                        or (modality not in self.pair.sources and tuple(value.shape[2:]) != expected[1:]):
                    raise ValueError(f"{modality.value} source has shape {tuple(value.shape)}, expected (B, {', '.join(map(str, expected))})")
        batch = next(len(v) if not isinstance(v, torch.Tensor) else v.shape[0] for v in parsed.values())
        return parsed, batch

    def generators(self, seed: int | Sequence[int], batch: int) -> torch.Generator | list[torch.Generator]:
        """One generator for the call (an int seed), or one per batch item (a sequence of B seeds)."""
        if isinstance(seed, numbers.Integral):
            return torch.Generator(device=self.device).manual_seed(int(seed))
        seeds = [int(s) for s in seed]
        if len(seeds) != batch:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {batch}; give one per input or a single int")
        return [torch.Generator(device=self.device).manual_seed(s) for s in seeds]

    def finish(self, drawn: torch.Tensor) -> Prediction:
        """Samples (K, B, ...) of the flow's x0 space → ``Prediction``: decoded images (latent flows) or report texts."""
        samples = drawn.shape[0]
        if self.pair.target is Modality.REPORT:
            texts = decode_texts(self.text_vae, self.tokenizer, drawn)
            return Prediction(mean=drawn.mean(0), std=None, samples=drawn, texts=texts)
        images = drawn
        autoencoder = self.autoencoders.get(self.pair.target)
        if self.config.latent and autoencoder is None:  # never hand back raw latents as if they were an image
            raise BundleError(f"the latent flow {self.pair.name} has no {self.pair.target.value} autoencoder to decode its samples; "
                              "load it with FlowModel.load (which reads autoencoders/ from the bundle)")
        if self.config.latent:
            images = torch.stack([autoencoder.decode(s).clamp(-1, 1) for s in images])
        std = images.std(0, unbiased=False) if samples > 1 else None
        return Prediction(mean=images.mean(0), std=std, samples=images)


def encode_channels(autoencoder: Any, images: torch.Tensor) -> torch.Tensor:
    """Latents of every channel of (B, c, H, W) with a 1-channel autoencoder → (B, c·latent_channels, h, w)."""
    parts = [autoencoder.encode(images[:, i : i + 1]) for i in range(images.shape[1])]
    return torch.cat(parts, 1)


@torch.no_grad()
def decode_texts(text_vae: Any, tokenizer: Any, latents: torch.Tensor) -> list[list[str]]:
    """Flow-space text latents (K, B, T, d) (``TextVAE.to_flow``) → B × K report strings."""
    from medm2g_core.models.text_vae import ids_to_texts

    samples, batch = latents.shape[:2]
    ids = text_vae.decode(text_vae.from_flow(latents.flatten(0, 1)), max_tokens=text_vae.config.max_tokens)
    flat = ids_to_texts(tokenizer, ids, eos_id=text_vae.config.eos_id, pad_id=text_vae.config.pad_id)
    return [[flat[k * batch + b] for k in range(samples)] for b in range(batch)]


def load_text_vae(bundle: str | Path, *, device: str = "cpu") -> tuple[Any, Any]:
    """``text_vae/`` of a bundle: the ``TextVAE`` (EMA weights when saved) and its tokenizer."""
    from medm2g_core.models.text_tokenizer import load_tokenizer
    from medm2g_core.models.text_vae import TextVAE
    from medm2g_core.serialization import load_weights

    directory = text_vae_dir(bundle)
    if not (directory / "config.json").is_file():
        raise BundleError(f"{directory} is missing; run `medm2g train-flow --stage text-vae` (or train a report flow)")
    vae = TextVAE.from_pretrained(directory, device=device)
    if (directory / EMA_NAME).is_file():
        vae.load_own_state(load_weights(directory / EMA_NAME), where=str(directory / EMA_NAME))
    return vae.eval(), load_tokenizer(directory / TOKENIZER)
