"""The identity-after-intensity-map baseline's maths: monotone, and recovers a known monotone transform."""

import numpy as np

from medm2g_core.baselines.intensity import IntensityMap, fit_intensity_map


def known(x):
    return 0.6 * x**3 + 0.3 * x - 0.1  # strictly increasing on [-1, 1]


def test_recovers_a_known_monotone_transform_and_is_monotone(tmp_path):
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(4):  # four "patients", each with its own intensity distribution
        source = rng.beta(rng.uniform(1, 3), rng.uniform(1, 3), size=20_000) * 2 - 1
        pairs.append((source, known(source)))
    mapping = fit_intensity_map(pairs, source="mri-t1", target="ct")
    grid = np.linspace(-0.95, 0.95, 500)
    mapped = mapping(grid)
    assert np.all(np.diff(mapped) >= 0)
    assert np.all(np.diff(mapping.source_values) > 0) and np.all(np.diff(mapping.target_values) >= 0)
    np.testing.assert_allclose(mapped, known(grid), atol=0.02)
    again = IntensityMap.load(mapping.save(tmp_path / "map.json"))
    np.testing.assert_array_equal(again(grid), mapped)


def test_tied_source_values_stay_a_monotone_function():
    # Half the voxels are clipped at -1 (as after percentile normalisation); their targets differ.
    source = np.concatenate([np.full(5000, -1.0), np.linspace(-1, 1, 5000)])
    target = np.concatenate([np.linspace(-1, -0.5, 5000), np.linspace(-0.5, 1, 5000)])
    mapping = fit_intensity_map([(source, target)], source="mri-t2", target="mri-t1")
    assert len(set(mapping.source_values)) == len(mapping.source_values)
    values = mapping(np.linspace(-1.5, 1.5, 301))
    assert np.all(np.diff(values) >= 0)
    assert -1.0 <= values.min() and values.max() <= 1.0


def test_constant_source_maps_to_the_mean_target():
    mapping = fit_intensity_map([(np.zeros(100), np.linspace(0, 1, 100))], source="ct", target="mri-t1", levels=5)
    assert np.allclose(mapping(np.array([-3.0, 0.0, 3.0])), np.mean(np.quantile(np.linspace(0, 1, 100), np.linspace(0, 1, 5))))
