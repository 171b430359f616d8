"""The ``medm2g`` Typer app: global options and command registration (no logic, no torch)."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from medm2g_cli import console
from medm2g_cli.commands import align, data, demo, evaluate, generate, info, train_flow, translate
from medm2g_cli.options import Group, Quiet, Verbose, register, set_output_level

app = typer.Typer(
    name="medm2g",
    cls=Group,
    help="MedM2G: align and generate across chest X-ray, CT, MRI and radiology reports.\n\n"
    "Exit codes: 0 ok, 1 some inputs failed, 2 usage or input error, 130 interrupted.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        from medm2g_core._version import __version__

        typer.echo(f"medm2g {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Global options apply to every command (and may also follow the command's name)."""
    console.state.secondary_rank = os.environ.get("RANK", "0").strip() not in ("", "0")
    console.state.quiet = console.state.secondary_rank
    console.state.verbose = False
    set_output_level(quiet=quiet, verbose=verbose)


register(app, "demo", demo.demo)
app.add_typer(data.app, name="data")
register(app, "align", align.align)
register(app, "train-flow", train_flow.train_flow)
register(app, "generate", generate.generate)
register(app, "translate", translate.translate)
register(app, "evaluate", evaluate.evaluate)
register(app, "info", info.info)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
