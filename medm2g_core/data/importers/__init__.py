"""data/importers."""
