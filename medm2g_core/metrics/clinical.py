"""Clinical efficacy: precision / recall / F1 of the finding labels of generated against reference reports.

Labels come from ``data.labeler`` (rule-based, CheXpert style; a ``Labeler`` can replace it).
Scoring convention (``label_scores``): a label counts as *present* when it is 1 **or −1**
(uncertain treated as positive, CheXpert's "U-Ones"), and absent when 0 or blank. Per label TP/FP/FN
between generated (prediction) and reference labels give precision, recall and F1; **micro** pools the
counts over all labels, **macro** averages per-label values over labels that are present in at least one
reference or prediction (a label never present anywhere has an undefined F1 and is left out, listed in
``undefined_labels``). The labeler's name is part of every metric name, because CE numbers from
different labelers are not comparable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from medm2g_core.data.labeler import (  # noqa: F401 - the labeler's names, re-exported for scorers
    LABELS,
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    Labeler,
    RuleBasedLabeler,
    label_report,
)


@dataclass
class LabelScores:
    """Precision/recall/F1 per label and pooled; counts in ``support`` (reference positives)."""

    labeler: str
    per_label: dict[str, dict[str, float]]
    micro: dict[str, float]
    macro: dict[str, float]
    support: dict[str, int]
    undefined_labels: list[str] = field(default_factory=list)
    predicted_labels: dict[str, dict[str, int | None]] = field(default_factory=dict)
    reference_labels: dict[str, dict[str, int | None]] = field(default_factory=dict)


def _present(value: int | None) -> bool:
    return value in (POSITIVE, UNCERTAIN)


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": float(tp), "fp": float(fp), "fn": float(fn)}


def label_scores(
    predictions: Mapping[str, str],
    references: Mapping[str, str],
    *,
    labeler: Labeler | None = None,
    labels: Sequence[str] | None = None,
) -> LabelScores:
    """Clinical-efficacy precision/recall/F1 between generated and reference reports.

    Args:
        predictions: report id → generated text; references: report id → reference text (same ids).
        labeler: a ``Labeler``; default ``RuleBasedLabeler``. Its ``name`` is recorded.
        labels: which labels to score (default: the labeler's own ``labels`` attribute when it has one — e.g. the
            Kermany classes — else all of ``LABELS``).

    Uncertain (−1) counts as present, blank and 0 as absent (see the module docstring).
    """
    if set(predictions) != set(references):
        raise ValueError("prediction and reference ids differ; pair the reports first")
    labeler = labeler or RuleBasedLabeler()
    labels = tuple(labels if labels is not None else getattr(labeler, "labels", LABELS))
    ids = sorted(predictions)
    predicted = dict(zip(ids, labeler([predictions[i] for i in ids])))
    reference = dict(zip(ids, labeler([references[i] for i in ids])))
    per_label: dict[str, dict[str, float]] = {}
    support: dict[str, int] = {}
    totals = [0, 0, 0]
    undefined: list[str] = []
    for label in labels:
        tp = sum(_present(predicted[i].get(label)) and _present(reference[i].get(label)) for i in ids)
        fp = sum(_present(predicted[i].get(label)) and not _present(reference[i].get(label)) for i in ids)
        fn = sum(not _present(predicted[i].get(label)) and _present(reference[i].get(label)) for i in ids)
        support[label] = tp + fn
        per_label[label] = _prf(tp, fp, fn)
        if tp + fp + fn == 0:
            undefined.append(label)
        totals = [totals[0] + tp, totals[1] + fp, totals[2] + fn]
    micro = _prf(*totals)
    defined = [per_label[label] for label in labels if label not in undefined]
    macro = {k: (sum(v[k] for v in defined) / len(defined) if defined else 0.0) for k in ("precision", "recall", "f1")}
    return LabelScores(
        labeler=labeler.name, per_label=per_label, micro={k: micro[k] for k in ("precision", "recall", "f1")},
        macro=macro, support=support, undefined_labels=undefined, predicted_labels=predicted, reference_labels=reference,
    )


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """ROC AUC of ``scores`` for binary ``labels`` (Mann–Whitney: the chance that a positive outscores a negative,
    ties counted half) — how an image probe's score for a finding separates the images whose reports name it;
    None when only one class is present."""
    import numpy as np

    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(int)
    positive, negative = scores[labels == 1], scores[labels == 0]
    if not len(positive) or not len(negative):
        return None
    greater = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return float(greater / (len(positive) * len(negative)))
