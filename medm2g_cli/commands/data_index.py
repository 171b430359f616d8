"""`medm2g data index`: what each patient folder holds and the problems found."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medm2g_cli import console
from medm2g_cli.options import JsonOut


@console.handle_errors
def index(
    directory: Annotated[Path, typer.Argument(help="Cohort folder of patient folders (nested folders allowed).")],
    write: Annotated[bool, typer.Option("--write", help="Write DIR/manifest.jsonl.")] = False,
    json_out: JsonOut = False,
) -> None:
    """List what each patient folder holds and the problems found.

    Exit 0 when the index completed (problems are listed, not fatal); 2 when DIR is missing or
    holds no patient folder.
    """
    from medm2g_core.data.manifest import scan_cohort, write_manifest

    with console.progress("index") as progress:
        records = scan_cohort(directory, progress=progress)
    if json_out:
        for record in records:
            console.emit_json(record.to_json(root=directory))
    else:
        rows = []
        for record in records:
            modalities = ", ".join(m.value for m in record.files)
            shapes = "; ".join(f"{m.value} {'×'.join(str(s) for s in shape)}" for m, shape in record.shapes.items())
            spacing = "; ".join(f"{m.value} {'×'.join(f'{v:.3g}' for v in values)}" for m, values in record.spacings.items())
            problems = "\n".join(record.problems) or "—"
            rows.append([record.patient_id, modalities or "—", shapes, spacing, problems])
        console.table(f"{len(records)} patient folder(s) in {directory}", ["patient", "modalities", "shape", "spacing (mm)", "problems"], rows)
    with_problems = sum(1 for record in records if record.problems)
    console.info(f"{len(records)} patient folder(s), {with_problems} with problems")
    if write:
        path = write_manifest(directory, records)
        console.info(f"wrote {path}")
