"""MHA/NRRD via SimpleITK (axis order and geometry), and bad inputs raising InputError through io.read."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medm2g_core import io
from medm2g_core.errors import InputError
from medm2g_core.types import ImageMeta


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_sitk_round_trip_keeps_axis_order_and_geometry(tmp_path, suffix, oblique_meta):
    meta = oblique_meta(shape=(7, 5, 3), modality="ct", units="HU")
    array = np.arange(7 * 5 * 3, dtype=np.int16).reshape(7, 5, 3)
    path = io.write(tmp_path / f"ct{suffix}", array, meta)
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (7, 5, 3)
    assert image.GetPixel(6, 4, 2) == array[6, 4, 2]
    back, back_meta = io.read(path)
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(back_meta.affine_lps, meta.affine_lps, atol=1e-5)
    assert back_meta.units == "HU"
    nifti = io.write(tmp_path / "ct.nii.gz", back, back_meta)
    np.testing.assert_allclose(io.read(nifti)[1].affine_lps, meta.affine_lps, atol=1e-5)


def test_missing_file_and_folder_without_dicom(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        io.read(tmp_path / "missing.nii.gz")
    folder = tmp_path / "ct.nii.gz"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no DICOM"):
        io.read(folder)


def test_unrecognised_and_report_files(tmp_path):
    odd = tmp_path / "scan.xyz"
    odd.write_bytes(b"\x00\x01" * 50)
    with pytest.raises(InputError, match="not a recognised"):
        io.read(odd)
    report = io.write_report(tmp_path / "report.txt", "FINDINGS: x", synthetic=False)
    with pytest.raises(InputError, match="read_report"):
        io.read(report)


def test_memory_limit_is_enforced_from_the_header(tmp_path, monkeypatch):
    path = io.write(tmp_path / "x.nii.gz", np.zeros((32, 32, 32), np.float32), ImageMeta(spacing=(1.0, 1.0, 1.0)))
    monkeypatch.setenv("MEDM2G_MAX_ARRAY_BYTES", "1000")
    with pytest.raises(InputError, match="memory limit"):
        io.read(path)


def test_fuzzed_nifti_headers_raise_only_input_error(tmp_path, oblique_meta):
    meta = oblique_meta(shape=(6, 5, 4))
    good = io.write(tmp_path / "good.nii", np.ones(meta.shape, np.int16), meta).read_bytes()
    rng = np.random.default_rng(0)
    for trial in range(40):
        data = bytearray(good)
        for position in rng.integers(0, 348, size=4):
            data[position] = int(rng.integers(0, 256))
        path = tmp_path / f"fuzz{trial}.nii"
        path.write_bytes(bytes(data))
        try:
            io.read(path)
        except InputError:
            pass
