"""`medm2g demo`: the whole pipeline on phantom cohorts, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from medm2g_cli import console
from medm2g_cli.options import Device, JsonOut, Seed

DEFAULT_OUT = Path("medm2g-demo")
DEFAULT_REAL_OUT = Path("medm2g-real")


@console.handle_errors
def demo(
    out: Annotated[Optional[Path], typer.Option("--out", help="Demo folder (default: ./medm2g-demo, with --real ./medm2g-real). Rerunning reuses finished stages.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Smaller cohort at 32³ and few steps (≤ 3 min); the numbers mean little.")] = False,
    real: Annotated[bool, typer.Option("--real", help="Train and evaluate on the real public sets under --data-root (BraTS, AANLIB, IU X-ray) instead of phantoms.")] = False,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="With --real: the shared data folder (default: ../shared/data beside the checkout). Missing sets are skipped.")] = None,
    seed: Seed = 0,
    device: Device = "auto",
    json_out: JsonOut = False,
) -> None:
    """Synthesize phantom cohorts, align, train the flows, translate, generate, evaluate against baselines.

    Writes OUT/report.html and registers OUT/demo.m2g as the default model, so that afterwards
    `medm2g translate OUT/cohort/head/P0001/mri-t1.nii.gz --to ct` works with no other flag.
    Everything is synthetic phantoms: not for diagnosis.

    With --real: the same on the small real sets under --data-root (T1→T2 and T2+FLAIR→T1 on BraTS, MRI→CT
    on AANLIB, the IU report autoencoder), into OUT/real.m2g, OUT/summary.json, OUT/report.html, OUT/montage.png.
    """
    if data_root is not None and not real:
        from medm2g_core.errors import ConfigError

        raise ConfigError("--data-root applies to --real only; add --real (medm2g demo --real --data-root DIR)")
    if real:
        _demo_real(out if out is not None else DEFAULT_REAL_OUT, data_root=data_root, quick=quick, seed=seed, device=device,
                   json_out=json_out)
        return
    from medm2g_core.workflows.demo import run_demo

    out_dir = out if out is not None else DEFAULT_OUT
    console.info(f"medm2g demo{' --quick' if quick else ''}: synthetic phantom cohorts → {out_dir} (rerunning reuses finished stages)")
    with console.progress("demo") as progress:
        result = run_demo(out_dir, quick=quick, seed=seed, device=device, progress=progress)
    summary = summary_json(result)
    if json_out:
        console.emit_json(summary)
    _print_summary(result)


def summary_json(result: Any) -> dict[str, Any]:
    """What ``--json`` prints: metrics, files, stage times (this run and when each last ran)."""
    return {
        "synthetic": True, "quick": result.quick, "out": str(result.out_dir), "bundle": str(result.bundle),
        "report_html": str(result.report_html), "metrics": result.metrics, "budgets": result.budgets,
        "stages": [{"name": s.name, "seconds": s.seconds, "reused": s.reused} for s in result.stages],
        "stage_seconds": result.stage_seconds, "files": {k: str(v) for k, v in result.files.items()},
        "seconds": round(result.seconds, 1),
    }


def _number(value: Any) -> str:
    return "—" if value is None else (f"{value:.3g}" if isinstance(value, float) else str(value))


def _print_summary(result: Any) -> None:
    from medm2g_core.workflows.demo import budget_text

    metrics = result.metrics
    console.table(
        "Stages (s; 'reused' = finished in an earlier run)",
        ["stage", "this run", "when it ran"],
        [[s.name, "reused" if s.reused else f"{s.seconds:.0f}", f"{result.stage_seconds.get(s.name, 0.0):.0f}"] for s in result.stages],
    )
    rows = []
    for direction, values in metrics.get("retrieval", {}).items():
        rows.append([f"retrieval {direction}", "model", f"R@1 {_number(values.get('R@1'))} (chance {_number(values.get('chance_R@1'))})", "align stage"])
    titles = {"mri-ct": "MRI→CT", "t1-t2": "T1→T2", "xray-report": "X-ray→report", "report-xray": "report→X-ray"}
    for pair, title in titles.items():
        for system, values in metrics.get(pair, {}).items():
            budget = budget_text(result.budgets.get(pair, {}).get(system))
            rows.append([title, system, ", ".join(f"{k} {_number(v)}" for k, v in values.items()) or "—", budget])
    console.table("Key metrics on held-out SYNTHETIC phantoms (not clinical performance)", ["task", "system", "metrics", "budget"], rows)
    console.info(f"report:  {result.report_html}")
    console.info(f"bundle:  {result.bundle} (now the default model)")
    files = result.files
    for name in ("predictions", "evaluation", "preview_chest", "preview_head"):
        if name in files:
            console.info(f"{name.replace('_', ' ')}: {files[name]}")
    patient = Path(result.out_dir) / "cohort" / "head" / "P0001" / "mri-t1.nii.gz"
    console.info(f"next:    medm2g translate {patient} --to ct --out {Path(result.out_dir) / 'my-ct'}")


def _demo_real(out_dir: Path, *, data_root: Optional[Path], quick: bool, seed: int, device: str, json_out: bool) -> None:
    from medm2g_core.workflows.demo_real import find_sets, run_real_demo

    root, found, skipped = find_sets(data_root)
    for line in skipped.values():
        console.info(line)
    console.info(f"medm2g demo --real{' --quick' if quick else ''}: {', '.join(s.key for s in found) or 'no set'} from {root} → {out_dir}")
    with console.progress("demo --real") as progress:
        result = run_real_demo(out_dir, data_root=root, quick=quick, seed=seed, device=device, progress=progress)
    if json_out:
        console.emit_json({"real": True, "quick": result.quick, "out": str(result.out_dir),
                           "bundle": str(result.bundle) if result.bundle else None,
                           "cxr_bundle": str(result.cxr_bundle) if result.cxr_bundle else None,
                           "report_html": str(result.report_html), "summary_json": str(result.summary_json),
                           "montage": str(result.montage), "skipped": result.skipped, "rows": result.rows,
                           "stages": [{"name": s.name, "seconds": s.seconds, "reused": s.reused} for s in result.stages],
                           "stage_seconds": result.stage_seconds, "seconds": round(result.seconds, 1)})
    console.table("Stages (s; 'reused' = finished in an earlier run)", ["stage", "this run", "when it ran"],
                  [[s.name, "reused" if s.reused else f"{s.seconds:.0f}", f"{result.stage_seconds.get(s.name, 0.0):.0f}"] for s in result.stages])
    from medm2g_core.workflows.demo_real import budget_text

    rows = [[row["title"], row["system"], ", ".join(f"{k} {_number(v)}" for k, v in row["metrics"].items()) or "—",
             budget_text(row["budget"]), str(row.get("held_out", ""))] for row in result.rows]
    console.table("Held-out REAL data (tiny public samples; not for diagnosis)", ["task", "system", "metrics", "budget", "held out"], rows)
    console.info(f"report:  {result.report_html}")
    console.info(f"montage: {result.montage}")
    if result.bundle is not None:
        console.info(f"bundle:  {result.bundle} (brain MRI/CT and IU reports, trained on real data; now the default model)")
    if result.cxr_bundle is not None:
        console.info(f"bundle:  {result.cxr_bundle} (paediatric X-rays and their label text, trained on real data)")
