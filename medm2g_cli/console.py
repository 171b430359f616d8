"""Rendering for the CLI: a stderr console, one-line errors, progress bars, JSON on stdout.

stdout carries only ``--json`` output; banners, progress and logs go to stderr. Progress bars are
drawn only when stderr is a terminal; otherwise a plain line is printed every few seconds so that
cluster logs are not flooded.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import typer
from rich.console import Console
from rich.table import Table

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass
class State:
    quiet: bool = False
    verbose: bool = False
    # a rank > 0 of a multi-process launch (torchrun / accelerate launch set RANK): only rank 0 reports
    # progress, tables, warnings and --json; errors are still printed by every rank.
    secondary_rank: bool = False


state = State()
err = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def info(message: str) -> None:
    if not state.quiet:
        err.print(message)


def warn(message: str) -> None:
    if state.secondary_rank:
        return
    err.print(f"[yellow]warning:[/yellow] {message}")


def error_line(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)


def emit_json(data: Any) -> None:
    """One JSON document per line on stdout (the only thing ever written there)."""
    from medm2g_core.serialization import to_jsonable

    if state.secondary_rank:
        return
    try:
        sys.stdout.write(json.dumps(to_jsonable(data)) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # `medm2g ... --json | head -1`: the reader left; stop writing quietly (as coreutils do)
        # and keep Python from complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def not_available(command: str, issue: int) -> None:
    """For commands registered before their implementation lands: say so and exit 2."""
    error_line(f"`medm2g {command}` is not available in this version yet (tracked in issue #{issue}).")
    raise typer.Exit(EXIT_USAGE)


def handle_errors(func: F) -> F:
    """Map the project's errors to one line + exit 2, Ctrl-C to exit 130; tracebacks only with --verbose."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from medm2g_core.errors import MedM2GError

        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            error_line("interrupted; finished outputs and saved state are kept (rerun with --resume / --skip-existing)")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (MedM2GError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
            if state.verbose:
                err.print(traceback.format_exc(), markup=False)
            error_line(_one_line(exc))
            raise typer.Exit(EXIT_USAGE) from None
        except Exception as exc:  # an internal error: still one line unless --verbose
            if state.verbose:
                err.print(traceback.format_exc(), markup=False)
            error_line(f"internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with --verbose for the traceback)")
            raise typer.Exit(EXIT_SOME_FAILED) from None

    return wrapper  # type: ignore[return-value]


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)) and exc.filename:
        return f"{exc.filename}: {exc.strerror or type(exc).__name__}"
    return " ".join(str(exc).split())


@contextlib.contextmanager
def progress(description: str, *, total: float | None = None) -> Iterator[Callable[..., None]]:
    """Yield a ``medm2g_core.types.ProgressFn`` that renders events as a rich bar (or plain lines)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if state.quiet:
        yield lambda event: None
        return
    if not err.is_terminal:
        last = [0.0]

        def plain(event: Any) -> None:
            now = time.monotonic()
            done = event.total is not None and event.completed >= event.total
            if now - last[0] < 5.0 and not done:
                return
            last[0] = now
            total_text = f"/{event.total:g}" if event.total else ""
            metrics = " ".join(f"{k}={v:.4g}" for k, v in event.metrics.items())
            err.print(f"{event.task}: {event.completed:g}{total_text} {metrics} {event.message or ''}".rstrip())

        yield plain
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[metrics]}"),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        tasks: dict[str, Any] = {}

        def render(event: Any) -> None:
            name = event.task or description
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=event.total, metrics="")
            metrics = " ".join(f"{k}={v:.4g}" for k, v in event.metrics.items())
            bar.update(tasks[name], completed=event.completed, total=event.total, metrics=metrics or (event.message or ""))

        yield render


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Print a rich table on stderr (stdout is reserved for --json)."""
    if state.quiet:
        return
    result = Table(title=title, title_justify="left")
    for column in columns:
        result.add_column(column)
    for row in rows:
        result.add_row(*("" if v is None else str(v) for v in row))
    # The width the environment asks for now (COLUMNS), not the one the console saw when it was imported: a
    # long-lived process (a test session, a notebook) runs commands under different terminal widths.
    columns = os.environ.get("COLUMNS", "")
    err.print(result, width=int(columns) if columns.isdigit() else None)


def batch_item_reporter(json_out: bool) -> Callable[[Any], None]:
    """Per-input callback: a failure is one stderr line naming the file and cause; --json prints one
    object per input on stdout (the only thing written there)."""

    def report(item: Any) -> None:  # medm2g_core.jobs.runs.ItemResult
        if item.status == "failed":
            error_line(item.message or f"{item.input}: failed")
        elif state.verbose:
            info(f"{item.status}: {item.input} → {item.output}")
        if json_out:
            emit_json(item.to_json())

    return report


def batch_summary(title: str, result: Any) -> None:  # medm2g_core.jobs.runs.BatchResult
    """The summary table (stderr): counts and time; the run record's path."""
    counts = result.counts
    table(
        title,
        ["ok", "failed", "skipped", "time", "device"],
        [[counts["ok"], counts["failed"], counts["skipped"], f"{result.seconds:.1f} s", result.device]],
    )
    if result.run_json is not None:
        info(f"run record: {result.run_json}")


def run_batch(command: str, work: Callable[..., Any], inputs: Any, *, json_out: bool, **options: Any) -> None:
    """Run a ``medm2g_core`` batch function (``translate_batch``, ``generate_batch``) with a progress bar,
    per-input reporting and warnings, then print the summary; exit 1 when some inputs failed.

    ``work(inputs, **options, progress=..., on_result=..., on_warning=...)`` returns a ``BatchResult``.
    """
    with progress(command) as report_progress:
        result = work(
            inputs,
            **options,
            progress=report_progress,
            on_result=batch_item_reporter(json_out),
            on_warning=warn,
        )
    batch_summary(f"medm2g {command}", result)
    if result.failed:
        raise typer.Exit(EXIT_SOME_FAILED)
