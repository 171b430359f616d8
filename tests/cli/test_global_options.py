"""Issue 19 §9: --quiet/--verbose before or after the command name; flags read as flags in --help."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medm2g_cli.main import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from test_manifest import build_cohort  # noqa: E402

runner = CliRunner()


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_before_or_after_the_command_shows_the_traceback(tmp_path, where):
    command = ["data", "index", str(tmp_path / "missing")]
    args = ["--verbose", *command] if where == "before" else [*command, "--verbose"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "No such option" not in result.output
    assert "Traceback" in result.stderr and "no such folder" in result.stderr
    plain = runner.invoke(app, command)  # the state does not leak into the next invocation
    assert plain.exit_code == 2 and "Traceback" not in plain.stderr


@pytest.mark.parametrize("args", [["-q", "data", "index"], ["data", "index", "--quiet"], ["data", "index", "-q"]])
def test_quiet_before_or_after_the_command_silences_the_table(tmp_path, args):
    root = build_cohort(tmp_path / "cohort")
    loud = runner.invoke(app, ["data", "index", str(root)])
    assert loud.exit_code == 0 and "chest/P0001" in loud.stderr
    result = runner.invoke(app, [*args, str(root)])
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and result.stdout == ""


@pytest.mark.parametrize("command", ["translate", "info", "align", "train-flow", "generate", "evaluate", "demo", "data synth", "data import"])
def test_every_command_accepts_the_global_options_after_its_name(command):
    # click parses every token before --help acts, so an unknown option would still exit 2 here
    result = runner.invoke(app, [*command.split(), "--verbose", "--quiet", "--help"])
    assert result.exit_code == 0, result.output
    assert "--verbose" in result.output and "--quiet" in result.output


def _option_rows(help_text: str, option: str) -> list[str]:
    return [line for line in help_text.splitlines() if re.search(rf"[│\s]{re.escape(option)}(\s|,|$)", line)]


@pytest.mark.parametrize("command", [["translate"], ["info"], ["data", "index"], []])
def test_flags_have_no_value_placeholder_in_help(command):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    flags = ["--help", "--quiet", "--verbose"] + (["--json"] if command else ["--version"])
    for flag in flags:
        rows = _option_rows(result.output, flag)
        assert rows, f"{flag} not in {' '.join(command)} --help"
        assert "<bool>" not in rows[0] and "BOOLEAN" not in rows[0], rows[0]
    # options that take a value still say which
    if command == ["translate"]:
        assert "<str>" in _option_rows(result.output, "--to")[0]
