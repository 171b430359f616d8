"""`medm2g data ...`: cohort tools (synth, index, import)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medm2g_cli import console
from medm2g_cli.options import JsonOut

app = typer.Typer(help="Cohort tools: synthesize phantoms, index patient folders, import public datasets.", no_args_is_help=True)


@app.command("synth")
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


@app.command("index")
@console.handle_errors
def index(
    directory: Annotated[Path, typer.Argument(help="Cohort folder of patient folders.")],
    write: Annotated[bool, typer.Option("--write", help="Write DIR/manifest.jsonl.")] = False,
    json_out: JsonOut = False,
) -> None:
    """List what each patient folder holds and the problems found."""
    console.not_available("data index", 3)


@app.command("import")
@console.handle_errors
def import_(
    dataset: Annotated[str, typer.Argument(help="iu-xray|mimic-cxr|synthrad|ixi|brats")],
    source: Annotated[Path, typer.Argument(help="The dataset as downloaded.")],
    out: Annotated[Path, typer.Option("--out", help="Cohort folder to write.")],
    json_out: JsonOut = False,
) -> None:
    """Convert a public dataset into canonical patient folders (symlinks where possible)."""
    console.not_available("data import", 9)
