"""NIfTI-1 (.nii, .nii.gz) reading and writing with nibabel, keeping world geometry.

Reading takes the affine nibabel chooses (sform when its code is set, else qform) and converts it to
LPS ``ImageMeta``. Writing sets qform **and** sform to the same affine with code 1 (scanner), keeps
the array's dtype, marks synthetic images in ``descrip`` and stores medm2g's own context (modality,
units, selected DICOM fields) as a JSON header extension so a NIfTI intermediate loses nothing.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from medm2g_core._version import __version__
from medm2g_core.errors import InputError
from medm2g_core.io.meta import array_to_write, check_allocation, modality_from_name, orientation_code, require_file, sniff_format, units_for
from medm2g_core.serialization import atomic_path, to_jsonable
from medm2g_core.types import ImageMeta

EXTENSION_CODE = 6  # NIfTI "comment" extension: free text, ignored by other readers
EXTENSION_KEY = "medm2g"
DESCRIP_SYNTHETIC = "medm2g synthetic"
DESCRIP_REAL = "medm2g"


def _damaged(path: Path, error: BaseException) -> InputError:
    detail = " ".join(str(error).split()) or type(error).__name__
    return InputError(path, f"not a readable NIfTI file ({detail})", "the file is truncated or damaged; copy or export it again")


def read_header(path: str | Path) -> tuple[Any, ImageMeta]:
    """Open a NIfTI file's header only (no pixel data read); return ``(nibabel_image, meta)``.

    The size the header claims is checked against the memory limit and the file size first.
    """
    import nibabel

    path = require_file(path)
    compressed = path.name.lower().endswith(".gz")
    content = sniff_format(path)
    if compressed and content != "gzip":
        raise InputError(path, "is named .nii.gz but is not gzip-compressed", "rename it to .nii (or gzip it)")
    try:
        image = nibabel.load(str(path))
        if not isinstance(image, (nibabel.Nifti1Image, nibabel.Nifti2Image)):
            raise InputError(path, f"holds a {type(image).__name__}, not NIfTI", "convert it to NIfTI (.nii.gz)")
        header = image.header
        shape = tuple(int(s) for s in image.shape)
        dtype = header.get_data_dtype()
        offset = int(header.get_data_offset())
    except InputError:
        raise
    except Exception as error:  # nibabel raises many types for damaged headers
        raise _damaged(path, error) from None
    size = path.stat().st_size
    check_allocation(path, shape=shape, dtype=dtype, available_bytes=max(size - (0 if compressed else offset), 0), compressed=compressed)
    if len(shape) > 3:
        if any(s != 1 for s in shape[3:]):
            raise InputError(
                path,
                f"is a {len(shape)}D NIfTI of shape {shape}; medm2g reads 2D images and 3D volumes",
                "extract one 3D volume first (e.g. fslroi, or nibabel's image.slicer[..., 0])",
            )
        shape = shape[:3]
    context = _read_extension(header)
    descrip = bytes(header["descrip"]).split(b"\x00")[0].decode("latin-1", "replace").strip()
    modality = context.get("modality") or _modality_name(path)
    meta = ImageMeta.from_affine_ras(
        image.affine,
        shape,
        units=context.get("units") or units_for(modality),
        modality=modality,
        source_format="nifti",
        orientation=orientation_code_of_affine(image.affine),
        dicom=dict(context.get("dicom") or {}),
        synthetic=bool(context.get("synthetic")) or descrip.lower().startswith(DESCRIP_SYNTHETIC),
        extra=dict(context.get("extra") or {}),
    )
    return image, meta


def read_nifti(path: str | Path) -> tuple[np.ndarray, ImageMeta]:
    """Read a .nii/.nii.gz file → ``(array (i, j, k), ImageMeta)``.

    The stored dtype is kept when the header has no intensity scaling; scaled integer data that stays
    integral within int16 (typical CT stored with an intercept) becomes int16, other scaled data float32.
    """
    path = Path(path)
    image, meta = read_header(path)
    try:
        proxy = image.dataobj
        raw = np.asarray(proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else proxy)
        slope = float(getattr(proxy, "slope", 1.0))
        inter = float(getattr(proxy, "inter", 0.0))
    except (EOFError, OSError, zlib.error, ValueError) as error:
        raise _damaged(path, error) from None
    array = _apply_scaling(raw, slope, inter)
    array = array.reshape(meta.shape)
    return array, meta


def _apply_scaling(raw: np.ndarray, slope: float, inter: float) -> np.ndarray:
    if (np.isnan(slope) or slope in (0.0, 1.0)) and (np.isnan(inter) or inter == 0.0):
        return raw
    if np.isnan(slope) or slope == 0.0:
        slope = 1.0
    inter = 0.0 if np.isnan(inter) else inter
    if np.issubdtype(raw.dtype, np.integer) and float(slope).is_integer() and float(inter).is_integer() and raw.size:
        low = float(raw.min()) * slope + inter
        high = float(raw.max()) * slope + inter
        low, high = min(low, high), max(low, high)
        if np.iinfo(np.int16).min <= low and high <= np.iinfo(np.int16).max:
            return (raw.astype(np.int32) * int(slope) + int(inter)).astype(np.int16)
    return (raw.astype(np.float64) * slope + inter).astype(np.float32)


def write_nifti(path: str | Path, array: np.ndarray, meta: ImageMeta) -> Path:
    """Write ``array`` (2D or 3D, indexed ``(i, j, k)``) with ``meta``'s geometry atomically.

    qform and sform are both set to ``meta.affine_ras`` with code 1; the dtype is kept (bool becomes
    uint8); ``descrip`` reads "medm2g synthetic" for synthetic images.
    """
    import nibabel

    path = Path(path)
    array = array_to_write(array, writer="NIfTI")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"NIfTI writing takes a numeric array, got dtype {array.dtype}")
    affine = meta.affine_ras
    image = nibabel.Nifti1Image(array, affine)
    header = image.header
    header.set_data_dtype(array.dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    header.set_xyzt_units(xyz="mm")
    header["descrip"] = (DESCRIP_SYNTHETIC if meta.synthetic else DESCRIP_REAL).encode("ascii")
    context = {
        EXTENSION_KEY: __version__,
        "modality": meta.modality,
        "units": meta.units,
        "synthetic": bool(meta.synthetic),
        "dicom": to_jsonable(meta.dicom),
        "extra": to_jsonable(meta.extra),
    }
    header.extensions.append(nibabel.nifti1.Nifti1Extension(EXTENSION_CODE, json.dumps(context).encode("utf-8")))
    with atomic_path(path) as tmp:
        nibabel.save(image, str(tmp))
    return path


def _read_extension(header: Any) -> dict[str, Any]:
    for extension in header.extensions:
        if extension.get_code() != EXTENSION_CODE:
            continue
        content = extension.get_content()
        raw = content if isinstance(content, bytes) else str(content).encode("utf-8", "replace")
        raw = raw.rstrip(b"\x00 ")
        if not raw.startswith(b"{"):
            continue
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and EXTENSION_KEY in data:
            return data
    return {}


def _modality_name(path: Path) -> str | None:
    modality = modality_from_name(path.name)
    return modality.value if modality is not None else None


def orientation_code_of_affine(affine_ras: np.ndarray) -> str:
    """nibabel's axis code (``"RAS"``, ``"LPS"``...) of a RAS affine."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine_ras, dtype=float)
    norms = np.linalg.norm(lps[:3, :3], axis=0)
    norms[norms == 0] = 1.0
    return orientation_code(lps[:3, :3] / norms)
