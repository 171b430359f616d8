"""Flag syntax → typed values for ``medm2g_core`` (the core never sees ``"0/4"``, ``"4G"`` or ``"0.7,0.3"``).

Each parser raises ``ConfigError`` naming its flag (exit 2), before any model is loaded.
"""

from __future__ import annotations

import re
from typing import Sequence

from medm2g_core.errors import ConfigError
from medm2g_core.modalities import Modality, Pair, parse_modality, parse_pair


def parse_target(text: str) -> Modality:
    """``--to``: a modality name."""
    try:
        return parse_modality(str(text))
    except ValueError as error:
        raise ConfigError(f"--to: {error}") from None


def parse_targets(text: str) -> Modality | tuple[Modality, ...]:
    """``--to``: one modality (``ct``), or several generated together (``ct,mri-t2``) as a tuple."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if len(parts) <= 1:
        return parse_target(text)
    found = tuple(parse_target(p) for p in parts)
    if len(set(found)) != len(found):
        raise ConfigError(f"--to {text!r} names a modality twice")
    return found


def parse_pairs(text: str) -> tuple[Pair, ...]:
    """``--pair`` of ``--stage joint``: ``"mri-ct,t1-t2"`` → two flow pairs."""
    parts = [p for p in str(text).split(",") if p.strip()]
    try:
        found = tuple(parse_pair(p) for p in parts)
    except ValueError as error:
        raise ConfigError(f"--pair: {error}") from None
    if len(found) != 2 or found[0] == found[1]:
        raise ConfigError(f"--pair {text!r}: --stage joint takes two different flows of one source, e.g. --pair mri-ct,t1-t2")
    return found


def parse_sources(text: str | Sequence[str] | None) -> tuple[Modality, ...] | None:
    """``--from``: ``"mri-t2,mri-pd"`` (or a list) → modalities; None stays None."""
    if text is None:
        return None
    parts = [p for item in ([text] if isinstance(text, str) else text) for p in str(item).split(",") if p.strip()]
    if not parts:
        return None
    try:
        found = tuple(parse_modality(p) for p in parts)
    except ValueError as error:
        raise ConfigError(f"--from: {error}") from None
    if len(set(found)) != len(found):
        raise ConfigError(f"--from {text!r} names a modality twice")
    return found


def parse_weights(text: str | None, count: int) -> list[float] | None:
    """``--weights``: ``"0.7,0.3"`` → [0.7, 0.3], one per source (``count``)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--weights {text!r}: expected comma-separated numbers such as 0.7,0.3") from None
    if len(values) != count:
        raise ConfigError(f"--weights {text!r}: got {len(values)} weights for {count} sources; give one per source")
    return values


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``--shard``: ``"k/N"`` → (k, N) with 0 ≤ k < N; None passes through."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise ConfigError(f"--shard {text!r}: expected k/N such as 0/4 (k counts from 0)")
    k, n = int(match.group(1)), int(match.group(2))
    if n < 1 or not 0 <= k < n:
        raise ConfigError(f"--shard {text!r}: need N ≥ 1 and 0 ≤ k < N (k counts from 0)")
    return k, n


_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_memory(text: str | None) -> int | None:
    """``--max-memory``: ``"4G"``, ``"512MiB"``, ``"1.5gb"`` or bytes → bytes; None stays None (the core's
    default: half the RAM, or ``MEDM2G_MAX_ARRAY_BYTES``)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise ConfigError(f"--max-memory {text!r}: expected a size such as 4G, 512M or 2GiB")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise ConfigError(f"--max-memory {text!r} must be positive")
    return value
