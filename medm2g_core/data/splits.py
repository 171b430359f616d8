"""Deterministic patient-level train/val/test splits from a hash of the patient id.

A patient's split depends only on its id, the seed and the fractions — never on which other patients
are in the cohort or on their order — so adding patients never moves existing ones between splits.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence, TypeVar

SPLITS = ("train", "val", "test")
R = TypeVar("R")


def split_of(patient_id: str, *, seed: int = 0, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for ``patient_id``: ``u = sha256(seed:id)`` mapped to [0, 1)."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError("fractions must be three numbers (train, val, test) summing to 1")
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "test"


def split_records(records: Iterable[R], *, seed: int = 0, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> dict[str, list[R]]:
    """Group records (anything with ``patient_id``) by split, keeping their order within each."""
    groups: dict[str, list[R]] = {name: [] for name in SPLITS}
    for record in records:
        groups[split_of(record.patient_id, seed=seed, fractions=fractions)].append(record)  # type: ignore[attr-defined]
    return groups
