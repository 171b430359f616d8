"""NIfTI reading/writing keeps geometry, dtype and the synthetic mark; damaged files raise InputError."""

from __future__ import annotations

import gzip

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from medm2g_core import io
from medm2g_core.errors import InputError


def test_oblique_round_trip_keeps_affine_in_nibabel_and_simpleitk(tmp_path, oblique_meta):
    meta = oblique_meta(modality="ct", units="HU")
    array = np.arange(np.prod(meta.shape), dtype=np.int16).reshape(meta.shape) - 500
    path = io.write(tmp_path / "ct.nii.gz", array, meta)

    image = nibabel.load(str(path))
    assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
    np.testing.assert_allclose(image.get_qform(), image.get_sform(), atol=1e-5)
    np.testing.assert_allclose(image.affine, meta.affine_ras, atol=1e-5)
    assert image.get_data_dtype() == np.int16

    itk = sitk.ReadImage(str(path))
    np.testing.assert_allclose(itk.GetSpacing(), meta.spacing, atol=1e-5)
    np.testing.assert_allclose(itk.GetOrigin(), meta.origin, atol=1e-4)
    np.testing.assert_allclose(np.reshape(itk.GetDirection(), (3, 3)), meta.direction, atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(itk).transpose(2, 1, 0), array)

    back, back_meta = io.read(path)
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(back_meta.affine_lps, meta.affine_lps, atol=1e-5)
    assert back_meta.units == "HU" and back_meta.modality == "ct" and back_meta.source_format == "nifti"
    assert not back_meta.synthetic


def test_float32_and_synthetic_mark(tmp_path, oblique_meta):
    meta = oblique_meta(synthetic=True, modality="mri-t1", extra={"note": "phantom"}, dicom={"Modality": "MR"})
    array = np.random.default_rng(0).random(meta.shape, dtype=np.float32)
    path = io.write(tmp_path / "mri-t1.nii", array, meta)
    header = nibabel.load(str(path)).header
    assert bytes(header["descrip"]).startswith(b"medm2g synthetic")
    back, back_meta = io.read(path)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, array)
    assert back_meta.synthetic and back_meta.extra == {"note": "phantom"} and back_meta.dicom == {"Modality": "MR"}


def test_lps_input_keeps_world_geometry(shared_data, tmp_path):
    source = shared_data / "ct_mr_totalsegmentator" / "example_mr_sm.nii.gz"
    array, meta = io.read(source)
    reference = nibabel.load(str(source))
    assert meta.orientation == "LPS" and array.shape == (117, 91, 20) and array.dtype == np.int16
    np.testing.assert_allclose(meta.affine_ras, reference.affine, atol=1e-5)
    out = io.write(tmp_path / "mr.nii.gz", array, meta)
    back, back_meta = io.read(out)
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(back_meta.affine_ras, reference.affine, atol=1e-5)
    itk = sitk.ReadImage(str(out))
    np.testing.assert_allclose(itk.GetOrigin(), meta.origin, atol=1e-4)
    np.testing.assert_allclose(np.reshape(itk.GetDirection(), (3, 3)), meta.direction, atol=1e-6)


def test_ras_ct_in_hu(shared_data):
    array, meta = io.read(shared_data / "ct_mr_totalsegmentator" / "example_ct.nii.gz")
    assert meta.orientation == "RAS" and meta.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert array.dtype == np.int32 and array.min() == -1207


def test_truncated_gzip_raises_input_error(tmp_path, oblique_meta):
    meta = oblique_meta()
    path = io.write(tmp_path / "ct.nii.gz", np.random.default_rng(1).integers(-1000, 1000, meta.shape).astype(np.int16), meta)
    data = path.read_bytes()
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="broken.nii.gz"):
        io.read(broken)


def test_header_claiming_huge_dimensions_is_refused_before_allocating(tmp_path):
    header = nibabel.Nifti1Header()
    header.set_data_shape((4000, 4000, 4000))
    header.set_data_dtype(np.float32)
    raw = header.binaryblock + b"\x00" * 4 + b"\x00" * 1024
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(InputError, match="header claims"):
        io.read(path)
    plain = tmp_path / "huge.nii"
    plain.write_bytes(raw)
    with pytest.raises(InputError, match="header claims"):
        io.read(plain)


def test_uncompressed_file_named_gz_and_garbage(tmp_path):
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(b"this is not a nifti file at all" * 20)
    with pytest.raises(InputError, match="not gzip"):
        io.read(fake)
    garbage = tmp_path / "garbage.nii"
    garbage.write_bytes(b"\x01" * 400)
    with pytest.raises(InputError, match="garbage.nii"):
        io.read(garbage)
