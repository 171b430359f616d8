"""`medm2g generate`: X-ray → report and report → X-ray."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from medm2g_cli import console, parsing
from medm2g_cli.options import Device, Guidance, JsonOut, ModelPath, Overwrite, Samples, SamplerSteps, Seed, SkipExisting


@console.handle_errors
def generate(
    to: Annotated[str, typer.Option("--to", help="xray|report")],
    sources: Annotated[List[str], typer.Option("--from", help="File, patient folder, cohort folder, - (paths on stdin) or quoted report text; repeat to compose.")],
    model: ModelPath = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder: OUT/<patient>/report.txt or xray.png (default ./medm2g-output).")] = None,
    output_format: Annotated[str, typer.Option("--format", help="X-ray output: png (16-bit) or dicom.")] = "png",
    samples: Samples = 1,
    seed: Seed = 0,
    steps: SamplerSteps = None,
    guidance: Guidance = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help="Composition weights for several sources, e.g. 0.7,0.3.")] = None,
    skip_existing: SkipExisting = False,
    overwrite: Overwrite = False,
    device: Device = "auto",
    json_out: JsonOut = False,
) -> None:
    """Generate a report from an X-ray, or an X-ray from a report.

    Exit codes: 0 all done, 1 some inputs failed (the rest finished), 2 usage or input error.
    """
    from medm2g_core.jobs.generate import generate_batch

    console.run_batch(
        "generate",
        generate_batch,
        sources,
        json_out=json_out,
        to=parsing.parse_target(to),
        model=model,
        out=out,
        output_format=output_format,
        samples=samples,
        seed=seed,
        steps=steps,
        guidance=guidance,
        weights=parsing.parse_weights(weights, len(sources)),
        skip_existing=skip_existing,
        overwrite=overwrite,
        device=device,
    )
