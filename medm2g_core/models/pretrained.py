"""The one thin base class for learnable components: a config record beside every set of weights.

``save_pretrained(dir)`` writes ``config.json`` (``_class_name``, ``_medm2g_version``) and
``model.safetensors``; ``from_pretrained(dir)`` rebuilds the module from the config and loads the
weights strictly. Modules that hold parts owned by someone else (the shared cross-attention of a
bundle) list those parameters in ``external_parameter_ids()`` so that they are neither saved nor
expected in this component's file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from medm2g_core.serialization import check_state_matches, load_config, load_weights, save_config, save_weights

WEIGHTS_NAME = "model.safetensors"

M = TypeVar("M", bound="PretrainedModule")


class PretrainedModule(torch.nn.Module):
    """``torch.nn.Module`` with ``config`` (a dataclass) and the save/load contract.

    Subclasses set ``config_class`` and build themselves from ``__init__(config, **parts)``, where
    ``parts`` are modules owned elsewhere (e.g. ``shared=SharedCrossAttention``).
    """

    config_class: ClassVar[type]
    config: Any

    def external_parameter_ids(self) -> set[int]:
        """``id()`` of parameters/buffers owned by another component (not saved with this one)."""
        return set()

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """``state_dict()`` without the tensors of externally owned parts."""
        external = self.external_parameter_ids()
        if not external:
            return self.state_dict()
        skip = {name for name, p in self.named_parameters(remove_duplicate=False) if id(p) in external}
        skip |= {name for name, b in self.named_buffers(remove_duplicate=False) if id(b) in external}
        return {k: v for k, v in self.state_dict().items() if k not in skip}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``directory/config.json`` and ``directory/model.safetensors``; returns ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_config(directory, self.config, class_name=type(self).__name__)
        save_weights(directory / WEIGHTS_NAME, self.own_state_dict())
        return directory

    @classmethod
    def from_pretrained(cls: type[M], directory: str | Path, *, device: str | torch.device = "cpu", **parts: Any) -> M:
        """Rebuild from ``config.json`` and load ``model.safetensors`` strictly (``BundleError`` on mismatch)."""
        directory = Path(directory)
        config = load_config(directory, cls.config_class, class_name=cls.__name__)
        module = cls(config, **parts)
        state = load_weights(directory / WEIGHTS_NAME)
        module.load_own_state(state, where=str(directory / WEIGHTS_NAME))
        return module.to(device)

    def load_own_state(self, state: dict[str, torch.Tensor], *, where: str) -> None:
        """Load ``state`` (as written by ``save_pretrained``) with key/shape checks."""
        check_state_matches(self.own_state_dict(), state, where=where)
        self.load_state_dict(state, strict=False)
