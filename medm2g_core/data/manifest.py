"""Index a cohort: which patient folders exist, what each holds, and the problems found.

A **patient folder** is a folder that directly holds at least one recognised file or DICOM series
folder. Recognised means a canonical name (DESIGN.md §3): the stem is a modality name or alias
(``ct``, ``mri-t1``/``t1``, ``mri-t2``/``t2``, ``mri-pd``/``pd``, ``mri-flair``/``flair``,
``mri-t1c``/``t1c``/``t1ce``, ``xray``/``cxr``) with an image
suffix (.nii.gz, .nii, .dcm, .mha, .nrrd, .png, .jpg), a folder of that name holding DICOM files,
``report.txt`` or ``labels.json``. Free-form names (``IXI002-T1.nii.gz``) are reported as
unrecognised with a hint to rename, rather than guessed.

**Auxiliary files** the importers place beside the canonical ones are listed in
``PatientRecord.extras`` (name stem → path), not as modalities, and are not read: further X-ray views
(``xray-lateral``, ``xray-lateral-N``, ``xray-frontal-N``, ``xray-view-N`` as .png/.jpg/.jpeg/.dcm)
and volumes no flow uses yet (``mask``, ``seg``, ``cbct`` as .nii.gz/.nii/.mha/
.nrrd). Only a broken link among them is a problem. Cohorts
may be nested (``cohort/chest/P0001``); the **patient id is the folder's path relative to the root**
(``chest/P0001``), so ids are unique by construction. Two patient folders with the same *name* in
different places are still reported (``duplicate patient folder name``), because tools that name
outputs by patient folder would make them collide.

Paths are reported as they are inside the cohort: a symlinked file (``data import`` links into the
downloaded dataset) is listed under its own name in the patient folder, not its target.

Headers are read instead of pixels where the format allows (NIfTI, MHA/NRRD, PNG); compressed NIfTI
is streamed once to detect truncation without holding the volume; DICOM series are read in full
because their regularity checks need every slice's position (cheap next to the pixels).

Problems found: unreadable or truncated files, empty reports, bad ``labels.json``, an MRI and the CT
of one patient (or two of its MRI contrasts) on different grids, X-rays that are not 2D, two files
for one modality, duplicate patient folder names, and files not recognised. **Warnings** are
irregularities accepted on request: a DICOM series with missing slices, uneven spacing or gantry tilt
read with ``allow_irregular=True`` (``data index --allow-irregular``).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medm2g_core.errors import InputError
from medm2g_core.io.meta import canonical_modality, format_from_suffix
from medm2g_core.modalities import MRI_MODALITIES, Modality
from medm2g_core.serialization import to_jsonable, write_text
from medm2g_core.types import ImageMeta, ProgressEvent, ProgressFn, no_progress

MANIFEST_NAME = "manifest.jsonl"
LABELS_NAME = "labels.json"
IGNORED_SUFFIXES = (".json", ".md", ".log")  # sidecars and notes written beside outputs
IMAGE_FORMATS = ("nifti", "dicom", "mha", "nrrd", "png", "jpeg")
# Files the importers write beside the canonical ones (extra X-ray views, masks, other MRI contrasts).
AUXILIARY_FILE = re.compile(
    r"^(?P<stem>xray-lateral(?:-\d+)?|xray-(?:frontal|view)-\d+)\.(?:png|jpe?g|dcm)$"
    r"|^(?P<volume>mask|seg|cbct)\.(?:nii\.gz|nii|mha|nrrd)$",
    re.IGNORECASE,
)


@dataclass
class PatientRecord:
    """One patient folder.

    Attributes:
        patient_id: folder path relative to the cohort root (POSIX separators), e.g. ``chest/P0001``.
        folder: absolute path of the patient folder.
        files: modality → file or DICOM series folder (the path inside the cohort, links not followed).
        extras: auxiliary file stem (``xray-lateral``, ``mask``, ``seg``...) → path; not read.
        labels: ``labels.json`` contents when present and valid.
        problems: human-readable problems, each naming the file concerned.
        warnings: irregularities accepted on request (an irregular DICOM series read with
            ``allow_irregular``), each naming the file concerned.
        shapes: modality → array shape as read (volumes ``(i, j, k)``, X-rays ``(rows, cols)``).
        spacings: modality → voxel size in mm.
        synthetic: True when any file is marked synthetic (phantom or model output).
        cohort_root: the folder ``scan_cohort`` was given (absolute); ``splits.split_records`` reads
            its ``splits.json``. None for records built by hand.
    """

    patient_id: str
    folder: Path
    files: dict[Modality, Path] = field(default_factory=dict)
    labels: dict[str, int] | None = None
    problems: list[str] = field(default_factory=list)
    shapes: dict[Modality, tuple[int, ...]] = field(default_factory=dict)
    spacings: dict[Modality, tuple[float, ...]] = field(default_factory=dict)
    synthetic: bool = False
    extras: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    cohort_root: Path | None = None

    def to_json(self, *, root: Path | None = None) -> dict[str, Any]:
        """Plain JSON; paths relative to ``root`` when given."""

        def show(path: Path) -> str:
            if root is not None:
                try:
                    return Path(os.path.relpath(path, root)).as_posix()
                except ValueError:
                    pass
            return str(path)

        return {
            "patient_id": self.patient_id,
            "folder": show(self.folder),
            "files": {m.value: show(p) for m, p in self.files.items()},
            "extras": {name: show(p) for name, p in self.extras.items()},
            "labels": self.labels,
            "shapes": {m.value: list(s) for m, s in self.shapes.items()},
            "spacings": {m.value: [round(float(v), 6) for v in s] for m, s in self.spacings.items()},
            "synthetic": self.synthetic,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
        }


def scan_cohort(root: str | Path, *, progress: ProgressFn = no_progress, allow_irregular: bool = False) -> list[PatientRecord]:
    """Find every patient folder under ``root`` and check what it holds.

    ``allow_irregular``: read DICOM series with missing slices, uneven spacing or gantry tilt (listed
    in ``warnings``) instead of reporting them as unreadable problems.

    Raises:
        InputError: ``root`` is missing, not a folder, or holds no patient folder.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(root, "no such folder", "check the path of the cohort folder")
    if not root.is_dir():
        raise InputError(root, "is a file, but a cohort folder of patient folders was expected", "pass the folder that holds the patient folders")
    folders = find_patient_folders(root)
    if not folders:
        raise InputError(
            root,
            "holds no patient folders (no folder with ct.nii.gz, mri-t1.nii.gz, xray.png, report.txt, a DICOM series...)",
            "point at the cohort folder, or create one with `medm2g data synth`",
        )
    records = []
    for index, folder in enumerate(folders):
        relative = folder.relative_to(root).as_posix()
        record = scan_patient(folder, patient_id=relative if relative != "." else folder.resolve().name, allow_irregular=allow_irregular)
        record.cohort_root = Path(os.path.abspath(root))
        records.append(record)
        progress(ProgressEvent(task="index", completed=index + 1, total=len(folders)))
    _flag_duplicate_names(records)
    return records


def write_manifest(root: str | Path, records: list[PatientRecord]) -> Path:
    """Write ``root/manifest.jsonl`` (one JSON record per patient, paths relative to root) atomically."""
    root = Path(root)
    lines = [json.dumps(to_jsonable(record.to_json(root=root)), ensure_ascii=False) for record in records]
    return write_text(root / MANIFEST_NAME, "\n".join(lines) + ("\n" if lines else ""))


def find_patient_folders(root: Path) -> list[Path]:
    """Patient folders under ``root`` (``root`` itself when it directly holds recognised files), sorted."""
    found: list[Path] = []
    for current, subfolders, _ in os.walk(root):
        folder = Path(current)
        subfolders[:] = sorted(s for s in subfolders if not s.startswith("."))
        if _is_patient_folder(folder):
            found.append(folder)
            subfolders[:] = []  # its subfolders are its DICOM series, not other patients
    return sorted(found)


def _is_patient_folder(folder: Path) -> bool:
    try:
        entries = list(folder.iterdir())
    except OSError:
        return False
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_file() and _recognised_file(entry) is not None:
            return True
        if entry.is_dir() and _series_modality_by_name(entry) is not None and _has_dicom(entry):
            return True
    return False


def _recognised_file(path: Path) -> Modality | str | None:
    """Modality of a recognised file, the string "labels" for labels.json, or None."""
    if path.name.lower() == LABELS_NAME:
        return "labels"
    kind = format_from_suffix(path)
    modality = canonical_modality(path.name)
    if kind is None or modality is None:
        return None
    if kind == "text":
        return modality if modality is Modality.REPORT else None
    return modality if modality.is_image else None


def _series_modality_by_name(folder: Path) -> Modality | None:
    modality = canonical_modality(folder.name)
    return modality if modality is not None and modality.is_image else None


def _has_dicom(folder: Path) -> bool:
    from medm2g_core.io.dicom import holds_dicom_files

    return holds_dicom_files(folder, sample=8)


def scan_patient(folder: Path, *, patient_id: str, allow_irregular: bool = False) -> PatientRecord:
    """Check one patient folder: every file's header, reports, labels and cross-modality grids.

    Paths are made absolute without following links, so an imported (symlinked) file keeps its name
    inside the patient folder.
    """
    folder = Path(os.path.abspath(folder))
    record = PatientRecord(patient_id=patient_id, folder=folder)
    metas: dict[Modality, ImageMeta] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name == MANIFEST_NAME:
            continue
        if entry.is_dir():
            modality = _series_modality_by_name(entry)
            if modality is None or not _has_dicom(entry):
                record.problems.append(f"{entry.name}/: unrecognised folder (not a DICOM series named after a modality)")
                continue
            _add_image(record, metas, modality, entry, allow_irregular=allow_irregular)
            continue
        kind = _recognised_file(entry)
        if kind == "labels":
            record.labels = _read_labels(entry, record)
        elif kind is Modality.REPORT:
            _add_report(record, entry)
        elif isinstance(kind, Modality):
            _add_image(record, metas, kind, entry, allow_irregular=allow_irregular)
        elif (auxiliary := AUXILIARY_FILE.match(entry.name)) is not None:
            _add_extra(record, (auxiliary.group("stem") or auxiliary.group("volume")).lower(), entry)
        elif not entry.name.lower().endswith(IGNORED_SUFFIXES):
            record.problems.append(f"{entry.name}: unrecognised file (rename to ct/mri-t1/mri-t2/mri-pd/mri-flair/mri-t1c.nii.gz, xray.png, report.txt or labels.json)")
    _check_grids(record, metas)
    return record


def _add_extra(record: PatientRecord, name: str, path: Path) -> None:
    if name in record.extras:
        record.problems.append(f"{path.name}: a second {name} file (already have {record.extras[name].name}); keep one")
    elif not path.exists():
        record.problems.append(f"{path.name}: broken link (its target {os.readlink(path)} is gone); import the dataset again")
    else:
        record.extras[name] = path


def _add_image(
    record: PatientRecord, metas: dict[Modality, ImageMeta], modality: Modality, path: Path, *, allow_irregular: bool = False
) -> None:
    if modality in record.files:
        record.problems.append(f"{path.name}: a second {modality.value} file (already have {record.files[modality].name}); keep one")
        return
    try:
        meta = read_meta(path, allow_irregular=allow_irregular)
    except InputError as error:
        record.problems.append(f"{path.name}: {error.problem}")
        return
    if meta.extra.get("irregular"):
        record.warnings.append(f"{path.name}{'/' if path.is_dir() else ''}: irregular series read anyway ({meta.extra['irregular']})")
    record.files[modality] = path
    record.shapes[modality] = tuple(meta.shape)
    record.spacings[modality] = tuple(meta.spacing)
    record.synthetic = record.synthetic or meta.synthetic
    metas[modality] = meta
    if modality is Modality.XRAY and not _is_2d(meta.shape):
        record.problems.append(f"{path.name}: X-ray is not 2D (shape {tuple(meta.shape)})")


def _is_2d(shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 or (len(shape) == 3 and shape[2] == 1)


def _add_report(record: PatientRecord, path: Path) -> None:
    from medm2g_core.io.text import read_report

    if Modality.REPORT in record.files:
        record.problems.append(f"{path.name}: a second report (already have {record.files[Modality.REPORT].name}); keep one")
        return
    try:
        report = read_report(path)
    except InputError as error:
        record.problems.append(f"{path.name}: {error.problem}")
        return
    record.files[Modality.REPORT] = path
    record.synthetic = record.synthetic or report.synthetic
    if report.is_empty:
        record.problems.append(f"{path.name}: empty report")


def _read_labels(path: Path, record: PatientRecord) -> dict[str, int] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError) as error:
        record.problems.append(f"{path.name}: not valid UTF-8 JSON ({' '.join(str(error).split())})")
        return None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in data.items()):
        record.problems.append(f'{path.name}: expected an object of finding → 0/1 integers, e.g. {{"cardiomegaly": 1}}')
        return None
    return data


def _check_grids(record: PatientRecord, metas: dict[Modality, ImageMeta]) -> None:
    mris = [(m, metas[m]) for m in MRI_MODALITIES if m in metas]
    ct = metas.get(Modality.CT)
    if ct is not None:
        for modality, mri in mris:
            if not ct.same_grid(mri, tolerance_mm=1e-3):
                record.problems.append(
                    f"{modality.value} and ct are on different grids ({_grid_difference(mri, ct)}); register/resample them for MRI↔CT flows"
                )
    for index, (first, first_meta) in enumerate(mris):
        for second, second_meta in mris[index + 1 :]:
            if not first_meta.same_grid(second_meta, tolerance_mm=1e-3):
                record.problems.append(
                    f"{first.value} and {second.value} are on different grids ({_grid_difference(first_meta, second_meta)}); "
                    "register them before training paired flows"
                )


def _grid_difference(a: ImageMeta, b: ImageMeta) -> str:
    text = f"shape {tuple(a.shape)} vs {tuple(b.shape)}, spacing {_mm(a.spacing)} vs {_mm(b.spacing)} mm"
    if tuple(a.shape) == tuple(b.shape) and np.allclose(a.spacing, b.spacing, atol=1e-3):
        text += ", different origin or direction"
    return text


def _mm(values: tuple[float, ...]) -> str:
    return "×".join(f"{v:g}" for v in values)


def _flag_duplicate_names(records: list[PatientRecord]) -> None:
    by_name: dict[str, list[PatientRecord]] = {}
    for record in records:
        by_name.setdefault(Path(record.patient_id).name, []).append(record)
    for name, group in by_name.items():
        if len(group) < 2:
            continue
        for record in group:
            others = ", ".join(r.patient_id for r in group if r is not record)
            record.problems.append(f"duplicate patient folder name {name!r} (also {others}); outputs named by patient folder would collide")


def read_meta(path: str | Path, *, allow_irregular: bool = False) -> ImageMeta:
    """An image's ``ImageMeta`` reading as little as the format allows; truncation is detected.

    NIfTI: header + one streaming pass over .gz data (nothing kept); PNG/JPEG: chunk CRCs, then a
    decode (X-rays are small); MHA/NRRD and DICOM: full read (series checks need every slice).
    ``allow_irregular`` is passed to ``io.read`` for DICOM.
    """
    from medm2g_core import io

    path = Path(path)
    kind = io.detect_format(path)
    if kind == "nifti":
        from medm2g_core.io.nifti import read_header

        image, meta = read_header(path)
        if path.name.lower().endswith(".gz"):
            header = image.header
            expected = int(header.get_data_offset()) + int(header.get_data_dtype().itemsize) * int(_product(image.shape))
            _verify_gzip(path, expected_bytes=expected)
        return meta
    if kind in ("png", "jpeg"):
        return _png_meta(path)
    if kind is None and path.is_file():
        from medm2g_core.io.meta import require_file

        require_file(path)
    return io.read(path, allow_irregular=allow_irregular)[1]


def _product(shape: tuple[int, ...]) -> int:
    total = 1
    for size in shape:
        total *= int(size)
    return total


def _verify_gzip(path: Path, *, expected_bytes: int) -> None:
    """Stream-decompress (1 MiB at a time) to detect truncation or corruption without keeping the data."""
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while True:
                chunk = stream.read(2**20)
                if not chunk:
                    break
                total += len(chunk)
                if total > expected_bytes + 2**20:
                    break
    except (EOFError, OSError, zlib.error) as error:
        raise InputError(path, f"truncated or corrupt gzip data ({' '.join(str(error).split())})", "copy or export the file again") from None
    if total < expected_bytes:
        raise InputError(path, f"holds {total:,} bytes of image data but its header needs {expected_bytes:,} (truncated)", "copy or export the file again")


def _png_meta(path: Path) -> ImageMeta:
    from PIL import Image

    from medm2g_core.io.png import read_png

    try:
        with Image.open(path) as image:
            image.verify()  # chunk CRCs and structure, without decoding all pixels into memory
    except Exception as error:  # Pillow raises several types for damaged files
        raise InputError(path, f"damaged image ({' '.join(str(error).split())})", "export the image again") from None
    return read_png(path)[1]
