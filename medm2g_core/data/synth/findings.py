"""Which findings a phantom patient has: names, prevalence and the sampled details.

A ``Finding`` only describes what is present (side, lobe, size); the anatomy modules turn it into
tissue changes and ``reports`` into words, so images, report and labels always agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHEST_FINDINGS = ("cardiomegaly", "effusion", "nodule", "pneumothorax", "consolidation")
HEAD_FINDINGS = ("tumour", "ventriculomegaly")
FINDINGS: dict[str, tuple[str, ...]] = {"chest": CHEST_FINDINGS, "head": HEAD_FINDINGS}
"""Label names per anatomy, in report order; they are the keys of ``labels.json``."""

DEFAULT_PREVALENCE: dict[str, dict[str, float]] = {
    "chest": {"cardiomegaly": 0.3, "effusion": 0.3, "nodule": 0.25, "pneumothorax": 0.15, "consolidation": 0.25},
    "head": {"tumour": 0.4, "ventriculomegaly": 0.3},
}

LOBES: dict[str, tuple[str, ...]] = {"right": ("upper", "middle", "lower"), "left": ("upper", "lower")}
BRAIN_LOBES = ("frontal", "parietal", "temporal", "occipital")


@dataclass(frozen=True)
class Finding:
    """One present finding.

    Attributes:
        name: one of ``FINDINGS[anatomy]``.
        side: "left", "right", "bilateral" or None (patient's side).
        lobe: lung lobe ("upper", "middle", "lower") or brain lobe, when it has one.
        size_mm: nodule/tumour diameter, pneumothorax rim depth or effusion height, in mm.
        grade: "small", "moderate", "large", "mild", "marked" where the report grades it.
    """

    name: str
    side: str | None = None
    lobe: str | None = None
    size_mm: float | None = None
    grade: str | None = None


def check_anatomy(anatomy: str) -> str:
    """Return ``anatomy`` if known, else raise ``ValueError`` naming the valid ones."""
    if anatomy not in FINDINGS:
        raise ValueError(f"unknown anatomy {anatomy!r}; valid: {', '.join(FINDINGS)}")
    return anatomy


def resolve_prevalence(anatomy: str, prevalence: dict[str, float] | None) -> dict[str, float]:
    """Defaults for ``anatomy`` overridden by ``prevalence``; unknown names or values outside [0, 1] raise ``ValueError``."""
    check_anatomy(anatomy)
    resolved = dict(DEFAULT_PREVALENCE[anatomy])
    for name, value in (prevalence or {}).items():
        if name not in resolved:
            raise ValueError(f"unknown {anatomy} finding {name!r} in prevalence; valid: {', '.join(FINDINGS[anatomy])}")
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"prevalence of {name} must be a probability in [0, 1], got {value}")
        resolved[name] = float(value)
    return resolved


def sample_findings(rng: np.random.Generator, *, anatomy: str, prevalence: dict[str, float]) -> dict[str, Finding]:
    """Draw the present findings of one patient (name → ``Finding``); absent ones are left out.

    Each finding is drawn independently with its prevalence; the details are drawn even when absent
    so that changing one prevalence does not reshuffle the others.
    """
    present: dict[str, Finding] = {}
    for name in FINDINGS[anatomy]:
        draw = rng.random()
        finding = _details(rng, name)
        if draw < prevalence[name]:
            present[name] = finding
    return present


def _details(rng: np.random.Generator, name: str) -> Finding:
    side = str(rng.choice(["right", "left"]))
    if name == "cardiomegaly":
        return Finding(name, grade=str(rng.choice(["mild", "moderate", "marked"], p=[0.45, 0.35, 0.2])))
    if name == "effusion":
        side = str(rng.choice(["right", "left", "bilateral"], p=[0.4, 0.3, 0.3]))
        grade = str(rng.choice(["small", "moderate", "large"], p=[0.45, 0.4, 0.15]))
        height = {"small": rng.uniform(35, 55), "moderate": rng.uniform(70, 100), "large": rng.uniform(120, 160)}[grade]
        return Finding(name, side=side, size_mm=round(float(height)), grade=grade)
    if name == "nodule":
        lobe = str(rng.choice(LOBES[side]))
        return Finding(name, side=side, lobe=lobe, size_mm=round(float(rng.uniform(8, 30))))
    if name == "pneumothorax":
        grade = str(rng.choice(["small", "large"], p=[0.6, 0.4]))
        depth = rng.uniform(10, 22) if grade == "small" else rng.uniform(30, 50)
        return Finding(name, side=side, size_mm=round(float(depth)), grade=grade)
    if name == "consolidation":
        return Finding(name, side=side, lobe=str(rng.choice(LOBES[side])))
    if name == "tumour":
        return Finding(name, side=side, lobe=str(rng.choice(BRAIN_LOBES)), size_mm=round(float(rng.uniform(15, 45))))
    if name == "ventriculomegaly":
        return Finding(name, grade=str(rng.choice(["mild", "moderate", "marked"], p=[0.4, 0.4, 0.2])))
    raise AssertionError(name)


def labels_of(findings: dict[str, Finding], *, anatomy: str) -> dict[str, int]:
    """``labels.json`` content: every finding of ``anatomy`` → 1 if present else 0."""
    return {name: int(name in findings) for name in FINDINGS[anatomy]}
