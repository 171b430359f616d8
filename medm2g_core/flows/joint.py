"""Joint generation of two flows with one source (CoDi's environment encoders, DESIGN §1.5).

Two flows of a bundle that share their source (``mri-ct`` and ``t1-t2``, both from ``mri-t1``) are sampled in one
loop (``sampling.joint``): each denoiser also sees the **environment tokens** of its partner's current noisy
latent. The joint stage (``joint/<flowA>+<flowB>/``) adds, per stream:

- an ``EnvironmentEncoder`` that turns the stream's noisy latent into tokens for its partner's cross-attention;
- a gate g (``tanh`` of a zero-initialised scalar) scaling what those tokens change in the partner's prediction
  (``sampling.joint.joint_step``).

**What trains:** the environment encoders and the gates, nothing else. The flows' denoisers, adapters and the
shared cross-attention (``flows/shared``, which reads the environment tokens) stay frozen, so the separate flows
are unchanged bit for bit and the joint model *starts* equal to sampling them separately (g = 0). CoDi also
trains the cross-attention that reads the environment; here that layer is shared by every flow of the bundle,
and training it would change the flows sampled alone.

Training step (``JointTask``): patients with the source and both targets; both targets noised at the SAME
timestep t with their own noise; each denoiser gets its own condition plus its partner's environment tokens;
loss = the sum of both flows' own diffusion losses (their prediction type, loss norm, Min-SNR weighting).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from medm2g_core.bundle import EMA_WEIGHTS, joint_dir
from medm2g_core.errors import BundleError, ConfigError
from medm2g_core.flows.model import FlowModel, Prediction
from medm2g_core.flows.objective import add_noise, diffusion_loss, min_snr_weights, training_target
from medm2g_core.modalities import Modality, Pair, parse_pair
from medm2g_core.models.conditioning import (
    EnvironmentEncoder,
    EnvironmentEncoderConfig,
    SemanticSource,
    assemble_condition,
    environment_tokens,
)
from medm2g_core.models.pretrained import PretrainedModule
from medm2g_core.sampling.joint import joint_step


# --------------------------------------------------------------------------- network
@dataclass
class JointNetworkConfig:
    """The joint stage of ``flows`` (``Pair.name`` per stream, in stream order).

    Attributes:
        flows: the streams' flows, spelled as ``--pair`` takes them (``mri-t1-ct``; ``spelled``).
        kinds: per stream, ``image`` (latent (B, c, H, W)) or ``tokens`` (text latent (B, N, c)).
        channels: per stream, c of its latent.
        condition_dim: width of the flows' condition tokens (the shared cross-attention's ``condition_dim``).
        patch_size: image latents are cut into p × p patches, one token each.
    """

    flows: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    channels: list[int] = field(default_factory=list)
    condition_dim: int = 64
    patch_size: int = 4


class JointNetwork(PretrainedModule):
    """Environment encoders and gates of a joint stage.

    ``environment[j]`` encodes stream j's noisy latent into tokens for its partners (``environment_tokens(j, x_j)
    -> SemanticSource`` (B, N, condition_dim)); ``gate(i)`` = tanh(gates[i]) scales how much they change stream i's
    prediction (0 at initialisation).
    """

    config_class = JointNetworkConfig

    def __init__(self, config: JointNetworkConfig):
        super().__init__()
        count = len(config.flows)
        if count < 2 or not (len(config.kinds) == len(config.channels) == count):
            raise ConfigError(f"a joint stage needs two or more flows with a kind and channels each, got {config}")
        self.config = config
        self.environment = nn.ModuleList(
            EnvironmentEncoder(EnvironmentEncoderConfig(kind=kind, channels=int(channels), condition_dim=config.condition_dim,
                                                        patch_size=config.patch_size))
            for kind, channels in zip(config.kinds, config.channels)
        )
        self.gates = nn.Parameter(torch.zeros(count))

    def gate(self, index: int) -> torch.Tensor:
        return torch.tanh(self.gates[index])

    def environment_tokens(self, index: int, latent: torch.Tensor) -> SemanticSource:
        return environment_tokens(latent, encoder=self.environment[index])

    @classmethod
    def for_flows(cls, networks: Sequence[Any], *, patch_size: int) -> "JointNetwork":
        """A fresh joint stage (gates 0) for the ``FlowNetwork``s of its streams; refuses flows that cannot be
        sampled together (different sources, grids, normalisation or training timesteps)."""
        check_compatible(networks)
        kinds, channels = [], []
        for network in networks:
            denoiser = network.config.denoiser_config
            if network.config.kind == "text":
                kinds.append("tokens")
                channels.append(int(denoiser.latent_dim))
            else:
                if denoiser.sample_size % patch_size:
                    raise ConfigError(f"flows.joint.patch_size {patch_size} does not divide the {network.config.pair} flow's "
                                      f"{denoiser.sample_size}² latent; choose a divisor of it")
                kinds.append("image")
                channels.append(int(denoiser.target_channels))
        condition_dim = int(networks[0].shared.config.condition_dim)
        return cls(JointNetworkConfig(flows=[spelled(n.config.pair) for n in networks], kinds=kinds, channels=channels,
                                      condition_dim=condition_dim, patch_size=patch_size))

    @property
    def pairs(self) -> list[Pair]:
        return [parse_pair(name) for name in self.config.flows]


def spelled(pair: Pair) -> str:
    """``pair`` as ``--pair`` and ``parse_pair`` take it (``mri-t1-ct``, ``mri-t2+mri-pd-mri-t1``)."""
    return "+".join(s.value for s in pair.sources) + "-" + pair.target.value


def check_compatible(networks: Sequence[Any]) -> None:
    """``ConfigError`` unless the flows share their sources, image size, 2.5D context, normalisation and number of
    training timesteps (one slice stack feeds every stream; one t noises them all)."""
    first = networks[0].config
    for network in networks[1:]:
        config = network.config
        checks = (("sources", first.sources, config.sources), ("image_size", first.image_size, config.image_size),
                  ("context_slices", first.context_slices, config.context_slices),
                  ("normalisation", first.normalise_options, config.normalise_options),
                  ("num_train_timesteps", first.flow_config.num_train_timesteps, config.flow_config.num_train_timesteps))
        for name, mine, theirs in checks:
            if mine != theirs:
                raise ConfigError(f"flows {first.pair} and {config.pair} cannot be generated jointly: their {name} differ "
                                  f"({mine} vs {theirs}); joint generation needs two flows trained from one source the same way")
        if network.config.pair.target == networks[0].config.pair.target:
            raise ConfigError(f"flows {first.pair} and {config.pair} make the same target; a joint stage pairs two targets")


# --------------------------------------------------------------------------- data
class JointSliceDataset(Dataset):
    """The same (patient, slice) items of one dataset per stream: item ``{"streams": [item_0, item_1, ...]}``.

    The per-stream datasets must list the same patients and slices in the same order (``PairSliceDataset`` over the
    same records, each with its own target).
    """

    epoch_indexed = True

    def __init__(self, datasets: Sequence[Dataset]):
        self.datasets = list(datasets)
        keys = [[(d.records[r].patient_id, k) for r, k, _ in d.items] for d in self.datasets]
        if any(k != keys[0] for k in keys[1:]):
            raise ValueError("the streams' datasets list different patients or slices; build them from the same records")

    def __len__(self) -> int:
        return len(self.datasets[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"streams": [dataset[index] for dataset in self.datasets]}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        streams = []
        for index, dataset in enumerate(self.datasets):
            collate = getattr(dataset, "collate", None) or default_collate
            streams.append(collate([item["streams"][index] for item in items]))
        return {"streams": streams}


# --------------------------------------------------------------------------- training
class JointTask:
    """The joint stage's training (module docstring): implements the loop's ``Task`` protocol.

    Args:
        network: the ``JointNetwork`` (the only trainable module).
        tasks: one ``FlowTask`` per stream, in the network's stream order; used for their batches → (sources, x0),
            conditions and noise schedules. Their networks and the shared cross-attention are frozen here.
    """

    def __init__(self, network: JointNetwork, tasks: Sequence[Any]):
        self.network = network
        self.tasks = list(tasks)
        if [t.pair for t in self.tasks] != network.pairs:
            raise ValueError(f"tasks {[str(t.pair) for t in self.tasks]} are not the joint stage's flows {network.config.flows}")
        check_compatible([t.network for t in self.tasks])
        for task in self.tasks:
            task.network.eval().requires_grad_(False)
            task.network.shared.requires_grad_(False)

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"joint": self.network}

    def on_train_start(self, accelerator: Any) -> None:
        for task in self.tasks:
            task.network.to(accelerator.device)
            task.on_train_start(accelerator)

    def _streams(self, batch: dict[str, Any]) -> tuple[list[torch.Tensor], list[Any]]:
        """x0 and the (every source kept) ``ConditionInputs`` of each stream."""
        targets, inputs = [], []
        for task, stream in zip(self.tasks, batch["streams"]):
            sources = task.sources_of(stream)
            targets.append(task.target_of(stream))
            with torch.no_grad():
                inputs.append(task.condition_inputs(sources, keys=task.item_keys(stream)))
        return targets, inputs

    def losses(self, targets: Sequence[torch.Tensor], inputs: Sequence[Any], noise: Sequence[torch.Tensor],
               timesteps: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both flows' diffusion losses at ``timesteps`` (B,), coupled (``loss``, per target ``<target>_loss``) and
        alone (``separate_loss``: the same losses with every gate 0, for comparison)."""
        noisy = [add_noise(x0, eps, timesteps, alphas_cumprod=task.alphas_cumprod) for task, x0, eps in zip(self.tasks, targets, noise)]
        with torch.no_grad():
            alone = [task.network(x, timesteps, condition=assemble_condition(c)) for task, x, c in zip(self.tasks, noisy, inputs)]
        coupled = joint_step([t.network for t in self.tasks], noisy, timesteps, inputs=inputs, environment=self.network.environment_tokens,
                             gates=[self.network.gate(i) for i in range(len(self.tasks))], alone=alone)
        out: dict[str, torch.Tensor] = {}
        total = separate = 0.0
        for index, (task, x0, eps) in enumerate(zip(self.tasks, targets, noise)):
            config = task.config
            target = training_target(x0, eps, timesteps, alphas_cumprod=task.alphas_cumprod, prediction_type=config.prediction_type)
            weights = None
            if config.min_snr_gamma:
                weights = min_snr_weights(timesteps, alphas_cumprod=task.alphas_cumprod, gamma=config.min_snr_gamma,
                                          prediction_type=config.prediction_type)
            loss = diffusion_loss(coupled[index], target, weights=weights, norm=config.loss)
            total = total + loss
            separate = separate + diffusion_loss(alone[index], target, weights=weights, norm=config.loss).detach()
            out[f"{task.pair.target.value}_loss"] = loss.detach()
            out[f"{task.pair.target.value}_gate"] = self.network.gate(index).detach()
        return {"loss": total, "separate_loss": separate, **out}

    def training_step(self, batch: dict[str, Any], *, step: int) -> dict[str, torch.Tensor]:
        targets, inputs = self._streams(batch)
        batch_size = targets[0].shape[0]
        steps = self.tasks[0].config.num_train_timesteps
        timesteps = torch.randint(0, steps, (batch_size,), device=targets[0].device)  # ONE t per item, for both streams
        noise = [torch.randn_like(x0) for x0 in targets]
        return self.losses(targets, inputs, noise, timesteps)

    def validation_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Coupled and separate losses at stratified timesteps (t_i = (i + ½)/B · T) with the caller-seeded noise."""
        targets, inputs = self._streams(batch)
        batch_size = targets[0].shape[0]
        steps = self.tasks[0].config.num_train_timesteps
        timesteps = ((torch.arange(batch_size, device=targets[0].device) + 0.5) / batch_size * steps).long().clamp(0, steps - 1)
        noise = [torch.randn_like(x0) for x0 in targets]
        return {k: float(v) for k, v in self.losses(targets, inputs, noise, timesteps).items()}


# --------------------------------------------------------------------------- inference
class JointFlowModel:
    """Two (or more) flows of a bundle with one source, sampled together with their joint stage.

    ``predict(sources, ...) -> list[Prediction]`` (one per flow, in ``pairs`` order) takes what ``FlowModel.predict``
    takes; ``image_size``, ``context_slices`` and ``normalise_options`` are the flows' (equal by construction).
    """

    def __init__(self, *, flows: Sequence[FlowModel], network: JointNetwork, device: str = "cpu"):
        self.flows = list(flows)
        self.network = network.eval()
        self.device = device
        self.pairs: list[Pair] = [flow.pair for flow in self.flows]
        self.name = "+".join(p.name for p in self.pairs)
        first = self.flows[0]
        self.image_size, self.context_slices, self.normalise_options = first.image_size, first.context_slices, first.normalise_options

    @classmethod
    def load(cls, bundle: str | Path, pairs: Sequence[Pair | str], *, device: str = "cpu", use_ema: bool = True,
             flows: Sequence[FlowModel] | None = None) -> "JointFlowModel":
        """Load ``joint/<flowA>+<flowB>/`` and its flows (``flows``: already loaded ones, in ``pairs`` order).

        Raises:
            BundleError: the bundle has no joint stage for these flows (the message names the command that trains it).
        """
        from medm2g_core.serialization import load_weights

        pairs = [parse_pair(p) if isinstance(p, str) else p for p in pairs]
        if len(pairs) != 2:
            raise ConfigError(f"joint generation pairs two flows, got {len(pairs)}")
        directory = joint_dir(bundle, pairs[0].name, pairs[1].name)
        if not (directory / "config.json").is_file():
            raise BundleError(missing_joint_message(bundle, pairs))
        network = JointNetwork.from_pretrained(directory, device=device)
        if use_ema and (directory / EMA_WEIGHTS).is_file():
            network.load_own_state(load_weights(directory / EMA_WEIGHTS), where=str(directory / EMA_WEIGHTS))
        loaded = dict(zip(pairs, flows)) if flows is not None else {}
        ordered = [loaded.get(pair) or FlowModel.load(bundle, pair, device=device, use_ema=use_ema) for pair in network.pairs]
        return cls(flows=ordered, network=network, device=device)

    @torch.no_grad()
    def predict(self, sources: dict[Modality | str, Any], *, samples: int = 1, seed: int | Sequence[int] = 0,
                steps: int | None = None, guidance: float | None = None) -> list[Prediction]:
        """Generate every flow's target for a batch of sources in ONE sampling loop (``sampling.joint.sample_joint``).

        Each stream is seeded as ``FlowModel.predict`` seeds it (``seed``: one int, or one per item), so with the
        gates at 0 each output equals that flow's ``predict`` with the same arguments. ``steps``: one count for every
        stream (default: the first flow's ``sampling_steps``); ``guidance``: one scale for every stream (default: each
        flow's own).
        """
        from medm2g_core.sampling.joint import JointStream, sample_joint
        from medm2g_core.sampling.sample import make_sampling_scheduler, repeat_inputs, sample_generators, sample_set

        if samples < 1:
            raise ValueError(f"samples must be ≥ 1, got {samples}")
        streams, batch = [], 0
        for flow in self.flows:
            parsed, batch = flow.checked_sources(sources)
            generator = flow.generators(seed, batch)
            if isinstance(generator, list):
                generator = sample_generators(generator, samples)
            config = flow.config
            condition = flow.condition(parsed)
            streams.append(JointStream(
                denoiser=flow.network, scheduler=make_sampling_scheduler(config), shape=flow.target_shape(batch * samples),
                condition=repeat_inputs(condition, samples), prediction_type=config.prediction_type,
                guidance=config.guidance if guidance is None else guidance, clip_sample=config.clip_sample,
                clip_range=config.clip_range, eta=config.eta, generator=generator,
                condition_dim=flow.network.shared.config.condition_dim))
        drawn = sample_joint(streams, environment=self.network.environment_tokens,
                             gates=[self.network.gate(i) for i in range(len(self.flows))],
                             steps=steps or self.flows[0].config.sampling_steps, device=self.device)
        return [flow.finish(sample_set(x, batch=batch, samples=samples).samples) for flow, x in zip(self.flows, drawn)]


def missing_joint_message(bundle: str | Path, pairs: Sequence[Pair]) -> str:
    """What to say when a bundle has no joint stage for ``pairs``: the command that trains one."""
    names = ",".join(spelled(p) for p in pairs)
    targets = " and ".join(p.target.value for p in pairs)
    return (f"{bundle}: has no joint stage for the flows {names}, so {targets} cannot be generated together; train it with "
            f"`medm2g train-flow --stage joint --pair {names} --data COHORT --bundle {bundle}` (or translate to each target "
            "on its own)")
