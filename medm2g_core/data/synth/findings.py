"""Which findings a phantom patient has: names, prevalence and the sampled details.

A ``Finding`` only describes what is present (side, lobe, size, devices); the anatomy modules turn it
into tissue changes and ``reports`` into words, so images, report and labels always agree.

``support_devices`` (CheXpert's label of the same name) is a finding whose details are the devices a
patient carries — endotracheal and enteric tubes, a central venous catheter, a pacemaker with leads,
sternotomy wires, a chest drain — each with its side. They are bright, patient-specific and named in
most real reports, which makes them what tells two otherwise similar radiographs apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHEST_FINDINGS = ("cardiomegaly", "effusion", "nodule", "pneumothorax", "consolidation", "support_devices")
HEAD_FINDINGS = ("tumour", "ventriculomegaly")
FINDINGS: dict[str, tuple[str, ...]] = {"chest": CHEST_FINDINGS, "head": HEAD_FINDINGS}
"""Label names per anatomy, in report order; they are the keys of ``labels.json``."""

DEFAULT_PREVALENCE: dict[str, dict[str, float]] = {
    "chest": {"cardiomegaly": 0.3, "effusion": 0.3, "nodule": 0.25, "pneumothorax": 0.15, "consolidation": 0.25,
              "support_devices": 0.5},
    "head": {"tumour": 0.4, "ventriculomegaly": 0.3},
}

LOBES: dict[str, tuple[str, ...]] = {"right": ("upper", "middle", "lower"), "left": ("upper", "lower")}
BRAIN_LOBES = ("frontal", "parietal", "temporal", "occipital")

DEVICE_KINDS = ("endotracheal_tube", "enteric_tube", "central_line", "pacemaker", "sternotomy_wires", "chest_tube")
"""Support devices in report order."""
DEVICE_PROBABILITY = {"endotracheal_tube": 0.3, "enteric_tube": 0.3, "central_line": 0.45, "pacemaker": 0.35,
                      "sternotomy_wires": 0.3, "chest_tube": 0.6}
"""Chance of each device in a patient with ``support_devices`` (a chest tube only beside an effusion or
pneumothorax, on its side); a patient drawn with devices has at least one."""
CENTRAL_LINE_ROUTES = ("right jugular", "left jugular", "right subclavian", "left subclavian")


@dataclass(frozen=True)
class Device:
    """One support device: ``kind`` from ``DEVICE_KINDS``; ``side`` "left"/"right" where it has one
    (pacemaker generator, chest tube, central line entry); ``route`` "jugular"/"subclavian" for a central line."""

    kind: str
    side: str | None = None
    route: str | None = None


@dataclass(frozen=True)
class Finding:
    """One present finding.

    Attributes:
        name: one of ``FINDINGS[anatomy]``.
        side: "left", "right", "bilateral" or None (patient's side).
        lobe: lung lobe ("upper", "middle", "lower") or brain lobe, when it has one.
        size_mm: nodule/tumour diameter, pneumothorax rim depth or effusion height, in mm.
        grade: "small", "moderate", "large", "mild", "marked" where the report grades it.
        devices: the ``Device`` records of ``support_devices`` (empty for every other finding).
    """

    name: str
    side: str | None = None
    lobe: str | None = None
    size_mm: float | None = None
    grade: str | None = None
    devices: tuple[Device, ...] = ()


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


def sample_findings(rng: np.random.Generator, *, anatomy: str, prevalence: dict[str, float],
                    device_rng: np.random.Generator | None = None) -> dict[str, Finding]:
    """Draw the present findings of one patient (name → ``Finding``); absent ones are left out.

    Each finding is drawn independently with its prevalence; the details are drawn even when absent
    so that changing one prevalence does not reshuffle the others. ``support_devices`` is drawn last,
    from ``device_rng`` (default ``rng``): a separate stream keeps every other finding of a cohort
    seed what it was before devices existed.
    """
    present: dict[str, Finding] = {}
    for name in FINDINGS[anatomy]:
        if name == "support_devices":
            continue
        draw = rng.random()
        finding = _details(rng, name)
        if draw < prevalence[name]:
            present[name] = finding
    if "support_devices" in FINDINGS[anatomy]:
        device_rng = rng if device_rng is None else device_rng
        draw = device_rng.random()
        devices = sample_devices(device_rng, present)
        if draw < prevalence["support_devices"]:
            present["support_devices"] = Finding("support_devices", devices=devices)
    return present


def sample_devices(rng: np.random.Generator, present: dict[str, Finding]) -> tuple[Device, ...]:
    """The devices of a patient with ``support_devices`` (at least one), given its other findings.

    A chest tube goes on the side of an effusion or pneumothorax and is only drawn with one. Every
    random number is drawn whatever the outcome, so the stream stays aligned across patients.
    """
    draws = {kind: rng.random() for kind in DEVICE_KINDS}
    pacemaker_side = str(rng.choice(["left", "right"], p=[0.8, 0.2]))
    route = str(rng.choice(CENTRAL_LINE_ROUTES, p=[0.5, 0.15, 0.15, 0.2]))
    pleural = [present[name].side for name in ("pneumothorax", "effusion") if name in present]
    tube_side = str(rng.choice(["right", "left"]))
    if pleural and pleural[0] != "bilateral":
        tube_side = str(pleural[0])
    chosen = [kind for kind in DEVICE_KINDS if draws[kind] < DEVICE_PROBABILITY[kind] and (kind != "chest_tube" or pleural)]
    if not chosen:  # at least one device: the most likely of the rest
        candidates = [kind for kind in DEVICE_KINDS if kind != "chest_tube" or pleural]
        chosen = [min(candidates, key=lambda kind: draws[kind] / DEVICE_PROBABILITY[kind])]
    devices = []
    for kind in DEVICE_KINDS:
        if kind not in chosen:
            continue
        if kind == "pacemaker":
            devices.append(Device(kind, side=pacemaker_side))
        elif kind == "chest_tube":
            devices.append(Device(kind, side=tube_side))
        elif kind == "central_line":
            side, via = route.split()
            devices.append(Device(kind, side=side, route=via))
        else:
            devices.append(Device(kind))
    return tuple(devices)


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
