"""Issue 10 §5, multi-process: ``torchrun --nproc_per_node 2 -m medm2g_cli.main train-flow`` on CPU (gloo)
trains with two ranks, only rank 0 writes files and progress, and the result loads.

DESIGN §6: ``accelerate launch --cpu --num_processes 2`` was seen to start only one process, so the
test proves two ranks really trained (the checkpoint records ``num_processes == 2`` and holds each
rank's RNG fingerprint) rather than trusting the launcher.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from reliability_support import BIN, FLOW, Tiny, copy_bundle, final_files, is_temporary


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_train_flow_only_rank_0_writes(tiny: Tiny, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny.aligned, tmp_path / "ddp.m2g")
    logs = tmp_path / "logs"
    before = {p.relative_to(bundle) for p in final_files(bundle)}
    command = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29547", "--log-dir", str(logs),
               "--redirects", "3", "-m", "medm2g_cli.main", *tiny.train_flow_args(bundle, "--steps", "8", "--json")]
    completed = subprocess.run(command, env=tiny.env(), cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert completed.returncode == 0, completed.stderr[-4000:]

    # two ranks trained: the resumable state says so and holds both ranks' RNG fingerprints
    checkpoint = bundle / "training" / f"flows-{FLOW}" / "checkpoint-00000008"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["num_processes"] == 2
    assert (checkpoint / "rng-0.json").is_file() and (checkpoint / "rng-1.json").is_file()

    # only rank 0 reports: rank 1's stderr has no progress, tables or warnings
    rank_logs = {int(p.parent.name): p.read_text() for p in logs.rglob("stderr.log")}
    assert sorted(rank_logs) == [0, 1], sorted(logs.rglob("*"))
    assert f"flows/{FLOW}:" in rank_logs[0]
    stdout = {int(p.parent.name): p.read_text() for p in logs.rglob("stdout.log")}
    assert json.loads(stdout[0])["stages"][-1]["steps"] == 8 and stdout[1] == ""  # one --json document, from rank 0
    quiet = [line for line in rank_logs[1].splitlines() if f"flows/{FLOW}" in line or "trained into" in line
             or line.startswith(("warning:", "error:", "┃", "│"))]
    assert not quiet, "rank 1 reported:\n" + "\n".join(quiet)

    # only rank 0 wrote: the bundle holds what a one-process run writes (per-rank state files aside)
    written = {p.relative_to(bundle) for p in final_files(bundle)} - before
    reference = {p.relative_to(tiny.reference) for p in final_files(tiny.reference)}
    inference = {p for p in written if p.parts[0] != "training"}
    assert inference == {p for p in reference if p.parts[0] != "training"} - before
    per_rank = {p.name for p in written if p.parts[0] == "training"}
    assert per_rank >= {"rng-0.json", "rng-1.json", "random_states_0.pkl", "random_states_1.pkl"}
    assert not [p for p in bundle.rglob("*") if is_temporary(p, bundle)]

    # the result loads and predicts
    import torch

    from medm2g_core.flows.model import FlowModel

    flow = FlowModel.load(bundle, "mri-ct")
    size = flow.image_size
    prediction = flow.predict({flow.pair.sources[0]: torch.zeros(1, 1 + 2 * flow.context_slices, size, size)}, samples=1, seed=0)
    assert tuple(prediction.mean.shape) == (1, 1, size, size) and torch.isfinite(prediction.mean).all()
