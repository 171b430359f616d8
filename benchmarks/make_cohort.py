"""Make a phantom cohort with a patient-level ``splits.json`` (the demo's split rule) for the benchmarks.

    .venv/bin/python benchmarks/make_cohort.py OUT --anatomy head --patients 32 --seed 1
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--anatomy", default="head", choices=["head", "chest"])
    parser.add_argument("--patients", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    from medm2g_core.data.splits import split_of
    from medm2g_core.data.synth import synthesize_cohort
    from medm2g_core.serialization import write_json

    folders = synthesize_cohort(args.out, patients=args.patients, anatomy=args.anatomy, seed=args.seed, size=args.size)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for folder in folders:
        splits[split_of(folder.name, seed=0, fractions=(0.8, 0.1, 0.1))].append(folder.name)
    write_json(args.out / "splits.json", splits)


if __name__ == "__main__":
    main()
