"""`medm2g demo`: the whole pipeline on phantom cohorts, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medm2g_cli import console


@console.handle_errors
def demo(
    out: Annotated[Optional[Path], typer.Option("--out", help="Demo folder (default: ./medm2g-demo).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Smaller cohort and fewer steps (≤ 3 min).")] = False,
) -> None:
    """Synthesize phantom cohorts, align, train the flows, translate, generate, evaluate."""
    console.not_available("demo", 9)
