"""Issue 10 §1, crash safety: SIGKILL at random points never leaves a partial file under a final name;
``--resume`` / ``--skip-existing`` finish the job; resumed training is bit-identical on CPU; Ctrl-C
stops training after saving its state, with exit code 130.

Kill points are drawn from a seeded ``random.Random`` after the process reports it has started the
work (training's ``0/N`` progress line, translate's synthetic-model warning), so every run kills
somewhere inside training, checkpoint saving, bundle writing or output writing — reproducibly.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from reliability_support import (FLOW, FLOW_STEPS, Running, Tiny, assert_same_weights, check_ok, copy_bundle, final_files,
                                 is_temporary, run_cli)

CHECKPOINT_FILES = {"trainer_state.json", "rng-0.json", "model.safetensors", "optimizer.bin", "random_states_0.pkl"}


def assert_bundle_files_complete(bundle: Path) -> None:
    """Every file under a final name is whole: JSON parses, safetensors load, checkpoints have every part."""
    from safetensors.torch import load_file

    for path in final_files(bundle):
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".safetensors":
            load_file(str(path))
    for checkpoint in (bundle / "training").glob("*/checkpoint-*"):
        present = {p.name for p in checkpoint.iterdir()}
        assert CHECKPOINT_FILES <= present, f"{checkpoint} is incomplete under its final name: {sorted(present)}"
    for component in [*(bundle / "flows").glob("*")] if (bundle / "flows").is_dir() else []:
        if component.name.startswith("."):
            continue
        names = {p.name for p in component.iterdir()}
        assert {"config.json", "model.safetensors"} <= names, f"{component} is a partial component: {sorted(names)}"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_train_flow_killed_at_random_points_resumes_to_identical_weights(tiny: Tiny, tmp_path: Path, seed: int) -> None:
    rng = random.Random(1000 + seed)
    bundle = copy_bundle(tiny.aligned, tmp_path / "killed.m2g")
    run = Running(tiny.train_flow_args(bundle), env=tiny.env())
    assert run.wait_for(rf"flows/{FLOW}: 0/{FLOW_STEPS}"), "".join(run.stderr)
    # training 24 steps with 6 checkpoints, then writing the bundle, takes ~3-5 s after this line
    time.sleep(rng.uniform(0.0, 5.0))
    run.process.send_signal(signal.SIGKILL)
    code, _, stderr = run.finish()
    assert code in (-signal.SIGKILL, 0), stderr

    assert_bundle_files_complete(bundle)
    leftovers = [p for p in bundle.rglob("*") if is_temporary(p, bundle)]
    assert all(".tmp" in p.name or any(".tmp" in part for part in p.relative_to(bundle).parts) for p in leftovers)

    resumed = check_ok(run_cli(tiny.train_flow_args(bundle, "--resume", "--json"), env=tiny.env()))
    assert "Traceback" not in resumed.stderr
    assert_bundle_files_complete(bundle)
    assert_same_weights(bundle, tiny.reference)
    # the finished bundle loads for inference despite any temporary leftovers of the killed run
    info = check_ok(run_cli(["info", str(bundle), "--json"], env=tiny.env()))
    assert FLOW in json.loads(info.stdout)["flows"]


def test_ctrl_c_during_training_saves_state_and_exits_130(tiny: Tiny, tmp_path: Path) -> None:
    """SIGINT mid-training: the loop finishes the step, saves a checkpoint there (periodic saves are off
    in this run, so any checkpoint is the interrupt's), prints one line and exits 130; --resume continues."""
    recipe = tmp_path / "no-periodic-saves.yaml"
    recipe.write_text(tiny.recipe.read_text().replace("save_every: 4", "save_every: 0"))
    bundle = copy_bundle(tiny.aligned, tmp_path / "interrupted.m2g")
    args = ["train-flow", "--pair", "mri-ct", "--data", str(tiny.cohort), "--bundle", str(bundle), "--recipe", str(recipe)]
    run = Running([*args, "--steps", "400"], env=tiny.env())
    assert run.wait_for(rf"flows/{FLOW}: 0/400"), "".join(run.stderr)
    time.sleep(1.5)
    run.process.send_signal(signal.SIGINT)
    code, stdout, stderr = run.finish(timeout=120)
    assert code == 130, stderr
    assert "Traceback" not in stderr and stdout == ""
    assert "interrupted" in stderr and "--resume" in stderr
    state_dir = bundle / "training" / f"flows-{FLOW}"
    checkpoints = sorted(state_dir.glob("checkpoint-*"))
    assert checkpoints, f"no state saved on Ctrl-C: {sorted(p.name for p in state_dir.iterdir())}"
    saved_step = json.loads((checkpoints[-1] / "trainer_state.json").read_text())["step"]
    assert 0 < saved_step < 400
    assert CHECKPOINT_FILES <= {p.name for p in checkpoints[-1].iterdir()}

    resumed = check_ok(run_cli([*args, "--steps", str(saved_step + 2), "--resume", "--json"], env=tiny.env()))
    stage = json.loads(resumed.stdout)["stages"][-1]
    assert stage["resumed_from"] == saved_step and stage["steps"] == saved_step + 2


# -- batch translate -------------------------------------------------------------------------------


def translate_args(tiny: Tiny, out: Path, *more: str) -> list[str]:
    return ["translate", str(tiny.cohort), "--to", "ct", "--out", str(out), "--model", str(tiny.reference), "--device", "cpu", *more]


@pytest.fixture(scope="module")
def reference_translation(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("translate-reference") / "out"
    check_ok(run_cli(translate_args(tiny, out), env=tiny.env()))
    return out


def read_volume(path: Path) -> np.ndarray:
    from medm2g_core import io

    return io.read(path)[0]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_batch_translate_killed_at_random_points_skip_existing_finishes(tiny: Tiny, reference_translation: Path, tmp_path: Path,
                                                                        seed: int) -> None:
    rng = random.Random(2000 + seed)
    out = tmp_path / "out"
    run = Running(translate_args(tiny, out), env=tiny.env())
    assert run.wait_for(r"trained on synthetic phantoms"), "".join(run.stderr)
    time.sleep(rng.uniform(0.0, 7.0))  # six volumes take ~1 s each
    run.process.send_signal(signal.SIGKILL)
    run.finish()

    expected = {p.relative_to(reference_translation) for p in final_files(reference_translation) if p.name == "ct.nii.gz"}
    done_before = 0
    for path in final_files(out) if out.exists() else []:
        relative = path.relative_to(out)
        if path.name == "ct.nii.gz":  # under its final name: whole, and exactly the uninterrupted output
            assert relative in expected
            np.testing.assert_array_equal(read_volume(path), read_volume(reference_translation / relative))
        elif path.name == "ct.json":
            card = json.loads(path.read_text())
            assert (path.parent / "ct.nii.gz").is_file(), "a sidecar marks an output that does not exist"
            assert card["outputs"] == ["ct.nii.gz"]
            done_before += 1
        else:
            assert path.name == "run.json", f"unexpected file {relative}"

    finished = check_ok(run_cli(translate_args(tiny, out, "--skip-existing", "--json"), env=tiny.env()))
    items = [json.loads(line) for line in finished.stdout.splitlines()]
    assert len(items) == len(expected)
    assert sum(item["status"] == "skipped" for item in items) == done_before
    assert all(item["status"] in ("ok", "skipped") for item in items)
    got = {p.relative_to(out) for p in final_files(out) if p.name == "ct.nii.gz"}
    assert got == expected
    for relative in expected:
        np.testing.assert_array_equal(read_volume(out / relative), read_volume(reference_translation / relative))
    # leftovers of the killed run are only temporary names, which nothing reads as inputs or outputs
    assert all(is_temporary(p, out) for p in out.rglob("*") if p.is_file() and p not in final_files(out))


# -- a kill during one write ------------------------------------------------------------------------

WRITER = """
import os, sys, time
import numpy as np
from pathlib import Path
real_replace = os.replace

def replace_slowly(source, target):  # the kill lands here: data written, not yet renamed
    print("RENAMING", source, target, file=sys.stderr, flush=True)
    time.sleep(60)
    real_replace(source, target)

os.replace = replace_slowly
from medm2g_core import io
from medm2g_core.serialization import save_weights, write_json
from medm2g_core.types import ImageMeta
out, kind = Path(sys.argv[1]), sys.argv[2]
if kind == "nifti":
    volume = np.random.default_rng(0).normal(0, 1000, (32, 32, 16)).astype(np.float32)
    io.write(out / "ct.nii.gz", volume, ImageMeta(spacing=(1.0, 1.0, 1.0), shape=volume.shape))
elif kind == "json":
    write_json(out / "run.json", {"items": [{"input": f"P{i:04d}"} for i in range(100)]})
else:
    import torch
    save_weights(out / "model.safetensors", {"weight": torch.randn(16, 16)})
print("FINISHED", file=sys.stderr, flush=True)
"""


@pytest.mark.parametrize("kind, name", [("nifti", "ct.nii.gz"), ("json", "run.json"), ("weights", "model.safetensors")])
def test_sigkill_during_a_write_leaves_nothing_under_the_final_name(tmp_path: Path, kind: str, name: str) -> None:
    """Deterministic: the writer's ``os.replace`` is slowed down, and the writer is killed after its
    data is complete but before the rename. Nothing may exist under the final name — the data went to
    a temporary name in the same folder (an in-place writer never reaches a rename and fails here)."""
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(out), kind], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    line = process.stderr.readline()
    while line and not line.startswith(("RENAMING", "FINISHED")):
        line = process.stderr.readline()
    assert line.startswith("RENAMING"), f"the writer never renamed a temporary file into place: {line!r}"
    _, source, target = line.split()
    assert Path(target).name == name and Path(source).parent == Path(target).parent
    assert Path(source).is_file() and Path(source).stat().st_size > 0
    assert not Path(target).exists(), f"{name} exists under its final name before the rename"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    left = sorted(p.name for p in out.iterdir())
    assert name not in left
    assert left and all(p.startswith(".") and ".tmp" in p for p in left), left
