"""SynthRAD2023 (MRI/CBCT → CT challenge) → one patient folder per case.

Layout as downloaded: ``Task1/brain/1BA001/{mr.nii.gz, ct.nii.gz, mask.nii.gz}``,
``Task1/pelvis/1PA001/...`` and, for Task 2, ``Task2/brain/2BA001/{cbct.nii.gz, ct.nii.gz, mask.nii.gz}``.
SRC may be the top folder, a task folder or an anatomy folder.

Output ``<case>/``: ``ct.nii.gz``, ``mask.nii.gz`` (the body mask the challenge metrics use), the MR
as ``mri-t1.nii.gz`` or ``mri-t2.nii.gz`` and the CBCT as ``cbct.nii.gz``.

Which MRI contrast: SynthRAD2023 brain MR is a T1-weighted gradient echo (contrast-enhanced at some
centres), so brain → ``mri-t1``; pelvis MR is T1- or T2-weighted depending on the centre (mostly
T2), so pelvis → ``mri-t2``. ``mr_modality`` (CLI ``--mr-as t1|t2``) overrides both; import brain and
pelvis separately to map them differently. Cases of another anatomy need ``mr_modality``.
MR/CBCT and CT of a case were registered by the organisers and share one grid.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from medm2g_core.data.importers.base import (
    FileStudy,
    ImportResult,
    import_file_studies,
    nothing_recognised,
    require_source,
)
from medm2g_core.modalities import Modality
from medm2g_core.types import ProgressFn, no_progress

DATASET = "synthrad"
EXPECTED = "case folders such as Task1/brain/1BA001/ holding mr.nii.gz (or cbct.nii.gz), ct.nii.gz and mask.nii.gz"
DEFAULT_MR = {"brain": Modality.MRI_T1, "pelvis": Modality.MRI_T2}
_CASE = re.compile(r"^[12]([BP])[A-Z]\d{3}$")  # 1BA001: task, anatomy (B/P), centre, number
_MAX_DEPTH = 4


def import_synthrad(
    source: str | Path,
    *,
    out: str | Path,
    copy: bool = False,
    mr_modality: Modality | None = None,
    progress: ProgressFn = no_progress,
) -> ImportResult:
    """Import SynthRAD2023 cases from ``source`` into patient folders under ``out``.

    ``mr_modality`` (``Modality.MRI_T1`` or ``MRI_T2``) overrides the per-anatomy default for
    ``mr.nii.gz``. Raises ``InputError`` when ``source`` is missing or holds no SynthRAD case.
    """
    source = require_source(source, dataset=DATASET, expected=EXPECTED)
    result = ImportResult(dataset=DATASET, source=source, out=Path(out))
    cases = _find_cases(source)
    if not cases:
        raise nothing_recognised(source, dataset=DATASET, expected=EXPECTED)
    studies: list[FileStudy] = []
    as_what: dict[str, int] = {}
    for folder in cases:
        anatomy = _anatomy(folder)
        files = {name: folder / name for name in ("ct.nii.gz", "mask.nii.gz", "cbct.nii.gz") if (folder / name).is_file()}
        if (folder / "mr.nii.gz").is_file():
            modality = mr_modality or DEFAULT_MR.get(anatomy or "")
            if modality is None:
                result.problems.append(f"{folder.name}: anatomy {anatomy or 'unknown'} has no default MR contrast; give --mr-as t1|t2")
                continue
            files[f"{modality.value}.nii.gz"] = folder / "mr.nii.gz"
            key = f"{anatomy or 'unknown'} mr.nii.gz → {modality.value}"
            as_what[key] = as_what.get(key, 0) + 1
        studies.append(FileStudy(patient_id=folder.name, files=files))
    import_file_studies(studies, result=result, copy=copy, progress=progress)
    for key, count in sorted(as_what.items()):
        result.notes.append(f"{count} cases: {key}" + ("" if mr_modality else " (default; override with --mr-as)"))
    result.notes.append("SynthRAD MR/CBCT and CT of a case are registered by the organisers (same grid); mask.nii.gz is the body mask")
    return result


def _find_cases(source: Path) -> list[Path]:
    """Folders holding ct.nii.gz next to mr.nii.gz or cbct.nii.gz, up to a few levels down."""
    cases = []
    for folder, subfolders, names in os.walk(source):
        depth = len(Path(folder).relative_to(source).parts)
        subfolders[:] = sorted(s for s in subfolders if not s.startswith(".")) if depth < _MAX_DEPTH else []
        if "ct.nii.gz" in names and ("mr.nii.gz" in names or "cbct.nii.gz" in names):
            cases.append(Path(folder))
    return sorted(cases, key=lambda p: p.name)


def _anatomy(folder: Path) -> str | None:
    """brain/pelvis from the parent folder's name, else from the case id (1BA001 → brain)."""
    parent = folder.parent.name.lower()
    if parent in ("brain", "pelvis", "abdomen", "thorax", "head_neck", "hn", "ab", "th"):
        return parent
    match = _CASE.match(folder.name)
    if match:
        return {"B": "brain", "P": "pelvis"}[match.group(1)]
    return None
