"""The DDPM training objective as pure functions of tensors.

Symbols (per sample, broadcast over the data axes): x0 the clean target, ε standard normal noise,
t an integer timestep in [0, T), ᾱ_t = ``alphas_cumprod[t]``,

    x_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε                       (``add_noise``)
    v   = sqrt(ᾱ_t)·ε − sqrt(1−ᾱ_t)·x0                         (diffusers' ``get_velocity``)
    SNR(t) = ᾱ_t / (1−ᾱ_t)

``prediction_type`` names what the network outputs: ``epsilon`` (ε), ``v_prediction`` (v) or
``sample`` (x0). The only stateful object is the diffusers ``DDPMScheduler`` that supplies
``alphas_cumprod`` (``make_noise_scheduler``); everything else takes that tensor as an argument.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from medm2g_core.flows.config import LOSS_NORMS, FlowConfig
from medm2g_core.sampling.prediction import PREDICTION_TYPES, predicted_x0  # noqa: F401 - part of the objective's API
from medm2g_core.sampling.prediction import alphas_at as _gather


def make_noise_scheduler(config: FlowConfig):
    """The training-time ``diffusers.DDPMScheduler`` of ``config`` (schedule + prediction type)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        prediction_type=config.prediction_type,
        clip_sample=config.clip_sample,
        clip_sample_range=config.clip_range,
        timestep_spacing=config.timestep_spacing,
    )


def sample_timesteps(batch: int, *, num_train_timesteps: int, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform integer timesteps in ``[0, T)``, shape ``(batch,)`` (long)."""
    return torch.randint(0, num_train_timesteps, (batch,), generator=generator, device=device)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, *, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε; ``x0``/``noise`` (B, ...), ``timesteps`` (B,)."""
    abar = _gather(alphas_cumprod, timesteps, x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def training_target(x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, *, alphas_cumprod: torch.Tensor,
                    prediction_type: str) -> torch.Tensor:
    """What the network should output at ``x_t``: ε, v = sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x0, or x0. Shape of ``x0``."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        abar = _gather(alphas_cumprod, timesteps, x0)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0
    raise ValueError(f"prediction_type {prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}")


def predicted_noise(prediction: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor, *, alphas_cumprod: torch.Tensor,
                    prediction_type: str) -> torch.Tensor:
    """ε implied by a network output at x_t (ε: itself; v: sqrt(1−ᾱ)·x_t + sqrt(ᾱ)·v; x0: (x_t − sqrt(ᾱ)x0)/sqrt(1−ᾱ))."""
    if prediction_type == "epsilon":
        return prediction
    abar = _gather(alphas_cumprod, timesteps, noisy)
    if prediction_type == "v_prediction":
        return (1 - abar).sqrt() * noisy + abar.sqrt() * prediction
    if prediction_type == "sample":
        return (noisy - abar.sqrt() * prediction) / (1 - abar).sqrt()
    raise ValueError(f"prediction_type {prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}")


def signal_to_noise(timesteps: torch.Tensor, *, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t/(1−ᾱ_t), shape ``(B,)``."""
    abar = alphas_cumprod.to(timesteps.device)[timesteps.long()]
    return abar / (1 - abar)


def min_snr_weights(timesteps: torch.Tensor, *, alphas_cumprod: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ per-sample loss weights (Hang et al. 2023), shape ``(B,)``.

    Expressed for the loss on each prediction type so that all three weight the implied x0 error
    by min(SNR, γ): ε → min(SNR, γ)/SNR, v → min(SNR, γ)/(SNR+1), x0 → min(SNR, γ).
    """
    snr = signal_to_noise(timesteps, alphas_cumprod=alphas_cumprod)
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    if prediction_type == "sample":
        return clipped
    raise ValueError(f"prediction_type {prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}")


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor, *, weights: torch.Tensor | None = None,
                   norm: str = "l2") -> torch.Tensor:
    """Mean squared (``norm="l2"``, the DDPM loss) or absolute (``"l1"``) error, optionally weighted per
    sample (``weights`` (B,)); scalar."""
    if norm not in LOSS_NORMS:
        raise ValueError(f"loss norm {norm!r}; valid: {', '.join(LOSS_NORMS)}")
    error = F.mse_loss if norm == "l2" else F.l1_loss
    per_sample = error(prediction.float(), target.float(), reduction="none").flatten(1).mean(1)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample)
    return per_sample.mean()


def regression_loss(prediction: torch.Tensor, target: torch.Tensor, *, norm: str = "l1") -> torch.Tensor:
    """Loss of the warm-start regressor (``FlowConfig.warm_start_loss``; DESIGN.md §8: L1 beat L2 by 1.6–2 dB on
    registered translation); scalar."""
    return diffusion_loss(prediction, target, norm=norm)


def sample_keep_mask(batch: int, *, num_sources: int, source_dropout: float | Sequence[float] = 0.0,
                     condition_dropout: float = 0.0, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Which sources each training sample keeps: bool ``(batch, num_sources)``.

    Each source is dropped independently with its ``source_dropout`` probability (missing-source
    robustness), and with probability ``condition_dropout`` a sample drops *all* sources (the
    unconditional branch used by classifier-free guidance).
    """
    if isinstance(source_dropout, (int, float)):
        probabilities = [float(source_dropout)] * num_sources
    else:
        probabilities = [float(p) for p in source_dropout]
        if len(probabilities) != num_sources:
            raise ValueError(f"source_dropout has {len(probabilities)} values for {num_sources} sources; give one per source")
    drop_p = torch.tensor(probabilities, device=device).expand(batch, num_sources)
    keep = torch.rand(batch, num_sources, generator=generator, device=device) >= drop_p
    drop_all = torch.rand(batch, 1, generator=generator, device=device) < condition_dropout
    return keep & ~drop_all
