"""IXI (brain MRI of healthy adults) → one patient folder per subject.

Layout as downloaded: one folder per contrast (``IXI-T1/IXI002-Guys-0828-T1.nii.gz``,
``IXI-T2/...-T2.nii.gz``, ``IXI-PD/...-PD.nii.gz``) or all files in one folder. A processing prefix
such as ``hd_bet_`` (HD-BET skull stripping) is accepted; brain-mask files (``*mask*``) and the MRA
and DTI series are skipped.

Output ``IXI002-Guys-0828/``: ``mri-t1.nii.gz``, ``mri-t2.nii.gz``, ``mri-pd.nii.gz``.

IXI T1, T2 and PD are **not co-registered**: T2 and PD come from one dual-echo acquisition and share a
grid, T1 was acquired separately on another grid. Registration is the user's job; ``data index``
shows each contrast's shape and spacing.
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

DATASET = "ixi"
EXPECTED = "IXI-T1/IXI002-Guys-0828-T1.nii.gz, IXI-T2/...-T2.nii.gz, IXI-PD/...-PD.nii.gz (or all in one folder)"
_FILE = re.compile(r"^(?P<prefix>.*?)(?P<subject>IXI\d{3}-[A-Za-z]+-\d{4})-(?P<contrast>T1|T2|PD|MRA|DTI-\d+)\.nii(?:\.gz)?$")
_CONTRASTS = {"T1": "mri-t1.nii.gz", "T2": "mri-t2.nii.gz", "PD": "mri-pd.nii.gz"}
NOT_REGISTERED = (
    "IXI T1, T2 and PD are not co-registered (T2 and PD share a grid, T1 differs): register them before "
    "voxel-wise training (`medm2g data index` shows each contrast's shape and spacing)"
)


def import_ixi(
    source: str | Path,
    *,
    out: str | Path,
    copy: bool = False,
    progress: ProgressFn = no_progress,
) -> ImportResult:
    """Import IXI T1/T2/PD NIfTI files from ``source`` into patient folders under ``out``.

    Raises ``InputError`` when ``source`` is missing or holds no IXI file.
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
    import_file_studies(studies, result=result, copy=copy, progress=progress)
    result.notes.append(NOT_REGISTERED)
    if masks:
        result.notes.append(f"{masks} mask files skipped")
    if other:
        result.notes.append(f"{other} MRA/DTI files skipped (not medm2g modalities)")
    if duplicates:
        result.notes.append(f"{duplicates} files duplicate a subject's contrast under another prefix; the unprefixed one was used")
    return result
