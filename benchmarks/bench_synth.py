"""Phantom cohort speed: 64 chest patients at 64³ (target < 30 s on 2 cores).

Run: ``.venv/bin/python benchmarks/bench_synth.py [--patients 64] [--size 64] [--workers 2] [--anatomy chest]``.
Prints wall seconds and patients per second, with the in-process (workers=0) rate on a few patients
as the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from medm2g_core.data.synth import synthesize_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--anatomy", default="chest")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        synthesize_cohort(f"{tmp}/baseline", patients=4, anatomy=args.anatomy, seed=0, size=args.size, workers=0)
        baseline = 4 / (time.perf_counter() - start)
        start = time.perf_counter()
        synthesize_cohort(f"{tmp}/cohort", patients=args.patients, anatomy=args.anatomy, seed=0, size=args.size, workers=args.workers)
        seconds = time.perf_counter() - start
    rate = args.patients / seconds
    print(f"{args.patients} {args.anatomy} patients at {args.size}^3 with {args.workers} workers: {seconds:.2f} s "
          f"({rate:.2f} patients/s; in-process baseline {baseline:.2f} patients/s, speed-up {rate / baseline:.2f}x)")


if __name__ == "__main__":
    main()
