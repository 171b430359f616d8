"""`medm2g data synth`: write phantom patient cohorts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from medm2g_cli import console
from medm2g_cli.options import JsonOut


@console.handle_errors
def synth(
    out: Annotated[Path, typer.Option("--out", help="Cohort folder to write.")],
    patients: Annotated[int, typer.Option("--patients", min=1, help="Number of patients.")] = 8,
    anatomy: Annotated[str, typer.Option("--anatomy", help="chest|head")] = "chest",
    seed: Annotated[int, typer.Option("--seed", min=0, help="Random seed (same seed → identical files).")] = 0,
    size: Annotated[int, typer.Option("--size", help="64|128|256 voxels per side.")] = 64,
    preview: Annotated[bool, typer.Option("--preview", help="Also write preview.png, a montage of a few patients.")] = False,
    workers: Annotated[Optional[int], typer.Option("--workers", min=0, help="Processes (0 = in-process).")] = None,
    reports_only: Annotated[bool, typer.Option("--reports-only", help="Only report.txt and labels.json per patient, no image: "
                                               "a report corpus for `train-flow --stage text-vae --data DIR`.")] = False,
    json_out: JsonOut = False,
) -> None:
    """Write synthetic phantom patients (CT, MRI T1/T2/PD, X-ray DRR, report, labels), or reports alone."""
    from medm2g_core.errors import ConfigError

    if anatomy not in ("chest", "head"):
        raise ConfigError(f"--anatomy {anatomy!r} is not supported; use chest or head")
    if size not in (64, 128, 256):
        raise ConfigError(f"--size {size} is not supported; use 64, 128 or 256")
    if preview and reports_only:
        raise ConfigError("--preview shows images and --reports-only writes none; drop one of them")
    from medm2g_core.data.synth import synthesize_cohort, write_preview
    from medm2g_core.serialization import read_json

    start = time.perf_counter()
    with console.progress("synth", total=patients) as report:
        folders = synthesize_cohort(out, patients=patients, anatomy=anatomy, seed=seed, size=size, workers=workers,
                                    reports_only=reports_only, progress=report)
    seconds = time.perf_counter() - start
    preview_path = write_preview(out / "preview.png", folders, anatomy=anatomy) if preview else None
    counts: dict[str, int] = {}
    for folder in folders:
        for name, value in read_json(folder / "labels.json").items():
            counts[name] = counts.get(name, 0) + int(value)
    summary = {
        "out": str(out), "patients": len(folders), "anatomy": anatomy, "seed": seed, "size": size,
        "seconds": round(seconds, 2), "findings": counts, "preview": str(preview_path) if preview_path else None,
        "reports_only": reports_only, "synthetic": True,
    }
    if json_out:
        console.emit_json(summary)
        return
    console.table(f"{len(folders)} synthetic {anatomy} patients in {out} ({seconds:.1f} s)",
                  ["finding", "patients"], [[name, count] for name, count in counts.items()])
    if preview_path:
        console.info(f"preview: {preview_path}")
