"""Issue 19 §3: on two gloo ranks, DDP-averaged gradients of the alignment loss equal those of one
process on the concatenated batch (InfoNCE gathered with gradients, per-rank loss shares, the
visual-invariant loss over the global batch). The script asserts it really runs on two ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "ddp_grad_script.py"


@pytest.mark.slow
def test_two_rank_gradients_equal_single_process_on_the_global_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541", str(SCRIPT), str(tmp_path)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert rank["world"] == 2
        assert set(rank["cases"]) == {"uneven", "rank1_without_reports"}
        for case, got in rank["cases"].items():
            # every loss term is exercised, and the gradients are not trivially zero
            assert got["terms"] == ["nce_ct", "nce_ct_mri-t1", "nce_mri-t1", "nce_xray", "vi_ct", "vi_mri-t1", "vi_xray"], case
            assert got["local_terms"] == got["terms"], case
            assert got["nonzero_grads"] > got["params"] // 2 and got["max_abs_grad"] > 1e-3, case
            assert got["mismatched"] == [], f"{case}: {got['worst_param']} differs by {got['max_abs_diff']:.3g} (grads up to {got['max_abs_grad']:.3g})"
            assert got["loss_mean"] == pytest.approx(got["loss_single"], rel=1e-5), case  # ranks' shares average to it
