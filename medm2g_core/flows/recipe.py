"""``FlowRecipe``: the ``flows:`` section of a recipe (YAML → dataclass, unknown keys rejected).

```yaml
flows:
  shared: frozen              # shared layers earlier flows trained stay frozen, or "finetune" them
  shared_anchor: 1.0          # finetune: L2-SP weight pulling those layers toward their values before the flow (0 = off)
  shared_attention: {num_layers: 4, query_dim: 64, condition_dim: 64, heads: 4}
  image_denoiser: {block_out_channels: [32, 64, 64]}   # ImageDenoiserConfig overrides
  text_denoiser: {layers: 4}                          # TextLatentDenoiserConfig overrides
  objective: {warm_start_fraction: 0.3, ema_decay: 0.999}  # FlowConfig overrides (every flow; the flow's EMA is set here)
  slices: 24                  # axial slices per patient for paired image flows ("all", "middle", N)
  context_slices: 0           # 2.5D: neighbouring slices per side as extra source channels
  ct_source_windows: [[0, 80]]  # extra HU windows of a CT source, as more channels (pixel-space registered flows)
  source_dropout: 0.15        # per-source dropout of multi-source flows (missing-source robustness)
  forgetting: {val_batches: 2, psnr_samples: 8}
  training: {steps: 300}      # TrainingConfig overrides for every flow (not ema_decay: objective.ema_decay)
  joint: {steps: 200, lr: 0.001, patch_size: 4}   # the joint stage of two flows (train-flow --stage joint)
  pairs:                      # per-pair overrides of any key above (except pairs/shared*)
    xray-report: {training: {steps: 250}, objective: {clip_sample: false}}
```

``resolve(pair)`` merges the pair's overrides over the section-level values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from medm2g_core.config import build_dataclass
from medm2g_core.errors import ConfigError
from medm2g_core.modalities import Pair, parse_pair

SHARED_MODES = ("frozen", "finetune")
CONDITION_ENCODER_MODES = ("frozen", "finetune")
CONDITION_NORMS = ("none", "batch")


@dataclass(frozen=True)
class ForgettingConfig:
    """How earlier flows are re-measured after a new flow: ``val_batches`` validation batches at
    fixed seeds/timesteps, and the PSNR of ``psnr_samples`` DDIM samples for image flows (0 = off)."""

    val_batches: int = 2
    psnr_samples: int = 8


@dataclass(frozen=True)
class JointRecipe:
    """The joint stage of two flows with one source (``train-flow --stage joint --pair A,B``): ``steps`` and ``lr``
    of its training (``None``: the flows' own), ``patch_size`` of its environment encoders (a partner's latent
    (B, c, H, W) becomes (H/p)·(W/p) tokens; H must be divisible by it)."""

    steps: int | None = None
    lr: float | None = None
    patch_size: int = 4

    def __post_init__(self) -> None:
        if self.patch_size < 1:
            raise ConfigError(f"flows.joint.patch_size must be ≥ 1, not {self.patch_size!r}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"flows.joint.steps must be ≥ 1, not {self.steps!r}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"flows.joint.lr must be > 0, not {self.lr!r}")

    def training_overrides(self) -> dict[str, Any]:
        """The ``TrainingConfig`` keys this section sets (over the flows' ``training``)."""
        return {k: v for k, v in (("steps", self.steps), ("lr", self.lr)) if v is not None}


@dataclass(frozen=True)
class FlowRecipe:
    """The ``flows:`` section (see the module docstring). Dict-valued fields are overrides of the
    named dataclass and are validated when a flow is built.

    ``ct_source_windows``: a CT *source* of a registered pixel-space flow enters as its ``data.ct_window``
    channel plus one channel per window listed here (e.g. brain ``[0, 80]``, soft tissue ``[-160, 240]``).
    In the full [−1024, 3000] HU window grey matter, white matter and CSF differ by ~0.02 of the range,
    which a small denoiser does not resolve; a brain window spreads them over the whole range.

    ``condition_encoder``: ``frozen`` — image sources are encoded by the bundle's aligned encoders as they are;
    ``finetune`` — the flow trains its own copy of each source's aligned image encoder (initialised from
    ``align/``, saved with the flow), for sources whose findings the contrastive encoder does not separate.

    ``condition_norm``: ``none`` — the aligned pooled embedding enters L2-normalised (every X-ray's points
    almost the same way: the spread between 16 chest X-rays measured 2 % of its RMS); ``batch`` — each
    source's pooled embedding and encoder tokens are standardised per channel with batch statistics
    (``BatchNorm1d`` without affine; running statistics at inference, saved with the flow), so what tells
    the sources apart reaches the adaptive parameters and the cross-attention at unit scale.
    """

    shared: str = "frozen"
    shared_anchor: float = 1.0
    shared_attention: dict[str, Any] = field(default_factory=dict)
    image_denoiser: dict[str, Any] = field(default_factory=dict)
    text_denoiser: dict[str, Any] = field(default_factory=dict)
    objective: dict[str, Any] = field(default_factory=dict)
    slices: Any = 24
    context_slices: int = 0
    ct_source_windows: tuple[tuple[float, float], ...] = ()
    condition_encoder: str = "frozen"
    condition_norm: str = "none"
    source_dropout: float = 0.15
    val_items: int = 64
    sample_items: int = 4
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig)
    training: dict[str, Any] = field(default_factory=dict)
    joint: JointRecipe = field(default_factory=JointRecipe)
    pairs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.shared not in SHARED_MODES:
            raise ConfigError(f"flows.shared must be one of {', '.join(SHARED_MODES)}, not {self.shared!r}")
        if not float(self.shared_anchor) >= 0.0:
            raise ConfigError(f"flows.shared_anchor must be a weight ≥ 0 (0 = no guard), not {self.shared_anchor!r}")
        if self.condition_encoder not in CONDITION_ENCODER_MODES:
            raise ConfigError(f"flows.condition_encoder must be one of {', '.join(CONDITION_ENCODER_MODES)}, "
                              f"not {self.condition_encoder!r}")
        if self.condition_norm not in CONDITION_NORMS:
            raise ConfigError(f"flows.condition_norm must be one of {', '.join(CONDITION_NORMS)}, not {self.condition_norm!r}")
        if self.context_slices < 0:
            raise ConfigError("flows.context_slices must be ≥ 0")
        for window in self.ct_source_windows:
            if len(window) != 2 or not float(window[0]) < float(window[1]):
                raise ConfigError(f"flows.ct_source_windows: {list(window)} is not a [low, high] HU window with low < high, e.g. [0, 80]")
        if not 0.0 <= self.source_dropout < 1.0:
            raise ConfigError("flows.source_dropout must be in [0, 1)")
        valid = {f.name for f in fields(self)} - {"pairs", "shared", "shared_anchor", "shared_attention", "joint"}
        for key, value in self.pairs.items():
            try:
                parse_pair(key)
            except ValueError as error:
                raise ConfigError(f"flows.pairs: {error}") from None
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"flows.pairs.{key}: expected a mapping of overrides, got {type(value).__name__}")
            unknown = sorted(set(value or {}) - valid)
            if unknown:  # every pair's overrides are checked when the recipe is read, not when that pair trains
                raise ConfigError(f"flows.pairs.{key}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
        for where, section in (("flows.training", self.training),
                               *((f"flows.pairs.{k}.training", (v or {}).get("training") or {}) for k, v in self.pairs.items())):
            if "ema_decay" in section:
                raise ConfigError(f"{where}.ema_decay: a flow's EMA decay is flows.objective.ema_decay (saved with the flow in its "
                                  "FlowConfig); move it there (flows.pairs.<pair>.objective.ema_decay for one pair)")
        for where, section in (("flows.objective", self.objective),
                               *((f"flows.pairs.{k}.objective", (v or {}).get("objective") or {}) for k, v in self.pairs.items())):
            if "source_dropout" in section:
                raise ConfigError(f"{where}.source_dropout: set flows.source_dropout (flows.pairs.<pair>.source_dropout for one "
                                  "pair); it is recorded in the flow's FlowConfig from there")

    def resolve(self, pair: Pair) -> "FlowRecipe":
        """The section with ``pairs[<pair>]`` overrides merged in (dict fields merged key by key)."""
        overrides: dict[str, Any] = {}
        for key, value in self.pairs.items():
            if parse_pair(key) == pair:
                overrides = dict(value or {})
        if not overrides:
            return self
        valid = {f.name for f in fields(self)} - {"pairs", "shared", "shared_anchor", "shared_attention", "joint"}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ConfigError(f"flows.pairs.{pair}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            current = getattr(self, key)
            if isinstance(current, dict):
                changes[key] = {**current, **(value or {})}
            elif key == "forgetting":
                changes[key] = build_dataclass(ForgettingConfig, {**current.__dict__, **(value or {})}, where=f"flows.pairs.{pair}.forgetting")
            else:
                changes[key] = value
        return replace(self, **changes)


def parse_flow_recipe(section: dict[str, Any] | None) -> FlowRecipe:
    """``FlowRecipe`` from a recipe's raw ``flows`` mapping (``Recipe.flows``)."""
    return build_dataclass(FlowRecipe, section or {}, where="flows")
