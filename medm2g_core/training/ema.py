"""Exponential moving average of a set of modules' parameters (kept beside the raw weights)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medm2g_core.bundle import EMA_WEIGHTS


class EMA:
    """Shadow copies ``θ_ema ← d·θ_ema + (1 − d)·θ`` of every floating parameter and buffer.

    The effective decay warms up as ``min(decay, (1 + n) / (10 + n))`` (n = updates so far), as in
    diffusers' ``EMAModel``, so early averages are not dominated by the random initialisation.
    ``save``/``load`` make it resumable: checkpoints hold it as ``ema.safetensors`` (not registered with
    Accelerate, whose custom-object checkpoints are unpickled with ``weights_only=False``).
    """

    def __init__(self, modules: dict[str, nn.Module], *, decay: float):
        self.decay = float(decay)
        self.updates = 0
        self.shadow: dict[str, dict[str, torch.Tensor]] = {
            name: {key: value.detach().clone() for key, value in module.state_dict().items()}
            for name, module in modules.items()
        }

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, modules: dict[str, nn.Module]) -> None:
        decay = self.current_decay()
        averaged, current = [], []
        for name, module in modules.items():
            shadow = self.shadow[name]
            for key, value in module.state_dict().items():
                if value.dtype.is_floating_point:
                    averaged.append(shadow[key])
                    current.append(value.detach().to(shadow[key].dtype))
                else:
                    shadow[key].copy_(value)
        if averaged:  # θ_ema + (1 − d)(θ − θ_ema), every tensor in one foreach call (a per-tensor loop cost ~6x more)
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
        self.updates += 1

    def state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """EMA weights per module name, ready for ``save_weights`` (e.g. ``ema.safetensors``)."""
        return {name: dict(state) for name, state in self.shadow.items()}

    def copy_to(self, modules: dict[str, nn.Module]) -> None:
        """Load the averaged weights into ``modules`` (for inference or evaluation)."""
        for name, module in modules.items():
            module.load_state_dict(self.shadow[name])

    FILE = EMA_WEIGHTS

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/ema.safetensors``: tensors as ``<module>/<key>``, decay and update count as metadata."""
        from medm2g_core.serialization import save_weights

        tensors = {f"{name}/{key}": value for name, state in self.shadow.items() for key, value in state.items()}
        metadata = {"format": "pt", "decay": repr(self.decay), "updates": str(self.updates)}
        return save_weights(Path(directory) / self.FILE, tensors, metadata=metadata)

    def load(self, directory: str | Path) -> None:
        """Restore what ``save`` wrote (safetensors only); every shadow tensor must be present."""
        from safetensors import safe_open

        from medm2g_core.errors import BundleError
        from medm2g_core.serialization import load_weights

        path = Path(directory) / self.FILE
        tensors = load_weights(path)
        expected = {f"{name}/{key}" for name, state in self.shadow.items() for key in state}
        if set(tensors) != expected:
            raise BundleError(f"{path}: holds other EMA tensors than this model has; start again without --resume")
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        self.decay = float(metadata.get("decay", self.decay))
        self.updates = int(metadata.get("updates", self.updates))
        for name, state in self.shadow.items():
            for key in state:
                state[key].copy_(tensors[f"{name}/{key}"])
