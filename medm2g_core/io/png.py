"""PNG (8/16-bit grayscale) and JPEG images with Pillow; X-rays are 2D ``(rows, cols)`` arrays.

PNG has no standard place for a pixel spacing in mm, so medm2g stores it in a text chunk
(``medm2g:spacing`` = "row_mm col_mm", the DICOM PixelSpacing order) and reads it back; the world
geometry goes beside it (``medm2g:origin`` = "x y z" LPS mm, ``medm2g:direction`` = the 3×3 direction
matrix row by row, nine numbers), so an X-ray keeps e.g. the PA projection frame a DRR was made in.
Files without these chunks (any PNG not written by medm2g) read with zero origin and identity
direction. Synthetic
images carry ``Software: medm2g ...``, ``medm2g:synthetic: true`` and a human-readable comment.
A file whose bytes disagree with its suffix (a JPEG named .png) is read by content and the mismatch
is recorded in ``meta.extra["format_mismatch"]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medm2g_core._version import __version__
from medm2g_core.errors import InputError
from medm2g_core.io.meta import SYNTHETIC_NOTE, check_allocation, format_from_suffix, modality_from_name, require_file, sniff_format, units_for
from medm2g_core.serialization import atomic_path
from medm2g_core.types import ImageMeta

KEY_SPACING = "medm2g:spacing"
KEY_SYNTHETIC = "medm2g:synthetic"
KEY_MODALITY = "medm2g:modality"
KEY_UNITS = "medm2g:units"
KEY_ORIGIN = "medm2g:origin"
KEY_DIRECTION = "medm2g:direction"

_MODE_DTYPES = {"L": np.uint8, "I;16": np.uint16, "I;16B": np.uint16, "I;16L": np.uint16, "I": np.int32}


def read_png(path: str | Path) -> tuple[np.ndarray, ImageMeta]:
    """Read a PNG or JPEG → ``(array (rows, cols) uint8/uint16, ImageMeta)``.

    Colour images are converted to grayscale (luminance) and ``meta.extra["converted_from"]`` says so.
    Spacing is read from the ``medm2g:spacing`` text chunk, else 1.0 mm with
    ``meta.extra["spacing_source"] = "unknown"``; origin and direction from ``medm2g:origin`` /
    ``medm2g:direction``, else zero and identity.
    """
    from PIL import Image, UnidentifiedImageError

    path = require_file(path)
    content = sniff_format(path)
    claimed = format_from_suffix(path)
    if content not in ("png", "jpeg"):
        raise InputError(path, f"is not a PNG or JPEG image (its first bytes are not an image signature)", "export the image again as PNG")
    extra: dict[str, object] = {}
    if claimed is not None and claimed != content:
        extra["format_mismatch"] = f"named .{path.name.rsplit('.', 1)[-1]} but holds {content.upper()} data; read by content"
    try:
        with Image.open(path) as image:
            columns, rows = image.size
            bands = len(image.getbands())
            check_allocation(path, shape=(rows, columns, bands), dtype=np.uint16)
            text = {str(k): str(v) for k, v in getattr(image, "text", {}).items()}
            mode = image.mode
            if mode not in _MODE_DTYPES:
                extra["converted_from"] = mode
                image = image.convert("I;16" if mode in ("LA;16", "RGB;16") else "L")
                mode = image.mode
            array = np.asarray(image, dtype=_MODE_DTYPES[mode]).copy()
    except InputError:
        raise
    except Image.DecompressionBombError as error:  # Pillow refuses > 2 × MAX_IMAGE_PIXELS before decoding
        raise InputError(path, f"header claims an image too large to decode safely ({' '.join(str(error).split())})",
                         "check the file is not damaged; crop or downsample it first if it really is that large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InputError(path, f"unreadable {content.upper()} image ({' '.join(str(error).split())})", "the file is truncated or damaged; export it again") from None
    if mode == "I" and array.size and array.min() >= 0 and array.max() <= np.iinfo(np.uint16).max:
        array = array.astype(np.uint16)
    spacing = _parse_spacing(text.get(KEY_SPACING))
    if spacing is None:
        spacing = (1.0, 1.0)
        extra["spacing_source"] = "unknown"
    modality = text.get(KEY_MODALITY) or _name_modality(path)
    geometry: dict[str, object] = {}
    origin = _parse_numbers(text.get(KEY_ORIGIN), 3)
    if origin is not None:
        geometry["origin"] = origin
    direction = _parse_direction(text.get(KEY_DIRECTION))
    if direction is not None:
        geometry["direction"] = direction
    meta = ImageMeta(
        spacing=spacing,
        shape=tuple(int(s) for s in array.shape),
        units=text.get(KEY_UNITS) or units_for(modality),
        modality=modality,
        source_format=content,
        orientation="",
        synthetic=text.get(KEY_SYNTHETIC, "").lower() == "true",
        extra=extra,
        **geometry,  # type: ignore[arg-type]
    )
    return array, meta


def write_png(path: str | Path, array: np.ndarray, meta: ImageMeta) -> Path:
    """Write a 2D uint8 or uint16 array (``(rows, cols)``) as grayscale PNG, atomically.

    Pixel spacing (mm, row then column) goes into the ``medm2g:spacing`` text chunk, origin and
    direction into ``medm2g:origin`` / ``medm2g:direction``; synthetic images are marked. Other dtypes are refused: scale and cast first (e.g. ``(x * 65535).astype(np.uint16)``).
    """
    from PIL import Image, PngImagePlugin

    path = Path(path)
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"PNG writing takes a 2D (rows, cols) array, got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"PNG stores 8- or 16-bit unsigned integers, got {array.dtype}; scale and cast first "
            "(e.g. np.clip(x, 0, 1) * 65535 → uint16)"
        )
    image = Image.fromarray(np.ascontiguousarray(array))  # uint8 → "L", uint16 → "I;16"
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", f"medm2g {__version__}")
    info.add_text(KEY_SPACING, " ".join(repr(float(s)) for s in tuple(meta.spacing)[:2]))
    info.add_text(KEY_ORIGIN, " ".join(repr(float(v)) for v in tuple(meta.origin)[:3]))
    info.add_text(KEY_DIRECTION, " ".join(repr(float(v)) for row in meta.direction for v in row))
    if meta.modality:
        info.add_text(KEY_MODALITY, str(meta.modality))
    if meta.units:
        info.add_text(KEY_UNITS, str(meta.units))
    if meta.synthetic:
        info.add_text(KEY_SYNTHETIC, "true")
        info.add_itxt("Comment", SYNTHETIC_NOTE)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def _parse_spacing(text: str | None) -> tuple[float, float] | None:
    values = _parse_numbers(text, 2)
    if values is None or min(values) <= 0:
        return None
    return (values[0], values[1])


def _parse_numbers(text: str | None, count: int) -> tuple[float, ...] | None:
    """``count`` finite numbers separated by spaces (or DICOM backslashes), else None."""
    if not text:
        return None
    try:
        values = [float(v) for v in text.replace("\\", " ").split()]
    except ValueError:
        return None
    if len(values) != count or not all(np.isfinite(values)):
        return None
    return tuple(values)


def _parse_direction(text: str | None) -> tuple[tuple[float, float, float], ...] | None:
    """Nine numbers (3×3, row by row) forming an orthonormal matrix, else None."""
    values = _parse_numbers(text, 9)
    if values is None:
        return None
    matrix = np.asarray(values, dtype=float).reshape(3, 3)
    if not np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-4):
        return None
    return tuple(tuple(float(v) for v in row) for row in matrix)  # type: ignore[return-value]


def _name_modality(path: Path) -> str | None:
    modality = modality_from_name(path.name)
    return modality.value if modality is not None else None
