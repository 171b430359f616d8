"""medm2g core library: I/O, data, models, training, sampling, metrics, inference, batch jobs, workflows.

This file is the roof: it only re-exports (``__version__`` and, lazily, the ``MedM2G`` facade) so that
``import medm2g_core`` and ``medm2g --help`` stay cheap. Nothing inside the package imports from it.
The core never prints; long jobs report progress through a callback (see ``types.ProgressFn``).
"""

from __future__ import annotations

from medm2g_core._version import __version__

__all__ = ["__version__", "MedM2G"]


def __getattr__(name: str):
    if name == "MedM2G":
        from medm2g_core.inference.model import MedM2G

        return MedM2G
    raise AttributeError(name)
