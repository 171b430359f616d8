"""What a denoiser's output means: the clean sample x0 implied by an ε, v or x0 prediction.

Symbols as in ``flows/objective.py``: x_t the noisy input at integer timestep t, ᾱ_t =
``alphas_cumprod[t]``; ``prediction_type`` is ``epsilon`` (ε), ``v_prediction`` (v) or ``sample`` (x0).
The sampling loop needs only this; the training objective reuses it.
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def alphas_at(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """ᾱ_t for each sample, shaped ``(B, 1, ..., 1)`` to broadcast against ``like`` (B, ...)."""
    values = alphas_cumprod.to(device=like.device)[timesteps.to(like.device).long()].to(like.dtype)
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def predicted_x0(prediction: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor, *, alphas_cumprod: torch.Tensor,
                 prediction_type: str) -> torch.Tensor:
    """x0 implied by a network output at ``noisy`` = x_t.

    ε: x0 = (x_t − sqrt(1−ᾱ)·ε)/sqrt(ᾱ);  v: x0 = sqrt(ᾱ)·x_t − sqrt(1−ᾱ)·v;  sample: x0 itself.
    """
    if prediction_type == "sample":
        return prediction
    abar = alphas_at(alphas_cumprod, timesteps, noisy)
    if prediction_type == "epsilon":
        return (noisy - (1 - abar).sqrt() * prediction) / abar.sqrt()
    if prediction_type == "v_prediction":
        return abar.sqrt() * noisy - (1 - abar).sqrt() * prediction
    raise ValueError(f"prediction_type {prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}")
