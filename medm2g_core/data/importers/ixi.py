"""IXI (brain MRI of healthy adults) → one patient folder per subject.

Layout as downloaded: one folder per contrast (``IXI-T1/IXI002-Guys-0828-T1.nii.gz``,
``IXI-T2/...-T2.nii.gz``, ``IXI-PD/...-PD.nii.gz``) or all files in one folder. A processing prefix
such as ``hd_bet_`` (HD-BET skull stripping) is accepted; brain-mask files (``*mask*``) and the MRA
and DTI series are skipped.

Output ``IXI002-Guys-0828/``: ``mri-t1.nii.gz``, ``mri-t2.nii.gz``, ``mri-pd.nii.gz``, the brain mask
on the T1 grid as ``mask.nii.gz`` when the source has one (``*mask*T1*``, e.g. HD-BET's
``hd_bet_mask_IXI002-Guys-0828-T1.nii.gz``), and ``DIR/splits.json`` split by subject.

IXI T1, T2 and PD are **not co-registered**: T2 and PD come from one dual-echo acquisition and share a
grid, T1 was acquired separately on another grid (IXI002: T1 150×256×256 sagittal at 1.2×0.94×0.94 mm,
T2 256×256×130 axial at 0.94×0.94×1.25 mm). Without ``register`` they are linked as they are, and
flows refuse to pair them (``datasets.PairSliceDataset``). ``register=True`` (CLI ``--register``)
resamples T2 and PD onto the T1 grid **through the scanner affines** (SimpleITK, linear, 0 outside):
same-session series share the scanner frame, so this puts them voxel to voxel on T1 without any
image-based registration (head motion between the series is not corrected). The resampled files are
written (not linked), and their metadata (``ImageMeta.extra["registration"]``) says how and from which
grid; T1 and the mask stay linked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from medm2g_core.data.importers.base import (
    CohortWriter,
    FileStudy,
    ImportResult,
    StudyError,
    assign_splits,
    check_file,
    import_file_studies,
    run_import,
    write_file_study,
    iter_files,
    nothing_recognised,
    require_source,
)
from medm2g_core.types import ImageMeta, ProgressFn, no_progress

DATASET = "ixi"
EXPECTED = "IXI-T1/IXI002-Guys-0828-T1.nii.gz, IXI-T2/...-T2.nii.gz, IXI-PD/...-PD.nii.gz (or all in one folder)"
_FILE = re.compile(r"^(?P<prefix>.*?)(?P<subject>IXI\d{3}-[A-Za-z]+-\d{4})-(?P<contrast>T1|T2|PD|MRA|DTI-\d+)\.nii(?:\.gz)?$")
_CONTRASTS = {"T1": "mri-t1.nii.gz", "T2": "mri-t2.nii.gz", "PD": "mri-pd.nii.gz"}
REGISTRATION = "resampled onto the T1 grid through the scanner affines (SimpleITK, linear, 0 outside); no image-based registration"
NOT_REGISTERED = (
    "IXI T1, T2 and PD are not co-registered (T2 and PD share a grid, T1 differs): register them before "
    "voxel-wise training (`medm2g data index` shows each contrast's shape and spacing)"
)


def import_ixi(
    source: str | Path,
    *,
    out: str | Path,
    copy: bool = False,
    register: bool = False,
    seed: int = 0,
    progress: ProgressFn = no_progress,
) -> ImportResult:
    """Import IXI T1/T2/PD NIfTI files from ``source`` into patient folders under ``out``.

    ``register``: resample T2 and PD onto the T1 grid (module docstring). Raises ``InputError`` when
    ``source`` is missing or holds no IXI file.
    """
    source = require_source(source, dataset=DATASET, expected=EXPECTED)
    result = ImportResult(dataset=DATASET, source=source, out=Path(out))
    subjects: dict[str, dict[str, tuple[str, Path]]] = {}
    masks = other = duplicates = 0
    for path in iter_files(source, suffixes=(".nii.gz", ".nii")):
        match = _FILE.match(path.name)
        if not match:
            continue
        if "mask" in path.name.lower():
            masks += 1
            if match.group("contrast") == "T1":  # the T1-grid brain mask: kept
                subjects.setdefault(match.group("subject"), {}).setdefault("mask.nii.gz", ("", path))
            continue
        name = _CONTRASTS.get(match.group("contrast"))
        if name is None:
            other += 1
            continue
        files = subjects.setdefault(match.group("subject"), {})
        prefix = match.group("prefix")
        if name in files:
            duplicates += 1
            if files[name][0] and not prefix:  # prefer the file as IXI distributes it
                files[name] = (prefix, path)
            continue
        files[name] = (prefix, path)
    if not subjects:
        raise nothing_recognised(source, dataset=DATASET, expected=EXPECTED)
    studies = [FileStudy(patient_id=s, files={n: p for n, (_, p) in sorted(f.items())}) for s, f in sorted(subjects.items())]
    if register:
        writer = run_import(studies, _write_registered, study_id=lambda s: s.patient_id, result=result, copy=copy, progress=progress)
        result.notes.append(f"T2/PD {REGISTRATION}; T1 and mask linked as they are")
    else:
        writer = import_file_studies(studies, result=result, copy=copy, progress=progress)
        result.notes.append(NOT_REGISTERED + "; or import with --register")
    writer.splits(assign_splits({s: s for s in writer.patients if (result.out / s).is_dir()}, seed=seed))
    kept = sum(1 for files in subjects.values() if "mask.nii.gz" in files)
    if masks:
        result.notes.append(f"{masks} mask files found: {kept} T1-grid brain masks kept as mask.nii.gz, the others skipped")
    if other:
        result.notes.append(f"{other} MRA/DTI files skipped (not medm2g modalities)")
    if duplicates:
        result.notes.append(f"{duplicates} files duplicate a subject's contrast under another prefix; the unprefixed one was used")
    return result


def _write_registered(writer: CohortWriter, study: FileStudy) -> None:
    """Link T1 (and its mask); write T2/PD resampled onto the T1 grid. A subject without T1 is refused."""
    t1 = study.files.get("mri-t1.nii.gz")
    if t1 is None:
        raise StudyError("no T1 to register T2/PD onto; import without --register")
    for source in study.files.values():
        check_file(source)
    linked = {name: path for name, path in study.files.items() if name in ("mri-t1.nii.gz", "mask.nii.gz")}
    write_file_study(writer, FileStudy(study.patient_id, linked))
    from medm2g_core import io

    _, t1_meta = io.read(t1)
    for name in ("mri-t2.nii.gz", "mri-pd.nii.gz"):
        if name in study.files:
            array, meta = resample_onto(study.files[name], t1, reference_meta=t1_meta)
            writer.image(study.patient_id, name, array, meta.replace(modality=name.split(".")[0]))


def resample_onto(moving: Path, reference: Path, *, reference_meta: "ImageMeta | None" = None) -> "tuple[Any, ImageMeta]":
    """``moving`` resampled onto ``reference``'s voxel grid through both files' affines (SimpleITK,
    linear, 0 outside); integer data stays in its dtype (rounded). Returns ``(array (i, j, k), meta)``
    with ``reference``'s geometry and ``extra["registration"]`` saying what was done."""
    import numpy as np
    import SimpleITK as sitk

    from medm2g_core import io
    from medm2g_core.io.nifti import read_header

    if reference_meta is None:
        _, reference_meta = io.read(reference)
    _, moving_meta = read_header(moving)
    moving_image = sitk.ReadImage(str(moving))
    reference_image = sitk.ReadImage(str(reference))
    resampled = sitk.Resample(moving_image, reference_image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    values = np.transpose(sitk.GetArrayFromImage(resampled), tuple(range(resampled.GetDimension()))[::-1])
    dtype = sitk.GetArrayViewFromImage(moving_image).dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max).astype(dtype)
    record = {"method": REGISTRATION, "reference": reference.name, "from_shape": list(moving_meta.shape),
              "from_spacing_mm": [round(float(v), 6) for v in moving_meta.spacing]}
    meta = reference_meta.replace(shape=tuple(values.shape), units=moving_meta.units, modality=moving_meta.modality,
                                  extra={**moving_meta.extra, "registration": record}, source_format="nifti")
    return values, meta
