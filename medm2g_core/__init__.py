"""medm2g core library: I/O, data, models, training, sampling, metrics and pipelines.

The core never prints; long jobs report progress through a callback (see ``types.Progress``).
Heavy modules (torch, diffusers) are imported lazily so that ``import medm2g_core`` is cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "MedM2G"]


def __getattr__(name: str):
    if name == "MedM2G":
        from medm2g_core.pipelines.model import MedM2G

        return MedM2G
    raise AttributeError(name)
