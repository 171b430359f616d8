"""The project's own error types: everything a user can cause maps to exit code 2 in the CLI."""

from __future__ import annotations

from pathlib import Path


class MedM2GError(Exception):
    """Base class for errors a user can cause; the message states the problem and the fix."""


class InputError(MedM2GError, ValueError):
    """An input file or folder cannot be used. ``path`` names it; the message says why and how to fix it."""

    def __init__(self, path: str | Path | None, problem: str, fix: str | None = None):
        self.path = None if path is None else Path(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{problem}" + (f" — {fix}" if fix else ""))


class ConfigError(MedM2GError, ValueError):
    """A recipe, config or command-line combination is invalid."""


class BundleError(MedM2GError, ValueError):
    """A model bundle is missing, incomplete or unsafe to load."""
