"""Run under `torchrun --nproc_per_node 2` (gloo, CPU): the alignment loss's gradients across ranks.

Each rank takes its half of one fixed batch of 8 patients and runs the real ``AlignTask`` loss (text-hub
InfoNCE with semantic targets, the CT–MRI InfoNCE of report-less pairs, the visual-invariant loss)
with the real ``AlignModel``; its parameter gradients are averaged over ranks exactly as DDP does
(all-reduce SUM ÷ world size). The result must equal the gradient of ONE process on the whole batch.
The batch leaves the ranks with different numbers of valid anchors per term (and, in the second
case, one rank with no report at all) so that the loss scaling is tested, not only the gather.
Writes ``rank{r}.json`` into the folder given as argv[1].
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

REPORTS = [
    "small left pleural effusion",
    "no acute findings",
    "",
    "cardiomegaly with effusion",
    "no acute findings",
    "",
    "",
    "pacemaker in place, no effusion",
]


def fixed_batch(has_text: list[bool], *, size: int = 16, slices: int = 2) -> dict:
    generator = torch.Generator().manual_seed(7)
    images = {
        "xray": torch.rand(8, 2, 1, 1, size, size, generator=generator) * 2 - 1,
        "ct": torch.rand(8, 2, slices, 1, size, size, generator=generator) * 2 - 1,
        "mri-t1": torch.rand(8, 2, slices, 1, size, size, generator=generator) * 2 - 1,
    }
    present = {
        "xray": torch.tensor([1, 1, 1, 0, 1, 1, 1, 1], dtype=torch.bool),
        "ct": torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool),
        "mri-t1": torch.tensor([1, 1, 1, 0, 1, 1, 1, 1], dtype=torch.bool),
    }
    for name, flags in present.items():
        images[name][~flags] = 0.0  # as collate zero-fills missing modalities
    text = [r if t else "" for r, t in zip(REPORTS, has_text)]
    findings = torch.tensor([[1, 0], [0, 0], [0, 0], [1, 1], [0, 0], [0, 0], [0, 0], [1, 0]], dtype=torch.uint8)
    return {"text": text, "has_text": torch.tensor(has_text), "images": images, "present": present, "report_findings": findings}


def rows_of(batch: dict, rows: slice) -> dict:
    out = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out[key] = rows_of(value, rows)
        else:
            out[key] = value[rows]
    return out


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


def main(out: Path) -> None:
    import torch.distributed as dist
    from accelerate import Accelerator

    from medm2g_core.align.model import AlignModel
    from medm2g_core.align.task import AlignTask
    from medm2g_core.config import parse_recipe

    accelerator = Accelerator(cpu=True)
    world, rank = accelerator.num_processes, accelerator.process_index
    assert world == 2 and dist.is_initialized() and dist.get_world_size() == 2, f"expected 2 ranks, got {world}"

    recipe = parse_recipe({
        "align": {"embed_dim": 8, "image_widths": [4, 8], "text_width": 8, "text_layers": 1, "text_heads": 1,
                  "vocab_size": 60, "max_tokens": 16, "modalities": ["xray", "ct", "mri-t1"],
                  "vi_weight": 0.5, "vi_lambda": 0.1, "semantic_weight": 0.3},
    })
    torch.manual_seed(0)  # the same weights on both ranks
    model = AlignModel.build(align=recipe.align, modalities=["xray", "ct", "mri-t1"], reports=[r for r in REPORTS if r],
                             image_size=16)
    model.eval()  # BERT's dropout off: both sides must see the same function

    cases = {
        "uneven": [True, True, False, True, True, False, False, True],  # 3 vs 2 reports per rank
        "rank1_without_reports": [True, True, False, True, False, False, False, False],
    }
    results = {"world": world, "cases": {}}
    for case, has_text in cases.items():
        batch = fixed_batch(has_text)

        # One process on the whole batch (every rank computes it; no collectives involved).
        single = copy.deepcopy(model)
        single_task = AlignTask(single, recipe.align)
        single_out = single_task.losses(batch, accelerator=None)
        single_out["loss"].backward()
        expected = gradients(single)

        # This rank's half, gathered across ranks, then the gradients averaged as DDP averages them.
        local = copy.deepcopy(model)
        task = AlignTask(local, recipe.align)
        out_local = task.losses(rows_of(batch, slice(4 * rank, 4 * rank + 4)), accelerator=accelerator)
        out_local["loss"].backward()
        got = gradients(local)
        for grad in got.values():
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
            grad /= world
        loss = out_local["loss"].detach().clone()
        dist.all_reduce(loss, op=dist.ReduceOp.SUM)

        worst = max(((g - expected[n]).abs().max().item(), n) for n, g in got.items())
        scale = max(g.abs().max().item() for g in expected.values())
        # float32 tolerance: relative per element, plus an absolute floor tied to the model's largest
        # gradient (some gradients are analytically ~0, e.g. biases before the batch-normalised
        # visual-invariant loss, and differ only by rounding noise)
        mismatched = [n for n, g in got.items() if not torch.allclose(g, expected[n], rtol=1e-4, atol=1e-5 * scale)]
        results["cases"][case] = {
            "terms": sorted(k for k in single_out if k.startswith(("nce_", "vi_"))),
            "local_terms": sorted(k for k in out_local if k.startswith(("nce_", "vi_"))),
            "loss_mean": loss.item() / world,
            "loss_single": single_out["loss"].item(),
            "max_abs_diff": worst[0], "worst_param": worst[1], "max_abs_grad": scale,
            "mismatched": mismatched, "params": len(got),
            "nonzero_grads": sum(int(g.abs().sum() > 0) for g in expected.values()),
        }
    (out / f"rank{rank}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
