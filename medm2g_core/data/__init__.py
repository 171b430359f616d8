"""Cohorts on disk: phantoms, manifests, datasets, transforms, importers."""
