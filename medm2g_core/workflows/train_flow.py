"""``train_flow()``: add one generation flow (or a latent space) to a bundle (DESIGN §1.4–1.7).

One call = one ``medm2g train-flow`` run, through the one training loop (``training.loop.train``):

- ``stage="text-vae"``: the report autoencoder → ``text_vae/`` (also trained first, when missing, by a
  flow whose target is the report);
- ``stage="autoencoder"``: the KL autoencoder of ``modality`` → ``autoencoders/<modality>/`` (also
  trained first by latent flows that need it);
- ``stage="flow"``: the flow ``pair`` → ``flows/<pair>/{config.json, model.safetensors, ema.safetensors}``.
  The shared cross-attention lives once in ``flows/shared/``: the first flow trains it; later flows load
  it (EMA weights, as inference does) and keep it frozen or fine-tune it (``flows.shared`` in the
  recipe). Afterwards the new flow is measured (validation loss at fixed seeds/timesteps, PSNR of DDIM
  samples for image targets) and every earlier flow is re-measured on its own validation split:
  ``bundle.json["forgetting"][<new flow>][<earlier flow>] = {"before": ..., "after": ...}``.
  Then the flow's baselines are fitted on its training split (``workflows.baselines``, EVALUATION.md):
  the cheap ones always (identity intensity map for image pairs; retrieval and most-frequent for
  report targets; seconds), the L1 regression (the flow's step budget and recipe) with ``baselines=True``.
- ``stage="joint"``: the joint stage of two trained flows with one source (``pairs``, e.g. ``mri-ct`` and
  ``t1-t2``) → ``joint/<flowA>+<flowB>/``: their environment encoders and gates (``flows.joint``), trained on
  the patients that have the source and both targets; the flows themselves stay frozen (``flows/joint.py``).

On several processes every rank calls it; only rank 0 writes the bundle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from medm2g_core.bundle import (ALIGN, AUTOENCODERS, EMA_WEIGHTS, FLOWS, JOINT, SHARED, SHARED_KEY, TEXT_VAE, TOKENIZER, align_dir,
                                component_key, joint_name)
from medm2g_core.bundle import shared_dir as bundle_shared_dir
from medm2g_core.config import Recipe, load_recipe, merge_training
from medm2g_core.errors import BundleError, ConfigError, InputError
from medm2g_core.flows.forgetting import Measurement
from medm2g_core.inference.processing import Processing
from medm2g_core.modalities import Modality, Pair, parse_modality, parse_pair
from medm2g_core.types import ProgressEvent, ProgressFn, no_progress

STAGES = ("flow", "autoencoder", "text-vae", "joint")


@dataclass
class StageReport:
    """One trained component: ``name`` (``flows/xray__report``, ``text_vae``, ``autoencoders/ct``), steps,
    seconds, ``val_start``/``val_end`` (validation metrics before and after training), ``val_history``."""

    name: str
    steps: int
    seconds: float
    resumed_from: int | None = None
    val_start: dict[str, float] = field(default_factory=dict)
    val_end: dict[str, float] = field(default_factory=dict)
    val_history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class TrainFlowResult:
    """What ``train_flow`` did.

    Attributes:
        bundle: the bundle folder; pair: the flow's canonical name (or the component for other stages).
        stages: every component trained by this call, prerequisites first (``StageReport``).
        metrics: the new flow measured as inference loads it (``loss``; ``psnr`` dB in [-1, 1] units).
        forgetting: earlier flow → {"before": metrics, "after": metrics}.
        baselines: baseline fitted after the flow → its details (``fit_baselines``; "path" in the bundle).
        samples_dir: where validation sample grids / texts were written.
        synthetic: trained on phantoms. seconds: wall time of the whole call.
    """

    bundle: Path
    pair: str
    stages: list[StageReport]
    metrics: dict[str, float] = field(default_factory=dict)
    forgetting: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    samples_dir: Path | None = None
    synthetic: bool = False
    seconds: float = 0.0


def train_flow(
    data_dir: str | Path,
    bundle_dir: str | Path,
    *,
    pair: str | Pair | None = None,
    pairs: Sequence[Pair] | None = None,
    recipe: Recipe | str | Path | None = None,
    steps: int | None = None,
    stage: str = "flow",
    modality: str | None = None,
    resume: bool = False,
    seed: int = 0,
    mixed_precision: str = "no",
    gradient_checkpointing: bool = False,
    baselines: bool = False,
    device: str = "auto",
    progress: ProgressFn = no_progress,
) -> TrainFlowResult:
    """Train a flow (or a latent space) on the cohort at ``data_dir`` into the bundle ``bundle_dir``.

    Args:
        pair: ``xray-report``, ``report-xray``, ``mri-ct``, ``ct-mri``, ``t1-t2``, ``t2-t1``, ``t2+pd-t1``...
            (required for ``stage="flow"``).
        pairs: the two flows of ``stage="joint"`` (already trained into the bundle, one source).
        recipe: a ``Recipe``, YAML path or recipe name (None = demo-cpu); ``steps`` overrides the
            stage's training steps; ``seed``/``mixed_precision`` likewise.
        stage: ``flow``, ``autoencoder`` (with ``modality``), ``text-vae`` or ``joint`` (with ``pairs``).
        resume: continue the stage from ``BUNDLE/training/<name>/`` exactly.
        gradient_checkpointing: recompute UNet activations in backward (less memory).
        baselines: also fit the regression baseline (the flow's step budget, batch size and learning
            rate); the cheap baselines of the flow are fitted whatever this says.
        device: ``auto|cpu|cuda[:N]|mps`` for every stage this call trains (the rules of inference's
            ``--device``); a requested device that is missing is a ``ConfigError`` before anything is read.
        progress: receives training events (rank 0 only).
    """
    from medm2g_core.bundle import Bundle
    from medm2g_core.data.manifest import scan_cohort
    from medm2g_core.data.splits import split_records
    from medm2g_core.flows.recipe import parse_flow_recipe
    from medm2g_core.training.loop import process_state

    started = time.monotonic()
    if stage not in STAGES:
        raise ConfigError(f"--stage {stage!r}; valid: {', '.join(STAGES)}")
    state = process_state(device)  # a missing --device fails here, before any file is read
    if mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError(f"--mixed-precision must be no, fp16 or bf16, not {mixed_precision!r}")
    if stage == "joint" and (pairs is None or len(pairs) != 2):
        raise ConfigError("--stage joint needs --pair with two flows of one source, e.g. --pair mri-ct,t1-t2")
    if baselines and stage != "flow":
        raise ConfigError(f"--baselines fits a flow's baselines; it does not apply to --stage {stage}")
    data_dir, bundle_dir = Path(data_dir), Path(bundle_dir)
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    flows = parse_flow_recipe(recipe.flows)
    check_latent_sections(recipe)
    bundle = Bundle.open(bundle_dir)
    if not bundle.has_component(ALIGN):
        raise BundleError(f"{bundle_dir} has no align stage; run `medm2g align --data {data_dir} --out {bundle_dir}` first")
    if not data_dir.is_dir():
        raise InputError(data_dir, "no such cohort folder", "pass --data DIR holding patient folders (see `medm2g data index`)")
    records = scan_cohort(data_dir)
    if not records:
        raise InputError(data_dir, "no patient folders found", "create one with `medm2g data synth` or `medm2g data import`")
    splits = split_records(records, seed=recipe.data.split_seed, fractions=recipe.data.split_fractions)
    if not state.is_main_process:
        progress = no_progress
    context = _Context(bundle=bundle, recipe=recipe, flows=flows, splits=splits, data_dir=data_dir, steps=steps, seed=seed,
                       mixed_precision=mixed_precision, resume=resume, progress=progress, is_main=state.is_main_process,
                       gradient_checkpointing=gradient_checkpointing, device=device)
    synthetic = any(getattr(r, "synthetic", False) for r in records)
    if stage == "text-vae":
        reports = [_train_text_vae(context, final=True)]
        return TrainFlowResult(bundle=bundle_dir, pair=component_key(TEXT_VAE), stages=reports, synthetic=synthetic, seconds=time.monotonic() - started)
    if stage == "autoencoder":
        if modality is None:
            raise ConfigError("--stage autoencoder needs --modality (xray, ct, mri-t1, mri-t2, mri-pd)")
        reports = [_train_autoencoder(context, parse_modality(modality), final=True)]
        return TrainFlowResult(bundle=bundle_dir, pair=component_key(AUTOENCODERS, parse_modality(modality).value), stages=reports,
                               synthetic=synthetic, seconds=time.monotonic() - started)
    if stage == "joint":
        return _train_joint_stage(context, tuple(pairs), started=started, synthetic=synthetic)
    if pair is None:
        raise ConfigError("--pair is required for --stage flow (e.g. xray-report, mri-ct, t2+pd-t1)")
    pair = parse_pair(pair) if isinstance(pair, str) else pair
    names = _baseline_names(pair, regression=baselines)
    resolved = flows.resolve(pair)
    _ct_source_windows(pair, resolved, _flow_config(pair, resolved))  # refuse before any training
    if Modality.CT in (*pair.sources, pair.target):
        check_ct_units(splits["train"], recipe.data)
    out = _train_flow_stage(context, pair, started=started, synthetic=synthetic)
    if names:
        out.baselines = _fit_baselines(context, pair, names)
        out.seconds = time.monotonic() - started
    return out


def check_latent_sections(recipe: Recipe) -> None:
    """Refuse unknown keys of the recipe's ``autoencoders`` and ``text_vae`` sections before anything trains (a
    misspelt key would otherwise be ignored, or fail only when a later flow first needs that latent space)."""
    from dataclasses import fields

    from medm2g_core.models.autoencoders import ImageAutoencoderConfig
    from medm2g_core.models.text_vae import TextVAEConfig

    for name, cls in (("autoencoders", ImageAutoencoderConfig), ("text_vae", TextVAEConfig)):  # recipe sections
        section = dict(getattr(recipe, name) or {})
        merge_training(recipe.training, section.pop("training", None), where=f"{name}.training")
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - valid)
        if unknown:
            raise ConfigError(f"{name}: unknown key(s) {', '.join(unknown)}; valid keys: training, {', '.join(sorted(valid))}")


def _baseline_names(pair: Pair, *, regression: bool) -> tuple[str, ...]:
    """The baselines train-flow fits after ``pair`` (checked before training, so --baselines fails fast)."""
    from medm2g_core.workflows.baselines import baselines_for

    try:
        available = baselines_for(pair)
    except ConfigError as error:
        if regression:
            raise ConfigError(f"--baselines: {error}") from None
        return ()
    return tuple(n for n in available if regression or n != "regression")


def _fit_baselines(context: "_Context", pair: Pair, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Fit ``names`` for the flow just trained; every rank takes part when the regression is among them
    (its training loop needs them all), only rank 0 otherwise."""
    from medm2g_core.workflows.baselines import fit_baselines
    from medm2g_core.training.loop import process_state

    if "regression" in names:
        process_state().wait_for_everyone()  # the regression copies the flow rank 0 has just saved
    elif not context.is_main:
        return {}
    fit = fit_baselines(context.data_dir, context.bundle.path, pair=pair, recipe=context.recipe, which=names, seed=context.seed,
                        device=context.device, progress=context.progress)
    return {name: {k: v for k, v in details.items() if k != "losses"} for name, details in fit["baselines"].items()}


# --------------------------------------------------------------------------- internals
@dataclass
class _Context:
    bundle: Any
    recipe: Recipe
    flows: Any
    splits: dict[str, list]
    data_dir: Path
    steps: int | None
    seed: int
    mixed_precision: str
    resume: bool
    progress: ProgressFn
    is_main: bool
    gradient_checkpointing: bool
    device: str = "auto"

    def training(self, section: dict[str, Any] | None, *, final: bool, extra: dict[str, Any] | None = None):
        """TrainingConfig: recipe top level + ``section`` overrides + ``extra`` (settings that belong to the component,
        e.g. a flow's EMA decay) (+ CLI flags on the final stage)."""
        config = merge_training(self.recipe.training, {**(section or {}), **(extra or {})}, where="training")
        flags: dict[str, Any] = {"seed": self.seed, "mixed_precision": self.mixed_precision}
        if final and self.steps is not None:
            flags["steps"] = self.steps
        return merge_training(config, flags, where="training (command line)")

    def dataset_options(self) -> dict[str, Any]:
        data = self.recipe.data
        return dict(image_size=data.image_size, preprocess=Processing.from_data(data).preprocess)


def _run(context: _Context, task: Any, *, train_dataset, val_dataset, config, name: str):
    from medm2g_core.flows.forgetting import validation_loss
    from medm2g_core.training.loop import train

    if len(train_dataset) < config.batch_size:
        raise InputError(context.data_dir, f"{name}: only {len(train_dataset)} training items, fewer than one batch of {config.batch_size}",
                         "add patients or lower training.batch_size in the recipe")
    val_start = {}
    if val_dataset is not None and not context.resume:
        val_start = validation_loss(task, val_dataset, batch_size=config.batch_size, batches=config.val_batches, seed=config.seed)
    result = train(task, train_dataset=train_dataset, val_dataset=val_dataset, config=config,
                   state_dir=context.bundle.training_dir(name.replace("/", "-")), resume=context.resume,
                   progress=context.progress, description=name, device=context.device)
    return result, val_start


def _own_ema(result: Any, module: Any, name: str) -> dict[str, Any] | None:
    if result.ema_state_dicts is None or name not in result.ema_state_dicts:
        return None
    own = set(module.own_state_dict()) if hasattr(module, "own_state_dict") else set(module.state_dict())
    return {k: v for k, v in result.ema_state_dicts[name].items() if k in own}


def _save_component(directory: Path, module: Any, ema: dict[str, Any] | None, *, extra=None) -> None:
    from medm2g_core.serialization import atomic_dir, save_weights

    with atomic_dir(directory) as tmp:
        module.save_pretrained(tmp)
        if ema is not None:
            save_weights(tmp / EMA_WEIGHTS, ema)
        if extra is not None:
            extra(tmp)


def _train_text_vae(context: _Context, *, final: bool) -> StageReport:
    from medm2g_core.flows.forgetting import DatasetSubset
    from medm2g_core.flows.task import ReportDataset, TextVAETask
    from medm2g_core.models.text_tokenizer import load_tokenizer
    from medm2g_core.models.text_vae import TextVAE, TextVAEConfig
    from medm2g_core.training.loop import seed_everything

    section = dict(context.recipe.text_vae)
    overrides = section.pop("training", {})
    config = context.training(overrides, final=final)
    train_dataset = ReportDataset(context.splits["train"])
    val_dataset = DatasetSubset(ReportDataset(context.splits["val"] or context.splits["test"]), limit=32)
    if len(train_dataset) == 0:
        raise InputError(context.data_dir, "no reports in the training split; the text VAE needs report.txt files")
    if context.bundle.align_hub:
        # The align stage saw no reports (an MRI-only or CT–MRI cohort), so its tokenizer knows one word. The
        # text VAE then gets a WordPiece of its own training reports (the align recipe's sizes); it is saved in
        # text_vae/tokenizer/, which is the one inference decodes with.
        from medm2g_core.models.text_tokenizer import train_wordpiece

        align = context.recipe.align
        tokenizer = train_wordpiece([text for _, text in train_dataset.items], vocab_size=align.vocab_size, max_tokens=align.max_tokens)
    else:
        tokenizer = load_tokenizer(align_dir(context.bundle.path) / TOKENIZER)
    seed_everything(config.seed)
    vae = TextVAE(TextVAEConfig.from_tokenizer(tokenizer, **section))
    task = TextVAETask(vae, tokenizer)
    result, val_start = _run(context, task, train_dataset=train_dataset, val_dataset=val_dataset if len(val_dataset) else None,
                             config=config, name=component_key(TEXT_VAE))
    report = StageReport(component_key(TEXT_VAE), result.steps, result.seconds, result.resumed_from, val_start, result.final_val, result.val_history)
    if context.is_main:
        ema = _own_ema(result, vae, "text_vae")
        task.fit_flow_space([text for _, text in train_dataset.items], weights=ema)
        _save_component(context.bundle.component_dir(TEXT_VAE), vae.eval(), ema,
                        extra=lambda tmp: _save_tokenizer(tokenizer, tmp / TOKENIZER))
        context.bundle.record_component(TEXT_VAE)
        context.bundle.record_stage(component_key(TEXT_VAE), recipe=context.recipe.text_vae, steps=result.steps, seconds=round(result.seconds, 1),
                                    val_start=val_start, val_end=result.final_val)
        context.bundle.set_metrics(component_key(TEXT_VAE), result.final_val)
        context.bundle.save()
    return report


def _save_tokenizer(tokenizer: Any, directory: Path) -> None:
    tokenizer.save_pretrained(str(directory))
    for leftover in directory.glob("*.bin"):
        leftover.unlink()


def _slice_dataset(context: _Context, records, *, sources, target, slices, context_slices: int):
    from medm2g_core.data.datasets import PairSliceDataset

    volumes = (len(sources) + 1) * max(len(records), 1)
    return PairSliceDataset(records, sources=sources, target=target, slices=slices, context_slices=context_slices,
                            cache_items=min(max(context.recipe.data.cache_items, volumes), 256), **context.dataset_options())


def _train_autoencoder(context: _Context, modality: Modality, *, final: bool) -> StageReport:
    from medm2g_core.data.datasets import ImageTextDataset
    from medm2g_core.flows.forgetting import DatasetSubset
    from medm2g_core.flows.task import ImageAutoencoderTask
    from medm2g_core.models.autoencoders import ImageAutoencoder, ImageAutoencoderConfig
    from medm2g_core.serialization import dataclass_from_dict
    from medm2g_core.training.loop import seed_everything

    if not modality.is_image:
        raise ConfigError(f"autoencoders are for imaging modalities; {modality.value} is text (use --stage text-vae)")
    section = dict(context.recipe.autoencoders)
    overrides = section.pop("training", {})
    config = context.training(overrides, final=final)

    def dataset(records):
        if modality.is_volume:
            return _slice_dataset(context, records, sources=[modality], target=modality, slices=context.flows.slices, context_slices=0)
        data = context.dataset_options()
        return ImageTextDataset(records, image_modality=modality, **data)

    train_dataset = dataset(context.splits["train"])
    val_dataset = DatasetSubset(dataset(context.splits["val"] or context.splits["test"]), limit=context.flows.val_items)
    seed_everything(config.seed)
    autoencoder = ImageAutoencoder(dataclass_from_dict(ImageAutoencoderConfig, section, where="autoencoders"))
    name = component_key(AUTOENCODERS, modality.value)
    result, val_start = _run(context, ImageAutoencoderTask(autoencoder), train_dataset=train_dataset,
                             val_dataset=val_dataset if len(val_dataset) else None, config=config, name=name)
    ema = _own_ema(result, autoencoder, "autoencoder")
    if ema is not None:
        autoencoder.load_state_dict(ema)
    from medm2g_core.flows.forgetting import first_batch

    batch = first_batch(train_dataset, items=32)
    autoencoder.eval().fit_scaling_factor((batch["target"] if "target" in batch else batch["image"]).to(next(autoencoder.parameters()).device))
    if context.is_main:
        _save_component(context.bundle.component_dir(AUTOENCODERS, modality.value), autoencoder, None)
        context.bundle.record_component(AUTOENCODERS, modality.value)
        context.bundle.record_stage(name, recipe=context.recipe.autoencoders, steps=result.steps, seconds=round(result.seconds, 1),
                                    val_start=val_start, val_end=result.final_val)
        context.bundle.set_metrics(name, result.final_val)
        context.bundle.save()
    return StageReport(name, result.steps, result.seconds, result.resumed_from, val_start, result.final_val, result.val_history)


def flow_datasets(context: _Context, pair: Pair, flows: Any) -> tuple[Any, Any]:
    """Training and (subsampled) validation datasets of a flow."""
    from medm2g_core.data.datasets import ImageTextDataset
    from medm2g_core.flows.forgetting import DatasetSubset

    val_records = context.splits["val"] or context.splits["test"]
    if pair.is_paired_image:
        def make(records):
            return _slice_dataset(context, records, sources=list(pair.sources), target=pair.target, slices=flows.slices,
                                  context_slices=flows.context_slices)
    else:
        image = pair.target if pair.sources == (Modality.REPORT,) else pair.sources[0]
        if len(pair.sources) != 1 or Modality.REPORT not in (pair.target, *pair.sources) or not image.is_image:
            raise ConfigError(f"flow {pair}: supported are image↔report flows and registered volume flows (mri-ct, t2+pd-t1)")

        def make(records):
            return ImageTextDataset(records, image_modality=image, **context.dataset_options())
    train_dataset = make(context.splits["train"])
    val_dataset = DatasetSubset(make(val_records), limit=flows.val_items)
    if len(train_dataset) == 0:
        raise InputError(context.data_dir, f"no training patient has every modality of the {pair} flow",
                         "check the cohort with `medm2g data index`")
    return train_dataset, val_dataset


def _flow_config(pair: Pair, flows: Any) -> Any:
    """The pair's ``FlowConfig``: its demo defaults with the recipe's ``flows.objective`` over them, and the
    ``flows.source_dropout`` its training uses recorded in it (0 for a single-source flow, which has none)."""
    from medm2g_core.flows.config import FlowConfig
    from medm2g_core.serialization import dataclass_from_dict, to_jsonable

    objective = dict(flows.objective)
    if pair.target is Modality.REPORT:
        objective.setdefault("clip_sample", False)  # text latents are unit-RMS, not bounded to [-1, 1]
    objective["source_dropout"] = flows.source_dropout if len(pair.sources) > 1 else 0.0
    try:
        flow_config = dataclass_from_dict(FlowConfig, {**to_jsonable(FlowConfig.demo_cpu(pair=pair.name)), **objective}, where="flows.objective")
    except ValueError as error:  # FlowConfig's own checks (a loss, schedule or range it does not know)
        raise ConfigError(f"flows.objective ({pair}): {error}") from None
    if flow_config.latent:
        flow_config = replace(flow_config, clip_sample=objective.get("clip_sample", False))
    return flow_config


def flow_training(context: "_Context", flows: Any, flow_config: Any) -> Any:
    """A flow's ``TrainingConfig``: the recipe's ``training`` + ``flows.training`` (+ command-line flags), with the
    EMA decay of the flow's own ``FlowConfig`` (``flows.objective.ema_decay``), never the top-level one."""
    return context.training(flows.training, final=True, extra={"ema_decay": flow_config.ema_decay})


def check_ct_units(records: Any, data: Any) -> None:
    """Refuse a CT cohort whose recorded units differ from the recipe's ``data.ct_units``: an 8-bit display-window
    CT (AANLIB) normalised with an HU window would fill 6 % of [-1, 1], and its outputs would be labelled HU.
    Reads the header of the first training CT (NIfTI; other formats carry HU by construction)."""
    from medm2g_core.io.nifti import read_header
    from medm2g_core.modalities import CT_WINDOW_8BIT_UNITS

    for record in records:
        path = record.files.get(Modality.CT)
        if path is None or not str(path).lower().endswith((".nii", ".nii.gz")):
            continue
        units = read_header(path)[1].units
        if (units == CT_WINDOW_8BIT_UNITS) != (data.ct_units == CT_WINDOW_8BIT_UNITS):
            fix = ("set data.ct_units: '8-bit window (not HU)' and data.ct_window: [0, 255] in the recipe"
                   if units == CT_WINDOW_8BIT_UNITS else "set data.ct_units: HU (the default) in the recipe")
            raise InputError(path, f"CT recorded in units {units!r}, but the recipe's data.ct_units is {data.ct_units!r}", fix)
        return


def _ct_source_windows(pair: Pair, flows: Any, flow_config: Any) -> list[list[float]]:
    """Extra HU windows of the pair's CT source (``flows.ct_source_windows``): registered pixel-space flows
    only — a latent flow encodes one channel per source, so asking for windows there is refused."""
    windows = [list(map(float, w)) for w in flows.ct_source_windows] if pair.is_paired_image and Modality.CT in pair.sources else []
    if windows and flow_config.latent:
        raise ConfigError(f"flows.ct_source_windows applies to pixel-space flows, and {pair} is a latent flow "
                          "(objective.latent: true): remove ct_source_windows for it, or train it in pixel space")
    return windows


def _network_config(context: _Context, pair: Pair, flows: Any, align: Any, shared_config: Any, *, text_vae: Any, autoencoders: dict):
    from medm2g_core.flows.model import FlowNetworkConfig, family_of
    from medm2g_core.models.denoisers import ImageDenoiserConfig, TextLatentDenoiserConfig
    from medm2g_core.serialization import dataclass_from_dict, to_jsonable

    flow_config = _flow_config(pair, flows)
    token_dims = {}
    for source in pair.sources:
        family = family_of(source)
        token_dims[family] = int(align.text.backbone.config.hidden_size) if source is Modality.REPORT else int(align.images[family].token_dim)
    size = context.recipe.data.image_size
    windows = _ct_source_windows(pair, flows, flow_config)
    if pair.target is Modality.REPORT:
        denoiser = TextLatentDenoiserConfig(latent_tokens=text_vae.config.latent_tokens, latent_dim=text_vae.config.latent_dim,
                                            width=shared_config.query_dim, condition_dim=shared_config.condition_dim,
                                            layers=min(4, shared_config.num_layers), heads=shared_config.heads)
        denoiser = dataclass_from_dict(TextLatentDenoiserConfig, {**to_jsonable(denoiser), **flows.text_denoiser}, where="flows.text_denoiser")
        kind = "text"
    else:
        channels, sample_size, spatial = 1, size, ()
        if flow_config.latent:
            ae = autoencoders[pair.target]
            channels, sample_size = ae.config.latent_channels, size // ae.config.downsample
        if pair.is_paired_image:
            per_source = 1 + 2 * flows.context_slices
            spatial = tuple(per_source * (autoencoders[s].config.latent_channels if flow_config.latent
                                          else 1 + (len(windows) if s is Modality.CT else 0)) for s in pair.sources)
        denoiser = ImageDenoiserConfig(sample_size=sample_size, target_channels=channels, spatial_channels=spatial,
                                       block_out_channels=(32, shared_config.query_dim, shared_config.query_dim),
                                       condition_dim=shared_config.condition_dim, attention_heads=shared_config.heads)
        denoiser = dataclass_from_dict(ImageDenoiserConfig, {**to_jsonable(denoiser), **flows.image_denoiser}, where="flows.image_denoiser")
        kind = "image"
    return FlowNetworkConfig(
        sources=tuple(s.value for s in pair.sources), target=pair.target.value, kind=kind, image_size=size,
        context_slices=flows.context_slices if pair.is_paired_image else 0, spatial=pair.is_paired_image,
        embed_dim=int(align.config.embed_dim), token_dims=token_dims, flow=to_jsonable(flow_config), denoiser=to_jsonable(denoiser),
        normalisation=Processing.from_data(context.recipe.data).record(),
        ct_source_windows=windows,
        condition_encoders={family_of(s): to_jsonable(align.images[family_of(s)].config) for s in pair.sources
                            if s.is_image and flows.condition_encoder == "finetune"},
        condition_norm=flows.condition_norm,
    )


def _train_flow_stage(context: _Context, pair: Pair, *, started: float, synthetic: bool) -> TrainFlowResult:
    from medm2g_core.align.model import AlignModel
    from medm2g_core.flows.forgetting import spread_batch
    from medm2g_core.flows.model import FlowNetwork, _read_shared, load_text_vae
    from medm2g_core.flows.task import FlowTask
    from medm2g_core.models.autoencoders import ImageAutoencoder
    from medm2g_core.models.conditioning import SharedCrossAttention, SharedCrossAttentionConfig
    from medm2g_core.models.pretrained import WEIGHTS_NAME
    from medm2g_core.serialization import dataclass_from_dict, load_weights, save_weights
    from medm2g_core.training.loop import seed_everything

    bundle = context.bundle
    flows = context.flows.resolve(pair)
    stages: list[StageReport] = []
    if pair.target is Modality.REPORT and not bundle.has_component(TEXT_VAE):
        stages.append(_train_text_vae(context, final=False))
    objective_latent = bool(flows.objective.get("latent", False))
    autoencoders = {}
    if objective_latent:
        for modality in (*pair.sources, pair.target):
            if modality.is_image:
                if not bundle.has_component(AUTOENCODERS, modality.value):
                    stages.append(_train_autoencoder(context, modality, final=False))
                autoencoders[modality] = ImageAutoencoder.from_pretrained(bundle.component_dir(AUTOENCODERS, modality.value))
    text_vae = tokenizer = None
    if pair.target is Modality.REPORT:
        text_vae, tokenizer = load_text_vae(bundle.path)

    earlier = [name for name in bundle.flows if name != pair.name]
    name = component_key(FLOWS, pair.name)
    config = flow_training(context, flows, _flow_config(pair, flows))
    # How the flow's metrics are measured, kept with them: a later flow re-measures it the same way, so
    # the forgetting report compares like with like even when that flow's recipe measures differently.
    measured_with = Measurement(val_batches=flows.forgetting.val_batches, psnr_items=flows.forgetting.psnr_samples,
                                batch_size=config.batch_size, seed=config.seed, split_seed=context.recipe.data.split_seed,
                                split_fractions=tuple(context.recipe.data.split_fractions), slices=flows.slices,
                                val_items=flows.val_items)
    # Earlier flows recorded before measured_with existed: their stored metrics may come from other
    # settings, so their "before" is measured now, the way "after" will be (before seeding: training is
    # unaffected).
    legacy = [p for p in earlier if "measured_with" not in bundle.stage(component_key(FLOWS, p))]
    fresh_before: dict[str, dict[str, float]] = {}
    for index, previous in enumerate(legacy):
        context.progress(ProgressEvent(task="measure flows before training", completed=index, total=len(legacy)))
        report = _remeasure(context, previous, flows_recipe=context.flows, current=measured_with)
        if report is not None and report.get("after"):
            fresh_before[previous] = report["after"]
    align = AlignModel.from_pretrained(align_dir(bundle.path))
    seed_everything(config.seed)
    shared_dir = bundle_shared_dir(bundle.path)
    trained_by = bundle.stage(SHARED_KEY).get("trained_by", [])
    # Resuming the flow that trained the shared layers rebuilds them as that run did (fresh, trainable).
    # No recorded trainer means the run that wrote flows/shared was killed before bundle.json recorded
    # it (bundle.json is saved last), i.e. it was this interrupted run.
    reuse = (shared_dir / "config.json").is_file() and not (context.resume and trained_by[-1:] in ([pair.name], []))
    if reuse:
        shared = _read_shared(bundle.path, device="cpu", use_ema=True)
    else:
        shared = SharedCrossAttention(dataclass_from_dict(SharedCrossAttentionConfig, dict(flows.shared_attention), where="flows.shared_attention"))
    network = FlowNetwork(_network_config(context, pair, flows, align, shared.config, text_vae=text_vae, autoencoders=autoencoders),
                          shared=shared)
    layer_trainers = shared_layer_trainers(bundle.stage(SHARED_KEY), shared.config.num_layers) if reuse else {}
    plan = plan_shared_layers(network.shared_layers_used(), layer_trainers, flow=pair.name, mode=flows.shared,
                              anchor=flows.shared_anchor)
    shared_trainable = bool(plan["trained"])
    network.init_condition_encoders(align)
    warm_start_steps = int(round(network.config.flow_config.warm_start_fraction * config.steps))
    if warm_start_steps and network.config.flow_config.prediction_type == "sample":
        network.denoiser.zero_init_noise_path()
    train_dataset, val_dataset = flow_datasets(context, pair, flows)
    task = FlowTask(network, align, text_vae=text_vae, tokenizer=tokenizer, autoencoders=autoencoders,
                    warm_start_steps=warm_start_steps, source_dropout=flows.source_dropout, shared_trainable=shared_trainable,
                    shared_layers=plan["trained"], shared_anchor=plan["anchor"] or 0.0, anchored_layers=plan["anchored"],
                    sample_batch=spread_batch(val_dataset, items=flows.sample_items),
                    gradient_checkpointing=context.gradient_checkpointing)
    result, val_start = _run(context, task, train_dataset=train_dataset, val_dataset=val_dataset if len(val_dataset) else None,
                             config=config, name=name)
    stages.append(StageReport(name, result.steps, result.seconds, result.resumed_from, val_start, result.final_val, result.val_history))
    out = TrainFlowResult(bundle=bundle.path, pair=pair.name, stages=stages, synthetic=synthetic,
                          samples_dir=bundle.training_dir(name.replace("/", "-")) / "samples")
    if not context.is_main:
        return out

    _save_component(bundle.component_dir(FLOWS, pair.name), network.eval(), _own_ema(result, network, "flow"))
    if shared_trainable or not reuse:
        # Layers this flow did not train keep their saved values bit for bit: the EMA of a constant drifts by ulps,
        # and the module holds the EMA weights it was loaded with, not the raw ones.
        def untrained(state: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in state.items() if int(k.split(".")[1]) not in plan["trained"]}

        ema = _own_ema(result, shared, "shared")
        if ema is not None:
            ema.update(untrained(shared.state_dict()))
        raw = untrained(load_weights(shared_dir / WEIGHTS_NAME)) if reuse else {}

        def keep_raw(tmp: Path) -> None:
            if raw:
                save_weights(tmp / WEIGHTS_NAME, {**load_weights(tmp / WEIGHTS_NAME), **raw})

        _save_component(shared_dir, shared.eval(), ema, extra=keep_raw)
        bundle.record_component(FLOWS, SHARED)
        for index in plan["trained"]:
            layer_trainers[index] = [*[n for n in layer_trainers.get(index, []) if n != pair.name], pair.name]
        bundle.record_stage(SHARED_KEY, trained_by=[*[n for n in trained_by if n != pair.name], pair.name],
                            layers={str(k): v for k, v in sorted(layer_trainers.items())})
    bundle.record_component(FLOWS, pair.name)
    bundle.add_modalities([m.value for m in (*pair.sources, pair.target)])
    context.progress(ProgressEvent(task="measure flows", completed=0, total=1 + len(earlier)))
    out.metrics = _evaluate_as(bundle.path, pair, val_dataset, measured_with)
    bundle.record_stage(name, recipe={**context.recipe.flows, "resolved": flows}, steps=result.steps, seconds=round(result.seconds, 1),
                        data=str(context.data_dir.resolve()), shared=plan["summary"], shared_layers=plan, device=result.device,
                        ema_decay=config.ema_decay,
                        val_start=val_start, val_end=result.final_val, resumed_from=result.resumed_from,
                        measured_with=measured_with.record())
    for index, previous in enumerate(earlier):
        report = _remeasure(context, previous, flows_recipe=context.flows, current=measured_with)
        if report is not None and previous in fresh_before:
            report["before"] = fresh_before[previous]
        if report is not None:
            out.forgetting[previous] = report
            bundle.set_metrics(component_key(FLOWS, previous), report["after"])
        context.progress(ProgressEvent(task="measure flows", completed=index + 2, total=1 + len(earlier)))
    bundle.set_metrics(name, out.metrics)
    if earlier:
        bundle.set_forgetting(pair.name, out.forgetting)
    bundle.save()
    out.seconds = time.monotonic() - started
    return out


def shared_layer_trainers(record: dict[str, Any], num_layers: int) -> dict[int, list[str]]:
    """Shared layer index → the flows that trained it, first (its initialiser) to last, from bundle.json.

    Bundles written before layers were recorded list only ``trained_by``: every layer counts as trained
    by those flows (what was frozen then stays frozen). ``record``: the bundle's ``SHARED_KEY`` stage."""
    if "layers" in record:
        return {int(k): list(v) for k, v in record["layers"].items() if v}
    return {k: list(record.get("trained_by", [])) for k in range(num_layers)} if record.get("trained_by") else {}


def plan_shared_layers(used: list[int], trainers: dict[int, list[str]], *, flow: str, mode: str,
                       anchor: float | None = None) -> dict[str, Any]:
    """Which shared layers a flow trains: every layer it uses that no other flow has trained (never frozen at
    initialisation); under ``finetune`` also the layers earlier flows trained, which are then ``anchored`` (the L2-SP
    guard, weight ``anchor``, pulls them toward their values before this flow). ``frozen``: used layers that an
    earlier flow trained. Returns {"mode", "used", "trained", "frozen", "anchored", "anchor", "summary"}."""
    earlier = [k for k in used if any(n != flow for n in trainers.get(k, []))]
    fresh = [k for k in used if k not in earlier]
    if mode == "finetune":
        trained, frozen, anchored = list(used), [], earlier if anchor else []
    else:
        trained, frozen, anchored = fresh, earlier, []
    if not frozen:
        summary = "trained"
    elif not trained:
        summary = "frozen (reused)"
    else:
        summary = f"trained {trained} (not trained before), frozen (reused) {frozen}"
    return {"mode": mode, "used": list(used), "trained": trained, "frozen": frozen, "anchored": anchored,
            "anchor": anchor if anchored else None, "summary": summary}


def _remeasure(context: _Context, name: str, *, flows_recipe: Any, current: Measurement) -> dict[str, Any] | None:
    """Re-measure an earlier flow on its own cohort's validation split: {"before", "after"} or None.

    Measured as its own metrics were (``measured_with`` of its stage: validation batches, PSNR items,
    batch size, seed, split, slices, validation items); flows recorded before that was kept use ``current`` (this run's settings).
    Its data are built as it was trained: the image size and normalisation (CT window, MRI percentiles) recorded in
    its config, never this run's recipe.
    """
    from medm2g_core.data.manifest import scan_cohort
    from medm2g_core.data.splits import split_records
    from medm2g_core.serialization import load_config
    from medm2g_core.flows.model import FlowNetworkConfig

    bundle = context.bundle
    stage = bundle.stage(component_key(FLOWS, name))
    before = bundle.metrics(component_key(FLOWS, name))
    data_dir = Path(stage.get("data", ""))
    if before is None or not data_dir.is_dir():
        return {"before": before or {}, "after": {}, "note": f"cohort {data_dir} not available; not re-measured"}
    network_config = load_config(bundle.component_dir(FLOWS, name), FlowNetworkConfig)
    pair = network_config.pair
    how = Measurement.from_record(stage.get("measured_with", {}), fallback=current)
    records = scan_cohort(data_dir)
    splits = split_records(records, seed=how.split_seed, fractions=how.split_fractions)
    normalisation = network_config.normalise_options
    data = replace(context.recipe.data, image_size=network_config.image_size, ct_window=normalisation["ct_window"],
                   mri_percentiles=normalisation["mri_percentiles"])
    earlier_context = _Context(**{**context.__dict__, "splits": splits, "data_dir": data_dir,
                                  "recipe": replace(context.recipe, data=data)})
    resolved = flows_recipe.resolve(pair)
    resolved = type(resolved)(**{**resolved.__dict__, "context_slices": network_config.context_slices,
                                 "slices": how.slices, "val_items": how.val_items})
    _, val_dataset = flow_datasets(earlier_context, pair, resolved)
    return {"before": before, "after": _evaluate_as(bundle.path, pair, val_dataset, how)}


def _evaluate_as(bundle_dir: Path, pair: Pair, dataset: Any, how: Measurement) -> dict[str, float]:
    """A flow's metrics on ``dataset``, measured as ``how`` says."""
    from medm2g_core.flows.forgetting import evaluate_flow

    return evaluate_flow(bundle_dir, pair, dataset=dataset, batch_size=how.batch_size, val_batches=how.val_batches,
                         psnr_items=how.psnr_items, seed=how.seed)


# --------------------------------------------------------------------------- joint stage
def _train_joint_stage(context: _Context, pairs: tuple[Pair, Pair], *, started: float, synthetic: bool) -> TrainFlowResult:
    """Train ``joint/<flowA>+<flowB>/``: the environment encoders and gates of two trained flows (their EMA weights,
    as inference loads them, frozen) on the patients holding the source and both targets."""
    from medm2g_core.flows.forgetting import DatasetSubset
    from medm2g_core.flows.joint import JointNetwork, JointTask, spelled
    from medm2g_core.flows.model import FlowModel
    from medm2g_core.flows.task import FlowTask
    from medm2g_core.training.loop import seed_everything

    bundle = context.bundle
    for pair in pairs:
        if not pair.is_paired_image:
            raise ConfigError(f"--stage joint pairs registered volume flows (mri-ct, t1-t2, ...); {pair} is not one")
        if not bundle.has_component(FLOWS, pair.name):
            raise BundleError(f"{bundle.path} has no flow {pair}; train it first with `medm2g train-flow --pair {spelled(pair)} "
                              f"--data {context.data_dir} --bundle {bundle.path}`")
    models = [FlowModel.load(bundle.path, pair, device="cpu") for pair in pairs]
    name = joint_name(pairs[0].name, pairs[1].name)
    joint = context.flows.joint
    config = context.training({**context.flows.training, **joint.training_overrides()}, final=True,
                              extra={"ema_decay": models[0].config.ema_decay})
    seed_everything(config.seed)
    network = JointNetwork.for_flows([m.network for m in models], patch_size=joint.patch_size)
    models = [models[[m.pair for m in models].index(pair)] for pair in network.pairs]
    tasks = [FlowTask(m.network, m.align, autoencoders=m.autoencoders, shared_trainable=False) for m in models]
    task = JointTask(network, tasks)
    train_dataset = _joint_dataset(context, models, context.splits["train"])
    val_dataset = DatasetSubset(_joint_dataset(context, models, context.splits["val"] or context.splits["test"]),
                                limit=context.flows.val_items)
    if len(train_dataset) == 0:
        raise InputError(context.data_dir, f"no training patient has {models[0].pair.sources[0].value} and both "
                         f"{' and '.join(m.pair.target.value for m in models)}", "check the cohort with `medm2g data index`")
    stage_name = f"{JOINT}/{name}"
    result, val_start = _run(context, task, train_dataset=train_dataset, val_dataset=val_dataset if len(val_dataset) else None,
                             config=config, name=stage_name)
    report = StageReport(stage_name, result.steps, result.seconds, result.resumed_from, val_start, result.final_val, result.val_history)
    out = TrainFlowResult(bundle=bundle.path, pair=stage_name, stages=[report], metrics=dict(result.final_val), synthetic=synthetic)
    if context.is_main:
        _save_component(bundle.component_dir(JOINT, name), network.eval(), _own_ema(result, network, "joint"))
        bundle.record_component(JOINT, name)
        bundle.record_stage(stage_name, recipe=joint, flows=list(network.config.flows), steps=result.steps,
                            seconds=round(result.seconds, 1), data=str(context.data_dir.resolve()), device=result.device,
                            ema_decay=config.ema_decay, val_start=val_start, val_end=result.final_val, resumed_from=result.resumed_from)
        bundle.set_metrics(stage_name, result.final_val)
        bundle.save()
    out.seconds = time.monotonic() - started
    return out


def _joint_dataset(context: _Context, models: Sequence[Any], records: Sequence[Any]) -> Any:
    """One ``PairSliceDataset`` per flow over the same records (those holding the source and every target), each
    normalised and sized as its flow recorded at training, zipped item by item."""
    from medm2g_core.data.datasets import PairSliceDataset
    from medm2g_core.flows.joint import JointSliceDataset

    needed = {*models[0].pair.sources, *(m.pair.target for m in models)}
    kept = [r for r in records if needed <= set(r.files)]
    datasets = []
    for model in models:
        processing = Processing.of(model)
        datasets.append(PairSliceDataset(kept, sources=list(model.pair.sources), target=model.pair.target, slices=context.flows.slices,
                                         context_slices=model.context_slices, image_size=model.image_size,
                                         preprocess=processing.preprocess,
                                         cache_items=min(max(context.recipe.data.cache_items, 2 * len(needed) * max(len(kept), 1)), 256)))
    return JointSliceDataset(datasets)
