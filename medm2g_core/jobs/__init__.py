"""Batch drivers above MedM2G: input expansion, run records and sidecars, translate and generate runs."""
