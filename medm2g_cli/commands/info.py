"""`medm2g info`: what a bundle holds, without loading weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medm2g_cli import console
from medm2g_cli.options import JsonOut


@console.handle_errors
def info(
    bundle: Annotated[Path, typer.Argument(help="Model bundle folder.")],
    json_out: JsonOut = False,
) -> None:
    """Show a bundle's modalities, flows, training data, metrics and forgetting report."""
    console.not_available("info", 5)
