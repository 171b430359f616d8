from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from typer.testing import CliRunner

from medm2g_cli.main import app

sys.path.insert(0, str(Path(__file__).parents[1]))
from tiny_cohort import write_cohort  # noqa: E402

runner = CliRunner()
torch.set_num_threads(1)

TINY_RECIPE = """
name: tiny
data: {image_size: 16, split_fractions: [0.5, 0.5, 0.0]}
training: {steps: 4, batch_size: 4, lr: 0.003, warmup_steps: 1, save_every: 2, val_every: 2}
align:
  embed_dim: 16
  image_widths: [8, 16]
  text_width: 16
  text_layers: 1
  text_heads: 2
  vocab_size: 100
  max_tokens: 32
  modalities: [xray, ct, mri-t1]
"""


def test_align_passes_options_to_the_core(tmp_path, monkeypatch):
    seen = {}

    def fake_align(data, out, **kwargs):
        from medm2g_core.workflows.align import AlignResult

        seen.update(kwargs, data=data, out=out)
        return AlignResult(bundle=out, steps=3, resumed_from=None, patients={"train": 2}, modalities=["xray"], last_losses={}, val_losses={})

    monkeypatch.setattr("medm2g_core.workflows.align.align", fake_align)
    result = runner.invoke(app, ["align", "--data", str(tmp_path), "--out", str(tmp_path / "b"), "--steps", "3", "--vi-weight", "0", "--resume", "--json"])
    assert result.exit_code == 0, result.output
    assert seen["steps"] == 3 and seen["vi_weight"] == 0.0 and seen["resume"] is True and seen["text_encoder"] is None
    assert seen["device"] == "auto"  # the default: CUDA, then MPS, then the CPU, as for inference
    assert json.loads(result.stdout)["steps"] == 3
    bad = runner.invoke(app, ["align", "--data", str(tmp_path), "--out", str(tmp_path / "b"), "--text-encoder", str(tmp_path / "nope")])
    assert bad.exit_code == 2


def test_align_and_info_end_to_end(tmp_path):
    for record in write_cohort(tmp_path / "cohort", patients=12, size=16):
        (record.folder / "labels.json").write_text(json.dumps(record.labels))  # for the label-aware metrics
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    args = ["align", "--data", str(tmp_path / "cohort"), "--out", str(tmp_path / "b"), "--recipe", str(tmp_path / "tiny.yaml"),
            "--device", "cpu", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["steps"] == 4 and "report->xray" in report["retrieval"]["val"]
    assert report["device"] == "cpu"  # trained where --device said, and recorded with the stage
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["stages"]["align"]["device"] == "cpu"
    xray = report["retrieval"]["heldout"]["report->xray"]
    assert xray["chance_R@1"] == 1 / xray["n"] and {"R@5", "chance_R@5", "label_R@1", "label_chance_R@1", "finding_auc"} <= set(xray)
    assert (tmp_path / "b" / "align" / "model.safetensors").is_file()
    assert (tmp_path / "b" / "training" / "align").is_dir()
    info = runner.invoke(app, ["info", str(tmp_path / "b"), "--json"])
    assert info.exit_code == 0, info.output
    summary = json.loads(info.stdout)
    assert summary["modalities"] == ["report", "xray", "ct", "mri-t1"]
    assert summary["stages"]["align"]["recipe"]["align"]["embed_dim"] == 16
    assert "report->xray" in summary["metrics"]["align"]["retrieval"]["val"]
    stored = json.loads((tmp_path / "b" / "bundle.json").read_text())["metrics"]["align"]["retrieval"]["heldout"]["report->xray"]
    assert stored["chance_R@1"] == xray["chance_R@1"] and stored["label_chance_R@5"] == xray["label_chance_R@5"]
    table = runner.invoke(app, args[:-1] + ["--resume"], env={"COLUMNS": "200"})  # tables on stderr: figures beside chance
    assert table.exit_code == 0 and f"({xray['chance_R@1']:.2f})" in table.output and "finding AUC" in table.output and "held-out" in table.output
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0 and json.loads(resumed.stdout)["resumed_from"] == 4
    missing = runner.invoke(app, ["info", str(tmp_path / "nothing")])
    assert missing.exit_code == 2
