"""The UNet-regression translation baseline: the flow's own network trained as a pure L1 regressor.

DESIGN §8 compares the flow with "regression trained for the same total budget". This is that model,
built by reuse, not by copy: the ``FlowNetwork`` of the bundle's flow (same ``config.json``: the same
``ImageDenoiser`` UNet, condition adapters, spatial concatenation of the source, 2.5D context) with a
fresh, trainable ``SharedCrossAttention`` of the same configuration, the noise path zeroed
(``zero_init_noise_path``), trained by ``FlowTask`` in its L1 warm-start mode for *every* step
(noisy input zero, t = T−1; no condition dropout — a regressor has no unconditional branch).

Stored as ``baselines/<pair>-regression/{config.json, model.safetensors, shared/}`` (the network's own
weights and its private cross-attention; the bundle's ``flows/shared`` is never touched).
``RegressionModel`` predicts with the ``FlowModel.predict`` signature, so the translate pipeline's
slicing, reassembly and denormalisation (``inference.translate.translate_volume``) run unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from medm2g_core.bundle import SHARED
from medm2g_core.errors import BundleError, ConfigError
from medm2g_core.modalities import Modality, Pair, parse_modality

SHARED_FOLDER = SHARED


def regression_network_config(flow_config: Any) -> Any:
    """The flow's ``FlowNetworkConfig`` as a regressor: x0 (``sample``) output, no condition dropout."""
    from dataclasses import replace

    if not flow_config.spatial or flow_config.kind != "image":
        raise ConfigError(f"the regression baseline is for registered image→image flows (mri-ct, t1-t2); {flow_config.pair} is not one")
    objective = dict(flow_config.flow)
    if objective.get("latent"):
        raise ConfigError(f"flow {flow_config.pair} diffuses in latent space; the regression baseline supports pixel-space flows only")
    objective.update(prediction_type="sample", condition_dropout=0.0, source_dropout=0.0)
    return replace(flow_config, flow=objective)


def build_regression_network(flow_config: Any, shared_config: Any) -> tuple[Any, Any]:
    """A fresh ``(FlowNetwork, SharedCrossAttention)`` for the regressor of a flow with these configs."""
    from medm2g_core.flows.model import FlowNetwork
    from medm2g_core.models.conditioning import SharedCrossAttention

    shared = SharedCrossAttention(shared_config)
    network = FlowNetwork(regression_network_config(flow_config), shared=shared)
    network.denoiser.zero_init_noise_path()
    return network, shared


class RegressionModel:
    """A trained regression baseline, with ``FlowModel``'s inference attributes (``pair``, ``image_size``,
    ``context_slices``, ``normalise_options``, ``predict``) so ``translate_volume`` can run it."""

    def __init__(self, *, network: Any, align: Any, device: str = "cpu"):
        self.network = network.eval()
        self.align = align.eval()
        self.device = device
        self.pair: Pair = network.config.pair
        self.image_size: int = network.config.image_size
        self.context_slices: int = network.config.context_slices
        self.normalise_options: dict[str, Any] = network.config.normalise_options
        self.timestep = network.config.flow_config.num_train_timesteps - 1

    def save_pretrained(self, directory: str | Path) -> Path:
        """``config.json`` + ``model.safetensors`` (the network) and ``shared/`` (its cross-attention)."""
        directory = Path(directory)
        self.network.save_pretrained(directory)
        self.network.shared.save_pretrained(directory / SHARED_FOLDER)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, align: Any, device: str = "cpu") -> "RegressionModel":
        from medm2g_core.flows.model import FlowNetwork
        from medm2g_core.models.conditioning import SharedCrossAttention

        directory = Path(directory)
        if not (directory / "config.json").is_file() or not (directory / SHARED_FOLDER / "config.json").is_file():
            raise BundleError(f"{directory} is incomplete (config.json or shared/ missing); refit the regression baseline")
        shared = SharedCrossAttention.from_pretrained(directory / SHARED_FOLDER, device=device).eval()
        network = FlowNetwork.from_pretrained(directory, device=device, shared=shared)
        return cls(network=network, align=align, device=device)

    @torch.no_grad()
    def predict(self, sources: dict[Modality | str, torch.Tensor], *, samples: int = 1, seed: int | Sequence[int] = 0,
                steps: int | None = None, guidance: float | None = None, weights: Any = None) -> Any:
        """x0 from the condition alone for (B, 1 + 2·context_slices, H, W) sources in [-1, 1].

        Deterministic: ``samples``, ``seed``, ``steps`` and ``guidance`` are accepted for the
        ``FlowModel.predict`` signature and ignored (``std`` is None).
        """
        from medm2g_core.flows.model import Prediction, build_condition
        from medm2g_core.models.conditioning import assemble_condition

        parsed = {parse_modality(m) if isinstance(m, str) else m: v.to(self.device) for m, v in sources.items() if v is not None}
        if not parsed:
            raise ValueError(f"no source given; the {self.pair} regression takes {', '.join(s.value for s in self.pair.sources)}")
        inputs, _ = build_condition(self.network, self.align, parsed)
        condition = assemble_condition(inputs)
        batch = next(iter(parsed.values())).shape[0]
        denoiser = self.network.config.denoiser_config
        zeros = torch.zeros(batch, denoiser.target_channels, denoiser.sample_size, denoiser.sample_size, device=self.device)
        timesteps = torch.full((batch,), self.timestep, device=self.device, dtype=torch.long)
        mean = self.network(zeros, timesteps, condition=condition).clamp(-1, 1)
        return Prediction(mean=mean, std=None, samples=mean[None])
