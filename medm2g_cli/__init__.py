"""medm2g command line: a thin Typer layer over ``medm2g_core`` (no torch at import time)."""
