"""`medm2g data import`: public datasets → canonical patient folders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from medm2g_cli import console
from medm2g_cli.options import JsonOut

if TYPE_CHECKING:  # the core is imported inside the command so that --help stays instant
    from medm2g_core.data.importers import ImportResult


@console.handle_errors
def import_(
    dataset: Annotated[str, typer.Argument(help="iu-xray|mimic-cxr|synthrad|ixi|brats|aanlib|kermany")],
    source: Annotated[Path, typer.Argument(help="The dataset as downloaded.")],
    out: Annotated[Path, typer.Option("--out", help="Cohort folder to write.")],
    copy: Annotated[bool, typer.Option("--copy", help="Copy images and volumes instead of symlinking them.")] = False,
    mr_as: Annotated[
        Optional[str],
        typer.Option("--mr-as", help="synthrad: import mr.nii.gz as t1 or t2 (default: t1 for brain, t2 for pelvis)."),
    ] = None,
    register: Annotated[
        bool, typer.Option("--register", help="ixi: resample T2/PD onto the T1 grid through the affines (SimpleITK); written, not linked."),
    ] = False,
    limit: Annotated[
        Optional[int], typer.Option("--limit", help="aanlib: slices per case; kermany: children per class (a quick subset).", min=1),
    ] = None,
    seed: Annotated[
        Optional[int], typer.Option("--seed", help="Seed of the split by subject/case/child written to splits.json (ixi, brats, aanlib, kermany; default 0)."),
    ] = None,
    json_out: JsonOut = False,
) -> None:
    """Convert a public dataset into canonical patient folders (symlinks where possible).

    Re-running is safe: files that already hold the same content are left alone. Exit code 1 when some studies could not be imported (listed), 2 when SRC is missing or not the named dataset.
    """
    from medm2g_core.data.importers import import_dataset
    from medm2g_core.errors import ConfigError
    from medm2g_core.modalities import Modality, parse_modality

    mr_modality = None
    if mr_as is not None:
        try:
            mr_modality = parse_modality(mr_as)
        except ValueError as error:
            raise ConfigError(f"--mr-as: {error}") from None
        if mr_modality not in (Modality.MRI_T1, Modality.MRI_T2):
            raise ConfigError(f"--mr-as takes t1 or t2, not {mr_as!r}")
    with console.progress(f"import {dataset}") as progress:
        result = import_dataset(dataset, source, out=out, copy=copy, mr_modality=mr_modality, register=register,
                                limit=limit, seed=seed, progress=progress)
    if json_out:
        console.emit_json(result)
    _render(result)
    if result.problems:
        raise typer.Exit(console.EXIT_SOME_FAILED)


def _render(result: "ImportResult") -> None:
    rows = [
        ["patients", result.patients],
        ["reports only (no image on disk)", result.reports_only],
        *[[f"  {name}", count] for name, count in result.files.items()],
        ["files written", result.written],
        ["files unchanged", result.unchanged],
        ["placed by", result.mode],
        *[[f"split {name}", count] for name, count in result.splits.items()],
        ["problems", len(result.problems)],
    ]
    console.table(f"{result.dataset} → {result.out}", ["", "count"], rows)
    for note in result.notes:
        console.info(f"note: {note}")
    for problem in result.problems[:50]:
        console.warn(problem)
    if len(result.problems) > 50:
        console.warn(f"... and {len(result.problems) - 50} more problems (see --json)")
