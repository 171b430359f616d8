"""Image-translation metrics: PSNR, SSIM, MAE, and the two protocols the field reports.

* **SynthRAD2023** (MRI→CT), a port of the challenge's ``ImageMetrics`` on arrays:
  MAE in HU over the body mask, no clipping; PSNR with both images clipped to [−1024, 3000] HU,
  data range 4024, over the mask; SSIM (scikit-image, 3D 7-voxel window) on the clipped images with
  voxels outside the mask set to −1024 and everything shifted by +1024, data range 4024, the SSIM map
  averaged over the mask after a 3-voxel border crop.
* **SynDiff/ResViT on IXI** (MRI contrast synthesis): each volume scaled to mean 1, then to max 1;
  on every axial slice ``volume[:, :, k]`` PSNR = 20·log10(max(reference slice) / RMSE) and SSIM with
  ``data_range=1`` (explicit: scikit-image on floats without it inflates SSIM). Slices whose reference
  is empty (max 0) are skipped and counted.

Arrays are numpy, indexed ``(i, j, k)`` (axial slices along the last axis); all functions are pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medm2g_core.modalities import CT_HU_RANGE

MASK_DATASET = "dataset"
"""Mask convention of the SynthRAD names when the dataset's own body mask (``mask.nii.gz``) was used."""
MASK_THRESHOLD = "HU>-500"
"""Mask convention when the mask was derived from the reference CT (``body_mask``: HU > −500)."""


def synthrad_names(mask: str) -> dict[str, str]:
    """SynthRAD2023 metric names with the body mask's provenance in the convention (``MASK_DATASET`` — the
    challenge's, comparable with its leaderboard — or ``MASK_THRESHOLD``)."""
    return {
        "mae": f"MAE[synthrad, HU, mask: {mask}, no clip]",
        "psnr": f"PSNR[synthrad, HU -1024..3000, mask: {mask}]",
        "ssim": f"SSIM[synthrad, HU -1024..3000, mask: {mask}, crop 3]",
    }


WINDOW8_NAMES = {
    "mae": "MAE[8-bit window, grey levels, mask]",
    "psnr": "PSNR[8-bit window 0..255, mask]",
    "ssim": "SSIM[8-bit window 0..255, mask, crop 3, per slice]",
}
"""Names of the CT metrics when the reference CT is an 8-bit display window (``CT_WINDOW_8BIT_UNITS``):
grey levels, never HU."""

SYNDIFF_NAMES = {
    "psnr": "PSNR[syndiff, mean1-max1, per slice]",
    "ssim": "SSIM[syndiff, mean1-max1, data_range 1, per slice]",
}


def _check_pair(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> None:
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference {reference.shape}; resample to the reference grid first")
    if mask is not None and mask.shape != reference.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {reference.shape}")
    if mask is not None and not np.any(mask):
        raise ValueError("the mask is empty; no voxel to score")


def mae(prediction: np.ndarray, reference: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """Mean absolute error (units of the images, e.g. HU) over ``mask`` (all voxels when None)."""
    _check_pair(prediction, reference, mask)
    difference = np.abs(prediction.astype(np.float64) - reference.astype(np.float64))
    return float(difference[mask.astype(bool)].mean() if mask is not None else difference.mean())


def psnr(prediction: np.ndarray, reference: np.ndarray, *, data_range: float, mask: np.ndarray | None = None) -> float:
    """PSNR in dB = 10·log10(data_range² / MSE) over ``mask`` (scikit-image's definition)."""
    _check_pair(prediction, reference, mask)
    from skimage.metrics import peak_signal_noise_ratio

    prediction = prediction.astype(np.float64)
    reference = reference.astype(np.float64)
    if mask is not None:
        prediction, reference = prediction[mask.astype(bool)], reference[mask.astype(bool)]
    return float(peak_signal_noise_ratio(reference, prediction, data_range=data_range))


def ssim(
    prediction: np.ndarray, reference: np.ndarray, *, data_range: float, mask: np.ndarray | None = None, crop: int = 0
) -> float:
    """SSIM by ``skimage.metrics.structural_similarity`` (7-voxel uniform window, N-D), explicit ``data_range``.

    With ``mask`` the full SSIM map is averaged over the mask after cropping ``crop`` voxels from
    every border (the map is invalid within half a window of the edge); without it, skimage's mean.
    """
    _check_pair(prediction, reference, mask)
    from skimage.metrics import structural_similarity
    from skimage.util import crop as crop_border

    value, ssim_map = structural_similarity(
        reference.astype(np.float64), prediction.astype(np.float64), data_range=data_range, full=True
    )
    if mask is None:
        return float(value)
    return float(crop_border(ssim_map, crop)[crop_border(mask, crop).astype(bool)].mean(dtype=np.float64))


def body_mask(reference_hu: np.ndarray, *, threshold_hu: float = -500.0) -> np.ndarray:
    """Body mask from a reference CT: voxels above ``threshold_hu`` (HU), holes filled per axial slice
    and in 3D, only the largest connected component kept (drops the table and stray noise)."""
    from scipy import ndimage

    mask = reference_hu > threshold_hu
    if not mask.any():
        return mask
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    if mask.ndim == 3:
        for k in range(mask.shape[2]):
            mask[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
    return ndimage.binary_fill_holes(mask)


def synthrad_metrics(prediction_hu: np.ndarray, reference_hu: np.ndarray, *, mask: np.ndarray) -> dict[str, float]:
    """SynthRAD2023 MAE (HU), PSNR (dB) and SSIM of one patient, keyed ``mae``/``psnr``/``ssim``.

    ``mask`` is the body mask (``body_mask(reference_hu)`` when the dataset gives none).
    """
    _check_pair(prediction_hu, reference_hu, mask)
    low, high = CT_HU_RANGE
    mask = mask > 0
    prediction = prediction_hu.astype(np.float64)
    reference = reference_hu.astype(np.float64)
    result = {"mae": mae(prediction, reference, mask=mask)}
    pred_clipped, ref_clipped = np.clip(prediction, low, high), np.clip(reference, low, high)
    result["psnr"] = psnr(pred_clipped, ref_clipped, data_range=high - low, mask=mask)
    pred_ssim = np.where(mask, pred_clipped, low) - low
    ref_ssim = np.where(mask, ref_clipped, low) - low
    result["ssim"] = ssim(pred_ssim, ref_ssim, data_range=high - low, mask=mask, crop=3)
    return result


def window8_metrics(prediction: np.ndarray, reference: np.ndarray, *, threshold: float = 10.0) -> dict[str, float]:
    """MAE (grey levels), PSNR (dB, range 255) and SSIM of a CT already windowed to 8 bits (AANLIB),
    keyed ``mae``/``psnr``/``ssim``, over the head: reference above ``threshold`` grey levels with holes
    filled (``body_mask``'s steps). There is no HU scale to report on: the window is unknown."""
    mask = body_mask(reference.astype(np.float64), threshold_hu=threshold)
    _check_pair(prediction, reference, mask)
    prediction = np.clip(prediction.astype(np.float64), 0.0, 255.0)
    reference = np.clip(reference.astype(np.float64), 0.0, 255.0)
    result = {"mae": mae(prediction, reference, mask=mask), "psnr": psnr(prediction, reference, data_range=255.0, mask=mask)}
    # SSIM per axial slice, then the mean: AANLIB's stacked slices are not contiguous (gaps between them).
    pred_masked, ref_masked = np.where(mask, prediction, 0.0), np.where(mask, reference, 0.0)
    per_slice = [ssim(pred_masked[:, :, k], ref_masked[:, :, k], data_range=255.0, mask=mask[:, :, k], crop=3)
                 for k in range(reference.shape[2]) if mask[:, :, k].any()]
    result["ssim"] = float(np.mean(per_slice)) if per_slice else float("nan")
    return result


def normalize_mean_max(volume: np.ndarray) -> np.ndarray:
    """SynDiff/IXI intensity scaling: divide by the volume mean, then by the resulting maximum."""
    volume = volume.astype(np.float64)
    mean = volume.mean()
    if mean <= 0:
        raise ValueError("volume mean is not positive; mean-1 scaling needs a non-negative MR magnitude image")
    volume = volume / mean
    return volume / volume.max()


@dataclass
class SliceMetrics:
    """Per-slice SynDiff values (slice index ``k`` → value) and how many empty slices were skipped."""

    psnr: dict[int, float]
    ssim: dict[int, float]
    skipped_empty: int = 0
    notes: list[str] = field(default_factory=list)

    def mean(self) -> dict[str, float]:
        return {"psnr": float(np.mean(list(self.psnr.values()))), "ssim": float(np.mean(list(self.ssim.values())))}


def syndiff_metrics(prediction: np.ndarray, reference: np.ndarray) -> SliceMetrics:
    """SynDiff/IXI PSNR (dB, 20·log10(max(gt)/RMSE)) and SSIM per axial slice of one subject.

    Both volumes are scaled independently by ``normalize_mean_max``; 2D inputs count as one slice.
    """
    _check_pair(prediction, reference)
    from skimage.metrics import structural_similarity

    prediction = normalize_mean_max(prediction)
    reference = normalize_mean_max(reference)
    if reference.ndim == 2:
        prediction, reference = prediction[:, :, None], reference[:, :, None]
    result = SliceMetrics(psnr={}, ssim={})
    for k in range(reference.shape[2]):
        gt, fake = reference[:, :, k], prediction[:, :, k]
        if gt.max() <= 0:
            result.skipped_empty += 1
            continue
        rmse = float(np.sqrt(np.mean((gt - fake) ** 2)))
        result.psnr[k] = float("inf") if rmse == 0 else float(20 * np.log10(gt.max() / rmse))
        result.ssim[k] = float(structural_similarity(gt, fake, data_range=1.0))
    if result.skipped_empty:
        result.notes.append(f"{result.skipped_empty} empty reference slice(s) skipped")
    return result


def mean_std(values: list[float] | np.ndarray) -> tuple[float, float]:
    """Mean and population standard deviation (ddof 0) of finite values; (nan, nan) when none."""
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return float("nan"), float("nan")
    return float(array.mean()), float(array.std())
