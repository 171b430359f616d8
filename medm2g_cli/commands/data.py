"""`medm2g data ...`: cohort tools (synth, index, import), one module per command."""

from __future__ import annotations

import typer

from medm2g_cli.commands import data_import, data_index, data_synth
from medm2g_cli.options import Group, register

app = typer.Typer(help="Cohort tools: synthesize phantoms, index patient folders, import public datasets.", no_args_is_help=True, cls=Group)
register(app, "synth", data_synth.synth)
register(app, "index", data_index.index)
register(app, "import", data_import.import_)
