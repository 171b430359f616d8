"""The ``medm2g`` Typer app: global options and command registration (no logic, no torch)."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from medm2g_cli import console
from medm2g_cli.commands import align, data, demo, evaluate, generate, info, train_flow, translate

app = typer.Typer(
    name="medm2g",
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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More detail; tracebacks on errors.")] = False,
) -> None:
    """Global options apply to every command."""
    console.state.secondary_rank = os.environ.get("RANK", "0").strip() not in ("", "0")
    console.state.quiet = quiet or console.state.secondary_rank
    console.state.verbose = verbose


app.command("demo")(demo.demo)
app.add_typer(data.app, name="data")
app.command("align")(align.align)
app.command("train-flow")(train_flow.train_flow)
app.command("generate")(generate.generate)
app.command("translate")(translate.translate)
app.command("evaluate")(evaluate.evaluate)
app.command("info")(info.info)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
