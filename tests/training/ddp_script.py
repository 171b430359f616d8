"""Run under `torchrun --nproc_per_node 2`: gathered InfoNCE and the training loop on two CPU ranks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)


def main(out: Path) -> None:
    from accelerate import Accelerator

    from medm2g_core.align.losses import gather_with_grad, info_nce
    from medm2g_core.config import TrainingConfig
    from medm2g_core.training.loop import seed_everything, train
    from toy import LineTask, NoisyLine

    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2, f"expected 2 processes, got {accelerator.num_processes}"
    rank = accelerator.process_index

    # The InfoNCE sees the global batch: rank r's loss over gathered negatives equals the loss of its
    # rows in the full 8×8 problem (computed here from the whole batch, which every rank can rebuild).
    generator = torch.Generator().manual_seed(0)
    a_full, b_full = torch.randn(8, 5, generator=generator), torch.randn(8, 5, generator=generator)
    a = a_full[4 * rank : 4 * rank + 4].clone().requires_grad_(True)
    b = b_full[4 * rank : 4 * rank + 4].clone()
    a_all, offset = gather_with_grad(a, accelerator=accelerator)
    b_all, _ = gather_with_grad(b, accelerator=accelerator)
    loss = info_nce(a, b, logit_scale=4.0, a_all=a_all, b_all=b_all, offset=offset)
    logits = 4.0 * F.normalize(a_full, dim=1) @ F.normalize(b_full, dim=1).T
    rows = torch.arange(4 * rank, 4 * rank + 4)
    expected = 0.5 * (F.cross_entropy(logits[rows], rows) + F.cross_entropy(logits.T[rows], rows))
    local_only = info_nce(a, b, logit_scale=4.0)
    loss.backward()

    seed_everything(0)
    task = LineTask()
    config = TrainingConfig(steps=4, batch_size=4, lr=0.05, warmup_steps=1, save_every=2, seed=0)
    result = train(task, train_dataset=NoisyLine(), val_dataset=NoisyLine(8, seed=1), config=config, state_dir=out / "state")
    weights = torch.cat([p.detach().flatten() for p in task.net.parameters()])

    # The real alignment stage on two ranks (DDP-wrapped task, gathered InfoNCE inside the task).
    from medm2g_core.config import parse_recipe
    from medm2g_core.workflows.align import align

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from tiny_cohort import write_cohort

    if accelerator.is_main_process:
        write_cohort(out / "cohort", patients=12, size=16)
    accelerator.wait_for_everyone()
    recipe = parse_recipe({
        "data": {"image_size": 16, "split_fractions": [0.7, 0.3, 0.0]},
        "training": {"steps": 3, "batch_size": 2, "warmup_steps": 1},
        "align": {"embed_dim": 8, "image_widths": [8], "text_width": 8, "text_layers": 1, "text_heads": 1,
                  "vocab_size": 60, "max_tokens": 24, "modalities": ["xray", "ct"]},
    })
    aligned = align(out / "cohort", out / "bundle", recipe=recipe)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "num_processes": accelerator.num_processes,
        "loss": loss.item(), "expected": expected.item(), "local_only": local_only.item(),
        "grad_finite": bool(torch.isfinite(a.grad).all()),
        "train_processes": result.num_processes, "weights": weights.tolist(), "val": result.final_val,
        "align_processes": aligned.num_processes, "align_losses": aligned.last_losses, "align_retrieval": aligned.retrieval,
    }))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
