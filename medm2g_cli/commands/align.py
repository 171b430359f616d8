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
    vi_weight: Annotated[Optional[float], typer.Option("--vi-weight", min=0.0, help="Weight of the visual-invariant loss (0 = ablation).")] = None,
    resume: Resume = False,
    seed: Seed = 0,
    mixed_precision: MixedPrecision = "no",
    json_out: JsonOut = False,
) -> None:
    """Train the aligned encoders (text hub InfoNCE + visual-invariant loss)."""
    from medm2g_core.pipelines.align import align as run_align
    from medm2g_core.pipelines.align import summarize_retrieval

    from medm2g_core.errors import ConfigError

    if mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError(f"--mixed-precision must be no, fp16 or bf16, not {mixed_precision!r}")
    if text_encoder is not None and not text_encoder.is_dir():
        raise ConfigError(f"--text-encoder {text_encoder}: not a folder; pass a local Hugging Face encoder folder")
    with console.progress("align") as progress:
        result = run_align(
            data, out, recipe=recipe, steps=steps, text_encoder=text_encoder, vi_weight=vi_weight, resume=resume,
            seed=seed, mixed_precision=None if mixed_precision == "no" else mixed_precision, progress=progress,
        )
    rows = summarize_retrieval(result.retrieval)
    if json_out:
        console.emit_json(
            {
                "bundle": str(result.bundle), "steps": result.steps, "resumed_from": result.resumed_from,
                "patients": result.patients, "modalities": result.modalities, "synthetic": result.synthetic,
                "last_losses": result.last_losses, "val_losses": result.val_losses, "retrieval": result.retrieval,
                "seconds": round(result.seconds, 2), "num_processes": result.num_processes,
            }
        )
        return
    console.table(
        f"retrieval after {result.steps} steps ({result.patients.get('train', 0)} training patients)",
        ["split", "direction", "R@1", "R@5", "R@10", "median rank", "n", "chance R@1"],
        [[r["split"], r["direction"], f"{r['R@1']:.2f}", f"{r['R@5']:.2f}", f"{r['R@10']:.2f}", f"{r['median_rank']:g}", int(r["n"]), f"{r['chance_R@1']:.2f}"] for r in rows],
    )
    if result.synthetic:
        console.warn("trained on synthetic phantoms: the encoders mean nothing clinically")
    console.info(f"bundle: {result.bundle}")
