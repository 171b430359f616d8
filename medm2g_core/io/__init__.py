"""Medical image and report I/O that keeps world geometry.

```python
from medm2g_core import io
volume, meta = io.read("P0001/mri-t1.nii.gz")      # also DICOM files/series folders, MHA/NRRD, PNG/JPEG
io.write("P0001/ct.nii.gz", volume, meta)           # format from the suffix; atomic; marks synthetic
report = io.read_report("P0001/report.txt")         # Report(text, findings, impression, synthetic)
```

Arrays: volumes are ``(i, j, k)`` (NIfTI voxel order, axis ``a`` along column ``a`` of
``meta.direction``); X-rays and other 2D images are ``(rows, cols)``. World coordinates are LPS mm.
Every problem a user can cause raises ``medm2g_core.errors.InputError(path, problem, fix)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medm2g_core.errors import InputError
from medm2g_core.io.meta import format_from_suffix, modality_from_name, require_file, sniff_format
from medm2g_core.io.text import Report, read_report, write_report
from medm2g_core.modalities import Modality
from medm2g_core.types import ImageMeta

__all__ = ["read", "write", "read_report", "write_report", "modality_from_path", "Report", "detect_format"]

WRITE_FORMATS = ("nifti", "png", "dicom", "dicom-series", "mha", "nrrd")


def detect_format(path: str | Path) -> str | None:
    """What ``read`` would treat ``path`` as: "nifti", "dicom", "dicom-series", "png", "jpeg", "mha",
    "nrrd", "text", or None when unrecognised. Looks at the content first, then the suffix."""
    path = Path(path)
    if path.is_dir():
        from medm2g_core.io.dicom import is_dicom_file

        return "dicom-series" if any(is_dicom_file(p) for p in sorted(path.iterdir())[:64] if p.is_file()) else None
    claimed = format_from_suffix(path)
    content = sniff_format(path)
    if content in ("png", "jpeg", "dicom", "nrrd"):
        return content
    if claimed == "nifti" and content in ("gzip", "nifti"):
        return "nifti"
    if content == "nifti":
        return "nifti"
    if claimed == "dicom":
        from medm2g_core.io.dicom import is_dicom_file

        return "dicom" if is_dicom_file(path) else None
    return claimed


def read(path: str | Path, *, series_uid: str | None = None, allow_irregular: bool = False) -> tuple[np.ndarray, ImageMeta]:
    """Read an image or volume → ``(array, ImageMeta)``.

    Args:
        path: a NIfTI (.nii/.nii.gz), DICOM file, DICOM series folder, MHA/MHD/NRRD, PNG or JPEG.
        series_uid: for a folder holding several DICOM series, the SeriesInstanceUID to read.
        allow_irregular: read a DICOM series (or multi-frame file) with missing slices, uneven spacing
            or gantry tilt anyway, instead of raising: slices are stacked in position order on the
            median step, ``meta.extra["irregular"]`` says what was wrong and
            ``meta.extra["slice_positions"]`` keeps each slice's position (LPS mm).

    Returns:
        The array — ``(i, j, k)`` for volumes, ``(rows, cols)`` for X-rays/PNG/JPEG — and its
        ``ImageMeta`` (spacing in mm, LPS origin and direction, units such as HU).

    Raises:
        InputError: missing or unreadable file, truncated data, a header claiming more data than the
            file holds or than fits in memory, an irregular DICOM series, an unrecognised format.
    """
    path = Path(path)
    if path.is_dir():
        from medm2g_core.io.dicom import read_dicom_series

        return read_dicom_series(path, series_uid=series_uid, allow_irregular=allow_irregular)
    require_file(path)
    claimed = format_from_suffix(path)
    if claimed == "text":
        raise InputError(path, "is a report text file, not an image", "read it with medm2g_core.io.read_report")
    kind = detect_format(path)
    if kind in ("png", "jpeg"):
        from medm2g_core.io.png import read_png

        return read_png(path)
    if kind == "nifti":
        from medm2g_core.io.nifti import read_nifti

        return read_nifti(path)
    if kind == "dicom":
        from medm2g_core.io.dicom import read_dicom_file

        return read_dicom_file(path, allow_irregular=allow_irregular)
    if kind in ("mha", "nrrd"):
        from medm2g_core.io.sitk import read_sitk

        return read_sitk(path)
    if claimed == "dicom":
        raise InputError(path, "is named .dcm but is not a DICOM file", "check the file; export it again from the PACS/scanner")
    raise InputError(
        path,
        "is not a recognised medical image (expected NIfTI, DICOM, MHA/NRRD, PNG or JPEG)",
        "convert it to NIfTI (.nii.gz) or PNG",
    )


def write(path: str | Path, array: np.ndarray, meta: ImageMeta, *, format: str | None = None) -> Path:
    """Write ``array`` with ``meta``'s geometry, atomically; the format comes from the suffix.

    ``.nii``/``.nii.gz`` → NIfTI; ``.png`` → PNG; ``.dcm`` → one DICOM file; ``.mha``/``.nrrd`` →
    SimpleITK; a path without a suffix (or ``format="dicom-series"``) → a DICOM series folder of one
    file per slice. Synthetic images (``meta.synthetic``) are marked in every format.
    """
    path = Path(path)
    kind = format or format_from_suffix(path) or ("dicom-series" if not path.suffix else None)
    if kind not in WRITE_FORMATS:
        raise ValueError(f"cannot tell the output format of {path}; use .nii.gz, .png, .dcm, .mha, .nrrd or a folder for a DICOM series")
    if kind == "nifti":
        from medm2g_core.io.nifti import write_nifti

        return write_nifti(path, array, meta)
    if kind == "png":
        from medm2g_core.io.png import write_png

        return write_png(path, array, meta)
    if kind == "dicom":
        from medm2g_core.io.dicom import write_dicom_file

        return write_dicom_file(path, array, meta)
    if kind == "dicom-series":
        from medm2g_core.io.dicom import write_dicom_series

        return write_dicom_series(path, array, meta)
    from medm2g_core.io.sitk import write_sitk

    return write_sitk(path, array, meta)


def modality_from_path(path: str | Path) -> Modality | None:
    """The modality of a file or series folder: from its name, else its header (DICOM Modality and
    sequence description; medm2g's own NIfTI/PNG marks), else None."""
    path = Path(path)
    by_name = modality_from_name(path.name)
    if by_name is not None:
        return by_name
    try:
        kind = detect_format(path)
    except OSError:
        return None
    name: str | None = None
    try:
        if kind in ("dicom", "dicom-series"):
            from medm2g_core.io.dicom import modality_from_dicom

            return modality_from_dicom(path)
        if kind == "nifti":
            from medm2g_core.io.nifti import read_header

            name = read_header(path)[1].modality
        elif kind == "png":
            from medm2g_core.io.png import read_png

            name = read_png(path)[1].modality
    except InputError:
        return None
    for modality in Modality:
        if name == modality.value:
            return modality
    return None
