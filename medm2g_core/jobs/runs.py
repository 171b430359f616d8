"""Batch run records shared by ``translate`` and ``generate``: jobs, provenance, sharding, memory.

1. **Jobs** (``Job``): one input, its output and a planning problem if any; two inputs mapping to one
   output is an error before any work starts (``check_collisions``).
2. **Existing outputs**: an error unless ``--overwrite`` (replace) or ``--skip-existing``; the latter
   trusts an output only when its sidecar's ``fingerprint`` equals this run's (bundle + arguments).
   Every file is renamed into place (``serialization.atomic_path``) and the sidecar is written last
   and removed first, so a run killed half-way never leaves an output that counts as done.
3. **Sharding** (``select_shard``): shard (k, N) keeps the jobs whose position in the sorted list of
   output names is ``k`` modulo ``N`` (``k`` counts from 0), the same split whatever order the inputs
   came in, so array jobs never overlap.
4. **Provenance**: a small sidecar JSON per output (``sidecar``) and one ``run.json`` per run
   (``RunRecord``) — medm2g version, bundle fingerprint, arguments, seed, timings, per-input status.
   Neither holds anything from the image headers (no patient name, ID or birth date).
5. **Memory** (``estimate_array_bytes``, ``check_memory``): the size of a volume is estimated from its
   header before its pixels are read, and a volume whose processing cannot fit in the memory limit
   fails with the numbers instead of being killed by the kernel.
6. **One skeleton** (``run_batch``): the loop both commands share — existing-output check, synthetic
   warning, per-job isolation, ``run.json``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from medm2g_core._version import __version__
from medm2g_core.errors import InputError
from medm2g_core.jobs.inputs import strip_suffix
from medm2g_core.modalities import Modality
from medm2g_core.serialization import read_json, to_jsonable, write_json

SIDECAR_FORMAT = 1
STATUS_OK, STATUS_FAILED, STATUS_SKIPPED = "ok", "failed", "skipped"


# -- planning ------------------------------------------------------------------------------------


@dataclass
class Job:
    """One unit of work: an input, the output it will produce, and the per-input failure if any.

    Attributes:
        input: the input as given (file, patient folder, series folder, or ``"<text>"`` for generate).
        key: the output's name relative to the output folder (``P0001/ct.nii.gz``), used for sorting,
            sharding and collision checks.
        output: where the main output goes.
        sources: modality → file/series folder the job reads (translate), or text/paths (generate).
        problem: a resolution error found while planning; the job is reported failed without running.
    """

    input: str
    key: str
    output: Path
    sources: dict[Modality, Any] = field(default_factory=dict)
    problem: str | None = None


@dataclass
class ItemResult:
    """What happened to one input (one JSON object per input with ``--json``)."""

    input: str
    status: str
    output: str | None = None
    outputs: list[str] = field(default_factory=list)
    message: str | None = None
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return to_jsonable(self)


def sidecar_path(output: Path) -> Path:
    """``P0001/ct.nii.gz`` → ``P0001/ct.json``; ``P0001/ct`` (a DICOM series folder) → ``P0001/ct.json``."""
    return output.with_name(strip_suffix(output.name) + ".json")


def std_path(output: Path) -> Path:
    """The uncertainty map beside an output: ``ct.nii.gz`` → ``ct.std.nii.gz`` (always NIfTI)."""
    return output.with_name(strip_suffix(output.name) + ".std.nii.gz")


def check_collisions(jobs: Sequence[Job]) -> None:
    """Two inputs writing one output is a usage error, found before any work starts."""
    owners: dict[str, list[str]] = {}
    for job in jobs:
        owners.setdefault(os.path.abspath(job.output), []).append(job.input)
    clashes = {out: ins for out, ins in owners.items() if len(ins) > 1}
    if clashes:
        out, ins = next(iter(clashes.items()))
        more = f" (and {len(clashes) - 1} more outputs)" if len(clashes) > 1 else ""
        raise InputError(
            None,
            f"{len(ins)} inputs would write the same output {out}: {', '.join(ins[:4])}{more}",
            "outputs are named OUT/<patient folder>/<modality>; give each input its own patient folder, or run them separately with -o",
        )


def select_shard(jobs: Sequence[Job], shard: tuple[int, int] | None) -> list[Job]:
    """Jobs sorted by output name; with a shard (k, N) those at positions ≡ k (mod N)."""
    ordered = sorted(jobs, key=lambda job: (job.key, job.input))
    if shard is None:
        return ordered
    k, n = shard
    return [job for index, job in enumerate(ordered) if index % n == k]


def fingerprint(*, bundle: str, arguments: dict[str, Any]) -> str:
    """Identity of "this output, made by this bundle with these arguments" (sha256, 16 hex)."""
    text = repr((bundle, sorted(to_jsonable(arguments).items())))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def sidecar(*, kind: str, fingerprint_value: str, bundle_hash: str, bundle_path: str, flow: str, arguments: dict[str, Any],
            seed: int, synthetic_bundle: bool, outputs: Sequence[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The provenance written beside each output (no patient data, no input paths)."""
    record = {
        "format": SIDECAR_FORMAT,
        "created_by": f"medm2g {__version__}",
        "created": _now(),
        "kind": kind,
        "fingerprint": fingerprint_value,
        "bundle": {"hash": bundle_hash, "name": Path(bundle_path).name},
        "flow": flow,
        "arguments": to_jsonable(arguments),
        "seed": seed,
        "synthetic": True,
        "trained_on_synthetic_phantoms": synthetic_bundle,
        "outputs": list(outputs),
    }
    if synthetic_bundle:
        record["warning"] = SYNTHETIC_WARNING
    record.update(extra or {})
    return record


SYNTHETIC_WARNING = "this model was trained on synthetic phantoms; output means nothing clinically"


def output_is_current(output: Path, expected: str) -> bool:
    """``--skip-existing``: the output exists and its sidecar carries this run's fingerprint."""
    card = sidecar_path(output)
    if not output.exists() or not card.is_file():
        return False
    try:
        data = read_json(card)
    except Exception:  # a damaged sidecar means "not done"
        return False
    return isinstance(data, dict) and data.get("fingerprint") == expected


def existing_outputs(jobs: Sequence[Job]) -> list[Job]:
    return [job for job in jobs if job.output.exists()]


def remove_stale_sidecar(output: Path) -> None:
    """Before rewriting an output, drop its sidecar, so a kill mid-way cannot leave a "done" mark."""
    try:
        sidecar_path(output).unlink()
    except FileNotFoundError:
        pass


# -- run.json --------------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """One ``run.json`` per run: what ran, with what, how long, and each input's status."""

    command: str
    arguments: dict[str, Any]
    seed: int
    bundle_hash: str
    bundle_name: str
    synthetic_bundle: bool
    device: str
    shard: tuple[int, int] | None = None
    started: str = field(default_factory=lambda: _now())
    timings: dict[str, float] = field(default_factory=dict)
    items: list[ItemResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        counts = summary_counts(self.items)
        return {
            "created_by": f"medm2g {__version__}",
            "version": __version__,
            "command": self.command,
            "started": self.started,
            "finished": _now(),
            "bundle": {"hash": self.bundle_hash, "name": self.bundle_name, "trained_on_synthetic_phantoms": self.synthetic_bundle},
            "arguments": to_jsonable(self.arguments),
            "seed": self.seed,
            "device": self.device,
            "shard": None if self.shard is None else f"{self.shard[0]}/{self.shard[1]}",
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "counts": counts,
            "items": [item.to_json() for item in self.items],
        }

    def write(self, folder: Path) -> Path:
        name = "run.json" if self.shard is None else f"run.shard-{self.shard[0]}-of-{self.shard[1]}.json"
        return write_json(folder / name, self.to_json())


def run_records(folder: Path) -> list[Path]:
    """The ``run.json`` and ``run.shard-k-of-N.json`` files ``RunRecord.write`` left in ``folder`` (sorted)."""
    return sorted(p for p in [Path(folder) / "run.json", *Path(folder).glob("run.shard-*-of-*.json")] if p.is_file())


def summary_counts(items: Iterable[ItemResult]) -> dict[str, int]:
    counts = {STATUS_OK: 0, STATUS_FAILED: 0, STATUS_SKIPPED: 0}
    for item in items:
        counts[item.status] = counts.get(item.status, 0) + 1
    return counts


@dataclass
class BatchResult:
    """What a batch run returns to the CLI: per-input results, warnings to show, the run record path."""

    items: list[ItemResult]
    warnings: list[str] = field(default_factory=list)
    run_json: Path | None = None
    seconds: float = 0.0
    device: str = "cpu"

    @property
    def counts(self) -> dict[str, int]:
        return summary_counts(self.items)

    @property
    def failed(self) -> int:
        return self.counts[STATUS_FAILED]


ResultFn = Callable[[ItemResult], None]


def no_result(item: ItemResult) -> None:
    """Default per-input callback (the CLI uses it to print failures and --json lines as they happen)."""


def run_jobs(jobs: Sequence[Job], work: Callable[[Job], ItemResult], *, on_result: ResultFn = no_result) -> list[ItemResult]:
    """Run ``work`` on each job in isolation: an input's error becomes its ``failed`` result and the
    rest continue. Ctrl-C (``KeyboardInterrupt``) stops the batch; finished outputs stay."""
    results: list[ItemResult] = []
    for job in jobs:
        started = time.monotonic()
        if job.problem is not None:
            item = ItemResult(job.input, STATUS_FAILED, message=job.problem)
        else:
            try:
                item = work(job)
            except KeyboardInterrupt:
                raise
            except MemoryError:
                item = ItemResult(job.input, STATUS_FAILED, message="ran out of memory; lower --batch-size or --samples, or raise --max-memory")
            except Exception as error:  # isolation: one bad input never stops the batch
                item = ItemResult(job.input, STATUS_FAILED, message=describe_error(job.input, error))
        item.seconds = round(time.monotonic() - started, 3)
        results.append(item)
        on_result(item)
    return results


def describe_error(where: str, error: BaseException) -> str:
    """One line naming the cause; project errors already name their file."""
    from medm2g_core.errors import MedM2GError

    text = " ".join(str(error).split())
    if isinstance(error, InputError) and error.path is not None:
        return text
    if isinstance(error, (MedM2GError, OSError, ValueError)):
        return f"{where}: {text}" if text else f"{where}: {type(error).__name__}"
    return f"{where}: internal error {type(error).__name__}: {text} (rerun with --verbose)"


# -- memory --------------------------------------------------------------------------------------

def estimate_array_bytes(path: Path) -> tuple[tuple[int, ...], int] | None:
    """(shape, voxel count) from a header without reading pixels; None when the format gives no
    cheap header (the reader's own size checks still apply)."""
    from medm2g_core.io import detect_format

    try:
        kind = detect_format(path)
        if kind == "nifti":
            from medm2g_core.io.nifti import read_header

            shape = read_header(path)[1].shape
        elif kind in ("mha", "nrrd"):
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            shape = tuple(int(s) for s in reader.GetSize())
        elif kind == "dicom-series":
            files = [p for p in path.iterdir() if p.is_file()]
            import pydicom

            first = pydicom.dcmread(str(sorted(files)[0]), stop_before_pixels=True)
            shape = (int(first.Columns), int(first.Rows), len(files) * int(getattr(first, "NumberOfFrames", 1) or 1))
        else:
            return None
    except InputError:
        raise
    except Exception:
        return None
    count = 1
    for s in shape:
        count *= int(s)
    return tuple(int(s) for s in shape), count


def check_memory(path: Path, *, voxels: int, shape: tuple[int, ...], bytes_per_voxel: int, limit: int) -> None:
    """Raise ``InputError`` with the numbers when ``voxels × bytes_per_voxel`` exceeds ``limit``."""
    needed = voxels * bytes_per_voxel
    if needed > limit:
        raise InputError(
            path,
            f"a {'×'.join(map(str, shape))} volume needs about {needed / 2**30:.2f} GiB to translate "
            f"({bytes_per_voxel} bytes/voxel), more than --max-memory {limit / 2**30:.2f} GiB",
            "raise --max-memory, use --samples 1, or crop/resample the volume first",
        )


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def run_batch(
    jobs: Sequence[Job],
    work: Callable[[Job, str], ItemResult],
    *,
    model: Any,
    command: str,
    arguments: dict[str, Any],
    record_arguments: dict[str, Any] | None = None,
    seed: int,
    out_dir: Path | None,
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
    skip_existing: bool = False,
    started: float | None = None,
    on_result: ResultFn = no_result,
    on_warning: Callable[[str], None] = lambda message: None,
) -> BatchResult:
    """The loop ``translate`` and ``generate`` share, after planning ``jobs`` with a loaded ``MedM2G``:

    refuse existing outputs unless ``overwrite``/``skip_existing`` (usage error, before any work); warn once
    when the bundle is synthetic; skip outputs whose sidecar carries this run's fingerprint
    (``skip_existing``); run ``work(job, fingerprint)`` on each job in isolation (it calls
    ``remove_stale_sidecar`` before rewriting an output); write ``run.json`` into
    ``out_dir``. ``arguments`` (what can change an output) make the fingerprint; ``record_arguments`` are
    recorded in ``run.json`` as well.
    """
    started = time.monotonic() if started is None else started
    check_collisions(jobs)
    jobs = select_shard(jobs, shard)
    expected = fingerprint(bundle=model.fingerprint, arguments=arguments)
    if not overwrite and not skip_existing:
        clash = existing_outputs(jobs)
        if clash:
            raise InputError(clash[0].output, f"already exists{f' (and {len(clash) - 1} more outputs)' if len(clash) > 1 else ''}",
                             "pass --overwrite to replace, or --skip-existing to keep outputs made with the same bundle and arguments")
    warnings: list[str] = []
    if model.synthetic:
        warnings.append(model.synthetic_warning)
        on_warning(warnings[-1])
    record = RunRecord(command=command, arguments={**arguments, **(record_arguments or {})}, seed=seed,
                       bundle_hash=model.fingerprint, bundle_name=model.path.name, synthetic_bundle=model.synthetic,
                       device=model.device, shard=shard)

    def one(job: Job) -> ItemResult:
        if skip_existing and output_is_current(job.output, expected):
            return ItemResult(job.input, STATUS_SKIPPED, output=str(job.output), message="output exists with the same bundle and arguments")
        return work(job, expected)

    record.timings["setup_seconds"] = time.monotonic() - started
    items = run_jobs(jobs, one, on_result=on_result)
    record.items = items
    record.timings["total_seconds"] = time.monotonic() - started
    run_json = record.write(out_dir) if out_dir is not None and jobs else None
    return BatchResult(items=items, warnings=warnings, run_json=run_json, seconds=time.monotonic() - started, device=model.device)


def write_sidecar(output: Path, *, kind: str, fingerprint_value: str, model: Any, flow: str, arguments: dict[str, Any],
                  seed: int, outputs: Sequence[str], extra: dict[str, Any] | None = None) -> Path:
    """Write the provenance sidecar of ``output`` (last, after the outputs themselves)."""
    real_sets = getattr(getattr(model, "bundle", None), "real_sets", None)
    if real_sets:  # trained on real data: say which, with each set's licence line
        extra = {"trained_on_real_data": dict(real_sets), **(extra or {})}
    card = sidecar(kind=kind, fingerprint_value=fingerprint_value, bundle_hash=model.fingerprint, bundle_path=str(model.path),
                   flow=flow, arguments=arguments, seed=seed, synthetic_bundle=model.synthetic,
                   outputs=[Path(p).name for p in outputs], extra=extra)
    return write_json(sidecar_path(output), card)
