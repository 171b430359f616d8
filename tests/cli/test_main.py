import subprocess
import sys
import time

from typer.testing import CliRunner

from medm2g_cli.main import app

runner = CliRunner()


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "data", "align", "train-flow", "generate", "translate", "evaluate", "info"):
        assert command in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert "medm2g" in result.output


def test_help_does_not_import_torch_and_is_fast():
    code = (
        "import sys, time; t=time.perf_counter();"
        "from medm2g_cli.main import app;"
        "import typer.testing as tt; r=tt.CliRunner().invoke(app, ['--help']);"
        "assert r.exit_code == 0, r.output;"
        "heavy=[m for m in ('torch','diffusers','transformers','monai','nibabel','pydicom','SimpleITK') if m in sys.modules];"
        "print(repr(heavy), time.perf_counter()-t)"
    )
    start = time.perf_counter()
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    elapsed = time.perf_counter() - start
    heavy, _ = output.rsplit(" ", 1)
    assert heavy.strip() == "[]", f"--help imported {heavy}"
    assert elapsed < 5.0
