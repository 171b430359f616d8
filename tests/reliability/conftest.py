"""The tiny phantom cohort and bundles of the reliability suite, built once per session via the real CLI."""

from __future__ import annotations

import pytest

from reliability_support import Tiny, build_tiny


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    """6 head phantoms, an aligned bundle and a reference bundle with an uninterrupted mri-ct flow."""
    return build_tiny(tmp_path_factory.mktemp("reliability"))
