"""The one training loop (Hugging Face Accelerate) for every task: alignment, autoencoders, text VAE, flows.

The loop knows nothing about what it trains (open_clip's ``train_one_epoch`` style): a ``Task`` owns
its modules and computes its losses; the loop owns devices, processes, the optimizer, the learning
rate, gradient accumulation and clipping, EMA, validation, progress and resumable state.

Contract for a task (``Task`` below):

- ``trainable_modules() -> dict[str, nn.Module]``: what the optimizer updates (frozen parts are simply
  not listed, or have ``requires_grad=False``). The loop wraps these modules in one container module
  whose ``forward(batch, step)`` calls ``task.training_step`` — that container is what Accelerate
  ``prepare``s (DDP-wrapped on several processes, autocast for mixed precision). The task keeps using
  its own module objects; their parameters are the ones being trained.
- ``training_step(batch, *, step) -> dict[str, Tensor]`` with a scalar ``"loss"``; other scalar entries
  are reported in progress (detached, averaged over the step's micro-batches on rank 0).
- ``validation_step(batch) -> dict[str, float]``: run under ``torch.no_grad`` with modules in eval mode;
  values are averaged over batches and processes.
- optional ``on_validation(step, out_dir)``: called on rank 0 only after each validation (sample grids).
- optional ``on_train_start(accelerator)``: called on every rank after ``prepare`` (e.g. to learn the
  process count for gathered losses).

Data: ``train_dataset`` is any map-style dataset. Datasets that set ``epoch_indexed = True`` receive
*global* indices ``epoch * len(dataset) + i`` (so augmentation randomness can be a pure function of the
index — identical with any number of workers and after resume) and reduce them modulo their length; a
``collate(items)`` method, when present, is used as ``collate_fn``.

Exact resume: shuffling comes from a per-epoch permutation seeded by ``config.seed`` (the same on every
rank; Accelerate shards the batches), resumed positions are reached with ``skip_first_batches``, the RNG
states are restored by ``load_state`` and verified (a failed restore is fatal), and the learning rate is
a pure function of the step. On CPU, stopping after k steps and resuming ends with bit-identical weights.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from medm2g_core.config import TrainingConfig
from medm2g_core.errors import ConfigError
from medm2g_core.training import checkpoint as ckpt
from medm2g_core.training.devices import resolve_device
from medm2g_core.training.ema import EMA
from medm2g_core.training.schedules import get_lr
from medm2g_core.types import ProgressEvent, ProgressFn, no_progress


class _TiedWeightsNote(logging.Filter):
    """Drop Accelerate's "Removed shared tensor ... while saving" warning.

    Flows hold the bundle's shared cross-attention by design (the same parameters reachable from two
    modules), so every checkpoint would print it; resuming from such a checkpoint is tested to end
    bit-identical to an uninterrupted run.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNote())


@runtime_checkable
class Task(Protocol):
    """What the loop trains. See the module docstring for the full contract."""

    def trainable_modules(self) -> dict[str, nn.Module]: ...

    def training_step(self, batch: Any, *, step: int) -> dict[str, torch.Tensor]: ...

    def validation_step(self, batch: Any) -> dict[str, float]: ...


@dataclass
class TrainResult:
    """What a finished (or already finished, when resumed) training run reports.

    Attributes:
        steps: optimizer steps completed in total (= ``config.steps``).
        resumed_from: step of the checkpoint the run continued from, or None.
        last_losses: the training losses of the last step (rank 0's micro-batches).
        val_history: ``[{"step": s, **metrics}, ...]`` for every validation.
        final_val: validation metrics at the end.
        ema_state_dicts: EMA weights per module name (None without EMA), to save beside the raw ones.
        checkpoint: the last saved resumable state.
        seconds: wall-clock time of this call.
        num_processes: processes that trained.
        is_main_process: True on rank 0 (only it should write the bundle).
        device: the torch device this process trained on (``"cpu"``, ``"cuda:0"``, ``"mps"``).
    """

    steps: int
    resumed_from: int | None
    last_losses: dict[str, float]
    val_history: list[dict[str, float]]
    final_val: dict[str, float]
    ema_state_dicts: dict[str, dict[str, torch.Tensor]] | None
    checkpoint: Path | None
    seconds: float
    num_processes: int
    is_main_process: bool
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


class _InterruptRequest:
    """Ctrl-C (SIGINT) while training: finish the current optimizer step, save resumable state, then stop.

    Installed only in the main thread of a single-process run: with several processes each rank would see
    the signal at a different step and the collective save would hang, so there the last periodic
    checkpoint is what ``--resume`` continues from. A second Ctrl-C interrupts at once.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self, enabled: bool) -> Iterator["_InterruptRequest"]:
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, self._previous)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch. Call it with the same seed on every rank *before building the task*."""
    from accelerate.utils import set_seed

    set_seed(seed)


class EpochSampler(Sampler[int]):
    """A shuffled permutation per epoch seeded by ``(seed, epoch)``; identical on every rank.

    With ``global_indices`` it yields ``epoch * n + i`` (for ``epoch_indexed`` datasets).
    """

    def __init__(self, length: int, *, seed: int, shuffle: bool = True, global_indices: bool = False):
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.global_indices = global_indices
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        offset = self.epoch * self.length if self.global_indices else 0
        return iter(offset + i for i in order)


class _TaskModule(nn.Module):
    """Container that gives Accelerate/DDP one module whose forward is the task's training step."""

    def __init__(self, task: Task):
        super().__init__()
        self.parts = nn.ModuleDict(task.trainable_modules())
        object.__setattr__(self, "_task", task)  # not a submodule: only trainable parts are registered

    def forward(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        return self._task.training_step(batch, step=step)


def build_optimizer(modules: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW (fused where torch has the kernel); no weight decay on 0/1-D parameters (biases, norms, temperatures)."""
    decay, no_decay = [], []
    for parameter in modules.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    if not decay and not no_decay:
        raise ConfigError("the task has no trainable parameters")
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel (CPU and CUDA) updates every tensor in one pass: on 2 CPU cores the per-tensor loop took ~9x
    # longer (6.5 vs 0.7 ms a step for a 0.5 M-parameter UNet) — time a short CPU budget would not train.
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
                for p in (*decay, *no_decay))
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=(0.9, 0.999), fused=fused or None)


def process_state(device: str | None = None) -> Any:
    """This process's ``accelerate.PartialState`` (rank, world size, barriers) on ``device``, for pipelines
    that run on every rank of a ``torchrun``/``accelerate launch`` job.

    Args:
        device: the run's ``--device`` (``auto|cpu|cuda[:N]|mps``, ``training.devices.resolve_device``'s
            rules); None = the state as an earlier call of this run built it (``auto`` when none did).

    ``cpu=True`` whenever the device is the CPU: without it PartialState ignores torchrun's ranks on a
    CPU-only machine (DistributedType.NO), and the Accelerator built later inherits that, so every rank
    would train alone as rank 0 on the same files. Accelerate keeps the state process-wide; in a single
    process an earlier run's state on another device (tests, notebooks) is replaced, while the processes
    of a distributed job cannot change device once started.

    Raises:
        ConfigError: an unknown or missing device, ``cuda:N`` in a job of several processes (each rank uses
            its local GPU), or a device other than the one the job's processes were started on.
    """
    from accelerate import PartialState

    if device is None and PartialState._shared_state:
        return PartialState()
    wanted = torch.device(resolve_device(device or "auto"))
    state = PartialState(cpu=wanted.type == "cpu")
    if state.num_processes > 1:
        if (device or "auto").strip().lower() == "auto":
            return state  # the launcher chose (``accelerate launch --cpu`` on a GPU node trains on the CPU)
        if state.device.type != wanted.type:
            raise ConfigError(f"--device {device}: this job's {state.num_processes} processes run on {state.device.type}; "
                              f"launch them for {wanted.type} (accelerate launch --cpu for CPU) or pass --device {state.device.type}")
        if wanted.index is not None and ":" in str(device):
            raise ConfigError(f"--device {device} names one GPU, but this job has {state.num_processes} processes, each on its "
                              "local GPU; pass --device cuda and choose the GPUs with CUDA_VISIBLE_DEVICES")
        return state
    if _device_of(state.device) != wanted:
        PartialState._reset_state()  # one process: an earlier run in it built the state for another device
        state = PartialState(cpu=wanted.type == "cpu")
        state.device = wanted  # the shared state: the Accelerator built next trains here
    if wanted.type == "cuda":
        torch.cuda.set_device(wanted)  # tensors a task creates on "cuda" land on the same GPU
    return state


def _device_of(device: torch.device) -> torch.device:
    """``device`` with its index filled in (Accelerate's single-process CUDA device is ``cuda``, the current one)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _accelerator(config: TrainingConfig, device: str | None) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, GradientAccumulationPlugin

    state = process_state(device)  # raises before anything is built when the device is missing
    # Accelerate keeps process-wide singletons; a second training in one process (tests, notebooks,
    # `demo` running several stages) must not inherit the first one's precision or accumulation.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    accelerator = Accelerator(
        cpu=state.device.type == "cpu",
        mixed_precision=config.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=config.grad_accum, sync_with_dataloader=False),
        dataloader_config=DataLoaderConfiguration(even_batches=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        step_scheduler_with_optimizer=False,
    )
    if _device_of(accelerator.device) != _device_of(state.device):  # never train somewhere else than asked
        raise ConfigError(f"--device {device}: Accelerate chose {accelerator.device} instead of {state.device} "
                          "(ACCELERATE_TORCH_DEVICE set?); unset it or pass the device it names")
    return accelerator


def _loader(dataset: Dataset, config: TrainingConfig, *, shuffle: bool, drop_last: bool) -> DataLoader:
    global_indices = bool(getattr(dataset, "epoch_indexed", False))
    sampler = EpochSampler(len(dataset), seed=config.seed, shuffle=shuffle, global_indices=global_indices and shuffle)
    collate = getattr(dataset, "collate", None) or default_collate
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        collate_fn=collate,
        drop_last=drop_last,
        persistent_workers=False,
        # Own generator: creating an iterator draws a worker base seed, which would otherwise advance the
        # global torch RNG at different moments in a resumed run than in an uninterrupted one.
        generator=torch.Generator().manual_seed(config.seed),
    )


def _micro_batches(loader: Any, start: int) -> Iterator[Any]:
    """Endless micro-batches starting at micro-batch ``start`` (epoch = start // batches per epoch)."""
    from accelerate import skip_first_batches

    per_epoch = len(loader)
    epoch, skip = divmod(start, per_epoch)
    while True:
        current = skip_first_batches(loader, skip) if skip else loader
        current.set_epoch(epoch)  # a skipping loader is new and would otherwise restart at epoch 0
        yield from current
        epoch, skip = epoch + 1, 0


def _scalar(value: Any) -> float:
    return float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)


def _validate(task: Task, container: nn.Module, loader: Any, accelerator: Any, config: TrainingConfig) -> dict[str, float]:
    totals: dict[str, float] = {}
    batches = 0
    was_training = container.training
    container.eval()
    with torch.random.fork_rng(devices=[]), torch.no_grad(), accelerator.autocast():
        torch.manual_seed(config.seed + 7919 * (1 + accelerator.process_index))  # validation noise is reproducible
        for index, batch in enumerate(loader):
            if config.val_batches and index >= config.val_batches:
                break
            for key, value in task.validation_step(batch).items():
                totals[key] = totals.get(key, 0.0) + _scalar(value)
            batches += 1
    container.train(was_training)
    keys = sorted(totals)
    packed = torch.tensor([totals[k] for k in keys] + [float(batches)], dtype=torch.float64, device=accelerator.device)
    packed = accelerator.reduce(packed, reduction="sum")
    count = max(packed[-1].item(), 1.0)
    return {k: packed[i].item() / count for i, k in enumerate(keys)}


def train(
    task: Task,
    *,
    train_dataset: Dataset,
    val_dataset: Dataset | None,
    config: TrainingConfig,
    state_dir: str | Path,
    resume: bool = False,
    progress: ProgressFn = no_progress,
    description: str = "train",
    device: str | None = "auto",
) -> TrainResult:
    """Train ``task`` for ``config.steps`` optimizer steps; return a ``TrainResult``.

    Args:
        task: built after ``seed_everything(config.seed)`` (same seed on every rank).
        train_dataset / val_dataset: map-style datasets (see the module docstring for ``epoch_indexed``
            and ``collate``); ``val_dataset`` may be None or empty (no validation).
        config: the stage's resolved ``TrainingConfig`` (``medm2g_core.config.stage_training``).
        state_dir: where resumable state goes (``BUNDLE/training/<stage>/``); only rank 0 writes there.
        resume: continue from the latest complete checkpoint in ``state_dir`` (fresh start when none).
            Without it, old checkpoints in ``state_dir`` are removed.
        progress: receives a ``ProgressEvent`` per step (rank 0 only) with the losses and learning rate.
        description: the progress task name (e.g. "align").
        device: ``auto|cpu|cuda[:N]|mps`` (``training.devices.resolve_device``: the rules of inference's
            ``--device``); a requested device that is missing is a ``ConfigError`` before anything is built,
            never a silent run on the CPU. None = the device this run's ``process_state`` was built for.
    """
    started = time.monotonic()
    state_dir = Path(state_dir)
    accelerator = _accelerator(config, device)
    rank, world = accelerator.process_index, accelerator.num_processes
    if not accelerator.is_main_process:
        progress = no_progress

    container = _TaskModule(task)
    optimizer = build_optimizer(container, config)
    train_loader = _loader(train_dataset, config, shuffle=True, drop_last=True)
    if len(train_loader) // world == 0:
        raise ConfigError(
            f"{description}: the training set has {len(train_dataset)} items, fewer than one global batch "
            f"({config.batch_size} × {world} processes); lower training.batch_size or add patients"
        )
    model, optimizer, train_loader = accelerator.prepare(container, optimizer, train_loader)
    val_loader = None
    if val_dataset is not None and len(val_dataset) > 0:
        val_loader = accelerator.prepare_data_loader(_loader(val_dataset, config, shuffle=False, drop_last=False))

    ema = EMA(dict(container.parts.items()), decay=config.ema_decay) if config.ema_decay else None
    if hasattr(task, "on_train_start"):
        task.on_train_start(accelerator)

    state_signature = {
        "config": asdict(config),
        "num_processes": world,
        "train_items": len(train_dataset),
    }
    start_step, resumed_from, val_history = 0, None, []
    latest = ckpt.latest_checkpoint(state_dir) if resume else None
    if latest is not None:
        saved = ckpt.load_checkpoint(accelerator, latest, ema=ema)
        _check_compatible(saved, state_signature, latest)
        start_step = resumed_from = int(saved["step"])
        val_history = list(saved.get("val_history", []))
    else:
        if accelerator.is_main_process:
            ckpt.clear_checkpoints(state_dir)
            state_dir.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        # Data randomness (dropout, noise) differs per rank; the model was built with the shared seed.
        seed_everything(config.seed + rank)

    parameters = [p for p in container.parameters() if p.requires_grad]
    batches = _micro_batches(train_loader, start_step * config.grad_accum)
    last_losses: dict[str, float] = {}
    final_val: dict[str, float] = val_history[-1] if val_history else {}
    last_checkpoint = latest
    model.train()
    progress(ProgressEvent(task=description, completed=start_step, total=config.steps, message="resumed" if resumed_from else None))

    interrupt = _InterruptRequest()  # Ctrl-C: finish this step, save, stop (exit 130 in the CLI)
    with interrupt.installed(world == 1):
        for step in range(start_step, config.steps):
            lr = get_lr(step, lr=config.lr, warmup_steps=config.warmup_steps, total_steps=config.steps, min_lr_ratio=config.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            sums: dict[str, float] = {}
            for _ in range(config.grad_accum):
                batch = next(batches)
                with accelerator.accumulate(model):
                    out = model(batch, step)
                    if "loss" not in out:
                        raise TypeError(f"{type(task).__name__}.training_step must return a dict with 'loss'")
                    accelerator.backward(out["loss"])
                    if accelerator.sync_gradients and config.grad_clip:
                        accelerator.clip_grad_norm_(parameters, config.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for key, value in out.items():
                    sums[key] = sums.get(key, 0.0) + _scalar(value)
            last_losses = {k: v / config.grad_accum for k, v in sums.items()}
            if not math.isfinite(last_losses["loss"]):
                raise FloatingPointError(f"{description}: loss became {last_losses['loss']} at step {step + 1}; lower training.lr")
            done = step + 1
            if ema is not None:
                ema.update(dict(container.parts.items()))
            if done % max(config.log_every, 1) == 0 or done == config.steps:
                progress(ProgressEvent(task=description, completed=done, total=config.steps, metrics={**last_losses, "lr": lr}))
            if val_loader is not None and ((config.val_every and done % config.val_every == 0) or done == config.steps):
                final_val = _validate(task, model, val_loader, accelerator, config)
                val_history.append({"step": done, **final_val})
                if hasattr(task, "on_validation") and accelerator.is_main_process:
                    task.on_validation(done, state_dir / "samples")
                progress(ProgressEvent(task=description, completed=done, total=config.steps, metrics={**last_losses, **{f"val_{k}": v for k, v in final_val.items()}}))
            if (config.save_every and done % config.save_every == 0) or done == config.steps or interrupt.requested:
                last_checkpoint = ckpt.save_checkpoint(
                    accelerator, state_dir, step=done, trainer_state={**state_signature, "val_history": val_history}, keep=config.keep_checkpoints,
                    ema=ema,
                )
            if interrupt.requested:
                raise KeyboardInterrupt  # after saving step ``done``: --resume continues exactly from here

    if start_step >= config.steps and val_loader is not None and not final_val:
        final_val = _validate(task, model, val_loader, accelerator, config)
    accelerator.wait_for_everyone()
    return TrainResult(
        steps=config.steps,
        resumed_from=resumed_from,
        last_losses=last_losses,
        val_history=val_history,
        final_val=final_val,
        ema_state_dicts=ema.state_dicts() if ema is not None else None,
        checkpoint=last_checkpoint,
        seconds=time.monotonic() - started,
        num_processes=world,
        is_main_process=accelerator.is_main_process,
        device=str(_device_of(accelerator.device)),
    )


def _check_compatible(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    """Resuming is exact only with the same batch layout, seed and process count."""
    old, new = saved.get("config", {}), current["config"]
    fixed = ("batch_size", "grad_accum", "seed", "lr", "warmup_steps", "ema_decay")
    changed = [k for k in fixed if old.get(k) != new.get(k)]
    if saved.get("num_processes") != current["num_processes"]:
        changed.append(f"num_processes ({saved.get('num_processes')} → {current['num_processes']})")
    if saved.get("train_items") != current["train_items"]:
        changed.append(f"training items ({saved.get('train_items')} → {current['train_items']})")
    if changed:
        raise ConfigError(
            f"{where}: cannot resume exactly, these changed since the checkpoint: {', '.join(changed)}; "
            "restore them or start again without --resume"
        )
