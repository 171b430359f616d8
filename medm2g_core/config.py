"""Recipes: YAML files loaded into dataclasses (never executed), with unknown keys rejected.

A recipe has these top-level sections (every one optional; missing ones take the defaults below)::

    name: demo-cpu                 # free text
    description: ...               # free text
    data:      {DataConfig}        # image size, slices per volume, split fractions
    training:  {TrainingConfig}    # defaults for every stage's training loop
    align:     {AlignConfig}       # the alignment stage; may hold ``training: {...}`` overrides
    autoencoders: {...}            # raw dicts, parsed by the stage that owns them
    text_vae:  {...}
    flows:     {...}

Each stage section may carry a ``training:`` mapping of ``TrainingConfig`` overrides;
``stage_training(recipe, "align")`` (or ``merge_training(base, overrides)``) gives the resolved
``TrainingConfig`` for that stage. Command-line flags override the recipe through
``apply_overrides`` (dotted keys, e.g. ``{"align.training.steps": 10}``). The resolved recipe
(``recipe_to_dict``) is stored in the bundle.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from medm2g_core.errors import ConfigError
from medm2g_core.modalities import CT_HU_RANGE, CT_WINDOW_8BIT_RANGE, CT_WINDOW_8BIT_UNITS, MRI_PERCENTILES
from medm2g_core.serialization import dataclass_from_dict, to_jsonable

T = TypeVar("T")

DEFAULT_RECIPE = "demo-cpu"
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
"""The shipped recipes (package data, so a non-editable install has them too; ``recipes/`` at the top of
the repository is a link to this folder)."""


@dataclass(frozen=True)
class TrainingConfig:
    """Settings of the one training loop (``medm2g_core.training.loop.train``).

    Attributes:
        steps: optimizer steps in total (one step = ``grad_accum`` micro-batches).
        batch_size: micro-batch size **per process** (global batch = batch_size × processes).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW decoupled weight decay.
        warmup_steps: linear warm-up from 0 to ``lr``; then cosine decay to ``lr * min_lr_ratio``.
        min_lr_ratio: floor of the cosine decay as a fraction of ``lr``.
        grad_accum: micro-batches accumulated per optimizer step.
        grad_clip: max global gradient L2 norm (None or 0 = no clipping).
        mixed_precision: "no", "fp16" or "bf16" (Accelerate).
        ema_decay: decay of an exponential moving average of the weights (None = no EMA).
        save_every: save resumable state every N steps (and at the end); 0 = only at the end.
        keep_checkpoints: how many saved states to keep in ``state_dir``.
        val_every: run validation every N steps (and at the end); 0 = only at the end.
        val_batches: at most this many validation batches per validation (0 = all).
        seed: seed of model initialisation (same on every rank); data uses ``seed + rank``.
        workers: DataLoader worker processes (0 = load in the main process).
        log_every: report progress every N steps.
    """

    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 10
    min_lr_ratio: float = 0.0
    grad_accum: int = 1
    grad_clip: float | None = 1.0
    mixed_precision: str = "no"
    ema_decay: float | None = None
    save_every: int = 0
    keep_checkpoints: int = 1
    val_every: int = 0
    val_batches: int = 0
    seed: int = 0
    workers: int = 0
    log_every: int = 1

    def __post_init__(self) -> None:
        problems = []
        if self.steps < 1:
            problems.append("steps must be ≥ 1")
        if self.batch_size < 1:
            problems.append("batch_size must be ≥ 1")
        if self.grad_accum < 1:
            problems.append("grad_accum must be ≥ 1")
        if self.lr <= 0:
            problems.append("lr must be > 0")
        if self.warmup_steps < 0:
            problems.append("warmup_steps must be ≥ 0")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            problems.append(f"mixed_precision must be no|fp16|bf16, not {self.mixed_precision!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            problems.append("ema_decay must be in (0, 1) or null")
        if self.keep_checkpoints < 1:
            problems.append("keep_checkpoints must be ≥ 1")
        if self.workers < 0:
            problems.append("workers must be ≥ 0")
        if problems:
            raise ConfigError("training: " + "; ".join(problems))


@dataclass(frozen=True)
class DataConfig:
    """How patient folders become tensors.

    Attributes:
        image_size: slices and X-rays are resized to ``image_size × image_size`` pixels.
        slices_per_volume: axial slices drawn from each CT/MRI volume per patient item (align);
            the slice index is kept for reassembly.
        split_fractions: train/val/test fractions of patients (hash of the patient id).
        split_seed: salt of the patient-level split hash.
        ct_window: CT window mapped linearly to [-1, 1], in ``ct_units`` (default ``modalities.CT_HU_RANGE``).
        ct_units: what the cohort's CT values are: "HU" (default), or ``modalities.CT_WINDOW_8BIT_UNITS`` for a
            CT that reached us as an 8-bit display window (AANLIB; then ``ct_window`` lies within 0..255, usually
            [0, 255]). Flows record it, so a translated CT is labelled in the units it was trained on.
        mri_percentiles: MRI intensity percentiles mapped to [-1, 1].
        cache_items: small per-worker LRU cache of decoded files (0 = none).
    """

    image_size: int = 64
    slices_per_volume: int = 1
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    ct_window: tuple[float, float] = CT_HU_RANGE
    mri_percentiles: tuple[float, float] = MRI_PERCENTILES
    cache_items: int = 8
    ct_units: str = "HU"

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ConfigError("data.image_size must be ≥ 8")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1.0) > 1e-6 or min(self.split_fractions) < 0:
            raise ConfigError("data.split_fractions must be three non-negative numbers summing to 1 (train, val, test)")
        if self.ct_window[0] >= self.ct_window[1]:
            raise ConfigError("data.ct_window must be [low, high] with low < high (HU)")
        if self.ct_units not in ("HU", CT_WINDOW_8BIT_UNITS):
            raise ConfigError(f"data.ct_units must be 'HU' or {CT_WINDOW_8BIT_UNITS!r}, not {self.ct_units!r}")
        if self.ct_units == CT_WINDOW_8BIT_UNITS and not (CT_WINDOW_8BIT_RANGE[0] <= self.ct_window[0] < self.ct_window[1]
                                                         <= CT_WINDOW_8BIT_RANGE[1]):
            raise ConfigError(f"data.ct_units {CT_WINDOW_8BIT_UNITS!r} needs data.ct_window within [0, 255] "
                              f"(got {list(self.ct_window)}); use data.ct_window: [0, 255]")


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the medical visual-invariant augmentations (DESIGN §1.3). Never a left-right flip.

    Attributes:
        window_jitter: relative jitter of the intensity window (contrast and level), e.g. 0.1 = ±10 %.
        rotate_deg: maximum in-plane rotation, degrees.
        scale: maximum relative zoom, e.g. 0.05 = ±5 %.
        shift: maximum translation as a fraction of the image size.
        noise_std: maximum std of additive Gaussian noise in normalised units ([-1, 1] scale).
        blur_sigma: maximum Gaussian blur sigma, pixels.
        probability: probability that each augmentation is applied.
        sentence_shuffle: reports (training items only) have the sentences of each section shuffled —
            the findings' order carries no meaning, and a fixed order invites memorising one string.
        word_dropout: fraction of a report's words dropped at random in training items (0 = none).
    """

    window_jitter: float = 0.1
    rotate_deg: float = 5.0
    scale: float = 0.05
    shift: float = 0.05
    noise_std: float = 0.03
    blur_sigma: float = 0.8
    probability: float = 0.8
    sentence_shuffle: bool = False
    word_dropout: float = 0.0


IMAGE_POOLINGS = ("mean", "gem", "attention")
"""Image-encoder poolings (``models.encoders.ImageEncoder``) a recipe may name."""


@dataclass(frozen=True)
class AlignConfig:
    """The alignment stage (DESIGN §1.1–1.3): encoders, losses, augmentations, its training overrides.

    Attributes:
        embed_dim: shared embedding dimension of every modality.
        image_encoder: "resnet" (the small ResNet-style CNN of ``models.encoders``).
        image_widths: channel widths of the image encoder stages (each halves the resolution).
        image_token_dim: width of the image token grid handed to flows (0 = last stage width).
        image_pooling: how an image's token grid becomes one embedding (``IMAGE_POOLINGS``): "mean" (global
            average), "gem" (generalised mean with a learned exponent: small bright findings — a
            pacemaker, sternal wires — survive instead of being averaged away) or "attention" (learned
            positions: where a finding is counts).
        text_encoder: "bert" (small BERT trained from scratch with a WordPiece tokenizer trained on the
            training reports) or the path of a local Hugging Face encoder folder.
        text_width / text_layers / text_heads: small-BERT size.
        freeze_text_backbone: train only the text projection head (a pretrained encoder's language
            knowledge kept as it is; ignored for the small BERT, which starts from nothing).
        vocab_size: WordPiece vocabulary size to train.
        max_tokens: reports are truncated to this many tokens.
        temperature_init: initial InfoNCE temperature (learned as log(1/τ), clamped to τ ≥ 0.01).
        learn_temperature: whether the temperature is learned.
        vi_weight: weight of the visual-invariant (Barlow Twins form) loss; 0 = ablation.
        vi_lambda: weight λ of the off-diagonal terms inside it.
        semantic_weight: share w of the report→image InfoNCE target spread over the batch's reports that
            state the same findings (rule-based labeler; MedCLIP-style false-negative correction);
            0 = the plain one-hot InfoNCE of the paper.
        modalities: imaging modalities to align (canonical names); text is always the hub.
        augment: strengths of the two-view augmentations.
        training: overrides of the top-level ``training`` section for this stage.
    """

    embed_dim: int = 64
    image_encoder: str = "resnet"
    image_widths: tuple[int, ...] = (16, 32, 64)
    image_token_dim: int = 0
    image_pooling: str = "mean"
    text_encoder: str = "bert"
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    freeze_text_backbone: bool = False
    vocab_size: int = 1000
    max_tokens: int = 96
    temperature_init: float = 0.07
    learn_temperature: bool = True
    vi_weight: float = 0.05
    vi_lambda: float = 0.005
    semantic_weight: float = 0.0
    modalities: tuple[str, ...] = ("xray", "ct", "mri-t1", "mri-t2")
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from medm2g_core.modalities import parse_modality

        for name in self.modalities:
            try:
                modality = parse_modality(name)
            except ValueError as error:
                raise ConfigError(f"align.modalities: {error}") from None
            if not modality.is_image:
                raise ConfigError("align.modalities lists imaging modalities only; the report text is always the hub")
        if self.image_encoder != "resnet":
            raise ConfigError(f"align.image_encoder: {self.image_encoder!r} is not available; valid: resnet")
        if self.image_pooling not in IMAGE_POOLINGS:
            raise ConfigError(f"align.image_pooling: {self.image_pooling!r} is not available; valid: {', '.join(IMAGE_POOLINGS)}")
        if self.temperature_init <= 0:
            raise ConfigError("align.temperature_init must be > 0")
        if self.vi_weight < 0:
            raise ConfigError("align.vi_weight must be ≥ 0")
        if not 0.0 <= self.semantic_weight <= 1.0:
            raise ConfigError("align.semantic_weight must be in [0, 1]")
        if self.text_width % self.text_heads:
            raise ConfigError("align.text_width must be a multiple of align.text_heads")


@dataclass(frozen=True)
class Recipe:
    """A whole recipe. ``autoencoders``, ``text_vae`` and ``flows`` stay raw dicts for their stages."""

    name: str = "custom"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    autoencoders: dict[str, Any] = field(default_factory=dict)
    text_vae: dict[str, Any] = field(default_factory=dict)
    flows: dict[str, Any] = field(default_factory=dict)


def build_dataclass(cls: type[T], data: Any, *, where: str) -> T:
    """Build ``cls`` from a mapping, recursing into nested dataclass fields; unknown keys rejected."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    converted = dict(data)
    for f in fields(cls):  # type: ignore[arg-type]
        kind = hints.get(f.name)
        if f.name in converted and isinstance(kind, type) and is_dataclass(kind):
            converted[f.name] = build_dataclass(kind, converted[f.name], where=f"{where}.{f.name}")
        elif f.name in converted and typing.get_origin(kind) is dict and converted[f.name] is None:
            converted[f.name] = {}
    try:
        return dataclass_from_dict(cls, converted, where=where)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from None


def parse_recipe(data: Any, *, where: str = "recipe") -> Recipe:
    """Recipe from an already-parsed mapping (e.g. ``yaml.safe_load`` output or ``bundle.json``)."""
    recipe = build_dataclass(Recipe, data, where=where)
    stage_training(recipe, "align")  # validate the overrides early
    return recipe


def load_recipe(path: str | Path | None = None) -> Recipe:
    """Read a YAML recipe with ``yaml.safe_load`` (no tags, no code). ``None`` = the demo-cpu recipe.

    A bare name (``iu-xray``) is looked up in the package's ``recipes/`` folder.
    """
    import yaml

    if path is None:
        path = RECIPES_DIR / f"{DEFAULT_RECIPE}.yaml"
    path = Path(path)
    if not path.exists() and path.suffix == "" and (RECIPES_DIR / f"{path.name}.yaml").is_file():
        path = RECIPES_DIR / f"{path.name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
        raise ConfigError(f"recipe {path} not found; pass a YAML file or one of: {known}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    return parse_recipe(data or {}, where=str(path))


def merge_training(base: TrainingConfig, overrides: dict[str, Any] | None, *, where: str = "training") -> TrainingConfig:
    """``base`` with ``overrides`` applied; unknown keys rejected with the valid ones listed."""
    merged = {**dataclasses.asdict(base), **(overrides or {})}
    return build_dataclass(TrainingConfig, merged, where=where)


def stage_training(recipe: Recipe, stage: str) -> TrainingConfig:
    """Resolved ``TrainingConfig`` of a stage: top-level ``training`` + the stage's ``training`` overrides.

    ``stage`` is "align", "autoencoders", "text_vae" or "flows" (raw sections: their ``training`` key;
    a flow may also use ``merge_training`` with its own per-pair overrides).
    """
    section = getattr(recipe, stage, None)
    if section is None:
        raise ConfigError(f"unknown stage {stage!r}; valid: align, autoencoders, text_vae, flows")
    overrides = section.get("training") if isinstance(section, dict) else getattr(section, "training", None)
    return merge_training(recipe.training, overrides, where=f"{stage}.training")


def apply_overrides(recipe: Recipe, overrides: dict[str, Any]) -> Recipe:
    """Command-line overrides as dotted keys (``{"align.vi_weight": 0, "align.training.steps": 10}``).

    ``None`` values are ignored (a flag that was not given). Returns a new, re-validated recipe.
    """
    data = recipe_to_dict(recipe)
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted}: {key} is not a section")
        node[leaf] = to_jsonable(value)
    return parse_recipe(data, where="recipe (with command-line overrides)")


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Plain JSON-able dict of a recipe (what is stored in the bundle)."""
    return to_jsonable(recipe)
