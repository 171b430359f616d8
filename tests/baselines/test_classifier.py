"""The plain classifier (peer of X-ray → label text, probe of label → X-ray): it learns, it saves, its features name it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medm2g_core.baselines.classifier import (
    ClassifierFeatures, ImageClassifier, ImageClassifierConfig, per_class_accuracy, standardise, train_classifier, weights_sha256,
)
from medm2g_core.config import TrainingConfig


def _images(count: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """Two classes a convolution can tell apart only by shape: a bright disc vs a bright bar, anywhere, same brightness."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :48]
    images, labels = [], []
    for index in range(count):
        label = index % 2
        cy, cx = rng.integers(14, 34, size=2)
        shape = ((yy - cy) ** 2 + (xx - cx) ** 2 < 64) if label == 0 else ((abs(yy - cy) < 2) & (abs(xx - cx) < 14))
        images.append((rng.normal(100, 10, (48, 48)) + 80 * shape).astype(np.float32))
        labels.append(label)
    return images, labels


def test_standardise_sees_any_range_alike() -> None:
    image = np.linspace(0, 1, 32 * 40, dtype=np.float32).reshape(32, 40)
    a, b = standardise([image], 16), standardise([image * 4095 + 7], 16)
    assert a.shape == (1, 1, 16, 16) and torch.allclose(a, b, atol=1e-5) and a.min() >= -1 and a.max() <= 1


def test_a_trained_classifier_beats_chance_on_held_out_images(tmp_path) -> None:
    images, labels = _images(96, seed=0)
    held_images, held_labels = _images(40, seed=1)
    config = ImageClassifierConfig(classes=["disc", "bar"], size=32, channels=[8, 16, 16], strides=[2, 2, 2])
    training = TrainingConfig(steps=120, batch_size=16, lr=2e-3, warmup_steps=5, seed=0)
    model, result = train_classifier(standardise(images, 32), labels, config=config, training=training,
                                     state_dir=tmp_path / "state", device="cpu")
    assert result.steps == 120
    scores = per_class_accuracy(model.predict(standardise(held_images, 32)).tolist(), held_labels, config.classes)
    assert scores["accuracy"] >= 0.85 and scores["n"] == 40 and set(scores["per_class"]) == {"disc", "bar"}
    # an untrained network of the same shape is near chance: the margin is the training's
    torch.manual_seed(0)
    untrained = ImageClassifier(config).eval()
    chance = per_class_accuracy(untrained.predict(standardise(held_images, 32)).tolist(), held_labels, config.classes)
    assert scores["accuracy"] - chance["accuracy"] >= 0.25

    model.save(tmp_path / "probe")
    again = ImageClassifier.load(tmp_path / "probe")
    x = standardise(held_images[:4], 32)
    assert torch.equal(again.predict(x), model.predict(x))
    digest = weights_sha256(tmp_path / "probe")
    features = ClassifierFeatures(again, name=f"classifier[sha256 {digest[:12]}]")
    out = features(np.stack([(im - im.min()) / (im.max() - im.min()) for im in held_images[:3]]))
    assert out.shape == (3, 16) and np.isfinite(out).all() and len(digest) == 64


def test_per_class_accuracy_leaves_absent_classes_out_of_the_mean() -> None:
    scores = per_class_accuracy([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b", "c"])
    assert scores["per_class"] == {"a": 1.0, "b": pytest.approx(2 / 3), "c": None}
    assert scores["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2) and scores["accuracy"] == 0.75


def _finding_images(count: int, seed: int) -> tuple[list[np.ndarray], list[list[int]]]:
    """Two findings, each present or not: a bright dot near the top-right corner, a dark band at the bottom."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(count):
        dot, band = (int(v) for v in rng.integers(0, 2, size=2))
        image = rng.normal(100, 10, (32, 32)).astype(np.float32)
        if dot:
            cy, cx = rng.integers(4, 9), rng.integers(22, 27)
            image[cy - 2:cy + 2, cx - 2:cx + 2] += 90
        if band:
            image[24:30] -= 60
        images.append(image)
        labels.append([dot, band])
    return images, labels


def test_a_multi_label_probe_scores_each_finding_by_auc(tmp_path) -> None:
    from medm2g_core.baselines.classifier import per_finding_auc

    images, labels = _finding_images(96, seed=0)
    held_images, held_labels = _finding_images(48, seed=1)
    config = ImageClassifierConfig(classes=["dot", "band"], size=32, channels=[8, 16, 16], strides=[2, 2, 2], multi_label=True)
    training = TrainingConfig(steps=120, batch_size=16, lr=2e-3, warmup_steps=5, seed=0)
    model, _ = train_classifier(standardise(images, 32), labels, config=config, training=training,
                                state_dir=tmp_path / "state", device="cpu")
    auc = per_finding_auc(model, standardise(held_images, 32), held_labels)
    assert set(auc) == {"dot", "band"} and min(auc.values()) >= 0.9, auc
    # images that lost their findings score like negatives: the AUC reads the findings, not the image's identity
    erased = per_finding_auc(model, standardise(_finding_images(48, seed=2)[0], 32), held_labels)
    assert max(v for v in erased.values() if v is not None) <= 0.75, erased
    model.save(tmp_path / "probe")
    assert ImageClassifier.load(tmp_path / "probe").config.multi_label
    with pytest.raises(ValueError, match="one 0/1 row"):
        train_classifier(standardise(images[:4], 32), [0, 1, 0, 1], config=config, training=training, state_dir=tmp_path / "s2")


def test_roc_auc_matches_torchmetrics_with_ties() -> None:
    from torchmetrics.functional.classification import binary_auroc

    from medm2g_core.metrics.clinical import roc_auc

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    scores = np.round(rng.normal(size=40) + labels, 1)
    assert roc_auc(scores, labels) == pytest.approx(float(binary_auroc(torch.tensor(scores), torch.tensor(labels))), abs=1e-6)
    assert roc_auc(scores, np.zeros(40, dtype=int)) is None
