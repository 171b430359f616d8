"""Head phantom: a tissue-label volume of the head with findings applied.

Same frame as the chest (x right → left, y anterior → posterior, z inferior → superior, mm, origin at
the centre of the field of view). Structures: scalp, skull (outer and inner cortical tables around
fatty diploë), skull base, subarachnoid CSF and sulci, folded cortical grey matter over white
matter, interhemispheric fissure, deep grey nuclei (thalami, lentiform and caudate nuclei), lateral
ventricles with frontal, occipital and temporal horns, third and fourth ventricles, cerebellum,
brainstem, orbits with globes, nasal cavity and maxillary sinuses, neck with cervical spine and
airway. Per-patient variation: head size and shape, scalp and cortex thickness, folding pattern,
ventricle size, a smooth deformation.
"""

from __future__ import annotations

import numpy as np

from medm2g_core.data.synth.anatomy_chest import Phantom
from medm2g_core.data.synth.findings import Finding
from medm2g_core.data.synth.geometry import Grid, ellipsoid, smooth_field, tube, warp_labels
from medm2g_core.data.synth.physics import Tissue

HEAD_FOV_MM = 224.0
"""Field of view per axis (mm): 3.5 mm voxels at size 64, 1.75 mm at 128, 0.875 mm at 256."""

VENTRICLE_SCALE = {None: 1.0, "mild": 1.6, "moderate": 2.0, "marked": 2.5}


def head_grid(size: int) -> Grid:
    """The head grid for ``size`` voxels per side (isotropic, ``HEAD_FOV_MM`` field of view)."""
    spacing = HEAD_FOV_MM / size
    return Grid(shape=(size, size, size), spacing=(spacing, spacing, spacing))


def build_head(rng: np.random.Generator, *, size: int, findings: dict[str, Finding]) -> Phantom:
    """Build one head phantom with ``findings`` applied; deterministic for the state of ``rng``."""
    grid = head_grid(size)
    x, y, z = grid.axes()
    T = Tissue
    thin = 0.5 * grid.spacing[0]  # thinnest structure still drawn on this grid (mm)

    a, b, c = rng.uniform(68, 78), rng.uniform(88, 100), rng.uniform(85, 98)
    centre = (0.0, rng.uniform(-4, 4), rng.uniform(8, 16))
    scalp, outer_table, diploe, inner_table, csf_layer = rng.uniform(5, 8), 2.0, rng.uniform(2.5, 4.5), 2.0, rng.uniform(2.5, 4.0)

    def shell(offset: float) -> np.ndarray:
        return ellipsoid(x, y, z, centre=centre, radii=(a - offset, b - offset, c - offset)) < 1.0

    yc, zc = y - centre[1], z - centre[2]
    # Floor of the cranial cavity: anterior and middle fossae higher, posterior fossa lower.
    posterior = 1.0 / (1.0 + np.exp(-(yc - 0.2 * b) / 8.0))
    floor = -0.42 * c + (-0.78 * c + 0.42 * c) * posterior
    tentorium = -0.30 * c + 0.0 * yc

    labels = np.zeros(grid.shape, dtype=np.uint8)
    cranium = shell(0.0) & (zc > floor - 14.0)
    face = ellipsoid(x, y, z, centre=(0.0, centre[1] - 0.35 * b, centre[2] - 0.55 * c), radii=(0.8 * a, 0.62 * b, 0.55 * c)) < 1.0
    neck = (((x / (0.7 * a)) ** 2 + ((yc - 0.12 * b) / (0.62 * b)) ** 2) < 1.0) & (zc < -0.45 * c)
    head = cranium | face | neck
    labels[head] = T.MUSCLE
    labels[head & (smooth_field(rng, grid, correlation_mm=25.0) > 0.7) & ~cranium] = T.FAT
    labels[cranium] = T.SCALP
    labels[shell(scalp) & cranium] = T.CORTICAL_BONE
    labels[shell(scalp + outer_table) & cranium] = T.CANCELLOUS_BONE
    labels[shell(scalp + outer_table + diploe) & cranium] = T.CORTICAL_BONE
    inner = shell(scalp + outer_table + diploe + inner_table)
    intracranial = inner & (zc > floor)
    labels[inner & (zc <= floor) & (zc > floor - 10.0)] = T.CORTICAL_BONE  # skull base
    labels[intracranial] = T.CSF

    # Face: orbits with globes, nasal cavity and maxillary sinuses; neck: spine and airway.
    for side in (-1.0, 1.0):
        orbit = (side * 0.42 * a, centre[1] - 0.74 * b, centre[2] - 0.32 * c)
        labels[(ellipsoid(x, y, z, centre=orbit, radii=(17, 17, 15)) < 1.0) & head & ~intracranial] = T.FAT
        labels[(ellipsoid(x, y, z, centre=orbit, radii=(12, 12, 12)) < 1.0) & head & ~intracranial] = T.VITREOUS
        sinus = (side * 0.3 * a, centre[1] - 0.55 * b, centre[2] - 0.66 * c)
        labels[(ellipsoid(x, y, z, centre=sinus, radii=(13, 17, 15)) < 1.0) & head & ~intracranial] = T.AIRWAY
    nasal = (0.0, centre[1] - 0.66 * b, centre[2] - 0.6 * c)
    labels[(ellipsoid(x, y, z, centre=nasal, radii=(max(7.0, thin), 22, 20)) < 1.0) & head & ~intracranial] = T.AIRWAY
    spine_y = centre[1] + 0.28 * b
    neck_z = centre[2] - 0.5 * c
    bottom = grid.origin[2] - 10.0
    labels[tube(x, y, z, points=[(0, spine_y, neck_z), (0, spine_y + 4, bottom)], radius=11.0) & head] = T.CORTICAL_BONE
    labels[tube(x, y, z, points=[(0, spine_y, neck_z), (0, spine_y + 4, bottom)], radius=8.0) & head] = T.CANCELLOUS_BONE
    labels[tube(x, y, z, points=[(0, spine_y + 18, neck_z + 10), (0, spine_y + 20, bottom)], radius=7.0) & head] = T.CSF
    labels[tube(x, y, z, points=[(0, centre[1] - 0.08 * b, neck_z + 12), (0, centre[1] - 0.12 * b, bottom)], radius=8.0) & head] = T.AIRWAY

    # Cerebrum: white matter under a folded grey-matter cortex with CSF-filled sulci.
    brain_offset = scalp + outer_table + diploe + inner_table + csf_layer
    radii = (a - brain_offset, b - brain_offset, c - brain_offset)
    norm = ellipsoid(x, y, z, centre=centre, radii=radii)
    depth = (1.0 - norm) * (sum(radii) / 3.0)  # approximate depth below the brain surface (mm)
    cerebrum = (norm < 1.0) & (zc > np.maximum(floor + 3.0, np.where(yc > 0.2 * b, tentorium, floor + 3.0))) & intracranial
    cortex = np.clip(rng.uniform(10, 13) + 4.5 * smooth_field(rng, grid, correlation_mm=16.0), 5.0, 18.0)
    labels[cerebrum] = T.GREY_MATTER
    labels[cerebrum & (depth > cortex)] = T.WHITE_MATTER
    sulci = cerebrum & (depth < 0.8 * cortex) & (np.abs(smooth_field(rng, grid, correlation_mm=14.0)) < 0.12)
    labels[sulci] = T.CSF
    fissure = cerebrum & (np.abs(x) < max(2.0, thin)) & ((zc > 0.12 * c) | (np.abs(yc) > 0.55 * b))
    labels[fissure] = T.CSF

    # Cerebellum (grey cortex, white core), brainstem.
    cb_centre = (0.0, centre[1] + 0.5 * b, centre[2] - 0.56 * c)
    cerebellum = (ellipsoid(x, y, z, centre=cb_centre, radii=(0.66 * a, 0.36 * b, 0.24 * c)) < 1.0) & intracranial & (zc < tentorium - 3.0)
    labels[cerebellum] = T.GREY_MATTER
    labels[cerebellum & (ellipsoid(x, y, z, centre=cb_centre, radii=(0.3 * a, 0.16 * b, 0.11 * c)) < 1.0)] = T.WHITE_MATTER
    stem = [(0.0, centre[1] + 0.12 * b, centre[2] - 0.1 * c), (0.0, centre[1] + 0.22 * b, centre[2] - 0.55 * c),
            (0.0, centre[1] + 0.26 * b, grid.origin[2] - 10.0)]
    labels[tube(x, y, z, points=stem, radius=[12.0, 11.0, 7.0]) & (intracranial | head) & ~(labels == T.CORTICAL_BONE)] = T.WHITE_MATTER
    labels[(ellipsoid(x, y, z, centre=(0.0, centre[1] + 0.36 * b, centre[2] - 0.5 * c), radii=(5, 4, 7)) < 1.0) & intracranial] = T.CSF

    # Deep grey nuclei.
    for side in (-1.0, 1.0):
        for nucleus, r in (((side * 11, 0.05 * b, 0.0), (9, 14, 9)), ((side * 24, -0.12 * b, 2.0), (7, 13, 10)),
                           ((side * 13, -0.25 * b, 10.0), (6, 9, 9))):
            where = (nucleus[0], centre[1] + nucleus[1], centre[2] + nucleus[2])
            labels[(ellipsoid(x, y, z, centre=where, radii=r) < 1.0) & cerebrum] = T.GREY_MATTER

    # Ventricles (scaled for ventriculomegaly).
    grade = findings["ventriculomegaly"].grade if "ventriculomegaly" in findings else None
    scale = VENTRICLE_SCALE[grade] * rng.uniform(0.85, 1.1)
    ventricles = np.zeros(grid.shape, dtype=bool)
    for side in (-1.0, 1.0):
        body = [(side * 13, -0.33 * b, 12), (side * 10, -0.1 * b, 18), (side * 12, 0.15 * b, 16), (side * 17, 0.36 * b, 6),
                (side * 20, 0.46 * b, -4)]
        horn = [(side * 17, 0.32 * b, 6), (side * 28, 0.2 * b, -10), (side * 30, -0.05 * b, -20)]
        for points, radius in ((body, [5.5, 5.5, 5.0, 4.5, 3.0]), (horn, [3.5, 3.0, 2.5])):
            shifted = [(p[0], centre[1] + p[1], centre[2] + p[2]) for p in points]
            ventricles |= tube(x, y, z, points=shifted, radius=[max(r * scale, thin) for r in radius])
    third = (np.abs(x) < max(2.0 * scale, thin)) & (np.abs(yc) < 0.12 * b) & (zc > -14) & (zc < 8)
    labels[(ventricles | third) & intracranial] = T.CSF

    phantom = Phantom(labels=labels, grid=grid, findings=findings,
                      measurements={"ventricle_scale": round(float(scale), 2)})
    if "tumour" in findings:
        _tumour(phantom, rng, findings["tumour"], centre=centre, radii=(a, b, c), cerebrum=cerebrum)
    phantom.labels = warp_labels(phantom.labels, rng, grid, amplitude_mm=2.5, correlation_mm=60.0)
    return phantom


LOBE_CENTRES = {
    "frontal": (0.35, -0.48, 0.22),
    "parietal": (0.38, 0.12, 0.42),
    "temporal": (0.58, -0.1, -0.22),
    "occipital": (0.28, 0.6, 0.12),
}
"""Lobe centres as fractions of the head half-axes (x towards the tumour's side)."""


def _tumour(phantom: Phantom, rng: np.random.Generator, finding: Finding, *, centre, radii, cerebrum) -> None:
    """A lumpy intra-axial tumour with vasogenic oedema spreading through the surrounding white matter."""
    T = Tissue
    labels, grid = phantom.labels, phantom.grid
    x, y, z = grid.axes()
    side = -1.0 if finding.side == "right" else 1.0
    fx, fy, fz = LOBE_CENTRES[finding.lobe]
    where = (side * fx * radii[0] + rng.uniform(-6, 6), centre[1] + fy * radii[1] + rng.uniform(-6, 6),
             centre[2] + fz * radii[2] + rng.uniform(-6, 6))
    radius = float(finding.size_mm) / 2.0
    distance = np.sqrt((x - where[0]) ** 2 + (y - where[1]) ** 2 + (z - where[2]) ** 2)
    lumpy = 1.0 + 0.15 * smooth_field(rng, grid, correlation_mm=max(radius, 8.0))
    margin = rng.uniform(10, 25) * (1.0 + 0.4 * smooth_field(rng, grid, correlation_mm=15.0))
    brain = np.isin(labels, (T.WHITE_MATTER, T.GREY_MATTER)) & cerebrum
    labels[brain & (labels == T.WHITE_MATTER) & (distance < radius + margin)] = T.OEDEMA
    labels[brain & (labels == T.GREY_MATTER) & (distance < radius + 0.35 * margin)] = T.OEDEMA
    core = (distance < radius * lumpy) & cerebrum
    labels[core] = T.TUMOUR
    nearest = tuple(int(np.clip(np.rint((where[a] - grid.origin[a]) / grid.spacing[a]), 0, grid.shape[a] - 1)) for a in range(3))
    labels[nearest] = T.TUMOUR
