"""`medm2g generate` CLI: options reach the core; usage errors exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medm2g_cli.main import app
from medm2g_core.jobs import runs as batch
from medm2g_core.modalities import Modality
from medm2g_core.inference.generate import as_report
from medm2g_core.jobs.generate import looks_like_path

runner = CliRunner()


def test_options_reach_the_core(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict = {}

    def fake(sources, **kwargs):
        seen.update(kwargs, sources=sources)
        item = batch.ItemResult("<text>", "ok", output="out/xray.png", details={"texts": ["FINDINGS: x"]})
        kwargs["on_result"](item)
        return batch.BatchResult(items=[item])

    monkeypatch.setattr("medm2g_core.jobs.generate.generate_batch", fake)
    result = runner.invoke(app, ["generate", "--to", "xray", "--from", "report.txt", "--from", "prior.nii.gz", "--weights", "0.7,0.3",
                                 "--samples", "3", "--seed", "5", "--out", str(tmp_path), "--format", "dicom", "--json"])
    assert result.exit_code == 0, result.output
    assert seen["sources"] == ["report.txt", "prior.nii.gz"] and seen["weights"] == [0.7, 0.3]
    assert (seen["to"], seen["samples"], seen["seed"], seen["output_format"]) == (Modality.XRAY, 3, 5, "dicom")
    assert json.loads(result.stdout)["details"]["texts"] == ["FINDINGS: x"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--to", "ct", "--from", "x.png"], "use `medm2g translate"),
        (["--to", "report", "--from", "x.png", "--weights", "0.5,0.5"], "2 weights for 1 sources"),
        (["--to", "xray", "--from", "FINDINGS: a", "--format", "nifti"], "--format 'nifti'"),
    ],
)
def test_usage_errors_exit_2(arguments: list[str], message: str) -> None:
    result = runner.invoke(app, ["generate", *arguments])
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_text_versus_path() -> None:
    assert not looks_like_path("FINDINGS: Normal heart. IMPRESSION: Normal.")
    assert looks_like_path("P0001/xray.png") and looks_like_path("missing.txt") and looks_like_path("cohort/*/xray.png")


def test_generated_text_gets_both_headings() -> None:
    report = as_report("findings : the heart is normal. impression : no acute disease.")
    assert report.findings == "the heart is normal." and report.impression == "no acute disease."
    assert as_report("just text").text.startswith("FINDINGS: just text")
