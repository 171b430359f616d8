"""Fixtures for the I/O tests: an oblique, anisotropic grid (the geometry most likely to break)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from medm2g_core.types import ImageMeta


def make_oblique_meta(shape: tuple[int, ...] = (12, 10, 8), **kwargs) -> ImageMeta:
    """An ImageMeta rotated 17° about y and 0.3 rad about x, with anisotropic spacing (mm)."""
    angle = np.deg2rad(17.0)
    rotation = np.array(
        [[np.cos(angle), 0.0, np.sin(angle)], [0.0, 1.0, 0.0], [-np.sin(angle), 0.0, np.cos(angle)]]
    ) @ np.array([[1.0, 0.0, 0.0], [0.0, np.cos(0.3), -np.sin(0.3)], [0.0, np.sin(0.3), np.cos(0.3)]])
    return ImageMeta(
        spacing=(0.8, 1.1, 2.5),
        origin=(-31.5, 12.25, 80.0),
        direction=tuple(tuple(float(x) for x in row) for row in rotation),
        shape=shape,
        **kwargs,
    )


@pytest.fixture
def oblique_meta() -> Callable[..., ImageMeta]:
    return make_oblique_meta
