"""`medm2g data synth`: write phantom patient cohorts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medm2g_cli import console
from medm2g_cli.options import JsonOut

@console.handle_errors
def synth(
    out: Annotated[Path, typer.Option("--out", help="Cohort folder to write.")],
    patients: Annotated[int, typer.Option("--patients", min=1, help="Number of patients.")] = 8,
    anatomy: Annotated[str, typer.Option("--anatomy", help="chest|head")] = "chest",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    size: Annotated[int, typer.Option("--size", help="64|128|256 voxels per side.")] = 64,
    preview: Annotated[bool, typer.Option("--preview", help="Also write preview.png, a montage of a few patients.")] = False,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Processes (0 = in-process).")] = None,
    json_out: JsonOut = False,
) -> None:
    """Write synthetic phantom patients (CT, MRI T1/T2/PD, X-ray DRR, report, labels)."""
    console.not_available("data synth", 4)
