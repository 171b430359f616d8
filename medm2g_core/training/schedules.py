"""Learning-rate schedules as pure functions of the optimizer step (nanoGPT's ``get_lr``)."""

from __future__ import annotations

import math


def get_lr(step: int, *, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Linear warm-up then cosine decay.

    Step ``s`` (0-based optimizer step about to be taken):
    ``lr * (s + 1) / warmup_steps`` while ``s < warmup_steps``; afterwards
    ``lr_min + (lr - lr_min) * (1 + cos(pi * p)) / 2`` with ``p = (s - warmup) / max(1, total - warmup)``
    clipped to [0, 1] and ``lr_min = lr * min_lr_ratio``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    minimum = lr * min_lr_ratio
    return minimum + (lr - minimum) * 0.5 * (1.0 + math.cos(math.pi * progress))
