"""Joint vs separate generation of CT and T2 from one T1 (issue #19 item 7), on held-out phantom heads.

Trains, on one phantom head cohort: the ``mri-ct`` and ``t1-t2`` flows, then their joint stage
(``train-flow --stage joint``). Then every held-out patient's T1 volume is translated twice with the same seed:

- **separate**: ``MedM2G.translate`` to CT, and again to T2 (two independent sampling loops);
- **joint**: ``MedM2G.translate_jointly`` to CT and T2 (one loop, each stream reading its partner's noisy latent).

Both start from identical noise (slice k uses ``slice_seed(seed, k)`` in both), so the difference is the coupling alone.

Measured per output, inside the reference CT's body mask:

- quality: CT MAE (HU) against the reference CT; T2 PSNR (dB, data range = the reference T2's range in the body);
- **consistency** of the pair: do the two outputs show the same anatomy? The training patients' reference (T2, CT)
  pairs give the CT a voxel of each T2 intensity has (median HU per T2 bin, T2 normalised by its volume's
  percentiles, 64 bins): ``lookup``. Consistency = body MAE between the generated CT and ``lookup(generated T2)``.
  Low = where the generated T2 shows a tissue, the generated CT shows that tissue's HU. The same number on the
  held-out *reference* pairs is the floor (what a perfectly consistent pair scores; the phantom's noise and
  partial volumes keep it above 0).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_joint.py [--patients 12] [--flow-steps 200] [--joint-steps 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

BINS = 64


def recipe_text(*, size: int, flow_steps: int, joint_steps: int) -> str:
    """The tiny-learns recipe of the flow tests at ``size``², with the given budgets."""
    import yaml

    recipe = {
        "name": "bench-joint",
        "data": {"image_size": size, "split_fractions": [0.75, 0.25, 0.0]},
        "training": {"steps": flow_steps, "batch_size": 8, "lr": 0.003, "warmup_steps": 10, "save_every": 0, "val_every": 0,
                     "val_batches": 1},
        "align": {"embed_dim": 16, "image_widths": [8, 16], "text_width": 16, "text_layers": 1, "text_heads": 2, "vocab_size": 200,
                  "max_tokens": 64, "modalities": ["ct", "mri-t1", "mri-t2"], "training": {"steps": 20, "batch_size": 4}},
        "flows": {
            "shared_attention": {"num_layers": 2, "query_dim": 16, "condition_dim": 16, "heads": 2},
            "image_denoiser": {"backbone": "conv", "block_out_channels": [8, 16, 32], "norm_num_groups": 4, "attention_heads": 2},
            "objective": {"warm_start_fraction": 0.5, "loss": "l1", "timesteps": "sampler", "sampling_steps": 4},
            "slices": "all", "val_items": 8, "sample_items": 0, "forgetting": {"val_batches": 1, "psnr_samples": 0},
            "joint": {"steps": joint_steps, "lr": 0.003, "patch_size": 4},
        },
    }
    return yaml.safe_dump(recipe, sort_keys=False)


def t2_units(volume: np.ndarray) -> np.ndarray:
    """T2 normalised to [-1, 1] by its own volume percentiles (as the flows normalise MRI)."""
    from medm2g_core.data.transforms import normalize
    from medm2g_core.modalities import Modality

    return normalize(volume, Modality.MRI_T2)[0]


def fit_lookup(pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Median CT (HU) per T2 bin over the body voxels of reference (T2, CT) volume pairs; empty bins interpolated."""
    from medm2g_core.metrics.image import body_mask

    t2_values, ct_values = [], []
    for t2, ct in pairs:
        mask = body_mask(ct)
        t2_values.append(t2_units(t2)[mask])
        ct_values.append(ct[mask])
    t2_all, ct_all = np.concatenate(t2_values), np.concatenate(ct_values)
    index = np.clip(((t2_all + 1) / 2 * BINS).astype(int), 0, BINS - 1)
    table = np.full(BINS, np.nan)
    for b in range(BINS):
        if np.any(index == b):
            table[b] = np.median(ct_all[index == b])
    known = np.flatnonzero(~np.isnan(table))
    return np.interp(np.arange(BINS), known, table[known])


def consistency(t2: np.ndarray, ct: np.ndarray, lookup: np.ndarray, mask: np.ndarray) -> float:
    """Body MAE (HU) between ``ct`` and the CT that ``t2`` implies (``lookup``)."""
    index = np.clip(((t2_units(t2) + 1) / 2 * BINS).astype(int), 0, BINS - 1)
    return float(np.abs(ct - lookup[index])[mask].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--flow-steps", type=int, default=200)
    parser.add_argument("--joint-steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=2, help="sampling seeds per held-out patient")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "joint")
    args = parser.parse_args()

    import shutil

    import torch

    from medm2g_core import io
    from medm2g_core.config import load_recipe
    from medm2g_core.data.splits import split_of
    from medm2g_core.data.synth import synthesize_cohort
    from medm2g_core.inference.model import MedM2G
    from medm2g_core.metrics.image import body_mask, mae, psnr
    from medm2g_core.workflows.align import align
    from medm2g_core.workflows.train_flow import train_flow
    from medm2g_core.modalities import parse_pair

    torch.set_num_threads(1)
    started = time.monotonic()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    cohort, bundle, recipe = args.out / "head", args.out / "b.m2g", args.out / "recipe.yaml"
    recipe.write_text(recipe_text(size=args.size, flow_steps=args.flow_steps, joint_steps=args.joint_steps))
    synthesize_cohort(cohort, patients=args.patients, anatomy="head", seed=7, size=args.size, workers=0)
    align(cohort, bundle, recipe=recipe)
    seconds = {}
    for pair in ("mri-ct", "t1-t2"):
        seconds[pair] = train_flow(cohort, bundle, pair=pair, recipe=recipe).seconds
    seconds["joint"] = train_flow(cohort, bundle, stage="joint", pairs=(parse_pair("mri-ct"), parse_pair("t1-t2")), recipe=recipe).seconds

    data = load_recipe(recipe).data
    patients = sorted(p for p in cohort.iterdir() if p.is_dir())
    held = [p for p in patients if split_of(p.name, seed=data.split_seed, fractions=data.split_fractions) != "train"]
    train = [p for p in patients if p not in held]
    lookup = fit_lookup([(io.read(p / "mri-t2.nii.gz")[0], io.read(p / "ct.nii.gz")[0]) for p in train])
    model = MedM2G.from_pretrained(bundle, device="cpu")
    rows = {"separate": [], "joint": [], "reference": []}
    sampling = {"separate": 0.0, "joint": 0.0}
    for patient in held:
        t1, meta = io.read(patient / "mri-t1.nii.gz")
        ct_ref, t2_ref = io.read(patient / "ct.nii.gz")[0], io.read(patient / "mri-t2.nii.gz")[0]
        mask = body_mask(ct_ref)
        t2_range = float(t2_ref[mask].max() - t2_ref[mask].min())
        rows["reference"].append({"consistency_hu": consistency(t2_ref, ct_ref, lookup, mask)})
        for seed in range(args.seeds):
            clock = time.monotonic()
            ct = model.translate(t1, meta, to="ct", source="mri-t1", seed=seed).image
            t2 = model.translate(t1, meta, to="mri-t2", source="mri-t1", seed=seed).image
            sampling["separate"] += time.monotonic() - clock
            clock = time.monotonic()
            both = model.translate_jointly(t1, meta, to=["ct", "mri-t2"], source="mri-t1", seed=seed)
            sampling["joint"] += time.monotonic() - clock
            outputs = {"separate": (ct, t2), "joint": tuple(r.image for r in both.values())}
            for name, (ct_out, t2_out) in outputs.items():
                rows[name].append({"ct_mae_hu": mae(ct_out, ct_ref, mask=mask),
                                   "t2_psnr_db": psnr(t2_out, t2_ref, data_range=t2_range, mask=mask),
                                   "consistency_hu": consistency(t2_out, ct_out, lookup, mask)})
    summary = {name: {key: round(float(np.mean([r[key] for r in values])), 3) for key in values[0]} for name, values in rows.items()}
    stage = next(k for k in model.bundle.data["metrics"] if k.startswith("joint/"))
    report = {"patients": {"train": len(train), "held_out": len(held)}, "seeds": args.seeds, "size": args.size,
              "flow_steps": args.flow_steps, "joint_steps": args.joint_steps, "training_seconds": {k: round(v, 1) for k, v in seconds.items()},
              "sampling_seconds": {k: round(v, 1) for k, v in sampling.items()},
              "joint_stage_validation": model.bundle.data["metrics"][stage], "summary": summary,
              "total_seconds": round(time.monotonic() - started, 1)}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
