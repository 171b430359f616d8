"""`medm2g info`: what a bundle holds, without loading weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medm2g_cli import console
from medm2g_cli.options import JsonOut


@console.handle_errors
def info(
    bundle: Annotated[Path, typer.Argument(help="Model bundle folder.")],
    json_out: JsonOut = False,
) -> None:
    """Show a bundle's modalities, flows, training data, metrics and forgetting report."""
    from medm2g_core.bundle import Bundle

    opened = Bundle.open(bundle)  # reads bundle.json only
    summary = opened.summary()
    if json_out:
        console.emit_json(summary)
        return
    data = summary.get("data") or {}
    console.table(
        f"bundle {opened.path}",
        ["field", "value"],
        [
            ["format", summary["format_version"]],
            ["created by", f"{summary.get('created_by')} ({summary.get('created')})"],
            ["modalities", ", ".join(summary["modalities"]) or "none"],
            ["flows (training order)", ", ".join(summary["flows"]) or "none"],
            ["patients", data.get("patients", "?")],
            ["synthetic data", data.get("synthetic", "?")],
            ["stages", ", ".join(k if v.get("steps") is None else f"{k} ({v['steps']} steps)"
                                 for k, v in summary["stages"].items()) or "none"],
        ],
    )
    rows = []
    for stage, metrics in summary["metrics"].items():
        for split, directions in (metrics.get("retrieval") or {}).items():
            for direction, values in directions.items():
                rows.append([stage, split, direction, f"{values['R@1']:.2f}", f"{values['R@5']:.2f}", f"{values['median_rank']:g}", f"{values['chance_R@1']:.2f}"])
        for name, value in metrics.items():
            if name != "retrieval" and not isinstance(value, dict):
                rows.append([stage, "", name, f"{value:.4g}" if isinstance(value, float) else str(value), "", "", ""])
    if rows:
        console.table("metrics", ["stage", "split", "metric", "R@1/value", "R@5", "median rank", "chance R@1"], rows)
    if summary["forgetting"]:
        console.table(
            "forgetting (each earlier flow re-measured after a new one was trained)",
            ["after training", "earlier flow", "metric", "before", "after", "change"],
            forgetting_rows(summary["forgetting"]),
        )
    if data.get("synthetic"):
        console.warn("this bundle was trained on synthetic phantoms; its outputs mean nothing clinically")


def forgetting_rows(forgetting: dict) -> list[list[str]]:
    """``{new flow: {earlier flow: {"before": {metric: v}, "after": {metric: v}}}}`` → table rows."""
    rows = []
    for new_flow, earlier in forgetting.items():
        for flow, measured in earlier.items():
            before, after = measured.get("before") or {}, measured.get("after") or {}
            for metric in sorted(set(before) | set(after)):
                b, a = before.get(metric), after.get(metric)
                change = f"{a - b:+.4g}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else ""
                rows.append([new_flow, flow, metric, "" if b is None else f"{b:.4g}", "" if a is None else f"{a:.4g}", change])
    return rows
