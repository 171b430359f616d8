from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "ddp_script.py"


@pytest.mark.slow
def test_two_cpu_processes_gather_and_train(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", str(SCRIPT), str(tmp_path)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert rank["num_processes"] == 2 and rank["train_processes"] == 2
        assert rank["loss"] == pytest.approx(rank["expected"], abs=1e-5)  # negatives from the global batch
        assert rank["local_only"] != pytest.approx(rank["expected"], abs=1e-3)
        assert rank["grad_finite"]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the replicas identical
    assert ranks[0]["val"] == ranks[1]["val"]
    assert ranks[0]["align_processes"] == 2 and "nce_xray" in ranks[0]["align_losses"]
    assert "report->xray" in ranks[0]["align_retrieval"]["val"] and ranks[1]["align_retrieval"] == {}
    assert (tmp_path / "bundle" / "align" / "model.safetensors").is_file()
    assert (tmp_path / "state" / "checkpoint-00000004" / "rng-1.json").is_file()
