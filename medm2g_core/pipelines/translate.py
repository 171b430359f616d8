"""Volume translation (MRI ↔ CT, MRI contrasts): slices through a flow and back onto the input's grid.

``translate_volume`` is the per-volume algorithm (the ``MedM2G.translate`` facade calls it);
``translate_batch`` is what ``medm2g translate`` runs over files, folders and stdin.

Per volume:

1. **Canonical frame.** The array is permuted/flipped to the axis order closest to the LPS world
   axes (``nibabel.orientations.io_orientation``), so axial slices are ``volume[:, :, k]`` whatever
   the file's storage order (sagittal acquisitions, LPS- or RAS-stored NIfTI, oblique affines); the
   exact inverse permutation is applied before writing. Phantom cohorts are stored in that frame
   already, so this is the identity for them.
2. **Normalisation** per source modality (``data.transforms.normalize``: CT HU window, MRI
   percentiles), the same as in training.
3. **Slices** ``k`` with ``context_slices`` neighbours per side (clamped at the ends) stacked as
   channels in the training order ``[src0 k-c..k+c, src1 k-c..k+c, ...]``, resized to the flow's
   ``image_size``.
4. **Sampling** in batches of ``batch_size`` slices. Each slice's noise comes from its own seed,
   ``slice_seed(seed, k)``, so the output is identical whatever the batch size.
5. **Reassembly**: each slice is resized back to its original in-plane size, the mean (and the
   per-voxel std of ``samples`` > 1 samples: an uncertainty map) denormalised to physical units — HU
   for CT, clipped to [-1024, 3000] — and restacked; the inverse reorientation puts it back on the
   input grid, and the output's ``ImageMeta`` is the input's geometry unchanged (spacing, origin,
   direction, shape) with ``synthetic=True``, the target's modality/units and
   ``extra["derivation"]`` naming medm2g, the flow and the bundle.

Slice consistency: a 2D flow sees each slice independently, so neighbouring slices can disagree
(stripes in sagittal views). Flows trained with ``context_slices > 0`` see the neighbours (2.5D)
and are the remedy; overlapping slabs would only matter for 3D patch models, which this version
does not have, so slices are not processed twice.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from medm2g_core.errors import ConfigError, InputError
from medm2g_core.modalities import Modality, parse_modality
from medm2g_core.pipelines import batch as batching
from medm2g_core.types import ImageMeta, ProgressEvent, ProgressFn, no_progress

if TYPE_CHECKING:
    from medm2g_core.pipelines.model import MedM2G

CT_RANGE_HU = (-1024.0, 3000.0)
OUTPUT_FORMATS = ("nifti", "dicom")
# Working memory per voxel during a translation: the input (≤ 8 B), its float32 normalised copy per
# source, the float32 mean and std, and the written output (float32) — plus slack for the reader.
BYTES_PER_VOXEL = 8 + 4 + 4 + 4 + 4 + 8


@dataclass
class TranslationResult:
    """A translated volume on the input's grid.

    Attributes:
        image: ``(i, j, k)`` float32 in the target's physical units (HU for CT, clipped to [-1024, 3000]).
        std: per-voxel standard deviation over ``samples`` samples in the same units, or None when samples == 1.
        meta: the input's geometry with the target's modality/units, ``synthetic=True`` and a derivation note.
        flow: the flow used (``mri-t1__ct``).
        warnings: things the caller should tell the user (the CLI prints them on stderr).
        seconds: wall time of the sampling.
    """

    image: np.ndarray
    std: np.ndarray | None
    meta: ImageMeta
    flow: str
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def slice_seed(seed: int, index: int) -> int:
    """The noise seed of slice ``index`` in a run seeded ``seed`` (independent of batching)."""
    return (int(seed) * 1_000_003 + int(index) * 7919 + 17) % (2**63 - 1)


def canonical_orientation(meta: ImageMeta) -> np.ndarray:
    """nibabel ``ornt`` (3 × 2: output axis, flip) taking the array to the axis order closest to LPS."""
    from nibabel.orientations import io_orientation

    return io_orientation(meta.affine_lps)


def to_canonical(volume: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Flip then permute ``volume`` so that axis ``ornt[a, 0]`` of the result is input axis ``a``."""
    out = volume
    for axis, (_, flip) in enumerate(ornt):
        if flip < 0:
            out = np.flip(out, axis=axis)
    order = np.argsort(ornt[:, 0].astype(int))
    return np.ascontiguousarray(np.transpose(out, order))


def from_canonical(volume: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Exact inverse of ``to_canonical``."""
    out = np.transpose(volume, ornt[:, 0].astype(int))
    for axis, (_, flip) in enumerate(ornt):
        if flip < 0:
            out = np.flip(out, axis=axis)
    return np.ascontiguousarray(out)


def _physical(array: np.ndarray, target: Modality, state: Any) -> np.ndarray:
    from medm2g_core.data.transforms import denormalize

    values = np.asarray(denormalize(array, state), dtype=np.float32)
    if target is Modality.CT:
        values = np.clip(values, *CT_RANGE_HU)
    return values


def _target_state(target: Modality, sources: Mapping[Modality, Any], *, ct_window: Sequence[float]) -> Any:
    """How to map the flow's [-1, 1] output to physical units: the training CT window for CT; for an MRI target,
    the percentile range of the first source of the same family (MRI has no absolute units), else [0, 1000]."""
    from medm2g_core.data.transforms import NormState

    if target is Modality.CT:
        return NormState(target.value, "window", float(ct_window[0]), float(ct_window[1]), units="HU")
    for modality, state in sources.items():
        if modality.encoder_family == target.encoder_family:
            return NormState(target.value, "percentile", state.low, state.high, percentiles=state.percentiles)
    return NormState(target.value, "minmax", 0.0, 1000.0)


def translate_volume(
    flow: Any,
    sources: Mapping[Modality, np.ndarray],
    meta: ImageMeta,
    *,
    samples: int = 1,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    weights: Mapping[Modality, float] | None = None,
    batch_size: int | None = None,
    bundle_name: str = "",
    progress: ProgressFn = no_progress,
) -> TranslationResult:
    """Translate registered source volumes (same grid as ``meta``) with a loaded ``FlowModel``.

    Args:
        flow: a ``medm2g_core.flows.model.FlowModel`` (``pair``, ``image_size``, ``context_slices``, ``predict``).
        sources: modality → ``(i, j, k)`` array in physical units, all on ``meta``'s grid.
        meta: the geometry of the output (the first source's).
        samples: samples per slice; > 1 gives their mean and a std map.
        seed: one seed for the whole volume; slice k uses ``slice_seed(seed, k)``.
        batch_size: slices per ``predict`` call (default 8); does not change the result.
    """
    import torch

    from medm2g_core.data.transforms import normalize, resize_back, resize_image

    if samples < 1:
        raise ConfigError(f"samples must be ≥ 1, got {samples}")
    target: Modality = flow.pair.target
    shape = tuple(int(s) for s in meta.shape)
    if len(shape) != 3:
        raise InputError(None, f"translation needs a 3D volume, got shape {shape}", "pass a CT/MRI volume (2D images: use generate)")
    started = time.monotonic()
    options = flow.normalise_options  # the recipe's normalisation, as in training
    ornt = canonical_orientation(meta)
    normalised: dict[Modality, np.ndarray] = {}
    states: dict[Modality, Any] = {}
    for modality, array in sources.items():
        if tuple(array.shape) != shape:
            raise InputError(None, f"{modality.value} has shape {tuple(array.shape)}, the volume {shape}",
                             "register all sources to one grid first")
        values = np.asarray(array, dtype=np.float32)
        if not np.all(np.isfinite(values)):
            raise InputError(None, f"{modality.value} holds NaN or infinite values", "fix or mask the volume before translating")
        normalised[modality], states[modality] = normalize(to_canonical(values, ornt), modality, **options)
    canonical_shape = next(iter(normalised.values())).shape
    depth = canonical_shape[2]
    plane = canonical_shape[:2]
    context = int(getattr(flow, "context_slices", 0) or 0)
    size = int(flow.image_size)
    batch_size = max(1, int(batch_size or 8))
    mean = np.empty(canonical_shape, dtype=np.float32)
    spread = np.empty(canonical_shape, dtype=np.float32) if samples > 1 else None
    flow_sources = [m for m in flow.pair.sources if m in normalised]
    for first in range(0, depth, batch_size):
        indices = list(range(first, min(first + batch_size, depth)))
        batch_inputs: dict[Modality, torch.Tensor] = {}
        for modality in flow_sources:
            volume = normalised[modality]
            stacks = []
            for k in indices:
                channels = [volume[:, :, min(max(k + offset, 0), depth - 1)] for offset in range(-context, context + 1)]
                stacks.append(resize_image(np.stack(channels), size))
            batch_inputs[modality] = torch.stack(stacks)
        prediction = _predict(flow, batch_inputs, samples=samples, seeds=[slice_seed(seed, k) for k in indices],
                              steps=steps, guidance=guidance, weights=weights)
        predicted_mean = prediction.mean.detach().float().cpu()
        predicted_std = None if prediction.std is None else prediction.std.detach().float().cpu()
        for row, k in enumerate(indices):
            mean[:, :, k] = resize_back(predicted_mean[row], plane)[0].numpy()
            if spread is not None and predicted_std is not None:
                spread[:, :, k] = resize_back(predicted_std[row], plane)[0].numpy()
        progress(ProgressEvent(task="slices", completed=indices[-1] + 1, total=depth))
    state = _target_state(target, states, ct_window=options["ct_window"])
    image = from_canonical(_physical(mean, target, state), ornt)
    std = None
    if spread is not None:
        # std in physical units: the denormalisation is affine, so it scales by (high - low) / 2.
        std = from_canonical(np.maximum(spread, 0.0) * np.float32((state.high - state.low) / 2.0), ornt)
    from medm2g_core._version import __version__
    from medm2g_core.io.meta import units_for

    derivation = f"medm2g {__version__} {flow.pair.name} translation" + (f" with bundle {bundle_name}" if bundle_name else "")
    out_meta = meta.replace(
        modality=target.value,
        units=units_for(target.value),
        synthetic=True,
        extra={**meta.extra, "derivation": derivation, "medm2g_flow": flow.pair.name, "samples": samples, "seed": seed},
    )
    return TranslationResult(image=image, std=std, meta=out_meta, flow=flow.pair.name, seconds=time.monotonic() - started)


def _predict(flow: Any, inputs: dict[Modality, Any], *, samples: int, seeds: list[int], steps: int | None,
             guidance: float | None, weights: Mapping[Modality, float] | None) -> Any:
    """One ``flow.predict`` call with one seed per slice (``FlowModel.predict`` seeds each batch item, its
    K samples included, from its own seed), so the result does not depend on the batch size."""
    kwargs: dict[str, Any] = {"samples": samples, "steps": steps, "guidance": guidance}
    if weights:
        kwargs["weights"] = dict(weights)
    return flow.predict(inputs, seed=list(seeds), **kwargs)


# -- batch -----------------------------------------------------------------------------------------


@dataclass
class _Plan:
    jobs: list[batching.Job]
    target: Modality


def parse_sources(text: str | Sequence[str] | None) -> tuple[Modality, ...] | None:
    """``"mri-t2,mri-pd"`` (or a list) → modalities; None stays None."""
    if text is None:
        return None
    parts = [p for item in ([text] if isinstance(text, str) else text) for p in str(item).split(",") if p.strip()]
    if not parts:
        return None
    try:
        found = tuple(parse_modality(p) for p in parts)
    except ValueError as error:
        raise ConfigError(f"--from: {error}") from None
    if len(set(found)) != len(found):
        raise ConfigError(f"--from {text!r} names a modality twice")
    return found


def parse_weights(text: str | None, count: int) -> list[float] | None:
    """``"0.7,0.3"`` → [0.7, 0.3], one per source."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--weights {text!r}: expected comma-separated numbers such as 0.7,0.3") from None
    if len(values) != count:
        raise ConfigError(f"--weights {text!r}: got {len(values)} weights for {count} sources; give one per source")
    return values


def plan_translate(
    paths: Sequence[Path],
    *,
    model: "MedM2G",
    target: Modality,
    sources: tuple[Modality, ...] | None,
    out: Path | None,
    output: Path | None,
    output_format: str,
) -> list[batching.Job]:
    """Resolve each input to its source files and output path (no pixels read). Problems with one input
    become that job's ``problem``; usage errors (``-o`` with several inputs) raise."""
    if output is not None and len(paths) != 1:
        raise ConfigError(f"-o/--output names one file but {len(paths)} inputs were given; use --out DIR for several")
    jobs: list[batching.Job] = []
    for path in paths:
        job_sources: dict[Modality, Any] = {}
        problem: str | None = None
        try:
            job_sources = _job_sources(path, model=model, target=target, sources=sources)
        except (InputError, ConfigError) as error:
            problem = batching.describe_error(str(path), error)
        patient = batching.patient_name(path)
        if output is not None:
            destination = Path(output)
        else:
            name = target.value if output_format == "dicom" else f"{target.value}.nii.gz"
            destination = Path(out or "medm2g-output") / patient / name
        key = os.path.relpath(destination, out) if out is not None else str(destination)
        jobs.append(batching.Job(input=str(path), key=key, output=destination, sources=job_sources, problem=problem))
    return jobs


def _job_sources(path: Path, *, model: "MedM2G", target: Modality, sources: tuple[Modality, ...] | None) -> dict[Modality, Path]:
    if not path.exists():
        raise InputError(path, "no such file or folder", "check the path (relative paths are resolved from the current folder)")
    if path.is_dir() and not batching.is_series_folder(path):
        files = batching.patient_files(path)
        if not files:
            raise InputError(path, "holds no canonically named scan (mri-t1.nii.gz, ct.nii.gz, a ct/ DICOM series ...)",
                             "pass the file itself, or rename it to the canonical name")
        if sources is None:
            pair = model.select_flow(target=target, available=[m for m in files if m is not target])
            sources = tuple(m for m in pair.sources if m in files)
        missing = [m.value for m in sources if m not in files]
        if missing:
            raise InputError(path, f"has no {', '.join(missing)} (found: {', '.join(m.value for m in files)})",
                             "check --from, or add the missing scan")
        return {m: files[m] for m in sources}
    # a file or a DICOM series folder
    if sources is None:
        modality = batching.modality_of(path)
        if modality is None:
            raise InputError(path, "cannot tell its modality from the name or header", "pass --from ct|mri-t1|mri-t2|mri-pd")
        return {modality: path}
    if len(sources) == 1:
        return {sources[0]: path}
    own = batching.modality_of(path)
    if own not in sources:
        raise InputError(path, f"is not one of --from {','.join(m.value for m in sources)} (it looks like {own.value if own else 'an unknown modality'})",
                         "pass the patient folder, or one of the named scans")
    siblings = batching.patient_files(path.parent)
    siblings[own] = path
    missing = [m.value for m in sources if m not in siblings]
    if missing:
        raise InputError(path.parent, f"has no {', '.join(missing)} beside {path.name}", "check --from, or add the missing scan")
    return {m: siblings[m] for m in sources}


def translate_batch(
    inputs: Sequence[str | Path],
    *,
    to: str | Modality,
    source: str | Sequence[str] | None = None,
    out: str | Path | None = None,
    output: str | Path | None = None,
    output_format: str = "nifti",
    model: str | Path | None = None,
    samples: int = 1,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    weights: str | None = None,
    skip_existing: bool = False,
    overwrite: bool = False,
    shard: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    max_memory: str | None = None,
    stdin: Any = None,
    progress: ProgressFn = no_progress,
    on_result: batching.ResultFn = batching.no_result,
    on_warning: Callable[[str], None] = lambda message: None,
) -> batching.BatchResult:
    """``medm2g translate``: every input → ``OUT/<patient>/<target>.nii.gz`` (+ std map, sidecar) and
    ``OUT/run.json``. Usage errors raise (exit 2) before any work; per-input errors become ``failed``
    results and the rest finish.
    """
    from medm2g_core import io
    from medm2g_core.pipelines.model import MedM2G

    started = time.monotonic()
    try:
        target = parse_modality(str(to.value if isinstance(to, Modality) else to))
    except ValueError as error:
        raise ConfigError(f"--to: {error}") from None
    if not target.is_volume:
        raise ConfigError(f"--to {target.value}: translate makes volumes (ct, mri-t1, mri-t2, mri-pd); use `medm2g generate --to {target.value}`")
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"--format {output_format!r}: use nifti or dicom")
    if out is not None and output is not None:
        raise ConfigError("give either --out DIR or -o FILE, not both")
    if overwrite and skip_existing:
        raise ConfigError("--overwrite and --skip-existing contradict each other; choose one")
    if samples < 1:
        raise ConfigError(f"--samples must be ≥ 1, got {samples}")
    wanted_sources = parse_sources(source)
    shard_spec = batching.parse_shard(shard)
    memory_limit = batching.parse_memory(max_memory)
    paths = batching.expand_folders(batching.expand_inputs(inputs, stdin=stdin))
    loaded = MedM2G.from_pretrained(model, device=device)
    weight_values = parse_weights(weights, len(wanted_sources) if wanted_sources else 1)
    out_dir = Path(out) if out is not None else (None if output is not None else Path("medm2g-output"))
    jobs = plan_translate(paths, model=loaded, target=target, sources=wanted_sources, out=out_dir,
                          output=Path(output) if output is not None else None, output_format=output_format)
    batching.check_collisions(jobs)
    jobs = batching.select_shard(jobs, shard_spec)
    arguments = {"to": target.value, "from": [m.value for m in wanted_sources] if wanted_sources else None,
                 "format": output_format, "samples": samples, "seed": seed, "steps": steps, "guidance": guidance,
                 "weights": weight_values}  # not the batch size: each slice has its own seed, so it cannot change an output
    expected = batching.fingerprint(bundle=loaded.fingerprint, arguments=arguments)
    if not overwrite and not skip_existing:
        clash = batching.existing_outputs(jobs)
        if clash:
            raise InputError(clash[0].output, f"already exists{f' (and {len(clash) - 1} more outputs)' if len(clash) > 1 else ''}",
                             "pass --overwrite to replace, or --skip-existing to keep outputs made with the same bundle and arguments")
    warnings: list[str] = []
    if loaded.synthetic:
        warnings.append(loaded.synthetic_warning)
        on_warning(warnings[-1])
    record = batching.RunRecord(command="translate", arguments={**arguments, "batch_size": batch_size or 8, "shard": shard, "max_memory": max_memory},
                                seed=seed, bundle_hash=loaded.fingerprint, bundle_name=loaded.path.name,
                                synthetic_bundle=loaded.synthetic, device=loaded.device, shard=shard_spec)

    def work(job: batching.Job) -> batching.ItemResult:
        if skip_existing and batching.output_is_current(job.output, expected):
            return batching.ItemResult(job.input, batching.STATUS_SKIPPED, output=str(job.output),
                                       message="output exists with the same bundle and arguments")
        primary_modality, primary_path = next(iter(job.sources.items()))
        estimate = batching.estimate_array_bytes(Path(primary_path))
        if estimate is not None:
            shape, voxels = estimate
            batching.check_memory(Path(primary_path), voxels=voxels, shape=shape,
                                  bytes_per_voxel=BYTES_PER_VOXEL + 4 * (len(job.sources) - 1), limit=memory_limit)
        volume, meta = io.read(primary_path)
        additional = {}
        for modality, path in list(job.sources.items())[1:]:
            array, other = io.read(path)
            if not other.same_grid(meta, tolerance_mm=1e-2):
                raise InputError(path, f"is not on the grid of {Path(primary_path).name} (shape {other.shape} vs {meta.shape})",
                                 "register the sources to one grid first (e.g. with ANTs or SimpleITK)")
            additional[modality] = (array, other)
        result = loaded.translate(volume, meta, to=target, source=primary_modality, additional=additional,
                                  samples=samples, seed=seed, steps=steps, guidance=guidance, weights=weight_values,
                                  batch_size=batch_size, progress=progress)
        batching.remove_stale_sidecar(job.output)
        written = [str(_write_volume(job.output, result.image, result.meta, output_format))]
        if result.std is not None:
            std_meta = result.meta.replace(extra={**result.meta.extra, "map": "per-voxel standard deviation over samples"})
            written.append(str(io.write(batching.std_path(job.output), result.std.astype(np.float32), std_meta)))
        card = batching.sidecar(kind="translate", fingerprint_value=expected, bundle_hash=loaded.fingerprint,
                                bundle_path=str(loaded.path), flow=result.flow, arguments=arguments, seed=seed,
                                synthetic_bundle=loaded.synthetic, outputs=[Path(p).name for p in written],
                                extra={"source_modalities": [m.value for m in job.sources], "seconds": round(result.seconds, 3)})
        from medm2g_core.serialization import write_json

        write_json(batching.sidecar_path(job.output), card)
        return batching.ItemResult(job.input, batching.STATUS_OK, output=written[0], outputs=written,
                                   details={"flow": result.flow, "shape": list(result.meta.shape)})

    record.timings["setup_seconds"] = time.monotonic() - started
    items = batching.run_jobs(jobs, work, on_result=on_result)
    record.items = items
    record.timings["total_seconds"] = time.monotonic() - started
    run_json = record.write(out_dir) if out_dir is not None and jobs else None
    return batching.BatchResult(items=items, warnings=warnings, run_json=run_json, seconds=time.monotonic() - started,
                                device=loaded.device)


def _write_volume(path: Path, image: np.ndarray, meta: ImageMeta, output_format: str) -> Path:
    from medm2g_core import io

    array = np.rint(image).astype(np.int16) if meta.modality == Modality.CT.value else image.astype(np.float32)
    if output_format == "dicom" or not path.suffix:
        return io.write(path, array, meta, format="dicom-series")
    return io.write(path, array, meta)
