import subprocess
import sys

CODE = """
import os, sys
read_end, write_end = os.pipe()
os.close(read_end)                      # the reader (e.g. `head`) has already left
os.dup2(write_end, sys.stdout.fileno())
from medm2g_cli.console import emit_json
emit_json({"patient": "P0001", "ok": True})
print("still running", file=sys.stderr)
"""


def test_json_into_a_closed_pipe_is_not_an_error():
    """`medm2g ... --json | head -1`: writing to a pipe whose reader left is not a crash or a traceback."""
    result = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "still running" in result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
