"""Voxel grids in millimetres, smooth random fields and primitive shapes for the phantoms.

Everything is expressed in patient millimetres so that a phantom looks the same at every ``size``:
the grid only decides where it is sampled. Coordinates follow the volume axes of the phantoms:

- ``x``: patient right → left (array axis ``i``),
- ``y``: anterior → posterior (array axis ``j``),
- ``z``: inferior → superior (array axis ``k``),

which is the LPS world frame itself, so the direction matrix is the identity and the origin puts
``(0, 0, 0)`` mm at the centre of the field of view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medm2g_core.types import ImageMeta

FLOAT = np.float32


@dataclass(frozen=True)
class Grid:
    """A cubic voxel grid centred on the world origin.

    Attributes:
        shape: voxels per axis ``(nx, ny, nz)``.
        spacing: voxel size in mm per axis.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def origin(self) -> tuple[float, float, float]:
        """LPS mm of voxel ``(0, 0, 0)``: the grid is centred on ``(0, 0, 0)`` mm."""
        return tuple(-(n - 1) / 2.0 * s for n, s in zip(self.shape, self.spacing))  # type: ignore[return-value]

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open (broadcastable) coordinate arrays in mm: ``x[:, None, None]``, ``y[None, :, None]``, ``z[None, None, :]``."""
        x, y, z = (
            (o + s * np.arange(n)).astype(FLOAT) for o, s, n in zip(self.origin, self.spacing, self.shape)
        )
        return x[:, None, None], y[None, :, None], z[None, None, :]

    def meta(self, *, modality: str, units: str) -> ImageMeta:
        """The ``ImageMeta`` of a volume on this grid (LPS identity direction, synthetic)."""
        return ImageMeta(
            spacing=tuple(float(s) for s in self.spacing),
            origin=tuple(float(o) for o in self.origin),
            shape=tuple(self.shape),
            units=units,
            modality=modality,
            source_format="synthetic",
            orientation="LPS",
            synthetic=True,
        )


def smooth_field(rng: np.random.Generator, grid: Grid, *, correlation_mm: float) -> np.ndarray:
    """A smooth zero-mean, unit-std random field on ``grid`` (float32, shape ``grid.shape``).

    Gaussian white noise on a coarse lattice of ``correlation_mm`` spacing (covering the field of
    view plus a margin) is interpolated with separable Gaussian kernels of that width, so the cost is
    a few small matrix products and the field looks the same in mm at every grid size.
    """
    kernels = []
    for n, step in zip(grid.shape, grid.spacing):
        extent = n * step
        count = int(np.ceil(extent / correlation_mm)) + 3
        centres = (np.arange(count) - (count - 1) / 2.0) * correlation_mm
        positions = (np.arange(n) - (n - 1) / 2.0) * step
        weights = np.exp(-0.5 * ((positions[:, None] - centres[None, :]) / correlation_mm) ** 2)
        kernels.append(weights.astype(FLOAT))
    values = rng.standard_normal(tuple(k.shape[1] for k in kernels)).astype(FLOAT)
    field = np.einsum("ia,abc->ibc", kernels[0], values)
    field = np.einsum("jb,ibc->ijc", kernels[1], field)
    field = np.einsum("kc,ijc->ijk", kernels[2], field)
    std = float(field.std()) or 1.0
    return ((field - field.mean()) / std).astype(FLOAT)


def ellipsoid(x: np.ndarray, y: np.ndarray, z: np.ndarray, *, centre: tuple[float, float, float],
              radii: tuple[float, float, float]) -> np.ndarray:
    """Normalised ellipsoid radius (float32): < 1 inside, = 1 on the surface. Coordinates in mm."""
    cx, cy, cz = centre
    rx, ry, rz = radii
    return np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2).astype(FLOAT)


def tube(x: np.ndarray, y: np.ndarray, z: np.ndarray, *, points: np.ndarray | list, radius: float | list) -> np.ndarray:
    """Boolean mask of voxels within ``radius`` mm of a polyline through ``points`` (``(n, 3)`` mm).

    ``x, y, z`` are the open axes of ``Grid.axes()``. ``radius`` may be one value or one per point
    (linearly interpolated along each segment). Each segment is evaluated only inside its own
    bounding box, so thin structures cost little at any grid size.
    """
    points = np.asarray(points, dtype=FLOAT)
    radii = np.broadcast_to(np.asarray(radius, dtype=FLOAT), (len(points),))
    xs, ys, zs = x.ravel(), y.ravel(), z.ravel()
    mask = np.zeros((len(xs), len(ys), len(zs)), dtype=bool)
    for start, end, r0, r1 in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
        pad = float(max(r0, r1))
        lo, hi = np.minimum(start, end) - pad, np.maximum(start, end) + pad
        ix = np.nonzero((xs >= lo[0]) & (xs <= hi[0]))[0]
        iy = np.nonzero((ys >= lo[1]) & (ys <= hi[1]))[0]
        iz = np.nonzero((zs >= lo[2]) & (zs <= hi[2]))[0]
        if not (len(ix) and len(iy) and len(iz)):
            continue
        px, py, pz = xs[ix][:, None, None], ys[iy][None, :, None], zs[iz][None, None, :]
        seg = end - start
        length2 = float(seg @ seg) or 1e-6
        t = np.clip(((px - start[0]) * seg[0] + (py - start[1]) * seg[1] + (pz - start[2]) * seg[2]) / length2, 0.0, 1.0)
        dist2 = (px - start[0] - t * seg[0]) ** 2 + (py - start[1] - t * seg[1]) ** 2 + (pz - start[2] - t * seg[2]) ** 2
        inside = dist2 <= (r0 + t * (r1 - r0)) ** 2
        sub = np.ix_(ix, iy, iz)
        mask[sub] |= inside
    return mask


def warp_labels(labels: np.ndarray, rng: np.random.Generator, grid: Grid, *, amplitude_mm: float,
                correlation_mm: float) -> np.ndarray:
    """Deform a label volume by a smooth random displacement field (nearest-neighbour resampling).

    Each displacement component is a smooth field of std ``amplitude_mm`` and correlation length
    ``correlation_mm``; voxels pulled from outside the grid become 0 (air).
    """
    index = np.indices(labels.shape, dtype=FLOAT)
    for axis in range(3):
        index[axis] += smooth_field(rng, grid, correlation_mm=correlation_mm) * (amplitude_mm / grid.spacing[axis])
    return ndimage.map_coordinates(labels, index, order=0, mode="constant", cval=0).astype(labels.dtype)


def lookup(labels: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Map a label volume through a per-label value table (``table[label]``), float32."""
    return np.asarray(table, dtype=FLOAT)[labels]
