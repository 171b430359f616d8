"""Generation between 2D images and reports: X-ray → report, report → X-ray, and compositions.

``generate_one`` turns sources (``(array, ImageMeta)`` images, ``Report``s or text) into one flow call
(``MedM2G.generate`` uses it); ``generate_batch`` is what ``medm2g generate`` runs.

Sources on the command line (``--from``, repeatable):

- a file: an X-ray (PNG/JPEG/DICOM), a report (``.txt``) or a volume (its middle axial slice);
- a patient folder: the file of the modality the target needs (``xray.png`` for ``--to report``,
  ``report.txt`` for ``--to xray``); a cohort folder (or ``-``, paths on stdin): every patient in it;
- anything else that does not look like a path: report text (``"FINDINGS: ... IMPRESSION: ..."``).

One ``--from`` may expand to many inputs (a batch, one output per patient). Several ``--from``
values are **composed** into one condition (issue 11, CoDi-style): the first one picks the flow,
the others join as extra sources with ``--weights``; each must then name exactly one item.

Outputs with ``--out DIR``: ``DIR/<patient>/report.txt`` or ``xray.png`` (``xray.dcm`` with
``--format dicom``); inputs given as text write to ``DIR/`` itself. ``--samples K`` writes K files
(``report.txt``, ``report-2.txt`` ... ``report-K.txt``). Reports carry the synthetic header line and
FINDINGS/IMPRESSION sections; X-rays are 16-bit, marked synthetic.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from medm2g_core.errors import ConfigError, InputError
from medm2g_core.io.text import Report
from medm2g_core.modalities import Modality, parse_modality
from medm2g_core.pipelines import batch as batching
from medm2g_core.types import ImageMeta, ProgressEvent, ProgressFn, no_progress

if TYPE_CHECKING:
    from medm2g_core.pipelines.model import GenerationResult, MedM2G

TARGETS = (Modality.REPORT, Modality.XRAY)
TARGET_FILES = {Modality.REPORT: "report.txt", Modality.XRAY: "xray.png"}
PATH_SUFFIXES = (".txt", ".png", ".jpg", ".jpeg", ".dcm", ".nii", ".nii.gz", ".mha", ".nrrd")


def _source_modality(item: Any) -> Modality:
    if isinstance(item, (str, Report)):
        return Modality.REPORT
    _, meta = item
    if meta.modality:
        try:
            return parse_modality(meta.modality)
        except ValueError:
            pass
    return Modality.XRAY if len(meta.shape) == 2 else Modality.CT


def _image_tensor(item: tuple[np.ndarray, ImageMeta], modality: Modality, *, size: int, channels: int,
                  options: dict[str, Any]) -> Any:
    """An image source → (1, channels, size, size) in [-1, 1]; volumes give their middle axial slice
    (with ``channels // 2`` context slices per side)."""
    import torch

    from medm2g_core.data.transforms import normalize, resize_image

    array, meta = item
    array = np.asarray(array)
    if array.ndim == 3 and not modality.is_volume and array.shape[-1] in (3, 4):
        array = array[..., :3].mean(axis=-1)  # an RGB(A) X-ray → grey, as in training
    if not np.all(np.isfinite(array)):
        raise InputError(None, f"the {modality.value} image holds NaN or infinite values", "fix the image first")
    values, _ = normalize(array, modality, **options)  # the flow's training normalisation
    context = channels // 2
    if values.ndim == 3:
        middle, depth = values.shape[2] // 2, values.shape[2]
        stack = np.stack([values[:, :, min(max(middle + o, 0), depth - 1)] for o in range(-context, context + 1)])
    elif values.ndim == 2:
        stack = np.repeat(values[None], channels, axis=0)
    else:
        raise InputError(None, f"cannot use a {values.ndim}D {modality.value} array as a source", "pass a 2D image or a 3D volume")
    return torch.as_tensor(resize_image(stack, size))[None]


def generate_one(model: "MedM2G", items: Sequence[Any], *, target: Modality, samples: int = 1, seed: int = 0,
                 steps: int | None = None, guidance: float | None = None, weights: Sequence[float] | None = None,
                 progress: ProgressFn = no_progress) -> "GenerationResult":
    """Generate ``samples`` outputs of ``target`` from composed ``items`` (see ``MedM2G.generate``)."""
    from medm2g_core.pipelines.model import GenerationResult

    if target not in TARGETS:
        raise ConfigError(f"--to {target.value}: generate makes report or xray (volumes: use `medm2g translate`)")
    if samples < 1:
        raise ConfigError(f"samples must be ≥ 1, got {samples}")
    modalities = [_source_modality(item) for item in items]
    if len(set(modalities)) != len(modalities):
        raise ConfigError(f"two sources of one modality ({', '.join(m.value for m in modalities)}); compose different modalities")
    if target in modalities:
        raise ConfigError(f"the target {target.value} is also a source")
    pair = model.select_flow(target=target, available=modalities)
    flow = model.flow(pair)
    channels = 1 + 2 * int(getattr(flow, "context_slices", 0) or 0)
    inputs: dict[Modality, Any] = {}
    for modality, item in zip(modalities, items):
        if modality is Modality.REPORT:
            text = item.text if isinstance(item, Report) else str(item)
            if not text.strip():
                raise InputError(None, "the report text is empty", "give the report text or a report.txt with FINDINGS/IMPRESSION")
            inputs[modality] = [text.strip()]
        else:
            inputs[modality] = _image_tensor(item, modality, size=int(flow.image_size), channels=channels,
                                             options=flow.normalise_options)
    weight_map = None
    if weights is not None:
        if len(weights) != len(modalities):
            raise ConfigError(f"got {len(weights)} weights for {len(modalities)} sources; give one per --from")
        weight_map = {m: float(w) for m, w in zip(modalities, weights)}
    kwargs: dict[str, Any] = {"samples": samples, "seed": seed, "steps": steps, "guidance": guidance}
    if weight_map is not None:
        kwargs["weights"] = weight_map
    prediction = flow.predict(inputs, **kwargs)
    progress(ProgressEvent(task="generate", completed=1, total=1))
    if target is Modality.REPORT:
        texts = (prediction.texts or [[]])[0]
        return GenerationResult(modality=target, reports=[as_report(t) for t in texts], flow=pair.name)
    from medm2g_core._version import __version__
    from medm2g_core.data.transforms import NormState, denormalize

    state = NormState(Modality.XRAY.value, "dtype", 0.0, 65535.0)
    images = []
    for k in range(prediction.samples.shape[0]):
        values = prediction.samples[k, 0, 0].detach().float().cpu().clamp(-1, 1).numpy()
        images.append(np.rint(np.asarray(denormalize(values, state))).clip(0, 65535).astype(np.uint16))
    size = images[0].shape
    meta = ImageMeta(
        spacing=(1.0, 1.0), shape=tuple(size), units="a.u.", modality=Modality.XRAY.value, source_format="png", synthetic=True,
        extra={"derivation": f"medm2g {__version__} {pair.name} generation with bundle {model.path.name}",
               "pixel_spacing": "unknown (generated at the flow's image size)", "seed": seed},
    )
    return GenerationResult(modality=target, images=images, meta=meta, flow=pair.name)


def as_report(text: str) -> Report:
    """Generated text → a ``Report`` with FINDINGS and IMPRESSION headings.

    The text decoder's vocabulary is lower case and puts headings mid-line (``... impression : ...``), so
    the split is made here rather than by the line-anchored report parser."""
    import re

    flat = " ".join(text.split())
    match = re.search(r"\bimpression\s*:", flat, flags=re.IGNORECASE)
    findings, impression = (flat[: match.start()], flat[match.end():]) if match else (flat, "")
    findings = re.sub(r"^\s*findings\s*:\s*", "", findings, flags=re.IGNORECASE).strip()
    return Report.from_text(f"FINDINGS: {findings}\nIMPRESSION: {impression.strip()}", synthetic=True)


# -- batch -----------------------------------------------------------------------------------------


def looks_like_path(value: str) -> bool:
    """A ``--from`` value that should be a file (so a typo fails loudly instead of becoming report text)."""
    if value == "-" or Path(value).exists():
        return True
    if any(c.isspace() for c in value.strip()):
        return False
    lowered = value.lower()
    return lowered.endswith(PATH_SUFFIXES) or "/" in value or os.sep in value or any(c in value for c in "*?[")


def _needed_source(target: Modality) -> Modality:
    return Modality.XRAY if target is Modality.REPORT else Modality.REPORT


def _expand_source(value: str, *, target: Modality, stdin: Any) -> list[tuple[str, Any, str | None]]:
    """One ``--from`` value → [(label, source path or text, patient)]."""
    if not looks_like_path(value):
        return [("<text>", value, None)]
    paths = batching.expand_folders(batching.expand_inputs([value], stdin=stdin))
    found = []
    for path in paths:
        if path.is_dir() and not batching.is_series_folder(path):
            files = batching.patient_files(path)
            wanted = _needed_source(target)
            chosen = files.get(wanted)
            found.append((str(path), chosen if chosen is not None else path, batching.patient_name(path)))
        else:
            found.append((str(path), path, batching.patient_name(path)))
    return found


def _load_source(source: Any) -> Any:
    from medm2g_core import io

    if isinstance(source, str):
        return source
    path = Path(source)
    if path.is_dir() and not batching.is_series_folder(path):
        raise InputError(path, "holds no xray.png/report.txt for this target", "pass the file itself")
    if path.name.lower().endswith(".txt"):
        report = io.read_report(path)
        if report.is_empty:
            raise InputError(path, "is an empty report", "give a report with FINDINGS/IMPRESSION text")
        return report
    return io.read(path)


def generate_batch(
    sources: Sequence[str],
    *,
    to: str | Modality,
    model: str | Path | None = None,
    out: str | Path | None = None,
    output_format: str = "png",
    samples: int = 1,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    weights: str | None = None,
    overwrite: bool = False,
    skip_existing: bool = False,
    device: str = "auto",
    stdin: Any = None,
    progress: ProgressFn = no_progress,
    on_result: batching.ResultFn = batching.no_result,
    on_warning: Callable[[str], None] = lambda message: None,
) -> batching.BatchResult:
    """``medm2g generate``: each input (or one composition of several) → report.txt / xray.png files."""
    from medm2g_core import io
    from medm2g_core.pipelines.model import MedM2G
    from medm2g_core.pipelines.translate import parse_weights
    from medm2g_core.serialization import write_json

    started = time.monotonic()
    try:
        target = parse_modality(str(to.value if isinstance(to, Modality) else to))
    except ValueError as error:
        raise ConfigError(f"--to: {error}") from None
    if target not in TARGETS:
        raise ConfigError(f"--to {target.value}: generate makes report or xray; use `medm2g translate --to {target.value}` for volumes")
    if output_format not in ("png", "dicom"):
        raise ConfigError(f"--format {output_format!r}: use png or dicom (X-ray outputs)")
    if overwrite and skip_existing:
        raise ConfigError("--overwrite and --skip-existing contradict each other; choose one")
    if samples < 1:
        raise ConfigError(f"--samples must be ≥ 1, got {samples}")
    if not sources:
        raise InputError(None, "no --from given", "pass --from FILE, a patient folder, or quoted report text")
    weight_values = parse_weights(weights, len(sources))
    expanded = [_expand_source(value, target=target, stdin=stdin) for value in sources]
    if len(sources) > 1:
        too_many = [value for value, found in zip(sources, expanded) if len(found) != 1]
        if too_many:
            raise ConfigError(f"--from {too_many[0]!r} names {len(expanded[sources.index(too_many[0])])} inputs; "
                              "when composing several --from, each must name exactly one file or text")
        groups = [[found[0] for found in expanded]]
    else:
        groups = [[item] for item in expanded[0]]
    loaded = MedM2G.from_pretrained(model, device=device)
    out_dir = Path(out) if out is not None else Path("medm2g-output")
    name = TARGET_FILES[target] if not (target is Modality.XRAY and output_format == "dicom") else "xray.dcm"
    jobs = []
    for group in groups:
        label, _, patient = next((g for g in group if g[2] is not None), group[0])
        destination = out_dir / patient / name if patient else out_dir / name
        jobs.append(batching.Job(input=" + ".join(g[0] for g in group), key=os.path.relpath(destination, out_dir),
                                 output=destination, sources={i: g[1] for i, g in enumerate(group)}))
    batching.check_collisions(jobs)
    jobs = batching.select_shard(jobs, None)
    arguments = {"to": target.value, "format": output_format, "samples": samples, "seed": seed, "steps": steps,
                 "guidance": guidance, "weights": weight_values,
                 # report text from the command line is recorded by hash only (it may name the patient)
                 "text_sha256": [hashlib.sha256(g[1].encode()).hexdigest()[:16] for g in groups[0] if isinstance(g[1], str)]
                 if len(groups) == 1 else None}
    expected = batching.fingerprint(bundle=loaded.fingerprint, arguments=arguments)
    if not overwrite and not skip_existing:
        clash = batching.existing_outputs(jobs)
        if clash:
            raise InputError(clash[0].output, "already exists", "pass --overwrite to replace, or --skip-existing to keep it")
    warnings: list[str] = []
    if loaded.synthetic:
        warnings.append(loaded.synthetic_warning)
        on_warning(warnings[-1])
    record = batching.RunRecord(command="generate", arguments=arguments, seed=seed, bundle_hash=loaded.fingerprint,
                                bundle_name=loaded.path.name, synthetic_bundle=loaded.synthetic, device=loaded.device)

    def work(job: batching.Job) -> batching.ItemResult:
        if skip_existing and batching.output_is_current(job.output, expected):
            return batching.ItemResult(job.input, batching.STATUS_SKIPPED, output=str(job.output), message="output exists with the same bundle and arguments")
        items = [_load_source(source) for source in job.sources.values()]
        result = loaded.generate(to=target, sources=items, samples=samples, seed=seed, steps=steps, guidance=guidance,
                                 weights=weight_values, progress=progress)
        batching.remove_stale_sidecar(job.output)
        written = []
        for k in range(samples):
            path = job.output if k == 0 else job.output.with_name(f"{batching.strip_suffix(job.output.name)}-{k + 1}{job.output.name[len(batching.strip_suffix(job.output.name)):]}")
            if target is Modality.REPORT:
                written.append(str(io.write_report(path, result.reports[k], synthetic=True)))
            else:
                written.append(str(io.write(path, result.images[k], result.meta)))
        write_json(batching.sidecar_path(job.output), batching.sidecar(
            kind="generate", fingerprint_value=expected, bundle_hash=loaded.fingerprint, bundle_path=str(loaded.path),
            flow=result.flow, arguments=arguments, seed=seed, synthetic_bundle=loaded.synthetic,
            outputs=[Path(p).name for p in written], extra={"seconds": round(result.seconds, 3)}))
        details: dict[str, Any] = {"flow": result.flow}
        if target is Modality.REPORT:
            details["texts"] = [report.text for report in result.reports]
        return batching.ItemResult(job.input, batching.STATUS_OK, output=written[0], outputs=written, details=details)

    items = batching.run_jobs(jobs, work, on_result=on_result)
    record.items = items
    record.timings["total_seconds"] = time.monotonic() - started
    run_json = record.write(out_dir) if jobs else None
    return batching.BatchResult(items=items, warnings=warnings, run_json=run_json, seconds=time.monotonic() - started,
                                device=loaded.device)
