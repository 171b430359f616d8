"""`medm2g data import`: public datasets → canonical patient folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medm2g_cli import console
from medm2g_cli.options import JsonOut

@console.handle_errors
def import_(
    dataset: Annotated[str, typer.Argument(help="iu-xray|mimic-cxr|synthrad|ixi|brats")],
    source: Annotated[Path, typer.Argument(help="The dataset as downloaded.")],
    out: Annotated[Path, typer.Option("--out", help="Cohort folder to write.")],
    json_out: JsonOut = False,
) -> None:
    """Convert a public dataset into canonical patient folders (symlinks where possible)."""
    console.not_available("data import", 9)
