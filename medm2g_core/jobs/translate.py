"""``medm2g translate`` over files, folders and stdin: every input → ``OUT/<patient>/<target>.nii.gz``.

With two targets (``--to ct,mri-t2``) every input gives both files from ONE sampling loop, through the bundle's joint
stage of the two flows; without that stage the run is refused before any work (never generated separately).

Planning resolves each input to its source files and output path without reading pixels (a problem
with one input becomes that job's failure); ``runs.run_batch`` does the rest. Values arrive typed
(the CLI parses flag syntax): ``sources`` a tuple of modalities, ``weights`` floats, ``shard`` (k, N),
``max_memory`` bytes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from medm2g_core.errors import ConfigError, InputError
from medm2g_core.jobs import inputs as batch_inputs
from medm2g_core.jobs import runs
from medm2g_core.modalities import Modality
from medm2g_core.types import ImageMeta, ProgressFn, no_progress

OUTPUT_FORMATS = ("nifti", "dicom")
# Working memory per voxel during a translation: the input (≤ 8 B), its float32 normalised copy per
# source, the float32 mean and std, and the written output (float32) — plus slack for the reader.
BYTES_PER_VOXEL = 8 + 4 + 4 + 4 + 4 + 8


def plan_translate(
    paths: Sequence[Path],
    *,
    model: Any,
    target: Modality,
    sources: tuple[Modality, ...] | None,
    out: Path | None,
    output: Path | None,
    output_format: str,
) -> list[runs.Job]:
    """Resolve each input to its source files and output path (no pixels read). Problems with one input
    become that job's ``problem``; usage errors (``-o`` with several inputs) raise."""
    if output is not None and len(paths) != 1:
        raise ConfigError(f"-o/--output names one file but {len(paths)} inputs were given; use --out DIR for several")
    jobs: list[runs.Job] = []
    for path in paths:
        job_sources: dict[Modality, Any] = {}
        problem: str | None = None
        try:
            job_sources = _job_sources(path, model=model, target=target, sources=sources)
        except (InputError, ConfigError) as error:
            problem = runs.describe_error(str(path), error)
        patient = batch_inputs.patient_name(path)
        if output is not None:
            destination = Path(output)
        else:
            name = target.value if output_format == "dicom" else f"{target.value}.nii.gz"
            destination = Path(out or "medm2g-output") / patient / name
        key = os.path.relpath(destination, out) if out is not None else str(destination)
        jobs.append(runs.Job(input=str(path), key=key, output=destination, sources=job_sources, problem=problem))
    return jobs


def _job_sources(path: Path, *, model: Any, target: Modality, sources: tuple[Modality, ...] | None) -> dict[Modality, Path]:
    if not path.exists():
        raise InputError(path, "no such file or folder", "check the path (relative paths are resolved from the current folder)")
    if path.is_dir() and not batch_inputs.is_series_folder(path):
        files = batch_inputs.patient_files(path)
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
        modality = batch_inputs.modality_of(path)
        if modality is None:
            raise InputError(path, "cannot tell its modality from the name or header", "pass --from ct|mri-t1|mri-t2|mri-pd|mri-flair|mri-t1c")
        return {modality: path}
    if len(sources) == 1:
        return {sources[0]: path}
    own = batch_inputs.modality_of(path)
    if own not in sources:
        raise InputError(path, f"is not one of --from {','.join(m.value for m in sources)} (it looks like {own.value if own else 'an unknown modality'})",
                         "pass the patient folder, or one of the named scans")
    siblings = batch_inputs.patient_files(path.parent)
    siblings[own] = path
    missing = [m.value for m in sources if m not in siblings]
    if missing:
        raise InputError(path.parent, f"has no {', '.join(missing)} beside {path.name}", "check --from, or add the missing scan")
    return {m: siblings[m] for m in sources}


def translate_batch(
    inputs: Sequence[str | Path],
    *,
    to: Modality | tuple[Modality, ...],
    sources: tuple[Modality, ...] | None = None,
    out: Path | None = None,
    output: Path | None = None,
    output_format: str = "nifti",
    model: str | Path | None = None,
    samples: int = 1,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    weights: Sequence[float] | None = None,
    skip_existing: bool = False,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    mirror: bool = False,
    max_memory: int | None = None,
    stdin: Any = None,
    progress: ProgressFn = no_progress,
    on_result: runs.ResultFn = runs.no_result,
    on_warning: Callable[[str], None] = lambda message: None,
) -> runs.BatchResult:
    """Every input → ``OUT/<patient>/<target>.nii.gz`` (+ std map, sidecar) and ``OUT/run.json``.

    ``to``: one target, or two generated together by the bundle's joint stage of their flows (one file each;
    a ``BundleError`` naming ``medm2g train-flow --stage joint`` when the bundle has none).

    Usage errors raise (exit 2) before any work; per-input errors become ``failed`` results and the rest
    finish. ``max_memory`` None: half the RAM (or ``MEDM2G_MAX_ARRAY_BYTES``).
    """
    from medm2g_core import io
    from medm2g_core.inference.model import MedM2G
    from medm2g_core.io.meta import memory_limit_bytes

    started = time.monotonic()
    targets = (to,) if isinstance(to, Modality) else tuple(to)
    target = targets[0]
    for wanted in targets:
        if not wanted.is_volume:
            raise ConfigError(f"--to {wanted.value}: translate makes volumes (ct, mri-t1, mri-t2, mri-pd, mri-flair, mri-t1c); use `medm2g generate --to {wanted.value}`")
    jointly = len(targets) > 1
    if jointly and output is not None:
        raise ConfigError(f"-o/--output names one file but --to {','.join(t.value for t in targets)} writes one per target; use --out DIR")
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"--format {output_format!r}: use nifti or dicom")
    if out is not None and output is not None:
        raise ConfigError("give either --out DIR or -o FILE, not both")
    if overwrite and skip_existing:
        raise ConfigError("--overwrite and --skip-existing contradict each other; choose one")
    memory_limit = memory_limit_bytes() if max_memory is None else int(max_memory)
    paths = batch_inputs.expand_folders(batch_inputs.expand_inputs(inputs, stdin=stdin))
    loaded = MedM2G.from_pretrained(model, device=device)
    if jointly:
        if weights is not None:
            raise ConfigError("--weights composes sources into one flow; joint generation (--to with two targets) does not take it")
        loaded.joint_pairs(targets, available=sources)  # no joint stage: refused here, before any input is read
    weight_values = None if weights is None else [float(w) for w in weights]
    out_dir = Path(out) if out is not None else (None if output is not None else Path("medm2g-output"))
    jobs = plan_translate(paths, model=loaded, target=target, sources=sources, out=out_dir,
                          output=Path(output) if output is not None else None, output_format=output_format)
    arguments = {"to": [t.value for t in targets] if jointly else target.value, "from": [m.value for m in sources] if sources else None,
                 "format": output_format, "samples": samples, "seed": seed, "steps": steps, "guidance": guidance,
                 "weights": weight_values,  # not the batch size: each slice has its own seed, so it cannot change an output
                 **({"mirror": True} if mirror else {})}  # only when on: outputs made before --mirror keep their fingerprint

    def work(job: runs.Job, expected: str) -> runs.ItemResult:
        primary_modality, primary_path = next(iter(job.sources.items()))
        estimate = runs.estimate_array_bytes(Path(primary_path))
        if estimate is not None:
            shape, voxels = estimate
            runs.check_memory(Path(primary_path), voxels=voxels, shape=shape,
                              bytes_per_voxel=BYTES_PER_VOXEL + 4 * (len(job.sources) - 1), limit=memory_limit)
        volume, meta = io.read(primary_path)
        additional = {}
        for modality, path in list(job.sources.items())[1:]:
            array, other = io.read(path)
            if not other.same_grid(meta, tolerance_mm=1e-2):
                raise InputError(path, f"is not on the grid of {Path(primary_path).name} (shape {other.shape} vs {meta.shape})",
                                 "register the sources to one grid first (e.g. with ANTs or SimpleITK)")
            additional[modality] = (array, other)
        options = dict(source=primary_modality, additional=additional, samples=samples, seed=seed, steps=steps, guidance=guidance,
                       batch_size=batch_size, mirror=mirror, progress=progress)
        if jointly:
            results = loaded.translate_jointly(volume, meta, to=targets, **options)
            outputs = {t: (job.output if t is target else sibling_output(job.output, t, output_format)) for t in targets}
        else:
            results = {target: loaded.translate(volume, meta, to=target, weights=weight_values, **options)}
            outputs = {target: job.output}
        written: list[str] = []
        for wanted, result in results.items():
            written += write_translation(outputs[wanted], result, output_format=output_format, fingerprint_value=expected,
                                         model=loaded, arguments=arguments, seed=seed, sources=list(job.sources))
        flow = "+".join(r.flow for r in results.values())
        first = results[target]
        return runs.ItemResult(job.input, runs.STATUS_OK, output=written[0], outputs=written,
                               details={"flow": flow, "shape": list(first.meta.shape)})

    shard_text = None if shard is None else f"{shard[0]}/{shard[1]}"
    memory_text = None if max_memory is None else int(max_memory)
    return runs.run_batch(jobs, work, model=loaded, command="translate", arguments=arguments, seed=seed, out_dir=out_dir,
                          record_arguments={"batch_size": batch_size or 8, "shard": shard_text, "max_memory": memory_text},
                          shard=shard, overwrite=overwrite, skip_existing=skip_existing, started=started,
                          on_result=on_result, on_warning=on_warning)


def sibling_output(path: Path, target: Modality, output_format: str) -> Path:
    """Where ``target`` goes beside ``path`` (another target of the same input, same naming)."""
    return path.parent / (target.value if output_format == "dicom" or not path.suffix else f"{target.value}.nii.gz")


def write_translation(path: Path, result: Any, *, output_format: str, fingerprint_value: str, model: Any,
                      arguments: dict[str, Any], seed: int, sources: Sequence[Modality]) -> list[str]:
    """Write one ``TranslationResult`` (its volume, its std map when sampled K > 1 or mirrored, its sidecar); the paths
    written."""
    from medm2g_core import io

    runs.remove_stale_sidecar(path)
    written = [str(write_volume(path, result.image, result.meta, output_format))]
    if result.std is not None:
        over = "samples and mirrored passes" if result.meta.extra.get("mirror") else "samples"
        std_meta = result.meta.replace(extra={**result.meta.extra, "map": f"per-voxel standard deviation over {over}"})
        written.append(str(io.write(runs.std_path(path), result.std.astype(np.float32), std_meta)))
    runs.write_sidecar(path, kind="translate", fingerprint_value=fingerprint_value, model=model, flow=result.flow,
                       arguments=arguments, seed=seed, outputs=written,
                       extra={"source_modalities": [m.value for m in sources], "seconds": round(result.seconds, 3)})
    return written


def write_volume(path: Path, image: np.ndarray, meta: ImageMeta, output_format: str) -> Path:
    """Write a translated volume: CT as int16 HU, MRI as float32; a DICOM series folder for ``dicom``."""
    from medm2g_core import io

    array = np.rint(image).astype(np.int16) if meta.modality == Modality.CT.value else image.astype(np.float32)
    if output_format == "dicom" or not path.suffix:
        return io.write(path, array, meta, format="dicom-series")
    return io.write(path, array, meta)
