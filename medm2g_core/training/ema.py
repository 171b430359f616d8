"""Exponential moving average of a set of modules' parameters (kept beside the raw weights)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Shadow copies ``θ_ema ← d·θ_ema + (1 − d)·θ`` of every floating parameter and buffer.

    The effective decay warms up as ``min(decay, (1 + n) / (10 + n))`` (n = updates so far), as in
    diffusers' ``EMAModel``, so early averages are not dominated by the random initialisation.
    ``state_dict``/``load_state_dict`` make it resumable (registered with Accelerate's checkpointing).
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
        for name, module in modules.items():
            shadow = self.shadow[name]
            for key, value in module.state_dict().items():
                if value.dtype.is_floating_point:
                    shadow[key].mul_(decay).add_(value.detach().to(shadow[key].dtype), alpha=1.0 - decay)
                else:
                    shadow[key].copy_(value)
        self.updates += 1

    def state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """EMA weights per module name, ready for ``save_weights`` (e.g. ``ema.safetensors``)."""
        return {name: dict(state) for name, state in self.shadow.items()}

    def copy_to(self, modules: dict[str, nn.Module]) -> None:
        """Load the averaged weights into ``modules`` (for inference or evaluation)."""
        for name, module in modules.items():
            module.load_state_dict(self.shadow[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        for name, tensors in state["shadow"].items():
            for key, value in tensors.items():
                self.shadow[name][key].copy_(value)
