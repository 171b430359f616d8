"""AANLIB (The Whole Brain Atlas, Harvard) paired brain CT/MRI slices → one patient folder per case.

Layout as downloaded (the fusion-benchmark copy, ``../shared/data/ct_mri_brain_aanlib``):
``ct/<name>.png`` and ``mri/<name>.png``, 256×256 8-bit greyscale, the same name for the two images
of one slice. The name says the case and the slice: five digits ``CCSSS`` (case ``CC``, slice
``SSS``: ``16003``) or four digits ``CCSS`` (``2004``: a second case ``20`` whose names are shorter).
The atlas authors co-registered the pairs for image fusion (close, not voxel-exact).

Output ``case<CC>/`` (``case20s`` for the four-digit case): the slices of a case stacked in slice order
into ``ct.nii.gz`` and ``mri-t2.nii.gz`` (uint8, 256×256×N; slice k of both is the k-th pair), and
``slices.json`` (slice k → source name), plus ``DIR/splits.json`` **by case** (slices of a case are
neighbours: never split by slice). Converted, not linked: the PNGs have no geometry to link.

What the files can and cannot say:

- **CT units**: the CT is a display window already cut to 8 bits (soft tissue mid-grey, bone saturated
  at 255), so ``ct.nii.gz`` records ``units = modalities.CT_WINDOW_8BIT_UNITS`` and never HU;
  ``medm2g evaluate`` reports its errors in grey levels (``metrics.image.WINDOW8_NAMES``). Train flows on
  it with ``data.ct_window: [0, 255]`` and ``data.ct_units: "8-bit window (not HU)"`` in the recipe, so the window fills [-1, 1] (the default HU window
  would squeeze 0..255 into 6 % of it).
- **Geometry** is nominal: 1 mm pixels, 1 mm between stacked slices, axial (rows anterior→posterior,
  columns patient right→left, as displayed); the atlas gives neither spacing nor slice positions.
- **MRI contrast**: T2-weighted for most cases; the four-digit case looks FLAIR/PD (source README). All
  are imported as ``mri-t2`` and the note says so.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medm2g_core.data.importers.base import (
    ImportResult,
    StudyError,
    assign_splits,
    check_file,
    nothing_recognised,
    require_source,
    run_import,
)
from medm2g_core.modalities import CT_WINDOW_8BIT_UNITS
from medm2g_core.types import ImageMeta, ProgressFn, no_progress

DATASET = "aanlib"
EXPECTED = "ct/<name>.png and mri/<name>.png pairs with the same name (e.g. ct/16003.png, mri/16003.png)"
_NAME = re.compile(r"^(?P<case>\d{2})(?P<slice>\d{2,3})\.png$", re.IGNORECASE)
# axis i = image rows (anterior → posterior: +y in LPS), j = columns (patient right → left: +x), k = +z
_DIRECTION = ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0))
MRI_NOTE = ("AANLIB MRI imported as mri-t2: T2-weighted for most cases; case20s (four-digit names) looks FLAIR/PD, "
            "so leave it out of T2-specific comparisons")


def import_aanlib(
    source: str | Path,
    *,
    out: str | Path,
    seed: int = 0,
    limit: int | None = None,
    progress: ProgressFn = no_progress,
) -> ImportResult:
    """Import AANLIB CT/MRI slice pairs from ``source``: one patient folder per case, split by case.

    ``limit``: at most this many slices per case (evenly spaced; for tests and quick looks).
    Raises ``InputError`` when ``source`` is missing or holds no ``ct/``+``mri/`` pair.
    """
    source = require_source(source, dataset=DATASET, expected=EXPECTED)
    result = ImportResult(dataset=DATASET, source=source, out=Path(out), mode="converted")
    cases: dict[str, list[tuple[int, str]]] = {}
    unpaired = 0
    ct_folder, mri_folder = source / "ct", source / "mri"
    if ct_folder.is_dir() and mri_folder.is_dir():
        for path in sorted(ct_folder.iterdir()):
            match = _NAME.match(path.name)
            if not match:
                continue
            if not (mri_folder / path.name).is_file():
                unpaired += 1
                continue
            case = f"case{match.group('case')}" + ("s" if len(match.group("slice")) == 2 else "")
            cases.setdefault(case, []).append((int(match.group("slice")), path.name))
    if not cases:
        raise nothing_recognised(source, dataset=DATASET, expected=EXPECTED)
    studies = []
    for case, slices in sorted(cases.items()):
        slices.sort()
        if limit is not None and len(slices) > limit:
            picks = np.linspace(0, len(slices) - 1, limit).round().astype(int)
            slices = [slices[int(i)] for i in picks]
        studies.append((case, [name for _, name in slices]))

    def write_case(writer, study) -> None:
        case, names = study
        stacks = {"ct": _stack(ct_folder, names), "mri-t2": _stack(mri_folder, names)}
        for name, array in stacks.items():
            units = CT_WINDOW_8BIT_UNITS if name == "ct" else "a.u."
            extra = {"source": "AANLIB (The Whole Brain Atlas) 8-bit PNG slices", "geometry": "nominal 1 mm; the atlas gives none"}
            if name == "ct":
                extra["intensity"] = "display window cut to 8 bits by the source: no Hounsfield units"
            meta = ImageMeta(spacing=(1.0, 1.0, 1.0), direction=_DIRECTION, shape=array.shape, units=units,
                             modality=name, source_format="png", extra=extra)
            writer.image(case, f"{name}.nii.gz", array, meta)
        writer.sidecar(case, "slices.json", {"slices": names})

    writer = run_import(studies, write_case, study_id=lambda s: s[0], result=result, copy=False, progress=progress)
    result.mode = "converted"
    imported = {case: case for case in writer.patients if (result.out / case / "ct.nii.gz").is_file()}
    writer.splits(assign_splits(imported, seed=seed))
    result.notes.append(f"CT is an 8-bit display window (units {CT_WINDOW_8BIT_UNITS!r}): no HU; errors on it are grey levels")
    result.notes.append("slices of a case are stacked in name order with nominal 1 mm geometry (the atlas gives none)")
    result.notes.append(MRI_NOTE)
    if unpaired:
        result.notes.append(f"{unpaired} CT slices have no MRI of the same name and were skipped")
    return result


def _stack(folder: Path, names: list[str]) -> np.ndarray:
    """The PNGs ``folder/name`` as one uint8 (rows, cols, N) volume; ``StudyError`` if one is unusable."""
    from medm2g_core import io
    from medm2g_core.errors import InputError

    slices = []
    for name in names:
        path = folder / name
        check_file(path)
        try:
            array, _meta = io.read(path)
        except InputError as error:
            raise StudyError(str(error)) from None
        if array.ndim == 3:  # RGB(A) export of a grey image
            array = array[..., :3].mean(axis=-1).round().astype(np.uint8)
        if array.dtype != np.uint8:
            raise StudyError(f"{path}: expected an 8-bit greyscale PNG, got {array.dtype}")
        if slices and array.shape != slices[0].shape:
            raise StudyError(f"{path}: {array.shape[0]}×{array.shape[1]} pixels, unlike the case's other slices ({slices[0].shape[0]}×{slices[0].shape[1]})")
        slices.append(array)
    return np.stack(slices, axis=-1)
