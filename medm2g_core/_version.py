"""The package version: the ground floor every writer of provenance imports."""

__version__ = "0.1.0"
