"""`medm2g evaluate`: the paper's metrics against references, with baselines and an HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medm2g_cli import console
from medm2g_cli.options import JsonOut, ModelPath


@console.handle_errors
def evaluate(
    task: Annotated[str, typer.Option("--task", help="report|xray|translation")],
    pred: Annotated[Path, typer.Option("--pred", help="Folder of predictions (patient folders).")],
    ref: Annotated[Path, typer.Option("--ref", help="Folder of references (patient folders).")],
    html: Annotated[Optional[Path], typer.Option("--html", help="Write a self-contained HTML report.")] = None,
    baseline: Annotated[bool, typer.Option("--baseline/--no-baseline", help="Compute the baselines beside the model.")] = False,
    features: Annotated[Optional[Path], typer.Option("--features", help="Local feature-extractor weights for FID/KID.")] = None,
    model: ModelPath = None,
    json_out: JsonOut = False,
) -> None:
    """Score predictions the way the field does (R2Gen, SynthRAD, SynDiff conventions)."""
    console.not_available("evaluate", 8)
