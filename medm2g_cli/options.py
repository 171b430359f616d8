"""Shared ``Annotated`` option aliases so every command spells its options the same way.

Also how commands are registered (``register``): every command accepts the global ``--quiet`` /
``--verbose`` after its name too, and boolean flags show no value placeholder in ``--help``.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from typer.core import TyperCommand, TyperGroup

JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout (and nothing else there).")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (same seed → identical output).")]
Device = Annotated[str, typer.Option("--device", help="auto|cpu|cuda[:N]|mps; a requested device that is missing is an error.")]
ModelPath = Annotated[
    Optional[Path],
    typer.Option("--model", envvar="MEDM2G_MODEL", help="Model bundle (default: the bundle `medm2g demo` made last)."),
]
OutDir = Annotated[Optional[Path], typer.Option("--out", help="Output folder.")]
DataDir = Annotated[Path, typer.Option("--data", help="Cohort folder of patient folders (DESIGN.md §3).")]
Recipe = Annotated[Optional[Path], typer.Option("--recipe", help="YAML recipe (default: recipes/demo-cpu.yaml).")]
Steps = Annotated[Optional[int], typer.Option("--steps", help="Override the recipe's number of training steps.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last saved state.")]
Samples = Annotated[int, typer.Option("--samples", min=1, help="Samples per input; translation writes their mean and a std map.")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Slices/images per forward pass.")]
SkipExisting = Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose output exists and matches this run.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
SamplerSteps = Annotated[Optional[int], typer.Option("--sampler-steps", help="Denoising steps (default: the flow's config).")]
Guidance = Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale.")]
MixedPrecision = Annotated[str, typer.Option("--mixed-precision", help="no|fp16|bf16")]
AllowIrregular = Annotated[
    bool,
    typer.Option(
        "--allow-irregular",
        help="Read DICOM series with missing slices, uneven spacing or gantry tilt anyway (a warning, not an error).",
    ),
]

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="More detail; tracebacks on errors.")]
GLOBAL_PANEL = "Global options"


# -- help: flags are flags -------------------------------------------------------------------------
class _PlainFlags:
    """Boolean flags (``--json``, ``--help`` …) get no value placeholder in ``--help``.

    Typer's rich help prints an option's type in the second column, also for flags (``--json
    <bool>``), as if they took a value; an empty metavar is what that column shows instead.
    """

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and not getattr(param, "count", False) and param.metavar is None:
                param.metavar = ""
        return params


class Command(_PlainFlags, TyperCommand):
    """``TyperCommand`` whose flags read as flags in ``--help``."""


class Group(_PlainFlags, TyperGroup):
    """``TyperGroup`` whose flags read as flags in ``--help``."""


# -- global options after the command name ----------------------------------------------------------
def set_output_level(*, quiet: bool, verbose: bool) -> None:
    """Turn ``--quiet`` / ``--verbose`` on (given before or after the command name: either counts)."""
    from medm2g_cli import console

    console.state.quiet = console.state.quiet or quiet
    console.state.verbose = console.state.verbose or verbose


def with_global_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` with ``--quiet``/``--verbose`` of its own, merged with the root callback's.

    Typer reads a command's options from its signature, so the wrapper's signature is the command's
    plus the two options (shown under "Global options"); the command itself never sees them.
    """
    signature = inspect.signature(command, eval_str=True)
    taken = set(signature.parameters)
    names = {"quiet": "_global_quiet", "verbose": "_global_verbose"}
    if taken & set(names.values()):
        raise TypeError(f"{command.__name__} already has a parameter named {sorted(taken & set(names.values()))}")
    extra = [
        inspect.Parameter(names["quiet"], inspect.Parameter.KEYWORD_ONLY, default=False,
                          annotation=Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.", rich_help_panel=GLOBAL_PANEL)]),
        inspect.Parameter(names["verbose"], inspect.Parameter.KEYWORD_ONLY, default=False,
                          annotation=Annotated[bool, typer.Option("--verbose", "-v", help="More detail; tracebacks on errors.", rich_help_panel=GLOBAL_PANEL)]),
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, _global_quiet: bool = False, _global_verbose: bool = False, **kwargs: Any) -> Any:
        set_output_level(quiet=_global_quiet, verbose=_global_verbose)
        return command(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])  # type: ignore[attr-defined]
    return wrapper


def register(app: typer.Typer, name: str, command: Callable[..., Any]) -> None:
    """``app.command(name)(command)`` with the global options and plain flags (``Command``)."""
    app.command(name, cls=Command)(with_global_options(command))
