"""Helpers for the reliability tests (issue 10): run the real ``medm2g`` console script in subprocesses.

Everything here goes through the installed entry point next to the test interpreter
(``.venv/bin/medm2g``), so the tests exercise exactly what a user runs: argument parsing, error mapping,
exit codes, signals and the files left on disk.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).parents[1]))
from tiny_recipe import tiny_recipe  # noqa: E402

BIN = Path(sys.executable).parent
MEDM2G = BIN / "medm2g"

# The tiny recipe every reliability test trains with: 32² slices, 24 flow steps saved every 4 steps,
# so a kill lands in training, in checkpoint saving or in bundle writing.
FLOW_STEPS = 24
TINY_RECIPE = tiny_recipe(
    "tiny-reliability",
    align={"modalities": ["ct", "mri-t1", "mri-t2"], "training": {"steps": 3}},
    flows={"training": {"steps": FLOW_STEPS, "save_every": 4, "val_every": 0}},
)
FLOW = "mri-t1__ct"


def refused_with_peak(read: Callable[[Path], Any], path: Path, *, match: str | None = None) -> tuple[Exception, int]:
    """``read(path)`` must raise ``InputError`` (matching ``match``); returns it and the peak bytes Python
    allocated meanwhile (tracemalloc)."""
    import pytest

    from medm2g_core.errors import InputError

    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=match) as caught:
            read(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return caught.value, peak


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for a CLI subprocess: one thread (bit-identical CPU results, shared cores), no GPU,
    no network, a private MEDM2G_HOME."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        MEDM2G_HOME=str(home),
        COLUMNS="200",
    )
    env.pop("MEDM2G_MODEL", None)
    env.update(extra)
    return env


def run_cli(args: Sequence[str], *, env: dict[str, str], cwd: Path | None = None, input: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``medm2g ARGS`` to completion; stdout and stderr captured as text."""
    return subprocess.run([str(MEDM2G), *map(str, args)], env=env, cwd=cwd, input=input, capture_output=True, text=True,
                          timeout=timeout)


def check_ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


class Running:
    """A ``medm2g`` subprocess whose stderr is read line by line in a thread (so it never blocks)."""

    def __init__(self, args: Sequence[str], *, env: dict[str, str], cwd: Path | None = None):
        self.started = time.monotonic()
        self.process = subprocess.Popen([str(MEDM2G), *map(str, args)], env=env, cwd=cwd, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, *, timeout: float = 120) -> bool:
        """Block until a stderr line matches ``pattern``; False when the process ended first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                return False
            if regex.search(line):
                return True
        raise TimeoutError(f"no stderr line matching {pattern!r} within {timeout} s; got:\n{''.join(self.stderr)}")

    def finish(self, *, timeout: float = 300) -> tuple[int, str, str]:
        """Wait for the exit; returns (exit code, stdout, stderr)."""
        stdout = self.process.stdout.read() if self.process.stdout else ""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code, stdout, "".join(self.stderr)


def is_temporary(path: Path, root: Path) -> bool:
    """A name the toolkit uses while writing (``.name.XXXX.tmp...`` files or ``.name.tmp`` folders)."""
    return any(part.startswith(".") and ".tmp" in part for part in path.relative_to(root).parts)


def final_files(root: Path) -> list[Path]:
    """Every file under ``root`` that is not a temporary leftover."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not is_temporary(p, root))


def load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def weights_of(bundle: Path) -> dict[str, dict]:
    """All inference weights of a bundle: relative path → tensors (training state excluded)."""
    return {p.relative_to(bundle).as_posix(): load_tensors(p) for p in sorted(bundle.rglob("*.safetensors"))
            if "training" not in p.relative_to(bundle).parts}


def assert_same_weights(actual: Path, expected: Path) -> None:
    import torch

    got, want = weights_of(actual), weights_of(expected)
    assert sorted(got) == sorted(want), f"weight files differ: {sorted(got)} vs {sorted(want)}"
    for name in want:
        assert sorted(got[name]) == sorted(want[name]), f"{name}: keys differ"
        different = [k for k in want[name] if not torch.equal(got[name][k], want[name][k])]
        assert not different, f"{name}: tensors differ from the uninterrupted run: {different[:5]}"


def copy_bundle(source: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, symlinks=True)
    return target


@dataclass
class Tiny:
    """The session's tiny world, built once through the real CLI.

    Attributes:
        root: session folder. cohort: 6 head phantoms (CT, MRI T1/T2/PD, report).
        recipe: TINY_RECIPE on disk. aligned: bundle after `medm2g align` only (copy before training into it).
        reference: ``aligned`` + an uninterrupted `train-flow --pair mri-ct` (never modified by tests).
        home: MEDM2G_HOME for the subprocesses.
    """

    root: Path
    cohort: Path
    recipe: Path
    aligned: Path
    reference: Path
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        return cli_env(self.home, **extra)

    def train_flow_args(self, bundle: Path, *more: str) -> list[str]:
        return ["train-flow", "--pair", "mri-ct", "--data", str(self.cohort), "--bundle", str(bundle), "--recipe", str(self.recipe), *more]


def build_tiny(root: Path) -> Tiny:
    """Build the tiny world under ``root``; ``MEDM2G_RELIABILITY_WORLD=DIR`` reuses one built there before
    (used to re-run the suite against deliberately broken code without rebuilding it with that code)."""
    cached = os.environ.get("MEDM2G_RELIABILITY_WORLD")
    if cached and (Path(cached) / "reference.m2g" / "bundle.json").is_file():
        root = Path(cached)
        return Tiny(root=root, cohort=root / "cohort", recipe=root / "tiny.yaml", aligned=root / "aligned.m2g",
                    reference=root / "reference.m2g", home=root / "home")
    if cached:
        root = Path(cached)
    root.mkdir(parents=True, exist_ok=True)
    home = root / "home"
    env = cli_env(home)
    cohort, recipe = root / "cohort", root / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    check_ok(run_cli(["data", "synth", "--out", cohort, "--patients", "6", "--anatomy", "head", "--seed", "1", "--workers", "0"], env=env))
    aligned = root / "aligned.m2g"
    check_ok(run_cli(["align", "--data", cohort, "--out", aligned, "--recipe", recipe, "--steps", "3"], env=env))
    reference = copy_bundle(aligned, root / "reference.m2g")
    tiny = Tiny(root=root, cohort=cohort, recipe=recipe, aligned=aligned, reference=reference, home=home)
    check_ok(run_cli(tiny.train_flow_args(reference), env=env))
    return tiny
