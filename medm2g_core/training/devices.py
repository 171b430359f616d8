"""``--device auto|cpu|cuda[:N]|mps`` → a torch device string, the same rules for training and inference.

``auto`` picks CUDA, then Apple MPS, then CPU. A device asked for explicitly that is not there is a
``ConfigError`` (exit 2) — never a silent fallback to the CPU, which would turn a one-hour GPU job
into a silent three-day CPU job on a cluster node whose driver failed to load.

It lives in ``training`` (not ``inference``, where ``--device`` first appeared) because the training loop
resolves the same flag and imports point down.
"""

from __future__ import annotations

import re

from medm2g_core.errors import ConfigError

DEVICE_PATTERN = re.compile(r"(auto|cpu|mps|cuda)(?::(\d+))?")


def resolve_device(spec: str | None = "auto") -> str:
    """Validate ``spec`` against the hardware and return a torch device string (``"cuda:0"``, ``"cpu"``).

    Raises:
        ConfigError: unknown spelling, or a requested CUDA/MPS device that is not available.
    """
    text = (spec or "auto").strip().lower()
    match = DEVICE_PATTERN.fullmatch(text)
    if not match or (match.group(2) is not None and match.group(1) != "cuda"):
        raise ConfigError(f"--device {spec!r}: use auto, cpu, cuda, cuda:N or mps")
    kind, index = match.group(1), match.group(2)
    import torch

    if kind == "auto":
        if torch.cuda.is_available():
            return "cuda:0"
        if _mps_available(torch):
            return "mps"
        return "cpu"
    if kind == "cpu":
        return "cpu"
    if kind == "mps":
        if not _mps_available(torch):
            raise ConfigError("--device mps: Apple MPS is not available on this machine (PyTorch reports none); use --device cpu or auto")
        return "mps"
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--device {spec}: no CUDA device is available (torch {torch.__version__}, CUDA build: "
            f"{torch.version.cuda or 'none'}); check the driver / CUDA_VISIBLE_DEVICES, or use --device cpu"
        )
    count = torch.cuda.device_count()
    number = int(index or 0)
    if number >= count:
        raise ConfigError(f"--device {spec}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    return f"cuda:{number}"


def _mps_available(torch) -> bool:  # noqa: ANN001 - the module
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
