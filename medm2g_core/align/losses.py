"""Alignment losses as pure functions of tensors (DESIGN §1.2–1.3).

Symbols: ``B`` local batch, ``G`` global batch (all processes), ``D`` embedding dimension,
``s = 1/τ`` the logit scale (inverse temperature).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class _AllGatherWithGrad(torch.autograd.Function):
    """``torch.distributed`` all-gather whose backward sums the gathered gradient over ranks.

    Rank r's loss may depend on every rank's rows (they are its negatives), so the gradient of this
    rank's rows is ``Σ_r' ∂L_r'/∂x`` — an all-reduce (SUM) of the gathered gradient, of which this
    rank keeps its slice. All-reduce rather than reduce-scatter: every backend (gloo included) has it.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        ctx.rank, ctx.batch = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


def gather_with_grad(x: torch.Tensor, *, accelerator: Any | None) -> tuple[torch.Tensor, int]:
    """All-gather ``x`` (B, ...) from every process → ``(G, ...)`` and the offset of this rank's rows.

    The gradient flows back to the rank that computed each row (open_clip's ``gather_with_grad``):
    with per-rank losses whose mean over ranks is the global-batch loss (``info_nce`` scales its
    local anchors so), DDP's gradient average then equals the gradient of one process on the
    concatenated batch. Every rank must pass the same B (the training loop drops incomplete batches)
    and must run backward through it (the backward is a collective). Without an accelerator (or one
    process) returns ``(x, 0)``.
    """
    if accelerator is None or accelerator.num_processes == 1:
        return x, 0
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"{accelerator.num_processes} processes but torch.distributed is not initialised")
    return _AllGatherWithGrad.apply(x), dist.get_rank() * x.shape[0]


def contrastive_logits(query: torch.Tensor, keys: torch.Tensor, *, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """``s · normalize(query) @ normalize(keys).T``: (B, D) × (G, D) → (B, G) cosine logits."""
    return logit_scale * F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).T


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    logit_scale: torch.Tensor | float,
    a_all: torch.Tensor | None = None,
    b_all: torch.Tensor | None = None,
    offset: int = 0,
    valid_all: torch.Tensor | None = None,
    same_findings: torch.Tensor | None = None,
    semantic_weight: float = 0.0,
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): ``½ [CE(s·â b̂_allᵀ, i) + CE(s·b̂ â_allᵀ, i)]``, both directions.

    Args:
        a, b: (B, D) paired embeddings of this process (row i of ``a`` matches row i of ``b``); they
            are L2-normalised here.
        logit_scale: ``s = 1/τ`` (a learnable scalar tensor, or a float).
        a_all, b_all: (G, D) embeddings of the global batch (``gather_with_grad``); default: the
            local ones, so negatives are the local batch.
        offset: index in the global batch of this process's first row (row i's positive is
            ``offset + i``).
        valid_all: (G,) bool — rows that hold a real pair (a modality can be missing for a patient).
            Invalid rows are neither anchors nor negatives.
        same_findings: (B, G) bool — column j's report states the same findings as anchor i's (the
            diagonal included). With ``semantic_weight`` w > 0 the target of anchor i is no longer
            one-hot: ``(1 − w)·e_i + w·uniform over its same-finding columns`` (MedCLIP's answer to
            false negatives: two normal chests are not negatives of each other).
        semantic_weight: w in [0, 1]; 0 = plain InfoNCE.

    Returns:
        This process's share of the global batch's loss: the sum over its valid anchors of both
        directions' mean cross-entropy, divided by the number of valid anchors in the global batch
        and multiplied by the number of processes (G / B) — so the mean over processes is the
        global-batch mean; with one process, the plain mean over valid anchors (0 with no valid rows).
    """
    a_all = a if a_all is None else a_all
    b_all = b if b_all is None else b_all
    batch = a.shape[0]
    target = torch.arange(batch, device=a.device) + offset
    logits_ab = contrastive_logits(a, b_all, logit_scale=logit_scale)
    logits_ba = contrastive_logits(b, a_all, logit_scale=logit_scale)
    valid_all = torch.ones(a_all.shape[0], dtype=torch.bool, device=a.device) if valid_all is None else valid_all.to(torch.bool)
    column_mask = ~valid_all[None, :]
    logits_ab = logits_ab.masked_fill(column_mask, float("-inf"))
    logits_ba = logits_ba.masked_fill(column_mask, float("-inf"))
    anchors = valid_all[offset : offset + batch]
    total = int(valid_all.sum())  # valid anchors in the global batch (the same number on every rank)
    if total == 0:
        # Keeps the graph (and a gathered tensor's collective backward) connected without contributing.
        return (a.sum() + b.sum() + a_all.sum() + b_all.sum()) * 0.0
    # Sum over this rank's valid anchors ÷ the global count × the number of ranks (G / B): the mean of
    # this over ranks is the global batch's mean, however the valid rows are split — what makes DDP's
    # gradient average equal the gradient of one process on the concatenated batch (with a gathered
    # ``a_all``/``b_all`` from ``gather_with_grad``). One process: the plain mean over valid anchors.
    share = (a_all.shape[0] / batch) / total
    if same_findings is None or semantic_weight <= 0:
        loss_ab = F.cross_entropy(logits_ab[anchors], target[anchors], reduction="sum")
        loss_ba = F.cross_entropy(logits_ba[anchors], target[anchors], reduction="sum")
        return 0.5 * (loss_ab + loss_ba) * share
    soft = semantic_targets(same_findings, valid_all, target, weight=semantic_weight)[anchors]
    loss_ab = -(soft * F.log_softmax(logits_ab[anchors], dim=-1).masked_fill(column_mask, 0.0)).sum()
    loss_ba = -(soft * F.log_softmax(logits_ba[anchors], dim=-1).masked_fill(column_mask, 0.0)).sum()
    return 0.5 * (loss_ab + loss_ba) * share


def semantic_targets(same_findings: torch.Tensor, valid_all: torch.Tensor, target: torch.Tensor, *, weight: float) -> torch.Tensor:
    """(B, G) target rows ``(1 − w)·one_hot(target) + w·same/Σsame`` over the valid columns (``info_nce``)."""
    same = (same_findings.to(torch.bool) & valid_all[None, :]).float()
    same[torch.arange(len(target), device=same.device), target] = 1.0  # an anchor always matches itself
    one_hot = F.one_hot(target, same.shape[1]).float()
    return (1.0 - weight) * one_hot + weight * same / same.sum(dim=-1, keepdim=True)


def batch_normalize(z: torch.Tensor, *, eps: float = 1e-5) -> torch.Tensor:
    """Standardise each dimension over the batch: ``(z − mean) / sqrt(var + eps)`` (biased var, (N, D))."""
    mean = z.mean(dim=0, keepdim=True)
    var = z.var(dim=0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor, *, eps: float = 1e-5) -> torch.Tensor:
    """``C = z̃1ᵀ z̃2 / N`` of the batch-normalised views, (N, D) × (N, D) → (D, D)."""
    return batch_normalize(z1, eps=eps).T @ batch_normalize(z2, eps=eps) / z1.shape[0]


def visual_invariance_loss(z1: torch.Tensor, z2: torch.Tensor, *, off_diagonal_weight: float, eps: float = 1e-5) -> torch.Tensor:
    """Medical visual-invariant loss (Barlow Twins form): ``Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²``.

    Args:
        z1, z2: (N, D) embeddings of two augmentations of the same N images (N ≥ 2).
        off_diagonal_weight: λ.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"views must both be (N, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    c = cross_correlation(z1, z2, eps=eps)
    diagonal = torch.diagonal(c)
    on = (1.0 - diagonal).pow(2).sum()
    off = c.pow(2).sum() - diagonal.pow(2).sum()
    return on + off_diagonal_weight * off
