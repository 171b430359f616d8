"""Shared ``Annotated`` option aliases so every command spells its options the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout (and nothing else there).")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (same seed → identical output).")]
Device = Annotated[str, typer.Option("--device", help="auto|cpu|cuda[:N]|mps; a requested device that is missing is an error.")]
ModelPath = Annotated[
    Optional[Path],
    typer.Option("--model", envvar="MEDM2G_MODEL", help="Model bundle (default: the bundle `medm2g demo` made last)."),
]
OutDir = Annotated[Optional[Path], typer.Option("--out", help="Output folder.")]
DataDir = Annotated[Path, typer.Option("--data", help="Cohort folder of patient folders (DESIGN.md §3).")]
Recipe = Annotated[Optional[Path], typer.Option("--recipe", help="YAML recipe (default: recipes/demo-cpu.yaml).")]
Steps = Annotated[Optional[int], typer.Option("--steps", help="Override the recipe's number of training steps.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last saved state.")]
Samples = Annotated[int, typer.Option("--samples", min=1, help="Samples per input; translation writes their mean and a std map.")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Slices/images per forward pass.")]
SkipExisting = Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose output exists and matches this run.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
SamplerSteps = Annotated[Optional[int], typer.Option("--sampler-steps", help="Denoising steps (default: the flow's config).")]
Guidance = Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale.")]
MixedPrecision = Annotated[str, typer.Option("--mixed-precision", help="no|fp16|bf16")]
AllowIrregular = Annotated[
    bool,
    typer.Option(
        "--allow-irregular",
        help="Read DICOM series with missing slices, uneven spacing or gantry tilt anyway (a warning, not an error).",
    ),
]
