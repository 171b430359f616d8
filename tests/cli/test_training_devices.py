"""Every training command takes ``--device``; a requested device that is missing is exit 2 before any file is read."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from medm2g_cli.main import app

runner = CliRunner()
MISSING = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


def _commands(tmp_path):
    nothing = str(tmp_path / "no-cohort")  # the device is refused before the cohort is looked at
    return {
        "align": ["align", "--data", nothing, "--out", str(tmp_path / "b")],
        "train-flow": ["train-flow", "--pair", "mri-ct", "--data", nothing, "--bundle", str(tmp_path / "b")],
        "train-flow autoencoder": ["train-flow", "--stage", "autoencoder", "--modality", "ct", "--data", nothing, "--bundle", str(tmp_path / "b")],
        "train-flow text-vae": ["train-flow", "--stage", "text-vae", "--data", nothing, "--bundle", str(tmp_path / "b")],
        "demo": ["demo", "--out", str(tmp_path / "demo")],
    }


@pytest.mark.parametrize("name", ["align", "train-flow", "train-flow autoencoder", "train-flow text-vae", "demo"])
def test_a_missing_device_is_a_usage_error_that_names_the_fix(tmp_path, name):
    args = _commands(tmp_path)[name]
    result = runner.invoke(app, [*args, "--device", MISSING])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert f"--device {MISSING}" in text and "--device cpu" in text  # the flag and the fix
    assert not (tmp_path / "b").exists() and not (tmp_path / "demo").exists()  # nothing started
    misspelt = runner.invoke(app, [*args, "--device", "gpu"])
    assert misspelt.exit_code == 2 and "use auto, cpu, cuda, cuda:N or mps" in " ".join(misspelt.output.split())


def test_training_commands_document_the_device_flag():
    for command in ("align", "train-flow", "demo"):
        shown = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0 and "--device" in shown.output and "auto|cpu|cuda[:N]|mps" in shown.output
