"""Imaging physics of the phantoms: tissue properties, CT in HU, spin-echo MRI and the chest DRR.

Every modality is computed from the same tissue-label volume, so the images of one patient are
registered voxel for voxel and a finding changes all of them consistently.

Symbols (this module only): ``T1``, ``T2`` relaxation times in ms; ``PD`` relative proton density
(water = 1); ``TR``, ``TE`` repetition and echo times in ms; ``mu`` linear attenuation in 1/mm;
``L`` the line integral of ``mu`` along a ray (dimensionless).

Sources for the tissue values at 1.5 T (rounded; the phantoms need plausible contrast, not a
quantitative reference): Stanisz et al., MRM 2005 (muscle, heart, liver, cartilage, WM/GM),
de Bazelaire et al., Radiology 2004 (liver, fat, marrow), Wansapura et al., JMRI 1999 and
Bojorquez et al., MRI 2017 (brain, CSF, fat). CT numbers: the usual textbook ranges (air −1000,
lung about −850, fat about −100, water 0, soft tissue 40, blood 40–50, bone 700–1500).
Flowing blood is given a small effective PD: spin-echo images show a flow void in the heart and
great vessels ("black blood").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage

from medm2g_core.data.synth.geometry import FLOAT, Grid, lookup
from medm2g_core.types import ImageMeta

MU_WATER_PER_MM = 0.0206
"""Linear attenuation of water at the ~60 keV effective energy of a 120 kVp chest beam (1/mm)."""

MRI_SCALE = 4000.0
"""Stored MRI value = signal (fraction of the fully relaxed water signal) × this, as int16 a.u."""


class Tissue(IntEnum):
    """Tissue classes of the label volumes (shared by chest and head phantoms)."""

    AIR = 0
    SKIN = 1
    FAT = 2
    MUSCLE = 3
    LUNG = 4
    LUNG_VESSEL = 5
    BLOOD = 6
    MYOCARDIUM = 7
    MEDIASTINUM = 8
    CORTICAL_BONE = 9
    CANCELLOUS_BONE = 10
    AIRWAY = 11
    CARTILAGE = 12
    LIVER = 13
    ABDOMEN = 14
    BOWEL_GAS = 15
    SPINAL_CORD = 16
    CSF = 17
    GREY_MATTER = 18
    WHITE_MATTER = 19
    SCALP = 20
    VITREOUS = 21
    EFFUSION = 22
    CONSOLIDATION = 23
    NODULE = 24
    PLEURAL_AIR = 25
    TUMOUR = 26
    OEDEMA = 27
    METAL = 28
    TUBING = 29


@dataclass(frozen=True)
class TissueProperties:
    """Physical properties of one tissue: CT number (HU), T1 and T2 at 1.5 T (ms), relative PD."""

    hu: float
    t1_ms: float
    t2_ms: float
    pd: float


TISSUES: dict[Tissue, TissueProperties] = {
    Tissue.AIR: TissueProperties(hu=-1000, t1_ms=1, t2_ms=1, pd=0.0),
    Tissue.SKIN: TissueProperties(hu=30, t1_ms=650, t2_ms=45, pd=0.75),
    Tissue.FAT: TissueProperties(hu=-100, t1_ms=260, t2_ms=85, pd=0.95),
    Tissue.MUSCLE: TissueProperties(hu=45, t1_ms=1000, t2_ms=44, pd=0.80),
    Tissue.LUNG: TissueProperties(hu=-850, t1_ms=1200, t2_ms=40, pd=0.12),
    Tissue.LUNG_VESSEL: TissueProperties(hu=40, t1_ms=1440, t2_ms=290, pd=0.15),  # flowing blood
    Tissue.BLOOD: TissueProperties(hu=45, t1_ms=1440, t2_ms=290, pd=0.12),  # flow void in spin echo
    Tissue.MYOCARDIUM: TissueProperties(hu=45, t1_ms=1030, t2_ms=40, pd=0.80),
    Tissue.MEDIASTINUM: TissueProperties(hu=-60, t1_ms=320, t2_ms=75, pd=0.90),  # fat with vessels, nodes
    Tissue.CORTICAL_BONE: TissueProperties(hu=1400, t1_ms=1000, t2_ms=1, pd=0.05),
    Tissue.CANCELLOUS_BONE: TissueProperties(hu=700, t1_ms=550, t2_ms=50, pd=0.75),  # trabeculae + fatty marrow
    Tissue.AIRWAY: TissueProperties(hu=-1000, t1_ms=1, t2_ms=1, pd=0.0),
    Tissue.CARTILAGE: TissueProperties(hu=90, t1_ms=1100, t2_ms=40, pd=0.70),  # airway rings, discs, costal cartilage
    Tissue.LIVER: TissueProperties(hu=60, t1_ms=586, t2_ms=46, pd=0.75),
    Tissue.ABDOMEN: TissueProperties(hu=35, t1_ms=900, t2_ms=70, pd=0.80),  # bowel, spleen, stomach wall
    Tissue.BOWEL_GAS: TissueProperties(hu=-1000, t1_ms=1, t2_ms=1, pd=0.0),
    Tissue.SPINAL_CORD: TissueProperties(hu=30, t1_ms=790, t2_ms=80, pd=0.70),
    Tissue.CSF: TissueProperties(hu=5, t1_ms=4000, t2_ms=2000, pd=1.00),
    Tissue.GREY_MATTER: TissueProperties(hu=40, t1_ms=1090, t2_ms=100, pd=0.80),
    Tissue.WHITE_MATTER: TissueProperties(hu=28, t1_ms=790, t2_ms=80, pd=0.70),
    Tissue.SCALP: TissueProperties(hu=-40, t1_ms=380, t2_ms=70, pd=0.85),  # skin, fat and galea
    Tissue.VITREOUS: TissueProperties(hu=10, t1_ms=4000, t2_ms=1500, pd=1.00),
    Tissue.EFFUSION: TissueProperties(hu=10, t1_ms=3000, t2_ms=1200, pd=0.97),  # simple (transudative) fluid
    Tissue.CONSOLIDATION: TissueProperties(hu=35, t1_ms=1100, t2_ms=120, pd=0.80),  # fluid-filled alveoli
    Tissue.NODULE: TissueProperties(hu=40, t1_ms=1000, t2_ms=90, pd=0.80),
    Tissue.PLEURAL_AIR: TissueProperties(hu=-1000, t1_ms=1, t2_ms=1, pd=0.0),
    Tissue.TUMOUR: TissueProperties(hu=35, t1_ms=1300, t2_ms=130, pd=0.85),
    Tissue.OEDEMA: TissueProperties(hu=18, t1_ms=1350, t2_ms=250, pd=0.90),  # vasogenic oedema
    # Devices, as the mean attenuation of a coarse voxel they partly fill: metal (pacemaker can with its
    # battery, sternal wires: titanium and steel are 15–45× water at 60 keV) and tubing (tubes, catheters
    # and leads, dominated by their barium stripe). Both exceed the CT scale, which saturates at its top;
    # the radiograph sees the rest (``xray_excess_hu``), so devices stand out on the DRR as on a film.
    # Neither gives MR signal.
    Tissue.METAL: TissueProperties(hu=20000, t1_ms=1, t2_ms=1, pd=0.0),
    Tissue.TUBING: TissueProperties(hu=6000, t1_ms=1, t2_ms=1, pd=0.0),
}

assert set(TISSUES) == set(Tissue), "every tissue class needs properties"


def _table(attribute: str) -> np.ndarray:
    return np.array([getattr(TISSUES[t], attribute) for t in sorted(Tissue)], dtype=FLOAT)


@dataclass(frozen=True)
class SpinEcho:
    """A spin-echo acquisition: repetition time and echo time in ms."""

    name: str
    tr_ms: float
    te_ms: float


SEQUENCES: dict[str, SpinEcho] = {
    "mri-t1": SpinEcho("mri-t1", tr_ms=500.0, te_ms=15.0),
    "mri-t2": SpinEcho("mri-t2", tr_ms=4000.0, te_ms=100.0),
    "mri-pd": SpinEcho("mri-pd", tr_ms=3000.0, te_ms=15.0),
}
"""T1-weighted (short TR, short TE), T2-weighted (long TR, long TE), PD-weighted (long TR, short TE)."""


def spin_echo_signal(pd: np.ndarray | float, t1_ms: np.ndarray | float, t2_ms: np.ndarray | float, *,
                     tr_ms: float, te_ms: float) -> np.ndarray:
    """Spin-echo signal ``S = PD · (1 − exp(−TR/T1)) · exp(−TE/T2)`` (fraction of fully relaxed water)."""
    return np.asarray(pd * (1.0 - np.exp(-tr_ms / np.asarray(t1_ms))) * np.exp(-te_ms / np.asarray(t2_ms)), dtype=FLOAT)


def tissue_signal(sequence: SpinEcho) -> np.ndarray:
    """Per-tissue spin-echo signal for ``sequence``, indexed by ``Tissue`` value."""
    return spin_echo_signal(_table("pd"), _table("t1_ms"), _table("t2_ms"), tr_ms=sequence.tr_ms, te_ms=sequence.te_ms)


def hu_table() -> np.ndarray:
    """Per-tissue CT number in HU, indexed by ``Tissue`` value."""
    return _table("hu")


def partial_volume(values: np.ndarray, *, sigma_voxels: float = 0.45) -> np.ndarray:
    """Mimic voxel integration and the scanner's point spread with a small Gaussian blur."""
    return ndimage.gaussian_filter(values, sigma_voxels, mode="nearest").astype(FLOAT)


CT_RANGE_HU = (-1024, 3071)
"""What a 12-bit CT stores; denser material (metal) saturates at the top."""


def ct_from_labels(labels: np.ndarray, *, rng: np.random.Generator, noise_hu: float = 14.0) -> np.ndarray:
    """CT volume in HU (int16) from a tissue-label volume.

    Tissue HU → partial-volume blur → additive correlated Gaussian noise of standard deviation
    ``noise_hu`` (white noise low-passed like a CT reconstruction kernel, then rescaled) → clipped
    to the scanner range ``CT_RANGE_HU``.
    """
    hu = partial_volume(lookup(labels, hu_table()))
    noise = ndimage.gaussian_filter(rng.standard_normal(labels.shape).astype(FLOAT), 0.6, mode="wrap")
    noise *= noise_hu / max(float(noise.std()), 1e-6)
    return np.clip(np.rint(hu + noise), *CT_RANGE_HU).astype(np.int16)


def xray_excess_hu(labels: np.ndarray) -> np.ndarray | None:
    """HU beyond the CT scale (metal), partial-volumed like the CT: what a radiograph computed from the
    saturated CT would miss. None when no tissue of ``labels`` exceeds ``CT_RANGE_HU``."""
    table = hu_table()
    excess = np.maximum(table - CT_RANGE_HU[1], 0.0).astype(FLOAT)
    if not excess[np.unique(labels)].any():
        return None
    return partial_volume(lookup(labels, excess))


def bias_field(rng: np.random.Generator, grid: Grid, *, strength: float = 0.12) -> np.ndarray:
    """Smooth multiplicative receive-coil bias ``exp(strength · f)``, f a unit-std field of ~150 mm scale."""
    from medm2g_core.data.synth.geometry import smooth_field

    return np.exp(strength * smooth_field(rng, grid, correlation_mm=150.0)).astype(FLOAT)


def mri_from_labels(labels: np.ndarray, *, sequence: SpinEcho, bias: np.ndarray, rng: np.random.Generator,
                    noise: float = 0.01) -> np.ndarray:
    """Magnitude spin-echo image (int16, a.u. = signal × ``MRI_SCALE``) from a tissue-label volume.

    Signal per tissue from ``spin_echo_signal`` → partial-volume blur → × ``bias`` → Rician noise
    (magnitude of a complex signal with Gaussian noise of std ``noise`` in each channel, in units of
    the fully relaxed water signal).
    """
    signal = partial_volume(lookup(labels, tissue_signal(sequence))) * bias
    real = signal + noise * rng.standard_normal(labels.shape).astype(FLOAT)
    imaginary = noise * rng.standard_normal(labels.shape).astype(FLOAT)
    magnitude = np.sqrt(real * real + imaginary * imaginary)
    return np.clip(np.rint(magnitude * MRI_SCALE), 0, 32767).astype(np.int16)


def attenuation_from_hu(hu: np.ndarray) -> np.ndarray:
    """Linear attenuation ``mu = mu_water · (1 + HU/1000)`` in 1/mm, clipped at 0 (air)."""
    return np.maximum(MU_WATER_PER_MM * (1.0 + np.asarray(hu, dtype=FLOAT) / 1000.0), 0.0).astype(FLOAT)


@dataclass(frozen=True)
class Radiograph:
    """A PA chest DRR: 16-bit display image, the line integrals behind it and its geometry."""

    image: np.ndarray
    """uint16 ``(rows, cols)``: rows superior → inferior, cols patient right → left (as a PA film is viewed)."""
    line_integral: np.ndarray
    """float32 ``(rows, cols)``: ``L = ∫ mu dl`` along each ray (before noise), same layout."""
    meta: ImageMeta


DRR_WINDOW = (1.2, 8.5)
"""Line-integral window mapped to black → white (air → dense spine/heart)."""


def drr_from_ct(hu: np.ndarray, *, grid: Grid, rng: np.random.Generator, photons_per_mm2: float = 2.0e4,
                excess_hu: np.ndarray | None = None) -> Radiograph:
    """Digitally reconstructed PA radiograph of a CT volume (parallel beam along anterior–posterior).

    ``L = Σ_j mu(i, j, k) · spacing_y`` (Beer–Lambert: ``I = I0 · exp(−L)``); quantum noise is
    Poisson on ``I`` with ``I0 = photons_per_mm2 ×`` pixel area; the display value is the windowed
    log signal ``−log(I/I0)`` so that high attenuation (bone, heart) is bright as on a radiograph.
    The image is laid out as a PA film is read: row 0 is the most superior row and column 0 the
    patient's right side (on the viewer's left). Pixel spacing (mm) = ``(spacing_z, spacing_x)``.
    ``excess_hu`` (``xray_excess_hu``) adds back what the CT's range clipped off (metal).
    """
    mu = attenuation_from_hu(hu if excess_hu is None else np.asarray(hu, dtype=FLOAT) + excess_hu)
    line = mu.sum(axis=1) * grid.spacing[1]  # (x, z)
    line = line.T[::-1, :].astype(FLOAT)  # rows: superior → inferior; cols: right → left
    pixel_area = grid.spacing[0] * grid.spacing[2]
    incident = photons_per_mm2 * pixel_area
    counts = rng.poisson(incident * np.exp(-line.astype(np.float64)))
    measured = -np.log(np.maximum(counts, 1) / incident)
    measured = ndimage.gaussian_filter(measured, 0.5, mode="nearest")  # focal spot and detector blur
    low, high = DRR_WINDOW
    display = np.clip((measured - low) / (high - low), 0.0, 1.0) ** 0.9
    image = np.rint(display * 65535).astype(np.uint16)
    rows, cols = image.shape
    origin = (grid.origin[0], 0.0, -grid.origin[2])  # patient right, mid-depth, most superior
    meta = ImageMeta(
        spacing=(float(grid.spacing[2]), float(grid.spacing[0])),
        origin=tuple(float(v) for v in origin),
        # Columns of the direction matrix: rows run inferior (−S), cols run left (+L), the beam runs anterior (−P).
        direction=((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0)),
        shape=(rows, cols),
        units="a.u.",
        modality="xray",
        source_format="synthetic",
        synthetic=True,
        extra={"view": "PA", "projection": "parallel-beam DRR", "rows": "superior to inferior",
               "cols": "patient right to left (right on image left)"},
    )
    return Radiograph(image=image, line_integral=line, meta=meta)
