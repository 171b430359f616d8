"""`medm2g align`: central alignment through the text hub with visual-invariant preservation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medm2g_cli import console
from medm2g_cli.options import DataDir, Device, JsonOut, MixedPrecision, Recipe, Resume, Seed, Steps


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
    device: Device = "auto",
    json_out: JsonOut = False,
) -> None:
    """Train the aligned encoders (text hub InfoNCE + visual-invariant loss)."""
    from medm2g_core.workflows.align import align as run_align

    from medm2g_core.errors import ConfigError

    if mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError(f"--mixed-precision must be no, fp16 or bf16, not {mixed_precision!r}")
    if text_encoder is not None and not text_encoder.is_dir():
        raise ConfigError(f"--text-encoder {text_encoder}: not a folder; pass a local Hugging Face encoder folder")
    with console.progress("align") as progress:
        result = run_align(
            data, out, recipe=recipe, steps=steps, text_encoder=text_encoder, vi_weight=vi_weight, resume=resume,
            seed=seed, mixed_precision=None if mixed_precision == "no" else mixed_precision, device=device, progress=progress,
        )
    if json_out:
        console.emit_json(
            {
                "bundle": str(result.bundle), "steps": result.steps, "resumed_from": result.resumed_from,
                "patients": result.patients, "modalities": result.modalities, "synthetic": result.synthetic,
                "last_losses": result.last_losses, "val_losses": result.val_losses, "retrieval": result.retrieval,
                "seconds": round(result.seconds, 2), "num_processes": result.num_processes, "device": result.device,
            }
        )
        return
    for split, directions in result.retrieval.items():
        console.table(
            f"{_SPLIT_TITLES.get(split, split)} retrieval after {result.steps} steps "
            f"({result.patients.get('train', 0)} training patients) — value (chance); "
            "'label': a hit is any patient with the query's labels.json",
            ["direction", "n", "R@1", "R@5", "median rank", "label R@1", "label R@5", "finding AUC"],
            [_retrieval_row(direction, metrics) for direction, metrics in directions.items()],
        )
    if result.synthetic:
        console.warn("trained on synthetic phantoms: the encoders mean nothing clinically")
    console.info(f"bundle: {result.bundle}")


def _with_chance(row: dict, key: str, chance: str) -> str:
    return f"{row[key]:.2f} ({row[chance]:.2f})" if key in row and chance in row else "-"


_SPLIT_TITLES = {"val": "validation", "heldout": "held-out (validation + test)"}


def _retrieval_row(direction: str, row: dict) -> list[str]:
    return [
        direction, str(int(row["n"])),
        _with_chance(row, "R@1", "chance_R@1"), _with_chance(row, "R@5", "chance_R@5"),
        f"{row['median_rank']:g} ({row['chance_median_rank']:g})" if "chance_median_rank" in row else f"{row['median_rank']:g}",
        _with_chance(row, "label_R@1", "label_chance_R@1"), _with_chance(row, "label_R@5", "label_chance_R@5"),
        f"{row['finding_auc']:.2f} (0.50)" if "finding_auc" in row else "-",
    ]
