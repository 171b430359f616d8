"""BraTS (brain tumour segmentation challenge) → one patient folder per case.

Layouts as downloaded:
- 2021 (and 2020): ``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz``
  (``BraTS20_Training_001/BraTS20_Training_001_t1.nii.gz``);
- 2023+: ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``.

Output ``<case>/``: ``mri-t1.nii.gz`` (t1 / t1n), ``mri-t2.nii.gz`` (t2 / t2w), and under their own
names ``t1ce.nii.gz`` (t1ce / t1c), ``flair.nii.gz`` (flair / t2f), ``seg.nii.gz`` (tumour labels;
absent in validation data). BraTS volumes are co-registered to SRI24, 1 mm isotropic, skull-stripped.
"""

from __future__ import annotations

import re
from pathlib import Path

from medm2g_core.data.importers.base import (
    FileStudy,
    ImportResult,
    import_file_studies,
    iter_files,
    nothing_recognised,
    require_source,
)
from medm2g_core.types import ProgressFn, no_progress

DATASET = "brats"
EXPECTED = (
    "case folders such as BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz or "
    "BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz"
)
_FILE = re.compile(
    r"^(?P<case>BraTS\d*_(?:Training_|Validation_)?\d+)_(?P<sequence>t1|t1ce|t2|flair|seg)\.nii(?:\.gz)?$"
    r"|^(?P<case23>BraTS-[A-Z]+-\d+-\d+)-(?P<sequence23>t1n|t1c|t2w|t2f|seg)\.nii(?:\.gz)?$",
    re.IGNORECASE,
)
_NAMES = {
    "t1": "mri-t1.nii.gz",
    "t1n": "mri-t1.nii.gz",
    "t2": "mri-t2.nii.gz",
    "t2w": "mri-t2.nii.gz",
    "t1ce": "t1ce.nii.gz",
    "t1c": "t1ce.nii.gz",
    "flair": "flair.nii.gz",
    "t2f": "flair.nii.gz",
    "seg": "seg.nii.gz",
}


def import_brats(
    source: str | Path,
    *,
    out: str | Path,
    copy: bool = False,
    progress: ProgressFn = no_progress,
) -> ImportResult:
    """Import BraTS cases from ``source`` into patient folders under ``out``.

    Raises ``InputError`` when ``source`` is missing or holds no BraTS case file.
    """
    source = require_source(source, dataset=DATASET, expected=EXPECTED)
    result = ImportResult(dataset=DATASET, source=source, out=Path(out))
    cases: dict[str, dict[str, Path]] = {}
    for path in iter_files(source, suffixes=(".nii.gz", ".nii")):
        match = _FILE.match(path.name)
        if not match:
            continue
        case = match.group("case") or match.group("case23")
        sequence = (match.group("sequence") or match.group("sequence23")).lower()
        cases.setdefault(case, {}).setdefault(_NAMES[sequence], path)
    if not cases:
        raise nothing_recognised(source, dataset=DATASET, expected=EXPECTED)
    studies = [FileStudy(patient_id=case, files=files) for case, files in sorted(cases.items())]
    import_file_studies(studies, result=result, copy=copy, progress=progress)
    result.notes.append("BraTS volumes are co-registered (SRI24, 1 mm, skull-stripped): mri-t1 and mri-t2 share a grid")
    without_seg = sum(1 for files in cases.values() if "seg.nii.gz" not in files)
    if without_seg:
        result.notes.append(f"{without_seg} cases have no seg.nii.gz (validation/test data)")
    return result
