"""`medm2g translate`: MRI ↔ CT and MRI contrast synthesis over files, folders and stdin."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from medm2g_cli import console
from medm2g_cli.options import BatchSize, Device, Guidance, JsonOut, ModelPath, Overwrite, Samples, SamplerSteps, Seed, SkipExisting


@console.handle_errors
def translate(
    inputs: Annotated[List[str], typer.Argument(help="Files, patient folders, globs, or - (paths on stdin).")],
    to: Annotated[str, typer.Option("--to", help="ct|mri-t1|mri-t2|mri-pd")],
    source: Annotated[Optional[str], typer.Option("--from", "--from-modality", help="Source modality or modalities (mri-t2,mri-pd).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder: OUT/<patient>/<modality>.nii.gz")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output file (one input only).")] = None,
    output_format: Annotated[str, typer.Option("--format", help="nifti|dicom")] = "nifti",
    model: ModelPath = None,
    samples: Samples = 1,
    seed: Seed = 0,
    steps: SamplerSteps = None,
    guidance: Guidance = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help="Composition weights for several sources.")] = None,
    skip_existing: SkipExisting = False,
    overwrite: Overwrite = False,
    shard: Annotated[Optional[str], typer.Option("--shard", help="k/N: process every N-th input starting at k.")] = None,
    device: Device = "auto",
    batch_size: BatchSize = None,
    json_out: JsonOut = False,
) -> None:
    """Translate volumes to another modality, keeping their geometry exactly."""
    console.not_available("translate", 7)
