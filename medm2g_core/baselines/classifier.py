"""A plain image classifier trained on a cohort's real training images: a peer and a fixed probe.

Used twice where a cohort has image labels (Kermany's normal / bacterial / viral pneumonia, ../shared/EVALUATION.md):

- **the peer of image → label text**: what a researcher would write without medm2g — a MONAI ``Classifier``
  (four strided conv blocks, a linear head) trained with cross-entropy on the training split; its predicted
  class, written as that class's text, is scored beside the flow's generated reports;
- **the fixed probe of label → image generation**: the same trained classifier, never retrained, says which class
  a generated image shows (per-class accuracy, beside its accuracy on the real held-out images), and its pooled
  last-block features are the FID/KID extractor. Its name carries the sha256 of its weights, so numbers of
  different runs compare only when the probe is the same file.

Where the labels are findings rather than one class per image (the phantom chest X-rays: cardiomegaly, effusion,
pacemaker, read from the reports by ``data.labeler.probe_findings``), ``multi_label`` trains it with a sigmoid per
finding, and ``per_finding_auc`` scores generated images against the findings their reports name.

Images are standardised per image (0.5/99.5 percentiles → [-1, 1]) and resized to ``size`` pixels per side, so a
JPEG in 0..255 and a generated 16-bit PNG are seen alike. Trained by the one training loop (``training.loop.train``:
Accelerate, seeds, resumable state) with small random translations. Stored as ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CONFIG_CLASS = "ImageClassifier"
WEIGHTS = "model.safetensors"


@dataclass
class ImageClassifierConfig:
    """Sizes of the classifier and the class names (index = output unit)."""

    classes: list[str] = field(default_factory=list)
    size: int = 64
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 64])
    strides: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    shift: int = 3  # training only: random translations up to this many pixels
    multi_label: bool = False  # classes are findings, each present or not (sigmoid + binary cross-entropy)


def standardise(images: Sequence[np.ndarray] | np.ndarray, size: int) -> torch.Tensor:
    """2D images (any range, any size) → ``(N, 1, size, size)`` float32 in [-1, 1] (per-image 0.5/99.5 percentiles)."""
    out = []
    for image in images:
        array = np.asarray(image, dtype=np.float32)
        if array.ndim == 3:  # colour JPEG/PNG → grey
            array = array.mean(axis=-1)
        low, high = (float(v) for v in np.percentile(array, (0.5, 99.5)))
        unit = np.clip((array - low) / max(high - low, 1e-6) * 2 - 1, -1, 1).astype(np.float32)
        out.append(F.interpolate(torch.from_numpy(unit)[None, None], size=(size, size), mode="area")[0])
    return torch.stack(out) if out else torch.zeros(0, 1, size, size)


class ImageClassifier(nn.Module):
    """``Classifier`` of MONAI with ``features`` (pooled last conv block) and ``predict`` (class indices)."""

    def __init__(self, config: ImageClassifierConfig):
        super().__init__()
        from monai.networks.nets import Classifier

        if len(config.classes) < 2:
            raise ValueError(f"a classifier needs at least two classes, got {config.classes}")
        self.config = config
        self.net = Classifier(in_shape=(1, config.size, config.size), classes=len(config.classes),
                              channels=tuple(config.channels), strides=tuple(config.strides))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) mean of the last conv block's channels."""
        return self.net.net(x).mean(dim=(-2, -1))

    @torch.no_grad()
    def scores(self, x: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
        """(N, classes) logits."""
        return torch.cat([self.net(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) else \
            torch.zeros(0, len(self.config.classes))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
        return self.scores(x, batch_size=batch_size).argmax(dim=1)

    def save(self, directory: str | Path) -> Path:
        """``config.json`` + ``model.safetensors`` into ``directory`` (created)."""
        from medm2g_core.serialization import save_config, save_weights

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_config(directory, self.config, class_name=CONFIG_CLASS)
        save_weights(directory / WEIGHTS, self.state_dict())
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "ImageClassifier":
        from medm2g_core.serialization import load_config, load_state_strict, load_weights, refuse_pickles

        directory = Path(directory)
        refuse_pickles(directory)
        model = cls(load_config(directory, ImageClassifierConfig, class_name=CONFIG_CLASS))
        load_state_strict(model, load_weights(directory / WEIGHTS), where=str(directory))
        return model.eval()


def weights_sha256(directory: str | Path) -> str:
    """sha256 of the saved weights file: the probe's identity in every metric name."""
    return hashlib.sha256((Path(directory) / WEIGHTS).read_bytes()).hexdigest()


class _Images(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.x[index], "label": self.y[index]}


class _ClassifierTask:
    """``Task`` for ``training.loop.train``: cross-entropy with random translations of up to ``shift`` pixels."""

    def __init__(self, model: ImageClassifier):
        self.model = model

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"classifier": self.model}

    def training_step(self, batch: dict[str, torch.Tensor], *, step: int) -> dict[str, torch.Tensor]:
        shift = self.model.config.shift
        images = batch["image"]
        if shift:
            dy, dx = torch.randint(-shift, shift + 1, (2,)).tolist()
            images = torch.roll(images, shifts=(dy, dx), dims=(-2, -1))
        logits = self.model(images)
        if self.model.config.multi_label:
            return {"loss": F.binary_cross_entropy_with_logits(logits, batch["label"].float())}
        return {"loss": F.cross_entropy(logits, batch["label"])}

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        logits = self.model(batch["image"])
        if self.model.config.multi_label:
            return {"loss": float(F.binary_cross_entropy_with_logits(logits, batch["label"].float()))}
        return {"loss": float(F.cross_entropy(logits, batch["label"])),
                "accuracy": float((logits.argmax(dim=1) == batch["label"]).float().mean())}


def train_classifier(
    images: torch.Tensor,
    labels: Sequence[int] | Sequence[Sequence[int]],
    *,
    config: ImageClassifierConfig,
    training: Any,
    state_dir: str | Path,
    device: str = "auto",
    progress: Any = None,
) -> tuple[ImageClassifier, Any]:
    """Train an ``ImageClassifier`` on standardised ``images`` (N, 1, size, size) with class indices ``labels``
    (or, with ``config.multi_label``, one 0/1 row per image, a column per class).

    ``training`` is a ``TrainingConfig`` (steps, batch size, lr, seed...). Returns ``(model on the CPU in eval mode,
    TrainResult)``.
    """
    from medm2g_core.training.loop import seed_everything, train
    from medm2g_core.types import no_progress

    y = torch.as_tensor(np.asarray(labels, dtype=np.float32 if config.multi_label else np.int64))
    if config.multi_label and (y.ndim != 2 or y.shape[1] != len(config.classes)):
        raise ValueError(f"multi-label targets must be one 0/1 row of {len(config.classes)} per image, got shape {tuple(y.shape)}")
    if len(images) != len(y):
        raise ValueError(f"{len(images)} images but {len(y)} labels")
    seed_everything(training.seed)
    model = ImageClassifier(config)
    result = train(_ClassifierTask(model), train_dataset=_Images(images, y), val_dataset=None, config=training,
                   state_dir=state_dir, progress=progress or no_progress, description="classifier", device=device)
    return model.cpu().eval(), result


def per_finding_auc(model: ImageClassifier, images: torch.Tensor, labels: Sequence[Sequence[int]]) -> dict[str, float | None]:
    """A multi-label classifier's ROC AUC per finding (``metrics.clinical.roc_auc``) on standardised ``images``
    whose findings are ``labels`` (0/1 rows); None for a finding all or none of them have."""
    from medm2g_core.metrics.clinical import roc_auc

    scores = model.scores(images).numpy()
    truth = np.asarray(labels, dtype=int).reshape(len(scores), -1)
    return {name: roc_auc(scores[:, k], truth[:, k]) for k, name in enumerate(model.config.classes)}


def per_class_accuracy(predicted: Sequence[int], truth: Sequence[int], classes: Sequence[str]) -> dict[str, Any]:
    """``{"accuracy": overall, "balanced_accuracy": mean of the per-class recalls, "per_class": {name: recall},
    "n": count, "support": {name: count}}``; a class without examples has recall None and is left out of the mean."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    per_class: dict[str, float | None] = {}
    support: dict[str, int] = {}
    for index, name in enumerate(classes):
        mask = truth == index
        support[name] = int(mask.sum())
        per_class[name] = float((predicted[mask] == index).mean()) if mask.any() else None
    recalls = [v for v in per_class.values() if v is not None]
    return {"accuracy": float((predicted == truth).mean()) if len(truth) else None,
            "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
            "per_class": per_class, "support": support, "n": int(len(truth))}


@dataclass
class ClassifierFeatures:
    """A ``metrics.distribution.FeatureExtractor`` from a trained classifier: images (N, H, W) in [0, 1] → pooled
    features. ``name`` = ``classifier[<what>, sha256 <first 12>]``."""

    model: ImageClassifier
    name: str

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = standardise(list(np.asarray(images)), self.model.config.size)
        return self.model.features(x).double().numpy()


def classifier_features(directory: str | Path, *, what: str | None = None) -> ClassifierFeatures:
    """The FID/KID extractor of a saved ``ImageClassifier`` (e.g. the demo's ``OUT/xray-probe``), named
    ``<folder>[<what>, sha256 <first 12>]``: numbers compare only between runs whose sha256 is the same."""
    directory = Path(directory)
    digest = weights_sha256(directory)[:12]
    return ClassifierFeatures(ImageClassifier.load(directory), name=f"{directory.name}[{what + ', ' if what else ''}sha256 {digest}]")
