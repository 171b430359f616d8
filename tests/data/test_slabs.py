"""Slabs of one registered subject: each keeps its exact place in the scanner; volumes on different grids are refused."""

from __future__ import annotations

import nibabel
import numpy as np
import pytest

from medm2g_core.data.slabs import split_slabs
from medm2g_core.errors import InputError


def _write(path, data, affine) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(data.astype(np.float32), affine), str(path))


def test_slabs_overlay_the_subject_and_hold_out_the_middle(tmp_path) -> None:
    affine = np.array([[0.0, 0, 1.2, -90], [0, 0.94, 0, -120], [0.94, 0, 0, -80], [0, 0, 0, 1]])  # S–I is array axis 0
    volume = np.random.default_rng(0).normal(size=(40, 12, 10))
    mask = np.zeros_like(volume)
    mask[10:30] = 1  # the brain spans i = 10..29
    subject = tmp_path / "cohort" / "S1"
    _write(subject / "mri-t1.nii.gz", volume, affine)
    _write(subject / "mri-t2.nii.gz", volume * 2, affine)
    _write(subject / "mask.nii.gz", mask, affine)
    splits = split_slabs(subject, tmp_path / "slabs")
    assert splits == {"train": ["S1-inferior", "S1-superior"], "test": ["S1-middle"]}
    middle = nibabel.load(str(tmp_path / "slabs" / "S1-middle" / "mri-t1.nii.gz"))
    assert middle.shape == (6, 12, 10)  # 0.35–0.65 of the brain's 20 slices: i = 17..22
    # the slab's voxel (0, 0, 0) is the subject's voxel (17, 0, 0), in the same place in the scanner
    assert np.allclose(middle.affine @ [0, 0, 0, 1], affine @ [17, 0, 0, 1])
    assert np.array_equal(np.asarray(middle.dataobj), volume[17:23].astype(np.float32))
    parts = [nibabel.load(str(tmp_path / "slabs" / f"S1-{slab}" / "mri-t2.nii.gz")).shape[0] for slab in ("inferior", "middle", "superior")]
    assert sum(parts) == 40


def test_volumes_on_different_grids_are_refused(tmp_path) -> None:
    subject = tmp_path / "S2"
    _write(subject / "mri-t1.nii.gz", np.ones((8, 8, 8)), np.eye(4))
    _write(subject / "mri-t2.nii.gz", np.ones((8, 8, 6)), np.eye(4))
    with pytest.raises(InputError) as error:
        split_slabs(subject, tmp_path / "out")
    assert "mri-t2.nii.gz" in str(error.value) and "--register" in str(error.value)
