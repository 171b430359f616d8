"""`medm2g align`: central alignment through the text hub with visual-invariant preservation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medm2g_cli import console
from medm2g_cli.options import DataDir, JsonOut, MixedPrecision, Recipe, Resume, Seed, Steps


@console.handle_errors
def align(
    data: DataDir,
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to create or update.")],
    recipe: Recipe = None,
    steps: Steps = None,
    text_encoder: Annotated[Optional[Path], typer.Option("--text-encoder", help="Local Hugging Face encoder folder.")] = None,
    vi_weight: Annotated[Optional[float], typer.Option("--vi-weight", help="Weight of the visual-invariant loss (0 = ablation).")] = None,
    resume: Resume = False,
    seed: Seed = 0,
    mixed_precision: MixedPrecision = "no",
    json_out: JsonOut = False,
) -> None:
    """Train the aligned encoders (text hub InfoNCE + visual-invariant loss)."""
    console.not_available("align", 5)
