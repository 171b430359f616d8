"""Batch inputs: command-line paths, globs and stdin expanded to files, patient and series folders.

1. ``expand_inputs``: files, patient folders, cohort folders (folders of patient folders), DICOM series
   folders, globs (``'cohort/*/mri-t1.nii.gz'``, expanded here so quoting works) and ``-`` (paths on
   stdin, one per line). Zero inputs is an ``InputError`` (exit 2), never a silent success.
2. Output names from the patient folder (``patient_name``): ``find cohort -name mri-t1.nii.gz``
   yields many inputs with one basename, so ``--out DIR`` writes ``DIR/<patient>/<modality>.nii.gz``
   where ``<patient>`` is the folder holding a canonically named file (``P0001/mri-t1.nii.gz`` →
   ``P0001``), the folder itself for a patient folder, the parent of a DICOM series folder, and the
   file's own stem for free-form names (``scans/IXI002-T1.nii.gz`` → ``IXI002-T1``), so a flat folder of
   scans does not collide either.
3. ``patient_files``: the canonically named scans of a patient folder; ``expand_folders`` replaces a
   cohort folder by its patient folders (``data.manifest.find_patient_folders``, the cohort scanner).
"""

from __future__ import annotations

import glob
import os
import re
import sys
from pathlib import Path
from typing import Sequence, TextIO

from medm2g_core.errors import InputError
from medm2g_core.io.meta import SUFFIX_FORMATS, canonical_modality, modality_from_name
from medm2g_core.modalities import Modality

GLOB_CHARACTERS = re.compile(r"[*?\[]")


# -- inputs --------------------------------------------------------------------------------------


def expand_inputs(inputs: Sequence[str | Path], *, stdin: TextIO | None = None) -> list[Path]:
    """Turn command-line inputs into paths: ``-`` reads paths from ``stdin`` (one per line, blank lines
    ignored), patterns with ``* ? [`` are globbed (sorted; ``**`` recursive), everything else is kept
    as given (a missing file becomes that input's own failure, not the batch's). Duplicates (same
    resolved path) are dropped, first occurrence kept.

    Raises:
        InputError: no input at all (nothing given, an empty stdin, globs matching nothing).
    """
    found: list[Path] = []
    empty_globs: list[str] = []
    for item in inputs:
        text = str(item)
        if text == "-":
            stream = stdin if stdin is not None else sys.stdin
            found += [Path(line.strip()) for line in stream.read().splitlines() if line.strip()]
        elif GLOB_CHARACTERS.search(text) and not Path(text).exists():
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                empty_globs.append(text)
            found += [Path(m) for m in matches]
        else:
            found.append(Path(text))
    unique: list[Path] = []
    seen: set[str] = set()
    for path in found:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    if not unique:
        detail = f" (no file matches {', '.join(empty_globs)})" if empty_globs else ""
        raise InputError(
            None,
            f"no inputs{detail}",
            "pass files, patient folders or globs, or - to read paths from stdin (e.g. find cohort -name mri-t1.nii.gz | medm2g translate - --to ct)",
        )
    return unique


def strip_suffix(name: str) -> str:
    lowered = name.lower()
    for suffix, _ in SUFFIX_FORMATS:
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def patient_name(path: Path) -> str:
    """The output folder name for an input (see the module docstring): the patient folder, not the basename."""
    absolute = Path(os.path.abspath(path))
    if absolute.is_dir() and not is_series_folder(absolute):
        return absolute.name or "input"
    if canonical_modality(absolute.name) is not None or is_series_folder(absolute):
        return absolute.parent.name or "input"
    return strip_suffix(absolute.name) or "input"


def is_series_folder(path: Path) -> bool:
    """A folder holding DICOM files directly (``P0001/ct/0001.dcm``...)."""
    if not path.is_dir():
        return False
    from medm2g_core.io.dicom import holds_dicom_files

    return holds_dicom_files(path, sample=16)


def patient_files(folder: Path) -> dict[Modality, Path]:
    """Canonically named files and DICOM series folders directly inside a patient folder."""
    files: dict[Modality, Path] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return files
    for entry in entries:
        if entry.name.startswith("."):
            continue
        modality = canonical_modality(entry.name)
        if modality is None:
            continue
        if entry.is_file() or is_series_folder(entry):
            files.setdefault(modality, entry)
    return files


def expand_folders(paths: Sequence[Path]) -> list[Path]:
    """Replace each cohort folder (a folder holding patient folders, not files) by its patient folders;
    files, patient folders and DICOM series folders are kept."""
    from medm2g_core.data.manifest import find_patient_folders

    out: list[Path] = []
    for path in paths:
        if path.is_dir() and not is_series_folder(path) and not patient_files(path):
            found = find_patient_folders(path)
            out += found if found else [path]  # an empty folder fails on its own, with a message
        else:
            out.append(path)
    return out


def modality_of(path: Path) -> Modality | None:
    """Modality from the name (canonical or tokens), else the header (DICOM, medm2g's NIfTI marks)."""
    by_name = modality_from_name(path.name)
    if by_name is not None:
        return by_name
    from medm2g_core.io import modality_from_path

    return modality_from_path(path)
