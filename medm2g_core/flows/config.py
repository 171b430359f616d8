"""``FlowConfig``: how one flow is trained and sampled (objective, schedule, dropout, sampler).

Stored as ``flows/<pair>/config.json`` beside the denoiser's own config, so that a flow is always
sampled with the convention it was trained with (STYLE.md: one convention per objective, written
in the saved config). Two presets:

- ``FlowConfig.demo_cpu()`` — DESIGN.md §8, measured on 64² phantoms: pixel space, x0 (``sample``)
  prediction, cosine schedule, x0 clipping, DDIM 10 trailing steps, L1-regression warm start.
- ``FlowConfig.paper_scale()`` — CoDi's defaults (MedM2G publishes none): latent space,
  T = 1000, betas 0.00085→0.012 on the sqrt-linear ("scaled_linear") schedule as in Stable
  Diffusion/CoDi, epsilon prediction, DDIM 50, guidance 7.5.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from medm2g_core.sampling.prediction import PREDICTION_TYPES

PredictionType = Literal["epsilon", "v_prediction", "sample"]
BetaSchedule = Literal["squaredcos_cap_v2", "scaled_linear", "linear"]
SamplerKind = Literal["ddim", "dpmsolver++"]

BETA_SCHEDULES = ("squaredcos_cap_v2", "scaled_linear", "linear")
SAMPLERS = ("ddim", "dpmsolver++")
LOSS_NORMS = ("l2", "l1")
TIMESTEP_DRAWS = ("uniform", "sampler")


@dataclass
class FlowConfig:
    """Objective, noise schedule, condition dropout and sampler of one flow.

    Attributes:
        pair: the flow's canonical name (``Pair.name``), informative.
        latent: diffuse in autoencoder latent space (paper) or in pixel space (§8, small images).
        prediction_type: what the denoiser outputs: ``epsilon`` (noise), ``v_prediction``
            (v = sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x0) or ``sample`` (x0).
        num_train_timesteps, beta_schedule, beta_start, beta_end: DDPM schedule (diffusers names).
        min_snr_gamma: Min-SNR-γ loss weighting (Hang et al. 2023); ``None`` = uniform.
        loss: ``l2`` — the DDPM mean squared error; ``l1`` — absolute error of the prediction (with x0
            prediction: the per-pixel median, which MAE/PSNR reward and which the regression warm start uses).
        timesteps: which noise levels training draws: ``uniform`` — every t in [0, T) (DDPM); ``sampler`` — half of
            each batch on the ``sampling_steps`` grid the sampler visits, half uniform (a few-step sampler only ever
            asks for those levels; the uniform half keeps other step counts usable).
        source_dropout: per-source probability of dropping a source in training (one value for
            all sources, or one per source modality). A record of what training used: it is written from
            the recipe's ``flows.source_dropout`` (0 for single-source flows), which is where it is set.
        condition_dropout: probability of dropping *all* sources at once (the unconditional
            branch of classifier-free guidance).
        sampler, sampling_steps, guidance, clip_sample, clip_range, timestep_spacing, eta: sampling.
        warm_start_fraction: share of the training budget spent as a regressor of x0 first (§8).
        warm_start_loss: that regressor's loss: ``l1`` — the per-pixel median (§8: 1.6–2 dB above L2 on registered
            translation); ``l2`` — the mean, for flows whose target is not pinned down by the source (report → X-ray:
            a pacemaker that sits a few pixels apart in each X-ray is in fewer than half of them at any one pixel, so
            the median drops it and the mean keeps it).
        ema_decay: decay of the EMA of the flow's weights (denoiser, adapters, and the shared cross-attention
            when the flow trains it), applied by the training loop; inference loads the EMA weights. None = no
            EMA. The one place a flow's EMA is set (``flows.training.ema_decay`` is refused).
    """

    pair: str = ""
    latent: bool = False
    prediction_type: PredictionType = "sample"
    num_train_timesteps: int = 1000
    beta_schedule: BetaSchedule = "squaredcos_cap_v2"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    min_snr_gamma: float | None = None
    loss: str = "l2"
    timesteps: str = "uniform"
    source_dropout: float | tuple[float, ...] = 0.0
    condition_dropout: float = 0.1
    sampler: SamplerKind = "ddim"
    sampling_steps: int = 10
    guidance: float = 1.0
    clip_sample: bool = True
    clip_range: float = 1.0
    timestep_spacing: Literal["trailing", "leading", "linspace"] = "trailing"
    eta: float = 0.0
    warm_start_fraction: float = 0.3
    warm_start_loss: str = "l1"
    ema_decay: float | None = 0.999

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {self.prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}")
        if self.loss not in LOSS_NORMS:
            raise ValueError(f"loss {self.loss!r}; valid: {', '.join(LOSS_NORMS)}")
        if self.warm_start_loss not in LOSS_NORMS:
            raise ValueError(f"warm_start_loss {self.warm_start_loss!r}; valid: {', '.join(LOSS_NORMS)}")
        if self.timesteps not in TIMESTEP_DRAWS:
            raise ValueError(f"timesteps {self.timesteps!r}; valid: {', '.join(TIMESTEP_DRAWS)}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule {self.beta_schedule!r}; valid: {', '.join(BETA_SCHEDULES)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r}; valid: {', '.join(SAMPLERS)}")
        if self.sampling_steps < 1 or self.sampling_steps > self.num_train_timesteps:
            raise ValueError(f"sampling_steps must be in 1..{self.num_train_timesteps}, got {self.sampling_steps}")
        if not 0.0 <= self.condition_dropout <= 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1], got {self.condition_dropout}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or null (no EMA), got {self.ema_decay}")

    @classmethod
    def demo_cpu(cls, **changes) -> "FlowConfig":
        """DESIGN.md §8 settings for 64² images on CPU (pixel space, x0 prediction, cosine, DDIM 10)."""
        return replace(cls(), **changes)

    @classmethod
    def paper_scale(cls, **changes) -> "FlowConfig":
        """CoDi's paper-scale defaults: latent space, scaled-linear 0.00085→0.012, ε, DDIM 50, guidance 7.5."""
        base = cls(
            latent=True,
            prediction_type="epsilon",
            beta_schedule="scaled_linear",
            sampling_steps=50,
            guidance=7.5,
            clip_sample=False,
            timestep_spacing="leading",
            warm_start_fraction=0.0,
            ema_decay=0.9999,
        )
        return replace(base, **changes)
