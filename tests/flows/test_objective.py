"""The diffusion objective: identities checked against diffusers and by hand, end points, dropout masks."""

from __future__ import annotations

import pytest
import torch

from medm2g_core.flows.config import FlowConfig
from medm2g_core.flows.objective import (
    add_noise,
    diffusion_loss,
    make_noise_scheduler,
    min_snr_weights,
    predicted_noise,
    predicted_x0,
    regression_loss,
    sample_keep_mask,
    sample_timesteps,
    signal_to_noise,
    training_target,
)
from medm2g_core.serialization import load_config, save_config


@pytest.fixture(params=["squaredcos_cap_v2", "scaled_linear"])
def scheduler(request):
    return make_noise_scheduler(FlowConfig(beta_schedule=request.param))


def batch():
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 5, 5, generator=generator) * 2 - 1
    noise = torch.randn(4, 1, 5, 5, generator=generator)
    return x0, noise, torch.tensor([0, 10, 500, 999])


def test_add_noise_and_velocity_match_diffusers(scheduler):
    x0, noise, t = batch()
    abar = scheduler.alphas_cumprod
    torch.testing.assert_close(add_noise(x0, noise, t, alphas_cumprod=abar), scheduler.add_noise(x0, noise, t))
    torch.testing.assert_close(training_target(x0, noise, t, alphas_cumprod=abar, prediction_type="v_prediction"),
                               scheduler.get_velocity(x0, noise, t))
    assert training_target(x0, noise, t, alphas_cumprod=abar, prediction_type="epsilon") is noise
    assert training_target(x0, noise, t, alphas_cumprod=abar, prediction_type="sample") is x0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_perfect_prediction_recovers_x0_and_noise(scheduler, prediction_type):
    x0, noise, t = batch()
    abar = scheduler.alphas_cumprod
    noisy = add_noise(x0, noise, t, alphas_cumprod=abar)
    target = training_target(x0, noise, t, alphas_cumprod=abar, prediction_type=prediction_type)
    recovered = predicted_x0(target, noisy, t, alphas_cumprod=abar, prediction_type=prediction_type)
    torch.testing.assert_close(recovered[1:3], x0[1:3], atol=1e-4, rtol=1e-4)
    if prediction_type != "sample":  # ε from x0 divides by sqrt(1−ᾱ) ≈ 0 at t = 0
        torch.testing.assert_close(predicted_noise(target, noisy, t, alphas_cumprod=abar, prediction_type=prediction_type)[1:],
                                   noise[1:], atol=1e-3, rtol=1e-3)


def test_end_points(scheduler):
    x0, noise, _ = batch()
    abar = scheduler.alphas_cumprod
    first, last = torch.zeros(4, dtype=torch.long), torch.full((4,), 999)
    # Deviations are bounded by the schedule's end values: |x0|, |ε| < 4 here.
    near_zero, near_one = 4 * float((1 - abar[0]).sqrt()) + 1e-6, 4 * float(abar[-1].sqrt()) + 4 * float(1 - (1 - abar[-1]).sqrt()) + 1e-6
    assert near_zero < 0.15 and near_one < 0.3
    # t = 0: x_t ≈ x0 and v = sqrt(ᾱ)ε − sqrt(1−ᾱ)x0 ≈ ε
    torch.testing.assert_close(add_noise(x0, noise, first, alphas_cumprod=abar), x0, atol=near_zero, rtol=0)
    torch.testing.assert_close(training_target(x0, noise, first, alphas_cumprod=abar, prediction_type="v_prediction"), noise,
                               atol=near_zero + 4 * float(1 - abar[0].sqrt()), rtol=0)
    # t = T−1: x_t ≈ ε and v ≈ −x0
    torch.testing.assert_close(add_noise(x0, noise, last, alphas_cumprod=abar), noise, atol=near_one, rtol=0)
    torch.testing.assert_close(training_target(x0, noise, last, alphas_cumprod=abar, prediction_type="v_prediction"), -x0,
                               atol=near_one, rtol=0)


def test_min_snr_weights_by_hand(scheduler):
    t = torch.tensor([0, 999, 300])
    snr = signal_to_noise(t, alphas_cumprod=scheduler.alphas_cumprod)
    assert snr[0] > 5 > snr[1]
    w_eps = min_snr_weights(t, alphas_cumprod=scheduler.alphas_cumprod, gamma=5.0, prediction_type="epsilon")
    torch.testing.assert_close(w_eps, torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert w_eps[1] == pytest.approx(1.0)  # below γ: ε-loss unweighted
    w_x0 = min_snr_weights(t, alphas_cumprod=scheduler.alphas_cumprod, gamma=5.0, prediction_type="sample")
    assert w_x0[0] == pytest.approx(5.0)
    w_v = min_snr_weights(t, alphas_cumprod=scheduler.alphas_cumprod, gamma=5.0, prediction_type="v_prediction")
    torch.testing.assert_close(w_v, torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))


def test_losses_by_hand():
    prediction, target = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert diffusion_loss(prediction, target) == pytest.approx((2.5 + 2.0) / 2)
    assert diffusion_loss(prediction, target, weights=torch.tensor([2.0, 0.0])) == pytest.approx(2.5)
    assert regression_loss(prediction, target) == pytest.approx(5 / 4)
    assert regression_loss(prediction, target, norm="l2") == pytest.approx((1 + 4 + 0 + 4) / 4)
    with pytest.raises(ValueError, match="loss norm"):
        regression_loss(prediction, target, norm="huber")


def test_warm_start_loss_is_validated():
    from medm2g_core.flows.config import FlowConfig

    assert FlowConfig().warm_start_loss == "l1"
    assert FlowConfig(warm_start_loss="l2").warm_start_loss == "l2"
    with pytest.raises(ValueError, match="warm_start_loss"):
        FlowConfig(warm_start_loss="l3")


def test_keep_mask_rates_and_seed():
    keep = sample_keep_mask(20000, num_sources=2, source_dropout=(0.0, 0.5), condition_dropout=0.1,
                            generator=torch.Generator().manual_seed(0))
    assert keep.shape == (20000, 2) and keep.dtype == torch.bool
    assert keep[:, 0].float().mean() == pytest.approx(0.9, abs=0.01)
    assert keep[:, 1].float().mean() == pytest.approx(0.45, abs=0.015)
    again = sample_keep_mask(20000, num_sources=2, source_dropout=(0.0, 0.5), condition_dropout=0.1,
                             generator=torch.Generator().manual_seed(0))
    assert torch.equal(keep, again)
    with pytest.raises(ValueError, match="one per source"):
        sample_keep_mask(2, num_sources=3, source_dropout=(0.1, 0.2))
    t = sample_timesteps(1000, num_train_timesteps=50, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < 50


def test_flow_config_presets_and_roundtrip(tmp_path):
    demo, paper = FlowConfig.demo_cpu(pair="mri__ct"), FlowConfig.paper_scale()
    assert (demo.latent, demo.prediction_type, demo.beta_schedule, demo.sampling_steps) == (False, "sample", "squaredcos_cap_v2", 10)
    assert (paper.latent, paper.prediction_type, paper.beta_schedule, paper.beta_start, paper.beta_end, paper.guidance) == (
        True, "epsilon", "scaled_linear", 0.00085, 0.012, 7.5)
    save_config(tmp_path, FlowConfig(source_dropout=(0.1, 0.2)), class_name="FlowConfig")
    assert load_config(tmp_path, FlowConfig).source_dropout == (0.1, 0.2)
    with pytest.raises(ValueError, match="prediction_type"):
        FlowConfig(prediction_type="x0")


def test_diffusion_loss_l1_is_the_mean_absolute_error_and_unknown_norms_are_refused():
    import pytest as _pytest
    import torch as _torch

    from medm2g_core.flows.objective import diffusion_loss

    prediction, target = _torch.tensor([[1.0, -2.0], [0.5, 0.5]]), _torch.zeros(2, 2)
    assert float(diffusion_loss(prediction, target, norm="l1")) == _pytest.approx((1.5 + 0.5) / 2)
    assert float(diffusion_loss(prediction, target)) == _pytest.approx(((1 + 4) / 2 + 0.25) / 2)
    with _pytest.raises(ValueError, match="valid: l2, l1"):
        diffusion_loss(prediction, target, norm="huber")
