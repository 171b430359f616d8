"""Cross-modal retrieval metrics of the aligned space (pure functions) and embedding a dataset."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def retrieval_metrics(query: torch.Tensor, key: torch.Tensor, *, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Query i's match is key i. (n, D) × (n, D) → Recall@k, median and mean rank (1 = best), chance R@1.

    Cosine similarity; ties are broken pessimistically (a tie with the match counts against it).
    """
    if query.shape[0] != key.shape[0] or query.shape[0] == 0:
        raise ValueError("query and key must hold the same, non-zero number of rows")
    similarity = F.normalize(query.float(), dim=-1) @ F.normalize(key.float(), dim=-1).T  # (n, n)
    matched = similarity.diagonal()[:, None]
    ranks = (similarity >= matched).sum(dim=1).float()  # 1-based rank of the true match
    n = query.shape[0]
    out = {f"R@{k}": float((ranks <= k).float().mean()) for k in ks}
    out.update({"median_rank": float(ranks.median()), "mean_rank": float(ranks.mean()), "n": float(n), "chance_R@1": 1.0 / n})
    return out


@torch.no_grad()
def embed_align_dataset(model: Any, dataset: Any, *, batch_size: int = 16) -> dict[str, Any]:
    """Embed an evaluation ``AlignDataset``: ``{"patient_id": [...], "report": (n, D), "has_text": (n,),
    modality: (n, D), "present": {modality: (n,)}}`` (image embeddings = mean over the N slices)."""
    from medm2g_core.align.task import AlignTask

    was_training = model.training
    model.eval()
    task = AlignTask(model, config=None)  # type: ignore[arg-type]
    chunks: list[dict[str, Any]] = []
    for start in range(0, len(dataset), batch_size):
        batch = dataset.collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        text, _, _ = model.encode_text(batch["text"])
        images = {name: views[:, 0].cpu() for name, views in task.image_embeddings(batch).items()}
        chunks.append({"patient_id": batch["patient_id"], "report": text.cpu(), "has_text": batch["has_text"], "images": images, "present": batch["present"]})
    model.train(was_training)
    names = list(chunks[0]["images"]) if chunks else []
    return {
        "patient_id": [pid for chunk in chunks for pid in chunk["patient_id"]],
        "report": torch.cat([c["report"] for c in chunks]) if chunks else torch.empty(0),
        "has_text": torch.cat([c["has_text"] for c in chunks]) if chunks else torch.empty(0, dtype=torch.bool),
        "images": {name: torch.cat([c["images"][name] for c in chunks]) for name in names},
        "present": {name: torch.cat([c["present"][name] for c in chunks]) for name in names},
    }


def align_retrieval_report(embeddings: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Report↔image for every imaging modality and CT↔MRI, on patients that have both sides."""
    out: dict[str, dict[str, float]] = {}
    images, present, has_text = embeddings["images"], embeddings["present"], embeddings["has_text"]
    for name, embedding in images.items():
        rows = present[name] & has_text
        if int(rows.sum()) >= 2:
            out[f"report->{name}"] = retrieval_metrics(embeddings["report"][rows], embedding[rows])
            out[f"{name}->report"] = retrieval_metrics(embedding[rows], embeddings["report"][rows])
    if "ct" in images:
        for name in images:
            if name.startswith("mri"):
                rows = present["ct"] & present[name]
                if int(rows.sum()) >= 2:
                    out[f"ct->{name}"] = retrieval_metrics(images["ct"][rows], images[name][rows])
                    out[f"{name}->ct"] = retrieval_metrics(images[name][rows], images["ct"][rows])
    return out
