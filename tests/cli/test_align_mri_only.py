"""`medm2g align` on MRI-only cohorts (no reports, no CT): registered contrasts of one subject are aligned
to each other slice by slice through the same InfoNCE, then flows between them train — on the real
BraTS and IXI samples in ../shared/data (skipped where absent), tiny settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from typer.testing import CliRunner

from medm2g_cli.main import app

runner = CliRunner()
torch.set_num_threads(1)

RECIPE = """
name: tiny-mri
data: {image_size: 16, slices_per_volume: 4}
training: {steps: 4, batch_size: 2, lr: 0.003, warmup_steps: 1, save_every: 0, val_every: 0, val_batches: 1}
align:
  embed_dim: 16
  image_widths: [8, 16]
  text_width: 16
  text_layers: 1
  text_heads: 2
  vocab_size: 100
  max_tokens: 32
  modalities: [mri-t1, mri-t2, mri-flair, mri-t1c]
flows:
  shared_attention: {num_layers: 2, query_dim: 16, condition_dim: 16, heads: 2}
  image_denoiser: {block_out_channels: [8, 16], norm_num_groups: 4, attention_heads: 2}
  text_denoiser: {layers: 2}
  objective: {warm_start_fraction: 0.25, sampling_steps: 3}
  slices: 4
  val_items: 4
  sample_items: 1
  training: {steps: 4, batch_size: 4}
  forgetting: {val_batches: 1, psnr_samples: 1}
"""


def _run(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip())


def test_brats_aligns_contrasts_then_trains_t2_flair_to_t1(shared_set, tmp_path: Path) -> None:
    source = shared_set("brain_mri_brats")
    (tmp_path / "tiny.yaml").write_text(RECIPE)
    cohort, bundle = tmp_path / "brats", tmp_path / "b"
    _run("data", "import", "brats", str(source), "--out", str(cohort))
    aligned = _run("align", "--data", str(cohort), "--out", str(bundle), "--recipe", str(tmp_path / "tiny.yaml"))
    assert aligned["patients"] == {"train": 2, "val": 0, "test": 1}  # the importer's split by subject
    losses = aligned["last_losses"]
    assert {"nce_mri-t1_mri-t2", "nce_mri-t1_mri-flair", "nce_mri-t1_mri-t1c"} <= set(losses)
    assert all(np.isfinite(v) for v in losses.values())
    stored = json.loads((bundle / "bundle.json").read_text())
    assert "aligned to mri-t1 slice by slice" in stored["align_hub"] and stored["data"]["synthetic"] is False
    flow = _run("train-flow", "--pair", "t2+flair-t1", "--data", str(cohort), "--bundle", str(bundle), "--recipe", str(tmp_path / "tiny.yaml"))
    assert flow["pair"] == "mri-t2+mri-flair__mri-t1" and flow["stages"][0]["steps"] == 4
    assert flow["stages"][0]["val_end"]["loss"] < flow["stages"][0]["val_start"]["loss"]  # it learns on the held-out subject


def test_unregistered_ixi_is_refused_with_the_fix_registered_ixi_aligns(shared_set, tmp_path: Path) -> None:
    source = shared_set("brain_mri_ixi002")
    one_subject = RECIPE.replace("[mri-t1, mri-t2, mri-flair, mri-t1c]", "[mri-t1, mri-t2]").replace("batch_size: 2", "batch_size: 1")
    (tmp_path / "tiny.yaml").write_text(one_subject)
    _run("data", "import", "ixi", str(source), "--out", str(tmp_path / "plain"))
    refused = runner.invoke(app, ["align", "--data", str(tmp_path / "plain"), "--out", str(tmp_path / "b0"), "--recipe", str(tmp_path / "tiny.yaml")])
    assert refused.exit_code == 2
    assert "mri-t2.nii.gz" in refused.output and "--register" in refused.output
    _run("data", "import", "ixi", str(source), "--out", str(tmp_path / "registered"), "--register")
    aligned = _run("align", "--data", str(tmp_path / "registered"), "--out", str(tmp_path / "b"), "--recipe", str(tmp_path / "tiny.yaml"))
    assert "nce_mri-t1_mri-t2" in aligned["last_losses"]  # one subject: its slices are each other's negatives


def test_one_contrast_and_no_text_still_has_nothing_to_align(tmp_path: Path) -> None:
    from medm2g_core import io
    from medm2g_core.types import ImageMeta

    grid = ImageMeta(spacing=(1.0, 1.0, 1.0), shape=(8, 8, 4))
    for patient in ("S1", "S2", "S3"):
        io.write(tmp_path / "c" / patient / "mri-t1.nii.gz", np.ones(grid.shape, np.int16), grid)
    (tmp_path / "tiny.yaml").write_text(RECIPE)
    result = runner.invoke(app, ["align", "--data", str(tmp_path / "c"), "--out", str(tmp_path / "b"), "--recipe", str(tmp_path / "tiny.yaml")])
    assert result.exit_code == 2 and "nothing to align" in result.output and "align.modalities" in result.output
