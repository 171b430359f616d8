"""FLAIR and contrast-enhanced T1 are first-class MRI contrasts: names, pairs, files, normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from medm2g_core import io
from medm2g_core.data.manifest import scan_cohort
from medm2g_core.data.transforms import normalize
from medm2g_core.io.meta import canonical_modality, modality_from_name
from medm2g_core.modalities import MRI_MODALITIES, VOLUME_MODALITIES, Modality, Pair, parse_modality, parse_pair
from medm2g_core.types import ImageMeta


def test_flair_and_t1c_are_mri_volumes_sharing_the_mri_encoder() -> None:
    for modality in (Modality.MRI_FLAIR, Modality.MRI_T1C):
        assert modality.is_mri and modality.is_volume and modality.encoder_family == "mri"
        assert modality in MRI_MODALITIES and modality in VOLUME_MODALITIES
    assert not Modality.CT.is_mri and not Modality.XRAY.is_volume
    assert parse_modality("flair") is parse_modality("t2f") is Modality.MRI_FLAIR
    assert parse_modality("t1ce") is parse_modality("t1c") is parse_modality("mri-t1c") is Modality.MRI_T1C


@pytest.mark.parametrize(
    ("text", "sources", "target"),
    [
        ("t2+flair-t1", (Modality.MRI_T2, Modality.MRI_FLAIR), Modality.MRI_T1),
        ("t1-flair", (Modality.MRI_T1,), Modality.MRI_FLAIR),
        ("mri-t1-mri-t1c", (Modality.MRI_T1,), Modality.MRI_T1C),
        ("flair+t1c-ct", (Modality.MRI_FLAIR, Modality.MRI_T1C), Modality.CT),
    ],
)
def test_flows_between_the_new_contrasts_parse(text: str, sources: tuple, target: Modality) -> None:
    pair = parse_pair(text)
    assert pair == Pair(sources, target) and pair.is_paired_image


def test_file_names_map_to_the_new_contrasts() -> None:
    assert canonical_modality("mri-flair.nii.gz") is Modality.MRI_FLAIR
    assert canonical_modality("mri-t1c.nii.gz") is Modality.MRI_T1C
    assert canonical_modality("flair.nii.gz") is Modality.MRI_FLAIR  # no longer read as T2
    assert modality_from_name("BraTS2021_00000_flair.nii.gz") is Modality.MRI_FLAIR
    assert modality_from_name("BraTS2021_00000_t1ce.nii.gz") is Modality.MRI_T1C


def test_a_patient_folder_holds_them_and_they_are_grid_checked(tmp_path) -> None:
    grid = ImageMeta(spacing=(1.0, 1.0, 2.0), shape=(6, 6, 4))
    patient = tmp_path / "cohort" / "S1"
    for name in ("mri-t1", "mri-flair", "mri-t1c"):
        io.write(patient / f"{name}.nii.gz", np.zeros(grid.shape, np.int16), grid)
    other = ImageMeta(spacing=(1.0, 1.0, 1.0), shape=(6, 6, 8))
    io.write(patient / "mri-t2.nii.gz", np.zeros(other.shape, np.int16), other)
    record = scan_cohort(tmp_path / "cohort")[0]
    assert set(record.files) == {Modality.MRI_T1, Modality.MRI_T2, Modality.MRI_FLAIR, Modality.MRI_T1C}
    assert any(p.startswith("mri-t1 and mri-t2 are on different grids") for p in record.problems)
    assert not any("mri-flair" in p and "mri-t1c" in p for p in record.problems)


def test_the_new_contrasts_are_percentile_normalised_like_t1() -> None:
    volume = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    flair, state = normalize(volume, Modality.MRI_FLAIR)
    t1, _ = normalize(volume, Modality.MRI_T1)
    assert state.kind == "percentile" and np.array_equal(flair, t1)
