"""Cross-modal retrieval metrics of the aligned space (pure functions) and embedding a dataset.

Two notions of a hit, each reported with its chance level so that a figure can be judged:

- **exact patient** (``R@k``): query i's match is key i. Chance ``R@k = k / n``, median rank ``(n + 1) / 2``.
- **same labels** (``label_R@k``): a retrieved key is a hit when its label vector (``labels.json``) equals
  the query's. Templated reports make several patients near-identical (two normal chests read the same),
  so exact-patient retrieval is ambiguous where label-aware retrieval is not. Chance: for query i with
  ``m_i`` keys sharing its labels (itself included) among ``n``, a random ranking puts one of them in the
  top k with probability ``1 − C(n − m_i, k) / C(n, k)``; ``label_chance_R@k`` is the mean over queries.
- **per finding** (``auc_<finding>``): for every query positive for the finding, the AUC with which its
  similarities rank the finding-positive keys above the finding-negative ones, averaged over those
  queries (chance 0.5); ``finding_auc`` is the mean over findings that could be scored.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F


def label_vectors(labels: Sequence[dict[str, int] | None]) -> tuple[list[str], torch.Tensor] | None:
    """``labels.json`` dicts → (finding names, (n, F) 0/1 tensor); None unless every patient has labels.

    A finding missing from one patient's dict counts as 0 there.
    """
    if not labels or any(not entry for entry in labels):
        return None
    names = sorted({name for entry in labels for name in entry})
    return names, torch.tensor([[int(bool(entry.get(name, 0))) for name in names] for entry in labels], dtype=torch.long)


def _chance_hit_within(n: int, matching: torch.Tensor, k: int) -> float:
    """Mean over queries of P(a uniformly random ranking of n keys puts one of ``matching[i]`` in the top k)."""
    k = min(k, n)
    values = [1.0 - math.comb(n - int(m), k) / math.comb(n, k) for m in matching.tolist()]
    return float(sum(values) / len(values))


def _mean_auc(similarity: torch.Tensor, query_positive: torch.Tensor, key_positive: torch.Tensor) -> float | None:
    """Mean over positive queries of the AUC of their similarity row for key_positive vs the rest (ties ½)."""
    positives, negatives = key_positive.nonzero().flatten(), (~key_positive).nonzero().flatten()
    rows = query_positive.nonzero().flatten()
    if len(positives) == 0 or len(negatives) == 0 or len(rows) == 0:
        return None
    scores = []
    for row in rows.tolist():
        pos, neg = similarity[row, positives][:, None], similarity[row, negatives][None, :]
        scores.append(float((pos > neg).float().mean() + 0.5 * (pos == neg).float().mean()))
    return sum(scores) / len(scores)


def retrieval_metrics(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    ks: tuple[int, ...] = (1, 5, 10),
    labels: torch.Tensor | None = None,
    finding_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Query i's match is key i. (n, D) × (n, D) → Recall@k, median and mean rank (1 = best), chance.

    Args:
        query, key: paired embeddings (cosine similarity; ties are broken pessimistically — a tie with
            the match counts against it).
        ks: the k of Recall@k.
        labels: (n, F) 0/1 label vectors of the n patients (``label_vectors``); adds the label-aware
            ``label_R@k``, ``label_median_rank`` (rank of the first same-label key), their chance levels
            and per-finding AUCs (module docstring).
        finding_names: names of the F label columns (for ``auc_<name>``); default ``f0, f1, ...``.

    Returns:
        ``R@k``, ``chance_R@k``, ``median_rank``, ``chance_median_rank``, ``mean_rank``, ``n`` and, with labels, ``label_R@k``,
        ``label_chance_R@k``, ``label_median_rank``, ``label_groups`` (distinct label vectors),
        ``auc_<finding>`` and ``finding_auc``.
    """
    if query.shape[0] != key.shape[0] or query.shape[0] == 0:
        raise ValueError("query and key must hold the same, non-zero number of rows")
    n = query.shape[0]
    similarity = F.normalize(query.float(), dim=-1) @ F.normalize(key.float(), dim=-1).T  # (n, n)
    matched = similarity.diagonal()[:, None]
    ranks = (similarity >= matched).sum(dim=1).float()  # 1-based rank of the true match
    out = {f"R@{k}": float((ranks <= k).float().mean()) for k in ks}
    out.update({f"chance_R@{k}": min(k, n) / n for k in ks})
    out.update({"median_rank": float(ranks.median()), "chance_median_rank": (n + 1) / 2, "mean_rank": float(ranks.mean()), "n": float(n)})
    if labels is None:
        return out
    if labels.shape[0] != n:
        raise ValueError(f"labels has {labels.shape[0]} rows for {n} queries")
    same = (labels[:, None, :] == labels[None, :, :]).all(dim=-1)  # (n, n): key j shares query i's labels
    # Rank of the first same-label key: keys strictly more similar than the best same-label key, + 1
    # (ties broken pessimistically, as above).
    best_same = similarity.masked_fill(~same, float("-inf")).max(dim=1, keepdim=True).values
    label_ranks = (similarity.masked_fill(same, float("-inf")) >= best_same).sum(dim=1).float() + 1
    matching = same.sum(dim=1)
    out.update({f"label_R@{k}": float((label_ranks <= k).float().mean()) for k in ks})
    out.update({f"label_chance_R@{k}": _chance_hit_within(n, matching, k) for k in ks})
    out["label_median_rank"] = float(label_ranks.median())
    out["label_groups"] = float(torch.unique(labels, dim=0).shape[0])
    names = list(finding_names) if finding_names is not None else [f"f{i}" for i in range(labels.shape[1])]
    aucs = []
    for column, name in enumerate(names):
        positive = labels[:, column].bool()
        auc = _mean_auc(similarity, positive, positive)
        if auc is not None:
            out[f"auc_{name}"] = auc
            aucs.append(auc)
    if aucs:
        out["finding_auc"] = sum(aucs) / len(aucs)
    return out


@torch.no_grad()
def embed_align_dataset(model: Any, dataset: Any, *, batch_size: int = 16) -> dict[str, Any]:
    """Embed an evaluation ``AlignDataset``: ``{"patient_id": [...], "labels": [dict | None, ...],
    "report": (n, D), "has_text": (n,), "images": {modality: (n, D)}, "present": {modality: (n,)}}``
    (image embeddings = mean over a volume's N slices)."""
    from medm2g_core.align.task import AlignTask

    was_training = model.training
    model.eval()
    task = AlignTask(model, config=None)  # type: ignore[arg-type]
    chunks: list[dict[str, Any]] = []
    for start in range(0, len(dataset), batch_size):
        batch = dataset.collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        text, _, _ = model.encode_text(batch["text"])
        images = {name: views[:, 0].cpu() for name, views in task.image_embeddings(batch).items()}
        chunks.append({"patient_id": batch["patient_id"], "labels": batch.get("labels", [None] * len(batch["patient_id"])),
                       "report": text.cpu(), "has_text": batch["has_text"], "images": images, "present": batch["present"]})
    model.train(was_training)
    names = list(chunks[0]["images"]) if chunks else []
    return {
        "patient_id": [pid for chunk in chunks for pid in chunk["patient_id"]],
        "labels": [entry for chunk in chunks for entry in chunk["labels"]],
        "report": torch.cat([c["report"] for c in chunks]) if chunks else torch.empty(0),
        "has_text": torch.cat([c["has_text"] for c in chunks]) if chunks else torch.empty(0, dtype=torch.bool),
        "images": {name: torch.cat([c["images"][name] for c in chunks]) for name in names},
        "present": {name: torch.cat([c["present"][name] for c in chunks]) for name in names},
    }


def align_retrieval_report(embeddings: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Report↔image for every imaging modality and CT↔MRI, on patients that have both sides.

    Label-aware metrics are added for a direction when every patient in it has ``labels.json``.
    """
    out: dict[str, dict[str, float]] = {}
    images, present, has_text = embeddings["images"], embeddings["present"], embeddings["has_text"]
    all_labels = embeddings.get("labels") or [None] * len(has_text)

    def metrics(query: torch.Tensor, key: torch.Tensor, rows: torch.Tensor) -> dict[str, float]:
        vectors = label_vectors([all_labels[i] for i in rows.nonzero().flatten().tolist()])
        if vectors is None:
            return retrieval_metrics(query[rows], key[rows])
        names, labels = vectors
        return retrieval_metrics(query[rows], key[rows], labels=labels, finding_names=names)

    for name, embedding in images.items():
        rows = present[name] & has_text
        if int(rows.sum()) >= 2:
            out[f"report->{name}"] = metrics(embeddings["report"], embedding, rows)
            out[f"{name}->report"] = metrics(embedding, embeddings["report"], rows)
    if "ct" in images:
        for name in images:
            if name.startswith("mri"):
                rows = present["ct"] & present[name]
                if int(rows.sum()) >= 2:
                    out[f"ct->{name}"] = metrics(images["ct"], images[name], rows)
                    out[f"{name}->ct"] = metrics(images[name], images["ct"], rows)
    # MRI-only patients (no report, no CT): each contrast against the first MRI contrast (the MRI hub).
    mris = [name for name in images if name.startswith("mri-")]
    no_ct = ~present["ct"] if "ct" in present else torch.ones_like(has_text)
    for name in mris[1:]:
        rows = present[mris[0]] & present[name] & ~has_text & no_ct
        if int(rows.sum()) >= 2:
            out[f"{mris[0]}->{name}"] = metrics(images[mris[0]], images[name], rows)
            out[f"{name}->{mris[0]}"] = metrics(images[name], images[mris[0]], rows)
    return out
