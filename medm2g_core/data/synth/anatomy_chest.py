"""Chest phantom: a tissue-label volume of the thorax and upper abdomen, with findings applied.

Built analytically in millimetres (``geometry``: x right → left, y anterior → posterior, z inferior
→ superior, origin at the centre of the field of view), then deformed by a smooth random field for
per-patient shape variation. Per-patient parameters: body size and habitus (fat thickness), thoracic
cage size, apex, carina and diaphragm heights (right dome higher than left), heart size, position and
shape, vessel-tree branching. Structures: skin, subcutaneous fat, chest-wall and paraspinal muscle,
ribs with costal cartilage, sternum, clavicles, scapulae, thoracic spine (cortical shell, cancellous
body, discs, canal with cord), lungs with a branching vessel tree (lung markings), trachea and
bronchi, heart (myocardium around a blood pool), aorta, SVC and pulmonary arteries in mediastinal
fat, oesophagus, diaphragm, liver, stomach with its gas bubble; the support devices of a patient with
``support_devices`` along their real routes (``_place_devices``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from medm2g_core.data.synth.findings import Device, Finding
from medm2g_core.data.synth.geometry import Grid, ellipsoid, smooth_field, tube, warp_labels
from medm2g_core.data.synth.physics import Tissue

CHEST_FOV_MM = 384.0
"""Field of view per axis (mm): 6 mm voxels at size 64, 3 mm at 128, 1.5 mm at 256."""

LUNGISH = (Tissue.LUNG, Tissue.LUNG_VESSEL)


@dataclass
class Phantom:
    """A tissue-label volume and what was built into it.

    Attributes:
        labels: uint8 ``(x, y, z)`` volume of ``Tissue`` values on ``grid``.
        grid: the voxel grid (mm).
        findings: present findings (name → ``Finding``).
        measurements: numbers the report quotes (e.g. ``cardiothoracic_ratio``).
    """

    labels: np.ndarray
    grid: Grid
    findings: dict[str, Finding]
    measurements: dict[str, float] = field(default_factory=dict)


def chest_grid(size: int) -> Grid:
    """The chest grid for ``size`` voxels per side (isotropic, ``CHEST_FOV_MM`` field of view)."""
    spacing = CHEST_FOV_MM / size
    return Grid(shape=(size, size, size), spacing=(spacing, spacing, spacing))


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def build_chest(rng: np.random.Generator, *, size: int, findings: dict[str, Finding],
                device_rng: np.random.Generator | None = None) -> Phantom:
    """Build one chest phantom with ``findings`` applied; deterministic for the state of ``rng``.

    Device placement (tip heights, wire count) draws from ``device_rng`` (default ``rng``), so that a
    patient's anatomy does not depend on whether it carries devices.
    """
    grid = chest_grid(size)
    x, y, z = grid.axes()
    shape = grid.shape
    T = Tissue

    # --- per-patient parameters (mm) ------------------------------------------------------------
    cav_a, cav_b = rng.uniform(118, 142), rng.uniform(78, 98)  # thoracic cavity half-width / half-depth
    muscle, skin = rng.uniform(9, 14), 2.5
    rib_zone = 12.0
    fat = min(rng.uniform(6, 30), 186 - cav_a - rib_zone - muscle - skin)
    z_apex = rng.uniform(115, 145)
    z_carina = z_apex - rng.uniform(70, 90)
    z_dome_right = z_apex - rng.uniform(185, 215)
    z_dome_left = z_dome_right - rng.uniform(12, 25)

    # Thoracic cage narrows towards the apex and into the neck (scale of the axial ellipses).
    depth_below_apex = np.clip((z_apex - z) / 150.0, 0.0, 1.0)
    cage = 0.55 + 0.45 * np.sqrt(depth_below_apex)
    cage = cage - 0.17 * _smoothstep((z - z_apex - 25.0) / 50.0)  # neck above the apex
    a_z, b_z = cav_a * cage, cav_b * cage  # (1, 1, nz)
    wall = rib_zone + muscle + fat + skin
    fat_mod = 1.0 + 0.3 * smooth_field(rng, grid, correlation_mm=120.0)

    def radial(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.sqrt((x / a) ** 2 + (y / b) ** 2)

    labels = np.zeros(shape, dtype=np.uint8)
    body = radial(a_z + wall, b_z + wall) <= 1.0
    labels[body] = T.SKIN
    labels[radial(a_z + wall - skin, b_z + wall - skin) <= 1.0] = T.FAT
    # Subcutaneous fat thickness varies smoothly around the body: move the fat/muscle border.
    fat_here = fat * fat_mod
    labels[radial(a_z + wall - skin - fat_here, b_z + wall - skin - fat_here) <= 1.0] = T.MUSCLE
    # Paraspinal muscles either side of the spinous processes.
    y_spine = 0.62 * cav_b
    r_vert = 15.0 + 8.0 * np.clip((z_apex - z) / 300.0, 0.0, 1.0)
    y_canal = y_spine + 15.0 + 10.0
    for side in (-1.0, 1.0):
        para = ((x - side * 34.0) / 27.0) ** 2 + ((y - y_canal - 22.0) / 24.0) ** 2 <= 1.0
        labels[para & body & (labels == T.FAT)] = T.MUSCLE

    cavity = radial(a_z, b_z) <= 1.0
    # Diaphragm: two domes, the right higher; deeper posterior and lateral recesses.
    blend = 1.0 / (1.0 + np.exp(-x / 15.0))
    z_dome = z_dome_right + (z_dome_left - z_dome_right) * blend
    dome_q = ((np.abs(x) - 0.45 * cav_a) / (0.6 * cav_a)) ** 2 + ((y + 0.1 * cav_b) / (0.9 * cav_b)) ** 2
    z_diaphragm = z_dome - 55.0 * dome_q
    above = z > z_diaphragm
    abdomen = cavity & (z <= z_diaphragm - 5.0)
    # Lung apex: each lung ends in a rounded dome.
    apex_q = ((np.abs(x) - 0.5 * a_z) / (0.55 * a_z)) ** 2 + (y / (0.9 * b_z)) ** 2
    below_apex = z < z_apex - 60.0 * apex_q
    thorax = cavity & above & below_apex

    labels[cavity & (z > z_diaphragm - 5.0)] = T.MUSCLE  # diaphragm and, above the apex, neck muscle
    labels[thorax] = T.LUNG
    # Upper abdomen: organs in soft tissue with pockets of fat.
    labels[abdomen] = T.ABDOMEN
    labels[abdomen & (smooth_field(rng, grid, correlation_mm=40.0) > 0.9)] = T.FAT
    liver = abdomen & (x < 30.0 + 0.2 * (z - z_dome_right)) & (z > z_dome_right - 170.0 + 0.45 * (x + cav_a))
    labels[liver] = T.LIVER
    stomach_centre = (0.45 * cav_a, -0.1 * cav_b, z_dome_left - 50.0)
    stomach = abdomen & (ellipsoid(x, y, z, centre=stomach_centre, radii=(0.28 * cav_a, 0.45 * cav_b, 45.0)) < 1.0)
    labels[stomach] = T.ABDOMEN
    labels[stomach & (z > stomach_centre[2] + 12.0) & (y < stomach_centre[1] + 10.0)] = T.BOWEL_GAS

    # --- heart ------------------------------------------------------------------------------------
    grade = findings["cardiomegaly"].grade if "cardiomegaly" in findings else None
    ctr_target = {None: rng.uniform(0.40, 0.47), "mild": rng.uniform(0.55, 0.59),
                  "moderate": rng.uniform(0.58, 0.63), "marked": rng.uniform(0.63, 0.70)}[grade]
    heart_x = rng.uniform(12, 24)
    rx = ctr_target * cav_a
    ry, rz = rx * rng.uniform(0.72, 0.82), rx * rng.uniform(0.78, 0.9)
    z_heart = z_dome_right - 8.0 + 0.55 * rz
    y_heart = -0.22 * cav_b
    tilt = np.deg2rad(rng.uniform(20, 35))  # long axis towards the left and inferior
    xr = (x - heart_x) * np.cos(tilt) + (z - z_heart) * np.sin(tilt)
    zr = -(x - heart_x) * np.sin(tilt) + (z - z_heart) * np.cos(tilt)
    heart_r = np.sqrt((xr / rx) ** 2 + ((y - y_heart) / ry) ** 2 + (zr / rz) ** 2)
    heart = (heart_r < 1.0) & cavity & (z > z_diaphragm - 2.0)
    pool = np.sqrt((xr / (rx - 11)) ** 2 + ((y - y_heart) / (ry - 11)) ** 2 + (zr / (rz - 11)) ** 2) < 1.0
    columns = np.nonzero(heart.any(axis=(1, 2)))[0]
    heart_width = (columns.max() - columns.min() + 1) * grid.spacing[0] if len(columns) else 0.0
    cardiothoracic_ratio = float(heart_width / (2 * cav_a))

    # --- mediastinum: great vessels, airways, oesophagus in fat ---------------------------------
    z_top_heart = z_heart + 0.8 * rz
    y_trachea = 0.05 * cav_b
    z_top = grid.origin[2] + grid.spacing[2] * (shape[2] - 1) + 20.0
    z_bottom = grid.origin[2] - 20.0
    aorta = tube(x, y, z, points=[(-8, y_heart + 12, z_top_heart - 25), (-12, y_heart + 8, z_carina + 18),
                                   (-2, y_trachea - 12, z_carina + 36), (16, y_trachea + 18, z_carina + 32),
                                   (24, y_spine - 14, z_carina + 5), (20, y_spine - 16, z_bottom)],
                 radius=[15, 14, 13, 12, 12, 11])
    svc = tube(x, y, z, points=[(-32, y_heart + 10, z_top_heart - 10), (-30, y_heart + 14, z_apex + 30)], radius=10)
    pulmonary = tube(x, y, z, points=[(6, y_heart - 4, z_top_heart - 12), (18, y_heart + 16, z_carina - 6),
                                       (56, y_trachea + 8, z_carina - 16)], radius=[13, 12, 9])
    pulmonary |= tube(x, y, z, points=[(18, y_heart + 16, z_carina - 6), (-8, y_trachea + 2, z_carina - 14),
                                        (-56, y_trachea + 6, z_carina - 22)], radius=[11, 10, 9])
    esophagus = tube(x, y, z, points=[(4, y_spine - r_vert.max() - 8, z_top), (10, y_spine - 20, z_dome_left - 10)], radius=8)
    airway_points = {
        "trachea": [(0, y_trachea, z_top), (0, y_trachea, z_carina)],
        "right main": [(0, y_trachea, z_carina), (-42, y_trachea + 4, z_carina - 22)],
        "left main": [(0, y_trachea, z_carina), (44, y_trachea + 8, z_carina - 40)],
        "right upper": [(-42, y_trachea + 4, z_carina - 22), (-72, y_trachea, z_carina + 18)],
        "right lower": [(-42, y_trachea + 4, z_carina - 22), (-62, y_trachea + 32, z_carina - 92)],
        "right middle": [(-42, y_trachea + 4, z_carina - 22), (-66, y_trachea - 32, z_carina - 60)],
        "left upper": [(44, y_trachea + 8, z_carina - 40), (74, y_trachea - 6, z_carina + 6)],
        "left lower": [(44, y_trachea + 8, z_carina - 40), (64, y_trachea + 34, z_carina - 98)],
    }
    airway_radius = {"trachea": 9.0, "right main": 6.5, "left main": 6.0}
    airway_wall = np.zeros(shape, dtype=bool)
    airway_lumen = np.zeros(shape, dtype=bool)
    for name, points in airway_points.items():
        radius = airway_radius.get(name, 3.5)
        airway_wall |= tube(x, y, z, points=points, radius=radius + 2.0)
        airway_lumen |= tube(x, y, z, points=points, radius=radius)
    central_airway = tube(x, y, z, points=np.array(airway_points["trachea"]), radius=11.0) | tube(
        x, y, z, points=np.array(airway_points["right main"]), radius=8.5) | tube(
        x, y, z, points=np.array(airway_points["left main"]), radius=8.0)

    structures = heart | aorta | svc | pulmonary | esophagus | central_airway
    dilation = max(1, int(round(7.0 / grid.spacing[0])))
    mediastinum = ndimage.binary_dilation(structures, iterations=dilation) | (np.abs(x - 4.0) < 16.0)
    spine_block = (np.abs(x) < r_vert + 10.0) & (y > y_spine - r_vert - 6.0)
    mediastinum = (mediastinum | spine_block) & cavity & above
    labels[mediastinum] = T.MEDIASTINUM
    labels[heart] = T.MYOCARDIUM
    labels[heart & pool] = T.BLOOD
    labels[(aorta | svc | pulmonary) & (cavity | body) & ~heart] = T.BLOOD
    labels[esophagus & body] = T.MUSCLE
    labels[airway_wall & (labels != T.LUNG) & body] = T.CARTILAGE
    labels[airway_wall & (labels == T.LUNG)] = T.CARTILAGE
    labels[airway_lumen & body] = T.AIRWAY

    # --- lung vessel trees (lung markings) radiating from the hila ------------------------------
    hila = {-1.0: np.array([-54.0, y_trachea + 6, z_carina - 24]), 1.0: np.array([54.0, y_trachea + 8, z_carina - 18])}
    vessels = np.zeros(shape, dtype=bool)
    for side, hilum in hila.items():
        for direction in ([side * 0.5, 0.0, 1.0], [side, 0.0, 0.0], [side * 0.5, -0.6, -0.6], [side * 0.3, 0.6, -1.0]):
            vessels |= _vessel_tree(x, y, z, rng, start=hilum, direction=np.array(direction), length=45.0, radius=5.0,
                                    generations=4, hilum=hilum, min_radius=0.5 * grid.spacing[0])
    labels[vessels & (labels == T.LUNG)] = T.LUNG_VESSEL

    # --- bones ------------------------------------------------------------------------------------
    _spine(labels, x, y, z, rng, y_spine=y_spine, r_vert=r_vert, z_apex=z_apex, body=body)
    _ribs(labels, x, y, z, rng, cav_a=cav_a, cav_b=cav_b, z_apex=z_apex, body=body)
    sternum_y = -cav_b * 0.98 - 8.0
    for offset in (-6.0, 6.0):
        points = [(offset, sternum_y * 0.8, z_apex - 10), (offset, sternum_y, z_apex - 60), (offset, sternum_y, z_heart - 0.6 * rz)]
        labels[tube(x, y, z, points=points, radius=8.0) & body] = T.CORTICAL_BONE
        labels[tube(x, y, z, points=points, radius=5.0) & body] = T.CANCELLOUS_BONE
    for side in (-1.0, 1.0):
        points = [(side * 18, -cav_b * 0.6 - 12, z_apex + 2), (side * 70, -cav_b * 0.62 - 6, z_apex + 10),
                  (side * 135, -cav_b * 0.2, z_apex + 22)]
        labels[tube(x, y, z, points=points, radius=7.0) & body] = T.CORTICAL_BONE
        labels[tube(x, y, z, points=points, radius=3.5) & body] = T.CANCELLOUS_BONE
        # Scapula: a thin plate behind the posterior ribs (medial border vertical, lateral border oblique).
        top, tip = z_apex + 8.0, z_apex - rng.uniform(125, 145)
        lateral_x = 60.0 + 65.0 * np.clip((z - tip) / (top - tip), 0.0, 1.0)
        behind = cav_b * np.sqrt(np.clip(1.0 - (x / (cav_a + 20.0)) ** 2, 0.0, 1.0)) + rib_zone + 8.0
        plate = (side * x > 52.0) & (side * x < lateral_x) & (z < top) & (z > tip) & (y > behind) & (y < behind + 6.0)
        labels[plate & body & (labels != T.LUNG)] = T.CORTICAL_BONE

    phantom = Phantom(labels=labels, grid=grid, findings=findings,
                      measurements={"cardiothoracic_ratio": round(cardiothoracic_ratio, 2)})
    lobe_frame = {"z_hilum": z_carina - 20.0, "y_hilum": y_trachea + 8.0, "cav_a": cav_a, "cav_b": cav_b,
                  "z_carina": z_carina, "z_apex": z_apex}
    _apply_findings(phantom, rng, lobe_frame)
    if "support_devices" in findings:
        landmarks = {"cav_a": cav_a, "cav_b": cav_b, "wall": wall,
                     "z_apex": z_apex, "z_carina": z_carina, "z_dome_right": z_dome_right, "z_dome_left": z_dome_left,
                     "y_trachea": y_trachea, "y_spine": y_spine, "r_vert": float(np.max(r_vert)), "z_top": z_top,
                     "heart": (heart_x, y_heart, z_heart, rx, ry, rz), "z_top_heart": z_top_heart,
                     "sternum_y": sternum_y, "stomach": stomach_centre}
        phantom.measurements.update(_place_devices(labels, grid, findings["support_devices"].devices, landmarks,
                       rng if device_rng is None else device_rng, body=body))
    phantom.labels = warp_labels(phantom.labels, rng, grid, amplitude_mm=4.0, correlation_mm=90.0)
    return phantom


def _vessel_tree(x, y, z, rng, *, start, direction, length, radius, generations, hilum, min_radius) -> np.ndarray:
    """A randomly branching vessel tree (tubes tapering from the hilum outwards).

    Radii are kept at least ``min_radius`` (half a voxel) so that the markings exist at coarse grids,
    where real vessels would be sub-voxel and only partial-volumed in.
    """
    mask = np.zeros((x.shape[0], y.shape[1], z.shape[2]), dtype=bool)
    stack = [(start, direction / np.linalg.norm(direction), length, radius, 0)]
    while stack:
        origin, heading, seg_length, seg_radius, generation = stack.pop()
        end = origin + heading * seg_length
        mask |= tube(x, y, z, points=[origin, end], radius=[max(seg_radius, min_radius), max(seg_radius * 0.8, min_radius)])
        if generation + 1 >= generations:
            continue
        outward = (end - hilum) / (np.linalg.norm(end - hilum) + 1e-6)
        for _ in range(2):
            child = heading + 0.55 * rng.standard_normal(3) + 0.5 * outward
            stack.append((end, child / np.linalg.norm(child), seg_length * 0.78, seg_radius * 0.68, generation + 1))
    return mask


def _spine(labels, x, y, z, rng, *, y_spine, r_vert, z_apex, body) -> None:
    T = Tissue
    level = rng.uniform(22, 26)
    phase = np.mod(z - z_apex, level)
    disc = phase < 5.0
    vertebra = (x ** 2 + ((y - y_spine) / 0.85) ** 2) <= r_vert ** 2
    shell = (x ** 2 + ((y - y_spine) / 0.85) ** 2) > (r_vert - 3.0) ** 2
    labels[vertebra & body] = T.CANCELLOUS_BONE
    labels[vertebra & shell & body] = T.CORTICAL_BONE
    labels[vertebra & disc & body] = T.CARTILAGE
    y_canal = y_spine + r_vert + 10.0
    canal_r2 = x ** 2 + (y - y_canal) ** 2
    arch = (canal_r2 <= 14.0 ** 2) & (canal_r2 > 8.5 ** 2) & (y > y_spine) & ~(phase < 8.0)
    labels[arch & body] = T.CORTICAL_BONE
    labels[(canal_r2 <= 8.5 ** 2) & body] = T.CSF
    labels[(canal_r2 <= 4.5 ** 2) & body] = T.SPINAL_CORD
    z_levels = z_apex + level * np.arange(-12, 4) + level / 2
    y_canal_value = float(np.max(y_canal))
    for zl in z_levels:
        spinous = [(0.0, y_canal_value + 10, zl), (0.0, y_canal_value + 38, zl - 18)]
        labels[tube(x, y, z, points=spinous, radius=5.0) & body] = T.CORTICAL_BONE
        for side in (-1.0, 1.0):
            transverse = [(side * 8, y_canal_value - 4, zl), (side * 30, y_canal_value, zl + 2)]
            labels[tube(x, y, z, points=transverse, radius=5.0) & body] = T.CORTICAL_BONE


def _ribs(labels, x, y, z, rng, *, cav_a, cav_b, z_apex, body) -> None:
    """Twelve rib pairs around the cage, descending anteriorly; upper seven reach the sternum by cartilage."""
    T = Tissue
    spacing = rng.uniform(21, 25)
    for number in range(1, 13):
        z_posterior = z_apex + 12.0 - (number - 1) * spacing
        drop = 35.0 + 4.0 * number
        end = 0.86 if number <= 7 else (0.72 if number <= 10 else 0.5)
        cage = 0.55 + 0.45 * np.sqrt(np.clip((z_apex - (z_posterior - drop / 2)) / 150.0, 0.0, 1.0))
        a, b = cav_a * cage + 6.0, cav_b * cage + 6.0
        for side in (-1.0, 1.0):
            theta = np.linspace(0.1, end, 14) * np.pi
            progress = (theta - theta[0]) / (np.pi - theta[0])
            points = np.stack([side * a * np.sin(theta), b * np.cos(theta), z_posterior - drop * progress ** 1.3], axis=1)
            labels[tube(x, y, z, points=points, radius=4.5) & body] = T.CORTICAL_BONE
            labels[tube(x, y, z, points=points, radius=3.0) & body] = T.CANCELLOUS_BONE
            if number <= 7:
                tip = points[-1]
                cartilage = [tip, (side * 12.0, -b + 2.0, tip[2] + 4.0 * (8 - number))]
                labels[tube(x, y, z, points=cartilage, radius=4.0) & body & (labels != T.CORTICAL_BONE)] = T.CARTILAGE


# --- support devices --------------------------------------------------------------------------------

def _place_devices(labels: np.ndarray, grid: Grid, devices: tuple[Device, ...], at: dict[str, Any],
                   rng: np.random.Generator, *, body: np.ndarray) -> dict[str, float]:
    """Draw each device along its route: metal for the pacemaker can and sternal wires, radio-opaque
    tubing for tubes, catheters and leads (at least ~0.6 voxel in radius so that a line stays connected).

    Returns the measurements a report quotes (``ett_above_carina_cm``).
    """
    measurements: dict[str, float] = {}
    T = Tissue
    x, y, z = grid.axes()
    thin = 0.6 * grid.spacing[0]
    heart_x, y_heart, z_heart, rx, ry, rz = at["heart"]
    cav_a, cav_b, z_apex = at["cav_a"], at["cav_b"], at["z_apex"]
    svc_top = (-30.0, y_heart + 14.0, z_apex - 20.0)
    svc_low = (-31.0, y_heart + 11.0, at["z_top_heart"] - 5.0)

    def draw(points, radius: float, tissue: Tissue) -> None:
        labels[tube(x, y, z, points=points, radius=max(radius, thin)) & body] = tissue

    def wall_y(x_mm: float, z_mm: float, depth: float) -> float:
        """Anterior y (mm, negative) of the point ``depth`` mm inside the skin at ``(x_mm, z_mm)``."""
        cage = 0.55 + 0.45 * np.sqrt(np.clip((z_apex - z_mm) / 150.0, 0.0, 1.0))
        a, b = cav_a * cage + at["wall"], cav_b * cage + at["wall"]
        return -(b * np.sqrt(max(1.0 - (x_mm / a) ** 2, 0.0)) - depth)

    for device in devices:
        sign = 1.0 if device.side == "left" else -1.0  # +x is the patient's left
        if device.kind == "endotracheal_tube":
            tip = at["z_carina"] + rng.uniform(30, 60)
            measurements["ett_above_carina_cm"] = round(float(tip - at["z_carina"]) / 10.0, 1)
            draw([(0.0, at["y_trachea"], at["z_top"]), (0.0, at["y_trachea"], tip)], 4.5, T.TUBING)
        elif device.kind == "enteric_tube":
            sx, sy, sz = at["stomach"]
            esophagus_y = at["y_spine"] - at["r_vert"] - 8.0
            draw([(4.0, esophagus_y, at["z_top"]), (10.0, at["y_spine"] - 20.0, at["z_dome_left"] - 10.0),
                  (sx, sy, sz + 10.0), (sx + 25.0, sy - 10.0, sz - rng.uniform(5, 25))], 2.5, T.TUBING)
        elif device.kind == "central_line":
            if device.route == "jugular":
                entry = [(sign * 35.0, at["y_trachea"] - 5.0, at["z_top"]), (sign * 30.0, y_heart + 14.0, z_apex + 10.0)]
            else:
                entry = [(sign * 110.0, wall_y(sign * 110.0, z_apex + 5.0, 12.0), z_apex + 5.0), (sign * 40.0, y_heart + 14.0, z_apex - 5.0)]
            draw([*entry, svc_top, svc_low], 1.5, T.TUBING)
        elif device.kind == "pacemaker":
            z_can = z_apex - rng.uniform(20, 40)
            can = (sign * 0.55 * cav_a, wall_y(sign * 0.55 * cav_a, z_can, 9.0), z_can)
            shell = ellipsoid(x, y, z, centre=can, radii=(24.0, max(4.5, 0.8 * grid.spacing[1]), 20.0)) < 1.0
            labels[shell & body] = T.METAL
            via = [can, (sign * 40.0, y_heart + 14.0, z_apex - 15.0), svc_top, svc_low]
            draw([*via, (heart_x - 0.55 * rx, y_heart, z_heart), (heart_x + 0.4 * rx, y_heart - 0.45 * ry, z_heart - 0.45 * rz)],
                 1.5, T.TUBING)  # right ventricular lead
            draw([*via, (heart_x - 0.45 * rx, y_heart - 0.5 * ry, z_heart + 0.45 * rz)], 1.5, T.TUBING)  # atrial lead
        elif device.kind == "sternotomy_wires":
            wires = int(rng.integers(5, 8))
            for z_wire in np.linspace(z_apex - 45.0, z_heart - 0.5 * rz, wires):
                draw([(-12.0, at["sternum_y"] - 2.0, z_wire), (12.0, at["sternum_y"] - 2.0, z_wire)], 1.5, T.METAL)
        elif device.kind == "chest_tube":
            z_in = at["z_dome_right"] + rng.uniform(50, 80)
            draw([(sign * (cav_a + 40.0), 10.0, z_in - 15.0), (sign * (cav_a - 12.0), 0.0, z_in),
                  (sign * 0.75 * cav_a, -0.2 * cav_b, z_in + 70.0), (sign * 0.5 * cav_a, -0.3 * cav_b, z_apex - 25.0)],
                 5.0, T.TUBING)
        else:
            raise AssertionError(device.kind)
    return measurements


# --- findings ---------------------------------------------------------------------------------------

def _lobe_masks(phantom: Phantom, frame: dict[str, float], side: str) -> dict[str, np.ndarray]:
    """Lung voxels of one side split into lobes by an oblique and (right) a horizontal fissure."""
    x, y, z = phantom.grid.axes()
    lung = np.isin(phantom.labels, LUNGISH) & ((x < 0) if side == "right" else (x > 0))
    fissure = frame["z_hilum"] + 1.2 * (y - frame["y_hilum"])
    lower = lung & (z < fissure)
    if side == "left":
        return {"upper": lung & ~lower, "lower": lower}
    horizontal = z > frame["z_hilum"] - 5.0
    return {"upper": lung & ~lower & horizontal, "middle": lung & ~lower & ~horizontal, "lower": lower}


def _random_voxel(rng: np.random.Generator, mask: np.ndarray) -> tuple[int, int, int] | None:
    where = np.argwhere(mask)
    if not len(where):
        return None
    return tuple(int(v) for v in where[int(rng.integers(len(where)))])


def _apply_findings(phantom: Phantom, rng: np.random.Generator, frame: dict[str, float]) -> None:
    T = Tissue
    labels, grid, findings = phantom.labels, phantom.grid, phantom.findings
    x, y, z = grid.axes()
    spacing = grid.spacing

    if "nodule" in findings:
        finding = findings["nodule"]
        lobe = _lobe_masks(phantom, frame, finding.side)[finding.lobe]
        radius = finding.size_mm / 2.0
        depth = ndimage.distance_transform_edt(lobe, sampling=spacing)
        candidates = depth > radius + 3.0
        centre = _random_voxel(rng, candidates if candidates.any() else depth >= depth.max() * 0.9)
        if centre is not None:
            cx, cy, cz = (grid.origin[a] + spacing[a] * centre[a] for a in range(3))
            lumpy = 1.0 + 0.12 * smooth_field(rng, grid, correlation_mm=max(radius, 6.0))
            nodule = ellipsoid(x, y, z, centre=(cx, cy, cz), radii=(radius, radius, radius)) < lumpy
            labels[nodule & np.isin(labels, LUNGISH)] = T.NODULE
            labels[centre] = T.NODULE  # a nodule smaller than a voxel still occupies its voxel

    if "consolidation" in findings:
        finding = findings["consolidation"]
        lobe = _lobe_masks(phantom, frame, finding.side)[finding.lobe]
        centre = _random_voxel(rng, lobe)
        if centre is not None:
            cx, cy, cz = (grid.origin[a] + spacing[a] * centre[a] for a in range(3))
            reach = rng.uniform(40, 65) * (1.0 + 0.35 * smooth_field(rng, grid, correlation_mm=30.0))
            region = lobe & (np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) < reach)
            labels[region & (labels == T.LUNG_VESSEL)] = T.AIRWAY  # air bronchograms beside the arteries
            labels[region & (labels == T.LUNG)] = T.CONSOLIDATION

    if "pneumothorax" in findings:
        finding = findings["pneumothorax"]
        hemithorax = np.isin(labels, LUNGISH + (T.NODULE, T.CONSOLIDATION)) & ((x < 0) if finding.side == "right" else (x > 0))
        to_wall = ndimage.distance_transform_edt(hemithorax, sampling=spacing)
        lateral = np.clip((np.abs(x) - 0.35 * frame["cav_a"]) / (0.55 * frame["cav_a"]), 0.0, 1.0)
        apical = np.clip((z - frame["z_carina"]) / max(frame["z_apex"] - frame["z_carina"], 1.0), 0.0, 1.0)
        rim = hemithorax & (to_wall <= finding.size_mm * np.clip(0.9 * lateral + 0.9 * apical, 0.0, 1.3))
        labels[rim & ~np.isin(labels, (T.NODULE,))] = T.PLEURAL_AIR

    if "effusion" in findings:
        finding = findings["effusion"]
        sides = ("right", "left") if finding.side == "bilateral" else (finding.side,)
        for side in sides:
            lung = np.isin(labels, LUNGISH) & ((x < 0) if side == "right" else (x > 0))
            if not lung.any():
                continue
            base = grid.origin[2] + spacing[2] * float(np.argwhere(lung)[:, 2].min())
            height = float(finding.size_mm)
            lateral = np.clip((np.abs(x) - 0.3 * frame["cav_a"]) / (0.7 * frame["cav_a"]), 0.0, 1.0)
            posterior = np.clip(y / frame["cav_b"], -1.0, 1.0)
            # Dependent fluid with a meniscus climbing the lateral and posterior chest wall.
            level = base + height * (1.0 + 0.35 * lateral ** 2 + 0.25 * posterior)
            labels[lung & (z < level)] = T.EFFUSION

    if "cardiomegaly" in findings:
        pass  # built into the heart size above
