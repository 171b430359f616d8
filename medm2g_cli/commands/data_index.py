"""`medm2g data index`: what each patient folder holds and the problems found."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medm2g_cli import console
from medm2g_cli.options import JsonOut

@console.handle_errors
def index(
    directory: Annotated[Path, typer.Argument(help="Cohort folder of patient folders.")],
    write: Annotated[bool, typer.Option("--write", help="Write DIR/manifest.jsonl.")] = False,
    json_out: JsonOut = False,
) -> None:
    """List what each patient folder holds and the problems found."""
    console.not_available("data index", 3)
