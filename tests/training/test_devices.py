"""``--device`` for training: the rules of inference, and a requested missing device is an error, never the CPU.

CPU-only machines check the refusals; a CUDA machine also trains on the GPU it was asked for.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from medm2g_core.config import TrainingConfig
from medm2g_core.errors import ConfigError
from medm2g_core.training.devices import resolve_device
from medm2g_core.training.loop import seed_everything, train

sys.path.insert(0, str(Path(__file__).parent))
from toy import LineTask, NoisyLine  # noqa: E402

torch.set_num_threads(1)

CONFIG = TrainingConfig(steps=2, batch_size=4, lr=0.01, warmup_steps=0, seed=0)


def _missing_cuda() -> str:
    """A CUDA device this machine does not have."""
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


def test_resolve_device() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "mps") or resolve_device("auto").startswith("cuda")
    for bad in ("gpu", "cpu:1", "cuda:x"):
        with pytest.raises(ConfigError, match="use auto, cpu"):
            resolve_device(bad)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda:1")
    else:
        with pytest.raises(ConfigError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        with pytest.raises(ConfigError, match="MPS is not available"):
            resolve_device("mps")



def test_training_on_a_missing_device_is_an_error_before_anything_is_built(tmp_path: Path) -> None:
    """The loop used to train on the CPU whenever CUDA was absent, whatever was asked."""
    seed_everything(0)
    task = LineTask()
    before = {k: v.clone() for k, v in task.net.state_dict().items()}
    with pytest.raises(ConfigError, match=r"--device cuda.*(no CUDA device|CUDA device\(s\) visible)"):
        train(task, train_dataset=NoisyLine(), val_dataset=None, config=CONFIG, state_dir=tmp_path / "state", device=_missing_cuda())
    assert not (tmp_path / "state").exists()
    assert all(torch.equal(v, task.net.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ConfigError, match="use auto, cpu"):
        train(task, train_dataset=NoisyLine(), val_dataset=None, config=CONFIG, state_dir=tmp_path / "state", device="gpu")


def test_training_runs_on_the_device_asked_for(tmp_path: Path) -> None:
    seed_everything(0)
    task = LineTask()
    result = train(task, train_dataset=NoisyLine(), val_dataset=None, config=CONFIG, state_dir=tmp_path / "cpu", device="cpu")
    assert result.device == "cpu" and next(task.net.parameters()).device.type == "cpu"
    if torch.cuda.is_available():  # and back to a GPU in the same process (Accelerate's state is process-wide)
        task = LineTask()
        result = train(task, train_dataset=NoisyLine(), val_dataset=None, config=CONFIG, state_dir=tmp_path / "gpu", device="cuda:0")
        assert result.device == "cuda:0" and next(task.net.parameters()).device == torch.device("cuda", 0)
        again = train(LineTask(), train_dataset=NoisyLine(), val_dataset=None, config=CONFIG, state_dir=tmp_path / "cpu2", device="cpu")
        assert again.device == "cpu"
