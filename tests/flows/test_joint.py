"""Joint generation of two flows with one source (issue #19 item 7): partner-fed environment tokens, the zero gate,
and the whole path from ``train-flow --stage joint`` to ``translate --to ct,mri-t2``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
from tiny_models import C, perturb, tiny_image_denoiser, tiny_shared  # noqa: E402

from medm2g_core.flows.joint import JointNetwork, JointNetworkConfig
from medm2g_core.models.conditioning import ConditionInputs, SemanticSource
from medm2g_core.sampling.joint import JointStream, joint_step, sample_joint
from medm2g_core.sampling.sample import make_sampling_scheduler, sample
from medm2g_core.flows.config import FlowConfig

SIZE = 16


def _streams(seed: int = 0):
    """Two tiny registered-image denoisers (one shared cross-attention), their conditions and a fresh joint stage."""
    torch.manual_seed(seed)
    shared = tiny_shared()
    denoisers = [tiny_image_denoiser(shared, spatial_channels=(1,)).eval() for _ in range(2)]
    for index, denoiser in enumerate(denoisers):
        perturb(denoiser, seed=index)
    source = torch.randn(2, 1, SIZE, SIZE)
    inputs = [ConditionInputs(semantic=[SemanticSource(tokens=torch.randn(2, 3, C))], spatial=[source]) for _ in range(2)]
    joint = JointNetwork(JointNetworkConfig(flows=["mri-t1-ct", "mri-t1-mri-t2"], kinds=["image", "image"], channels=[1, 1],
                                            condition_dim=C, patch_size=4)).eval()
    return denoisers, inputs, joint


def test_each_stream_is_conditioned_on_its_partners_noisy_latent():
    denoisers, inputs, joint = _streams()
    with torch.no_grad():
        joint.gates.fill_(0.5)
    fed: list[tuple[int, torch.Tensor]] = []

    def environment(index, latent):
        fed.append((index, latent))
        return joint.environment_tokens(index, latent)

    t = torch.tensor([500, 500])
    ct, t2 = torch.randn(2, 1, SIZE, SIZE), torch.randn(2, 1, SIZE, SIZE)

    def run(first, second):
        fed.clear()
        with torch.no_grad():
            return joint_step(denoisers, [first, second], t, inputs=inputs, environment=environment,
                              gates=[joint.gate(0), joint.gate(1)])

    base = run(ct, t2)
    # Stream i's environment is encoded by encoder j from latent j: each encoder sees only its own stream's latent.
    assert [index for index, _ in fed] == [0, 1]
    assert fed[0][1] is ct and fed[1][1] is t2
    # Perturbing the partner's latent changes this stream's prediction...
    other_t2 = run(ct, t2 + 0.5 * torch.randn_like(t2))
    assert not torch.allclose(other_t2[0], base[0], atol=1e-6)
    other_ct = run(ct + 0.5 * torch.randn_like(ct), t2)
    assert not torch.allclose(other_ct[1], base[1], atol=1e-6)
    # ...and a copy of the same partner latent leaves it exactly unchanged (nothing else of the partner enters).
    again = run(ct, t2.clone())
    assert torch.equal(again[0], base[0])
    # With the gate of stream 0 closed, its partner's latent no longer matters at all.
    with torch.no_grad():
        joint.gates[0] = 0.0
    closed = run(ct, t2)
    closed_other = run(ct, t2 + 0.5 * torch.randn_like(t2))
    assert torch.equal(closed[0], closed_other[0])


def test_joint_sampler_at_initialisation_equals_the_flows_sampled_separately():
    denoisers, inputs, joint = _streams(seed=1)
    configs = [FlowConfig(sampling_steps=4, guidance=1.0), FlowConfig(sampling_steps=4, guidance=2.0)]  # guidance on one stream

    def generators():
        return [torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)]

    streams = [JointStream(denoiser=d, scheduler=make_sampling_scheduler(cfg), shape=(2, 1, SIZE, SIZE), condition=c,
                           prediction_type=cfg.prediction_type, guidance=cfg.guidance, generator=g)
               for d, c, cfg, g in zip(denoisers, inputs, configs, generators())]
    together = sample_joint(streams, environment=joint.environment_tokens, gates=[joint.gate(0), joint.gate(1)], steps=4)
    for index, (denoiser, condition, config, generator) in enumerate(zip(denoisers, inputs, configs, generators())):
        alone = sample(denoiser, make_sampling_scheduler(config), (2, 1, SIZE, SIZE), condition=condition, steps=4,
                       guidance=config.guidance, generator=generator, prediction_type=config.prediction_type)
        assert torch.equal(together[index], alone), index
    # The same loop with an open gate couples the streams: the outputs move.
    with torch.no_grad():
        joint.gates.fill_(0.5)
    streams = [JointStream(denoiser=d, scheduler=make_sampling_scheduler(cfg), shape=(2, 1, SIZE, SIZE), condition=c,
                           prediction_type=cfg.prediction_type, guidance=cfg.guidance, generator=g)
               for d, c, cfg, g in zip(denoisers, inputs, configs, generators())]
    coupled = sample_joint(streams, environment=joint.environment_tokens, gates=[joint.gate(0), joint.gate(1)], steps=4)
    assert not torch.allclose(coupled[0], together[0], atol=1e-6)


def _recipe() -> str:
    from tiny_recipe import tiny_recipe

    return tiny_recipe(
        "tiny-joint",
        data={"image_size": 32, "split_fractions": [0.75, 0.25, 0.0]},
        flows={"image_denoiser": {"backbone": "conv", "block_out_channels": [8, 16, 32]},
               "objective": {"warm_start_fraction": 0.5, "loss": "l1", "sampling_steps": 3},
               "training": {"steps": 6, "batch_size": 4}, "joint": {"steps": 8, "lr": 0.01, "patch_size": 4}},
    )


def test_train_joint_stage_then_translate_to_two_targets_in_one_loop(tmp_path):
    from typer.testing import CliRunner

    from medm2g_cli.main import app
    from medm2g_core import io
    from medm2g_core.bundle import Bundle
    from medm2g_core.flows.joint import JointFlowModel
    from medm2g_core.flows.model import FlowModel
    from tiny_recipe import aligned_phantoms

    head, recipe, bundle = aligned_phantoms(tmp_path, _recipe(), anatomy="head", patients=4, seed=1)
    runner = CliRunner()
    for pair in ("mri-ct", "t1-t2"):
        trained = runner.invoke(app, ["train-flow", "--data", str(head), "--bundle", str(bundle), "--pair", pair, "--recipe", str(recipe), "-q"])
        assert trained.exit_code == 0, trained.output
    source = sorted(head.glob("*/mri-t1.nii.gz"))[0]
    out = tmp_path / "pred"

    # Without a joint stage: refused (exit 2) with the command that trains it, and nothing generated separately.
    refused = runner.invoke(app, ["translate", str(source), "--to", "ct,mri-t2", "--model", str(bundle), "--out", str(out), "-q"])
    assert refused.exit_code == 2, refused.output
    assert "train-flow --stage joint --pair mri-t1-ct,mri-t1-mri-t2" in " ".join(refused.output.split())
    assert not list(out.rglob("*.nii.gz"))

    # A fresh joint stage (gates 0) samples exactly what the two flows sample alone, with the same seeds.
    flows = [FlowModel.load(bundle, pair) for pair in ("mri-ct", "t1-t2")]
    from medm2g_core.flows.joint import JointNetwork

    fresh = JointFlowModel(flows=flows, network=JointNetwork.for_flows([f.network for f in flows], patch_size=4))
    slices = {"mri-t1": torch.rand(2, 1, 32, 32) * 2 - 1}
    together = fresh.predict(slices, seed=[3, 4])
    for flow, joint_prediction in zip(flows, together):
        assert torch.equal(joint_prediction.mean, flow.predict(slices, seed=[3, 4]).mean)

    trained = runner.invoke(app, ["train-flow", "--stage", "joint", "--pair", "mri-ct,t1-t2", "--data", str(head), "--bundle", str(bundle),
                                  "--recipe", str(recipe), "-q"])
    assert trained.exit_code == 0, trained.output
    assert "joint/mri-t1__ct+mri-t1__mri-t2" in Bundle.open(bundle).data["components"]
    loaded = JointFlowModel.load(bundle, ["mri-ct", "t1-t2"])
    assert float(loaded.network.gates.detach().abs().max()) > 0  # the gates trained off zero

    translated = runner.invoke(app, ["translate", str(source), "--to", "ct,mri-t2", "--model", str(bundle), "--out", str(out), "-q"])
    assert translated.exit_code == 0, translated.output
    _, source_meta = io.read(source)
    for name, modality in (("ct.nii.gz", "ct"), ("mri-t2.nii.gz", "mri-t2")):
        written = out / source.parent.name / name
        assert written.is_file(), sorted(out.rglob("*"))
        array, meta = io.read(written)
        assert tuple(array.shape) == tuple(source_meta.shape)
        assert meta.same_grid(source_meta, tolerance_mm=1e-4)
        assert meta.modality == modality and meta.synthetic
