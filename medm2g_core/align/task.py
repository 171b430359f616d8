"""The alignment task for the training loop: text-hub InfoNCE + visual-invariant loss (DESIGN §1.2–1.3).

Every imaging modality is aligned to the report (n−1 alignments with text as the hub); patients with
CT and MRI but no report align those images to each other with the same loss. Patients with neither
a report nor a CT but two or more registered MRI contrasts (BraTS, IXI after ``--register``) align each
contrast to the first one the recipe lists (the MRI hub; n−1 alignments again) **slice by slice**: slice
k of T2 is the positive of slice k of T1 of the same subject, every other slice of the global batch a
negative — with a few subjects and no text, a per-patient InfoNCE would have almost no negatives, while
the slices of registered contrasts give many true pairs (anatomy at one position, two contrasts). Each imaging modality's
two augmented views are pulled together by the Barlow-Twins-form loss, weighted by ``vi_weight``.
Both losses are those of the global batch (all processes): InfoNCE negatives are gathered with their
gradients, and the visual-invariant loss batch-normalises and correlates every process's views. Each
rank's loss is its share, so that the mean over ranks is the global-batch loss and DDP's averaged
gradient equals that of one process on the concatenated batch (``tests/training/test_distributed_grad.py``).
Every branch below is decided by gathered (global) flags, so all ranks run the same collectives.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medm2g_core.align.losses import gather_with_grad, info_nce, visual_invariance_loss
from medm2g_core.align.model import AlignModel
from medm2g_core.config import AlignConfig
from medm2g_core.modalities import Modality


def _gather_rows(rows: torch.Tensor, accelerator: Any | None) -> torch.Tensor:
    """Rows of every process concatenated (the local rows alone with one process); no gradient."""
    if accelerator is None or accelerator.num_processes == 1:
        return rows
    from accelerate.utils import gather

    return gather(rows.to(accelerator.device))


def _gather_flags(flags: torch.Tensor, accelerator: Any | None) -> torch.Tensor:
    """Bool flags of every process (sent as uint8, which every backend gathers)."""
    if accelerator is None or accelerator.num_processes == 1:
        return flags
    return _gather_rows(flags.to(torch.uint8), accelerator).to(torch.bool)


class AlignTask:
    """``Task`` (``medm2g_core.training.loop``) over ``AlignDataset`` batches."""

    def __init__(self, model: AlignModel, config: AlignConfig):
        self.model = model
        self.config = config
        self.accelerator: Any | None = None

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"align": self.model}

    def on_train_start(self, accelerator: Any) -> None:
        self.accelerator = accelerator

    def training_step(self, batch: dict[str, Any], *, step: int) -> dict[str, torch.Tensor]:
        return self.losses(batch, accelerator=self.accelerator)

    def validation_step(self, batch: dict[str, Any]) -> dict[str, float]:
        return {k: float(v) for k, v in self.losses(batch, accelerator=None).items()}

    def image_embeddings(self, batch: dict[str, Any], *, views: int | None = None, per_slice: dict[str, torch.Tensor] | None = None
                         ) -> dict[str, torch.Tensor]:
        """``{modality: (B, V, D)}``: pooled embeddings per view, averaged over a volume's N slices.

        ``views``: encode only the first ``views`` views (None = all). ``per_slice``: when given, filled
        with ``{modality: (B, N, D)}``, the first view's embedding of each slice before averaging.
        """
        out = {}
        for name, images in batch["images"].items():
            images = images if views is None else images[:, :views]
            b, v, n = images.shape[:3]
            pooled, _ = self.model.encode_image(images.flatten(0, 2), name)
            pooled = pooled.view(b, v, n, -1)
            out[name] = pooled.mean(dim=2)
            if per_slice is not None:
                per_slice[name] = pooled[:, 0]
        return out

    def mri_hub(self, names: list[str]) -> str | None:
        """The MRI contrast the others are aligned to without text or CT: the first MRI one listed."""
        return next((name for name in names if Modality(name).is_mri), None)

    def losses(self, batch: dict[str, Any], *, accelerator: Any | None) -> dict[str, torch.Tensor]:
        """All loss terms of one batch; ``loss = mean(InfoNCE terms) + vi_weight · mean(VI terms)``."""
        model = self.model
        scale = model.logit_scale
        text, _, _ = model.encode_text(batch["text"])
        text_all, offset = gather_with_grad(text, accelerator=accelerator)
        has_text = batch["has_text"].to(text.device)
        # The second view only feeds the visual-invariant loss: not encoded when that loss is off.
        slices: dict[str, torch.Tensor] = {}
        images = self.image_embeddings(batch, views=None if self.config.vi_weight > 0 else 1, per_slice=slices)
        present = {name: flags.to(text.device) for name, flags in batch["present"].items()}
        out: dict[str, torch.Tensor] = {}
        nce_terms, vi_terms = [], []
        gathered: dict[str, torch.Tensor] = {}
        same_findings = None
        if self.config.semantic_weight > 0 and "report_findings" in batch:
            local = batch["report_findings"].to(text.device)
            everyone = _gather_rows(local, accelerator)
            same_findings = (local[:, None, :] == everyone[None, :, :]).all(dim=-1)  # (B, G)
        for name, views in images.items():
            first = views[:, 0]
            gathered[name], _ = gather_with_grad(first, accelerator=accelerator)
            valid_all = _gather_flags(present[name] & has_text, accelerator)
            if bool(valid_all.any()):
                term = info_nce(first, text, logit_scale=scale, a_all=gathered[name], b_all=text_all, offset=offset, valid_all=valid_all,
                                same_findings=same_findings, semantic_weight=self.config.semantic_weight)
                out[f"nce_{name}"] = term
                nce_terms.append(term)
            if views.shape[1] == 2 and self.config.vi_weight > 0:
                # Over the global batch (batch statistics and cross-correlation of every process's
                # views, as Barlow Twins does across GPUs): each rank computes the same whole term.
                rows = _gather_flags(present[name], accelerator)
                if int(rows.sum()) >= 2:
                    views_all, _ = gather_with_grad(views, accelerator=accelerator)
                    term = visual_invariance_loss(views_all[rows, 0], views_all[rows, 1], off_diagonal_weight=self.config.vi_lambda)
                    out[f"vi_{name}"] = term
                    vi_terms.append(term)
        # MRI–CT pairs without a report: aligned to each other through the same loss.
        ct = Modality.CT.value
        if ct in images:
            for name in images:
                if name == ct or Modality(name).encoder_family != "mri":
                    continue
                valid_all = _gather_flags(present[ct] & present[name] & ~has_text, accelerator)
                if bool(valid_all.any()):
                    term = info_nce(images[ct][:, 0], images[name][:, 0], logit_scale=scale, a_all=gathered[ct], b_all=gathered[name], offset=offset, valid_all=valid_all)
                    out[f"nce_ct_{name}"] = term
                    nce_terms.append(term)
        # MRI contrasts of one subject without a report or CT: each aligned to the MRI hub, slice k to slice k.
        hub = self.mri_hub(list(images))
        no_ct = ~present[ct] if ct in present else torch.ones_like(has_text)
        if hub is not None:
            n = slices[hub].shape[1]
            hub_rows = slices[hub].flatten(0, 1)
            hub_all, slice_offset = gather_with_grad(hub_rows, accelerator=accelerator)
            for name in images:
                if name == hub or not Modality(name).is_mri:
                    continue
                pair = (present[hub] & present[name] & ~has_text & no_ct).repeat_interleave(n)
                valid_all = _gather_flags(pair, accelerator)
                if int(valid_all.sum()) >= 2:
                    rows = slices[name].flatten(0, 1)
                    rows_all, _ = gather_with_grad(rows, accelerator=accelerator)
                    term = info_nce(hub_rows, rows, logit_scale=scale, a_all=hub_all, b_all=rows_all, offset=slice_offset, valid_all=valid_all)
                    out[f"nce_{hub}_{name}"] = term
                    nce_terms.append(term)
        zero = text.sum() * 0.0
        nce = torch.stack(nce_terms).mean() if nce_terms else zero
        vi = torch.stack(vi_terms).mean() if vi_terms else zero
        out.update({"loss": nce + self.config.vi_weight * vi, "nce": nce.detach(), "vi": vi.detach(), "tau": (1.0 / scale).detach()})
        return out
