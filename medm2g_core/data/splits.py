"""Deterministic patient-level train/val/test splits: a cohort's ``splits.json``, else a hash of the id.

A cohort folder may hold ``splits.json`` (``data import`` writes the dataset's official split there):
``{"train": [ids], "val": [...], "test": [...]}``, ids being patient ids (folder paths relative to
the cohort root, ``chest/P0001``) or patient folder names (``CXR7``). Patients listed there get that
split. Patients **not** listed (a dataset whose official split covers only part of it, or patients
added later) fall back to the hash split below — not to "train" — so val and test stay populated and
each unlisted patient's split is still a pure function of its id.

The hash split depends only on the patient id, the seed and the fractions — never on which other
patients are in the cohort or on their order — so adding patients never moves existing ones between
splits.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence, TypeVar

from medm2g_core.errors import InputError

SPLITS = ("train", "val", "test")
SPLITS_FILE = "splits.json"
_SPLIT_ALIASES = {"train": "train", "val": "val", "validate": "val", "validation": "val", "valid": "val", "test": "test"}
R = TypeVar("R")


def split_of(
    patient_id: str,
    *,
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    assigned: Mapping[str, str] | None = None,
) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for ``patient_id``.

    ``assigned`` (from ``read_splits_file``) wins when it lists the id or its last path component;
    otherwise ``u = sha256(seed:id)`` mapped to [0, 1) is cut at the fractions.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError("fractions must be three numbers (train, val, test) summing to 1")
    if assigned:
        listed = assigned.get(patient_id) or assigned.get(patient_id.rsplit("/", 1)[-1])
        if listed is not None:
            return listed
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "test"


def read_splits_file(root: str | Path) -> dict[str, str] | None:
    """``root/splits.json`` as ``{patient id: split}``; None when the file is absent.

    Raises:
        InputError: the file is not valid JSON, is not an object of id lists, names a split other
            than train/val/test (``validate``/``validation`` are read as val), or lists an id twice.
    """
    path = Path(root) / SPLITS_FILE
    if not path.is_file():
        return None
    fix = 'write it as {"train": ["P0001", ...], "val": [...], "test": [...]}, or delete it to use hash splits'
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(path, f"not readable UTF-8 JSON ({' '.join(str(error).split())})", fix) from None
    if not isinstance(data, dict) or not all(isinstance(v, list) and all(isinstance(i, str) for i in v) for v in data.values()):
        raise InputError(path, "expected an object of split name → list of patient ids", fix)
    assigned: dict[str, str] = {}
    for name, ids in data.items():
        split = _SPLIT_ALIASES.get(str(name).lower())
        if split is None:
            raise InputError(path, f"unknown split {name!r} (expected train, val, test)", fix)
        for patient_id in ids:
            if assigned.get(patient_id, split) != split:
                raise InputError(path, f"patient {patient_id!r} is in both {assigned[patient_id]} and {split}", "keep each patient in one split")
            assigned[patient_id] = split
    return assigned


def split_records(
    records: Iterable[R],
    *,
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    root: str | Path | None = None,
) -> dict[str, list[R]]:
    """Group records (anything with ``patient_id``) by split, keeping their order within each.

    The cohort's ``splits.json`` is honoured when present: ``root`` names the cohort folder; without
    it, the ``cohort_root`` that ``manifest.scan_cohort`` sets on each record is used (records without
    one, e.g. built by hand, get hash splits only).
    """
    groups: dict[str, list[R]] = {name: [] for name in SPLITS}
    files: dict[Path, dict[str, str] | None] = {}
    for record in records:
        cohort = Path(root) if root is not None else getattr(record, "cohort_root", None)
        assigned = None
        if cohort is not None:
            if cohort not in files:
                files[cohort] = read_splits_file(cohort)
            assigned = files[cohort]
        groups[split_of(record.patient_id, seed=seed, fractions=fractions, assigned=assigned)].append(record)  # type: ignore[attr-defined]
    return groups
