"""benchmarks/bench_quality.py: the mean over seeds averages each system's metrics and the table shows it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_quality")


def _run(seed: int, model: float, peer: float, seconds: float) -> dict:
    return {"pair": "mri-ct", "budget": 3.0, "seed": seed, "steps": 720, "seconds": seconds,
            "systems": {"model": {"MAE": model, "PSNR": 30.0}, "peer": {"MAE": peer, "PSNR": 29.0}}}


def test_mean_over_seeds_and_its_table_row(bench) -> None:
    runs = [_run(0, 60.9, 56.1, 60.0), _run(1, 58.3, 67.9, 57.0), {**_run(0, 107.0, 102.0, 24.0), "budget": 1.0}]
    means = bench.mean_over_seeds(runs)
    assert len(means) == 1  # the 1× budget ran with one seed only: no mean row for it
    mean = means[0]
    assert mean["seed"] == "mean of 2" and mean["seconds"] == pytest.approx(58.5)
    assert mean["systems"]["model"]["MAE"] == pytest.approx((60.9 + 58.3) / 2)
    assert mean["systems"]["peer"]["MAE"] == pytest.approx((56.1 + 67.9) / 2)
    rows = [line for line in bench.table(runs + means).splitlines() if "mean of 2" in line and "| MAE |" in line]
    assert len(rows) == 1 and rows[0].rstrip().endswith(f"| {59.6 / 62.0:.2f} |")


def test_set_reaches_the_recipe_the_medm2g_commands_get(bench, tmp_path) -> None:
    import yaml

    settings = bench.parse_settings(["flows.training.lr=4e-3", "flows.image_denoiser.block_out_channels=[32, 32, 64, 128, 256]"])
    assert settings == {"flows.training.lr": 0.004, "flows.image_denoiser.block_out_channels": [32, 32, 64, 128, 256]}
    arguments, peer = bench.write_recipe(tmp_path, size=None, ct_8bit=False, settings=settings)
    assert arguments == ["--recipe", str(tmp_path / "recipe.yaml")] and peer == []  # the peer keeps its own settings
    recipe = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    assert recipe["flows"]["training"]["lr"] == 0.004 and recipe["flows"]["image_denoiser"]["block_out_channels"][0] == 32
    assert bench.write_recipe(tmp_path / "none", size=None, ct_8bit=False) == ([], [])
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bench.parse_settings(["flows.training.lr"])
