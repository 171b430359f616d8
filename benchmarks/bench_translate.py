"""Whole-pipeline translation speed: a 64³ phantom MRI → CT through ``MedM2G.translate`` (normalise, 2.5D
slices, resize, batched ``FlowModel.predict``, reassembly), slices/s at batch sizes 1, 8, 32.

``bench_sampling.py`` measures the bare sampling loop against diffusers; this one adds everything around
it, so the difference between the two is the pipeline's own overhead. Needs a bundle with an MRI→CT
flow (``medm2g demo`` makes one; or ``--build`` trains a throwaway one in a few seconds, quality
irrelevant for speed).

    .venv/bin/python benchmarks/bench_translate.py [--model BUNDLE | --build] [--size 64] [--batches 1,8,32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--build", action="store_true", help="train a throwaway bundle (align + mri-ct, a few steps)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the flow's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from medm2g_core import MedM2G, io
    from medm2g_core.data.synth import synthesize_cohort

    work = Path(tempfile.mkdtemp(prefix="bench-translate-"))
    synthesize_cohort(work / "cohort", patients=24 if args.build else 1, anatomy="chest", seed=0, size=args.size, workers=0)
    bundle = args.model
    if args.build:
        from medm2g_core.workflows.align import align
        from medm2g_core.workflows.train_flow import train_flow

        align(work / "cohort", work / "bundle", steps=2, workers=0)
        train_flow(work / "cohort", work / "bundle", pair="mri-ct", steps=2)
        bundle = work / "bundle"
    model = MedM2G.from_pretrained(bundle, device=args.device)
    volume, meta = io.read(work / "cohort" / "P0001" / "mri-t1.nii.gz")
    flow = model.flow("mri-ct")
    print(f"volume {volume.shape}, flow image_size {flow.image_size}, context {flow.context_slices}, "
          f"steps {args.steps or flow.config.sampling_steps}, device {model.device}, threads {args.threads}")
    model.translate(volume[:, :, :2], meta.replace(shape=volume[:, :, :2].shape), to="ct", steps=args.steps, batch_size=2)  # warm-up
    for batch in [int(b) for b in args.batches.split(",")]:
        started = time.perf_counter()
        model.translate(volume, meta, to="ct", steps=args.steps, batch_size=batch, seed=0)
        if model.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        print(f"batch {batch:3d}: {volume.shape[2] / seconds:8.2f} slices/s ({seconds:.2f} s per volume)")


if __name__ == "__main__":
    main()
