"""``evaluate``: score a folder of predictions against a folder of references, the way the field does.

Tasks (folders hold patient folders, matched by their path relative to the root, e.g. ``P0001``):

* ``translation`` — every ``<patient>/<modality>.nii.gz`` prediction (ct, mri-t1, mri-t2, mri-pd)
  against the reference file of the same name. CT uses the SynthRAD2023 protocol with the body mask the
  dataset ships in the reference patient folder (``mask.nii.gz``, as SynthRAD's own and ``data import
  synthrad`` write it; metric names say ``mask: dataset``), else one derived from the reference CT
  (``body_mask``: HU > −500, largest component, holes filled; ``mask: HU>-500``) — the two conventions are
  never averaged together, and a mask on another grid is a problem, not a fallback; MRI uses the
  SynDiff/IXI protocol (summary over slices, per-patient slice means for the histograms). An optional
  ``<modality>.std.nii.gz`` beside the prediction fills the uncertainty panel; the input panel shows
  another modality from the reference folder (e.g. ``mri-t1`` for a CT prediction).
* ``report`` — ``<patient>/report.txt`` against the reference ``report.txt``: BLEU-1..4, METEOR,
  ROUGE-L, CIDEr-D (R2Gen cleaning, pycocoevalcap) on the FINDINGS section (the R2Gen convention; the
  whole text when a report has no FINDINGS heading, counted in the notes) and clinical-efficacy
  precision/recall/F1 from a labeler (rule-based unless one is given).
* ``xray`` — FID and KID between the predicted and reference ``xray.png`` sets, on features from a
  ``FeatureExtractor`` named beside every number: ``features="aligned"`` — the pooled embedding of the
  ``model`` bundle's aligned X-ray encoder (``aligned_xray_extractor``); a saved classifier folder such as the demo's
  fixed probe ``OUT/xray-probe`` (``baselines.classifier.classifier_features``, named by its weights' sha256); a local
  safetensors DenseNet-121 (``features=Path``); or any extractor object. There is no default: the value means nothing
  without it.

Baselines are evaluated by the same code from their own prediction folders (``baselines={name: dir}``)
and appear as extra columns. Bare baseline names (``bundle_baselines=["identity", "regression"]`` for
translation, ``["retrieval", "most-frequent"]`` for reports) are computed from the baselines fitted into
``model`` (``workflows.baselines``) for exactly the patients of ``pred_dir``, with inputs read from
``ref_dir``, into ``baseline_out`` (default: a temporary folder). Problems (missing patients, different grids, unreadable files) are
recorded per patient and never stop the run.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from medm2g_core.errors import InputError
from medm2g_core.modalities import CT_WINDOW_8BIT_UNITS, MRI_MODALITIES, VOLUME_MODALITIES, Modality
from medm2g_core.types import ProgressEvent, ProgressFn, no_progress

Task = Literal["translation", "report", "xray"]
TASKS = ("translation", "report", "xray")
MASK_FILES = ("mask.nii.gz", "mask.nii", "mask.mha", "mask.nrrd")
"""The dataset's body mask in a reference patient folder (SynthRAD's ``mask.nii.gz``; ``manifest`` extras)."""
VOLUME_FILES = {m.value: f"{m.value}.nii.gz" for m in VOLUME_MODALITIES}
# The input shown beside a prediction: another MRI contrast first (T1 before T2...), CT last.
INPUT_PREFERENCE = {target: tuple(m.value for m in (*MRI_MODALITIES, Modality.CT) if m.value != target) for target in VOLUME_FILES}
PANEL_PATIENTS = 4
REPORT_PAIRS = 6


@dataclass
class MetricSummary:
    """One table cell: ``value`` (None = not computed, see ``note``), ``std`` over ``count`` items."""

    name: str
    value: float | None
    std: float | None = None
    count: int = 0
    unit: str = ""
    note: str | None = None

    def format(self) -> str:
        if self.value is None:
            return "not computed"
        text = f"{self.value:.4g}" if self.std is None else f"{self.value:.4g} ± {self.std:.3g}"
        return f"{text} (n={self.count})"


@dataclass
class PatientResult:
    """Per-patient values keyed by metric name, and the problems found for this patient."""

    patient_id: str
    values: dict[str, float | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@dataclass
class SystemResult:
    """The scores of one prediction folder (the model, or a baseline)."""

    name: str
    pred_dir: Path
    metrics: dict[str, MetricSummary] = field(default_factory=dict)
    patients: list[PatientResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unpredicted: list[str] = field(default_factory=list)
    """Reference patients with no prediction folder: not scored; problems only with ``strict``."""
    strict: bool = True

    @property
    def problems(self) -> list[str]:
        return [f"{p.patient_id}: {problem}" for p in self.patients for problem in p.problems]


@dataclass
class EvaluationResult:
    """Model and baseline scores side by side. ``systems["model"]`` is the model."""

    task: str
    ref_dir: Path
    systems: dict[str, SystemResult]
    html: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> SystemResult:
        return self.systems["model"]

    @property
    def problems(self) -> list[str]:
        return [f"[{name}] {problem}" if name != "model" else problem for name, system in self.systems.items() for problem in system.problems]

    def table(self) -> tuple[list[str], list[tuple[str, list[str]]]]:
        """Columns (system names) and rows ``(metric name, [formatted cell per system])``."""
        columns = list(self.systems)
        names: list[str] = []
        for system in self.systems.values():
            names += [n for n in system.metrics if n not in names]
        rows = [(n, [s.metrics[n].format() if n in s.metrics else "—" for s in self.systems.values()]) for n in names]
        return columns, rows


def evaluate(
    task: Task,
    *,
    pred_dir: str | Path,
    ref_dir: str | Path,
    html: str | Path | None = None,
    baselines: Mapping[str, str | Path] | None = None,
    features: Any = None,
    labeler: Any = None,
    cleaning: str = "iu_xray",
    model: str | Path | None = None,
    bundle_baselines: Sequence[str] = (),
    pair: str | None = None,
    baseline_out: str | Path | None = None,
    strict: bool = False,
    progress: ProgressFn = no_progress,
) -> EvaluationResult:
    """Score ``pred_dir`` (and each baseline folder) against ``ref_dir`` for ``task``.

    Args:
        task: "translation", "report" or "xray" (see the module docstring for files and conventions).
        pred_dir: folder of patient folders holding the model's predictions.
        ref_dir: folder of patient folders holding the references (and the inputs for the image panel).
        html: write a self-contained HTML page there (atomically).
        baselines: name → folder of that baseline's predictions (same layout as ``pred_dir``).
        features: xray task only — ``"aligned"`` (``model``'s aligned X-ray encoder), a saved classifier folder, a
            ``.safetensors`` path or a ``FeatureExtractor`` (``name`` + call).
        labeler: report task only — a clinical ``Labeler``; default the rule-based one.
        cleaning: report task only — R2Gen cleaning style, "iu_xray" or "mimic_cxr".
        model: the bundle holding fitted baselines (needed by ``bundle_baselines``).
        bundle_baselines: baseline names computed from ``model`` (module docstring); shown after the
            ``baselines`` folders.
        pair: the flow whose baselines to use (default: the only fitted one matching the task/predictions).
        baseline_out: keep the computed baseline predictions there (``<baseline_out>/<name>/...``).
        strict: a reference patient without a prediction is a problem ("missing prediction"); by
            default such patients (e.g. the training split of a whole cohort given as ``ref_dir``) are
            listed in the notes and not scored.
        progress: receives one ``ProgressEvent`` per patient.

    Raises:
        InputError: unknown task, a missing folder, no usable pair at all, or no feature extractor for
            the xray task.
        BundleError: a bundle baseline was asked for and is not fitted (the message names the fix).
    """
    if task not in TASKS:
        raise InputError(None, f"unknown task {task!r}", f"use one of {', '.join(TASKS)}")
    ref_dir = Path(ref_dir)
    folders = {"model": Path(pred_dir), **{name: Path(path) for name, path in (baselines or {}).items()}}
    for name, folder in {"reference": ref_dir, **folders}.items():
        if not folder.is_dir():
            raise InputError(folder, f"the {name} folder does not exist or is not a folder", "give a folder of patient folders")
    scratch = None
    if bundle_baselines:
        clash = [n for n in bundle_baselines if n in folders]
        if clash:
            raise InputError(None, f"baseline name(s) {', '.join(clash)} given twice", "give each baseline once")
        if baseline_out is None:
            import tempfile

            scratch = tempfile.TemporaryDirectory(prefix="medm2g-baselines-")
        folders.update(_bundle_baselines(task, model=model, names=bundle_baselines, pair=pair, pred_dir=Path(pred_dir),
                                         ref_dir=ref_dir, out_dir=Path(baseline_out) if baseline_out is not None else Path(scratch.name),
                                         progress=progress))
    if task == "xray":
        features = _resolve_extractor(features, model=model)  # before any work: a missing extractor is a usage error
    try:
        return _evaluate_folders(task, folders, ref_dir=ref_dir, pred_dir=Path(pred_dir), html=html, features=features,
                                 labeler=labeler, cleaning=cleaning, strict=strict, progress=progress)
    finally:
        if scratch is not None:
            scratch.cleanup()


BUNDLE_BASELINES = {"translation": ("identity", "regression"), "report": ("retrieval", "most-frequent"), "xray": ()}


def _bundle_baselines(task: str, *, model: str | Path | None, names: Sequence[str], pair: str | None, pred_dir: Path,
                      ref_dir: Path, out_dir: Path, progress: ProgressFn) -> dict[str, Path]:
    """Compute the named baselines from the bundle for the patients of ``pred_dir``: name → folder."""
    from medm2g_core.bundle import resolve_model
    from medm2g_core.errors import BundleError
    from medm2g_core.workflows.baselines import baselines_for, fit_command, fitted_baselines, pairs_with_baselines, predict_baselines
    from medm2g_core.workflows.baselines import read_pair as parse_pair

    valid = BUNDLE_BASELINES[task]
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise InputError(None, f"--baseline {', '.join(unknown)}: not a baseline of the {task} task",
                         f"use {', '.join(valid) or 'NAME=FOLDER only'} (or NAME=FOLDER for ready-made predictions)")
    bundle = resolve_model(model)
    names_in_pred = tuple(VOLUME_FILES.values()) if task == "translation" else ("report.txt",)
    patients = find_patients(pred_dir, names=names_in_pred)
    if pair is None:
        predicted = {m for folder in patients.values() for m, f in VOLUME_FILES.items() if (folder / f).is_file()}
        candidates = []
        for name in pairs_with_baselines(bundle):
            flow = parse_pair(name)
            try:
                if set(names) <= set(baselines_for(flow)) and (task == "report" or flow.target.value in predicted):
                    candidates.append(flow)
            except ValueError:
                continue
        if not candidates:
            raise BundleError(f"{bundle} has no fitted {task} baselines" + (f" for {', '.join(sorted(predicted))}" if predicted else "")
                              + f"; fit them first: `{fit_command(parse_pair('mri-ct' if task == 'translation' else 'xray-report'), bundle)}` "
                              "(with the flow's pair)")
        if len(candidates) > 1:
            raise InputError(None, f"{bundle} has baselines for several flows ({', '.join(c.name for c in candidates)})",
                             "name one with --pair")
        flow = candidates[0]
    else:
        try:
            flow = parse_pair(pair)
        except ValueError as error:
            raise InputError(None, f"--pair: {error}") from None
    missing = [n for n in names if n not in fitted_baselines(bundle, flow)]
    if missing:
        raise BundleError(f"{bundle} has no fitted {', '.join(missing)} baseline for {flow}; run `{fit_command(flow, bundle)}` first")
    return predict_baselines(bundle, pair=flow, inputs=ref_dir, out_dir=out_dir, names=list(names), split=None,
                             patients=sorted(patients), mirror=_mirrored(pred_dir), progress=progress)


def _mirrored(pred_dir: Path) -> bool:
    """Whether ``medm2g translate --mirror`` wrote ``pred_dir`` (its ``run.json``, or every shard's): the bundle's
    regression baseline then translates with the same test-time mirroring, so model and baseline are compared at equal
    inference. A folder whose runs disagree is refused rather than scored against one of the two."""
    from medm2g_core.jobs.runs import run_records
    from medm2g_core.serialization import read_json

    flags = {bool((read_json(path).get("arguments") or {}).get("mirror")) for path in run_records(pred_dir)}
    if len(flags) > 1:
        raise InputError(pred_dir, "holds runs translated with and without --mirror",
                         "translate every input the same way (or score the two sets apart)")
    return flags == {True}


def _evaluate_folders(task: str, folders: dict[str, Path], *, ref_dir: Path, pred_dir: Path, html: Any, features: Any,
                      labeler: Any, cleaning: str, strict: bool, progress: ProgressFn) -> EvaluationResult:
    extractor = features if task == "xray" else None
    collector = _PageCollector() if html is not None else None
    systems: dict[str, SystemResult] = {}
    for name, folder in folders.items():
        system = SystemResult(name=name, pred_dir=folder, strict=strict)
        page = collector if name == "model" else None
        if task == "translation":
            _evaluate_translation(system, ref_dir, page, progress)
        elif task == "report":
            _evaluate_reports(system, ref_dir, page, progress, labeler=labeler, cleaning=cleaning)
        else:
            _evaluate_xray(system, ref_dir, progress, extractor=extractor)
        systems[name] = system
    if not any(s.value is not None for s in systems["model"].metrics.values()):
        problems = "; ".join(systems["model"].problems[:5]) or "no patient folders found"
        raise InputError(Path(pred_dir), f"no prediction could be scored against {ref_dir} ({problems})",
                         "check that both folders hold the same patient folders with the expected file names")
    result = EvaluationResult(task=task, ref_dir=ref_dir, systems=systems)
    unpredicted = systems["model"].unpredicted
    if unpredicted:
        shown = ", ".join(unpredicted[:10]) + (" ..." if len(unpredicted) > 10 else "")
        result.notes.append(f"{len(unpredicted)} reference patient(s) have no prediction and were not scored "
                            f"(use --strict to count them as failures): {shown}")
    if html is not None and collector is not None:
        from medm2g_core.metrics.report import write_page

        result.html = write_page(html, collector.page(result))
    return result


# --- patient folders -------------------------------------------------------------------------------

def find_patients(root: Path, *, names: tuple[str, ...]) -> dict[str, Path]:
    """Patient folders under ``root`` holding at least one of ``names``, keyed by relative path."""
    found: dict[str, Path] = {}
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        if any(n in files for n in names):
            relative = Path(folder).relative_to(root).as_posix()
            found[relative] = Path(folder)
    return found


def _pairs(system: SystemResult, ref_dir: Path, names: tuple[str, ...]) -> list[tuple[str, Path, Path]]:
    predictions = find_patients(system.pred_dir, names=names)
    references = find_patients(ref_dir, names=names)
    pairs = []
    for patient_id in sorted(set(predictions) | set(references)):
        if patient_id not in references:
            system.patients.append(PatientResult(patient_id, problems=[f"no reference patient folder in {ref_dir}"]))
        elif patient_id not in predictions:
            if system.strict:
                system.patients.append(PatientResult(patient_id, problems=["missing prediction"]))
            else:
                system.unpredicted.append(patient_id)
        else:
            pairs.append((patient_id, predictions[patient_id], references[patient_id]))
    return pairs


def _patient(system: SystemResult, patient_id: str) -> PatientResult:
    for patient in system.patients:
        if patient.patient_id == patient_id:
            return patient
    patient = PatientResult(patient_id)
    system.patients.append(patient)
    return patient


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _summary(name: str, values: list[float], *, unit: str = "", note: str | None = None) -> MetricSummary:
    from medm2g_core.metrics.image import mean_std

    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return MetricSummary(name, None, count=0, unit=unit, note=note or "no finite values")
    mean, std = mean_std(finite)
    return MetricSummary(name, mean, std, len(finite), unit, note)


def _read(path: Path) -> tuple[np.ndarray, Any]:
    from medm2g_core import io

    return io.read(path)


# --- translation -----------------------------------------------------------------------------------

def _evaluate_translation(system: SystemResult, ref_dir: Path, page: "_PageCollector | None", progress: ProgressFn) -> None:
    from medm2g_core.metrics.image import SYNDIFF_NAMES, WINDOW8_NAMES, syndiff_metrics, synthrad_metrics, window8_metrics

    pairs = _pairs(system, ref_dir, tuple(VOLUME_FILES.values()))
    collected: dict[str, list[float]] = {}
    slice_values: dict[str, list[float]] = {}
    for index, (patient_id, pred_folder, ref_folder) in enumerate(pairs):
        patient = _patient(system, patient_id)
        for modality, filename in VOLUME_FILES.items():
            pred_path = pred_folder / filename
            if not pred_path.is_file():
                continue
            ref_path = ref_folder / filename
            if not ref_path.is_file():
                patient.problems.append(f"{filename}: no reference {ref_path}")
                continue
            try:
                prediction, pred_meta = _read(pred_path)
                reference, ref_meta = _read(ref_path)
            except (InputError, OSError, ValueError) as error:
                patient.problems.append(f"{filename}: unreadable ({error})")
                continue
            if prediction.shape != reference.shape or not pred_meta.same_grid(ref_meta, tolerance_mm=1e-2):
                patient.problems.append(f"{filename}: prediction grid {prediction.shape} differs from the reference {reference.shape} "
                                        "(shape or affine); resample the prediction onto the reference grid")
                continue
            try:
                if modality == "ct" and ref_meta.units != "HU":
                    # An 8-bit display window (AANLIB): grey levels, never reported as HU.
                    if ref_meta.units != CT_WINDOW_8BIT_UNITS:
                        raise ValueError(f"reference CT in units {ref_meta.units!r}, neither HU nor {CT_WINDOW_8BIT_UNITS!r}")
                    values = window8_metrics(prediction, reference)
                    for key, name in WINDOW8_NAMES.items():
                        patient.values[f"{modality}: {name}"] = values[key]
                        collected.setdefault(f"{modality}: {name}", []).append(values[key])
                elif modality == "ct":
                    mask, names = _ct_body_mask(ref_folder, reference, ref_meta)
                    values = synthrad_metrics(prediction, reference, mask=mask)
                    for key, name in names.items():
                        patient.values[f"{modality}: {name}"] = values[key]
                        collected.setdefault(f"{modality}: {name}", []).append(values[key])
                else:
                    slices = syndiff_metrics(prediction, reference)
                    for key, name in SYNDIFF_NAMES.items():
                        per_slice = list(getattr(slices, key).values())
                        patient.values[f"{modality}: {name}"] = _finite(float(np.mean([v for v in per_slice if math.isfinite(v)]))) if per_slice else None
                        slice_values.setdefault(f"{modality}: {name}", []).extend(per_slice)
                    patient.problems += [f"{filename}: {note}" for note in slices.notes]
            except ValueError as error:
                patient.problems.append(f"{filename}: {error}")
                continue
            if page is not None:
                page.add_translation(patient_id, modality, prediction, reference, pred_folder, ref_folder, patient.values)
        progress(ProgressEvent(task=f"evaluate {system.name}", completed=index + 1, total=len(pairs)))
    for name, values in collected.items():
        unit = ("grey levels" if "8-bit" in name else "HU") if name.startswith("ct: MAE") else ("dB" if "PSNR" in name else "")
        system.metrics[name] = _summary(name, values, unit=unit, note="mean ± std over patients")
    for name, values in slice_values.items():
        system.metrics[name] = _summary(name, values, unit="dB" if "PSNR" in name else "", note="mean ± std over slices")


def _ct_body_mask(ref_folder: Path, reference: np.ndarray, ref_meta: Any) -> tuple[np.ndarray, dict[str, str]]:
    """The body mask of one reference CT and the SynthRAD metric names that say where it came from.

    The dataset's ``mask.nii.gz`` (``MASK_FILES``) when the reference folder has one — what SynthRAD2023
    scores with, so the numbers compare with the challenge's; else ``body_mask`` (HU > −500).

    Raises:
        ValueError: the dataset mask is unreadable, on another grid than the CT, or empty (recorded as the
            patient's problem; the CT is then not scored rather than scored with another convention).
    """
    from medm2g_core.metrics.image import MASK_DATASET, MASK_THRESHOLD, body_mask, synthrad_names

    path = next((ref_folder / name for name in MASK_FILES if (ref_folder / name).is_file()), None)
    if path is None:
        return body_mask(reference), synthrad_names(MASK_THRESHOLD)
    try:
        mask, meta = _read(path)
    except (InputError, OSError) as error:
        raise ValueError(f"the dataset mask {path.name} is unreadable ({error}); fix or remove it") from None
    if mask.shape != reference.shape or not meta.same_grid(ref_meta, tolerance_mm=1e-2):
        raise ValueError(f"the dataset mask {path} (shape {mask.shape}) is not on the grid of ct.nii.gz {reference.shape}; "
                         "resample it onto the CT (nearest neighbour) or remove it to use the HU>-500 mask")
    mask = np.asarray(mask) > 0
    if not mask.any():
        raise ValueError(f"the dataset mask {path} is empty; fix it or remove it to use the HU>-500 mask")
    return mask, synthrad_names(MASK_DATASET)


# --- reports ---------------------------------------------------------------------------------------

def _scored_text(report: Any) -> tuple[str, bool]:
    """The FINDINGS section (R2Gen convention) or, when absent, the whole text (flag True)."""
    return (report.findings, False) if report.findings.strip() else (report.text, True)


def _evaluate_reports(system: SystemResult, ref_dir: Path, page: "_PageCollector | None", progress: ProgressFn, *, labeler: Any, cleaning: str) -> None:
    from medm2g_core import io
    from medm2g_core.metrics.clinical import label_scores
    from medm2g_core.metrics.text import BLEU_NAMES, ROUGE_NAME, score_reports

    predictions: dict[str, str] = {}
    references: dict[str, str] = {}
    whole_text = 0
    pairs = _pairs(system, ref_dir, ("report.txt",))
    for index, (patient_id, pred_folder, ref_folder) in enumerate(pairs):
        patient = _patient(system, patient_id)
        try:
            prediction, reference = io.read_report(pred_folder / "report.txt"), io.read_report(ref_folder / "report.txt")
        except (InputError, OSError, ValueError) as error:
            patient.problems.append(f"report.txt: unreadable ({error})")
            continue
        (pred_text, pred_whole), (ref_text, ref_whole) = _scored_text(prediction), _scored_text(reference)
        whole_text += pred_whole or ref_whole
        if not pred_text.strip():
            patient.problems.append("report.txt: the prediction is empty")
            continue
        predictions[patient_id], references[patient_id] = pred_text, ref_text
        progress(ProgressEvent(task=f"evaluate {system.name}", completed=index + 1, total=len(pairs)))
    if not predictions:
        return
    if whole_text:
        system.notes.append(f"{whole_text} report(s) without a FINDINGS heading were scored on their whole text")
    text_scores = score_reports(predictions, references, cleaning=cleaning)  # type: ignore[arg-type]
    system.notes += text_scores.notes
    for name, value in text_scores.corpus.items():
        note = "corpus-level" if value is not None else "; ".join(text_scores.notes)
        system.metrics[name] = MetricSummary(name, value, None, len(predictions), note=note)
    for name in (BLEU_NAMES[3], ROUGE_NAME):
        for patient_id, value in text_scores.per_report[name].items():
            _patient(system, patient_id).values[name] = value
    clinical = label_scores(predictions, references, labeler=labeler)
    for average in ("micro", "macro"):
        for key in ("precision", "recall", "f1"):
            name = f"CE-{key}[{clinical.labeler}, {average}, uncertain=positive]"
            system.metrics[name] = MetricSummary(name, getattr(clinical, average)[key], None, len(predictions))
    if page is not None:
        for patient_id in list(predictions)[:REPORT_PAIRS]:
            page.add_report(patient_id, predictions[patient_id], references[patient_id],
                            clinical.predicted_labels[patient_id], clinical.reference_labels[patient_id])


# --- X-ray distribution ----------------------------------------------------------------------------

ALIGNED_FEATURES = "aligned"
"""``features=`` value naming the ``model`` bundle's aligned X-ray encoder as the FID/KID extractor."""


def _resolve_extractor(features: Any, *, model: str | Path | None) -> Any:
    from medm2g_core.metrics.distribution import load_feature_extractor

    if features is None:
        raise InputError(None, "the xray task (FID/KID) needs a feature extractor, and none was given",
                         "pass --features aligned (the --model bundle's aligned X-ray encoder), --features DIR (a saved "
                         "classifier, e.g. medm2g-demo/xray-probe) or --features FILE.safetensors (torchvision or "
                         "torchxrayvision DenseNet-121 weights)")
    if isinstance(features, str) and features == ALIGNED_FEATURES:
        return aligned_xray_extractor(model)
    if isinstance(features, (str, Path)) and Path(features).is_dir():
        from medm2g_core.baselines.classifier import WEIGHTS, classifier_features

        if not (Path(features) / WEIGHTS).is_file() or not (Path(features) / "config.json").is_file():
            raise InputError(Path(features), f"not a saved classifier (config.json + {WEIGHTS})",
                             "pass the folder `medm2g demo` writes as OUT/xray-probe, or --features FILE.safetensors")
        return classifier_features(features)
    if isinstance(features, (str, Path)):
        return load_feature_extractor(features)
    if not callable(features) or not isinstance(getattr(features, "name", None), str):
        raise InputError(None, "features must be 'aligned', a classifier folder, a .safetensors path or an extractor with a "
                               "name and __call__(images)")
    return features


def aligned_xray_extractor(model: str | Path | None, *, device: str = "cpu") -> Any:
    """FID/KID features from a bundle's aligned X-ray encoder: the pooled (B, embed_dim) embedding of each image,
    resized to the align stage's ``data.image_size`` and scaled to [-1, 1] as training saw it.

    Named ``aligned-xray[<bundle>, <fingerprint>]``: values are comparable only between runs on the same bundle.

    Raises:
        BundleError: no bundle (``--model``), no align stage, or an align stage without an X-ray encoder.
    """
    import torch

    from medm2g_core.align.model import AlignModel
    from medm2g_core.bundle import ALIGN, Bundle, align_dir, bundle_fingerprint, resolve_model
    from medm2g_core.data.transforms import resize_image
    from medm2g_core.errors import BundleError
    from medm2g_core.metrics.distribution import CallableExtractor

    path = resolve_model(model)
    stage = Bundle.open(path).stage(ALIGN)
    size = ((stage.get("recipe") or {}).get("data") or {}).get("image_size")
    if not (align_dir(path) / "config.json").is_file() or size is None:
        raise BundleError(f"{path} has no align stage; train one with `medm2g align --data COHORT --out {path}`, or pass "
                          "--features FILE.safetensors")
    align = AlignModel.from_pretrained(align_dir(path), device=device).eval()
    if "xray" not in align.images:
        raise BundleError(f"{path}: its align stage has no X-ray encoder (it serves {', '.join(align.images)}); "
                          "pass --features FILE.safetensors")

    @torch.no_grad()
    def extract(images: np.ndarray) -> np.ndarray:  # (N, H, W) in [0, 1]
        batch = torch.stack([resize_image(image, int(size)) for image in np.asarray(images, dtype=np.float32)]) * 2.0 - 1.0
        pooled, _ = align.encode_image(batch, "xray")
        return pooled.double().cpu().numpy()

    return CallableExtractor(name=f"aligned-xray[{path.name}, {bundle_fingerprint(path)[:12]}]", function=extract)


def _unit_float(image: np.ndarray) -> np.ndarray:
    """A 2D X-ray as float32 in [0, 1]: integer images by their dtype's range, floats by min–max."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = image.mean(axis=-1)
    if np.issubdtype(image.dtype, np.integer):
        return (image.astype(np.float32) / float(np.iinfo(image.dtype).max)).clip(0, 1)
    low, high = float(image.min()), float(image.max())
    return ((image - low) / (high - low if high > low else 1.0)).astype(np.float32)


XRAY_FILES = ("xray.png", "xray.jpeg", "xray.jpg")
"""The X-ray file of a patient folder: what generate writes, or a cohort's JPEG as imported (Kermany)."""


def xray_file(folder: Path) -> Path | None:
    """The patient folder's X-ray (the first of ``XRAY_FILES`` present), or None."""
    return next((folder / name for name in XRAY_FILES if (folder / name).is_file()), None)


def _evaluate_xray(system: SystemResult, ref_dir: Path, progress: ProgressFn, *, extractor: Any) -> None:
    from medm2g_core.metrics.distribution import frechet_distance, kernel_inception_distance

    pairs = _pairs(system, ref_dir, XRAY_FILES)
    fake: list[np.ndarray] = []
    real: list[np.ndarray] = []
    for index, (patient_id, pred_folder, ref_folder) in enumerate(pairs):
        patient = _patient(system, patient_id)
        try:
            prediction, _ = _read(xray_file(pred_folder) or pred_folder / XRAY_FILES[0])
            reference, _ = _read(xray_file(ref_folder) or ref_folder / XRAY_FILES[0])
            fake.append(np.asarray(extractor(_unit_float(prediction)[None]))[0])
            real.append(np.asarray(extractor(_unit_float(reference)[None]))[0])
        except (InputError, OSError, ValueError) as error:
            patient.problems.append(f"xray.png: unreadable ({error})")
        progress(ProgressEvent(task=f"evaluate {system.name}", completed=index + 1, total=len(pairs)))
    fid_name, kid_name = f"FID[{extractor.name}]", f"KID[{extractor.name}, poly d3]"
    if len(fake) < 2:
        system.metrics[fid_name] = MetricSummary(fid_name, None, note="needs at least 2 image pairs")
        return
    note = f"{len(fake)} generated vs {len(real)} real images; comparable only with the same extractor"
    system.metrics[fid_name] = MetricSummary(fid_name, frechet_distance(np.stack(fake), np.stack(real)), None, len(fake), note=note)
    kid = kernel_inception_distance(np.stack(fake), np.stack(real), subsets=100, subset_size=1000)
    system.metrics[kid_name] = MetricSummary(kid_name, kid.mean, kid.std, len(fake), note=f"{note}; {kid.subsets} subsets of {kid.subset_size}")
    if len(fake) < 50:
        system.notes.append(f"FID on {len(fake)} images is strongly biased upwards; compare only at equal sample counts")


# --- HTML page -------------------------------------------------------------------------------------

class _PageCollector:
    """Keeps the few arrays the HTML page shows (mid axial slices of the first patients)."""

    def __init__(self) -> None:
        from medm2g_core.metrics.report import ImageRow, ReportPair

        self.image_rows: list[ImageRow] = []
        self.report_pairs: list[ReportPair] = []

    def add_translation(self, patient_id: str, modality: str, prediction: np.ndarray, reference: np.ndarray,
                        pred_folder: Path, ref_folder: Path, values: Mapping[str, float | None]) -> None:
        from medm2g_core.metrics.report import ImageRow

        if len(self.image_rows) >= PANEL_PATIENTS:
            return

        def middle(volume: np.ndarray) -> np.ndarray:
            # (i, j) slice shown transposed: rows = j (anterior at the top), columns = i (patient right on the left).
            return (volume[:, :, volume.shape[2] // 2] if volume.ndim == 3 else volume).T

        images: dict[str, np.ndarray | None] = {"prediction": middle(prediction), "reference": middle(reference),
                                                "error": middle(np.abs(prediction.astype(np.float64) - reference)),
                                                "input": None, "uncertainty": None}
        if modality == "ct":
            window = (-160.0, 240.0)
            windows = {"prediction": window, "reference": window, "error": (0.0, 200.0)}
        else:
            high = float(np.percentile(reference, 99.5)) or 1.0
            windows = {"prediction": (0.0, high), "reference": (0.0, high), "error": (0.0, 0.25 * high)}
        for other in INPUT_PREFERENCE[modality]:
            path = ref_folder / VOLUME_FILES[other]
            if path.is_file():
                try:
                    volume, _ = _read(path)
                except (InputError, OSError, ValueError):
                    continue
                if volume.shape == reference.shape:
                    images["input"] = middle(volume)
                    windows["input"] = (-160.0, 240.0) if other == "ct" else (0.0, float(np.percentile(volume, 99.5)) or 1.0)
                    break
        std_path = pred_folder / VOLUME_FILES[modality].replace(".nii.gz", ".std.nii.gz")
        if std_path.is_file():
            try:
                std, _ = _read(std_path)
                if std.shape == reference.shape:
                    images["uncertainty"] = middle(std)
                    windows["uncertainty"] = (0.0, float(np.percentile(std, 99.5)) or 1.0)
            except (InputError, OSError, ValueError):
                pass
        caption = modality + ": " + ", ".join(f"{k.split('[')[0].split(': ')[-1]} {v:.4g}" for k, v in values.items() if k.startswith(modality) and v is not None)
        self.image_rows.append(ImageRow(patient_id, images, windows, caption))

    def add_report(self, patient_id: str, prediction: str, reference: str, predicted: Mapping[str, int | None], referenced: Mapping[str, int | None]) -> None:
        from medm2g_core.metrics.report import ReportPair

        self.report_pairs.append(ReportPair(patient_id, prediction, reference, predicted, referenced))

    def page(self, result: EvaluationResult) -> Any:
        from medm2g_core.metrics.report import Page

        columns, rows = result.table()
        histograms: dict[str, list[float]] = {}
        for patient in result.model.patients:
            for name, value in patient.values.items():
                if value is not None:
                    histograms.setdefault(name, []).append(value)
        notes = [f"{name}: {s.note}" for name, s in result.model.metrics.items() if s.note] + result.model.notes + result.notes
        notes += result.problems or ["no problems found"]
        return Page(title=f"medm2g evaluate — {result.task} ({result.model.pred_dir} vs {result.ref_dir})",
                    columns=columns, table=rows, image_rows=self.image_rows, report_pairs=self.report_pairs,
                    histograms=histograms, notes=notes)
