"""`medm2g train-flow`: train one generation flow into a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medm2g_cli import console, parsing
from medm2g_cli.options import DataDir, Device, JsonOut, MixedPrecision, Recipe, Resume, Seed, Steps


@console.handle_errors
def train_flow(
    data: DataDir,
    bundle: Annotated[Path, typer.Option("--bundle", help="Bundle made by `medm2g align` (updated in place).")],
    pair: Annotated[Optional[str], typer.Option("--pair", help="xray-report|report-xray|mri-ct|ct-mri|t1-t2|t2-t1|t2+pd-t1|t2+flair-t1|t1-flair")] = None,
    recipe: Recipe = None,
    steps: Steps = None,
    stage: Annotated[str, typer.Option("--stage", help="flow|autoencoder|text-vae|joint (--pair A,B: two trained flows of one source)")] = "flow",
    modality: Annotated[Optional[str], typer.Option("--modality", help="For --stage autoencoder.")] = None,
    resume: Resume = False,
    seed: Seed = 0,
    mixed_precision: MixedPrecision = "no",
    device: Device = "auto",
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing")] = False,
    baselines: Annotated[bool, typer.Option(
        "--baselines/--no-baselines",
        help="Also fit the regression baseline (trained for the flow's steps with the same recipe). The cheap "
             "baselines (identity intensity map; retrieval and most-frequent report) are always fitted.")] = False,
    json_out: JsonOut = False,
) -> None:
    """Train a flow (and the latent spaces it needs) on a cohort, adding it to the bundle, then fit its baselines."""
    from medm2g_core.errors import ConfigError
    from medm2g_core.workflows.train_flow import train_flow as run_train_flow

    if stage == "flow" and not pair:
        raise ConfigError("--pair is required (xray-report, report-xray, mri-ct, ct-mri, t1-t2, t2-t1, t2+pd-t1, t2+flair-t1, t1-flair)")
    pairs = None
    if stage == "joint":
        if not pair:
            raise ConfigError("--stage joint needs --pair with two trained flows of one source, e.g. --pair mri-ct,t1-t2")
        pairs, pair = parsing.parse_pairs(pair), None
    with console.progress("train-flow") as progress:
        result = run_train_flow(
            data, bundle, pair=pair, pairs=pairs, recipe=recipe, steps=steps, stage=stage, modality=modality, resume=resume, seed=seed,
            mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing, baselines=baselines,
            device=device, progress=progress,
        )
    stages = [
        {"name": s.name, "steps": s.steps, "seconds": round(s.seconds, 1), "resumed_from": s.resumed_from,
         "val_start": s.val_start, "val_end": s.val_end}
        for s in result.stages
    ]
    if json_out:
        console.emit_json({"bundle": str(result.bundle), "pair": result.pair, "stages": stages, "metrics": result.metrics,
                           "forgetting": result.forgetting, "baselines": result.baselines,
                           "samples": str(result.samples_dir) if result.samples_dir else None,
                           "synthetic": result.synthetic, "seconds": round(result.seconds, 1)})
        return
    console.table(
        f"trained into {result.bundle}",
        ["component", "steps", "seconds", "val loss start → end"],
        [[s["name"], s["steps"], s["seconds"], _loss_change(s["val_start"], s["val_end"])] for s in stages],
    )
    if result.metrics:
        console.table(f"{result.pair} as loaded for inference", ["metric", "value"], [[k, f"{v:.4g}"] for k, v in result.metrics.items()])
    if result.forgetting:
        rows = []
        for flow, report in result.forgetting.items():
            for metric in sorted(set(report.get("before", {})) | set(report.get("after", {}))):
                before, after = report.get("before", {}).get(metric), report.get("after", {}).get(metric)
                rows.append([flow, metric, _number(before), _number(after)])
        console.table("earlier flows before → after (forgetting)", ["flow", "metric", "before", "after"], rows)
    if result.baselines:
        console.table(f"{result.pair} baselines (for `medm2g evaluate --baseline NAME`)", ["baseline", "fitted into", "steps"],
                      [[name, str(details.get("path", "")), details.get("steps", "–")] for name, details in result.baselines.items()])
    if result.samples_dir is not None:
        console.info(f"validation samples: {result.samples_dir}")
    if result.synthetic:
        console.warn("trained on synthetic phantoms: the flow means nothing clinically")


def _number(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "–"


def _loss_change(start: dict, end: dict) -> str:
    if "loss" not in end:
        return "–"
    return f"{_number(start.get('loss'))} → {_number(end['loss'])}"
