"""`medm2g data synth`: the CLI passes its options to the core and renders a summary."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from medm2g_cli.main import app

runner = CliRunner()


def test_options_reach_the_core(monkeypatch, tmp_path):
    calls = {}

    def fake_cohort(out, **kwargs):
        calls.update(kwargs, out=out)
        folder = Path(out) / "P0001"
        folder.mkdir(parents=True)
        (folder / "labels.json").write_text('{"tumour": 1, "ventriculomegaly": 0}')
        return [folder]

    monkeypatch.setattr("medm2g_core.data.synth.synthesize_cohort", fake_cohort)
    result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "c"), "--patients", "1", "--anatomy", "head",
                                 "--seed", "7", "--size", "128", "--workers", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert calls["patients"] == 1 and calls["anatomy"] == "head" and calls["seed"] == 7
    assert calls["size"] == 128 and calls["workers"] == 0 and callable(calls["progress"])
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["findings"] == {"tumour": 1, "ventriculomegaly": 0} and summary["synthetic"] is True


def test_bad_choices_exit_2(tmp_path):
    for extra in (["--anatomy", "knee"], ["--size", "50"], ["--reports-only", "--preview"]):
        result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "never"), *extra])
        assert result.exit_code == 2
    assert not (tmp_path / "never").exists()  # refused before anything was written


def test_tiny_real_cohort_with_preview(tmp_path):
    out = tmp_path / "cohort"
    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--patients", "2", "--anatomy", "chest",
                                 "--seed", "1", "--workers", "0", "--preview", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["patients"] == 2 and Path(summary["preview"]).is_file()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["P0001", "P0002"]
    assert (out / "P0002" / "xray.png").is_file()


def test_reports_only_writes_a_report_corpus_the_index_reads(tmp_path):
    """`data synth --reports-only`: report.txt and labels.json per patient (the demo trains its text autoencoder on one)."""
    corpus = tmp_path / "corpus"
    result = runner.invoke(app, ["data", "synth", "--out", str(corpus), "--patients", "3", "--seed", "4", "--workers", "0",
                                 "--reports-only", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["reports_only"] is True and summary["patients"] == 3 and summary["synthetic"] is True
    assert sorted(f.name for f in (corpus / "P0003").iterdir()) == ["labels.json", "report.txt"]
    index = runner.invoke(app, ["data", "index", str(corpus), "--json"])
    assert index.exit_code == 0 and '"report"' in index.stdout, index.output
