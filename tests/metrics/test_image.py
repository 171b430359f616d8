import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medm2g_core.metrics.image import body_mask, mae, mean_std, normalize_mean_max, psnr, ssim, syndiff_metrics, synthrad_metrics


@pytest.fixture
def ct_pair():
    rng = np.random.default_rng(0)
    reference = np.full((36, 32, 10), -1000.0)
    reference[6:30, 5:27, :] = 40.0 + rng.normal(0, 25, (24, 22, 10))
    reference[14:20, 12:16, :] = 1500.0  # bone
    reference[0, 0, 0] = 3500.0  # above the clip range: must be clipped for PSNR/SSIM but not MAE
    prediction = reference + rng.normal(0, 30, reference.shape)
    return prediction, reference


def test_psnr_and_ssim_match_scikit_image(ct_pair):
    prediction, reference = ct_pair
    assert psnr(prediction, reference, data_range=4024) == pytest.approx(peak_signal_noise_ratio(reference, prediction, data_range=4024), abs=1e-4)
    assert ssim(prediction, reference, data_range=4024) == pytest.approx(structural_similarity(reference, prediction, data_range=4024), abs=1e-4)
    assert mae(prediction, reference) == pytest.approx(np.abs(prediction - reference).mean())


def test_synthrad_protocol_by_hand(ct_pair):
    prediction, reference = ct_pair
    mask = body_mask(reference)
    result = synthrad_metrics(prediction, reference, mask=mask)
    m = mask.astype(bool)
    assert result["mae"] == pytest.approx(np.abs(prediction - reference)[m].mean())  # no clipping
    gt, pr = np.clip(reference, -1024, 3000), np.clip(prediction, -1024, 3000)
    assert result["psnr"] == pytest.approx(peak_signal_noise_ratio(gt[m], pr[m], data_range=4024), abs=1e-4)
    gt_s, pr_s = np.where(m, gt, -1024) + 1024, np.where(m, pr, -1024) + 1024
    _, full = structural_similarity(gt_s, pr_s, data_range=4024, full=True)
    expected = full[3:-3, 3:-3, 3:-3][m[3:-3, 3:-3, 3:-3]].mean()
    assert result["ssim"] == pytest.approx(expected, abs=1e-4)


def test_body_mask_fills_holes_and_drops_table():
    volume = np.full((30, 30, 4), -1000.0)
    volume[5:25, 5:25, :] = 0.0
    volume[12:16, 12:16, :] = -900.0  # lung-like hole inside the body
    volume[28, :, :] = 200.0  # the couch, a separate component
    mask = body_mask(volume)
    assert mask[13, 13, 1] and not mask[28, 10, 1] and mask.sum() == 20 * 20 * 4


def test_syndiff_protocol_by_hand():
    rng = np.random.default_rng(1)
    reference = np.abs(rng.normal(100, 30, (32, 32, 3)))
    reference[:, :, 2] = 0  # an empty slice is skipped
    prediction = reference * 1.1 + rng.normal(0, 3, reference.shape)
    result = syndiff_metrics(prediction, reference)
    assert result.skipped_empty == 1 and set(result.psnr) == {0, 1}
    gt, fake = normalize_mean_max(reference), normalize_mean_max(prediction)
    for k in (0, 1):
        rmse = np.sqrt(np.mean((gt[:, :, k] - fake[:, :, k]) ** 2))
        assert result.psnr[k] == pytest.approx(20 * np.log10(gt[:, :, k].max() / rmse))
        assert result.ssim[k] == pytest.approx(structural_similarity(gt[:, :, k], fake[:, :, k], data_range=1.0), abs=1e-4)
    assert normalize_mean_max(reference).max() == pytest.approx(1.0)


def test_errors_and_summary():
    with pytest.raises(ValueError, match="resample"):
        mae(np.zeros((2, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="mask is empty"):
        mae(np.zeros((2, 2)), np.zeros((2, 2)), mask=np.zeros((2, 2), bool))
    assert mean_std([1.0, 3.0, float("inf")]) == (2.0, 1.0)
