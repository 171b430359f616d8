"""Index a cohort: which patient folders exist, what each holds, and the problems found.

A **patient folder** is a folder that directly holds at least one recognised file or DICOM series
folder. Recognised means a canonical name (DESIGN.md §3): the stem is a modality name or alias
(``ct``, ``mri-t1``/``t1``, ``mri-t2``/``t2``, ``mri-pd``/``pd``, ``xray``/``cxr``) with an image
suffix (.nii.gz, .nii, .dcm, .mha, .nrrd, .png, .jpg), a folder of that name holding DICOM files,
``report.txt`` or ``labels.json``. Free-form names (``IXI002-T1.nii.gz``) are reported as
unrecognised with a hint to rename, rather than guessed. Cohorts
may be nested (``cohort/chest/P0001``); the **patient id is the folder's path relative to the root**
(``chest/P0001``), so ids are unique by construction. Two patient folders with the same *name* in
different places are still reported (``duplicate patient folder name``), because tools that name
outputs by patient folder would make them collide.

Headers are read instead of pixels where the format allows (NIfTI, MHA/NRRD, PNG); compressed NIfTI
is streamed once to detect truncation without holding the volume; DICOM series are read in full
because their regularity checks need every slice's position (cheap next to the pixels).

Problems found: unreadable or truncated files, empty reports, bad ``labels.json``, an MRI and the CT
of one patient on different grids, X-rays that are not 2D, two files for one modality, duplicate
patient folder names, and files not recognised.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medm2g_core.errors import InputError
from medm2g_core.io.meta import SUFFIX_FORMATS, format_from_suffix
from medm2g_core.modalities import ALIASES, Modality
from medm2g_core.serialization import to_jsonable, write_text
from medm2g_core.types import ImageMeta, ProgressEvent, ProgressFn, no_progress

MANIFEST_NAME = "manifest.jsonl"
LABELS_NAME = "labels.json"
IGNORED_SUFFIXES = (".json", ".md", ".log")  # sidecars and notes written beside outputs
IMAGE_FORMATS = ("nifti", "dicom", "mha", "nrrd", "png", "jpeg")


@dataclass
class PatientRecord:
    """One patient folder.

    Attributes:
        patient_id: folder path relative to the cohort root (POSIX separators), e.g. ``chest/P0001``.
        folder: absolute path of the patient folder.
        files: modality → file or DICOM series folder.
        labels: ``labels.json`` contents when present and valid.
        problems: human-readable problems, each naming the file concerned.
        shapes: modality → array shape as read (volumes ``(i, j, k)``, X-rays ``(rows, cols)``).
        spacings: modality → voxel size in mm.
        synthetic: True when any file is marked synthetic (phantom or model output).
    """

    patient_id: str
    folder: Path
    files: dict[Modality, Path] = field(default_factory=dict)
    labels: dict[str, int] | None = None
    problems: list[str] = field(default_factory=list)
    shapes: dict[Modality, tuple[int, ...]] = field(default_factory=dict)
    spacings: dict[Modality, tuple[float, ...]] = field(default_factory=dict)
    synthetic: bool = False

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
            "labels": self.labels,
            "shapes": {m.value: list(s) for m, s in self.shapes.items()},
            "spacings": {m.value: [round(float(v), 6) for v in s] for m, s in self.spacings.items()},
            "synthetic": self.synthetic,
            "problems": list(self.problems),
        }


def scan_cohort(root: str | Path, *, progress: ProgressFn = no_progress) -> list[PatientRecord]:
    """Find every patient folder under ``root`` and check what it holds.

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
        records.append(scan_patient(folder, patient_id=relative if relative != "." else folder.resolve().name))
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


def _canonical_modality(name: str) -> Modality | None:
    """Modality of a canonical stem (``ct``, ``mri-t1``, ``t2``, ``xray``, ``report``...), else None."""
    stem = name.lower()
    for suffix, _ in SUFFIX_FORMATS:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return ALIASES.get(stem)


def _recognised_file(path: Path) -> Modality | str | None:
    """Modality of a recognised file, the string "labels" for labels.json, or None."""
    if path.name.lower() == LABELS_NAME:
        return "labels"
    kind = format_from_suffix(path)
    modality = _canonical_modality(path.name)
    if kind is None or modality is None:
        return None
    if kind == "text":
        return modality if modality is Modality.REPORT else None
    return modality if modality.is_image else None


def _series_modality_by_name(folder: Path) -> Modality | None:
    modality = _canonical_modality(folder.name)
    return modality if modality is not None and modality.is_image else None


def _has_dicom(folder: Path) -> bool:
    from medm2g_core.io.dicom import is_dicom_file

    try:
        return any(is_dicom_file(p) for p in sorted(folder.iterdir())[:8] if p.is_file())
    except OSError:
        return False


def scan_patient(folder: Path, *, patient_id: str) -> PatientRecord:
    """Check one patient folder: every file's header, reports, labels and cross-modality grids."""
    record = PatientRecord(patient_id=patient_id, folder=folder.resolve())
    metas: dict[Modality, ImageMeta] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name == MANIFEST_NAME:
            continue
        if entry.is_dir():
            modality = _series_modality_by_name(entry)
            if modality is None or not _has_dicom(entry):
                record.problems.append(f"{entry.name}/: unrecognised folder (not a DICOM series named after a modality)")
                continue
            _add_image(record, metas, modality, entry)
            continue
        kind = _recognised_file(entry)
        if kind == "labels":
            record.labels = _read_labels(entry, record)
        elif kind is Modality.REPORT:
            _add_report(record, entry)
        elif isinstance(kind, Modality):
            _add_image(record, metas, kind, entry)
        elif not entry.name.lower().endswith(IGNORED_SUFFIXES):
            record.problems.append(f"{entry.name}: unrecognised file (rename to ct/mri-t1/mri-t2/mri-pd.nii.gz, xray.png, report.txt or labels.json)")
    _check_grids(record, metas)
    return record


def _add_image(record: PatientRecord, metas: dict[Modality, ImageMeta], modality: Modality, path: Path) -> None:
    if modality in record.files:
        record.problems.append(f"{path.name}: a second {modality.value} file (already have {record.files[modality].name}); keep one")
        return
    try:
        meta = read_meta(path)
    except InputError as error:
        record.problems.append(f"{path.name}: {error.problem}")
        return
    record.files[modality] = path.resolve()
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
    record.files[Modality.REPORT] = path.resolve()
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
    ct = metas.get(Modality.CT)
    if ct is None:
        return
    for modality in (Modality.MRI_T1, Modality.MRI_T2, Modality.MRI_PD):
        mri = metas.get(modality)
        if mri is not None and not ct.same_grid(mri, tolerance_mm=1e-3):
            record.problems.append(
                f"{modality.value} and ct are on different grids (shape {tuple(mri.shape)} vs {tuple(ct.shape)}, "
                f"spacing {_mm(mri.spacing)} vs {_mm(ct.spacing)} mm); register/resample them for MRI↔CT flows"
            )


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


def read_meta(path: str | Path) -> ImageMeta:
    """An image's ``ImageMeta`` reading as little as the format allows; truncation is detected.

    NIfTI: header + one streaming pass over .gz data (nothing kept); PNG/JPEG: chunk CRCs, then a
    decode (X-rays are small); MHA/NRRD and DICOM: full read (series checks need every slice).
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
    return io.read(path)[1]


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
