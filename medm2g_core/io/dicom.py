"""DICOM reading (single files, multi-frame, series folders) and writing (derived images) with pydicom.

Reading
  * Series folders are grouped by SeriesInstanceUID (localizers ignored; several series → an
    ``InputError`` listing them unless one is chosen), sorted by ImagePositionPatient projected on the
    slice normal — never by file name or InstanceNumber — and the slice spacing comes from those
    positions, not from SliceThickness. Missing slices, uneven spacing, duplicate positions, mixed
    orientations and gantry tilt raise ``InputError``; with ``allow_irregular=True`` missing slices,
    uneven spacing and gantry tilt are read anyway: the slices are stacked in position order on the
    median step, the problem is recorded in ``meta.extra["irregular"]`` and every slice's
    ImagePositionPatient in ``meta.extra["slice_positions"]`` (the grid alone cannot hold them).
  * RescaleSlope/Intercept are applied (CT → HU, int16 when integral). Compressed transfer syntaxes
    decode through pydicom's pixel handlers (pylibjpeg/openjpeg when installed).
  * Volumes are ``(i, j, k)`` = (column, row, slice), axis i along the DICOM row direction
    (ImageOrientationPatient[:3]), j along the column direction, k along the slice normal — the same
    grid SimpleITK's ImageSeriesReader builds. Projection X-rays (CR/DX/...) and images without a
    patient geometry are 2D ``(rows, cols)``.
  * ``meta.dicom`` keeps only the non-identifying study context in ``KEPT_FIELDS`` plus the source
    SOP instances (for SourceImageSequence); never PatientName/PatientID/BirthDate.

Writing builds each header from an allow-list (nothing is copied from a source header): new Study,
Series and SOP Instance UIDs, ImageType DERIVED\\SECONDARY, a DerivationDescription naming medm2g,
SourceImageSequence referencing the input's SOP instances when known, and the geometry of ``meta``.
"""

from __future__ import annotations

import datetime
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medm2g_core._version import __version__
from medm2g_core.errors import InputError
from medm2g_core.io.meta import SYNTHETIC_NOTE, check_allocation, memory_limit_bytes, require_file
from medm2g_core.modalities import Modality
from medm2g_core.serialization import atomic_dir, atomic_path
from medm2g_core.types import ImageMeta

KEPT_FIELDS = (
    "Modality",
    "StudyDescription",
    "SeriesDescription",
    "Manufacturer",
    "MagneticFieldStrength",
    "RepetitionTime",
    "EchoTime",
    "BodyPartExamined",
    "PatientPosition",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
)
XRAY_MODALITIES = ("CR", "DX", "DR", "RG", "MG", "XA", "RF", "PX", "IO")
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
POSITION_TOLERANCE_MM = 0.01
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


# --------------------------------------------------------------------------------------------- reading
def is_dicom_file(path: str | Path) -> bool:
    """True for a file with the DICM preamble, or a .dcm/.ima file pydicom can parse as DICOM."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if path.suffix.lower() not in DICOM_SUFFIXES:
        return False
    try:
        _dcmread(path, stop_before_pixels=True)
        return True
    except InputError:
        return False


def holds_dicom_files(folder: str | Path, *, sample: int) -> bool:
    """True when one of the first ``sample`` files directly in ``folder`` (by name) is DICOM; False for a
    folder that cannot be listed. Only a sample is read so that scanning a large cohort stays cheap."""
    try:
        return any(is_dicom_file(p) for p in sorted(Path(folder).iterdir())[:sample] if p.is_file())
    except OSError:
        return False


def _dcmread(path: Path, *, stop_before_pixels: bool = False) -> Any:
    """``pydicom.dcmread`` with every parse failure turned into ``InputError``; large values deferred."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels, defer_size="2 MB")
    except Exception as error:  # InvalidDicomError, EOFError, struct errors, ValueError ...
        raise InputError(path, f"is not a readable DICOM file ({_short(error)})", "check the file; export it again from the PACS or scanner") from None
    if "SOPClassUID" not in dataset and "Rows" not in dataset:
        raise InputError(path, "is not a DICOM image (no SOP Class UID and no Rows)", "check the file; export it again from the PACS or scanner")
    return dataset


def _short(error: BaseException) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__


@dataclass
class _Slice:
    """One 2D frame with its plane geometry, from a series file or one frame of a multi-frame file."""

    position: np.ndarray | None  # ImagePositionPatient (LPS mm) of the first transmitted pixel
    orientation: np.ndarray | None  # ImageOrientationPatient: row direction (3), column direction (3)
    pixels: Callable[[], np.ndarray]  # raw stored values, (rows, cols)
    slope: float
    intercept: float
    source: Path
    sop_uid: str | None = None


def _float_list(value: Any) -> list[float] | None:
    if value is None:
        return None
    try:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            return [float(value)]
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return None


def _functional(dataset: Any, frame: int | None, sequence: str, attribute: str) -> Any:
    """An attribute from an enhanced multi-frame functional group (per-frame first, then shared), else top level."""
    groups = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in dataset:
        groups.append(dataset.PerFrameFunctionalGroupsSequence[frame])
    if "SharedFunctionalGroupsSequence" in dataset:
        groups.append(dataset.SharedFunctionalGroupsSequence[0])
    for group in groups:
        if sequence in group and len(group[sequence].value) and attribute in group[sequence].value[0]:
            return group[sequence].value[0][attribute].value
    return dataset.get(attribute)


def _pixel_spacing(dataset: Any) -> tuple[float, float] | None:
    """(row spacing, column spacing) in mm from PixelSpacing, else ImagerPixelSpacing."""
    values = _float_list(_functional(dataset, 0, "PixelMeasuresSequence", "PixelSpacing")) or _float_list(dataset.get("ImagerPixelSpacing"))
    if values and len(values) == 2 and min(values) > 0:
        return (values[0], values[1])
    return None


def _decode(dataset: Any, path: Path) -> np.ndarray:
    """All frames of a dataset as stored values: (frames, rows, cols) or (frames, rows, cols, samples)."""
    rows, columns = int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        raise InputError(path, "has no pixel data", "this DICOM object is not an image (e.g. a report or structured object)")
    check_allocation(path, shape=(frames, rows, columns, samples), dtype=np.float32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            array = dataset.pixel_array
    except Exception as error:  # missing decoder, truncated data, corrupt stream
        fix = "the file is truncated or damaged; export it again"
        if "plugin" in str(error).lower() or "decod" in str(error).lower():
            fix = "no installed decoder could read this compressed pixel data (pylibjpeg/openjpeg); export it uncompressed, e.g. with gdcmconv --raw or dcmdjpeg"
        raise InputError(path, f"pixel data cannot be decoded ({_short(error)})", fix) from None
    array = np.asarray(array)
    if frames == 1 and samples == 1:
        array = array[None]
    elif frames == 1 and samples > 1 and array.ndim == 3:
        array = array[None]
    return array


def _to_gray(frames: np.ndarray, dataset: Any, notes: dict[str, Any]) -> np.ndarray:
    if frames.ndim == 4:
        notes["converted_from"] = str(dataset.get("PhotometricInterpretation", "RGB"))
        weights = np.array([0.299, 0.587, 0.114])[: frames.shape[-1]]
        gray = (frames[..., : len(weights)].astype(np.float64) @ weights) / weights.sum()
        return np.rint(gray).astype(frames.dtype if np.issubdtype(frames.dtype, np.integer) else np.float32)
    return frames


def _rescale(dataset: Any, frame: int | None) -> tuple[float, float]:
    slope = _functional(dataset, frame, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _functional(dataset, frame, "PixelValueTransformationSequence", "RescaleIntercept")
    return (float(slope) if slope not in (None, "") else 1.0, float(intercept) if intercept not in (None, "") else 0.0)


def _combine(raw: list[np.ndarray], scales: list[tuple[float, float]]) -> np.ndarray:
    """Apply per-slice rescale; keep the stored dtype when there is none, int16 when integral HU fits."""
    if all(s == (1.0, 0.0) for s in scales):
        return np.stack(raw, axis=-1)
    integral = all(float(a).is_integer() and float(b).is_integer() for a, b in scales)
    if integral:
        lows = [min(float(r.min()) * a + b, float(r.max()) * a + b) for r, (a, b) in zip(raw, scales)]
        highs = [max(float(r.min()) * a + b, float(r.max()) * a + b) for r, (a, b) in zip(raw, scales)]
        if min(lows) >= np.iinfo(np.int16).min and max(highs) <= np.iinfo(np.int16).max:
            return np.stack([(r.astype(np.int32) * int(a) + int(b)).astype(np.int16) for r, (a, b) in zip(raw, scales)], axis=-1)
    return np.stack([(r.astype(np.float64) * a + b).astype(np.float32) for r, (a, b) in zip(raw, scales)], axis=-1)


def _context(datasets: list[Any]) -> dict[str, Any]:
    """The non-identifying study context worth keeping, plus the source SOP instances."""
    first = datasets[0]
    context: dict[str, Any] = {}
    for name in KEPT_FIELDS:
        value = first.get(name)
        if value is None or value == "":
            continue
        if hasattr(value, "__iter__") and not isinstance(value, str):
            value = [str(v) for v in value]
        elif isinstance(value, (int, float)) or type(value).__name__ in ("DSfloat", "IS", "DSdecimal"):
            value = float(value)
        else:
            value = str(value)
        context[name] = value
    sop_uids = [str(d.SOPInstanceUID) for d in datasets if "SOPInstanceUID" in d]
    if sop_uids:
        context["SourceSOPInstanceUIDs"] = sop_uids
    if "SOPClassUID" in first:
        context["SourceSOPClassUID"] = str(first.SOPClassUID)
    return context


def _medm2g_modality(dataset: Any) -> str | None:
    modality = str(dataset.get("Modality", "")).upper()
    if modality == "CT":
        return Modality.CT.value
    if modality in XRAY_MODALITIES:
        return Modality.XRAY.value
    if modality == "MR":
        return _mr_contrast(dataset)
    return None


def _mr_contrast(dataset: Any) -> str | None:
    """T1/T2/PD from the series/protocol/sequence names, else from TR/TE (spin-echo rules of thumb)."""
    from medm2g_core.io.meta import modality_from_name

    for name in ("SeriesDescription", "ProtocolName", "SequenceName"):
        found = modality_from_name(str(dataset.get(name, "")))
        if found is not None and found.is_volume and found is not Modality.CT:
            return found.value
    try:
        repetition, echo = float(dataset.get("RepetitionTime")), float(dataset.get("EchoTime"))
    except (TypeError, ValueError):
        return None
    if repetition < 1000 and echo < 30:
        return Modality.MRI_T1.value
    if repetition >= 2000 and echo >= 80:
        return Modality.MRI_T2.value
    if repetition >= 2000 and echo < 30:
        return Modality.MRI_PD.value
    return None


def modality_from_dicom(path: str | Path) -> Modality | None:
    """The medm2g modality of a DICOM file or series folder from its header (Modality, names, TR/TE)."""
    path = Path(path)
    if path.is_dir():
        files = _dicom_files(path)
        if not files:
            return None
        path = files[0]
    name = _medm2g_modality(_dcmread(path, stop_before_pixels=True))
    return Modality(name) if name else None


def _units(dataset: Any, modality: str | None, rescaled: bool) -> str:
    rescale_type = str(dataset.get("RescaleType", "")).upper()
    if modality == Modality.CT.value or rescale_type == "HU":
        return "HU"
    return "a.u."


def read_dicom_file(path: str | Path, *, allow_irregular: bool = False) -> tuple[np.ndarray, ImageMeta]:
    """Read one DICOM file (single- or multi-frame) → ``(array, ImageMeta)``.

    CT/MR slices with a patient geometry give ``(cols, rows, frames)`` volumes; X-rays and images
    without ImageOrientationPatient give 2D ``(rows, cols)`` arrays (multi-frame without geometry:
    ``(cols, rows, frames)`` with a unit grid). ``allow_irregular``: see ``read_dicom_series``.
    """
    path = require_file(path)
    dataset = _dcmread(path)
    notes: dict[str, Any] = {}
    frames = _to_gray(_decode(dataset, path), dataset, notes)
    count = frames.shape[0]
    modality = _medm2g_modality(dataset)
    context = _context([dataset])
    scales = [_rescale(dataset, index if count > 1 else None) for index in range(count)]
    spacing_rc = _pixel_spacing(dataset)
    orientation = _float_list(_functional(dataset, 0, "PlaneOrientationSequence", "ImageOrientationPatient"))
    is_xray = str(dataset.get("Modality", "")).upper() in XRAY_MODALITIES
    if count == 1 and (is_xray or orientation is None or len(orientation) != 6):
        array = _combine([frames[0]], scales)[..., 0]
        if spacing_rc is None:
            notes["spacing_source"] = "unknown"
        direction = _plane_direction_2d(orientation)
        meta = ImageMeta(
            spacing=spacing_rc or (1.0, 1.0),
            origin=tuple(_float_list(dataset.get("ImagePositionPatient")) or (0.0, 0.0, 0.0)),  # type: ignore[arg-type]
            direction=direction,
            shape=tuple(int(s) for s in array.shape),
            units=_units(dataset, modality, scales[0] != (1.0, 0.0)),
            modality=modality,
            source_format="dicom",
            dicom=context,
            extra=notes,
        )
        return array, meta
    slices = []
    for index in range(count):
        position = _float_list(_functional(dataset, index, "PlanePositionSequence", "ImagePositionPatient"))
        frame_orientation = _float_list(_functional(dataset, index, "PlaneOrientationSequence", "ImageOrientationPatient"))
        slices.append(
            _Slice(
                position=None if position is None else np.asarray(position, dtype=float),
                orientation=None if frame_orientation is None else np.asarray(frame_orientation, dtype=float),
                pixels=(lambda index=index: frames[index]),
                slope=scales[index][0],
                intercept=scales[index][1],
                source=path,
            )
        )
    offsets = _float_list(dataset.get("GridFrameOffsetVector"))
    if offsets and len(offsets) == count and slices[0].position is not None and slices[0].orientation is not None:
        normal = np.cross(slices[0].orientation[:3], slices[0].orientation[3:])
        for item, offset in zip(slices, offsets):  # RT Dose style: positions given as offsets along the normal
            item.position = slices[0].position + normal * offset
    thickness = _float_list(dataset.get("SpacingBetweenSlices")) or _float_list(_functional(dataset, 0, "PixelMeasuresSequence", "SliceThickness"))
    array, origin, direction, spacing = _assemble(
        slices, path, spacing_rc=spacing_rc, fallback_step=(thickness or [1.0])[0], allow_irregular=allow_irregular, notes=notes
    )
    meta = ImageMeta(
        spacing=spacing,
        origin=origin,
        direction=direction,
        shape=tuple(int(s) for s in array.shape),
        units=_units(dataset, modality, any(s != (1.0, 0.0) for s in scales)),
        modality=modality,
        source_format="dicom",
        orientation=_orientation(direction),
        dicom=context,
        extra=notes,
    )
    return array, meta


def _plane_direction_2d(orientation: list[float] | None) -> tuple[tuple[float, float, float], ...]:
    """Direction for a 2D (rows, cols) image: axis 0 moves down the rows (column direction), axis 1 along a row."""
    if orientation is None or len(orientation) != 6:
        return ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    row, column = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    matrix = np.stack([column, row, np.cross(column, row)], axis=1)
    return tuple(tuple(float(x) for x in r) for r in matrix)


def _orientation(direction: Any) -> str:
    from medm2g_core.io.meta import orientation_code

    return orientation_code(direction)


def _assemble(
    slices: list[_Slice],
    where: Path,
    *,
    spacing_rc: tuple[float, float] | None,
    fallback_step: float,
    allow_irregular: bool = False,
    notes: dict[str, Any] | None = None,
) -> tuple[np.ndarray, tuple[float, float, float], tuple[tuple[float, float, float], ...], tuple[float, float, float]]:
    """Sort slices along their normal, check the grid is regular, and stack to ``(cols, rows, slices)``.

    With ``allow_irregular`` missing slices, uneven spacing and gantry tilt are written into
    ``notes["irregular"]`` (and the sorted positions into ``notes["slice_positions"]``) instead of
    raising; the step is then the median gap.
    """
    irregular: list[str] = []

    def irregularity(problem: str, fix: str) -> None:
        if not allow_irregular:
            raise InputError(where, problem, fix)
        irregular.append(problem)
    known = [s for s in slices if s.position is not None and s.orientation is not None]
    if known and len(known) != len(slices):
        raise InputError(where, f"{len(slices) - len(known)} of {len(slices)} slices lack ImagePositionPatient/ImageOrientationPatient", "export the series again with full geometry")
    if not known:  # no patient geometry at all (e.g. NM, US cine): a unit grid in acquisition order
        row, column, normal = np.eye(3)
        ordered = slices
        origin = np.zeros(3)
        step = float(fallback_step) if fallback_step and fallback_step > 0 else 1.0
    else:
        reference = known[0].orientation
        assert reference is not None
        distinct = {tuple(np.round(s.orientation, 3)) for s in known}  # type: ignore[arg-type]
        if any(not np.allclose(s.orientation, reference, atol=1e-3) for s in known):
            raise InputError(
                where,
                f"slices have {len(distinct)} different orientations (ImageOrientationPatient), so they do not form one volume",
                "separate the acquisitions into one folder per orientation (e.g. localizers or multi-plane scans)",
            )
        row, column = reference[:3] / np.linalg.norm(reference[:3]), reference[3:] / np.linalg.norm(reference[3:])
        normal = np.cross(row, column)
        distances = np.array([float(np.dot(normal, s.position)) for s in known])  # type: ignore[arg-type]
        order = np.argsort(distances, kind="stable")
        ordered = [known[i] for i in order]
        distances = distances[order]
        origin = np.asarray(ordered[0].position, dtype=float)
        step = float(fallback_step) if fallback_step and fallback_step > 0 else 1.0
        if len(ordered) > 1:
            gaps = np.diff(distances)
            if np.any(gaps < POSITION_TOLERANCE_MM):
                at = distances[1:][gaps < POSITION_TOLERANCE_MM][0]
                raise InputError(
                    where,
                    f"two slices share the position {at:.3f} mm along the slice normal (repeated acquisition, echoes or time points)",
                    "keep one acquisition per folder",
                )
            step = float(np.median(gaps))
            regular_step = float(distances[-1] - distances[0]) / (len(distances) - 1)
            tolerance = max(POSITION_TOLERANCE_MM * 5, 0.01 * step)
            if np.any(np.abs(gaps - step) > tolerance):
                big = np.nonzero(gaps > 1.5 * step)[0]
                if big.size:
                    first = int(big[0])
                    missing = int(round(gaps[first] / step)) - 1
                    irregularity(
                        f"slice positions jump from {distances[first]:.2f} to {distances[first + 1]:.2f} mm along the slice normal "
                        f"(step {step:.3f} mm): about {max(missing, 1)} slice(s) missing",
                        "re-export the complete series (or read it anyway with --allow-irregular)",
                    )
                else:
                    irregularity(
                        f"uneven slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm between neighbouring slices)",
                        "resample the series to a regular grid first (e.g. with dcm2niix or SimpleITK), or read it anyway with --allow-irregular",
                    )
            if not irregular:
                step = regular_step  # end-to-end average: least rounding error once the grid is known to be regular
            in_plane = [np.asarray(s.position) - origin - normal * (d - distances[0]) for s, d in zip(ordered, distances)]
            if max(float(np.linalg.norm(v)) for v in in_plane) > max(POSITION_TOLERANCE_MM * 5, 0.01 * step):
                irregularity(
                    "slice positions are not stacked along the slice normal (gantry tilt or sheared acquisition)",
                    "resample the series to an orthogonal grid first (dcm2niix corrects gantry tilt), or read it anyway with --allow-irregular",
                )
    if irregular and notes is not None:
        notes["irregular"] = "; ".join(irregular) + "; read on a regular grid of the median step, slice positions kept"
        notes["slice_positions"] = [[round(float(v), 4) for v in s.position] for s in ordered]  # type: ignore[union-attr]
    raw = [np.asarray(s.pixels()).T for s in ordered]  # (rows, cols) → (cols, rows) = (i, j)
    shapes = {r.shape for r in raw}
    if len(shapes) != 1:
        raise InputError(where, f"slices have different sizes {sorted(shapes)}", "keep one acquisition per folder")
    array = _combine(raw, [(s.slope, s.intercept) for s in ordered])
    spacing_rc = spacing_rc or (1.0, 1.0)
    direction_matrix = np.stack([row, column, normal], axis=1)
    direction = tuple(tuple(float(x) for x in r) for r in direction_matrix)
    spacing = (float(spacing_rc[1]), float(spacing_rc[0]), float(step))
    return array, tuple(float(x) for x in origin), direction, spacing  # type: ignore[return-value]


def _dicom_files(folder: Path) -> list[Path]:
    files = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.name.upper() == "DICOMDIR":
            continue
        if is_dicom_file(path):
            files.append(path)
    return files


def list_series(folder: str | Path) -> dict[str, list[tuple[Path, Any]]]:
    """Headers (no pixels) of the DICOM files directly in ``folder`` grouped by SeriesInstanceUID,
    localizers dropped."""
    folder = Path(folder)
    series: dict[str, list[tuple[Path, Any]]] = {}
    for path in _dicom_files(folder):
        header = _dcmread(path, stop_before_pixels=True)
        image_type = [str(v).upper() for v in (header.get("ImageType") or [])]
        if "LOCALIZER" in image_type:
            continue
        series.setdefault(str(header.get("SeriesInstanceUID", "unknown")), []).append((path, header))
    return series


def read_dicom_series(
    folder: str | Path, *, series_uid: str | None = None, allow_irregular: bool = False
) -> tuple[np.ndarray, ImageMeta]:
    """Read a folder of DICOM slices as one volume ``(cols, rows, slices)`` with LPS geometry.

    Raises ``InputError`` for a folder without DICOM files, several series (unless ``series_uid``
    picks one), missing slices, uneven spacing, duplicate positions, mixed orientations, gantry tilt.
    ``allow_irregular=True`` reads missing slices, uneven spacing and gantry tilt anyway: slices in
    position order on the median step, the problem in ``meta.extra["irregular"]`` and the slice
    positions (LPS mm, in array order) in ``meta.extra["slice_positions"]``.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(folder, "no such file or folder", "check the path")
    series = list_series(folder)
    if not series:
        raise InputError(folder, "is a folder with no DICOM image files", "name a file, or a folder holding the .dcm slices of one series")
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(folder, f"holds no series {series_uid}", f"choose one of: {', '.join(sorted(series))}")
        members = series[series_uid]
    elif len(series) > 1:
        listing = "; ".join(
            f"{uid} ({str(items[0][1].get('SeriesDescription', '') or 'no description')}, {len(items)} files)" for uid, items in sorted(series.items())
        )
        raise InputError(folder, f"holds {len(series)} DICOM series: {listing}", "move each series into its own folder, or pass series_uid")
    else:
        members = next(iter(series.values()))
    first = members[0][1]
    rows, columns = int(first.get("Rows", 0)), int(first.get("Columns", 0))
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        if len(members) == 1:
            return read_dicom_file(members[0][0], allow_irregular=allow_irregular)
        raise InputError(folder, "holds several multi-frame files of one series", "read each file on its own")
    needed = rows * columns * len(members) * 4
    if needed > memory_limit_bytes():
        check_allocation(folder, shape=(len(members), rows, columns), dtype=np.float32)
    headers = [header for _, header in members]
    slices = []
    for path, header in members:
        slope, intercept = _rescale(header, None)
        position = _float_list(header.get("ImagePositionPatient"))
        orientation = _float_list(header.get("ImageOrientationPatient"))
        slices.append(
            _Slice(
                position=None if position is None else np.asarray(position, dtype=float),
                orientation=None if orientation is None else np.asarray(orientation, dtype=float),
                pixels=(lambda path=path: _read_single_frame(path)),
                slope=slope,
                intercept=intercept,
                source=path,
                sop_uid=str(header.get("SOPInstanceUID", "")) or None,
            )
        )
    thickness = _float_list(first.get("SliceThickness")) or [1.0]
    if len(slices) == 1 and (slices[0].orientation is None or str(first.get("Modality", "")).upper() in XRAY_MODALITIES):
        return read_dicom_file(members[0][0])
    notes: dict[str, Any] = {}
    array, origin, direction, spacing = _assemble(
        slices, folder, spacing_rc=_pixel_spacing(first), fallback_step=thickness[0], allow_irregular=allow_irregular, notes=notes
    )
    modality = _medm2g_modality(first)
    positions_order = sorted(
        headers, key=lambda h: float(np.dot(np.asarray(direction)[:, 2], _float_list(h.get("ImagePositionPatient")) or [0, 0, 0]))
    )
    meta = ImageMeta(
        spacing=spacing,
        origin=origin,
        direction=direction,
        shape=tuple(int(s) for s in array.shape),
        units=_units(first, modality, any((s.slope, s.intercept) != (1.0, 0.0) for s in slices)),
        modality=modality,
        source_format="dicom-series",
        orientation=_orientation(direction),
        dicom=_context(positions_order),
        extra=notes,
    )
    return array, meta


def _read_single_frame(path: Path) -> np.ndarray:
    dataset = _dcmread(path)
    notes: dict[str, Any] = {}
    frames = _to_gray(_decode(dataset, path), dataset, notes)
    return frames[0]


# --------------------------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class _Encoding:
    pixels: np.ndarray  # stored values, int16 or uint16
    slope: float
    intercept: float


def _encode(array: np.ndarray, *, hounsfield: bool) -> _Encoding:
    """Stored integer values + rescale so that ``stored * slope + intercept`` gives the array back.

    Integral data that fits int16/uint16 is stored as is (slope 1); CT (HU) is rounded to int16;
    other real-valued data is scaled linearly onto uint16.
    """
    values = np.asarray(array)
    if values.size and not np.all(np.isfinite(values)):
        raise ValueError("cannot write NaN or infinite values to DICOM; replace them first")
    low = float(values.min()) if values.size else 0.0
    high = float(values.max()) if values.size else 0.0
    integral = np.issubdtype(values.dtype, np.integer) or bool(np.all(np.mod(values, 1) == 0))
    if hounsfield:
        return _Encoding(np.clip(np.rint(values), -32768, 32767).astype(np.int16), 1.0, 0.0)
    if integral and low >= 0 and high <= 65535:
        return _Encoding(values.astype(np.uint16), 1.0, 0.0)
    if integral and low >= -32768 and high <= 32767:
        return _Encoding(values.astype(np.int16), 1.0, 0.0)
    slope = (high - low) / 65535.0 if high > low else 1.0
    stored = np.clip(np.rint((values.astype(np.float64) - low) / slope), 0, 65535).astype(np.uint16)
    return _Encoding(stored, float(slope), float(low))


def _sop_class(meta: ImageMeta, *, two_d: bool) -> str:
    if two_d or meta.modality == Modality.XRAY.value:
        return SECONDARY_CAPTURE_STORAGE
    if meta.modality == Modality.CT.value or meta.units == "HU":
        return CT_IMAGE_STORAGE
    if meta.modality is not None and meta.modality.startswith("mri-"):
        return MR_IMAGE_STORAGE
    return SECONDARY_CAPTURE_STORAGE


def _ds_number(value: float) -> str:
    """A Decimal String (≤ 16 characters) for ``value``."""
    for digits in range(10, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.1e}"


def _base_dataset(meta: ImageMeta, *, sop_class: str, study_uid: str, series_uid: str, frame_uid: str, now: datetime.datetime) -> Any:
    """Header fields shared by every instance of one written series — all from the allow-list."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    context = meta.dicom or {}
    dataset = Dataset()
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.SOPClassUID = sop_class
    # Patient module: type 2, deliberately empty — a derived image carries no patient identity.
    dataset.PatientName = ""
    dataset.PatientID = ""
    dataset.PatientBirthDate = ""
    dataset.PatientSex = ""
    # General Study
    dataset.StudyInstanceUID = study_uid
    dataset.StudyDate = now.strftime("%Y%m%d")
    dataset.StudyTime = now.strftime("%H%M%S")
    dataset.ReferringPhysicianName = ""
    dataset.StudyID = ""
    dataset.AccessionNumber = ""
    description = str(context.get("StudyDescription", "") or "")
    dataset.StudyDescription = (f"medm2g: {description}" if description else "medm2g derived")[:64]
    # General Series
    modality = {Modality.CT.value: "CT", Modality.XRAY.value: "DX"}.get(meta.modality or "", "MR" if (meta.modality or "").startswith("mri") else "OT")
    if sop_class == CT_IMAGE_STORAGE:
        modality = "CT"
    elif sop_class == MR_IMAGE_STORAGE:
        modality = "MR"
    dataset.Modality = modality
    dataset.SeriesInstanceUID = series_uid
    dataset.SeriesNumber = 1
    dataset.SeriesDescription = (f"medm2g {meta.modality or 'image'}" + (" SYNTHETIC" if meta.synthetic else ""))[:64]
    dataset.SeriesDate = dataset.StudyDate
    dataset.SeriesTime = dataset.StudyTime
    if context.get("BodyPartExamined"):
        dataset.BodyPartExamined = str(context["BodyPartExamined"])[:16]
    else:
        dataset.Laterality = ""  # type 2C: empty = unknown, since the body part (paired or not) is unknown
    if sop_class in (CT_IMAGE_STORAGE, MR_IMAGE_STORAGE):
        dataset.PatientPosition = str(context.get("PatientPosition", "") or "")
        dataset.FrameOfReferenceUID = frame_uid
        dataset.PositionReferenceIndicator = ""
    # Equipment: the equipment that made this image is medm2g.
    dataset.Manufacturer = "medm2g"
    dataset.ManufacturerModelName = "medm2g"
    dataset.SoftwareVersions = __version__
    if sop_class == SECONDARY_CAPTURE_STORAGE:
        dataset.ConversionType = "SYN" if meta.synthetic else "WSD"
    # General Image
    dataset.ImageType = ["DERIVED", "SECONDARY"] + {CT_IMAGE_STORAGE: ["AXIAL"], MR_IMAGE_STORAGE: ["OTHER"]}.get(sop_class, [])
    dataset.ContentDate = dataset.StudyDate
    dataset.ContentTime = dataset.StudyTime
    dataset.InstanceCreationDate = dataset.StudyDate
    dataset.InstanceCreationTime = dataset.StudyTime
    derivation = str(meta.extra.get("derivation", "") or "")
    text = f"medm2g {__version__}" + (f": {derivation}" if derivation else "") + ("; SYNTHETIC" if meta.synthetic else "")
    dataset.DerivationDescription = text[:1024]
    dataset.BurnedInAnnotation = "NO"
    dataset.RecognizableVisualFeatures = "NO"
    if meta.synthetic:
        dataset.ImageComments = SYNTHETIC_NOTE
    sources = context.get("SourceSOPInstanceUIDs") or []
    source_class = context.get("SourceSOPClassUID")
    if sources and source_class:
        items = []
        for uid in sources:
            item = Dataset()
            item.ReferencedSOPClassUID = str(source_class)
            item.ReferencedSOPInstanceUID = str(uid)
            items.append(item)
        dataset.SourceImageSequence = Sequence(items)
    # Image Pixel: monochrome
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    if sop_class == MR_IMAGE_STORAGE:
        dataset.ScanningSequence = "RM"  # research mode: not an acquisition
        dataset.SequenceVariant = "NONE"
        dataset.ScanOptions = ""
        dataset.MRAcquisitionType = ""
        dataset.RepetitionTime = _ds_number(float(context["RepetitionTime"])) if context.get("RepetitionTime") is not None else ""
        dataset.EchoTime = _ds_number(float(context["EchoTime"])) if context.get("EchoTime") is not None else ""
        dataset.EchoTrainLength = ""
        if context.get("MagneticFieldStrength") is not None:
            dataset.MagneticFieldStrength = _ds_number(float(context["MagneticFieldStrength"]))
    if sop_class == CT_IMAGE_STORAGE:
        dataset.KVP = ""
        dataset.AcquisitionNumber = ""
        dataset.RescaleType = "HU"
    return dataset


def _finish(dataset: Any, encoding: _Encoding, *, instance: int, sop_uid: str) -> Any:
    """Add the pixel data, rescale and SOP instance; wrap with a file meta header."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    pixels = np.ascontiguousarray(encoding.pixels)
    dataset.SOPInstanceUID = sop_uid
    dataset.InstanceNumber = instance
    dataset.Rows, dataset.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    if dataset.SOPClassUID == CT_IMAGE_STORAGE or (encoding.slope, encoding.intercept) != (1.0, 0.0):
        dataset.RescaleIntercept = _ds_number(encoding.intercept)
        dataset.RescaleSlope = _ds_number(encoding.slope)
        if dataset.SOPClassUID == SECONDARY_CAPTURE_STORAGE:
            dataset.RescaleType = "US"  # unspecified units
    if pixels.size:
        low, high = float(pixels.min()) * encoding.slope + encoding.intercept, float(pixels.max()) * encoding.slope + encoding.intercept
        dataset.WindowCenter = _ds_number((low + high) / 2)
        dataset.WindowWidth = _ds_number(max(high - low, 1.0))
    dataset.PixelData = pixels.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    out = FileDataset("", dataset, file_meta=meta, preamble=b"\x00" * 128)
    return out


def _new_uids(meta: ImageMeta) -> tuple[str, str, str]:
    from pydicom.uid import generate_uid

    frame = str(meta.dicom.get("FrameOfReferenceUID") or "") or generate_uid()
    return generate_uid(), generate_uid(), frame


def write_dicom_series(folder: str | Path, array: np.ndarray, meta: ImageMeta) -> Path:
    """Write a volume ``(i, j, k)`` as a folder of one DICOM file per slice (``0001.dcm`` ...), atomically.

    Slice ``k`` gets ImagePositionPatient ``origin + direction[:, 2] * spacing[2] * k`` (LPS mm),
    ImageOrientationPatient = the first two direction columns, PixelSpacing = (spacing[1], spacing[0]).
    CT (units HU) is stored as int16 with RescaleSlope 1 / RescaleIntercept 0.
    """
    from pydicom.uid import generate_uid

    folder = Path(folder)
    volume = np.asarray(array)
    if volume.ndim == 2:
        volume = volume[:, :, None]
    if volume.ndim != 3:
        raise ValueError(f"a DICOM series is written from a 3D (i, j, k) array, got shape {volume.shape}")
    if len(meta.spacing) < 3:
        raise ValueError("a DICOM series needs a 3D ImageMeta (three spacings)")
    sop_class = _sop_class(meta, two_d=False)
    if sop_class == SECONDARY_CAPTURE_STORAGE:
        raise ValueError(f"cannot tell whether this volume is CT or MR (modality {meta.modality!r}); set meta.modality")
    encoding = _encode(volume, hounsfield=sop_class == CT_IMAGE_STORAGE)
    study_uid, series_uid, frame_uid = _new_uids(meta)
    now = datetime.datetime.now()
    direction = np.asarray(meta.direction, dtype=float)
    origin = np.asarray(meta.origin, dtype=float)
    spacing = [float(s) for s in meta.spacing]
    orientation = [_ds_number(float(x)) for x in list(direction[:, 0]) + list(direction[:, 1])]
    with atomic_dir(folder) as tmp:
        for k in range(volume.shape[2]):
            dataset = _base_dataset(meta, sop_class=sop_class, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid, now=now)
            position = origin + direction[:, 2] * spacing[2] * k
            dataset.ImagePositionPatient = [_ds_number(float(x)) for x in position]
            dataset.ImageOrientationPatient = orientation
            dataset.PixelSpacing = [_ds_number(spacing[1]), _ds_number(spacing[0])]
            dataset.SliceThickness = _ds_number(spacing[2])
            if sop_class == MR_IMAGE_STORAGE:
                dataset.SpacingBetweenSlices = _ds_number(spacing[2])
            dataset.SliceLocation = _ds_number(float(np.dot(direction[:, 2], position)))
            slice_encoding = _Encoding(encoding.pixels[:, :, k].T, encoding.slope, encoding.intercept)
            out = _finish(dataset, slice_encoding, instance=k + 1, sop_uid=generate_uid())
            out.save_as(str(tmp / f"{k + 1:04d}.dcm"), enforce_file_format=True)
    return folder


def write_dicom_file(path: str | Path, array: np.ndarray, meta: ImageMeta) -> Path:
    """Write one DICOM file atomically: a 2D ``(rows, cols)`` image as Secondary Capture (X-ray), or a
    one-slice ``(i, j, 1)`` CT/MR volume with its plane geometry."""
    from pydicom.uid import generate_uid

    path = Path(path)
    image = np.asarray(array)
    study_uid, series_uid, frame_uid = _new_uids(meta)
    now = datetime.datetime.now()
    if image.ndim == 3 and image.shape[2] == 1 and len(meta.spacing) >= 3:
        sop_class = _sop_class(meta, two_d=False)
        if sop_class == SECONDARY_CAPTURE_STORAGE:
            image = image[:, :, 0].T
        else:
            encoding = _encode(image, hounsfield=sop_class == CT_IMAGE_STORAGE)
            direction = np.asarray(meta.direction, dtype=float)
            dataset = _base_dataset(meta, sop_class=sop_class, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid, now=now)
            dataset.ImagePositionPatient = [_ds_number(float(x)) for x in meta.origin]
            dataset.ImageOrientationPatient = [_ds_number(float(x)) for x in list(direction[:, 0]) + list(direction[:, 1])]
            dataset.PixelSpacing = [_ds_number(float(meta.spacing[1])), _ds_number(float(meta.spacing[0]))]
            dataset.SliceThickness = _ds_number(float(meta.spacing[2]))
            out = _finish(dataset, _Encoding(encoding.pixels[:, :, 0].T, encoding.slope, encoding.intercept), instance=1, sop_uid=generate_uid())
            with atomic_path(path) as tmp:
                out.save_as(str(tmp), enforce_file_format=True)
            return path
    if image.ndim != 2:
        raise ValueError(f"one DICOM file holds a 2D image or a one-slice volume, got shape {image.shape}; write a folder for a series")
    dataset = _base_dataset(meta, sop_class=SECONDARY_CAPTURE_STORAGE, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid, now=now)
    dataset.PatientOrientation = ""
    spacing = [float(s) for s in meta.spacing[:2]]
    if meta.extra.get("spacing_source") != "unknown":
        dataset.PixelSpacing = [_ds_number(spacing[0]), _ds_number(spacing[1])]
    encoding = _encode(image, hounsfield=False)
    out = _finish(dataset, encoding, instance=1, sop_uid=generate_uid())
    with atomic_path(path) as tmp:
        out.save_as(str(tmp), enforce_file_format=True)
    return path
