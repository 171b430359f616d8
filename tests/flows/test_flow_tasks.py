"""Each generative task's loss decreases on a tiny phantom cohort (real classes, tiny configs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from flow_fixtures import build_aligned  # noqa: E402

from medm2g_core.align.model import AlignModel
from medm2g_core.data.datasets import ImageTextDataset, PairSliceDataset
from medm2g_core.data.manifest import scan_cohort
from medm2g_core.flows.forgetting import first_batch, validation_loss
from medm2g_core.flows.model import FlowNetwork, FlowNetworkConfig
from medm2g_core.flows.task import FlowTask, ImageAutoencoderTask, ReportDataset, TextVAETask, write_grid
from medm2g_core.models.autoencoders import ImageAutoencoder, ImageAutoencoderConfig
from medm2g_core.models.conditioning import SharedCrossAttention, SharedCrossAttentionConfig
from medm2g_core.models.text_vae import TextVAE, TextVAEConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    chest, head, _ = build_aligned(root)
    align = AlignModel.from_pretrained(root / "aligned.m2g" / "align")
    return scan_cohort(chest), scan_cohort(head), align


def fit(task, batch, steps: int, lr: float = 3e-3) -> tuple[float, float]:
    # the shared cross-attention is reachable from both the flow and "shared": one entry per parameter
    unique = {id(p): p for m in task.trainable_modules().values() for p in m.parameters() if p.requires_grad}
    parameters = list(unique.values())
    optimizer = torch.optim.AdamW(parameters, lr=lr)
    torch.manual_seed(0)
    losses = []
    for step in range(steps):
        loss = task.training_step(batch, step=step)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return sum(losses[:2]) / 2, sum(losses[-2:]) / 2


def test_image_autoencoder_task_learns(setup):
    chest, _, _ = setup
    torch.manual_seed(0)
    autoencoder = ImageAutoencoder(ImageAutoencoderConfig(channels=(8, 16), attention_levels=(False, False), norm_num_groups=4, latent_channels=2))
    batch = first_batch(ImageTextDataset(chest, image_size=32), items=4)
    task = ImageAutoencoderTask(autoencoder)
    start, end = fit(task, batch, 25)
    assert end < 0.7 * start
    assert set(task.validation_step(batch)) == {"loss", "recon", "psnr", "ssim"}


def test_text_vae_task_learns_and_reports_rouge(setup):
    chest, _, align = setup
    torch.manual_seed(0)
    tokenizer = align.tokenizer
    vae = TextVAE(TextVAEConfig.from_tokenizer(tokenizer, width=32, heads=2, encoder_layers=1, decoder_layers=1,
                                               latent_tokens=4, latent_dim=8, max_tokens=64))
    dataset = ReportDataset(chest)
    batch = ReportDataset.collate([dataset[i] for i in range(4)])
    task = TextVAETask(vae, tokenizer)
    start, end = fit(task, batch, 40)
    assert end < 0.7 * start
    vae.eval()
    metrics = task.validation_step(batch)
    assert 0.0 <= metrics["rouge_l"] <= 1.0 and 0.0 <= metrics["token_accuracy"] <= 1.0


def _network(align, *, sources, target, kind="image", spatial=False, denoiser=None):
    shared = SharedCrossAttention(SharedCrossAttentionConfig(num_layers=2, query_dim=16, condition_dim=16, heads=2))
    token_dims = {("report" if s == "report" else "mri" if s.startswith("mri") else s): 16 for s in sources}
    config = FlowNetworkConfig(sources=tuple(sources), target=target, kind=kind, image_size=32, spatial=spatial, embed_dim=16,
                               token_dims=token_dims, flow={"sampling_steps": 2, "warm_start_fraction": 0.3},
                               denoiser=denoiser or {"sample_size": 32, "block_out_channels": [8, 16], "norm_num_groups": 4,
                                                     "condition_dim": 16, "attention_heads": 2,
                                                     "spatial_channels": [1] * len(sources) if spatial else []})
    return FlowNetwork(config, shared=shared)


def test_image_flow_task_learns_with_warm_start_then_diffusion(setup, tmp_path):
    _, head, align = setup
    torch.manual_seed(0)
    network = _network(align, sources=["mri-t2", "mri-pd"], target="mri-t1", spatial=True)
    network.denoiser.zero_init_noise_path()
    dataset = PairSliceDataset(head, sources=["mri-t2", "mri-pd"], target="mri-t1", image_size=32, slices=2)
    batch = first_batch(dataset, items=4)
    task = FlowTask(network, align, warm_start_steps=10, source_dropout=0.2, sample_batch=batch)
    before = validation_loss(task, dataset, batch_size=4, batches=1)["loss"]
    fit(task, batch, 30)  # 10 steps of L1 regression warm start, then the diffusion objective
    after = validation_loss(task, dataset, batch_size=4, batches=1)["loss"]
    assert after < 0.5 * before
    task.on_validation(7, tmp_path)
    assert (tmp_path / "step-00000007.png").is_file()


def test_text_flow_task_learns(setup, tmp_path):
    chest, _, align = setup
    torch.manual_seed(0)
    vae = TextVAE(TextVAEConfig.from_tokenizer(align.tokenizer, width=32, heads=2, encoder_layers=1, decoder_layers=1,
                                               latent_tokens=4, latent_dim=8, max_tokens=64)).eval()
    network = _network(align, sources=["xray"], target="report", kind="text",
                       denoiser={"latent_tokens": 4, "latent_dim": 8, "width": 16, "layers": 2, "heads": 2, "condition_dim": 16})
    dataset = ImageTextDataset(chest, image_size=32)
    batch = first_batch(dataset, items=4)
    task = FlowTask(network, align, text_vae=vae, tokenizer=align.tokenizer, sample_batch=batch)
    before = validation_loss(task, dataset, batch_size=4, batches=1)["loss"]
    fit(task, batch, 25)
    assert validation_loss(task, dataset, batch_size=4, batches=1)["loss"] < 0.7 * before
    task.on_validation(3, tmp_path)
    assert "GENERATED:" in (tmp_path / "step-00000003.txt").read_text()


def test_write_grid_lays_out_rows(tmp_path):
    from medm2g_core import io

    path = write_grid(tmp_path / "g.png", [[torch.zeros(8, 8), torch.ones(8, 8)], [-torch.ones(8, 8), torch.zeros(8, 8)]])
    array, _ = io.read(path)
    # 8 px tiles are enlarged 16× (to 128 px) with a 2 px white gap: 2 × 128 + 2
    assert array.shape == (258, 258)
    assert array[0, 130] == 255 and array[130, 0] == 0 and array[0, 0] == 128 and array[128, 0] == 255
    big = write_grid(tmp_path / "big.png", [[torch.zeros(200, 100)]])
    assert io.read(big)[0].shape == (200, 100)  # large tiles are kept as they are


def test_spread_batch_spans_the_dataset():
    from medm2g_core.flows.forgetting import spread_batch

    class Slices:  # one patient's slices after another, as the slice datasets list them
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return {"patient_id": f"P{i // 24:04d}", "slice_index": i % 24}

        def collate(self, items):
            return {"patient_id": [x["patient_id"] for x in items], "slice_index": [x["slice_index"] for x in items]}

    batch = spread_batch(Slices(72), items=4)
    # items 9, 27, 45, 63 of 72
    assert batch["patient_id"] == ["P0000", "P0001", "P0001", "P0002"] and batch["slice_index"] == [9, 3, 21, 15]
    assert len(set(batch["patient_id"])) == 3  # first_batch would give four slices of P0000
    assert spread_batch(Slices(1), items=4)["slice_index"] == [0]
    assert spread_batch(Slices(5), items=1)["slice_index"] == [2]
    assert spread_batch(Slices(3), items=4)["slice_index"] == [0, 1, 2]
    assert spread_batch(Slices(0), items=4) is None


def test_sampler_timesteps_put_half_of_each_batch_on_the_sampling_grid(setup):
    from dataclasses import replace

    from medm2g_core.flows.task import sampler_grid

    _, head, align = setup
    network = _network(align, sources=["mri-t1"], target="ct", spatial=True)
    dataset = PairSliceDataset(head, sources=["mri-t1"], target="ct", image_size=32, slices=2)
    batch = first_batch(dataset, items=8)
    drawn: list[torch.Tensor] = []
    network.register_forward_pre_hook(lambda module, args: drawn.append(args[1].clone()))
    grid = set(sampler_grid(network.config.flow_config).tolist())
    assert len(grid) == network.config.flow_config.sampling_steps
    uniform = FlowTask(network, align)
    torch.manual_seed(0)
    for step in range(4):
        uniform.training_step(batch, step=step)
    on_grid_uniform = sum(int(t in grid) for steps in drawn for t in steps.tolist())
    network.config.flow = {**network.config.flow, "timesteps": "sampler"}
    assert network.config.flow_config.timesteps == "sampler"
    drawn.clear()
    gridded = FlowTask(network, align)
    for step in range(4):
        gridded.training_step(batch, step=step)
    even = [steps[0::2].tolist() for steps in drawn]
    assert all(t in grid for row in even for t in row)  # every other item sits on a level the sampler visits
    assert on_grid_uniform < 4  # uniform draws hit the 10 of 1000 levels about 1 % of the time
    with pytest.raises(ValueError, match="timesteps"):
        replace(network.config.flow_config, timesteps="every")
