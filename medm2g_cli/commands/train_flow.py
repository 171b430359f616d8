"""`medm2g train-flow`: train one generation flow into a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medm2g_cli import console
from medm2g_cli.options import DataDir, JsonOut, MixedPrecision, Recipe, Resume, Seed, Steps


@console.handle_errors
def train_flow(
    pair: Annotated[str, typer.Option("--pair", help="xray-report|report-xray|mri-ct|ct-mri|t1-t2|t2-t1|t2+pd-t1")],
    data: DataDir,
    bundle: Annotated[Path, typer.Option("--bundle", help="Bundle made by `medm2g align` (updated in place).")],
    recipe: Recipe = None,
    steps: Steps = None,
    stage: Annotated[str, typer.Option("--stage", help="flow|autoencoder|text-vae")] = "flow",
    modality: Annotated[Optional[str], typer.Option("--modality", help="For --stage autoencoder.")] = None,
    resume: Resume = False,
    seed: Seed = 0,
    mixed_precision: MixedPrecision = "no",
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing")] = False,
    json_out: JsonOut = False,
) -> None:
    """Train a flow (and the latent spaces it needs) on a cohort, adding it to the bundle."""
    console.not_available("train-flow", 6)
