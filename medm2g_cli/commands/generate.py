"""`medm2g generate`: X-ray → report and report → X-ray."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from medm2g_cli import console
from medm2g_cli.options import BatchSize, Device, Guidance, JsonOut, ModelPath, OutDir, Samples, SamplerSteps, Seed


@console.handle_errors
def generate(
    to: Annotated[str, typer.Option("--to", help="xray|report")],
    sources: Annotated[List[str], typer.Option("--from", help="File, patient folder or quoted report text; repeatable.")],
    model: ModelPath = None,
    out: OutDir = None,
    samples: Samples = 1,
    seed: Seed = 0,
    steps: SamplerSteps = None,
    guidance: Guidance = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help="Composition weights for several sources, e.g. 0.7,0.3.")] = None,
    device: Device = "auto",
    batch_size: BatchSize = None,
    json_out: JsonOut = False,
) -> None:
    """Generate a report from an X-ray, or an X-ray from a report."""
    console.not_available("generate", 7)
