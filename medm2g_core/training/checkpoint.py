"""Resumable training state on disk: Accelerate ``save_state`` written safely (FIELD-LESSONS.md).

Layout of ``state_dir`` (= ``BUNDLE/training/<stage>/``)::

    checkpoint-00000040/      # Accelerate save_state (model, optimizer, RNG states, custom objects)
        trainer_state.json    # step, config, num_processes, created
        rng-0.json            # fingerprint of rank 0's RNG state at save time (one per rank)
    .checkpoint-00000060.tmp/ # being written; never read

A checkpoint is written into a temporary folder, renamed into place, and only then are older ones
pruned, so a kill at any moment leaves the last complete checkpoint intact (Accelerate's own
``total_limit`` deletes first). On load, every rank's RNG state is compared with its fingerprint: a
failed RNG restore (which Accelerate only logs) is a fatal error here, because the run would not
continue exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medm2g_core.errors import BundleError
from medm2g_core.serialization import read_json, write_json

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d{8})$")
TRAINER_STATE = "trainer_state.json"


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}"


def list_checkpoints(state_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``state_dir`` as ``(step, path)``, oldest first."""
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        return []
    found = []
    for child in state_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and (child / TRAINER_STATE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(state_dir: str | Path) -> Path | None:
    """The most recent complete checkpoint, or None."""
    found = list_checkpoints(state_dir)
    return found[-1][1] if found else None


def rng_fingerprint() -> str:
    """SHA-256 over the Python, NumPy and torch (CPU and CUDA) RNG states of this process."""
    digest = hashlib.sha256()
    digest.update(repr(random.getstate()).encode())
    numpy_state = np.random.get_state()
    digest.update(repr((numpy_state[0], numpy_state[2:])).encode())
    digest.update(np.asarray(numpy_state[1]).tobytes())
    digest.update(torch.get_rng_state().numpy().tobytes())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for state in torch.cuda.get_rng_state_all():
            digest.update(state.numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(accelerator: Any, state_dir: str | Path, *, step: int, trainer_state: dict[str, Any], keep: int,
                    ema: Any | None = None) -> Path:
    """Every rank calls this. Writes ``checkpoint-<step>`` atomically (temp folder + rename), then prunes.

    ``ema`` (an ``EMA``) is written by rank 0 as ``ema.safetensors`` in the checkpoint.

    Returns the final checkpoint path.
    """
    state_dir = Path(state_dir)
    final = state_dir / checkpoint_name(step)
    tmp = state_dir / f".{final.name}.tmp"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    fingerprint = rng_fingerprint()  # before save_state, which records the same state
    accelerator.save_state(str(tmp))
    write_json(tmp / f"rng-{accelerator.process_index}.json", {"fingerprint": fingerprint})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / TRAINER_STATE, {**trainer_state, "step": step, "created": time.time()})
        if ema is not None:
            ema.save(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(state_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, checkpoint: str | Path, *, ema: Any | None = None) -> dict[str, Any]:
    """Every rank calls this. ``load_state`` then verifies the RNG restore; returns ``trainer_state.json``.

    ``ema`` (an ``EMA``) is restored from the checkpoint's ``ema.safetensors``. Accelerate's own files are
    read with ``weights_only=True`` (its restricted unpickler); nothing here registers custom objects,
    whose files Accelerate would unpickle without that restriction.

    Raises ``BundleError`` when the checkpoint is incomplete or the RNG state was not restored.
    """
    checkpoint = Path(checkpoint)
    state = read_json(checkpoint / TRAINER_STATE)
    rank = accelerator.process_index
    fingerprint_file = checkpoint / f"rng-{rank}.json"
    if not fingerprint_file.is_file():
        raise BundleError(
            f"{checkpoint}: no RNG state for process {rank} (saved with {state.get('num_processes')} processes); "
            "resume with the same number of processes, or start again without --resume"
        )
    if ema is not None and not (checkpoint / ema.FILE).is_file():
        raise BundleError(
            f"{checkpoint}: no ema.safetensors (a checkpoint from before medm2g kept EMA weights as safetensors); "
            "start again without --resume"
        )
    accelerator.load_state(str(checkpoint))
    if ema is not None:
        ema.load(checkpoint)
    expected = json.loads(fingerprint_file.read_text())["fingerprint"]
    if rng_fingerprint() != expected:
        raise BundleError(
            f"{checkpoint}: the random-number state of process {rank} was not restored, so the resumed run would "
            "not continue exactly; the checkpoint is damaged — start again without --resume"
        )
    return state


def clear_checkpoints(state_dir: str | Path) -> None:
    """Remove old checkpoints and leftovers of a fresh (non-resumed) run."""
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        return
    for child in state_dir.iterdir():
        if child.is_dir() and (CHECKPOINT_PATTERN.match(child.name) or (child.name.startswith(".checkpoint-") and child.name.endswith(".tmp"))):
            shutil.rmtree(child, ignore_errors=True)
