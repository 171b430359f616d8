"""A fixed probe that says whether generated X-rays show what their reports ask for (report → X-ray, #17).

A plain MONAI ``Classifier`` (multi-label: cardiomegaly, pleural effusion, pacemaker) is trained once on the
training split's real X-rays (the phantom DRRs), with labels read from their reports; its AUC on the held-out
real X-rays says how far the probe itself can be trusted. The same probe then scores X-rays generated from the
held-out reports (``medm2g generate --from report.txt --to xray``, one ``OUT/<patient>/xray.png`` each): per-finding
AUC of the generated images against the findings their reports name. The probe's weights hash is printed beside
every number, so numbers of different bundles compare only when the hash is the same.

    .venv/bin/python benchmarks/probe_xray.py --cohort COHORT --generated PRED [--steps 400] [--save probe.safetensors]

No project model code is inside the probe; medm2g is used only to read the images and to label the reports.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medm2g_core.data.labeler import PROBE_FINDINGS as FINDINGS
from medm2g_core.data.labeler import probe_findings as findings_of
from medm2g_core.metrics.clinical import roc_auc as auc


def image_of(path: Path, size: int) -> torch.Tensor:
    from medm2g_core import io

    array = np.asarray(io.read(path)[0], dtype=np.float32)
    low, high = np.percentile(array, (0.5, 99.5))
    unit = np.clip((array - low) / max(high - low, 1e-6) * 2 - 1, -1, 1).astype(np.float32)
    return F.interpolate(torch.from_numpy(unit)[None, None], size=(size, size), mode="bilinear", align_corners=False)[0]


def build(size: int) -> torch.nn.Module:
    from monai.networks.nets import Classifier

    return Classifier(in_shape=(1, size, size), classes=len(FINDINGS), channels=(16, 32, 64, 64), strides=(2, 2, 2, 2))


def train(x: torch.Tensor, y: torch.Tensor, *, steps: int, seed: int = 0, batch: int = 16) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build(x.shape[-1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(0, x.shape[0], (batch,), generator=generator)
        images = x[index]
        shift = torch.randint(-3, 4, (2,), generator=generator).tolist()  # small translations: 50 images overfit fast
        images = torch.roll(images, shifts=shift, dims=(-2, -1))
        loss = F.binary_cross_entropy_with_logits(model(images), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def score(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float | None]:
    logits = model(x).numpy()
    return {name: auc(logits[:, k], y[:, k].numpy().astype(int)) for k, name in enumerate(FINDINGS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", type=Path, required=True, help="phantom cohort with splits.json, xray.png, report.txt")
    parser.add_argument("--generated", type=Path, help="OUT/<patient>/xray.png generated from the held-out reports")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, help="write the probe's weights (safetensors)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    splits = json.loads((args.cohort / "splits.json").read_text())
    held = sorted(splits.get("val", []) + splits.get("test", []))

    def load(patients: list[str], folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        kept = [p for p in patients if (folder / p / "xray.png").is_file()]
        x = torch.stack([image_of(folder / p / "xray.png", args.size) for p in kept])
        y = torch.tensor([findings_of((args.cohort / p / "report.txt").read_text()) for p in kept], dtype=torch.float32)
        return x, y, kept

    x, y, _ = load(splits["train"], args.cohort)
    model = train(x, y, steps=args.steps, seed=args.seed)
    from safetensors.torch import save, save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    digest = hashlib.sha256(save(state)).hexdigest()[:12]
    if args.save:
        save_file(state, str(args.save))
    hx, hy, _ = load(held, args.cohort)
    out = {"probe": f"monai-classifier[{args.steps} steps on {len(x)} training X-rays, sha256 {digest}]",
           "train_positives": dict(zip(FINDINGS, y.sum(0).int().tolist())),
           "held_out_positives": dict(zip(FINDINGS, hy.sum(0).int().tolist())),
           "real_held_out_auc": score(model, hx, hy)}
    if args.generated:
        gx, gy, kept = load(held, args.generated)
        out["generated_auc"] = score(model, gx, gy)
        out["generated_items"] = len(kept)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
