"""Shared fixtures: the shared real data folder (skip when absent) and small thread counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MEDM2G_HOME", str(Path(os.environ.get("PYTEST_TMPDIR", "/tmp")) / "medm2g-test-home"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDM2G_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` read in place; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_set(shared_data: Path):
    """``shared_set(name)`` → ``../shared/data/<name>``; the test skips when that one set is absent."""
    def find(name: str) -> Path:
        source = shared_data / name
        if not source.is_dir():
            pytest.skip(f"no {name} in shared data")
        return source

    return find
