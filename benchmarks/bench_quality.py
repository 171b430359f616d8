"""Quality per CPU-second: the medm2g flow vs its equal-budget regression baseline vs a plain peer.

For each pair (``mri-ct``, ``t1-t2``) and each budget (multiples of the flow's demo steps) it trains, on one
phantom head cohort (or a cohort given with ``--cohort``, e.g. an imported real one):

- the medm2g flow (``medm2g train-flow --baselines``: the regression baseline is the flow's network trained
  with L1 for the same steps, the identity baseline an intensity map);
- the plain peer (``benchmarks/peer.py``: MONAI ``BasicUNet`` L1 regression, no project code) for the same
  wall-clock seconds as the flow's training stage;

then translates the held-out patients' whole volumes and scores all of them with ``medm2g evaluate``, and prints
one table: metric of each system, seconds, and model/peer ratios. Nothing is asserted; the numbers go in the
README's performance section.

    .venv/bin/python benchmarks/bench_quality.py [--pairs mri-ct,t1-t2] [--budgets 1,3,10] [--seeds 0,1,2,3] [--out DIR]

``--seeds``: each budget is trained and scored once per seed (flow, regression and peer all take it) and the table
adds a ``mean`` row per budget. The peer's spread across seeds at one budget was measured at 56–84 HU (MRI→CT,
720 steps' seconds) against the flow's 58–69, so one seed can make either look ahead.

On the real cohorts that ``medm2g demo --real`` imports (``OUT/cohort/brain/{brats,aanlib}``; or
``medm2g data import brats|aanlib``), at the demo's 64² and 500 steps:

    .venv/bin/python benchmarks/bench_quality.py --cohort OUT/cohort/brain/brats --pairs t1-t2,t2+flair-t1 \
        --steps 500 --budgets 1 --size 64 --align-batch 2 --out benchmarks/out/brats
    .venv/bin/python benchmarks/bench_quality.py --cohort OUT/cohort/brain/aanlib --pairs t2-ct --ct-8bit \
        --steps 500 --budgets 1 --size 64 --align-batch 4 --out benchmarks/out/aanlib

``--set KEY=VALUE`` (repeatable) changes the medm2g side's recipe (``--set flows.training.lr=4e-3``); the peer keeps
its own settings (``--peer-lr``).

``--mirror``: also translate with ``medm2g translate --mirror`` (test-time left–right mirroring) and have the peer
predict mirrored too (``peer.py --mirror-out``, the same trained network), scored as systems ``mirror`` and
``peer-mirror``; the table adds a "(mirrored)" row per metric: flow and peer each with mirroring.

``--ct-8bit``: the cohort's CT is an 8-bit display window (AANLIB), trained with ``data.ct_window: [0, 255]`` and
``data.ct_units`` recorded (a recipe written into OUT), and the peer uses the same window.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET = {"mri-ct": ("ct", "MAE", "PSNR", "SSIM"), "t1-t2": ("mri-t2", None, "PSNR", "SSIM"),
          "t2+flair-t1": ("mri-t1", None, "PSNR", "SSIM"), "t2-ct": ("ct", "MAE", "PSNR", "SSIM")}
SOURCES = {"mri-ct": ("mri-t1",), "t1-t2": ("mri-t1",), "t2+flair-t1": ("mri-t2", "mri-flair"), "t2-ct": ("mri-t2",)}
OTHER_STEPS = {"t2+flair-t1": 500, "t2-ct": 500}
"""1× budgets of the pairs the phantom demo does not train (real cohorts); pass --steps to change them."""


def demo_steps(pair: str) -> int:
    """The flow steps ``medm2g demo`` trains ``pair`` for (its FULL settings): budget 1× of the table."""
    from medm2g_core.workflows.demo import FULL

    return int(FULL.flow_steps.get(pair) or OTHER_STEPS[pair])


def medm2g(*args: str, log: Path) -> dict:
    command = [str(Path(sys.executable).with_name("medm2g")), *args, "--json"]
    with open(log, "a") as err:
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, stderr=err, text=True).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else {}


def held_out(cohort: Path, count: int) -> tuple[list[str], list[str]]:
    splits = json.loads((cohort / "splits.json").read_text())
    return sorted(splits["train"]), sorted(splits["val"] + splits["test"])[:count]


def metrics_of(evaluation: dict, system: str) -> dict[str, float]:
    found = evaluation["systems"][system]["metrics"]
    return {name.split(":")[1].split("[")[0].strip(): entry["value"] for name, entry in found.items()}


def run_pair(pair: str, budget: float, *, cohort: Path, aligned: Path, out: Path, patients: int, seed: int, seed_dir: bool = False,
             recipe: list[str], peer_options: list[str], steps: int | None = None, regression: bool = True,
             mirror: bool = False) -> dict:
    target = TARGET[pair][0]
    sources = SOURCES[pair]
    steps = int(round((steps or demo_steps(pair)) * budget))
    work = out / (f"{pair}-x{budget:g}-seed{seed}" if seed_dir else f"{pair}-x{budget:g}")
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    bundle = work / "bundle.m2g"
    subprocess.run(["rm", "-rf", str(bundle)], check=True)
    subprocess.run(["cp", "-r", str(aligned), str(bundle)], check=True)
    trained = medm2g("train-flow", "--data", str(cohort), "--bundle", str(bundle), "--pair", pair, "--steps", str(steps),
                     "--seed", str(seed), *(["--baselines"] if regression else []), *recipe, log=log)
    seconds = next(s["seconds"] for s in trained["stages"] if s["name"].startswith("flows/"))
    train, held = held_out(cohort, patients)
    if len(sources) == 1:
        inputs = [str(cohort / p / f"{sources[0]}.nii.gz") for p in held]
    else:  # several sources: the patient folders, with --from naming them
        inputs = [str(cohort / p) for p in held] + ["--from", ",".join(sources)]
    medm2g("translate", *inputs, "--to", target, "--model", str(bundle), "--out", str(work / "model"), "--overwrite",
           "--batch-size", "64", "--seed", str(seed), log=log)
    if mirror:
        medm2g("translate", *inputs, "--to", target, "--model", str(bundle), "--out", str(work / "model-mirror"), "--overwrite",
               "--batch-size", "64", "--seed", str(seed), "--mirror", log=log)
        peer_options = [*peer_options, "--mirror-out", str(work / "peer-mirror")]
    started = time.monotonic()
    subprocess.run([sys.executable, str(HERE / "peer.py"), "--cohort", str(cohort), "--sources", ",".join(sources), "--target", target,
                    "--train", ",".join(train), "--predict", ",".join(held), "--seconds", str(seconds), "--seed", str(seed),
                    "--out", str(work / "peer"), *peer_options], check=True, stdout=open(work / "peer.json", "w"), stderr=open(log, "a"))
    peer_seconds = time.monotonic() - started
    evaluation = medm2g("evaluate", "--task", "translation", "--pred", str(work / "model"), "--ref", str(cohort),
                        "--model", str(bundle), "--pair", pair, "--baseline", "identity", *(["--baseline", "regression"] if regression else []),
                        "--baseline", f"peer={work / 'peer'}",
                        *(["--baseline", f"mirror={work / 'model-mirror'}", "--baseline", f"peer-mirror={work / 'peer-mirror'}"]
                          if mirror else []), log=log)
    return {"pair": pair, "budget": budget, "seed": seed, "steps": steps, "seconds": seconds, "peer_seconds_total": round(peer_seconds, 1),
            "peer": json.loads((work / "peer.json").read_text()),
            "systems": {name: metrics_of(evaluation, name) for name in evaluation["systems"]}}


LATENT_AUTOENCODER = {"channels": [32, 64, 64], "attention_levels": [False, False, False], "latent_channels": 4,
                      "ssim_weight": 0.5, "training": {"steps": 600, "batch_size": 16, "lr": 2.0e-3, "warmup_steps": 20}}
"""--latent: the autoencoder of each image modality (64² → 16² × 4), trained before the flow (its seconds not in the flow's)."""


def write_recipe(out: Path, *, size: int | None, ct_8bit: bool, align_batch: int | None = None, latent: bool = False,
                 settings: dict | None = None) -> tuple[list[str], list[str]]:
    """demo-cpu with the image size, (AANLIB) the 8-bit CT window, (``latent``) latent flows and any further recipe
    ``settings`` (dotted key → value, e.g. ``flows.training.lr``) → ``OUT/recipe.yaml``; returns the ``--recipe``
    arguments of the medm2g commands and the matching peer options."""
    if size is None and not ct_8bit and align_batch is None and not latent and not settings:
        return [], []
    import yaml

    from medm2g_core.config import apply_overrides, load_recipe, recipe_to_dict
    from medm2g_core.modalities import CT_WINDOW_8BIT_UNITS

    overrides: dict = {} if align_batch is None else {"align.training.batch_size": align_batch}
    peer: list[str] = []
    if size is not None:
        overrides["data.image_size"] = size
        peer += ["--size", str(size)]
    if ct_8bit:
        overrides.update({"data.ct_window": [0, 255], "data.ct_units": CT_WINDOW_8BIT_UNITS,
                          "align.modalities": ["ct", "mri-t1", "mri-t2", "mri-flair", "mri-t1c"]})
        peer += ["--ct-window", "0,255"]
    elif size is not None or align_batch is not None:  # a real cohort's contrasts (the phantom default is left alone)
        overrides["align.modalities"] = ["ct", "mri-t1", "mri-t2", "mri-flair", "mri-t1c"]
    if latent:
        overrides.update({"flows.objective.latent": True, "autoencoders": LATENT_AUTOENCODER})
    overrides.update(settings or {})
    recipe = recipe_to_dict(apply_overrides(load_recipe("demo-cpu"), overrides))
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return ["--recipe", str(path)], peer


def parse_settings(items: list[str]) -> dict:
    """``["flows.training.lr=4e-3", ...]`` → ``{"flows.training.lr": 0.004}`` (values read as YAML: numbers, lists)."""
    import yaml

    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. flows.training.lr=4e-3")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 4e-3 (no dot) as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        settings[key.strip()] = parsed
    return settings


def mean_over_seeds(results: list[dict]) -> list[dict]:
    """One ``mean`` result per (pair, budget) that was run with more than one seed: every metric and the seconds
    averaged over its seeds."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in results:
        groups.setdefault((r["pair"], r["budget"]), []).append(r)
    means = []
    for (pair, budget), runs in groups.items():
        if len(runs) < 2:
            continue
        systems = {}
        for name in sorted({n for r in runs for n in r["systems"]}):
            metrics = {m for r in runs for m in r["systems"].get(name, {})}
            systems[name] = {m: sum(r["systems"][name][m] for r in runs) / len(runs) for m in metrics
                             if all(m in r["systems"].get(name, {}) for r in runs)}
        means.append({"pair": pair, "budget": budget, "seed": f"mean of {len(runs)}", "steps": runs[0]["steps"],
                      "seconds": sum(r["seconds"] for r in runs) / len(runs), "systems": systems})
    return means


def table(results: list[dict]) -> str:
    lines = ["| pair | budget (flow steps, s) | seed | metric | medm2g flow | regression (same steps) | identity | peer (same s) | flow/peer |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for metric in TARGET[r["pair"]][1:]:
            if metric is None:
                continue
            values = {name: r["systems"].get(name, {}).get(metric) for name in ("model", "regression", "identity", "peer")}
            ratio = values["model"] / values["peer"] if values["model"] and values["peer"] else float("nan")
            cells = " | ".join(f"{values[n]:.3g}" if values[n] is not None else "–" for n in ("model", "regression", "identity", "peer"))
            lines.append(f"| {r['pair']} | {r['budget']:g}× ({r['steps']}, {r['seconds']:.0f} s) | {r.get('seed', 0)} | {metric} | {cells} "
                         f"| {ratio:.2f} |")
            flow, peer = (r["systems"].get(n, {}).get(metric) for n in ("mirror", "peer-mirror"))
            if flow is not None and peer is not None:
                lines.append(f"| {r['pair']} | {r['budget']:g}× ({r['steps']}, {r['seconds']:.0f} s) | {r.get('seed', 0)} | {metric} (mirrored) "
                             f"| {flow:.3g} | – | – | {peer:.3g} | {flow / peer:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="mri-ct,t1-t2")
    parser.add_argument("--budgets", default="1,3,10", help="multiples of the flow steps at budget 1 (--steps)")
    parser.add_argument("--cohort", type=Path, help="cohort with splits.json (default: 32 head phantoms at 64³, seed 1)")
    parser.add_argument("--patients", type=int, default=3, help="held-out patients translated and scored")
    parser.add_argument("--align-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", default=None, help="comma-separated seeds: train and score each budget once per seed, "
                        "with a mean row (overrides --seed for flow, regression and peer; the alignment keeps --seed)")
    parser.add_argument("--steps", type=int, default=None, help="flow steps at budget 1 (default: the demo's flow steps of the pair, "
                        "720 for mri-ct and 540 for t1-t2; the README's table used --steps 240 / 180 with budgets 1,3,10)")
    parser.add_argument("--size", type=int, default=None, help="image size of flow and peer (data.image_size; default: the recipe's 64)")
    parser.add_argument("--align-batch", type=int, default=None, help="alignment batch (small real cohorts: ≤ the training patients)")
    parser.add_argument("--ct-8bit", action="store_true", help="the cohort's CT is an 8-bit display window (AANLIB)")
    parser.add_argument("--peer-lr", type=float, default=4e-3,
                        help="the peer's AdamW learning rate (4e-3: the best of 1e-3/2e-3/4e-3 for mri-ct at 56 s on the head "
                             "phantoms, 58.9 vs 72.5 vs 77.5 HU; re-tune it for other cohorts and budgets)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                        help="a recipe setting for the medm2g side (YAML value), e.g. --set flows.training.lr=4e-3 or "
                             "--set 'flows.image_denoiser.block_out_channels=[32,32,64,128,256]'; repeatable")
    parser.add_argument("--latent", action="store_true", help="latent flows (autoencoders trained first; see LATENT_AUTOENCODER)")
    parser.add_argument("--mirror", action="store_true", help="also score flow and peer with test-time left–right mirroring")
    parser.add_argument("--aligned", type=Path, default=None, help="reuse this aligned bundle (same cohort) instead of aligning")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "quality")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cohort = args.cohort
    if cohort is None:
        cohort = out / "head"
        if not (cohort / "splits.json").is_file():
            subprocess.run([sys.executable, str(HERE / "make_cohort.py"), str(cohort), "--anatomy", "head", "--patients", "32",
                            "--seed", "1"], check=True)
    recipe, peer_options = write_recipe(out, size=args.size, ct_8bit=args.ct_8bit, align_batch=args.align_batch, latent=args.latent,
                                        settings=parse_settings(args.settings))
    peer_options += ["--lr", str(args.peer_lr)]
    aligned = args.aligned or out / "aligned.m2g"
    if not (aligned / "bundle.json").is_file():
        medm2g("align", "--data", str(cohort), "--out", str(aligned), "--steps", str(args.align_steps), "--seed", str(args.seed),
               *recipe, log=out / "align-log.txt")
    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else [args.seed]
    results = []
    for pair in args.pairs.split(","):
        for budget in (float(b) for b in args.budgets.split(",")):
            for seed in seeds:
                results.append(run_pair(pair, budget, cohort=cohort, aligned=aligned, out=out, patients=args.patients, seed=seed,
                                        seed_dir=bool(args.seeds), recipe=recipe, peer_options=peer_options, steps=args.steps,
                                        regression=not args.latent, mirror=args.mirror))  # the regression baseline is pixel-space only
                (out / "results.json").write_text(json.dumps(results, indent=1))
                print(table(results[-1:]), flush=True)
    means = mean_over_seeds(results)
    if means:
        (out / "means.json").write_text(json.dumps(means, indent=1))
    print(f"\nmachine: {os.cpu_count()} CPU threads visible, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}\n")
    print(table(results + means))


if __name__ == "__main__":
    main()
