"""``ImageAutoencoder``: the KL autoencoder of one imaging modality (DESIGN.md §1.4).

One class for 2D (X-ray, CT/MRI slices) and 3D (patches) through MONAI's ``AutoencoderKL`` and
``spatial_dims``. Latents are scaled by a stored ``scaling_factor`` (Stable Diffusion's convention:
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

    def loss(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``{"loss", "recon" (L1), "kl"}`` for a batch; the posterior is sampled (reparameterised)."""
        mean, sigma = self.encode_distribution(x)
        z = mean + sigma * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        reconstruction = self.network.decode(z)
        recon = F.l1_loss(reconstruction, x)
        kl = 0.5 * (mean.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2).clamp_min(1e-12)) - 1).flatten(1).sum(1).mean()
        return {"loss": recon + self.config.kl_weight * kl, "recon": recon, "kl": kl}

    @torch.no_grad()
    def fit_scaling_factor(self, x: torch.Tensor) -> float:
        """Set ``scaling_factor`` = 1/std of the unscaled posterior means of ``x`` (a representative batch)."""
        mean, _ = self.encode_distribution(x)
        self.config.scaling_factor = float(1.0 / mean.std().clamp_min(1e-6))
        return self.config.scaling_factor
