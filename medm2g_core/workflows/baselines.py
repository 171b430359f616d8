"""Fit the baselines of a flow into a bundle, and write their predictions (EVALUATION.md).

``fit_baselines(data_dir, bundle, pair=...)`` — on the training split of the cohort (the split the
flow was trained on: the recipe's ``data.split_seed``/``split_fractions``, honouring ``splits.json``):

* registered image flows (``mri-ct``, ``t1-t2``, ...):
  - ``identity`` → ``baselines/<pair>/intensity_map.json``: a monotone quantile map of the first
    source's normalised intensities to the target's, fitted on the voxels inside the body (the body
    mask of whichever side is CT, ``metrics.image.body_mask``; for MRI→MRI the target's voxels above
    5 % of its percentile range);
  - ``regression`` → ``baselines/<pair>-regression/``: the flow's network trained with L1 for the
    flow's step budget (``bundle.json`` records the steps the flow was trained for) through the one
    training loop (``baselines.regression``). Needs the flow in the bundle.
* image → report flows (``xray-report``; any ``<image>-report``):
  ``retrieval`` and ``most-frequent`` → ``baselines/<pair>/reports.json`` (training reports + mode).

``predict_baselines(bundle, pair=..., inputs=cohort, out_dir=...)`` writes one prediction folder per
baseline, ``out_dir/<baseline>/<patient>/<target file>``, in the layout of ``medm2g translate --out``
(input geometry, synthetic mark) or ``report.txt``, for the patients of a split or the ones named.

``medm2g train-flow`` calls ``fit_baselines`` after training a flow: the cheap baselines always, the
regression with ``--baselines``. ``bundle.json["baselines"][<pair>]`` records what was fitted; a missing
baseline is a ``BundleError`` naming that command (``fit_command``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medm2g_core.baselines import REPORT_BASELINES, TRANSLATION_BASELINES
from medm2g_core.bundle import ALIGN, BASELINES, FLOWS, align_dir, baselines_dir, component_key
from medm2g_core.bundle import flow_dir as bundle_flow_dir
from medm2g_core.bundle import shared_dir as bundle_shared_dir
from medm2g_core.errors import BundleError, ConfigError, InputError
from medm2g_core.inference.processing import Processing
from medm2g_core.modalities import Modality, Pair, parse_pair
from medm2g_core.types import ProgressEvent, ProgressFn, no_progress

INTENSITY_MAP = "intensity_map.json"
REPORTS_FILE = "reports.json"
MRI_BODY_FRACTION = 0.05  # MRI→MRI pairs: body = target above 5 % of its percentile range


def baselines_for(pair: Pair) -> tuple[str, ...]:
    """The baselines a flow gets: translation ones for registered image flows, report ones for → report."""
    if pair.is_paired_image:
        return TRANSLATION_BASELINES
    if pair.target is Modality.REPORT and len(pair.sources) == 1 and pair.sources[0].is_image:
        return REPORT_BASELINES
    raise ConfigError(f"no baselines are defined for the {pair} flow; they exist for registered image flows (mri-ct, t1-t2) "
                      "and image→report flows (xray-report)")


def baseline_dir(bundle: str | Path, pair: Pair, name: str) -> Path:
    """Where a baseline lives in a bundle."""
    if name == "regression":
        return baselines_dir(bundle) / f"{pair.name}-regression"
    return baselines_dir(bundle) / pair.name


def cli_pair(pair: Pair) -> str:
    """How ``--pair`` spells a flow: its short canonical name (``mri-ct``, ``t2+pd-t1``) when it has one."""
    from medm2g_core.modalities import CANONICAL_PAIRS

    for short in CANONICAL_PAIRS:
        if parse_pair(short) == pair:
            return short
    return "+".join(s.value for s in pair.sources) + "-" + pair.target.value


def fit_command(pair: Pair, bundle: str | Path) -> str:
    """The CLI command that fits every baseline of ``pair`` (for error messages): ``train-flow --baselines``
    trains the flow and then fits them on its training split. ``--data`` is the cohort ``bundle.json``
    records for the flow, else ``DATA``."""
    import shlex

    from medm2g_core.bundle import Bundle

    data = "DATA"
    try:
        recorded = Bundle.open(bundle).stage(component_key(FLOWS, pair.name)).get("data")
    except (BundleError, OSError, ValueError):
        recorded = None
    if recorded:
        data = shlex.quote(str(recorded))
    return f"medm2g train-flow --pair {cli_pair(pair)} --data {data} --bundle {shlex.quote(str(bundle))} --baselines"


def read_pair(text: str) -> Pair:
    """``mri-ct``-style names (``parse_pair``) and canonical folder names (``mri-t1__ct``, ``Pair.name``)."""
    from medm2g_core.modalities import parse_modality

    if "__" in text:
        sources, _, target = text.partition("__")
        return Pair(tuple(parse_modality(s) for s in sources.split("+")), parse_modality(target))
    return parse_pair(text)


def _pair(pair: str | Pair) -> Pair:
    try:
        return read_pair(pair) if isinstance(pair, str) else pair
    except ValueError as error:
        raise ConfigError(f"--pair: {error}") from None


def _splits(data_dir: Path, recipe: Any) -> dict[str, list]:
    from medm2g_core.data.manifest import scan_cohort
    from medm2g_core.data.splits import split_records

    return split_records(scan_cohort(data_dir), seed=recipe.data.split_seed, fractions=recipe.data.split_fractions)


# --------------------------------------------------------------------------- fitting
def fit_baselines(
    data_dir: str | Path,
    bundle: str | Path,
    *,
    pair: str | Pair,
    steps: int | None = None,
    recipe: Any = None,
    which: Sequence[str] | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: ProgressFn = no_progress,
) -> dict[str, Any]:
    """Fit the baselines of ``pair`` on the training split of ``data_dir`` into ``bundle``.

    Args:
        pair: the flow (``mri-ct``, ``t1-t2``, ``xray-report``...).
        steps: regression steps (default: the steps ``bundle.json`` records for the flow).
        recipe: the recipe the flow was trained with (``Recipe``, YAML path or name; default demo-cpu):
            split, normalisation, batch size and learning rate of the regression.
        which: a subset of the pair's baselines (default all of them).
        seed: seed of the regression's initialisation and data order.
        device: ``auto|cpu|cuda[:N]|mps`` the regression trains on (a requested device that is missing is a
            ``ConfigError``).

    Returns:
        ``{"pair": name, "baselines": {name: {"path": str, ...details}}}``.

    Raises:
        BundleError: no align stage, or (regression) no trained flow to copy.
        InputError: no usable training patient.
    """
    from medm2g_core.bundle import Bundle
    from medm2g_core.config import Recipe, load_recipe

    pair = _pair(pair)
    available = baselines_for(pair)
    names = tuple(which) if which else available
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ConfigError(f"baseline(s) {', '.join(unknown)} do not exist for {pair}; valid: {', '.join(available)}")
    data_dir, bundle_dir = Path(data_dir), Path(bundle)
    handle = Bundle.open(bundle_dir)
    if not handle.has_component(ALIGN):
        raise BundleError(f"{bundle_dir} has no align stage; run `medm2g align --data {data_dir} --out {bundle_dir}` first")
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    splits = _splits(data_dir, recipe)
    train_records = splits["train"]
    if not train_records:
        raise InputError(data_dir, "the training split is empty", "add patients or change data.split_fractions in the recipe")
    # Under torchrun every rank calls this (the regression's training loop needs them all); only rank 0
    # fits the cheap baselines and writes bundle.json.
    is_main = _is_main_process(device)
    fitted: dict[str, Any] = {}
    if pair.is_paired_image:
        if "identity" in names and is_main:
            fitted["identity"] = _fit_identity(train_records, bundle_dir, pair, recipe, progress)
        if "regression" in names:
            fitted["regression"] = _fit_regression(train_records, handle, pair, recipe, steps=steps, seed=seed, device=device,
                                                   progress=progress)
    elif is_main:
        fitted.update(_fit_reports(train_records, bundle_dir, pair, recipe, names))
    if not is_main:
        return {"pair": pair.name, "baselines": fitted}
    handle = Bundle.open(bundle_dir)  # the regression stage may have rewritten bundle.json
    record = handle.baselines(pair.name)
    record["split"] = {"seed": recipe.data.split_seed, "fractions": list(recipe.data.split_fractions),
                       "train_patients": len(train_records), "data": str(data_dir.resolve())}
    record["normalisation"] = {**Processing.from_data(recipe.data).record(), "image_size": recipe.data.image_size}
    for name, details in fitted.items():
        record[name] = {**details, "path": str(Path(details["path"]).relative_to(bundle_dir))}
    handle.set_baselines(pair.name, record)
    handle.save()
    return {"pair": pair.name, "baselines": fitted}


def _is_main_process(device: str) -> bool:
    from medm2g_core.training.loop import process_state

    return process_state(device).is_main_process


def _normalised(path: Path, modality: Modality, recipe: Any) -> tuple[np.ndarray, Any, np.ndarray, Any]:
    """(array in physical units, meta, normalised array, NormState)."""
    from medm2g_core import io

    array, meta = io.read(path)
    values, state = Processing.from_data(recipe.data).preprocess(np.asarray(array, dtype=np.float32), modality)
    return array, meta, values, state


def _body(source: Modality, target: Modality, source_array: np.ndarray, target_array: np.ndarray,
          target_normalised: np.ndarray) -> np.ndarray:
    from medm2g_core.metrics.image import body_mask

    if target is Modality.CT:
        return body_mask(np.asarray(target_array, dtype=np.float32))
    if source is Modality.CT:
        return body_mask(np.asarray(source_array, dtype=np.float32))
    return target_normalised > (-1.0 + 2.0 * MRI_BODY_FRACTION)


def _fit_identity(records: list, bundle_dir: Path, pair: Pair, recipe: Any, progress: ProgressFn) -> dict[str, Any]:
    from medm2g_core.baselines.intensity import fit_intensity_map

    source, target = pair.sources[0], pair.target
    used: list[str] = []
    skipped: list[str] = []

    def voxel_pairs():
        usable = [r for r in records if source in r.files and target in r.files]
        for index, record in enumerate(usable):
            source_array, source_meta, source_values, _ = _normalised(record.files[source], source, recipe)
            target_array, target_meta, target_values, _ = _normalised(record.files[target], target, recipe)
            if source_array.shape != target_array.shape or not source_meta.same_grid(target_meta, tolerance_mm=1e-2):
                skipped.append(f"{record.patient_id}: {source.value} and {target.value} are not on one grid")
                continue
            mask = _body(source, target, source_array, target_array, target_values)
            used.append(record.patient_id)
            progress(ProgressEvent(task=f"{BASELINES}/{pair.name} identity", completed=index + 1, total=len(usable)))
            yield source_values[mask], target_values[mask]

    try:
        mapping = fit_intensity_map(voxel_pairs(), source=source.value, target=target.value)
    except ValueError as error:
        raise InputError(None, f"cannot fit the {pair} intensity map: {error}",
                         f"the training split needs patients with registered {source.value} and {target.value}") from None
    mapping.patients = used
    mask_rule = "body_mask(CT > -500 HU, largest component, holes filled)" if Modality.CT in (source, target) \
        else f"target above {MRI_BODY_FRACTION:.0%} of its percentile range"
    mapping.details = {"units": "normalised [-1, 1] (inference.processing) on both sides", "mask": mask_rule,
                       **Processing.from_data(recipe.data).record(),
                       "first_source_only": len(pair.sources) > 1, "skipped": skipped}
    path = mapping.save(baseline_dir(bundle_dir, pair, "identity") / INTENSITY_MAP)
    return {"path": str(path), "patients": len(used), "voxels": mapping.voxels, "knots": len(mapping.source_values)}


def _fit_regression(records: list, handle: Any, pair: Pair, recipe: Any, *, steps: int | None, seed: int, device: str,
                    progress: ProgressFn) -> dict[str, Any]:
    from medm2g_core.align.model import AlignModel
    from medm2g_core.baselines.regression import RegressionModel, build_regression_network
    from medm2g_core.config import merge_training
    from medm2g_core.data.datasets import PairSliceDataset
    from medm2g_core.flows.model import FlowNetworkConfig
    from medm2g_core.flows.recipe import parse_flow_recipe
    from medm2g_core.flows.task import FlowTask
    from medm2g_core.models.conditioning import SharedCrossAttentionConfig
    from medm2g_core.serialization import atomic_dir, load_config
    from medm2g_core.training.loop import seed_everything, train

    bundle_dir = handle.path
    flow_dir = bundle_flow_dir(bundle_dir, pair.name)
    shared_dir = bundle_shared_dir(bundle_dir)
    if not (flow_dir / "config.json").is_file() or not (shared_dir / "config.json").is_file():
        raise BundleError(f"{bundle_dir} has no trained {pair} flow; the regression baseline copies its network and step budget — "
                          f"run `medm2g train-flow --pair {pair.name} --bundle {bundle_dir} --data DATA` first")
    flow_config = load_config(flow_dir, FlowNetworkConfig)
    shared_config = load_config(shared_dir, SharedCrossAttentionConfig)
    stage = handle.stage(component_key(FLOWS, pair.name))
    flows = parse_flow_recipe(recipe.flows).resolve(pair)
    budget = steps if steps is not None else stage.get("steps")
    # Same loop settings as train-flow gave the flow: recipe training + flows.training, and the EMA decay the
    # flow was trained with (its saved FlowConfig).
    config = merge_training(recipe.training, {**flows.training, "ema_decay": flow_config.flow_config.ema_decay}, where="training")
    config = merge_training(config, {"seed": seed, **({"steps": int(budget)} if budget else {})}, where="training (baseline)")
    slices = (stage.get("recipe", {}).get("resolved", {}) or {}).get("slices", flows.slices)
    sources = list(pair.sources)
    cache = min(max(recipe.data.cache_items, (len(sources) + 1) * max(len(records), 1)), 256)
    dataset = PairSliceDataset(records, sources=sources, target=pair.target, image_size=flow_config.image_size, slices=slices,
                               context_slices=flow_config.context_slices,
                               preprocess=Processing.from_data(recipe.data).preprocess, cache_items=cache)
    if len(dataset) < config.batch_size:
        raise InputError(None, f"the {pair} regression has {len(dataset)} training slices, fewer than one batch of {config.batch_size}",
                         "add patients or lower training.batch_size in the recipe")
    align = AlignModel.from_pretrained(align_dir(bundle_dir))
    seed_everything(config.seed)
    network, shared = build_regression_network(flow_config, shared_config)
    task = FlowTask(network, align, warm_start_steps=config.steps, source_dropout=0.0, shared_trainable=True,
                    regression=True)
    losses: list[float] = []
    name = f"{BASELINES}/{pair.name}-regression"

    def record_loss(event: ProgressEvent) -> None:
        if "loss" in event.metrics:
            losses.append(float(event.metrics["loss"]))
        progress(event)

    result = train(task, train_dataset=dataset, val_dataset=None, config=config, state_dir=handle.training_dir(name.replace("/", "-")),
                   progress=record_loss, description=name, device=device)
    if result.ema_state_dicts is not None:  # inference uses the EMA weights, as for the flow
        for module, key in ((network, "flow"), (shared, "shared")):
            own = set(module.own_state_dict())
            module.load_own_state({k: v for k, v in result.ema_state_dicts[key].items() if k in own}, where=f"{name} EMA")
    details = {"steps": result.steps, "flow_steps": stage.get("steps"), "seconds": round(result.seconds, 1),
               "batch_size": config.batch_size, "lr": config.lr, "ema_decay": config.ema_decay, "train_slices": len(dataset),
               "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
               "losses": losses}
    directory = baseline_dir(bundle_dir, pair, "regression")
    if result.is_main_process:
        with atomic_dir(directory) as tmp:
            RegressionModel(network=network, align=align).save_pretrained(tmp)
        from medm2g_core.bundle import Bundle

        fresh = Bundle.open(bundle_dir)
        fresh.record_stage(name, **{k: v for k, v in details.items() if k != "losses"})
        fresh.save()
    return {"path": str(directory), **details}


def _fit_reports(records: list, bundle_dir: Path, pair: Pair, recipe: Any, names: Sequence[str]) -> dict[str, Any]:
    from medm2g_core import io
    from medm2g_core.baselines.reports import ReportBaselines

    image = pair.sources[0]
    reports = {r.patient_id: io.read_report(r.files[Modality.REPORT]).text for r in records if Modality.REPORT in r.files}
    if not reports:
        raise InputError(None, "no report.txt in the training split", "the report baselines need training reports")
    baselines = ReportBaselines.fit(reports, image_modality=image.value, image_size=recipe.data.image_size)
    path = baselines.save(baseline_dir(bundle_dir, pair, "retrieval") / REPORTS_FILE)
    out: dict[str, Any] = {}
    if "retrieval" in names:
        out["retrieval"] = {"path": str(path), "reports": len(baselines.reports), "image_modality": image.value}
    if "most-frequent" in names:
        out["most-frequent"] = {"path": str(path), "count": baselines.most_frequent_count, "reports": len(baselines.reports)}
    return out


# --------------------------------------------------------------------------- prediction
def fitted_baselines(bundle: str | Path, pair: str | Pair) -> list[str]:
    """Names of the baselines of ``pair`` whose files are in the bundle."""
    pair = _pair(pair)
    found = []
    for name in baselines_for(pair):
        directory = baseline_dir(bundle, pair, name)
        marker = {"identity": INTENSITY_MAP, "regression": "config.json"}.get(name, REPORTS_FILE)
        if (directory / marker).is_file():
            found.append(name)
    return found


def pairs_with_baselines(bundle: str | Path) -> list[str]:
    """Flow names with a ``bundle.json["baselines"]`` record, in the order they were fitted."""
    from medm2g_core.bundle import Bundle

    return Bundle.open(bundle).baseline_pairs


def predict_baselines(
    bundle: str | Path,
    *,
    pair: str | Pair,
    inputs: str | Path,
    out_dir: str | Path,
    names: Sequence[str] | None = None,
    split: str | None = "test",
    patients: Sequence[str] | None = None,
    device: str = "cpu",
    mirror: bool = False,
    progress: ProgressFn = no_progress,
) -> dict[str, Path]:
    """Write each baseline's predictions for the patients of ``inputs`` (a cohort folder).

    Args:
        names: baselines to run (default: every one defined for the pair); each must be fitted.
        split: run on this split of the cohort (the split recorded at fitting); None = every patient.
        patients: run on exactly these patient ids (relative folder paths); overrides ``split``.
        device: ``auto|cpu|cuda[:N]|mps`` (a requested device that is missing is a ``ConfigError``).
        mirror: the regression baseline translates with test-time mirroring, as ``translate --mirror`` does (give it
            when the model's predictions it is compared with were mirrored: the same inference for both).

    Returns:
        ``{baseline name: out_dir/<baseline>}``; patients lacking the source are skipped.

    Raises:
        BundleError: a requested baseline is not fitted (the message names the command).
    """
    from medm2g_core.bundle import Bundle
    from medm2g_core.data.manifest import scan_cohort
    from medm2g_core.data.splits import split_records
    from medm2g_core.training.devices import resolve_device

    pair = _pair(pair)
    device = resolve_device(device)
    bundle_dir = Path(bundle)
    handle = Bundle.open(bundle_dir)
    wanted = tuple(names) if names else baselines_for(pair)
    unknown = [n for n in wanted if n not in baselines_for(pair)]
    if unknown:
        raise ConfigError(f"baseline(s) {', '.join(unknown)} do not exist for {pair}; valid: {', '.join(baselines_for(pair))}")
    missing = [n for n in wanted if n not in fitted_baselines(bundle_dir, pair)]
    if missing:
        raise BundleError(f"{bundle_dir} has no fitted {', '.join(missing)} baseline for {pair}; run `{fit_command(pair, bundle_dir)}` first")
    record = handle.baselines(pair.name)
    records = scan_cohort(inputs)
    if patients is not None:
        keep = set(patients)
        records = [r for r in records if r.patient_id in keep]
    elif split is not None:
        fractions = record.get("split", {}).get("fractions", (0.8, 0.1, 0.1))
        records = split_records(records, seed=record.get("split", {}).get("seed", 0), fractions=fractions)[split]
    out_dir = Path(out_dir)
    outputs = {name: out_dir / name for name in wanted}
    for folder in outputs.values():
        folder.mkdir(parents=True, exist_ok=True)
    normalisation = record.get("normalisation", {})
    if pair.is_paired_image:
        _predict_translation(bundle_dir, pair, records, outputs, normalisation, synthetic=handle.synthetic, device=device, mirror=mirror,
                             progress=progress)
    else:
        _predict_reports(bundle_dir, pair, records, outputs, normalisation, device=device, progress=progress)
    return outputs


def _predict_translation(bundle_dir: Path, pair: Pair, records: list, outputs: dict[str, Path], normalisation: dict, *,
                         synthetic: bool, device: str, mirror: bool, progress: ProgressFn) -> None:
    from medm2g_core import io
    from medm2g_core._version import __version__
    from medm2g_core.baselines.intensity import IntensityMap
    from medm2g_core.inference.translate import translate_volume
    from medm2g_core.io.meta import units_for
    from medm2g_core.jobs.translate import write_volume

    processing = Processing.from_record(normalisation)
    mapping = IntensityMap.load(baseline_dir(bundle_dir, pair, "identity") / INTENSITY_MAP) if "identity" in outputs else None
    regression = None
    if "regression" in outputs:
        from medm2g_core.align.model import AlignModel
        from medm2g_core.baselines.regression import RegressionModel

        align = AlignModel.from_pretrained(align_dir(bundle_dir), device=device)
        regression = RegressionModel.from_pretrained(baseline_dir(bundle_dir, pair, "regression"), align=align, device=device)
    usable = [r for r in records if all(m in r.files for m in pair.sources)]
    filename = f"{pair.target.value}.nii.gz"
    for index, record in enumerate(usable):
        arrays = {}
        meta = None
        for modality in pair.sources:
            array, this_meta = io.read(record.files[modality])
            meta = meta or this_meta
            arrays[modality] = np.asarray(array, dtype=np.float32)
        if mapping is not None:
            source = pair.sources[0]
            values, state = processing.preprocess(arrays[source], source)
            target_state = processing.target_state(pair.target, {source: state})
            image = processing.postprocess(mapping(values), pair.target, target_state)
            units = target_state.units if pair.target is Modality.CT else units_for(pair.target.value)
            out_meta = meta.replace(modality=pair.target.value, units=units, synthetic=True,
                                    extra={**meta.extra, "derivation": f"medm2g {__version__} {pair.name} identity-after-intensity-map baseline",
                                           "medm2g_baseline": "identity"})
            write_volume(outputs["identity"] / record.patient_id / filename, image, out_meta, "nifti")
        if regression is not None:
            result = translate_volume(regression, arrays, meta, mirror=mirror, bundle_name=bundle_dir.name)
            out_meta = result.meta.replace(extra={**result.meta.extra, "medm2g_baseline": "regression",
                                                  "derivation": result.meta.extra["derivation"] + " (L1 regression baseline)"})
            write_volume(outputs["regression"] / record.patient_id / filename, result.image, out_meta, "nifti")
        progress(ProgressEvent(task=f"baselines {pair.name}", completed=index + 1, total=len(usable)))


def _predict_reports(bundle_dir: Path, pair: Pair, records: list, outputs: dict[str, Path], normalisation: dict, *,
                     device: str, progress: ProgressFn) -> None:
    from medm2g_core import io
    from medm2g_core.baselines.reports import ReportBaselines, embed_reports, nearest_reports

    stored = ReportBaselines.load(baseline_dir(bundle_dir, pair, "retrieval") / REPORTS_FILE)
    image_modality = Modality(stored.image_modality)
    usable = [r for r in records if image_modality in r.files] if "retrieval" in outputs else list(records)
    align = embeddings = None
    if "retrieval" in outputs:
        from medm2g_core.align.model import AlignModel

        align = AlignModel.from_pretrained(align_dir(bundle_dir), device=device)
        embeddings = embed_reports(align, stored.reports)
    size = int(stored.details.get("image_size") or normalisation.get("image_size", 64))
    for index, record in enumerate(usable):
        if "retrieval" in outputs:
            image = query_image(record.files[image_modality], image_modality, size=size, normalisation=normalisation)
            nearest = nearest_reports(align, image[None], modality=image_modality.value, report_embeddings=embeddings)[0]
            io.write_report(outputs["retrieval"] / record.patient_id / "report.txt", stored.reports[nearest], synthetic=True)
        if "most-frequent" in outputs:
            io.write_report(outputs["most-frequent"] / record.patient_id / "report.txt", stored.most_frequent, synthetic=True)
        progress(ProgressEvent(task=f"baselines {pair.name}", completed=index + 1, total=len(usable)))


def query_image(path: Path, modality: Modality, *, size: int, normalisation: dict | None = None):
    """The normalised (1, size, size) image the align stage sees (middle axial slice of a volume),
    as ``data.datasets.ImageTextDataset`` builds it."""
    from medm2g_core import io
    from medm2g_core.data.transforms import axial_slice, resize_image

    array, _ = io.read(path)
    values, _ = Processing.from_record(normalisation).preprocess(array, modality)
    if modality.is_volume:
        values = axial_slice(values, values.shape[2] // 2)
    return resize_image(values, size)
