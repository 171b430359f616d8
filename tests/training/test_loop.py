from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from medm2g_core.config import TrainingConfig
from medm2g_core.errors import BundleError, ConfigError
from medm2g_core.training import checkpoint as ckpt
from medm2g_core.training.loop import Task, seed_everything, train

sys.path.insert(0, str(Path(__file__).parent))
from toy import LineTask, NoisyLine  # noqa: E402

torch.set_num_threads(1)

CONFIG = TrainingConfig(
    steps=6, batch_size=4, lr=0.05, warmup_steps=2, grad_accum=2, grad_clip=1.0, ema_decay=0.9, save_every=2,
    keep_checkpoints=2, val_every=3, seed=3, log_every=1,
)


class Interrupt(Exception):
    pass


def _run(state_dir, *, resume=False, stop_at=None, config=CONFIG):
    seed_everything(config.seed)
    task = LineTask()

    def progress(event):
        if stop_at is not None and event.completed == stop_at:
            raise Interrupt

    result = train(task, train_dataset=NoisyLine(), val_dataset=NoisyLine(8, seed=1), config=config,
                   state_dir=state_dir, resume=resume, progress=progress)
    return task, result


def test_task_protocol():
    assert isinstance(LineTask(), Task)


def test_trains_and_validates(tmp_path):
    task, result = _run(tmp_path)
    assert result.steps == 6 and result.num_processes == 1
    assert [h["step"] for h in result.val_history] == [3, 6]
    assert task.validations == [3, 6]
    assert set(result.ema_state_dicts) == {"net"}
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [4, 6]  # keep_checkpoints=2, pruned after writing



def test_ema_is_checkpointed_as_safetensors_not_pickle(tmp_path):
    """Accelerate unpickles registered custom objects with weights_only=False; the EMA must not be one."""
    from safetensors.torch import load_file

    _, result = _run(tmp_path)
    latest = ckpt.latest_checkpoint(tmp_path)
    assert not list(latest.glob("custom_checkpoint_*"))
    saved = load_file(str(latest / "ema.safetensors"))
    assert set(saved) == {f"net/{key}" for key in result.ema_state_dicts["net"]}
    for key, value in result.ema_state_dicts["net"].items():
        assert torch.equal(saved[f"net/{key}"], value)
    (latest / "ema.safetensors").unlink()
    with pytest.raises(BundleError, match="ema.safetensors"):
        _run(tmp_path, resume=True)


def test_resume_after_interrupt_is_bit_identical(tmp_path):
    reference, reference_result = _run(tmp_path / "a")
    with pytest.raises(Interrupt):
        _run(tmp_path / "b", stop_at=3)  # checkpoint at step 2 exists, step 3 is lost
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "b")] == [2]
    resumed, result = _run(tmp_path / "b", resume=True)
    assert result.resumed_from == 2
    for key, value in reference.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[key]), key
    for key, value in reference_result.ema_state_dicts["net"].items():
        assert torch.equal(value, result.ema_state_dicts["net"][key]), key
    assert result.val_history == reference_result.val_history


def test_failed_rng_restore_is_fatal(tmp_path):
    _run(tmp_path, stop_at=None, config=CONFIG)
    latest = ckpt.latest_checkpoint(tmp_path)
    (latest / "random_states_0.pkl").unlink()
    with pytest.raises(BundleError, match="random-number state"):
        _run(tmp_path, resume=True)


def test_resume_refuses_changed_batch_layout(tmp_path):
    _run(tmp_path)
    with pytest.raises(ConfigError, match="batch_size"):
        _run(tmp_path, resume=True, config=TrainingConfig(**{**CONFIG.__dict__, "batch_size": 2}))


def test_leftover_temp_checkpoint_is_ignored(tmp_path):
    _run(tmp_path)
    (tmp_path / ".checkpoint-00000008.tmp").mkdir()
    assert ckpt.latest_checkpoint(tmp_path).name == "checkpoint-00000006"


def test_too_small_dataset_is_a_config_error(tmp_path):
    seed_everything(0)
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        train(LineTask(), train_dataset=NoisyLine(3), val_dataset=None, config=CONFIG, state_dir=tmp_path)
