"""Typed records shared across the library: image geometry (``ImageMeta``) and progress events."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Protocol

import numpy as np


@dataclass(frozen=True)
class ImageMeta:
    """Geometry and context that travel with the pixels from reader to writer.

    Arrays are indexed ``(i, j, k)`` = NIfTI voxel order (for 2D images ``(rows, cols)``).
    World coordinates are **LPS millimetres** (DICOM/ITK convention). A voxel index ``ijk`` maps to
    ``origin + direction @ (spacing * ijk)``; ``affine_lps`` gives the 4×4 form and ``affine_ras``
    the NIfTI (RAS) form.

    Attributes:
        spacing: voxel size in mm per array axis.
        origin: world position (LPS, mm) of voxel index 0.
        direction: column ``a`` is the LPS unit vector of array axis ``a`` (ndim × ndim... always 3×3
            here; 2D images use the top-left 2×2 block and a unit third axis).
        shape: array shape as read.
        units: intensity units ("HU", "a.u.", "normalised").
        modality: the medm2g modality name when known ("ct", "mri-t1", "xray"...).
        source_format: "nifti", "dicom", "dicom-series", "png", "jpeg", "mha", "nrrd", "text".
        orientation: three-letter axis code in RAS terms as nibabel prints it ("RAS", "LPS"...).
        dicom: selected non-identifying DICOM study fields (never PatientName/PatientID/BirthDate).
        synthetic: True when the pixels were generated (phantom or model output).
        extra: small JSON-serialisable notes (e.g. pixel spacing source for PNGs).
    """

    spacing: tuple[float, ...]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    shape: tuple[int, ...] = ()
    units: str = "a.u."
    modality: str | None = None
    source_format: str = "unknown"
    orientation: str = ""
    dicom: dict[str, Any] = field(default_factory=dict)
    synthetic: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def affine_lps(self) -> np.ndarray:
        """4×4 voxel-index → LPS-mm matrix (3D; 2D images get a unit third axis)."""
        spacing = list(self.spacing) + [1.0] * (3 - len(self.spacing))
        direction = np.asarray(self.direction, dtype=float)
        affine = np.eye(4)
        affine[:3, :3] = direction * np.asarray(spacing[:3])[None, :]
        affine[:3, 3] = self.origin
        return affine

    @property
    def affine_ras(self) -> np.ndarray:
        """4×4 voxel-index → RAS-mm matrix, the NIfTI convention."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps

    @classmethod
    def from_affine_ras(cls, affine: np.ndarray, shape: tuple[int, ...], **kwargs: Any) -> "ImageMeta":
        """Build from a NIfTI (RAS) affine; spacing = column norms, direction = unit columns."""
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=float)
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        direction = lps[:3, :3] / spacing[None, :]
        return cls(
            spacing=tuple(float(s) for s in spacing[: len(shape)]),
            origin=tuple(float(x) for x in lps[:3, 3]),
            direction=tuple(tuple(float(x) for x in row) for row in direction),
            shape=tuple(int(s) for s in shape),
            **kwargs,
        )

    def replace(self, **changes: Any) -> "ImageMeta":
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["spacing"] = list(self.spacing)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ImageMeta":
        data = dict(data)
        data["spacing"] = tuple(data["spacing"])
        data["origin"] = tuple(data.get("origin", (0.0, 0.0, 0.0)))
        data["direction"] = tuple(tuple(r) for r in data.get("direction", np.eye(3).tolist()))
        data["shape"] = tuple(data.get("shape", ()))
        return cls(**data)

    def same_grid(self, other: "ImageMeta", *, tolerance_mm: float = 1e-3) -> bool:
        """True when both describe the same voxel grid in world space (shape and affine)."""
        if tuple(self.shape[:3]) != tuple(other.shape[:3]):
            return False
        return bool(np.allclose(self.affine_lps, other.affine_lps, atol=tolerance_mm))


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report from a long job. ``total`` is None when unknown."""

    task: str
    completed: float
    total: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    message: str | None = None


class ProgressCallback(Protocol):
    def __call__(self, event: ProgressEvent) -> None: ...


def no_progress(event: ProgressEvent) -> None:
    """Default progress callback: the core never prints."""


ProgressFn = Callable[[ProgressEvent], None]
