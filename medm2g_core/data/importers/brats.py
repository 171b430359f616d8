"""BraTS (brain tumour segmentation challenge) → one patient folder per case.

Layouts as downloaded:
- 2021 (and 2020): ``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz``
  (``BraTS20_Training_001/BraTS20_Training_001_t1.nii.gz``);
- 2023+: ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``;
- one folder per subject holding the contrasts under their short names
  (``TCGA-DU-7294/{t1,t1c,t2,flair}.nii.gz``, as in ``../shared/data/brain_mri_brats``; also
  ``t1n``, ``t1ce``, ``t2w``, ``t2f``, ``seg``): the folder's name is the case.

Output ``<case>/``: ``mri-t1.nii.gz`` (t1 / t1n), ``mri-t2.nii.gz`` (t2 / t2w), ``mri-t1c.nii.gz``
(t1ce / t1c, contrast-enhanced T1), ``mri-flair.nii.gz`` (flair / t2f) and ``seg.nii.gz`` (tumour
labels; absent in validation data), plus ``DIR/splits.json`` split by case (``base.assign_splits``,
``seed``). BraTS volumes are co-registered to SRI24, 1 mm isotropic, skull-stripped: the four
contrasts of a case share one grid, so every flow between them (``t1-t2``, ``t2+flair-t1``) is
voxel-wise. A case whose contrasts do not share a grid is still imported and reported by
``data index``; flows refuse it (``datasets.PairSliceDataset``).
"""

from __future__ import annotations

import re
from pathlib import Path

from medm2g_core.data.importers.base import (
    FileStudy,
    ImportResult,
    assign_splits,
    import_file_studies,
    iter_files,
    nothing_recognised,
    require_source,
)
from medm2g_core.types import ProgressFn, no_progress

DATASET = "brats"
EXPECTED = (
    "case folders such as BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz, "
    "BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz or CASE/{t1,t1c,t2,flair}.nii.gz"
)
_FILE = re.compile(
    r"^(?P<case>BraTS\d*_(?:Training_|Validation_)?\d+)_(?P<sequence>t1|t1ce|t2|flair|seg)\.nii(?:\.gz)?$"
    r"|^(?P<case23>BraTS-[A-Z]+-\d+-\d+)-(?P<sequence23>t1n|t1c|t2w|t2f|seg)\.nii(?:\.gz)?$",
    re.IGNORECASE,
)
# A subject folder holding the contrasts under their short names (the case is the folder's name).
_SHORT = re.compile(r"^(?P<sequence>t1|t1n|t1c|t1ce|t2|t2w|t2f|flair|seg)\.nii(?:\.gz)?$", re.IGNORECASE)
_NAMES = {
    "t1": "mri-t1.nii.gz",
    "t1n": "mri-t1.nii.gz",
    "t2": "mri-t2.nii.gz",
    "t2w": "mri-t2.nii.gz",
    "t1ce": "mri-t1c.nii.gz",
    "t1c": "mri-t1c.nii.gz",
    "flair": "mri-flair.nii.gz",
    "t2f": "mri-flair.nii.gz",
    "seg": "seg.nii.gz",
}
CONTRASTS = ("mri-t1.nii.gz", "mri-t1c.nii.gz", "mri-t2.nii.gz", "mri-flair.nii.gz")


def import_brats(
    source: str | Path,
    *,
    out: str | Path,
    copy: bool = False,
    seed: int = 0,
    progress: ProgressFn = no_progress,
) -> ImportResult:
    """Import BraTS cases from ``source`` into patient folders under ``out`` and split them by case.

    Raises ``InputError`` when ``source`` is missing or holds no BraTS case file.
    """
    source = require_source(source, dataset=DATASET, expected=EXPECTED)
    result = ImportResult(dataset=DATASET, source=source, out=Path(out))
    cases: dict[str, dict[str, Path]] = {}
    for path in iter_files(source, suffixes=(".nii.gz", ".nii")):
        match = _FILE.match(path.name)
        if match:
            case = match.group("case") or match.group("case23")
            sequence = (match.group("sequence") or match.group("sequence23")).lower()
        elif (short := _SHORT.match(path.name)) is not None and path.parent != source:
            case, sequence = path.parent.name, short.group("sequence").lower()
        else:
            continue
        cases.setdefault(case, {}).setdefault(_NAMES[sequence], path)
    if not cases:
        raise nothing_recognised(source, dataset=DATASET, expected=EXPECTED)
    studies = [FileStudy(patient_id=case, files=files) for case, files in sorted(cases.items())]
    writer = import_file_studies(studies, result=result, copy=copy, progress=progress)
    imported = {case: case for case in sorted(writer.patients) if (result.out / case).is_dir()}
    writer.splits(assign_splits(imported, seed=seed))
    result.notes.append("BraTS contrasts of a case are co-registered (SRI24, 1 mm, skull-stripped): "
                        "mri-t1, mri-t1c, mri-t2 and mri-flair share a grid")
    incomplete = sum(1 for files in cases.values() if not all(name in files for name in CONTRASTS))
    if incomplete:
        result.notes.append(f"{incomplete} cases lack one of the four contrasts (t1, t1c, t2, flair)")
    without_seg = sum(1 for files in cases.values() if "seg.nii.gz" not in files)
    if without_seg:
        result.notes.append(f"{without_seg} cases have no seg.nii.gz (validation/test data, or not distributed)")
    return result
