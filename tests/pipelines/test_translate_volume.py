"""translate_volume's slicing, reorientation and reassembly, with a stand-in flow whose output is known.

The stand-in returns the centre source channel plus seeded noise, so every voxel of the output can be
predicted exactly; the real flows are exercised end to end in test_end_to_end.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pytest
import torch

from medm2g_core.modalities import Modality, Pair
from medm2g_core.modalities import CT_HU_RANGE
from medm2g_core.inference.translate import from_canonical, slice_seed, to_canonical, canonical_orientation, translate_volume
from medm2g_core.types import ImageMeta


@dataclass
class _Prediction:
    mean: torch.Tensor
    std: torch.Tensor | None
    samples: torch.Tensor


class EchoFlow:
    """Returns the source's centre slice (+ 0.01·noise seeded per item), K samples."""

    pair = Pair((Modality.MRI_T1,), Modality.CT)
    image_size = 16
    context_slices = 1

    def __init__(self, *, ct_window=(-1024.0, 3000.0), mri_percentiles=(0.5, 99.5)) -> None:
        self.calls: list[int] = []
        self.normalise_options = {"ct_window": ct_window, "mri_percentiles": mri_percentiles}

    def predict(self, sources, *, samples: int = 1, seed: int | Sequence[int] = 0, steps=None, guidance=None, weights=None):
        source = sources[Modality.MRI_T1]
        assert source.shape[1:] == (3, 16, 16)
        self.calls.append(source.shape[0])
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * source.shape[0]
        noise = torch.stack([torch.randn((samples, 1, 16, 16), generator=torch.Generator().manual_seed(s)) for s in seeds], 1)
        drawn = source[None, :, 1:2] + 0.01 * noise
        return _Prediction(drawn.mean(0), drawn.std(0, unbiased=False) if samples > 1 else None, drawn)


def _oblique_meta(shape) -> ImageMeta:
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    permuted = rotation[:, [2, 0, 1]] * np.array([1, -1, 1])  # stored k-i-j with a flipped axis: not axial-last
    return ImageMeta(spacing=(1.5, 1.0, 2.5), origin=(10.0, -20.0, 30.0), direction=tuple(map(tuple, permuted)),
                     shape=shape, modality="mri-t1", units="a.u.")


def test_reorientation_round_trip_puts_slices_on_the_axial_axis() -> None:
    meta = _oblique_meta((5, 7, 9))
    volume = np.random.default_rng(0).normal(size=meta.shape).astype(np.float32)
    ornt = canonical_orientation(meta)
    canonical = to_canonical(volume, ornt)
    assert canonical.shape == (7, 9, 5)  # the axis closest to S-I is last
    np.testing.assert_array_equal(from_canonical(canonical, ornt), volume)


def test_geometry_kept_units_hu_and_batching_does_not_change_the_result() -> None:
    meta = _oblique_meta((12, 10, 8))
    volume = np.random.default_rng(1).uniform(0, 500, meta.shape).astype(np.float32)
    flow = EchoFlow()
    one = translate_volume(flow, {Modality.MRI_T1: volume}, meta, samples=3, seed=4, batch_size=1, bundle_name="b")
    assert max(flow.calls) == 1
    flow.calls.clear()
    for batch_size in (3, 32):
        many = translate_volume(EchoFlow(), {Modality.MRI_T1: volume}, meta, samples=3, seed=4, batch_size=batch_size)
        np.testing.assert_array_equal(one.image, many.image)
        np.testing.assert_array_equal(one.std, many.std)
    assert one.image.shape == meta.shape and one.std.shape == meta.shape
    assert one.meta.same_grid(meta) and one.meta.direction == meta.direction and one.meta.origin == meta.origin
    assert one.meta.modality == "ct" and one.meta.units == "HU" and one.meta.synthetic
    assert "medm2g" in one.meta.extra["derivation"] and "mri-t1__ct" in one.meta.extra["derivation"]
    assert CT_HU_RANGE[0] <= one.image.min() and one.image.max() <= CT_HU_RANGE[1]
    assert float(one.std.mean()) > 0
    # the echo flow returns the normalised MRI, so the HU output is a monotone map of the input
    assert np.corrcoef(one.image.ravel(), volume.ravel())[0, 1] > 0.95


def test_the_flows_training_normalisation_is_used_for_sources_and_the_ct_output() -> None:
    """A flow trained with ``data.ct_window: [-200, 1800]`` and MRI percentiles (2, 98) is fed and read
    back with those numbers, not the library defaults."""
    meta = _oblique_meta((16, 16, 6))
    ramp = np.linspace(0.0, 500.0, 16, dtype=np.float32)  # linear along one in-plane axis: resizing keeps it
    volume = np.broadcast_to(ramp[None, :, None], meta.shape).copy()
    custom = translate_volume(EchoFlow(ct_window=(-200.0, 1800.0), mri_percentiles=(10.0, 90.0)),
                              {Modality.MRI_T1: volume}, meta, seed=0)
    default = translate_volume(EchoFlow(), {Modality.MRI_T1: volume}, meta, seed=0)
    # the echo returns the normalised MRI ± 0.01 noise: HU = window low + (MRI scaled by its percentiles) × width
    low, high = np.percentile(volume, [10.0, 90.0])
    inside = (volume > low + 40) & (volume < high - 40)
    expected = -200.0 + (volume[inside] - low) / (high - low) * 2000.0
    assert np.abs(custom.image[inside] - expected).max() < 60  # 3σ of the echo noise (0.01 × 1000 HU) + interpolation
    low, high = np.percentile(volume, [0.5, 99.5])
    expected = -1024.0 + (volume[inside] - low) / (high - low) * 4024.0
    assert np.abs(default.image[inside] - expected).max() < 120


def test_same_seed_same_output_other_seed_differs() -> None:
    meta = _oblique_meta((6, 6, 6))
    volume = np.random.default_rng(2).uniform(0, 500, meta.shape).astype(np.float32)
    first = translate_volume(EchoFlow(), {Modality.MRI_T1: volume}, meta, seed=0)
    again = translate_volume(EchoFlow(), {Modality.MRI_T1: volume}, meta, seed=0)
    other = translate_volume(EchoFlow(), {Modality.MRI_T1: volume}, meta, seed=1)
    np.testing.assert_array_equal(first.image, again.image)
    assert not np.array_equal(first.image, other.image)
    assert slice_seed(0, 1) != slice_seed(1, 0)


def test_nan_volume_is_an_input_error() -> None:
    from medm2g_core.errors import InputError

    meta = _oblique_meta((4, 4, 4))
    volume = np.full(meta.shape, np.nan, np.float32)
    with pytest.raises(InputError, match="NaN"):
        translate_volume(EchoFlow(), {Modality.MRI_T1: volume}, meta)


class LopsidedFlow(EchoFlow):
    """The echo plus a left–right ramp (an error that mirroring cancels): +0.2 on one side, −0.2 on the other."""

    def predict(self, sources, **kwargs):
        prediction = super().predict(sources, **kwargs)
        ramp = 0.2 * torch.linspace(-1.0, 1.0, 16).view(16, 1)  # along dim −2: the canonical left–right axis
        return _Prediction(prediction.mean + ramp, prediction.std, prediction.samples + ramp)


def test_mirror_averages_a_left_right_mirrored_pass_and_cancels_a_lopsided_error() -> None:
    meta = _oblique_meta((8, 16, 16))  # canonically 16 × 16 slices, 8 deep
    volume = np.random.default_rng(3).uniform(0, 500, meta.shape).astype(np.float32)
    echo = translate_volume(EchoFlow(), {Modality.MRI_T1: volume}, meta, seed=0)
    lopsided = translate_volume(LopsidedFlow(), {Modality.MRI_T1: volume}, meta, seed=0)
    flow = LopsidedFlow()
    mirrored = translate_volume(flow, {Modality.MRI_T1: volume}, meta, seed=0, mirror=True, batch_size=4)
    assert flow.calls == [4, 4, 4, 4]  # two batches of 4 slices, each run plain and mirrored
    # the ramp (±0.2 of the [-1, 1] range: ±400 HU) is in the plain output and cancels in the mirrored one, which is
    # the echo up to its 0.01 noise (20 HU; interpolation adds a little at the edges)
    assert np.abs(lopsided.image - echo.image).max() > 300
    assert np.abs(mirrored.image - echo.image).mean() < 20
    assert mirrored.meta.extra["mirror"] is True and "mirror" not in echo.meta.extra
    # one sample per pass: the std map is half the passes' difference (the ramp's |0.2·r|, ~200 HU on average)
    assert echo.std is None and mirrored.std is not None and 100 < mirrored.std.mean() < 300
    # samples > 1: the std map pools both passes' samples — the echo's own spread when the passes agree, plus their
    # disagreement when they do not (the lopsided flow's ramp: ~200 HU on average)
    single = translate_volume(EchoFlow(), {Modality.MRI_T1: volume}, meta, seed=0, samples=3)
    agreeing = translate_volume(EchoFlow(), {Modality.MRI_T1: volume}, meta, seed=0, samples=3, mirror=True)
    disagreeing = translate_volume(LopsidedFlow(), {Modality.MRI_T1: volume}, meta, seed=0, samples=3, mirror=True)
    assert agreeing.std.shape == meta.shape
    assert 0.7 * single.std.mean() < agreeing.std.mean() < 1.5 * single.std.mean()
    assert disagreeing.std.mean() > 5 * single.std.mean()
