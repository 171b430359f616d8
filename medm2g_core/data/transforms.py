"""Intensity normalisation per modality (with an exact inverse), slicing/resizing, and the medical
visual-invariant augmentations (DESIGN §1.3).

Normalisation maps intensities linearly to [-1, 1] and records what its inverse needs:

- CT: the HU window ``[low, high]`` (default [-1024, 3000]) → [-1, 1], values outside clipped;
  ``denormalize`` is exact inside the window.
- MRI: the ``(0.5, 99.5)`` percentiles of the volume → [-1, 1] (clipped); the percentile values are
  recorded in the ``NormState``.
- X-ray: the dtype's range (uint16 → [0, 65535], uint8 → [0, 255]; float inputs: their min/max).
- anything else: min/max.

Augmentations are pure torch, driven by an explicit ``torch.Generator`` so that a dataset item's
augmentation is a function of its index (identical with any number of workers and after resume).
They never flip left-right: laterality is anatomy (situs, effusion side) and reports mention it.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medm2g_core.config import AugmentConfig
from medm2g_core.modalities import CT_HU_RANGE, MRI_PERCENTILES, Modality, parse_modality


@dataclass(frozen=True)
class NormState:
    """What ``denormalize`` needs: ``x = low + (y + 1) / 2 · (high − low)``.

    ``kind`` is "window" (CT HU), "percentile" (MRI; ``percentiles`` recorded), "dtype" (X-ray) or
    "minmax"; ``units`` are the original intensity units.
    """

    modality: str
    kind: str
    low: float
    high: float
    units: str = "a.u."
    percentiles: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "NormState":
        data = dict(data)
        if data.get("percentiles") is not None:
            data["percentiles"] = tuple(data["percentiles"])
        return cls(**data)


def normalize(
    array: np.ndarray,
    modality: Modality | str,
    *,
    ct_window: Sequence[float] = CT_HU_RANGE,
    mri_percentiles: Sequence[float] = MRI_PERCENTILES,
) -> tuple[np.ndarray, NormState]:
    """Map ``array`` to float32 in [-1, 1]; returns it with the ``NormState`` of the inverse."""
    modality = parse_modality(modality) if isinstance(modality, str) else modality
    if modality is Modality.CT:
        low, high = float(ct_window[0]), float(ct_window[1])
        state = NormState(modality.value, "window", low, high, units="HU")
    elif modality.is_mri:
        p_low, p_high = float(mri_percentiles[0]), float(mri_percentiles[1])
        low, high = (float(v) for v in np.percentile(array, [p_low, p_high]))
        state = NormState(modality.value, "percentile", low, high, percentiles=(p_low, p_high))
    elif modality is Modality.XRAY and array.dtype in (np.uint8, np.uint16):
        state = NormState(modality.value, "dtype", 0.0, float(np.iinfo(array.dtype).max))
    else:
        state = NormState(modality.value, "minmax", float(np.min(array)), float(np.max(array)))
    span = state.high - state.low
    if span <= 0:
        span = 1.0
        state = NormState(state.modality, state.kind, state.low, state.low + 1.0, state.units, state.percentiles)
    scaled = (np.asarray(array, dtype=np.float64) - state.low) / span * 2.0 - 1.0
    return np.clip(scaled, -1.0, 1.0).astype(np.float32), state


def as_grey(array: np.ndarray, modality: Modality) -> np.ndarray:
    """An RGB(A) 2D image (rows, cols, 3|4) → grey (the channel mean); anything else unchanged."""
    if array.ndim == 3 and not modality.is_volume and array.shape[-1] in (3, 4):
        return array[..., :3].mean(axis=-1)
    return array


def denormalize(array: np.ndarray | torch.Tensor, state: NormState) -> np.ndarray | torch.Tensor:
    """Inverse of ``normalize`` (exact for values that were inside the window/range)."""
    return state.low + (array + 1.0) / 2.0 * (state.high - state.low)


def axial_slice(volume: np.ndarray, index: int) -> np.ndarray:
    """``volume[:, :, index]`` (docs/architecture.md: 2D models see axial slices along the third axis)."""
    return volume[:, :, index]


def slice_indices(depth: int, slices: str | int) -> list[int]:
    """Which axial slices to use: "all", "middle", or N evenly spaced (central 80 % of the volume)."""
    if slices == "all":
        return list(range(depth))
    if slices == "middle":
        return [depth // 2]
    count = int(slices)
    if count < 1:
        raise ValueError(f"slices must be 'all', 'middle' or a positive count, not {slices!r}")
    if count >= depth:
        return list(range(depth))
    low, high = 0.1 * (depth - 1), 0.9 * (depth - 1)
    return sorted({int(round(low + (high - low) * i / max(count - 1, 1))) for i in range(count)}) if count > 1 else [depth // 2]


def resize_image(image: np.ndarray | torch.Tensor, size: int, *, antialias: bool = True) -> torch.Tensor:
    """(H, W) or (C, H, W) → (C, size, size) float32, bilinear (with antialiasing unless ``antialias=False``).

    Non-square images are stretched (the original shape is kept by the caller for ``resize_back``).
    """
    tensor = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image, dtype=torch.float32)
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tuple(tensor.shape[-2:]) == (size, size):
        return tensor.clone()
    return F.interpolate(tensor[None], size=(size, size), mode="bilinear", antialias=antialias, align_corners=False)[0]


def resize_back(image: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """(C, h, w) → (C, *shape): the inverse resampling of ``resize_image`` for reassembly."""
    return F.interpolate(image[None].float(), size=tuple(int(s) for s in shape[-2:]), mode="bilinear", align_corners=False)[0]


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W) with ``sigma`` pixels (reflect padding)."""
    if sigma <= 0.05:
        return image
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = image.shape[0]
    x = image[None]
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return x[0]


def augment_view(image: torch.Tensor, config: AugmentConfig, *, generator: torch.Generator) -> torch.Tensor:
    """One medically plausible view of a normalised (C, H, W) image in [-1, 1].

    In order, each with probability ``config.probability``: intensity-window jitter (contrast ×[1±j],
    level ±j), small affine (rotation ±``rotate_deg``°, zoom ±``scale``, shift ±``shift`` of the size;
    background filled with -1), Gaussian blur (σ ≤ ``blur_sigma`` px), Gaussian noise (σ ≤ ``noise_std``).
    Never a flip. Output clipped to [-1, 1].
    """
    x = image.float()
    p = config.probability

    def happens() -> bool:
        return float(torch.rand((), generator=generator)) < p

    if config.window_jitter > 0 and happens():
        gain = _uniform(generator, 1 - config.window_jitter, 1 + config.window_jitter)
        level = _uniform(generator, -config.window_jitter, config.window_jitter)
        x = (x * gain + level).clamp(-1, 1)
    if (config.rotate_deg > 0 or config.scale > 0 or config.shift > 0) and happens():
        angle = math.radians(_uniform(generator, -config.rotate_deg, config.rotate_deg))
        zoom = _uniform(generator, 1 - config.scale, 1 + config.scale)
        tx = _uniform(generator, -config.shift, config.shift) * 2  # normalised coordinates span 2
        ty = _uniform(generator, -config.shift, config.shift) * 2
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=torch.float32)[None]
        grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
        x = F.grid_sample((x + 1)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0] - 1
    if config.blur_sigma > 0 and happens():
        x = gaussian_blur(x, _uniform(generator, 0.0, config.blur_sigma))
    if config.noise_std > 0 and happens():
        sigma = _uniform(generator, 0.0, config.noise_std)
        x = x + sigma * torch.randn(x.shape, generator=generator)
    return x.clamp(-1, 1)


_SECTION = re.compile(r"([A-Z][A-Z ]+:)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def augment_report(text: str, config: AugmentConfig, *, generator: torch.Generator) -> str:
    """A training view of a report: sentences shuffled within each section (``FINDINGS:``,
    ``IMPRESSION:`` ... keep their order), then each word dropped with probability ``word_dropout``.

    Decimal numbers (``1.4 cm``) are not sentence ends (a sentence ends at ``.``/``!``/``?`` followed by
    white space). The text is returned unchanged when both are off, and never becomes empty.
    """
    if not config.sentence_shuffle and config.word_dropout <= 0:
        return text
    out = text
    if config.sentence_shuffle:
        parts = _SECTION.split(text)  # [preamble, header, body, header, body, ...]
        rebuilt = []
        for part in parts:
            if _SECTION.fullmatch(part) or not part.strip():
                rebuilt.append(part)
                continue
            sentences = [s for s in _SENTENCE_END.split(part.strip()) if s]
            order = torch.randperm(len(sentences), generator=generator).tolist()
            rebuilt.append(" " + " ".join(sentences[i] for i in order) + "\n")
        out = "".join(rebuilt).strip()
    if config.word_dropout > 0:
        words = out.split(" ")
        keep = (torch.rand(len(words), generator=generator) >= config.word_dropout).tolist()
        kept = [w for w, k in zip(words, keep) if k]
        out = " ".join(kept) if kept else out
    return out


def item_generator(seed: int, index: int, salt: int = 0) -> torch.Generator:
    """A generator that is a pure function of ``(seed, index, salt)``."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index) * 31 + salt)
