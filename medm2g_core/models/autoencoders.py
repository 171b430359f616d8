"""``ImageAutoencoder``: the KL autoencoder of one imaging modality (DESIGN.md §1.4), and its optional critic.

One class for 2D (X-ray, CT/MRI slices) and 3D (patches) through MONAI's ``AutoencoderKL`` and
``spatial_dims``. The loss is Stable Diffusion's / MONAI Generative's recipe without pretrained parts:
L1 + ``ssim_weight`` · (1 − SSIM) + ``kl_weight`` · KL, plus, with ``adversarial_weight`` > 0, a least-squares
patch-adversarial term from a ``PatchCritic`` (MONAI ``PatchDiscriminator``) trained beside it from
``adversarial_start`` on (no perceptual loss: it would need downloaded weights). Latents are scaled by a stored ``scaling_factor`` (Stable Diffusion's convention:
chosen after training so that latents have about unit variance — ``fit_scaling_factor``). Whether a
flow diffuses in this latent space or in pixel space is ``FlowConfig.latent`` (DESIGN §8: pixel
space for 64² CPU budgets, latent space for 256² and up).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medm2g_core.models.pretrained import PretrainedModule


@dataclass
class ImageAutoencoderConfig:
    """MONAI ``AutoencoderKL`` hyper-parameters (tiny CPU defaults: 64² → 16² × 4 latents).

    Attributes:
        spatial_dims: 2 or 3.
        channels: widths per level; the image is downsampled by 2^(levels−1).
        attention_levels: self-attention per level (off by default: slow on CPU).
        kl_weight: weight of the KL term in ``loss``.
        ssim_weight: weight of 1 − SSIM (MONAI ``SSIMLoss``, data range 2, 7-pixel window) in ``loss``; 0 = off.
        adversarial_weight: weight of the patch critic's generator term (0 = no critic).
        adversarial_start: training step from which the critic and its term are used (reconstruction first).
        critic_channels, critic_layers: width and depth of the ``PatchCritic``.
        scaling_factor: latents are multiplied by it in ``encode`` and divided in ``decode``.
    """

    spatial_dims: int = 2
    in_channels: int = 1
    latent_channels: int = 4
    channels: tuple[int, ...] = (32, 64, 64)
    num_res_blocks: int = 1
    attention_levels: tuple[bool, ...] = (False, False, False)
    norm_num_groups: int = 16
    kl_weight: float = 1e-6
    ssim_weight: float = 0.0
    adversarial_weight: float = 0.0
    adversarial_start: int = 0
    critic_channels: int = 32
    critic_layers: int = 2
    scaling_factor: float = 1.0

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channels) - 1)


class ImageAutoencoder(PretrainedModule):
    """KL autoencoder: images (B, in_channels, *S) in [−1, 1] ↔ latents (B, latent_channels, *S/downsample)."""

    config_class = ImageAutoencoderConfig

    def __init__(self, config: ImageAutoencoderConfig):
        super().__init__()
        from monai.networks.nets import AutoencoderKL

        if config.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {config.spatial_dims}")
        if len(config.attention_levels) != len(config.channels):
            raise ValueError("attention_levels needs one flag per entry of channels")
        self.config = config
        self.network = AutoencoderKL(
            spatial_dims=config.spatial_dims,
            in_channels=config.in_channels,
            out_channels=config.in_channels,
            channels=tuple(config.channels),
            latent_channels=config.latent_channels,
            num_res_blocks=config.num_res_blocks,
            attention_levels=tuple(config.attention_levels),
            norm_num_groups=config.norm_num_groups,
            with_encoder_nonlocal_attn=False,
            with_decoder_nonlocal_attn=False,
        )

    def encode_distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and standard deviation (unscaled), each (B, latent_channels, *S')."""
        return self.network.encode(x)

    def encode(self, x: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latent: posterior mean (default) or a sample, × ``scaling_factor``."""
        mean, sigma = self.encode_distribution(x)
        z = mean
        if sample:
            z = mean + sigma * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return z * self.config.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Image (B, in_channels, *S) from a scaled latent."""
        return self.network.decode(z / self.config.scaling_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction (posterior mean)."""
        return self.decode(self.encode(x))

    def loss(self, x: torch.Tensor, *, generator: torch.Generator | None = None, critic: "PatchCritic | None" = None
             ) -> dict[str, torch.Tensor]:
        """``{"loss", "recon" (L1), "kl"}`` (+ ``"ssim"``, + ``"adversarial"``/``"critic"``) for a batch; the
        posterior is sampled (reparameterised). With ``critic``, ``loss`` also holds the critic's own loss, set up
        so that one backward pass gives each side only its own gradient (``PatchCritic.losses``)."""
        mean, sigma = self.encode_distribution(x)
        z = mean + sigma * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        reconstruction = self.network.decode(z)
        recon = F.l1_loss(reconstruction, x)
        kl = 0.5 * (mean.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2).clamp_min(1e-12)) - 1).flatten(1).sum(1).mean()
        out = {"recon": recon, "kl": kl}
        total = recon + self.config.kl_weight * kl
        if self.config.ssim_weight:
            out["ssim"] = 1.0 - ssim_loss(reconstruction, x, spatial_dims=self.config.spatial_dims)
            total = total + self.config.ssim_weight * (1.0 - out["ssim"])
        if critic is not None:
            generator_term, critic_term = critic.losses(real=x, fake=reconstruction)
            out["adversarial"], out["critic"] = generator_term.detach(), critic_term.detach()
            total = total + self.config.adversarial_weight * generator_term + critic_term
        out["loss"] = total
        return out

    @torch.no_grad()
    def fit_scaling_factor(self, x: torch.Tensor) -> float:
        """Set ``scaling_factor`` = 1/std of the unscaled posterior means of ``x`` (a representative batch)."""
        mean, _ = self.encode_distribution(x)
        self.config.scaling_factor = float(1.0 / mean.std().clamp_min(1e-6))
        return self.config.scaling_factor


def ssim_loss(prediction: torch.Tensor, reference: torch.Tensor, *, spatial_dims: int) -> torch.Tensor:
    """1 − SSIM of images in [-1, 1] (MONAI ``SSIMLoss``: Gaussian window of 7, data range 2), differentiable."""
    from monai.losses import SSIMLoss

    return SSIMLoss(spatial_dims=spatial_dims, data_range=2.0, win_size=7)(prediction, reference)


class PatchCritic(torch.nn.Module):
    """The patch discriminator of the autoencoder's adversarial term (MONAI ``PatchDiscriminator``, instance norm).

    ``losses(real, fake)`` returns ``(generator_term, critic_term)`` of the least-squares GAN: the critic learns
    real → 1, fake → 0 on a detached ``fake``; the generator term asks the critic's output on ``fake`` to be 1
    with the critic's parameters detached. Summed into one loss, a single backward pass and one optimizer step
    train each side on its own objective only.
    """

    def __init__(self, config: ImageAutoencoderConfig):
        super().__init__()
        from monai.networks.nets import PatchDiscriminator

        self.network = PatchDiscriminator(spatial_dims=config.spatial_dims, channels=config.critic_channels,
                                          in_channels=config.in_channels, num_layers_d=config.critic_layers, norm="INSTANCE")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)[-1]

    def losses(self, *, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        critic_term = 0.5 * ((self(real) - 1).pow(2).mean() + self(fake.detach()).pow(2).mean())
        frozen = {name: parameter.detach() for name, parameter in self.named_parameters()}
        generator_term = (torch.func.functional_call(self, frozen, (fake,)) - 1).pow(2).mean()
        return generator_term, critic_term
