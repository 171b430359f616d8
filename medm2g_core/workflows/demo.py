"""``run_demo()``: the whole MedM2G pipeline on synthetic phantom cohorts, offline (DESIGN §2, §7).

What one call does, stage by stage (each stage recorded in ``OUT/demo-state.json`` when it finishes):

1. ``cohort``: a chest and a head phantom cohort, ``OUT/cohort/chest`` and ``OUT/cohort/head``
   (``data.synth``), a preview montage of each, and the train/val/test split written as ``splits.json``
   (see *Splits* below).
2. ``align``: one bundle ``OUT/demo.m2g`` aligned on **both** cohorts at once (``align`` is given
   ``OUT/cohort``, a nested cohort whose patient ids are ``chest/P0001``, ``head/P0001``...): X-ray,
   CT and MRI encoders all aligned to the report hub, as one MedM2G model is.
3. ``flow xray-report``, ``flow report-xray`` on the chest cohort (the first also trains the text
   autoencoder), then ``flow mri-ct`` and ``flow t1-t2`` on the head cohort, one after another into the
   same bundle (multi-flow training; each later flow re-measures the earlier ones).
4. ``baselines``: the identity (intensity map) and L1-regression baselines of mri-ct and t1-t2, the
   retrieval and most-frequent report baselines of xray-report.
5. ``predict``: for the **held-out** patients (validation ∪ test split; neither is trained on, and
   ``align`` reports retrieval on the same union) — MRI T1 → CT and T1 → T2 with ``samples`` samples and
   ``mirror`` (mean + std map), X-ray → report, report → X-ray; and each baseline's predictions beside them, in
   ``OUT/predictions/<task>/<system>/<patient>/``.
6. ``probe``: a fixed X-ray probe (``baselines.classifier``, multi-label: cardiomegaly, effusion, pacemaker read
   from the reports by ``data.labeler.probe_findings``) trained once on the training split's real DRRs into
   ``OUT/xray-probe/``; its AUC on the held-out real DRRs says how far it can be trusted.
7. ``evaluate``: MRI→CT and T1→T2 (translation), report generation, X-ray generation (per-finding probe AUC of
   the X-rays generated from the held-out reports, FID/KID on the probe's features, named by its weights' sha256;
   ``medm2g evaluate --features aligned`` keeps the bundle's own encoder as an option) — model against baselines,
   one HTML page and one JSON per task in ``OUT/evaluation/``.
8. ``report``: ``OUT/report.html`` (every task's page in one, with the retrieval table and stage
   times), ``OUT/summary.json``; and the bundle registered as the default model
   (``bundle.set_default_bundle``), so ``medm2g translate OUT/cohort/head/P0001/mri-t1.nii.gz --to ct``
   works with no other flag.

**Rerunning reuses finished stages.** A stage is skipped when the state file records it finished
with the same inputs (its settings and the keys of the stages it depends on); otherwise it runs from
an empty output (its own cohort folder, bundle component or prediction folder), and every stage after
it runs again. A training stage that was interrupted resumes from its last checkpoint in the bundle
(``resume=True`` when the state file says it started with the same inputs). Every file is written
atomically by the stages themselves; the state file is rewritten atomically after each stage.

**Splits.** Patient ids differ between the nested cohort (``chest/P0003``, used by ``align``) and the
per-anatomy cohorts (``P0003``, used by the flows and baselines), so a hash split would put a patient
in different splits for different stages. The demo writes ``splits.json`` into ``OUT/cohort`` and
into each anatomy folder from one assignment (the recipe's hash split of the per-anatomy id), so every
stage holds out exactly the same patients.

Everything is synthetic: the cohorts are phantoms, the bundle records ``synthetic: true`` (so every
later translate/generate run says so), the page and the summary say so.
"""

from __future__ import annotations

import html
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from medm2g_core.bundle import FLOWS as FLOW_COMPONENTS
from medm2g_core.types import ProgressEvent, ProgressFn, no_progress
from medm2g_core.workflows.stages import Stage as _Stage
from medm2g_core.workflows.stages import (
    StageRecord, StageRunner, body_of, budget_text, embedded_png, pick, table_json, write_tile_grid,
)
from medm2g_core.workflows.stages import fmt as _fmt

STATE_FILE = "demo-state.json"
BUNDLE_NAME = "demo.m2g"
RECIPE = "demo-cpu"
ANATOMIES = ("chest", "head")
FLOWS = (("xray-report", "chest"), ("report-xray", "chest"), ("mri-ct", "head"), ("t1-t2", "head"))
BASELINE_PAIRS = (("mri-ct", "head"), ("t1-t2", "head"), ("xray-report", "chest"))
HELD_OUT = ("val", "test")
PROBE_DIR = "xray-probe"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and step counts of one demo run (the rest comes from ``recipes/demo-cpu.yaml``).

    Attributes:
        chest_patients, head_patients: phantom patients per cohort; ``size``: voxels per side (and
            the image size the models see, ``data.image_size``).
        align_steps, text_vae_steps: training steps (None = the recipe's).
        flow_steps: pair → training steps (a pair missing = the recipe's).
        regression_steps: L1-regression baseline steps (None = the flow's steps, a like-for-like budget).
        samples: samples per translated volume (their mean is scored, their std is the uncertainty map).
        mirror: translate with test-time left–right mirroring (``translate --mirror``; the head is symmetric), the
            regression baseline too; the std map then includes the two passes' disagreement.
        translate_patients: held-out head patients whose whole volumes are translated (MRI→CT, T1→T2),
            the first ones in id order; None = all of them. Every slice of a volume is sampled, so this
            is the predict stage's main cost.
        sampler_steps: denoising steps (None = the flow's config, DDIM 10).
        batch_size: training batch size override (None = the recipe's).
        val_batches: validation batches per validation in every stage (None = the recipe's); the text
            autoencoder's validation decodes greedily, token by token, which dominates short runs. Also the
            validation batches of the forgetting report (each new flow re-measures every earlier one).
        psnr_items: items DDIM-sampled for the PSNR of each flow's (re-)measurement (``flows.forgetting.psnr_samples``)
            and for the training sample images (``flows.sample_items``); None = the recipe's (8 and 4).
        probe_steps: training steps of the fixed X-ray probe (``probe`` stage).
    """

    chest_patients: int = 64
    head_patients: int = 32
    size: int = 64
    align_steps: int | None = None
    text_vae_steps: int | None = None
    flow_steps: dict[str, int] = field(default_factory=dict)
    regression_steps: int | None = None
    samples: int = 4
    mirror: bool = False
    translate_patients: int | None = None
    sampler_steps: int | None = None
    batch_size: int | None = None
    val_batches: int | None = None
    psnr_items: int | None = None
    probe_steps: int = 400


FULL = DemoSettings(
    chest_patients=64, head_patients=32, size=64,
    align_steps=100, text_vae_steps=300,
    # The report side is cheap (text VAE 300 steps ≈ 40 s, the text-latent flow 400 steps ≈ 30 s on 2 cores) and
    # was starved: at 150/150 every held-out X-ray got one report; at 300/400, in the flow space, 10 of 14 differ.
    # The image flows train long enough to learn (benchmarks/bench_quality.py, 2 quiet cores): mri-ct at 720 steps
    # (56 s) 71.4 HU, at 240 steps (20 s) 153. The plain peer in those 56 s: 72.5 HU at lr 2e-3, 58.9 at lr 4e-3.
    # Report → X-ray is a v-prediction flow (demo-cpu): 1,200 steps ≈ 115 s; at 600 (seed 0) its effusion AUC was 0.12
    # lower, cardiomegaly and pacemaker within 0.03.
    flow_steps={"xray-report": 400, "report-xray": 1200, "mri-ct": 720, "t1-t2": 540},
    # One sample, mirrored, for the cost of the two samples it used to average: the x0 flow's samples agree to 0.01 HU,
    # while mirroring gained 0.4–0.5 dB (mri-ct, 4 seeds, bench_quality.py --mirror; the plain peer gains as much).
    regression_steps=None, samples=1, mirror=True, translate_patients=3, val_batches=1, psnr_items=4,
)
"""The default demo: 64 chest + 32 head patients at 64³, about half the demo-cpu recipe's steps so that the
whole run aims at 10 min on 2 cores (the recipe's own steps are for `medm2g align`/`train-flow` runs)."""

QUICK = DemoSettings(
    chest_patients=20, head_patients=12, size=32,
    align_steps=20, text_vae_steps=30,
    flow_steps={"xray-report": 30, "report-xray": 20, "mri-ct": 20, "t1-t2": 20},
    regression_steps=None, samples=1, mirror=True, sampler_steps=4, batch_size=8, val_batches=1, psnr_items=2, probe_steps=10,
)
"""``--quick``: a smaller cohort at 32³ and few steps — every stage runs, the numbers mean little (≤ 3 min)."""


@dataclass
class DemoResult:
    """What ``run_demo`` produced.

    Attributes:
        out_dir: the demo folder; bundle: ``OUT/demo.m2g`` (registered as the default model).
        report_html: ``OUT/report.html``; summary_json: ``OUT/summary.json``; state: ``OUT/demo-state.json``.
        budgets: task → system → ``{"steps", "seconds"}`` of its training (``{"training": why none}``).
        stages: every stage in order with its time this run (0 when reused) and ``reused``.
        stage_seconds: the time each stage took when it actually ran (from the state file).
        metrics: headline numbers: ``{"retrieval": {...}, "mri-ct": {...}, "t1-t2": {...},
            "report": {...}, "xray": {...}}``, each ``{system: {metric: value}}`` (retrieval: direction →
            ``{"R@1", "chance_R@1"}``).
        tables: task → ``{"columns": [...], "rows": [[metric, cell...], ...]}`` as in the evaluate pages.
        files: name → path of what to look at (cohorts, previews, predictions, evaluation pages).
        quick: the ``--quick`` settings were used. synthetic: always True (phantom data).
    """

    out_dir: Path
    bundle: Path
    report_html: Path
    summary_json: Path
    state: Path
    stages: list[StageRecord]
    stage_seconds: dict[str, float]
    metrics: dict[str, Any]
    tables: dict[str, dict[str, Any]]
    files: dict[str, Path]
    quick: bool
    seconds: float
    budgets: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    synthetic: bool = True


# --------------------------------------------------------------------------- the run
def run_demo(
    out_dir: str | Path = "medm2g-demo",
    *,
    quick: bool = False,
    seed: int = 0,
    settings: DemoSettings | None = None,
    register_default: bool = True,
    device: str = "auto",
    progress: ProgressFn = no_progress,
) -> DemoResult:
    """Run (or finish) the demo in ``out_dir``; see the module docstring for the stages and files.

    Args:
        out_dir: the demo folder (created). Rerunning in the same folder reuses finished stages.
        quick: ``QUICK`` settings (smaller cohort at 32³, few steps) instead of ``FULL``.
        seed: seed of the cohorts (chest ``seed``, head ``seed + 1``), training and sampling.
        settings: explicit settings (tests); overrides ``quick``.
        register_default: make the bundle the default model (``$MEDM2G_HOME/default-bundle``).
        device: ``auto|cpu|cuda[:N]|mps`` where every stage trains and samples (the rules of ``--device``
            everywhere); a requested device that is missing is a ``ConfigError`` before any stage runs.
        progress: receives one ``"demo"`` event per stage (``message`` = stage name) and every stage's
            own events with the task name prefixed by the stage (``"flow mri-ct: flows/mri-t1__ct"``).
    """
    from medm2g_core.bundle import set_default_bundle
    from medm2g_core.training.devices import resolve_device

    started = time.monotonic()
    resolve_device(device)  # a missing device fails before the cohorts are synthesised
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = settings or (QUICK if quick else FULL)
    run = _Run(out_dir=out_dir, settings=settings, seed=seed, quick=quick, progress=progress, device=device)
    for stage in run.plan():
        run.do(stage)
    run.progress(ProgressEvent(task="demo", completed=len(run.records), total=len(run.records), message="done"))
    if register_default:
        set_default_bundle(run.bundle)
    result = run.results.get("report", {})
    stage_seconds = {name: float(entry.get("seconds", 0.0)) for name, entry in run.state.data["stages"].items()}
    return DemoResult(
        out_dir=out_dir, bundle=run.bundle, report_html=out_dir / "report.html", summary_json=out_dir / "summary.json",
        state=run.state.path, stages=run.records, stage_seconds=stage_seconds, metrics=result.get("metrics", {}),
        tables=result.get("tables", {}), files={k: Path(v) for k, v in run.files().items()}, quick=quick,
        seconds=time.monotonic() - started, budgets=result.get("budgets", {}),
    )


class _Run(StageRunner):
    def __init__(self, *, out_dir: Path, settings: DemoSettings, seed: int, quick: bool, progress: ProgressFn, device: str = "auto"):
        super().__init__(out_dir=out_dir, state_file=STATE_FILE, bundle_name=BUNDLE_NAME, seed=seed, progress=progress)
        self.device = device
        self.settings = settings
        self.quick = quick
        self._recipe: Any = None

    # -- plumbing --------------------------------------------------------------------------------

    def recipe(self) -> Any:
        """demo-cpu with the demo's size and step overrides (what every stage is given)."""
        if self._recipe is None:
            from medm2g_core.config import apply_overrides, load_recipe

            s = self.settings
            overrides: dict[str, Any] = {"data.image_size": s.size, "align.training.steps": s.align_steps}
            recipe = apply_overrides(load_recipe(RECIPE), overrides)
            text_vae = dict(recipe.text_vae)
            if s.text_vae_steps is not None:
                text_vae["training"] = {**dict(text_vae.get("training") or {}), "steps": s.text_vae_steps}
            flows = dict(recipe.flows)
            for name, value in (("batch_size", s.batch_size), ("val_batches", s.val_batches)):
                if value is not None:
                    flows["training"] = {**dict(flows.get("training") or {}), name: value}
                    text_vae["training"] = {**dict(text_vae.get("training") or {}), name: value}
            # The forgetting report (each flow + every earlier one re-measured after each new flow) and the
            # training sample images are fixed costs per flow: DDIM-sampled items, validation batches.
            forgetting = dict(flows.get("forgetting") or {})
            if s.val_batches is not None:
                forgetting["val_batches"] = s.val_batches
            if s.psnr_items is not None:
                forgetting["psnr_samples"] = s.psnr_items
                flows["sample_items"] = s.psnr_items
            flows["forgetting"] = forgetting
            if s.sampler_steps is not None:  # in-training samples and PSNR use the steps predict uses
                flows["objective"] = {**dict(flows.get("objective") or {}), "sampling_steps": s.sampler_steps}
            overrides = {"text_vae": text_vae, "flows": flows, "align.training.batch_size": s.batch_size,
                         "align.training.val_batches": s.val_batches, "training.val_batches": s.val_batches}
            self._recipe = apply_overrides(recipe, overrides)
        return self._recipe

    def recipe_record(self) -> dict[str, Any]:
        from medm2g_core.config import recipe_to_dict

        return recipe_to_dict(self.recipe())

    def held_out(self, anatomy: str) -> list[str]:
        """Patient ids (folder names) of the held-out split of one anatomy, sorted."""
        from medm2g_core.serialization import read_json

        splits = read_json(self.cohort / anatomy / "splits.json")
        return sorted(pid for split in HELD_OUT for pid in splits.get(split, []))

    def files(self) -> dict[str, str]:
        found = {
            "report": self.out_dir / "report.html", "summary": self.out_dir / "summary.json", "bundle": self.bundle,
            "cohort_chest": self.cohort / "chest", "cohort_head": self.cohort / "head",
            "preview_chest": self.cohort / "chest-preview.png", "preview_head": self.cohort / "head-preview.png",
            "montage": self.out_dir / "montage.png",
            "predictions": self.predictions, "evaluation": self.evaluation, "state": self.state.path,
        }
        return {name: str(path) for name, path in found.items() if path.exists()}

    # -- the plan --------------------------------------------------------------------------------
    def plan(self) -> list[_Stage]:
        s = self.settings
        recipe = self.recipe_record()
        data_inputs = {k: recipe["data"][k] for k in ("split_seed", "split_fractions")}
        stages = [
            _Stage("cohort", {"chest": s.chest_patients, "head": s.head_patients, "size": s.size, **data_inputs}, (),
                   self.make_cohort, clean=(self.cohort,)),
            _Stage("align", {"recipe": recipe["align"], "data": recipe["data"], "training": recipe["training"]}, ("cohort",),
                   self.align, clean=(self.bundle,), resumable=True),
        ]
        previous = "align"
        for pair, anatomy in FLOWS:
            inputs = {"flows": recipe["flows"], "steps": s.flow_steps.get(pair), "anatomy": anatomy}
            if pair == "xray-report":
                inputs["text_vae"] = recipe["text_vae"]
            name = f"flow {pair}"
            stages.append(_Stage(name, inputs, (previous,), self.flow_action(pair, anatomy), resumable=True))
            previous = name
        stages += [
            _Stage("baselines", {"regression_steps": s.regression_steps, "pairs": BASELINE_PAIRS}, (previous,), self.fit_baselines),
            _Stage("predict", {"samples": s.samples, "mirror": s.mirror, "sampler_steps": s.sampler_steps, "held_out": HELD_OUT,
                               "translate_patients": s.translate_patients}, ("baselines",),
                   self.predict, clean=(self.predictions,)),
            _Stage("probe", {"steps": s.probe_steps, "size": s.size, "version": 1}, ("cohort",), self.train_probe,
                   clean=(self.out_dir / PROBE_DIR,)),
            _Stage("evaluate", {"version": 2}, ("predict", "probe"), self.evaluate, clean=(self.evaluation,)),
            _Stage("report", {"version": 3}, ("evaluate",), self.report),
        ]
        self.total = len(stages)
        return stages

    def budgets(self, metrics: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
        """``{task: {system: {"steps", "seconds"} | {"training": why none}}}`` for every system the summary scores:
        the flow's training stage, the regression baseline's own run, and the baselines that train nothing."""
        fitted = (self.results.get("baselines") or {}).get("budgets", {})
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for pair, systems in metrics.items():
            if pair == "retrieval":
                continue
            flow = next((stage for stage in (self.results.get(f"flow {pair}") or {}).get("stages", [])
                         if stage["name"].startswith(f"{FLOW_COMPONENTS}/")), None)
            out[pair] = {}
            for system in systems:
                if system == "model" and flow is not None:
                    out[pair][system] = {"steps": flow["steps"], "seconds": flow["seconds"]}
                elif system in fitted.get(pair, {}) and fitted[pair][system].get("steps"):
                    out[pair][system] = dict(fitted[pair][system])
                else:
                    out[pair][system] = {"training": NO_TRAINING.get(system, "none")}
        return out

    # -- stages ----------------------------------------------------------------------------------
    def make_cohort(self, resume: bool) -> dict[str, Any]:
        from medm2g_core.data.splits import split_of
        from medm2g_core.data.synth import synthesize_cohort
        from medm2g_core.data.synth.preview import write_preview
        from medm2g_core.serialization import write_json

        s = self.settings
        recipe = self.recipe()
        nested: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        counts: dict[str, dict[str, int]] = {}
        for offset, (anatomy, patients) in enumerate((("chest", s.chest_patients), ("head", s.head_patients))):
            folder = self.cohort / anatomy
            folders = synthesize_cohort(folder, patients=patients, anatomy=anatomy, seed=self.seed + offset, size=s.size,
                                        progress=self.stage_progress(f"cohort {anatomy}"))
            write_preview(self.cohort / f"{anatomy}-preview.png", folders, anatomy=anatomy)
            splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
            for path in folders:
                split = split_of(path.name, seed=recipe.data.split_seed, fractions=recipe.data.split_fractions)
                splits[split].append(path.name)
                nested[split].append(f"{anatomy}/{path.name}")
            write_json(folder / "splits.json", splits)
            counts[anatomy] = {name: len(ids) for name, ids in splits.items()}
            held_out = sum(counts[anatomy][name] for name in HELD_OUT)
            if held_out < 2 or counts[anatomy]["train"] < 2:
                from medm2g_core.errors import ConfigError

                raise ConfigError(f"the {anatomy} cohort of {patients} patients splits into {counts[anatomy]}; "
                                  "the demo needs ≥ 2 training and ≥ 2 held-out patients; use more patients")
        write_json(self.cohort / "splits.json", nested)
        return {"splits": counts}

    def align(self, resume: bool) -> dict[str, Any]:
        from medm2g_core.workflows.align import align

        result = align(self.cohort, self.bundle, recipe=self.recipe(), seed=self.seed, resume=resume, device=self.device,
                       progress=self.stage_progress("align"))
        return {"steps": result.steps, "patients": result.patients, "modalities": result.modalities,
                "retrieval": result.retrieval, "seconds": round(result.seconds, 1)}

    def flow_action(self, pair: str, anatomy: str) -> Callable[[bool], dict[str, Any]]:
        def action(resume: bool) -> dict[str, Any]:
            from medm2g_core.workflows.train_flow import train_flow

            result = train_flow(self.cohort / anatomy, self.bundle, pair=pair, recipe=self.recipe(),
                                steps=self.settings.flow_steps.get(pair), resume=resume, seed=self.seed, device=self.device,
                                progress=self.stage_progress(f"flow {pair}"))
            return {"pair": result.pair, "metrics": result.metrics, "forgetting": result.forgetting,
                    "stages": [{"name": r.name, "steps": r.steps, "seconds": round(r.seconds, 1)} for r in result.stages]}

        return action

    def fit_baselines(self, resume: bool) -> dict[str, Any]:
        from medm2g_core.workflows.baselines import fit_baselines

        fitted, budgets = {}, {}
        for pair, anatomy in BASELINE_PAIRS:
            result = fit_baselines(self.cohort / anatomy, self.bundle, pair=pair, recipe=self.recipe(),
                                   steps=self.settings.regression_steps, seed=self.seed, device=self.device,
                                   progress=self.stage_progress(f"baselines {pair}"))
            fitted[pair] = sorted(result["baselines"])
            budgets[pair] = {name: {k: details[k] for k in ("steps", "seconds") if k in details}
                             for name, details in result["baselines"].items()}
        return {"fitted": fitted, "budgets": budgets}

    def predict(self, resume: bool) -> dict[str, Any]:
        from medm2g_core.workflows.baselines import predict_baselines
        from medm2g_core.jobs.generate import generate_batch
        from medm2g_core.jobs.translate import translate_batch
        from medm2g_core.modalities import parse_modality

        s = self.settings
        head, chest = self.held_out("head"), self.held_out("chest")
        head = head[: s.translate_patients] if s.translate_patients else head
        counts: dict[str, Any] = {}
        for pair, target in (("mri-ct", "ct"), ("t1-t2", "mri-t2")):
            out = self.predictions / pair
            inputs = [str(self.cohort / "head" / pid / "mri-t1.nii.gz") for pid in head]
            batch = translate_batch(inputs, to=parse_modality(target), out=out / "model", model=self.bundle, samples=s.samples, seed=self.seed,
                                    steps=s.sampler_steps, mirror=s.mirror, device=self.device, overwrite=True,
                                    progress=self.stage_progress(f"predict {pair}"))
            counts[pair] = {"model": batch.counts}
            predict_baselines(self.bundle, pair=pair, inputs=self.cohort / "head", out_dir=out, patients=head, device=self.device,
                              mirror=s.mirror, progress=self.stage_progress(f"predict {pair} baselines"))
        generated = {"xray-report": ("report", "xray.png"), "report-xray": ("xray", "report.txt")}
        for pair, (target, source_file) in generated.items():
            batch = generate_batch([], each=[self.cohort / "chest" / pid / source_file for pid in chest], to=parse_modality(target),
                                   model=self.bundle, out=self.predictions / pair / "model", seed=self.seed,
                                   steps=s.sampler_steps, device=self.device, overwrite=True,
                                   progress=self.stage_progress(f"predict {pair}"))
            counts[pair] = {"model": batch.counts}
        predict_baselines(self.bundle, pair="xray-report", inputs=self.cohort / "chest", out_dir=self.predictions / "xray-report",
                          patients=chest, device=self.device, progress=self.stage_progress("predict xray-report baselines"))
        failed = {pair: c["model"].get("failed", 0) for pair, c in counts.items() if c["model"].get("failed", 0)}
        if failed:
            from medm2g_core.errors import MedM2GError

            raise MedM2GError(f"some demo predictions failed ({failed}); see {self.predictions}/*/model/run.json")
        return {"patients": {"head": head, "chest": chest}, "counts": counts}

    def probe_images(self, patients: list[str], folder: Path | None = None) -> tuple[Any, list[list[int]]]:
        """Standardised chest X-rays of ``patients`` (from ``folder``, default the chest cohort) and the probe findings
        their reports in the chest cohort name."""
        from medm2g_core import io
        from medm2g_core.baselines.classifier import standardise
        from medm2g_core.data.labeler import probe_findings

        folder = folder or self.cohort / "chest"
        kept = [pid for pid in patients if (folder / pid / "xray.png").is_file()]
        images = standardise([io.read(folder / pid / "xray.png")[0] for pid in kept], self.settings.size)
        return images, [probe_findings(io.read_report(self.cohort / "chest" / pid / "report.txt").text) for pid in kept]

    def train_probe(self, resume: bool) -> dict[str, Any]:
        """The fixed X-ray probe: a plain multi-label MONAI classifier on the training split's real DRRs, never
        retrained; its held-out AUC on the real DRRs is stated beside every number it gives."""
        from medm2g_core.baselines.classifier import ImageClassifierConfig, per_finding_auc, train_classifier, weights_sha256
        from medm2g_core.config import merge_training
        from medm2g_core.data.labeler import PROBE_FINDINGS
        from medm2g_core.serialization import read_json

        s = self.settings
        x, y = self.probe_images(sorted(read_json(self.cohort / "chest" / "splits.json").get("train", [])))
        training = merge_training(self.recipe().training, {
            "steps": s.probe_steps, "batch_size": min(16, len(x)), "lr": 1e-3, "warmup_steps": min(20, s.probe_steps // 4),
            "ema_decay": None, "save_every": 0, "val_every": 0, "seed": self.seed}, where="probe")
        config = ImageClassifierConfig(classes=list(PROBE_FINDINGS), size=s.size, multi_label=True)
        model, trained = train_classifier(x, y, config=config, training=training, state_dir=self.out_dir / "training" / PROBE_DIR,
                                          device=self.device, progress=self.stage_progress("probe"))
        directory = self.out_dir / PROBE_DIR
        model.save(directory)
        hx, hy = self.probe_images(self.held_out("chest"))
        return {"steps": s.probe_steps, "seconds": round(trained.seconds, 1), "train_images": len(y),
                "sha256": weights_sha256(directory), "held_out_positives": {k: sum(row[i] for row in hy) for i, k in enumerate(PROBE_FINDINGS)},
                "held_out_real_auc": per_finding_auc(model, hx, hy)}

    def evaluate(self, resume: bool) -> dict[str, Any]:
        from medm2g_core.baselines.classifier import classifier_features, per_finding_auc
        from medm2g_core.workflows.evaluate import evaluate
        from medm2g_core.serialization import write_json

        tasks = {
            "mri-ct": ("translation", "head", ("identity", "regression")),
            "t1-t2": ("translation", "head", ("identity", "regression")),
            "xray-report": ("report", "chest", ("retrieval", "most-frequent")),
            "report-xray": ("xray", "chest", ()),
        }
        probe = self.results["probe"]
        extractor = classifier_features(self.out_dir / PROBE_DIR, what=f"{probe['train_images']} training DRRs")
        probe_model, probe_name = extractor.model, extractor.name
        tables: dict[str, Any] = {}
        for pair, (task, anatomy, baselines) in tasks.items():
            folder = self.predictions / pair
            features = extractor if task == "xray" else None
            evaluation = evaluate(task, pred_dir=folder / "model", ref_dir=self.cohort / anatomy,
                                  html=self.evaluation / f"{pair}.html",
                                  baselines={name: folder / name for name in baselines}, features=features,
                                  progress=self.stage_progress(f"evaluate {pair}"))
            table = table_json(evaluation)
            if task == "xray":  # does each generated X-ray show what its report asks for? (the probe's AUC per finding)
                held = self.held_out("chest")
                x, y = self.probe_images(held, folder / "model")
                generated = per_finding_auc(probe_model, x, y)
                table["values"]["model"].update({f"AUC[{probe_name}, {k}]": v for k, v in generated.items() if v is not None})
                table["values"]["real held-out"] = {f"AUC[{probe_name}, {k}]": v for k, v in probe["held_out_real_auc"].items()
                                                    if v is not None}
                table["probe"] = {"name": probe_name, **probe}
            write_json(self.evaluation / f"{pair}.json", {"task": task, "pair": pair, "synthetic": True, **table})
            tables[pair] = table
        return {"tables": tables}

    def report(self, resume: bool) -> dict[str, Any]:
        from medm2g_core.serialization import write_json, write_text

        tables = self.results["evaluate"]["tables"]
        retrieval = self.results["align"].get("retrieval", {})
        metrics = headline_metrics(tables, retrieval)
        seconds = {name: float(entry.get("seconds", 0.0)) for name, entry in self.state.data["stages"].items()}
        summary = {"synthetic": True, "quick": self.quick, "settings": asdict(self.settings), "seed": self.seed,
                   "bundle": str(self.bundle.resolve()), "metrics": metrics, "budgets": self.budgets(metrics),
                   "stage_seconds": seconds,
                   "held_out": self.results["predict"]["patients"], "files": self.files()}
        write_json(self.out_dir / "summary.json", summary)
        patients = self.results["predict"]["patients"]
        write_montage(self.out_dir / "montage.png", cohort=self.cohort, predictions=self.predictions,
                      head=patients["head"], chest=patients["chest"])
        pages = {pair: self.evaluation / f"{pair}.html" for pair in tables}
        write_text(self.out_dir / "report.html", render_report(summary, tables=tables, retrieval=retrieval, pages=pages,
                                                               previews=[self.cohort / f"{a}-preview.png" for a in ANATOMIES],
                                                               montage=self.out_dir / "montage.png"))
        return {"metrics": metrics, "tables": tables, "budgets": summary["budgets"]}


# --------------------------------------------------------------------------- montage
MONTAGE_TILE = 120
MONTAGE_CT_WINDOW = (-200.0, 1500.0)
"""HU window of the montage's CT tiles: air, soft tissue and bone apart, as a generated CT is first judged
(a brain window, 40/80, shows mostly the demo model's HU offset, which the MAE in the table reports)."""


def write_montage(path: str | Path, *, cohort: Path, predictions: Path, head: list[str], chest: list[str]) -> Path:
    """A PNG of real demo outputs (grey, a few hundred KB at most): per head patient (first two held-out)
    MRI T1 | generated CT (mean) | reference CT | std over samples (and mirrored passes) | generated T2 | reference T2 (mid-upper
    axial slice, radiological view); then chest DRRs beside X-rays generated from their reports."""
    import numpy as np

    from medm2g_core import io
    from medm2g_core.data.synth.preview import AXIAL_FRACTION, window_uint8 as window

    def axial(volume, k):
        return volume[:, :, k].T

    def read(file):
        return io.read(file)[0] if Path(file).is_file() else None

    rows: list[tuple[str, list[tuple[str, Any]]]] = []
    for pid in head[:2]:
        reference_ct = read(cohort / "head" / pid / "ct.nii.gz")
        if reference_ct is None:
            continue
        k = int(round(AXIAL_FRACTION["head"] * (reference_ct.shape[2] - 1)))
        t1, t2 = read(cohort / "head" / pid / "mri-t1.nii.gz"), read(cohort / "head" / pid / "mri-t2.nii.gz")
        ct, std = read(predictions / "mri-ct" / "model" / pid / "ct.nii.gz"), read(predictions / "mri-ct" / "model" / pid / "ct.std.nii.gz")
        fake_t2 = read(predictions / "t1-t2" / "model" / pid / "mri-t2.nii.gz")
        low, high = MONTAGE_CT_WINDOW
        t1_high = float(np.percentile(t1, 99.5)) if t1 is not None else 1.0
        t2_high = float(np.percentile(t2, 99.5)) if t2 is not None else 1.0
        tiles = [("MRI T1 (input)", None if t1 is None else window(axial(t1, k), 0, t1_high)),
                 ("CT generated", None if ct is None else window(axial(ct, k), low, high)),
                 ("CT reference", window(axial(reference_ct, k), low, high)),
                 ("CT std (HU)", None if std is None else window(axial(std, k), 0, max(float(np.percentile(std, 99.5)), 1.0))),
                 ("T2 generated", None if fake_t2 is None else window(axial(fake_t2, k), 0, t2_high)),
                 ("T2 reference", None if t2 is None else window(axial(t2, k), 0, t2_high))]
        rows.append((f"head {pid}\nCT window\n{low:.0f}..{high:.0f} HU", tiles))
    chest_tiles: list[tuple[str, Any]] = []
    for pid in chest[:3]:
        drr, fake = read(cohort / "chest" / pid / "xray.png"), read(predictions / "report-xray" / "model" / pid / "xray.png")
        chest_tiles += [(f"{pid} DRR", None if drr is None else window(drr, 0, 65535)),
                        (f"{pid} from report", None if fake is None else window(fake, 0, 65535))]
    if chest_tiles:
        rows.append(("chest X-ray", chest_tiles))
    return write_tile_grid(path, rows, tile=MONTAGE_TILE, left=92,
                           footer="SYNTHETIC phantoms and outputs of the medm2g demo model - not for diagnosis")


# --------------------------------------------------------------------------- summary and page
NO_TRAINING = {"identity": "intensity map, no gradient steps",
               "retrieval": "nearest training report, no gradient steps",
               "most-frequent": "one constant report, no gradient steps",
               "real held-out": "the held-out real DRRs themselves: how far the probe can be trusted"}
"""What the budget column says for baselines that do not train."""


HEADLINES = {
    "mri-ct": {"PSNR dB": r"^ct: PSNR", "MAE HU": r"^ct: MAE", "SSIM": r"^ct: SSIM"},
    "t1-t2": {"PSNR dB": r"^mri-t2: PSNR", "SSIM": r"^mri-t2: SSIM"},
    "xray-report": {"BLEU-4": r"^BLEU-4", "ROUGE-L": r"^ROUGE-L", "CE-F1": r"^CE-f1\[[^]]*micro", "CE-F1 (any)": r"^CE-f1"},
    "report-xray": {"FID": r"^FID", "KID": r"^KID", "AUC cardiomegaly": r"^AUC\[.*cardiomegaly\]", "AUC effusion": r"^AUC\[.*effusion\]",
                    "AUC pacemaker": r"^AUC\[.*pacemaker\]"},
}


def headline_metrics(tables: dict[str, Any], retrieval: dict[str, Any]) -> dict[str, Any]:
    """The few numbers the summary shows: ``{task: {system: {metric: value}}}`` and retrieval R@1 vs chance."""
    metrics: dict[str, Any] = {"retrieval": {}}
    for direction, values in (retrieval.get("heldout") or retrieval.get("val") or {}).items():
        metrics["retrieval"][direction] = {"R@1": values.get("R@1"), "chance_R@1": values.get("chance_R@1"), "n": values.get("n")}
    for pair, patterns in HEADLINES.items():
        systems = (tables.get(pair) or {}).get("values", {})
        metrics[pair] = {}
        for system, values in systems.items():
            picked = {label: pick(values, pattern) for label, pattern in patterns.items()}
            if picked.get("CE-F1") is None and "CE-F1 (any)" in picked:
                picked["CE-F1"] = picked["CE-F1 (any)"]
            picked.pop("CE-F1 (any)", None)
            metrics[pair][system] = {k: v for k, v in picked.items() if v is not None}
    return metrics


TASK_TITLES = {"mri-ct": "MRI T1 → CT (translation)", "t1-t2": "MRI T1 → T2 (translation)",
               "xray-report": "X-ray → report (report generation)", "report-xray": "report → X-ray (generation: probe AUC, FID/KID)"}


def render_report(summary: dict[str, Any], *, tables: dict[str, Any], retrieval: dict[str, Any], pages: dict[str, Path],
                  previews: list[Path], montage: Path | None = None) -> str:
    """``report.html``: a synthetic-data banner, headline numbers, retrieval, each task's page, stage times."""
    from medm2g_core.metrics.report import page_head

    e = html.escape
    out = [page_head("medm2g demo (synthetic phantoms)",
                     css=".banner{background:#fff3cd;border:1px solid #e0c060;padding:8px 12px;font-size:14px}"
                         ".preview img{max-width:100%;image-rendering:pixelated}"),
           "<h1>medm2g demo — MedM2G on synthetic phantom cohorts</h1>",
           '<p class="banner"><b>SYNTHETIC.</b> Every patient here is a computer-generated phantom, and the model was '
           "trained on nothing else: the numbers show that the pipeline works end to end, not how MedM2G performs on real "
           "data. Not for diagnosis.</p>"]
    settings = summary["settings"]
    out.append(f'<p class="notes">{"--quick, " if summary["quick"] else ""}{settings["chest_patients"]} chest + '
               f'{settings["head_patients"]} head patients at {settings["size"]}³, seed {summary["seed"]}; bundle {e(summary["bundle"])} '
               "(registered as the default model). Held-out patients = validation ∪ test split (never trained on)."
               + (" Volumes translated with test-time left–right mirroring (<code>translate --mirror</code>), the "
                  "regression baseline too." if settings.get("mirror") else "") + "</p>")
    out.append('<h2 id="summary">Summary</h2><table><thead><tr><th>task</th><th>system</th><th>metrics</th>'
               '<th>training budget (2-core CPU seconds where trained)</th></tr></thead><tbody>')
    for direction, values in summary["metrics"].get("retrieval", {}).items():
        out.append(f"<tr><td>retrieval {e(direction)}</td><td>model</td><td>R@1 {_fmt(values.get('R@1'))} "
                   f"(chance {_fmt(values.get('chance_R@1'))}, n={values.get('n')})</td><td>align stage</td></tr>")
    budgets = summary.get("budgets", {})
    for pair, systems in summary["metrics"].items():
        if pair == "retrieval":
            continue
        for system, values in systems.items():
            text = ", ".join(f"{k} {_fmt(v)}" for k, v in values.items()) or "—"
            budget = budget_text(budgets.get(pair, {}).get(system))
            out.append(f"<tr><td>{e(TASK_TITLES.get(pair, pair))}</td><td>{e(system)}</td><td>{e(text)}</td><td>{e(budget)}</td></tr>")
    out.append("</tbody></table>")
    if montage is not None and montage.is_file():
        out.append('<h2 id="montage">Outputs at a glance (held-out patients)</h2><div class="preview">'
                   f'{embedded_png(montage, "demo montage")}</div>')

    out.append('<h2 id="retrieval">Alignment: cross-modal retrieval (align stage)</h2>')
    rows = [(split, direction, values) for split, directions in retrieval.items() for direction, values in directions.items()]
    if rows:
        keys = [k for k in ("R@1", "R@5", "R@10", "median_rank", "chance_R@1", "n") if any(k in v for _, _, v in rows)]
        out.append("<table><thead><tr><th>split</th><th>direction</th>" + "".join(f"<th>{e(k)}</th>" for k in keys) + "</tr></thead><tbody>")
        for split, direction, values in rows:
            out.append(f"<tr><td>{e(split)}</td><td>{e(direction)}</td>" + "".join(f"<td>{_fmt(values.get(k))}</td>" for k in keys) + "</tr>")
        out.append("</tbody></table>")
    else:
        out.append('<p class="notes">No retrieval measured (too few held-out patients).</p>')

    for pair, page in pages.items():
        out.append(f'<h2 id="{e(pair)}">{e(TASK_TITLES.get(pair, pair))}</h2>')
        out.append(f'<p class="notes">Full page: <a href="evaluation/{e(page.name)}">evaluation/{e(page.name)}</a>; '
                   f"JSON: evaluation/{e(page.stem)}.json</p>")
        out.append(body_of(page, pair))

    out.append('<h2 id="cohorts">The phantom cohorts</h2><div class="preview">')
    for preview in previews:
        if preview.is_file():
            out.append(f'<figure>{embedded_png(preview, preview.stem)}<figcaption>{e(preview.name)}</figcaption></figure>')
    out.append("</div>")
    out.append('<h2 id="stages">Stages (seconds when each last ran)</h2><table><thead><tr><th>stage</th><th>seconds</th></tr></thead><tbody>')
    for name, seconds in summary["stage_seconds"].items():
        out.append(f"<tr><td>{e(name)}</td><td>{seconds:.1f}</td></tr>")
    out.append("</tbody></table></body></html>")
    return "\n".join(out)
