"""A tiny aligned bundle with an mri-ct flow and its fitted baselines (size-32 head phantoms)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flows"))
from flow_fixtures import build_aligned, fresh_bundle  # noqa: E402

REGRESSION_STEPS = 10


def build_with_baselines(root: Path) -> dict:
    """``{"chest", "head", "recipe", "bundle", "fit"}``: the flow trained, identity + regression fitted."""
    from medm2g_core.workflows.baselines import fit_baselines
    from medm2g_core.workflows.train_flow import train_flow

    chest, head, recipe = build_aligned(root)
    bundle = fresh_bundle(root, "baselines.m2g")
    train_flow(head, bundle, pair="mri-ct", recipe=recipe)
    fit = fit_baselines(head, bundle, pair="mri-ct", recipe=recipe, steps=REGRESSION_STEPS)
    return {"chest": chest, "head": head, "recipe": recipe, "bundle": bundle, "fit": fit}
