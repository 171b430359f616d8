"""Joint generation (CoDi §3.3): several streams denoised in ONE loop, each conditioned on its partners' latents.

Each stream is one flow's denoiser with its own condition, scheduler and noise. At every step, stream ``i``
sees the **environment tokens** of every partner ``j ≠ i``, computed from ``j``'s *current noisy latent*
(``environment(j, x_j)``; never from ``x_i`` — CoDi's released inference code feeds a diffuser its own latent,
a bug not copied). The tokens reach the denoiser only through its cross-attention: they are appended as
semantic sources of weight 0, so the pooled embedding driving the adaptive parameters is the stream's own.

Coupled prediction of stream ``i`` (``joint_step``), with ``c_i`` its own condition and ``g_i`` its gate::

    ε̂_i = base_i + g_i · (ε_i(x_i, t, c_i ∪ env(x_j)) − ε_i(x_i, t, c_i))

``base_i`` is the stream's own prediction — in the sampler exactly what ``sample()`` computes (guidance
included), in training the conditional one. With ``g_i = 0`` the streams are sampled exactly as alone, which
is how the joint stage starts (its gates are zero-initialised). All streams step at the same timesteps.

This module takes callables (denoisers, the environment encoder, gates as tensors); it imports nothing from
``flows``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from medm2g_core.models.conditioning import ConditionInputs, SemanticSource, assemble_condition
from medm2g_core.sampling.sample import (
    Denoiser,
    Generators,
    _checked_generators,
    _step_kwargs,
    default_device,
    denoise_step,
    guided_prediction,
    initial_noise,
    plan_guidance,
    x0_scheduler,
)

Environment = Callable[[int, torch.Tensor], SemanticSource]  # (stream j, its noisy latent (B, ...)) → its environment tokens


def partner_inputs(inputs: ConditionInputs, partners: Sequence[SemanticSource]) -> ConditionInputs:
    """``inputs`` with the partners' environment tokens appended as semantic sources of weight 0: they enter the
    cross-attention, while the pooled embedding (Σ w·pooled / Σ w) stays the stream's own."""
    extra = [SemanticSource(tokens=p.tokens, mask=p.mask, pooled=p.pooled, weight=0.0, name=p.name) for p in partners]
    return ConditionInputs(semantic=list(inputs.semantic) + extra, spatial=list(inputs.spatial))


def joint_step(denoisers: Sequence[Denoiser], noisy: Sequence[torch.Tensor], timesteps: torch.Tensor, *,
               inputs: Sequence[ConditionInputs], environment: Environment, gates: Sequence[torch.Tensor | float],
               bases: Sequence[torch.Tensor] | None = None, alone: Sequence[torch.Tensor | None] | None = None,
               condition_dims: Sequence[int | None] | None = None) -> list[torch.Tensor]:
    """Coupled predictions of every stream at one step (module docstring).

    Args:
        denoisers: one per stream, ``denoiser(x (B, ...), t, condition=Condition) -> prediction``.
        noisy: x_i per stream (B, ...), the same B; timesteps: scalar or (B,), shared by every stream.
        inputs: each stream's own condition sources (every source kept).
        environment: ``environment(j, x_j) -> SemanticSource`` (B, N, C) tokens of stream j's latent.
        gates: g_i per stream (scalar tensors or floats).
        bases: each stream's own prediction (the sampler's guided one); None = ``alone``.
        alone: ε_i(x_i, t, c_i) when already computed (the sampler without guidance: its base); None = computed here.
    Returns:
        ε̂_i per stream, shaped like ``noisy[i]``.
    """
    count = len(denoisers)
    if not (len(noisy) == len(inputs) == len(gates) == count) or count < 2:
        raise ValueError("joint_step needs two or more streams, each with a noisy latent, its inputs and a gate")
    dims = list(condition_dims) if condition_dims is not None else [None] * count
    tokens = [environment(j, noisy[j]) for j in range(count)]
    out = []
    for i in range(count):
        batch = noisy[i].shape[0]
        own = None if alone is None else alone[i]
        if own is None:
            own = denoisers[i](noisy[i], timesteps, condition=assemble_condition(inputs[i], condition_dim=dims[i], batch_size=batch))
        partners = [tokens[j] for j in range(count) if j != i]
        coupled = denoisers[i](noisy[i], timesteps, condition=assemble_condition(partner_inputs(inputs[i], partners), batch_size=batch))
        base = own if bases is None else bases[i]
        out.append(base + gates[i] * (coupled - own))
    return out


@dataclass
class JointStream:
    """One stream of ``sample_joint``: what ``sample()`` takes for one flow (its denoiser, scheduler, output
    ``shape``, condition, prediction type, guidance, clipping, η, ``condition_dim``) and its ``generator``."""

    denoiser: Denoiser
    scheduler: Any
    shape: Sequence[int]
    condition: ConditionInputs | None
    prediction_type: str
    guidance: float | Sequence[float] = 1.0
    clip_sample: bool = True
    clip_range: float = 1.0
    eta: float = 0.0
    generator: Generators = None
    condition_dim: int | None = None


@torch.no_grad()
def sample_joint(streams: Sequence[JointStream], *, environment: Environment, gates: Sequence[torch.Tensor | float], steps: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Generate every stream together: x0 samples, one (B, ...) = ``stream.shape`` per stream.

    Each step evaluates each stream's own guided prediction as ``sample()`` does, couples the streams through
    ``joint_step`` on their current noisy latents, and steps each stream's scheduler. Each stream draws its
    noise from its own generator(s), so with every gate 0 the outputs equal ``sample()`` run on each stream
    with the same generators. The streams' schedulers must visit the same timesteps (the joint stage was
    trained with one t for all streams).
    """
    if len(streams) < 2:
        raise ValueError("sample_joint needs two or more streams")
    device = default_device(streams[0].denoiser, device)
    schedulers, plans, latents, step_kwargs, inputs, dims = [], [], [], [], [], []
    for stream in streams:
        scheduler = x0_scheduler(stream.scheduler)
        condition = stream.condition if stream.condition is not None else ConditionInputs()
        dim = stream.condition_dim if stream.condition_dim is not None else getattr(getattr(stream.denoiser, "config", None), "condition_dim", None)
        plans.append(plan_guidance(condition, guidance=stream.guidance, batch=stream.shape[0], device=device, condition_dim=dim))
        generator = _checked_generators(stream.generator, batch=stream.shape[0])
        scheduler.set_timesteps(steps, device=device)
        latents.append(initial_noise(stream.shape, generator=generator, device=device, dtype=dtype) * scheduler.init_noise_sigma)
        step_kwargs.append(_step_kwargs(scheduler, eta=stream.eta, generator=generator))
        schedulers.append(scheduler)
        inputs.append(condition)
        dims.append(dim)
    timesteps = schedulers[0].timesteps
    for scheduler in schedulers[1:]:
        if not torch.equal(scheduler.timesteps.cpu(), timesteps.cpu()):
            raise ValueError("the streams' samplers visit different timesteps; give them the same schedule and step count")
    denoisers = [stream.denoiser for stream in streams]
    for index, t in enumerate(timesteps):
        model_inputs = [scheduler.scale_model_input(x, schedulers[i].timesteps[index]) for i, (scheduler, x) in enumerate(zip(schedulers, latents))]
        bases = [guided_prediction(denoisers[i], model_inputs[i], t, plans[i]) for i in range(len(streams))]
        alone = [base if plan.conditional_only else None for base, plan in zip(bases, plans)]
        predictions = joint_step(denoisers, model_inputs, t, inputs=inputs, environment=environment, gates=gates, bases=bases,
                                 alone=alone, condition_dims=dims)
        latents = [denoise_step(schedulers[i], predictions[i], latents[i], t, prediction_type=stream.prediction_type,
                                clip_sample=stream.clip_sample, clip_range=stream.clip_range, step_kwargs=step_kwargs[i])
                   for i, stream in enumerate(streams)]
    return latents
