"""``align()``: train the aligned encoders on a cohort and store them in a bundle (DESIGN §1.1–1.3).

One call of the library = one ``medm2g align`` run. On several processes (``accelerate launch`` or
``torchrun``) every rank calls it; only rank 0 writes the bundle and computes retrieval metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medm2g_core.config import Recipe, apply_overrides, load_recipe, recipe_to_dict, stage_training
from medm2g_core.errors import InputError
from medm2g_core.types import ProgressEvent, ProgressFn, no_progress

STAGE = "align"


@dataclass
class AlignResult:
    """What an alignment run produced.

    Attributes:
        bundle: the bundle folder.
        steps: optimizer steps trained in total; ``resumed_from`` the checkpoint step continued from.
        patients: patients per split ({"train": n, "val": n, "test": n}).
        modalities: imaging modalities aligned to the report.
        last_losses / val_losses: the last training step's and the final validation's losses.
        retrieval: {"val": {"report->xray": {"R@1": .., "R@5": .., "R@10": .., "chance_R@1": .., "chance_R@5": ..,
            "median_rank": .., "n": .., and with labels.json "label_R@k", "label_chance_R@k", "finding_auc",
            "auc_<finding>" ...}, ...}, "heldout": {...}} (heldout = val ∪ test patients;
            ``align.retrieval.retrieval_metrics`` defines each); empty on ranks > 0. Stored in bundle.json.
        synthetic: the cohort was synthetic phantoms.
        seconds: training time; ``num_processes`` processes; ``device`` the torch device rank 0 trained on.
    """

    bundle: Path
    steps: int
    resumed_from: int | None
    patients: dict[str, int]
    modalities: list[str]
    last_losses: dict[str, float]
    val_losses: dict[str, float]
    retrieval: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    synthetic: bool = False
    seconds: float = 0.0
    num_processes: int = 1
    hub: str | None = None
    device: str = "cpu"


def hub_note(modalities: list[Any], *, has_ct: bool) -> str:
    """What stood in for the report hub when the cohort has no text (written into bundle.json)."""
    mris = [m.value for m in modalities if m.is_mri]
    parts = []
    if has_ct:
        parts.append("MRI aligned to CT (InfoNCE over patients)")
    if len(mris) >= 2:
        parts.append(f"{', '.join(mris[1:])} aligned to {mris[0]} slice by slice (InfoNCE, registered contrasts of one subject)")
    return "no reports in the training split: " + "; ".join(parts or ["nothing"]) + "; text↔image retrieval is not measured"


def align(
    data_dir: str | Path,
    bundle_dir: str | Path,
    *,
    recipe: Recipe | str | Path | None = None,
    steps: int | None = None,
    text_encoder: str | Path | None = None,
    vi_weight: float | None = None,
    resume: bool = False,
    seed: int | None = None,
    mixed_precision: str | None = None,
    workers: int | None = None,
    device: str = "auto",
    progress: ProgressFn = no_progress,
) -> AlignResult:
    """Train alignment on the cohort at ``data_dir`` into ``bundle_dir``; return an ``AlignResult``.

    Args:
        data_dir: cohort of patient folders (DESIGN §3).
        bundle_dir: bundle to create or update (its ``align/`` is replaced).
        recipe: a ``Recipe``, a YAML path or recipe name; None = ``demo-cpu``.
        steps, text_encoder, vi_weight, seed, mixed_precision, workers: command-line overrides of the
            recipe (None = keep the recipe's value).
        resume: continue from ``bundle_dir/training/align`` (exactly, same data order and RNG).
        device: ``auto|cpu|cuda[:N]|mps`` (the rules of inference's ``--device``); a requested device that
            is missing is a ``ConfigError`` before the cohort is read.
        progress: receives loading, training and evaluation events (rank 0 only).
    """
    from medm2g_core.align.model import AlignModel
    from medm2g_core.align.retrieval import align_retrieval_report, embed_align_dataset
    from medm2g_core.align.task import AlignTask
    from medm2g_core.bundle import ALIGN, EMA_WEIGHTS, Bundle
    from medm2g_core.bundle import training_dir as bundle_training_dir
    from medm2g_core.data.datasets import AlignDataset
    from medm2g_core.inference.processing import Processing
    from medm2g_core.data.manifest import scan_cohort
    from medm2g_core.data.splits import split_records
    from medm2g_core.io import read_report
    from medm2g_core.modalities import Modality, parse_modality
    from medm2g_core.serialization import atomic_dir, save_weights
    from medm2g_core.training.loop import process_state, seed_everything, train

    data_dir, bundle_dir = Path(data_dir), Path(bundle_dir)
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    recipe = apply_overrides(
        recipe,
        {
            "align.training.steps": steps,
            "align.text_encoder": None if text_encoder is None else str(text_encoder),
            "align.vi_weight": vi_weight,
            "align.training.seed": seed,
            "align.training.mixed_precision": mixed_precision,
            "align.training.workers": workers,
        },
    )
    config = stage_training(recipe, STAGE)
    state = process_state(device)
    if not state.is_main_process:
        progress = no_progress

    if not data_dir.is_dir():
        raise InputError(data_dir, "no such cohort folder", "pass --data DIR holding patient folders (see `medm2g data index`)")
    progress(ProgressEvent(task="scan cohort", completed=0, total=None))
    records = scan_cohort(data_dir)
    if not records:
        raise InputError(data_dir, "no patient folders found", "create one with `medm2g data synth` or `medm2g data import`")
    splits = split_records(records, seed=recipe.data.split_seed, fractions=recipe.data.split_fractions)
    wanted = [parse_modality(name) for name in recipe.align.modalities]
    available = {m for r in records for m in r.files}
    modalities = [m for m in wanted if m in available]
    if not modalities:
        raise InputError(data_dir, f"no patient has any of the modalities to align ({', '.join(recipe.align.modalities)})")
    train_records = splits["train"]
    reports = [read_report(r.files[Modality.REPORT]).text for r in train_records if Modality.REPORT in r.files]
    mris = [m for m in modalities if m.is_mri]
    contrast_pairs = sum(1 for r in train_records if sum(m in r.files for m in mris) >= 2)
    if not reports and not any(Modality.CT in r.files for r in train_records) and not contrast_pairs:
        raise InputError(
            data_dir,
            "the training split has no reports, no CT–MRI pairs and no patient with two MRI contrasts of align.modalities "
            f"({', '.join(m.value for m in modalities)}); nothing to align",
            "add reports or a second contrast, or list the cohort's contrasts in the recipe's align.modalities "
            "(e.g. [mri-t1, mri-t2, mri-flair, mri-t1c] for BraTS)",
        )
    if contrast_pairs:
        # Contrasts aligned slice by slice (align.task) must show the same anatomy at slice k.
        from medm2g_core.data.datasets import check_same_grid

        for record in train_records:
            present = [m for m in mris if m in record.files]
            if len(present) >= 2 and Modality.REPORT not in record.files and Modality.CT not in record.files:
                check_same_grid(record, sources=present[1:], target=present[0])

    data = recipe.data
    common = dict(
        modalities=modalities, image_size=data.image_size, slices_per_volume=data.slices_per_volume,
        preprocess=Processing.from_data(data).preprocess, cache_items=data.cache_items,
    )
    train_dataset = AlignDataset(train_records, augment=recipe.align.augment, seed=config.seed, **common)
    val_dataset = AlignDataset(splits["val"], augment=None, seed=config.seed, **common) if splits["val"] else None

    seed_everything(config.seed)  # the same on every rank, before building the model
    model = AlignModel.build(
        align=recipe.align, modalities=modalities, reports=reports or ["report"], text_encoder_dir=text_encoder,
        image_size=data.image_size,
    )
    bundle = Bundle.create(bundle_dir) if state.is_main_process else None
    state.wait_for_everyone()
    training_dir = bundle_training_dir(bundle_dir, STAGE)
    result = train(
        AlignTask(model, recipe.align),
        train_dataset=train_dataset,
        val_dataset=val_dataset,
        config=config,
        state_dir=training_dir,
        resume=resume,
        progress=progress,
        description=STAGE,
        device=device,
    )
    patients = {name: len(group) for name, group in splits.items()}
    out = AlignResult(
        bundle=bundle_dir, steps=result.steps, resumed_from=result.resumed_from, patients=patients,
        modalities=[m.value for m in modalities], last_losses=result.last_losses, val_losses=result.final_val,
        synthetic=any(getattr(r, "synthetic", False) for r in records), seconds=result.seconds,
        num_processes=result.num_processes, device=result.device,
    )
    if bundle is None:
        return out

    model.eval()
    with atomic_dir(bundle.component_dir(ALIGN)) as tmp:
        model.save_pretrained(tmp)
        if result.ema_state_dicts is not None:
            save_weights(tmp / EMA_WEIGHTS, result.ema_state_dicts["align"])
    progress(ProgressEvent(task="retrieval", completed=0, total=None))
    for name, group in (("val", splits["val"]), ("heldout", splits["val"] + splits["test"])):
        if len(group) >= 2:
            embeddings = embed_align_dataset(model, AlignDataset(group, augment=None, seed=config.seed, **common), batch_size=config.batch_size)
            out.retrieval[name] = align_retrieval_report(embeddings)

    bundle.add_modalities([Modality.REPORT.value, *out.modalities])
    bundle.record_component(ALIGN)
    bundle.set_data_summary(
        patients=len(records), synthetic=out.synthetic, source=str(data_dir.resolve()), splits=patients,
        split_seed=data.split_seed,
    )
    if not reports:
        out.hub = hub_note(modalities, has_ct=any(Modality.CT in r.files for r in train_records))
        bundle.set_align_hub(out.hub)
    bundle.record_stage(
        STAGE, recipe=recipe_to_dict(recipe), steps=result.steps, seconds=round(result.seconds, 1),
        processes=result.num_processes, device=result.device, resumed_from=result.resumed_from,
        final_losses={k: round(v, 5) for k, v in result.last_losses.items()},
    )
    bundle.set_metrics(STAGE, {"val_loss": result.final_val, "retrieval": out.retrieval})
    bundle.save()
    return out


def summarize_retrieval(retrieval: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """Flat rows ({"split", "direction", **metrics with their chance levels}) for tables."""
    rows = []
    for split, directions in retrieval.items():
        for direction, metrics in directions.items():
            rows.append({"split": split, "direction": direction, **metrics})
    return rows
