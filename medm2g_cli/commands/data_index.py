"""`medm2g data index`: what each patient folder holds and the problems found."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medm2g_cli import console
from medm2g_cli.options import AllowIrregular, JsonOut


@console.handle_errors
def index(
    directory: Annotated[Path, typer.Argument(help="Cohort folder of patient folders (nested folders allowed).")],
    write: Annotated[bool, typer.Option("--write", help="Write DIR/manifest.jsonl.")] = False,
    allow_irregular: AllowIrregular = False,
    json_out: JsonOut = False,
) -> None:
    """List what each patient folder holds and the problems found.

    Paths are shown as they are inside the cohort (imported symlinks are not followed). Extra X-ray
    views, masks and other contrasts the importers place are listed as extras. With
    --allow-irregular, DICOM series with missing slices, uneven spacing or gantry tilt are read and
    listed as warnings instead of problems.

    Exit 0 when the index completed (problems are listed, not fatal); 2 when DIR is missing or
    holds no patient folder.
    """
    from medm2g_core.data.manifest import scan_cohort, write_manifest

    with console.progress("index") as progress:
        records = scan_cohort(directory, progress=progress, allow_irregular=allow_irregular)
    if json_out:
        for record in records:
            console.emit_json(record.to_json(root=directory))
    else:
        rows = []
        for record in records:
            modalities = ", ".join(m.value for m in record.files)
            if record.extras:
                modalities += f" (+ {', '.join(record.extras)})"
            shapes = "; ".join(f"{m.value} {'×'.join(str(s) for s in shape)}" for m, shape in record.shapes.items())
            spacing = "; ".join(f"{m.value} {'×'.join(f'{v:.3g}' for v in values)}" for m, values in record.spacings.items())
            problems = "\n".join(record.problems + [f"warning: {w}" for w in record.warnings]) or "—"
            rows.append([record.patient_id, modalities or "—", shapes, spacing, problems])
        console.table(f"{len(records)} patient folder(s) in {directory}", ["patient", "modalities", "shape", "spacing (mm)", "problems"], rows)
    with_problems = sum(1 for record in records if record.problems)
    with_warnings = sum(1 for record in records if record.warnings)
    console.info(f"{len(records)} patient folder(s), {with_problems} with problems" + (f", {with_warnings} with warnings" if with_warnings else ""))
    if write:
        path = write_manifest(directory, records)
        console.info(f"wrote {path}")
