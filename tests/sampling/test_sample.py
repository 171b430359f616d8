"""sample(): seeds, guidance branches, clipping, both schedulers, K samples, missing sources."""

from __future__ import annotations

import pytest
import torch

from medm2g_core.flows.config import FlowConfig
from medm2g_core.models.conditioning import ConditionInputs, SemanticSource, SharedCrossAttention, SharedCrossAttentionConfig
from medm2g_core.models.denoisers import ImageDenoiser, ImageDenoiserConfig
from medm2g_core.sampling.sample import guidance_branches, make_sampling_scheduler, sample, sample_many

C = 8


@pytest.fixture(scope="module")
def denoiser():
    torch.manual_seed(0)
    shared = SharedCrossAttention(SharedCrossAttentionConfig(num_layers=1, query_dim=16, condition_dim=C, heads=2))
    config = ImageDenoiserConfig(sample_size=8, spatial_channels=(1,), block_out_channels=(8, 16), norm_num_groups=4,
                                 condition_dim=C, attention_heads=2)
    return ImageDenoiser(config, shared=shared).eval()


def inputs(batch: int = 2, seed: int = 0) -> ConditionInputs:
    generator = torch.Generator().manual_seed(seed)
    return ConditionInputs(semantic=[SemanticSource(torch.randn(batch, 2, C, generator=generator))],
                           spatial=[torch.randn(batch, 1, 8, 8, generator=generator)])


def run(denoiser, *, seed=0, kind="ddim", condition=None, **options):
    scheduler = make_sampling_scheduler(FlowConfig.demo_cpu(), kind=kind)
    options = {"steps": 4, "prediction_type": "sample", **options}
    return sample(denoiser, scheduler, (2, 1, 8, 8), condition=condition if condition is not None else inputs(),
                  generator=torch.Generator().manual_seed(seed), **options)


@pytest.mark.parametrize("kind", ["ddim", "dpmsolver++"])
def test_seeds_and_clipping(denoiser, kind):
    a, b, c = run(denoiser, kind=kind), run(denoiser, kind=kind), run(denoiser, seed=1, kind=kind)
    assert a.shape == (2, 1, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() <= 1.0 + 1e-5
    assert run(denoiser, kind=kind, clip_range=0.25, prediction_type="epsilon").abs().max() <= 0.25 + 1e-5


def test_guidance_branches_by_hand():
    assert guidance_branches([True, True], guidance=1.0) == ([[True, True]], [1.0])
    assert guidance_branches([True, True], guidance=3.0) == ([[True, True], [False, False]], [3.0, -2.0])
    branches, coefficients = guidance_branches([True, False, True], guidance=[2.0, 5.0, 1.5])
    assert branches == [[False, False, False], [True, False, False], [False, False, True]]
    assert coefficients == [1 - 3.5, 2.0, 1.5]
    with pytest.raises(ValueError, match="one per source"):
        guidance_branches([True, True], guidance=[1.0])


def test_the_unconditional_branch_keeps_the_registered_image_by_hand():
    """Sources marked ``always`` (a registered flow's image) stay in every branch, the unconditional one too."""
    assert guidance_branches([True, True], guidance=3.0, always=[False, True]) == ([[True, True], [False, True]], [3.0, -2.0])
    branches, coefficients = guidance_branches([True, True, True], guidance=[2.0, 5.0, 1.5], always=[False, False, True])
    assert branches == [[False, False, True], [True, False, True], [False, True, True]]  # no branch for the kept image
    assert coefficients == [1 - 7.0, 2.0, 5.0]
    # only the registered image present: the unconditional branch is the conditional one, so one branch
    assert guidance_branches([False, True], guidance=3.0, always=[False, True]) == ([[True, True]], [1.0])
    assert guidance_branches([True, True], guidance=3.0, always=[False, False]) == ([[True, True], [False, False]], [3.0, -2.0])


def test_sample_feeds_the_source_image_to_the_unconditional_branch(denoiser):
    """The denoiser sees the registered image in both guidance branches (training's condition dropout keeps it too)."""
    seen = []

    def recording(noisy, t, *, condition):
        seen.append((condition.spatial[0].clone(), condition.presence.clone(), condition.mask.clone()))
        return denoiser(noisy, t, condition=condition)

    condition = inputs()
    run(recording, condition=condition, guidance=3.0)
    spatial, presence, mask = seen[0]
    assert spatial.shape[0] == 4  # two branches × batch 2: conditional, then unconditional
    assert torch.equal(spatial[2:], condition.spatial[0]) and bool(presence[2:].all())  # the anatomy stays
    assert mask[:2].any() and not mask[2:].any()  # the semantic source is dropped
    seen.clear()
    run(recording, condition=condition, guidance=3.0, unconditional_spatial=False)
    assert not seen[0][0][2:].any() and not bool(seen[0][1][2:].any())  # the old behaviour, on request


def test_guidance_and_condition_change_the_output(denoiser):
    base = run(denoiser)
    assert not torch.equal(base, run(denoiser, guidance=3.0))
    assert not torch.equal(base, run(denoiser, guidance=[2.0, 1.0]))
    assert not torch.equal(base, run(denoiser, condition=inputs(seed=5)))
    missing = ConditionInputs(semantic=[None], spatial=[inputs().spatial[0]])
    assert run(denoiser, condition=missing).shape == base.shape
    assert run(denoiser, condition=ConditionInputs(), guidance=2.0).shape == base.shape  # unconditional


def test_sample_many_mean_std(denoiser):
    scheduler = make_sampling_scheduler(FlowConfig.demo_cpu())
    result = sample_many(denoiser, scheduler, (2, 1, 8, 8), samples=3, condition=inputs(), steps=3,
                         prediction_type="sample", generator=torch.Generator().manual_seed(0))
    mean, std, samples = result
    assert samples.shape == (3, 2, 1, 8, 8) and mean.shape == std.shape == (2, 1, 8, 8)
    torch.testing.assert_close(mean, samples.mean(0))
    assert std.mean() > 0


def _generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("kind, eta", [("ddim", 0.0), ("ddim", 1.0), ("sde-dpmsolver++", 0.0)])
def test_per_item_generators_make_items_independent_of_the_batch(denoiser, kind, eta):
    """A list of generators (one per item): each item's output, stochastic steps included, is the same
    alone as in any batch — the contract behind translate's batch-size independence."""
    from diffusers import DPMSolverMultistepScheduler

    def scheduler():
        if kind == "sde-dpmsolver++":
            base = make_sampling_scheduler(FlowConfig.demo_cpu(), kind="dpmsolver++")
            return DPMSolverMultistepScheduler.from_config(base.config, algorithm_type="sde-dpmsolver++")
        return make_sampling_scheduler(FlowConfig.demo_cpu(), kind=kind)

    condition = inputs(batch=3)
    options = {"steps": 3, "prediction_type": "sample", "eta": eta, "guidance": 2.0}
    together = sample(denoiser, scheduler(), (3, 1, 8, 8), condition=condition, generator=_generators([5, 6, 7]), **options)
    for row, seed in enumerate([5, 6, 7]):
        single = ConditionInputs(semantic=[SemanticSource(condition.semantic[0].tokens[row : row + 1])],
                                 spatial=[condition.spatial[0][row : row + 1]])
        alone = sample(denoiser, scheduler(), (1, 1, 8, 8), condition=single, generator=_generators([seed]), **options)
        # exact here; the tolerance only allows a CPU kernel that rounds another batch shape differently
        # (mixing up the generators changes an item by O(1))
        torch.testing.assert_close(together[row : row + 1], alone, rtol=0, atol=1e-5, msg=f"item {row} changed with the batch")
    with pytest.raises(ValueError, match="one per batch item"):
        sample(denoiser, scheduler(), (3, 1, 8, 8), condition=condition, generator=_generators([5, 6]), **options)


def test_sample_many_per_item_generators_give_distinct_reproducible_samples(denoiser):
    scheduler = make_sampling_scheduler(FlowConfig.demo_cpu())
    condition = inputs(batch=2)
    options = {"samples": 3, "steps": 3, "prediction_type": "sample"}
    drawn = sample_many(denoiser, scheduler, (2, 1, 8, 8), condition=condition, generator=_generators([1, 2]), **options)
    again = sample_many(denoiser, scheduler, (2, 1, 8, 8), condition=condition, generator=_generators([1, 2]), **options)
    assert torch.equal(drawn.samples, again.samples)
    for k in range(3):  # the K samples of an item differ from each other
        for j in range(k + 1, 3):
            assert not torch.equal(drawn.samples[k, 0], drawn.samples[j, 0])
    second = ConditionInputs(semantic=[SemanticSource(condition.semantic[0].tokens[1:])], spatial=[condition.spatial[0][1:]])
    alone = sample_many(denoiser, scheduler, (1, 1, 8, 8), condition=second, generator=_generators([2]), **options)
    torch.testing.assert_close(drawn.samples[:, 1:], alone.samples, rtol=0, atol=1e-5)
