"""Batch machinery shared by ``translate`` and ``generate``: inputs, output names, provenance, sharding.

What a batch run does before any model work (FIELD-LESSONS.md, command-line conventions):

1. **Inputs** (``expand_inputs``): files, patient folders, cohort folders (folders of patient folders),
   DICOM series folders, globs (``'cohort/*/mri-t1.nii.gz'``, expanded here so quoting works) and ``-``
   (paths on stdin, one per line). Zero inputs is an ``InputError`` (exit 2), never a silent success.
2. **Output names from the patient folder** (``patient_name``): ``find cohort -name mri-t1.nii.gz``
   yields many inputs with one basename, so ``--out DIR`` writes ``DIR/<patient>/<modality>.nii.gz``
   where ``<patient>`` is the folder holding a canonically named file (``P0001/mri-t1.nii.gz`` →
   ``P0001``), the folder itself for a patient folder, the parent of a DICOM series folder, and the
   file's own stem for free-form names (``scans/IXI002-T1.nii.gz`` → ``IXI002-T1``), so a flat folder of
   scans does not collide either. Two inputs mapping to one output is an error before any work starts
   (``check_collisions``).
3. **Existing outputs**: an error unless ``--overwrite`` (replace) or ``--skip-existing``; the latter
   trusts an output only when its sidecar's ``fingerprint`` equals this run's (bundle + arguments).
   Every file is renamed into place (``serialization.atomic_path``) and the sidecar is written last
   and removed first, so a run killed half-way never leaves an output that counts as done.
4. **Sharding** (``select_shard``): ``--shard k/N`` keeps the jobs whose position in the sorted list of
   output names is ``k`` modulo ``N`` (``k`` counts from 0), the same split whatever order the inputs
   came in, so array jobs never overlap.
5. **Provenance**: a small sidecar JSON per output (``sidecar``) and one ``run.json`` per run
   (``RunRecord``) — medm2g version, bundle fingerprint, arguments, seed, timings, per-input status.
   Neither holds anything from the image headers (no patient name, ID or birth date).
6. **Memory** (``parse_memory``, ``estimate_array_bytes``): the size of a volume is estimated from its
   header before its pixels are read, and a volume whose processing cannot fit in ``--max-memory``
   fails with the numbers instead of being killed by the kernel.
"""

from __future__ import annotations

import datetime as _dt
import glob
import hashlib
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TextIO

from medm2g_core._version import __version__
from medm2g_core.errors import ConfigError, InputError
from medm2g_core.io.meta import SUFFIX_FORMATS, canonical_modality, memory_limit_bytes, modality_from_name
from medm2g_core.modalities import Modality
from medm2g_core.serialization import read_json, to_jsonable, write_json

SIDECAR_FORMAT = 1
GLOB_CHARACTERS = re.compile(r"[*?\[]")
STATUS_OK, STATUS_FAILED, STATUS_SKIPPED = "ok", "failed", "skipped"


# -- inputs --------------------------------------------------------------------------------------


def expand_inputs(inputs: Sequence[str | Path], *, stdin: TextIO | None = None) -> list[Path]:
    """Turn command-line inputs into paths: ``-`` reads paths from ``stdin`` (one per line, blank lines
    ignored), patterns with ``* ? [`` are globbed (sorted; ``**`` recursive), everything else is kept
    as given (a missing file becomes that input's own failure, not the batch's). Duplicates (same
    resolved path) are dropped, first occurrence kept.

    Raises:
        InputError: no input at all (nothing given, an empty stdin, globs matching nothing).
    """
    found: list[Path] = []
    empty_globs: list[str] = []
    for item in inputs:
        text = str(item)
        if text == "-":
            stream = stdin if stdin is not None else sys.stdin
            found += [Path(line.strip()) for line in stream.read().splitlines() if line.strip()]
        elif GLOB_CHARACTERS.search(text) and not Path(text).exists():
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                empty_globs.append(text)
            found += [Path(m) for m in matches]
        else:
            found.append(Path(text))
    unique: list[Path] = []
    seen: set[str] = set()
    for path in found:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    if not unique:
        detail = f" (no file matches {', '.join(empty_globs)})" if empty_globs else ""
        raise InputError(
            None,
            f"no inputs{detail}",
            "pass files, patient folders or globs, or - to read paths from stdin (e.g. find cohort -name mri-t1.nii.gz | medm2g translate - --to ct)",
        )
    return unique


def strip_suffix(name: str) -> str:
    lowered = name.lower()
    for suffix, _ in SUFFIX_FORMATS:
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def patient_name(path: Path) -> str:
    """The output folder name for an input (see the module docstring): the patient folder, not the basename."""
    absolute = Path(os.path.abspath(path))
    if absolute.is_dir() and not is_series_folder(absolute):
        return absolute.name or "input"
    if canonical_modality(absolute.name) is not None or is_series_folder(absolute):
        return absolute.parent.name or "input"
    return strip_suffix(absolute.name) or "input"


def is_series_folder(path: Path) -> bool:
    """A folder holding DICOM files directly (``P0001/ct/0001.dcm``...)."""
    if not path.is_dir():
        return False
    from medm2g_core.io.dicom import holds_dicom_files

    return holds_dicom_files(path, sample=16)


def patient_files(folder: Path) -> dict[Modality, Path]:
    """Canonically named files and DICOM series folders directly inside a patient folder."""
    files: dict[Modality, Path] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return files
    for entry in entries:
        if entry.name.startswith("."):
            continue
        modality = canonical_modality(entry.name)
        if modality is None:
            continue
        if entry.is_file() or is_series_folder(entry):
            files.setdefault(modality, entry)
    return files


def expand_folders(paths: Sequence[Path]) -> list[Path]:
    """Replace each cohort folder (a folder holding patient folders, not files) by its patient folders;
    files, patient folders and DICOM series folders are kept."""
    from medm2g_core.data.manifest import find_patient_folders

    out: list[Path] = []
    for path in paths:
        if path.is_dir() and not is_series_folder(path) and not patient_files(path):
            found = find_patient_folders(path)
            out += found if found else [path]  # an empty folder fails on its own, with a message
        else:
            out.append(path)
    return out


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


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"k/N"`` → (k, N) with 0 ≤ k < N; None passes through."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise ConfigError(f"--shard {text!r}: expected k/N such as 0/4 (k counts from 0)")
    k, n = int(match.group(1)), int(match.group(2))
    if n < 1 or not 0 <= k < n:
        raise ConfigError(f"--shard {text!r}: need N ≥ 1 and 0 ≤ k < N (k counts from 0)")
    return k, n


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


def bundle_fingerprint(path: str | Path) -> str:
    """Cheap identity of a bundle: ``bundle.json``'s bytes plus the names and sizes of its weights
    (sha256, 16 hex). Retraining any component rewrites ``bundle.json`` (its ``updated`` stamp)."""
    path = Path(path)
    digest = hashlib.sha256((path / "bundle.json").read_bytes())
    for weights in sorted(path.rglob("*.safetensors")):
        if "training" in weights.relative_to(path).parts:
            continue
        digest.update(f"{weights.relative_to(path).as_posix()}:{weights.stat().st_size}".encode())
    return digest.hexdigest()[:16]


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

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_memory(text: str | None) -> int:
    """``"4G"``, ``"512MiB"``, ``"1.5gb"`` or bytes → bytes; None → the default (half the RAM, or
    ``MEDM2G_MAX_ARRAY_BYTES``)."""
    if text is None:
        return memory_limit_bytes()
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise ConfigError(f"--max-memory {text!r}: expected a size such as 4G, 512M or 2GiB")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise ConfigError(f"--max-memory {text!r} must be positive")
    return value


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


def modality_of(path: Path) -> Modality | None:
    """Modality from the name (canonical or tokens), else the header (DICOM, medm2g's NIfTI marks)."""
    by_name = modality_from_name(path.name)
    if by_name is not None:
        return by_name
    from medm2g_core.io import modality_from_path

    return modality_from_path(path)
