"""`medm2g translate`: MRI ↔ CT and MRI contrast synthesis over files, folders and stdin."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from medm2g_cli import console, parsing
from medm2g_cli.options import BatchSize, Device, Guidance, JsonOut, ModelPath, Overwrite, Samples, SamplerSteps, Seed, SkipExisting


@console.handle_errors
def translate(
    inputs: Annotated[List[str], typer.Argument(help="Files, patient folders, cohort folders, DICOM series folders, globs, or - (paths on stdin).")],
    to: Annotated[str, typer.Option("--to", help="ct|mri-t1|mri-t2|mri-pd|mri-flair|mri-t1c; two (ct,mri-t2) are generated together by the bundle's joint stage.")],
    source: Annotated[Optional[str], typer.Option("--from", "--from-modality", help="Source modality or modalities (mri-t2,mri-pd); default: from the file name or DICOM header.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder: OUT/<patient>/<modality>.nii.gz (default ./medm2g-output).")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output file (one input only).")] = None,
    output_format: Annotated[str, typer.Option("--format", help="nifti|dicom (a DICOM series folder per output).")] = "nifti",
    model: ModelPath = None,
    samples: Samples = 1,
    seed: Seed = 0,
    steps: SamplerSteps = None,
    guidance: Guidance = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help="Composition weights, one per --from source (0.7,0.3).")] = None,
    skip_existing: SkipExisting = False,
    overwrite: Overwrite = False,
    shard: Annotated[Optional[str], typer.Option("--shard", help="k/N: this job's share of the sorted inputs (k = 0..N-1).")] = None,
    device: Device = "auto",
    batch_size: BatchSize = None,
    mirror: Annotated[bool, typer.Option("--mirror", help="Test-time mirroring: also translate each slice mirrored left–right and average the two (for left–right symmetric anatomy such as the head; twice the time).")] = False,
    max_memory: Annotated[Optional[str], typer.Option("--max-memory", help="Refuse volumes needing more than this (4G, 512M); default half the RAM.")] = None,
    json_out: JsonOut = False,
) -> None:
    """Translate volumes to another modality, keeping their geometry exactly.

    Exit codes: 0 all done, 1 some inputs failed (the rest finished), 2 usage or input error.
    """
    from medm2g_core.jobs.translate import translate_batch

    target = parsing.parse_targets(to)
    sources = parsing.parse_sources(source)
    console.run_batch(
        "translate",
        translate_batch,
        inputs,
        json_out=json_out,
        to=target,
        sources=sources,
        out=out,
        output=output,
        output_format=output_format,
        model=model,
        samples=samples,
        seed=seed,
        steps=steps,
        guidance=guidance,
        weights=parsing.parse_weights(weights, len(sources) if sources else 1),
        skip_existing=skip_existing,
        overwrite=overwrite,
        shard=parsing.parse_shard(shard),
        device=device,
        batch_size=batch_size,
        mirror=mirror,
        max_memory=parsing.parse_memory(max_memory),
    )
