"""Identity after intensity mapping: a monotone quantile (histogram) map from source to target intensities.

The simplest translation baseline keeps the anatomy of the source voxel for voxel and only changes its
intensities: ``prediction = f(source)`` with ``f`` monotone non-decreasing, fitted so that the
distribution of ``f(source)`` over the training bodies matches the target's (histogram matching of
the pooled training voxels). Both sides are in the flow's normalised units ([-1, 1],
``data.transforms.normalize``: CT HU window, MRI percentiles), so a source volume is mapped exactly
as the flow sees it and the result is denormalised exactly as a translation is.

With ``L`` levels ``q_l = l / (L - 1)``: ``source_values[l]`` and ``target_values[l]`` are the
``q_l`` quantiles of the pooled masked source and target voxels; ``f`` is the piecewise-linear
interpolation through those points (constant beyond the ends). Tied source quantiles (the many
voxels at a clipped end, -1) are merged into one knot holding the mean of their target quantiles,
which keeps ``f`` a function and monotone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from medm2g_core.errors import BundleError

LEVELS = 257
MAX_VOXELS_PER_PAIR = 200_000


@dataclass
class IntensityMap:
    """A fitted monotone map (normalised source units → normalised target units).

    Attributes:
        source, target: modality names (``Modality.value``).
        source_values, target_values: the knots (non-decreasing, same length).
        voxels: masked voxels pooled in the fit; patients: training patients used.
        details: how it was fitted (mask, normalisation), for the record.
    """

    source: str
    target: str
    source_values: list[float]
    target_values: list[float]
    voxels: int = 0
    patients: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """``f(values)`` voxel-wise, float32, same shape."""
        return np.interp(np.asarray(values, dtype=np.float64), self.source_values, self.target_values).astype(np.float32)

    def save(self, path: str | Path) -> Path:
        """Write JSON (atomically)."""
        from medm2g_core.serialization import write_record

        return write_record(path, self, class_name="IntensityMap")

    @classmethod
    def load(cls, path: str | Path) -> "IntensityMap":
        from medm2g_core.serialization import read_record

        mapping = cls(**read_record(path, class_name="IntensityMap", what="an intensity map"))
        if len(mapping.source_values) != len(mapping.target_values) or len(mapping.source_values) < 2:
            raise BundleError(f"{path}: knots of different lengths or fewer than 2; refit the baseline")
        return mapping


def sample_voxels(values: np.ndarray, *, limit: int = MAX_VOXELS_PER_PAIR) -> np.ndarray:
    """At most ``limit`` values of a 1D array by a regular stride (deterministic)."""
    values = np.asarray(values).ravel()
    if values.size <= limit:
        return values
    return values[:: int(np.ceil(values.size / limit))]


def fit_intensity_map(pairs: Iterable[tuple[np.ndarray, np.ndarray]], *, source: str, target: str,
                      levels: int = LEVELS) -> IntensityMap:
    """Fit the map on ``(source voxels, target voxels)`` pairs (1D arrays of the masked voxels of one
    patient, normalised units; each is subsampled to at most ``MAX_VOXELS_PER_PAIR``).

    Raises:
        ValueError: no voxels at all, or fewer than 2 levels.
    """
    if levels < 2:
        raise ValueError(f"levels must be ≥ 2, got {levels}")
    source_parts, target_parts = [], []
    for source_voxels, target_voxels in pairs:
        if np.asarray(source_voxels).size != np.asarray(target_voxels).size:
            raise ValueError("each pair must give the same voxels of source and target")
        # The same stride on both sides keeps the pairs' voxel counts equal (quantiles pool them alike).
        source_parts.append(sample_voxels(source_voxels))
        target_parts.append(sample_voxels(target_voxels))
    if not source_parts or sum(p.size for p in source_parts) == 0:
        raise ValueError("no voxels to fit the intensity map on (empty masks?)")
    pooled_source = np.concatenate(source_parts).astype(np.float64)
    pooled_target = np.concatenate(target_parts).astype(np.float64)
    quantiles = np.linspace(0.0, 1.0, levels)
    source_q = np.maximum.accumulate(np.quantile(pooled_source, quantiles))
    target_q = np.maximum.accumulate(np.quantile(pooled_target, quantiles))
    knots_x, knots_y = merge_ties(source_q, target_q)
    return IntensityMap(source=source, target=target, source_values=[float(v) for v in knots_x],
                        target_values=[float(v) for v in knots_y], voxels=int(pooled_source.size))


def merge_ties(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Collapse equal ``x`` knots into one with the mean ``y`` (both inputs non-decreasing → outputs too)."""
    unique, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=y)
    counts = np.bincount(inverse)
    merged = np.maximum.accumulate(sums / counts)
    if unique.size == 1:  # a constant source: map everything to the mean target
        return np.array([unique[0] - 1.0, unique[0] + 1.0]), np.array([merged[0], merged[0]])
    return unique, merged
