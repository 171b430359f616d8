"""Deterministic measurements of a flow, used before/after training and for the forgetting report.

``validation_loss`` runs a task's ``validation_step`` over the first batches of a dataset with seeded
noise (stratified timesteps are fixed by ``FlowTask.validation_step``), so the same weights always give
the same number. ``evaluate_flow`` loads a flow from a bundle exactly as inference does (EMA weights,
the bundle's shared cross-attention) and measures its validation loss and, for image targets, the PSNR
of DDIM samples against the reference slices (in normalised units [-1, 1], data range 2; latent flows'
samples decoded, beside their autoencoder's own reconstruction PSNR/SSIM of the same references).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


@dataclass(frozen=True)
class Measurement:
    """How a flow's metrics were measured, stored with them (``bundle.json`` stage ``measured_with``), so that a later
    flow re-measures it the same way and the forgetting report compares like with like.

    Attributes:
        val_batches, psnr_items: validation batches and DDIM-sampled items; batch_size, seed: of those batches.
        split_seed, split_fractions: the cohort split the validation items come from.
        slices, val_items: axial slices per patient and the validation items kept (``flows.slices``, ``flows.val_items``).
    """

    val_batches: int
    psnr_items: int
    batch_size: int
    seed: int
    split_seed: int
    split_fractions: tuple[float, ...]
    slices: str | int
    val_items: int

    def record(self) -> dict[str, Any]:
        """The JSON record (``measured_with``)."""
        return {**asdict(self), "split_fractions": list(self.split_fractions)}

    @classmethod
    def from_record(cls, record: dict[str, Any], *, fallback: "Measurement") -> "Measurement":
        """A stored record; keys it lacks (bundles written before they were recorded) come from ``fallback``."""
        known = {f.name for f in fields(cls)}
        values = {**asdict(fallback), **{k: v for k, v in record.items() if k in known}}
        return cls(**{**values, "split_fractions": tuple(values["split_fractions"])})


class DatasetSubset(Dataset):
    """Evenly spaced items of a dataset (at most ``limit``), keeping its ``collate``."""

    def __init__(self, dataset: Dataset, *, limit: int):
        self.dataset = dataset
        count = len(dataset)
        if limit and count > limit:
            self.indices = [int(i * count / limit) for i in range(limit)]
        else:
            self.indices = list(range(count))
        self.collate = getattr(dataset, "collate", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index % len(self.indices)]]


def first_batch(dataset: Dataset, *, items: int) -> dict[str, Any] | None:
    """The first ``items`` items of ``dataset`` collated (None when empty)."""
    count = min(items, len(dataset))
    if count == 0:
        return None
    collate = getattr(dataset, "collate")
    return collate([dataset[i] for i in range(count)])


def spread_batch(dataset: Dataset, *, items: int) -> dict[str, Any] | None:
    """``items`` items from the centres of ``items`` equal parts of ``dataset``, collated; None when empty.

    Slice datasets list a patient's slices in order, so the first few items are one patient's lowest
    slices; spread items span patients and depths (the training sample grids use them).
    """
    count = min(items, len(dataset))
    if count == 0:
        return None
    indices = [int((i + 0.5) * len(dataset) / count) for i in range(count)]
    return getattr(dataset, "collate")([dataset[i] for i in indices])


def validation_loss(task: Any, dataset: Dataset, *, batch_size: int, batches: int = 0, seed: int = 0) -> dict[str, float]:
    """Mean of ``task.validation_step`` over the first ``batches`` batches (0 = all), noise seeded by ``seed``."""
    if len(dataset) == 0:
        return {}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=getattr(dataset, "collate"))
    modules = list(task.trainable_modules().values())
    modes = [m.training for m in modules]
    totals: dict[str, float] = {}
    count = 0
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module in modules:
            module.eval()
        for index, batch in enumerate(loader):
            if batches and index >= batches:
                break
            for key, value in task.validation_step(batch).items():
                totals[key] = totals.get(key, 0.0) + float(value)
            count += 1
    for module, mode in zip(modules, modes):
        module.train(mode)
    return {k: v / max(count, 1) for k, v in totals.items()}


def sample_psnr(task: Any, batch: dict[str, Any], *, seed: int = 0, samples: int = 1) -> float:
    """PSNR (dB, [-1, 1] units, data range 2) of the mean of ``samples`` DDIM samples vs the reference images of
    ``batch`` (an image target's). A latent flow's samples are decoded and compared with the real images, never with
    its autoencoder's reconstruction (``autoencoder_fidelity`` measures that gap)."""
    from medm2g_core.metrics.image import psnr

    drawn = task.generate(batch, seed=seed, samples=samples)
    if task.config.latent:
        autoencoder = task.autoencoders[task.pair.target]
        drawn = torch.stack([autoencoder.decode(s).clamp(-1, 1) for s in drawn])
    return float(psnr(drawn.mean(0).cpu().numpy(), reference_images(batch).numpy(), data_range=2.0))


def reference_images(batch: dict[str, Any]) -> torch.Tensor:
    """The real target images (B, 1, H, W) in [-1, 1] of a slice or X-ray batch."""
    return (batch["target"] if "target" in batch else batch["image"]).float().cpu()


@torch.no_grad()
def autoencoder_fidelity(task: Any, batch: dict[str, Any]) -> dict[str, float]:
    """A latent flow's ceiling: PSNR and SSIM ([-1, 1] units, data range 2) of its target autoencoder's
    reconstruction of ``batch``'s reference images."""
    from medm2g_core.flows.task import reconstruction_ssim
    from medm2g_core.metrics.image import psnr

    autoencoder = task.autoencoders[task.pair.target]
    reference = reference_images(batch)
    device = next(autoencoder.parameters()).device
    reconstruction = autoencoder(reference.to(device)).clamp(-1, 1).cpu().numpy()
    return {"autoencoder_psnr": float(psnr(reconstruction, reference.numpy(), data_range=2.0)),
            "autoencoder_ssim": reconstruction_ssim(reconstruction, reference.numpy())}


def evaluate_flow(bundle: str | Path, pair: Any, *, dataset: Dataset, batch_size: int, val_batches: int, psnr_items: int,
                  seed: int = 0) -> dict[str, float]:
    """Validation loss (+ PSNR for image targets) of ``flows/<pair>`` as inference would load it."""
    from medm2g_core.flows.model import FlowModel
    from medm2g_core.flows.task import FlowTask

    model = FlowModel.load(bundle, pair)
    task = FlowTask(model.network, model.align, text_vae=model.text_vae, tokenizer=model.tokenizer,
                    autoencoders=model.autoencoders, shared_trainable=False)
    from medm2g_core.modalities import Modality

    metrics = validation_loss(task, dataset, batch_size=batch_size, batches=val_batches, seed=seed)
    # The first ``psnr_items`` items, read once for the flow's sample PSNR and (latent flows) its autoencoder's.
    batch = first_batch(dataset, items=psnr_items) if psnr_items > 0 and task.pair.target is not Modality.REPORT else None
    if batch is not None:
        metrics["psnr"] = sample_psnr(task, batch, seed=seed)
        if task.config.latent:
            metrics.update(autoencoder_fidelity(task, batch))
    return metrics
