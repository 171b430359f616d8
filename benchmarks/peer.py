"""The plain peer for image translation: a MONAI ``BasicUNet`` L1 regressor, written the way a researcher
would write it without medm2g (nibabel in, nibabel out, no project code).

It is the yardstick of ``bench_quality.py``: trained on the same patients' axial slices, with the same
normalisation (CT: HU window → [-1, 1]; MRI: the volume's 0.5/99.5 percentiles → [-1, 1]) and the same
threads, for the same wall-clock seconds as the medm2g flow, then run over whole held-out volumes and written
as ``OUT/<patient>/<target file>`` so that ``medm2g evaluate`` scores it beside the flow.

    python benchmarks/peer.py --cohort DIR --sources mri-t1 --target ct --train P0001,P0002 \
        --predict P0003 --seconds 137 --out OUT [--ct-window 0,255] [--size 64]

``--ct-window`` is the CT window in the cohort's units (an 8-bit display-window CT such as AANLIB: ``0,255``);
``--mirror-out DIR`` also writes the predictions with test-time mirroring (each slice predicted as is and mirrored
left–right, the two averaged: what ``medm2g translate --mirror`` does) to ``DIR``, from the same trained network.

``--size`` trains and predicts on slices resized to that many pixels per side, as the medm2g flow does
(predictions are resized back to the input grid), so that equal seconds buy equal-resolution work.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

CT_WINDOW = (-1024.0, 3000.0)
MRI_PERCENTILES = (0.5, 99.5)


def load(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    image = nib.load(str(path))
    canonical = nib.as_closest_canonical(image)
    return np.asarray(canonical.dataobj, dtype=np.float32), image


def to_unit(volume: np.ndarray, modality: str) -> tuple[np.ndarray, tuple[float, float]]:
    if modality == "ct":
        low, high = CT_WINDOW
    else:
        low, high = (float(v) for v in np.percentile(volume, MRI_PERCENTILES))
        high = max(high, low + 1.0)
    return np.clip((volume - low) / (high - low) * 2 - 1, -1, 1).astype(np.float32), (low, high)


def slices_of(cohort: Path, patients: list[str], sources: list[str], target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every axial slice with body (target above the bottom of its range somewhere) of the patients, resized per
    patient (with --size, patients on different grids — BraTS 240², IXI 150×256 — train together)."""
    xs, ys = [], []
    for patient in patients:
        ins = [to_unit(load(cohort / patient / f"{s}.nii.gz")[0], s)[0] for s in sources]
        out = to_unit(load(cohort / patient / f"{target}.nii.gz")[0], target)[0]
        keep = [k for k in range(out.shape[2]) if (out[:, :, k] > -0.9).mean() > 0.01]
        if keep:
            xs.append(resize(torch.from_numpy(np.stack([np.stack([v[:, :, k] for v in ins]) for k in keep]))))
            ys.append(resize(torch.from_numpy(np.stack([out[None, :, :, k] for k in keep]))))
    if len({tuple(x.shape[-2:]) for x in xs}) > 1:
        raise SystemExit("the patients' slices have different sizes; pass --size N to resize them")
    return torch.cat(xs), torch.cat(ys)


SIZE: int | None = None  # --size: slices resized to SIZE² for training and prediction (None = native)


def resize(batch: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """(N, C, H, W) → (N, C, SIZE, SIZE) (or back to ``size``); unchanged without --size."""
    target = size or (None if SIZE is None else (SIZE, SIZE))
    if target is None or tuple(batch.shape[-2:]) == tuple(target):
        return batch
    return F.interpolate(batch, size=target, mode="bilinear", align_corners=False)


def build(in_channels: int) -> torch.nn.Module:
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=1, features=(16, 16, 32, 64, 128, 16))


def train(x: torch.Tensor, y: torch.Tensor, *, seconds: float, batch: int = 16, lr: float = 1e-3, seed: int = 0
          ) -> tuple[torch.nn.Module, int]:
    torch.manual_seed(seed)
    model = build(x.shape[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    steps, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        index = torch.randint(0, x.shape[0], (batch,), generator=generator)
        loss = F.l1_loss(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    return model.eval(), steps


@torch.no_grad()
def predict(model: torch.nn.Module, cohort: Path, patient: str, sources: list[str], target: str, out: Path, *,
            mirror: bool = False) -> Path:
    loaded = [load(cohort / patient / f"{s}.nii.gz") for s in sources]
    units = [to_unit(volume, s) for (volume, _), s in zip(loaded, sources)]
    stack = torch.from_numpy(np.stack([u[0] for u in units])).permute(3, 0, 1, 2)  # (depth, S, H, W)
    plane = tuple(stack.shape[-2:])
    def run(batch: torch.Tensor) -> torch.Tensor:  # axis -2 of a canonical slice is left–right
        return (model(batch) + model(batch.flip(-2)).flip(-2)) / 2 if mirror else model(batch)

    predicted = torch.cat([resize(run(resize(stack[i:i + 32])), plane) for i in range(0, stack.shape[0], 32)]).clamp(-1, 1)
    volume = predicted[:, 0].permute(1, 2, 0).numpy()
    low, high = CT_WINDOW if target == "ct" else units[0][1]  # an MRI target takes the source's range
    physical = (volume + 1) / 2 * (high - low) + low
    reference = loaded[0][1]
    canonical = nib.as_closest_canonical(reference)
    back = nib.orientations.ornt_transform(nib.io_orientation(canonical.affine), nib.io_orientation(reference.affine))
    physical = nib.orientations.apply_orientation(physical, back)
    path = out / patient / f"{target}.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(physical.astype(np.float32), reference.affine), str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", type=Path, required=True)
    parser.add_argument("--sources", required=True, help="comma-separated file stems, e.g. mri-t1 or mri-t2,mri-pd")
    parser.add_argument("--target", required=True, help="file stem, e.g. ct")
    parser.add_argument("--train", required=True, help="comma-separated training patient folders")
    parser.add_argument("--predict", required=True, help="comma-separated held-out patient folders")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, constant (default 1e-3)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ct-window", default=None, help="LOW,HIGH of the CT window in the cohort's units (default -1024,3000 HU)")
    parser.add_argument("--size", type=int, default=None, help="train and predict on SIZE² slices (default: native)")
    parser.add_argument("--mirror-out", type=Path, default=None, help="also write test-time mirrored predictions here")
    args = parser.parse_args()
    global CT_WINDOW, SIZE
    if args.ct_window:
        CT_WINDOW = tuple(float(v) for v in args.ct_window.split(","))
    SIZE = args.size
    torch.set_num_threads(args.threads)
    sources = args.sources.split(",")
    x, y = slices_of(args.cohort, args.train.split(","), sources, args.target)
    model, steps = train(x, y, seconds=args.seconds, seed=args.seed, lr=args.lr)
    for patient in args.predict.split(","):
        predict(model, args.cohort, patient, sources, args.target, args.out)
        if args.mirror_out is not None:
            predict(model, args.cohort, patient, sources, args.target, args.mirror_out, mirror=True)
    print(json.dumps({"steps": steps, "seconds": args.seconds, "lr": args.lr, "slices": int(x.shape[0])}))


if __name__ == "__main__":
    main()
