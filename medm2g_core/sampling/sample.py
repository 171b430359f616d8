"""The visible denoising loop shared by ``generate``, ``translate`` and ``evaluate``.

``sample()`` is the whole reverse process in one loop: each step evaluates the denoiser once on
all guidance branches stacked along the batch, combines them linearly (classifier-free guidance,
one scale per source if asked; the unconditional branch keeps a registered flow's source image), turns the result into x0, clips it, and lets a diffusers scheduler
(DDIM or DPM-Solver++) take the step. The scheduler is always stepped with x0 (its
``prediction_type`` is set to ``"sample"``), so every prediction type is clipped the same way.

Randomness follows the diffusers convention: ``generator`` is one ``torch.Generator`` for the whole
batch, or a list with one per batch item. With a list, item ``b``'s initial noise and every noise the
scheduler's stochastic step draws (DDIM η > 0, DPM-Solver++ SDE variants) come from its own
generator only, so an item's output does not depend on what else is in the batch (``translate``'s
batch size does not change its result).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import torch

from medm2g_core.models.conditioning import Condition, ConditionInputs, SemanticSource, assemble_condition
from medm2g_core.sampling.prediction import predicted_x0

Denoiser = Callable[..., torch.Tensor]  # denoiser(noisy, timesteps, *, condition: Condition) -> prediction


class Schedule(Protocol):
    """The training noise schedule and default sampler a scheduler is built from (``flows.FlowConfig`` is one)."""

    num_train_timesteps: int
    beta_schedule: str
    beta_start: float
    beta_end: float
    timestep_spacing: str
    sampler: str


def make_sampling_scheduler(config: Schedule, *, kind: str | None = None):
    """DDIM (``"ddim"``) or DPM-Solver++ (``"dpmsolver++"``) on ``config``'s training schedule."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    kind = kind or config.sampler
    common = dict(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                  beta_start=config.beta_start, beta_end=config.beta_end, prediction_type="sample",
                  timestep_spacing=config.timestep_spacing)
    if kind == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
    if kind == "dpmsolver++":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"unknown sampler {kind!r}; valid: ddim, dpmsolver++")


def guidance_branches(present: Sequence[bool], *, guidance: float | Sequence[float],
                      always: Sequence[bool] | None = None) -> tuple[list[list[bool]], list[float]]:
    """Which sources each guidance branch keeps, and the branch coefficients (pure function).

    The guided prediction is Σ_i coefficient_i · prediction(branch_i):
    - ``guidance`` = g (one scale): branches [all, none], coefficients [g, 1−g]
      (= uncond + g·(cond − uncond)); g = 1 → the single conditional branch.
    - ``guidance`` = [g_1..g_S] (per source, composable guidance): branches [none, only 1, ..., only S]
      with coefficients [1 − Σg_s, g_1, ..., g_S] (= uncond + Σ g_s·(pred_s − uncond)); missing sources
      are skipped.

    ``always`` marks sources every branch keeps, the "none" branch included: a registered flow's source
    image, which its training kept under condition dropout (``flows.model.expand_keep``), so its
    unconditional branch means "this anatomy, no semantic condition" — dropping it there would guide away
    from the anatomy. Such a source gets no branch of its own (its term g_s·(pred_s − uncond) is zero).
    """
    count = len(present)
    always = [False] * count if always is None else [bool(a) for a in always]
    if len(always) != count:
        raise ValueError(f"always has {len(always)} entries for {count} sources")
    floor = [a and here for a, here in zip(always, present)]  # what the unconditional branch still sees
    if isinstance(guidance, (int, float)):
        if float(guidance) == 1.0 or count == 0 or all(f or not here for f, here in zip(floor, present)):
            return [[True] * count], [1.0]
        return [[True] * count, floor], [float(guidance), 1.0 - float(guidance)]
    scales = [float(g) for g in guidance]
    if len(scales) != count:
        raise ValueError(f"got {len(scales)} guidance scales for {count} sources; give one per source or a single number")
    branches, coefficients = [list(floor)], [1.0]
    for index, (scale, here) in enumerate(zip(scales, present)):
        if not here or floor[index]:
            continue
        branches.append([j == index or floor[j] for j in range(count)])
        coefficients.append(scale)
        coefficients[0] -= scale
    return branches, coefficients


Generators = torch.Generator | Sequence[torch.Generator] | None  # one for the batch, or one per item


def _checked_generators(generator: Generators, *, batch: int) -> torch.Generator | list[torch.Generator] | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    generators = list(generator)
    if len(generators) != batch:
        raise ValueError(f"got {len(generators)} generators for a batch of {batch}; give one per batch item or a single one")
    return generators


def initial_noise(shape: Sequence[int], *, generator: Generators, device: torch.device | str,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape`` (batch first); with a list of generators, row ``b`` is drawn
    from ``generator[b]`` alone (``diffusers.utils.torch_utils.randn_tensor``, which the schedulers'
    stochastic steps use too)."""
    from diffusers.utils.torch_utils import randn_tensor

    generators = _checked_generators(generator, batch=shape[0])
    return randn_tensor(tuple(shape), generator=generators, device=torch.device(device), dtype=dtype)


def _step_kwargs(scheduler, *, eta: float, generator: torch.Generator | list[torch.Generator] | None) -> dict:
    # DDIM and DPM-Solver++ draw their step noise with randn_tensor, which takes one generator per item.
    names = inspect.signature(scheduler.step).parameters
    kwargs = {"generator": generator} if "generator" in names else {}
    if "eta" in names:
        kwargs["eta"] = eta
    return kwargs


@dataclass
class GuidancePlan:
    """How one denoiser call per step becomes a guided prediction: the guidance branches' conditions stacked
    along the batch (``stacked``, built once) and their coefficients (``guidance_branches``)."""

    stacked: Condition
    branches: list[list[bool]]
    coefficients: list[float]

    @property
    def conditional_only(self) -> bool:
        """One branch keeping every source: the guided prediction is the plain conditional one."""
        return len(self.branches) == 1 and all(self.branches[0])


def plan_guidance(inputs: ConditionInputs, *, guidance: float | Sequence[float], batch: int, device: torch.device,
                  condition_dim: int | None, unconditional_spatial: bool = True) -> GuidancePlan:
    """The ``GuidancePlan`` of a batch of ``batch`` items conditioned on ``inputs`` (see ``sample``)."""
    always = [False] * len(inputs.semantic) + [unconditional_spatial] * len(inputs.spatial)
    branches, coefficients = guidance_branches(inputs.present(), guidance=guidance, always=always)
    keeps = [torch.tensor(keep, dtype=torch.bool, device=device).expand(batch, len(keep)) for keep in branches]
    stacked = Condition.cat([assemble_condition(inputs, keep=k, condition_dim=condition_dim, batch_size=batch) for k in keeps])
    return GuidancePlan(stacked=stacked, branches=branches, coefficients=coefficients)


def guided_prediction(denoiser: Denoiser, model_input: torch.Tensor, t: torch.Tensor, plan: GuidancePlan) -> torch.Tensor:
    """Σ_i coefficient_i · denoiser(model_input, t, branch_i), every branch in one forward pass."""
    if len(plan.branches) == 1:
        return denoiser(model_input, t, condition=plan.stacked)
    count = len(plan.branches)
    outputs = denoiser(model_input.repeat(count, *([1] * (model_input.ndim - 1))), t, condition=plan.stacked)
    return sum(c * out for c, out in zip(plan.coefficients, outputs.chunk(count)))


def x0_scheduler(scheduler):
    """``scheduler`` set to take x0 (``prediction_type="sample"``), which is what the sampling loops hand it."""
    if scheduler.config.prediction_type != "sample":
        return type(scheduler).from_config(scheduler.config, prediction_type="sample")
    return scheduler


def denoise_step(scheduler, prediction: torch.Tensor, latents: torch.Tensor, t: torch.Tensor, *, prediction_type: str,
                 clip_sample: bool, clip_range: float, step_kwargs: dict) -> torch.Tensor:
    """x_{t-1} from the prediction at x_t: x0 from it, clipped to [−clip_range, clip_range], then the scheduler's step."""
    x0 = predicted_x0(prediction, latents, t, alphas_cumprod=scheduler.alphas_cumprod, prediction_type=prediction_type)
    if clip_sample:
        x0 = x0.clamp(-clip_range, clip_range)
    return scheduler.step(x0, t, latents, **step_kwargs).prev_sample


def default_device(denoiser: Denoiser, device: torch.device | str | None) -> torch.device:
    """``device`` if given, else that of the denoiser's first parameter, else the CPU."""
    if device is not None:
        return torch.device(device)
    parameter = next(iter(getattr(denoiser, "parameters", lambda: iter(()))()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def sample(denoiser: Denoiser, scheduler, shape: Sequence[int], *, condition: ConditionInputs | None, steps: int,
           guidance: float | Sequence[float] = 1.0, generator: Generators = None, prediction_type: str,
           clip_sample: bool = True, clip_range: float = 1.0, eta: float = 0.0, condition_dim: int | None = None,
           device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
           unconditional_spatial: bool = True) -> torch.Tensor:
    """Generate a batch (B, ...) = ``shape`` by the reverse diffusion process.

    Args:
        denoiser: ``denoiser(noisy, t, condition=Condition) -> prediction`` (``ImageDenoiser``/``TextLatentDenoiser``).
        scheduler: a diffusers DDIM/DPM-Solver++ scheduler on the training schedule (``make_sampling_scheduler``).
        shape: output shape, batch first; must match the batch of ``condition``.
        condition: the sources (``None`` = unconditional; then give ``condition_dim`` if the denoiser has no config).
        steps: denoising steps; guidance: one scale or one per source (see ``guidance_branches``).
        generator: seeds the initial noise and any step noise (DDIM η > 0, SDE solvers): same seed →
            identical output. A list of B generators seeds each item on its own (module docstring).
        prediction_type: what the denoiser outputs (``epsilon``, ``v_prediction`` or ``sample``).
        clip_sample, clip_range: clamp the predicted x0 to [−clip_range, clip_range] each step.
        unconditional_spatial: guidance's unconditional branch keeps the spatial sources (a registered flow's
            source image, as its training's condition dropout does; ``guidance_branches(always=...)``);
            False drops them too.
    Returns:
        x0 samples of ``shape`` (clipped when ``clip_sample``).
    """
    scheduler = x0_scheduler(scheduler)
    device = default_device(denoiser, device)
    inputs = condition if condition is not None else ConditionInputs()
    if condition_dim is None and hasattr(denoiser, "config"):
        condition_dim = getattr(denoiser.config, "condition_dim", None)
    plan = plan_guidance(inputs, guidance=guidance, batch=shape[0], device=device, condition_dim=condition_dim,
                         unconditional_spatial=unconditional_spatial)
    generator = _checked_generators(generator, batch=shape[0])
    scheduler.set_timesteps(steps, device=device)
    latents = initial_noise(shape, generator=generator, device=device, dtype=dtype) * scheduler.init_noise_sigma
    step_kwargs = _step_kwargs(scheduler, eta=eta, generator=generator)
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        prediction = guided_prediction(denoiser, model_input, t, plan)
        latents = denoise_step(scheduler, prediction, latents, t, prediction_type=prediction_type, clip_sample=clip_sample,
                               clip_range=clip_range, step_kwargs=step_kwargs)
    return latents


@dataclass
class SampleSet:
    """K samples per input: ``mean``/``std`` (B, ...) (std = per-voxel uncertainty map), ``samples`` (K, B, ...).

    Unpacks as ``mean, std, samples = sample_many(...)``.
    """

    mean: torch.Tensor
    std: torch.Tensor
    samples: torch.Tensor

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.mean, self.std, self.samples))


def repeat_inputs(inputs: ConditionInputs, times: int) -> ConditionInputs:
    """Each sample's sources repeated ``times`` times consecutively (B → B·times)."""
    def rep(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.repeat_interleave(times, dim=0)

    semantic = [None if s is None else SemanticSource(rep(s.tokens), rep(s.mask), rep(s.pooled), s.weight, s.name) for s in inputs.semantic]
    return ConditionInputs(semantic=semantic, spatial=[rep(x) for x in inputs.spatial])


def sample_generators(generators: Sequence[torch.Generator], samples: int) -> list[torch.Generator]:
    """One generator per (item, sample), item-major like ``repeat_inputs``, from one per item.

    K = 1 keeps each item's generator; K > 1 seeds K fresh generators from K draws of it, so sample
    ``k`` of an item depends only on that item's generator and ``k``.
    """
    if samples == 1:
        return list(generators)
    expanded = []
    for generator in generators:
        seeds = torch.randint(0, 2**62, (samples,), generator=generator, device=generator.device)
        expanded.extend(torch.Generator(device=generator.device).manual_seed(int(seed)) for seed in seeds)
    return expanded


def sample_many(denoiser: Denoiser, scheduler, shape: Sequence[int], *, samples: int, condition: ConditionInputs | None,
                generator: Generators = None, **options) -> SampleSet:
    """``samples`` = K samples per input, drawn in one batched ``sample()`` call (B·K); ``options`` as ``sample``.

    ``generator``: one for the whole call, or a list of B (one per input; see ``sample_generators``).
    """
    if samples < 1:
        raise ValueError(f"samples must be ≥ 1, got {samples}")
    batch = shape[0]
    generator = _checked_generators(generator, batch=batch)
    if isinstance(generator, list):
        generator = sample_generators(generator, samples)
    inputs = repeat_inputs(condition, samples) if condition is not None else None
    drawn = sample(denoiser, scheduler, (batch * samples, *shape[1:]), condition=inputs, generator=generator, **options)
    return sample_set(drawn, batch=batch, samples=samples)


def sample_set(drawn: torch.Tensor, *, batch: int, samples: int) -> SampleSet:
    """(B·K, ...) samples drawn item-major (``repeat_inputs``, ``sample_generators``) → ``SampleSet`` (K, B, ...)."""
    drawn = drawn.reshape(batch, samples, *drawn.shape[1:]).transpose(0, 1)
    std = drawn.std(0, unbiased=False) if samples > 1 else torch.zeros_like(drawn[0])
    return SampleSet(mean=drawn.mean(0), std=std, samples=drawn)
