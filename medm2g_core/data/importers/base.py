"""Shared machinery for the dataset importers: placing files, writing reports and labels, counting.

Every importer finds the studies of one public dataset (``find_*``), then hands them to ``run_import``
with a function that writes one study through a ``CohortWriter``. The writer

- places images and volumes by **absolute symlink** to the source file (``copy=True`` copies instead,
  for filesystems or archives that cannot hold links); nothing is re-encoded;
- writes ``report.txt`` through ``medm2g_core.io.write_report`` and ``labels.json`` / ``splits.json``
  through ``medm2g_core.serialization.write_json`` (both atomic);
- is idempotent: a link or file that already holds what would be written is left alone and counted
  as ``unchanged``, so re-running an import is cheap and changes nothing.

One study that cannot be read is recorded in ``ImportResult.problems`` (study id and cause, never a
patient name) and the others are still imported. A source that is missing, or in which nothing of the
dataset's layout is recognised, raises ``InputError`` naming what was expected.
"""

from __future__ import annotations

import contextlib
import csv
import filecmp
import gzip
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from medm2g_core.errors import InputError
from medm2g_core.io.text import Report, read_report, write_report
from medm2g_core.serialization import atomic_path, write_json
from medm2g_core.types import ProgressEvent, ProgressFn, no_progress

StudyT = TypeVar("StudyT")

SPLIT_NAMES = ("train", "val", "test")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MAGIC = {".png": (b"\x89PNG\r\n\x1a\n",), ".jpg": (b"\xff\xd8\xff",), ".jpeg": (b"\xff\xd8\xff",)}


class StudyError(Exception):
    """One study cannot be imported; ``run_import`` records the message and goes on with the others."""


@dataclass
class ImportResult:
    """What one ``medm2g data import`` run did.

    Attributes:
        dataset: the importer's name (``"iu-xray"``...).
        source: the dataset folder as downloaded.
        out: the cohort folder written.
        mode: ``"symlink"`` or ``"copy"`` — how images and volumes were placed; ``"converted"`` when the
            importer writes new files (AANLIB's PNG slices stacked into volumes, ``ixi --register``).
        patients: patient folders holding at least one imported file after this run.
        files: per canonical file name (``xray.png``, ``report.txt``, ``mri-t1.nii.gz``...), how many
            patient folders hold it.
        written: files created or replaced by this run (links, copies, reports, labels, splits).
        unchanged: files that already held what would be written (a re-run writes nothing).
        reports_only: patients imported with a report but no image (not an error: the dataset
            has the text but the images were not downloaded).
        splits: patients per split in ``DIR/splits.json`` (empty when the dataset defines none).
        problems: one line per study that could not be imported (study id and cause).
        notes: facts about the data the user must know (e.g. IXI contrasts are not co-registered).
    """

    dataset: str
    source: Path
    out: Path
    mode: str = "symlink"
    patients: int = 0
    files: dict[str, int] = field(default_factory=dict)
    written: int = 0
    unchanged: int = 0
    reports_only: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def require_source(source: str | Path, *, dataset: str, expected: str) -> Path:
    """Return ``source`` as a Path; ``InputError`` when it is missing or not a folder."""
    source = Path(source)
    if not source.exists():
        raise InputError(source, "does not exist", f"give the {dataset} folder as downloaded (expected: {expected})")
    if not source.is_dir():
        raise InputError(source, "is not a folder", f"give the {dataset} folder as downloaded (expected: {expected})")
    return source


def nothing_recognised(source: Path, *, dataset: str, expected: str) -> InputError:
    """The error for a folder in which none of the dataset's files were found."""
    return InputError(
        source,
        f"no {dataset} data recognised here",
        f"expected {expected}; point SRC at the dataset's top folder as downloaded",
    )


def check_patient_id(patient_id: str) -> str:
    """Patient folder names come from source file names: keep them to one safe path component."""
    if not _SAFE_ID.match(patient_id) or patient_id in (".", ".."):
        raise StudyError(f"{patient_id!r} is not usable as a patient folder name")
    return patient_id


def check_file(path: Path) -> None:
    """Cheap readability check before linking: exists, non-empty, right magic bytes / NIfTI header.

    Pixels are not decoded (that is ``data index``'s and the readers' job); this catches truncated
    downloads, HTML error pages saved under an image name, and unreadable files.
    """
    try:
        size = path.stat().st_size
    except OSError as error:
        raise StudyError(f"{path}: cannot be read ({error.strerror or error})") from None
    if size == 0:
        raise StudyError(f"{path}: empty file (interrupted download?)")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel

        try:
            nibabel.load(str(path)).header  # header only; the data stay on disk
        except Exception as error:  # nibabel raises many types for broken files
            raise StudyError(f"{path}: not a readable NIfTI file ({type(error).__name__}: {error})") from None
        return
    magic = _MAGIC.get(path.suffix.lower())
    if magic:
        try:
            with path.open("rb") as handle:
                head = handle.read(8)
        except OSError as error:
            raise StudyError(f"{path}: cannot be read ({error.strerror or error})") from None
        if not any(head.startswith(m) for m in magic):
            raise StudyError(f"{path}: not a {path.suffix.lstrip('.').upper()} file (wrong signature)")


def open_table(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a CSV file (``.csv`` or ``.csv.gz``) as dicts of strings."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as handle:  # type: ignore[operator]
        yield from csv.DictReader(handle)


def find_first(source: Path, names: Sequence[str], *, depth: int = 2) -> Path | None:
    """The first file named one of ``names`` in ``source`` or up to ``depth`` folders below it."""
    for level in range(depth + 1):
        pattern = "/".join(["*"] * level)
        for name in names:
            hits = sorted(source.glob(f"{pattern}/{name}" if pattern else name))
            hits = [h for h in hits if h.is_file()]
            if hits:
                return hits[0]
    return None


class CohortWriter:
    """Writes patient folders under ``out`` and counts what it did into ``result``."""

    def __init__(self, out: Path, *, result: ImportResult, copy: bool = False):
        self.out = Path(out)
        self.result = result
        self.copy = copy
        self._symlinks_failed = False
        self.patients: set[str] = set()

    def folder(self, patient_id: str) -> Path:
        self.patients.add(check_patient_id(patient_id))
        return self.out / patient_id

    def place(self, source: Path, patient_id: str, name: str, *, check: bool = True) -> Path:
        """Link (or copy) ``source`` to ``out/<patient>/<name>``; unchanged links are left alone."""
        if check:
            check_file(source)
        dest = self.folder(patient_id) / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_dir() and not dest.is_symlink():
            raise StudyError(f"{dest} is a folder; expected a file — remove it and re-run")
        target = source.resolve()
        if not self.copy and not self._symlinks_failed:
            if dest.is_symlink() and os.readlink(dest) == str(target):
                self.result.unchanged += 1
                return dest
            try:
                _atomic_symlink(target, dest)
                self.result.written += 1
                return dest
            except OSError:
                # Filesystems without symlinks (some network shares, FAT): fall back to copying once.
                self._symlinks_failed = True
                self.result.mode = "copy"
                self.result.notes.append("symlinks are not supported in the output folder; files were copied")
        if dest.is_file() and not dest.is_symlink() and filecmp.cmp(dest, target, shallow=False):
            self.result.unchanged += 1
            return dest
        with atomic_path(dest) as tmp:
            shutil.copyfile(target, tmp)
            _readable(tmp)
        self.result.written += 1
        return dest

    def report(self, patient_id: str, text: Report | str, *, label_derived: bool = False) -> Path:
        """Write ``report.txt`` through ``medm2g_core.io.write_report`` (left alone when it already
        reads back as the same text). ``label_derived``: the text was made from an image label."""
        dest = self.folder(patient_id) / "report.txt"
        dest.parent.mkdir(parents=True, exist_ok=True)
        wanted = (text.text if isinstance(text, Report) else str(text)).strip()
        if dest.is_file() and not dest.is_symlink():
            try:
                existing = read_report(dest)
                if existing.text == wanted and not existing.synthetic and existing.label_derived == label_derived:
                    self.result.unchanged += 1
                    return dest
            except InputError:
                pass  # damaged: rewrite it
        write_report(dest, text, synthetic=False, label_derived=label_derived)
        _readable(dest)
        self.result.written += 1
        return dest

    def image(self, patient_id: str, name: str, array: Any, meta: Any) -> Path:
        """Write a converted image (``medm2g_core.io.write``, atomic) to ``out/<patient>/<name>``; left
        alone when the file already reads back as the same pixels, geometry and units."""
        import numpy as np

        from medm2g_core import io

        dest = self.folder(patient_id) / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_file() and not dest.is_symlink():
            try:
                existing, existing_meta = io.read(dest)
                if (existing.dtype == array.dtype and existing.shape == array.shape and np.array_equal(existing, array)
                        and existing_meta.same_grid(meta, tolerance_mm=1e-4) and existing_meta.units == meta.units
                        and existing_meta.extra == meta.extra):
                    self.result.unchanged += 1
                    return dest
            except InputError:
                pass  # damaged: rewrite it
        if dest.is_symlink():
            dest.unlink()  # an earlier run linked the source here; the converted file replaces the link
        io.write(dest, array, meta)
        _readable(dest)
        self.result.written += 1
        return dest

    def labels(self, patient_id: str, labels: dict[str, int]) -> Path:
        """Write ``labels.json`` ({finding: 1 present, 0 absent, -1 uncertain})."""
        dest = self.folder(patient_id) / "labels.json"
        self._write_json_if_changed(dest, labels)
        return dest

    def sidecar(self, patient_id: str, name: str, data: Any) -> Path:
        """Write a small JSON file ``out/<patient>/<name>`` (atomic; left alone when unchanged)."""
        dest = self.folder(patient_id) / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._write_json_if_changed(dest, data)
        return dest

    def splits(self, splits: dict[str, list[str]]) -> Path:
        """Write ``out/splits.json``: ``{"train": [patient ids], "val": [...], "test": [...]}``."""
        ordered = {name: sorted(splits.get(name, [])) for name in SPLIT_NAMES if splits.get(name)}
        dest = self.out / "splits.json"
        self._write_json_if_changed(dest, ordered)
        self.result.splits = {name: len(ids) for name, ids in ordered.items()}
        return dest

    def _write_json_if_changed(self, dest: Path, data: Any) -> None:
        import json

        if dest.is_file() and not dest.is_symlink():
            try:
                if json.loads(dest.read_text(encoding="utf-8")) == data:
                    self.result.unchanged += 1
                    return
            except (OSError, ValueError):
                pass  # damaged: rewrite it
        write_json(dest, data)
        _readable(dest)
        self.result.written += 1


def _readable(path: Path) -> None:
    """Atomic writes start from a private (0600) temporary file; give the file the usual umask mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _atomic_symlink(target: Path, dest: Path) -> None:
    """Create ``dest`` → ``target`` under a temporary name, then rename it into place."""
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def run_import(
    studies: Sequence[StudyT],
    write_study: Callable[[CohortWriter, StudyT], None],
    *,
    study_id: Callable[[StudyT], str],
    result: ImportResult,
    copy: bool,
    progress: ProgressFn = no_progress,
) -> CohortWriter:
    """Write every study, isolating failures; count patients and files per canonical name.

    ``write_study`` raises ``StudyError`` (or ``OSError``/``ValueError``) for a study it cannot
    import; the message is recorded in ``result.problems`` and the next study goes on.
    """
    result.mode = "copy" if copy else "symlink"
    result.out.mkdir(parents=True, exist_ok=True)
    writer = CohortWriter(result.out, result=result, copy=copy)
    task = f"import {result.dataset}"
    total = len(studies)
    progress(ProgressEvent(task=task, completed=0, total=total))
    for index, study in enumerate(studies, start=1):
        name = study_id(study)
        try:
            write_study(writer, study)
        except (StudyError, OSError, ValueError) as error:
            result.problems.append(f"{name}: {_one_line(error)}")
        progress(ProgressEvent(task=task, completed=index, total=total))
    count_files(result, patients=writer.patients)
    return writer


def count_files(result: ImportResult, *, patients: Iterable[str]) -> None:
    """Fill ``patients``/``files``/``reports_only`` from what this run's patient folders now hold."""
    files: dict[str, int] = {}
    count = reports_only = 0
    for patient_id in sorted(patients):
        folder = result.out / patient_id
        names = [p.name for p in folder.iterdir() if not p.name.startswith(".")] if folder.is_dir() else []
        if not names:
            continue
        count += 1
        for name in names:
            files[name] = files.get(name, 0) + 1
        if "report.txt" in names and not any(_is_image_name(n) for n in names):
            reports_only += 1
    result.patients = count
    result.files = dict(sorted(files.items()))
    result.reports_only = reports_only


def _is_image_name(name: str) -> bool:
    return name.lower().endswith((".png", ".jpg", ".jpeg", ".dcm", ".nii", ".nii.gz"))


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror or type(error).__name__}"
    return " ".join(str(error).split())


def iter_files(root: Path, *, suffixes: Iterable[str]) -> Iterator[Path]:
    """Every file under ``root`` whose lower-cased name ends with one of ``suffixes`` (sorted walk)."""
    suffixes = tuple(s.lower() for s in suffixes)
    for folder, subfolders, names in os.walk(root):
        subfolders.sort()
        subfolders[:] = [s for s in subfolders if not s.startswith(".")]
        for name in sorted(names):
            if name.lower().endswith(suffixes) and not name.startswith("."):
                yield Path(folder) / name



def assign_splits(
    groups: dict[str, str],
    *,
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> dict[str, list[str]]:
    """Split patient ids by **group** (subject, case, person): every id of a group lands in one split.

    ``groups`` maps patient id → group. Groups are ordered by ``sha256(seed:group)`` — a pure function
    of the group's name and the seed, never of the listing order — and cut by count: ``round(n·val)``
    and ``round(n·test)`` groups for val and test, at least one test group from 2 groups on and one
    val group from 5 on, so a small cohort (3 BraTS subjects: 2 train, 1 test) still holds a subject out. Returns
    ``{"train": [ids], "val": [...], "test": [...]}`` (sorted ids; empty splits omitted).
    """
    import hashlib

    names = sorted(set(groups.values()), key=lambda g: hashlib.sha256(f"{seed}:{g}".encode("utf-8")).digest())
    count = len(names)
    n_test = max(round(count * fractions[2]), 1 if count >= 2 else 0)
    n_val = max(round(count * fractions[1]), 1 if count >= 5 else 0)
    if count >= 3 and n_test + n_val >= count:
        n_val = max(count - n_test - 1, 0)
    of_group = {name: "test" for name in names[:n_test]}
    of_group.update({name: "val" for name in names[n_test : n_test + n_val]})
    splits: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for patient_id, group in groups.items():
        splits[of_group.get(group, "train")].append(patient_id)
    return {name: sorted(ids) for name, ids in splits.items() if ids}


@dataclass
class FileStudy:
    """A study that is only files to place: ``files`` maps output name → source file."""

    patient_id: str
    files: dict[str, Path] = field(default_factory=dict)


def write_file_study(writer: CohortWriter, study: FileStudy) -> None:
    """Check every file first (so a broken study writes nothing), then place them."""
    for source in study.files.values():
        check_file(source)
    for name, source in sorted(study.files.items()):
        writer.place(source, study.patient_id, name, check=False)


def import_file_studies(studies: Sequence[FileStudy], *, result: ImportResult, copy: bool, progress: ProgressFn) -> CohortWriter:
    """``run_import`` for datasets whose studies are files only (SynthRAD, IXI, BraTS)."""
    return run_import(studies, write_file_study, study_id=lambda s: s.patient_id, result=result, copy=copy, progress=progress)
