"""Phantom patients on disk: one canonical patient folder per patient, in parallel, deterministic.

A patient's random stream depends only on ``(seed, patient index)`` — ``SeedSequence([seed, index])``
spawned into independent children for anatomy, findings, each modality's noise and the report —
so a cohort is byte-identical whatever the number of workers, and patient 7 is the same patient in a
cohort of 8 or of 800.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medm2g_core.data.synth import findings as findings_module
from medm2g_core.data.synth import physics, reports
from medm2g_core.data.synth.anatomy_chest import Phantom, build_chest
from medm2g_core.data.synth.anatomy_head import build_head
from medm2g_core.data.synth.findings import Finding, check_anatomy, labels_of, resolve_prevalence, sample_findings
from medm2g_core.serialization import write_json
from medm2g_core.types import ImageMeta, ProgressEvent, ProgressFn, no_progress

SIZES = (32, 64, 128, 256)
"""Voxels per side accepted (32 is for tests; the CLI offers 64, 128, 256)."""

MRI_FILES = ("mri-t1", "mri-t2", "mri-pd")


@dataclass(frozen=True)
class SynthPatient:
    """What ``synthesize_patient`` wrote.

    Attributes:
        folder: the patient folder (``OUT/P0001``).
        labels: ``labels.json`` content (finding → 0/1).
        findings: present findings with their side, lobe and size.
        measurements: numbers quoted in the report (e.g. cardiothoracic ratio).
    """

    folder: Path
    labels: dict[str, int]
    findings: dict[str, Finding]
    measurements: dict[str, float]


def patient_id(index: int) -> str:
    """``P0001`` for index 0: the folder name of the ``index``-th patient."""
    return f"P{index + 1:04d}"


def _streams(seed: int, index: int) -> dict[str, np.random.Generator]:
    names = ("findings", "anatomy", "ct", "mri", "xray", "report", "devices")  # append only: a child's seed is its index
    children = np.random.SeedSequence([int(seed), int(index)]).spawn(len(names))
    return {name: np.random.default_rng(child) for name, child in zip(names, children)}


def _check(*, anatomy: str, size: int, patients: int | None = None, seed: int = 0) -> None:
    check_anatomy(anatomy)
    if size not in SIZES:
        raise ValueError(f"size {size} is not supported; use one of {', '.join(map(str, SIZES))}")
    if patients is not None and patients < 1:
        raise ValueError(f"patients must be at least 1, got {patients}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")


def build_patient(*, index: int, anatomy: str, seed: int, size: int = 64, prevalence: dict[str, float] | None = None,
                  images: bool = True) -> tuple[Phantom, dict[str, tuple[np.ndarray, ImageMeta]], str]:
    """Compute one patient in memory: its phantom, images and report text (nothing is written).

    Returns ``(phantom, images, report_text)`` where ``images`` maps a modality file stem to
    ``(array, ImageMeta)``: ``ct`` (int16 HU), ``mri-t1``/``mri-t2``/``mri-pd`` (int16 a.u.), and for
    the chest ``xray`` (uint16 PA DRR, rows superior → inferior, cols patient right → left).
    ``images=False`` renders none (``images`` is empty): the report is the same text as with them, since it draws
    from its own stream and quotes only the phantom's measurements.
    """
    _check(anatomy=anatomy, size=size, seed=seed)
    streams = _streams(seed, index)
    resolved = resolve_prevalence(anatomy, prevalence)
    present = sample_findings(streams["findings"], anatomy=anatomy, prevalence=resolved, device_rng=streams["devices"])
    if anatomy == "chest":
        phantom = build_chest(streams["anatomy"], size=size, findings=present, device_rng=streams["devices"])
    else:
        phantom = build_head(streams["anatomy"], size=size, findings=present)
    if not images:
        return phantom, {}, _report(phantom, present, anatomy=anatomy, rng=streams["report"])
    grid = phantom.grid
    # Head CT is reconstructed with a soft kernel and thick slices (low noise, GM/WM visible); the
    # chest with a standard kernel.
    ct = physics.ct_from_labels(phantom.labels, rng=streams["ct"], noise_hu=10.0 if anatomy == "chest" else 4.0)
    images: dict[str, tuple[np.ndarray, ImageMeta]] = {"ct": (ct, grid.meta(modality="ct", units="HU"))}
    bias = physics.bias_field(streams["mri"], grid)
    for name in MRI_FILES:
        volume = physics.mri_from_labels(phantom.labels, sequence=physics.SEQUENCES[name], bias=bias, rng=streams["mri"])
        images[name] = (volume, grid.meta(modality=name, units="a.u."))
    if anatomy == "chest":
        radiograph = physics.drr_from_ct(ct, grid=grid, rng=streams["xray"], excess_hu=physics.xray_excess_hu(phantom.labels))
        images["xray"] = (radiograph.image, radiograph.meta)
    return phantom, images, _report(phantom, present, anatomy=anatomy, rng=streams["report"])


def _report(phantom: Phantom, present: dict[str, Finding], *, anatomy: str, rng: np.random.Generator) -> str:
    if anatomy == "chest":
        return reports.chest_report(present, rng=rng, cardiothoracic_ratio=phantom.measurements["cardiothoracic_ratio"],
                                    ett_above_carina_cm=phantom.measurements.get("ett_above_carina_cm"))
    return reports.head_report(present, rng=rng)


def synthesize_patient(out: str | Path, *, index: int, anatomy: str, seed: int, size: int = 64,
                       prevalence: dict[str, float] | None = None, reports_only: bool = False) -> SynthPatient:
    """Write patient ``index`` of the cohort ``(anatomy, seed)`` to ``out/P{index+1:04d}``.

    Files: ``ct.nii.gz`` (HU, int16), ``mri-t1.nii.gz``, ``mri-t2.nii.gz``, ``mri-pd.nii.gz`` (int16
    a.u., same grid as the CT), ``xray.png`` (chest only: 16-bit PA DRR, pixel spacing in mm
    recorded), ``report.txt`` and ``labels.json``. Every file is marked synthetic. Volumes are
    ``size``³ voxels: chest 384 mm field of view (6 mm voxels at 64), head 224 mm (3.5 mm at 64).
    ``reports_only``: ``report.txt`` and ``labels.json`` alone, no image rendered (a report corpus).
    """
    from medm2g_core import io

    phantom, images, text = build_patient(index=index, anatomy=anatomy, seed=seed, size=size, prevalence=prevalence,
                                          images=not reports_only)
    folder = Path(out) / patient_id(index)
    folder.mkdir(parents=True, exist_ok=True)
    for name, (array, meta) in images.items():
        io.write(folder / (f"{name}.png" if array.ndim == 2 else f"{name}.nii.gz"), array, meta)
    io.write_report(folder / "report.txt", text, synthetic=True)
    labels = labels_of(phantom.findings, anatomy=anatomy)
    write_json(folder / "labels.json", labels)
    return SynthPatient(folder=folder, labels=labels, findings=phantom.findings, measurements=phantom.measurements)


def _synthesize_one(args: tuple) -> str:
    out, index, anatomy, seed, size, prevalence, reports_only = args
    return str(synthesize_patient(out, index=index, anatomy=anatomy, seed=seed, size=size, prevalence=prevalence,
                                  reports_only=reports_only).folder)


def default_workers() -> int:
    """Worker processes used when ``workers`` is None: the CPUs this process may use (at most 8)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        available = os.cpu_count() or 1
    return max(1, min(8, available))


def synthesize_cohort(out: str | Path, *, patients: int, anatomy: str, seed: int, size: int = 64,
                      workers: int | None = None, prevalence: dict[str, float] | None = None,
                      reports_only: bool = False, progress: ProgressFn = no_progress) -> list[Path]:
    """Write ``patients`` phantom patients ``out/P0001 ...`` and return their folders in order.

    Args:
        out: cohort folder (created if missing; existing patient folders are overwritten).
        patients: number of patients (≥ 1).
        anatomy: ``"chest"`` or ``"head"``.
        seed: cohort seed (≥ 0); the same seed gives byte-identical files.
        size: voxels per side of every volume (32, 64, 128 or 256); the DRR is ``size × size``.
        workers: processes; ``0`` computes in this process, None uses ``default_workers()``.
        prevalence: probability of each finding (defaults in ``findings.DEFAULT_PREVALENCE``).
        reports_only: write each patient's ``report.txt`` and ``labels.json`` only, no image: a report corpus for
            the text autoencoder (the phantom is still built, as its report quotes its measurements; ~4× faster).
        progress: receives a ``ProgressEvent`` after every finished patient.
    """
    _check(anatomy=anatomy, size=size, patients=patients, seed=seed)
    resolve_prevalence(anatomy, prevalence)  # fail before starting workers
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), index, anatomy, int(seed), int(size), dict(prevalence or {}), bool(reports_only)) for index in range(patients)]
    workers = default_workers() if workers is None else int(workers)
    folders: list[Path] = []
    task = f"synth {anatomy}"
    progress(ProgressEvent(task=task, completed=0, total=patients))
    if workers == 0 or patients == 1:
        for job in jobs:
            folders.append(Path(_synthesize_one(job)))
            progress(ProgressEvent(task=task, completed=len(folders), total=patients))
        return folders
    with ProcessPoolExecutor(max_workers=min(workers, patients)) as pool:
        for folder in pool.map(_synthesize_one, jobs, chunksize=1):
            folders.append(Path(folder))
            progress(ProgressEvent(task=task, completed=len(folders), total=patients))
    return folders
