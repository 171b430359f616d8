"""`medm2g evaluate`: the paper's metrics against references, with baselines and an HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medm2g_cli import console
from medm2g_cli.options import JsonOut, ModelPath

TASKS = ("translation", "report", "xray")


BUNDLE_BASELINES = {"translation": ("identity", "regression"), "report": ("retrieval", "most-frequent"), "xray": ()}


def _parse_baselines(values: list[str], task: str) -> tuple[dict[str, Path], list[str]]:
    """``NAME=FOLDER`` → ready-made prediction folders; a bare ``NAME`` → computed from the bundle."""
    folders: dict[str, Path] = {}
    computed: list[str] = []
    for value in values:
        name, separator, folder = value.partition("=")
        if separator and (not name or not folder):
            console.error_line(f"--baseline {value!r}: give NAME=FOLDER (a folder of that baseline's predictions) or a bare NAME")
            raise typer.Exit(console.EXIT_USAGE)
        if name == "model" or name in folders or name in computed:
            console.error_line(f"--baseline {value!r}: the name {name!r} is taken; use a unique name other than 'model'")
            raise typer.Exit(console.EXIT_USAGE)
        if separator:
            folders[name] = Path(folder)
            continue
        valid = BUNDLE_BASELINES.get(task, ())
        if name not in valid:
            hint = f"the {task} task computes {', '.join(valid)} from --model" if valid else f"the {task} task has no bundle baselines"
            console.error_line(f"--baseline {name!r}: {hint}; or give NAME=FOLDER of ready-made predictions")
            raise typer.Exit(console.EXIT_USAGE)
        computed.append(name)
    return folders, computed


@console.handle_errors
def evaluate(
    task: Annotated[str, typer.Option("--task", help="translation|report|xray")],
    pred: Annotated[Path, typer.Option("--pred", help="Folder of predictions (patient folders).")],
    ref: Annotated[Path, typer.Option("--ref", help="Folder of references (patient folders).")],
    html: Annotated[Optional[Path], typer.Option("--html", help="Write a self-contained HTML report.")] = None,
    baseline: Annotated[
        Optional[list[str]],
        typer.Option("--baseline", help="identity|regression (translation), retrieval|most-frequent (report), computed from "
                     "--model's fitted baselines; or NAME=FOLDER of ready-made predictions. Repeatable."),
    ] = None,
    pair: Annotated[Optional[str], typer.Option("--pair", help="Flow whose fitted baselines to use (default: the only one).")] = None,
    baseline_out: Annotated[
        Optional[Path], typer.Option("--baseline-out", help="Keep the computed baseline predictions in this folder.")
    ] = None,
    features: Annotated[
        Optional[str], typer.Option("--features", help="xray task, required: the FID/KID feature extractor — 'aligned' (the "
                                    "--model bundle's aligned X-ray encoder), a saved classifier folder (the demo's "
                                    "OUT/xray-probe) or FILE.safetensors (DenseNet-121 weights).")
    ] = None,
    cleaning: Annotated[str, typer.Option("--cleaning", help="report task: R2Gen cleaning, iu_xray|mimic_cxr.")] = "iu_xray",
    strict: Annotated[
        bool, typer.Option("--strict", help="Count reference patients without a prediction as failures (exit 1).")
    ] = False,
    model: ModelPath = None,
    json_out: JsonOut = False,
) -> None:
    """Score predictions the way the field does (R2Gen, SynthRAD, SynDiff conventions)."""
    if task not in TASKS:
        console.error_line(f"--task {task!r}: use one of {', '.join(TASKS)}")
        raise typer.Exit(console.EXIT_USAGE)
    if cleaning not in ("iu_xray", "mimic_cxr"):
        console.error_line(f"--cleaning {cleaning!r}: use iu_xray or mimic_cxr")
        raise typer.Exit(console.EXIT_USAGE)
    if features is not None and task != "xray":
        console.warn("--features is used only by --task xray; ignored")
    baselines, computed = _parse_baselines(baseline or [], task)
    from medm2g_core.workflows.evaluate import evaluate as run_evaluation

    with console.progress("evaluate") as report_progress:
        result = run_evaluation(
            task,  # type: ignore[arg-type]
            pred_dir=pred,
            ref_dir=ref,
            html=html,
            baselines=baselines or None,
            features=None if task != "xray" or features is None else (features if features == "aligned" else Path(features)),
            cleaning=cleaning,
            model=model,
            bundle_baselines=computed,
            pair=pair,
            baseline_out=baseline_out,
            strict=strict,
            progress=report_progress,
        )
    from rich.markup import escape  # metric names hold "[convention]" brackets that rich would eat as markup

    columns, rows = result.table()
    console.table(
        f"medm2g evaluate --task {task}",
        [escape("metric [convention]"), *map(escape, columns)],
        [[escape(name), *map(escape, cells)] for name, cells in rows],
    )
    for note in result.notes:
        console.info(escape(f"note: {note}"))
    for name, system in result.systems.items():
        for note in system.notes:
            console.info(escape(f"note ({name}): {note}"))
    for problem in result.problems:
        console.warn(escape(problem))
    if result.html is not None:
        console.info(f"HTML report: {result.html}")
    if json_out:
        console.emit_json(result)
    if result.problems:
        raise typer.Exit(console.EXIT_SOME_FAILED)
