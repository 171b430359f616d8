"""MetaImage (.mha/.mhd) and NRRD (.nrrd/.nhdr) through SimpleITK.

SimpleITK arrays are indexed ``(k, j, i)``; medm2g arrays are ``(i, j, k)``, so arrays are
transposed on the way in and out. SimpleITK's origin/direction are already LPS mm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medm2g_core.errors import InputError
from medm2g_core.io.meta import array_to_write, check_allocation, format_from_suffix, modality_from_name, orientation_code, require_file, units_for
from medm2g_core.serialization import atomic_path
from medm2g_core.types import ImageMeta

_PIXEL_DTYPES = {
    "8-bit unsigned integer": np.uint8,
    "8-bit signed integer": np.int8,
    "16-bit unsigned integer": np.uint16,
    "16-bit signed integer": np.int16,
    "32-bit unsigned integer": np.uint32,
    "32-bit signed integer": np.int32,
    "64-bit unsigned integer": np.uint64,
    "64-bit signed integer": np.int64,
    "32-bit float": np.float32,
    "64-bit float": np.float64,
}


def read_sitk(path: str | Path) -> tuple[np.ndarray, ImageMeta]:
    """Read an MHA/MHD/NRRD volume → ``(array (i, j, k), ImageMeta)``; the header size is checked first."""
    import SimpleITK as sitk

    path = require_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(path, f"unreadable image header ({_first_line(error)})", "the file is damaged; export it again") from None
    size = tuple(int(s) for s in reader.GetSize())
    components = int(reader.GetNumberOfComponents())
    dtype = _PIXEL_DTYPES.get(sitk.GetPixelIDValueAsString(reader.GetPixelID()).replace("vector of ", ""), np.float64)
    check_allocation(path, shape=size + ((components,) if components > 1 else ()), dtype=dtype)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(path, f"unreadable pixel data ({_first_line(error)})", "the file is truncated or damaged; export it again") from None
    if components > 1:
        raise InputError(path, f"has {components} components per voxel; medm2g reads scalar images", "save one channel")
    dimension = image.GetDimension()
    array = sitk.GetArrayFromImage(image).transpose(tuple(range(dimension - 1, -1, -1)))
    spacing = tuple(float(s) for s in image.GetSpacing())
    origin = tuple(float(x) for x in image.GetOrigin())
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(dimension, dimension)
    if dimension == 2:  # (x, y) image: keep ITK's (i, j) indexing, embed in 3D geometry
        full = np.eye(3)
        full[:2, :2] = direction
        direction = full
        origin = origin + (0.0,)
    elif dimension != 3:
        raise InputError(path, f"is a {dimension}D image; medm2g reads 2D and 3D images", "extract one 3D volume first")
    name = modality_from_name(path.name)
    modality = name.value if name is not None else None
    meta = ImageMeta(
        spacing=spacing,
        origin=origin,  # type: ignore[arg-type]
        direction=tuple(tuple(float(x) for x in row) for row in direction),
        shape=tuple(int(s) for s in array.shape),
        units=units_for(modality),
        modality=modality,
        source_format=format_from_suffix(path) or "mha",
        orientation=orientation_code(direction) if dimension == 3 else "",
        synthetic=reader.HasMetaDataKey("medm2g_synthetic") and reader.GetMetaData("medm2g_synthetic") == "true",
    )
    return np.ascontiguousarray(array), meta


def write_sitk(path: str | Path, array: np.ndarray, meta: ImageMeta) -> Path:
    """Write an ``(i, j, k)`` volume (or 2D image) as MHA/NRRD with ``meta``'s geometry, atomically."""
    import SimpleITK as sitk

    path = Path(path)
    array = array_to_write(array, writer="MHA/NRRD")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(tuple(range(array.ndim - 1, -1, -1)))))
    dimension = array.ndim
    image.SetSpacing([float(s) for s in tuple(meta.spacing)[:dimension]])
    image.SetOrigin([float(x) for x in tuple(meta.origin)[:dimension]])
    direction = np.asarray(meta.direction, dtype=float)[:dimension, :dimension]
    image.SetDirection([float(x) for x in direction.ravel()])
    if meta.synthetic:
        image.SetMetaData("medm2g_synthetic", "true")
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:200]
