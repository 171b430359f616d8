"""ImageAutoencoder: one class for 2D and 3D (MONAI spatial_dims), scaling factor, save/reload."""

from __future__ import annotations

import pytest
import torch

from medm2g_core.models.autoencoders import ImageAutoencoder, ImageAutoencoderConfig


def tiny(spatial_dims: int) -> ImageAutoencoderConfig:
    return ImageAutoencoderConfig(spatial_dims=spatial_dims, channels=(8, 16), attention_levels=(False, False),
                                  norm_num_groups=4, latent_channels=2)


@pytest.mark.parametrize("spatial_dims,size", [(2, (16, 16)), (3, (8, 8, 8))])
def test_shapes_loss_and_roundtrip(spatial_dims, size, tmp_path):
    torch.manual_seed(0)
    model = ImageAutoencoder(tiny(spatial_dims)).eval()
    x = torch.rand(2, 1, *size) * 2 - 1
    z = model.encode(x)
    assert z.shape == (2, 2, *(s // 2 for s in size))
    assert model.decode(z).shape == x.shape
    losses = model.loss(x)
    assert set(losses) == {"loss", "recon", "kl"} and losses["kl"] >= 0
    losses["loss"].backward()

    factor = model.fit_scaling_factor(x)
    torch.testing.assert_close(model.encode(x).std(), torch.tensor(1.0), atol=1e-4, rtol=0)
    model.save_pretrained(tmp_path / "ae")
    again = ImageAutoencoder.from_pretrained(tmp_path / "ae").eval()
    assert again.config.scaling_factor == pytest.approx(factor)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_sampled_latent_is_seeded():
    torch.manual_seed(0)
    model = ImageAutoencoder(tiny(2))
    x = torch.rand(1, 1, 16, 16)
    a = model.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    b = model.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, model.encode(x))


def test_ssim_and_critic_terms_train_each_side_on_its_own_objective():
    """One backward pass of the summed loss gives the critic the gradient of its own loss only, and the autoencoder
    the gradient of reconstruction + SSIM + KL + the generator term only (the critic's parameters detached there)."""
    from dataclasses import replace

    from medm2g_core.models.autoencoders import PatchCritic

    config = replace(tiny(2), ssim_weight=0.5, adversarial_weight=0.1, critic_channels=4, critic_layers=1)
    torch.manual_seed(0)
    model, critic = ImageAutoencoder(config), PatchCritic(config)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    generator = torch.Generator().manual_seed(1)
    losses = model.loss(x, critic=critic, generator=generator)
    assert {"ssim", "adversarial", "critic"} <= set(losses) and 0 < float(losses["ssim"].detach()) <= 1
    losses["loss"].backward()
    joint = {n: p.grad.clone() for n, p in [*model.named_parameters(), *critic.named_parameters()] if p.grad is not None}

    model.zero_grad(), critic.zero_grad()
    reconstruction = model.network.decode(model.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
                                          / config.scaling_factor)
    _, critic_only = critic.losses(real=x, fake=reconstruction)
    critic_only.backward()
    for name, parameter in critic.named_parameters():
        torch.testing.assert_close(joint[name], parameter.grad)

    model.zero_grad(), critic.zero_grad()
    own = model.loss(x, generator=torch.Generator().manual_seed(1))["loss"]  # L1 + SSIM + KL, no critic
    reconstruction = model.network.decode(model.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
                                          / config.scaling_factor)
    generator_term, _ = critic.losses(real=x, fake=reconstruction)
    (own + config.adversarial_weight * generator_term).backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(joint[name], parameter.grad, rtol=1e-4, atol=1e-7)
