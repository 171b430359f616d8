"""DICOM: pydicom's real test files, a real MR series checked against SimpleITK and dcm2niix, writing
derived series that read back identically and pass dciodvfy, and irregular series refused."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medm2g_core import io
from medm2g_core.errors import InputError
from medm2g_core.modalities import Modality
from medm2g_core.types import ImageMeta

# pydicom's bundled files, opened in place (get_testdata_file may try to download missing ones).
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
DCM2NIIX = Path(sys.executable).parent / "dcm2niix"  # the pip package (a test dependency) installs it beside python


def series_dir(shared_data: Path) -> Path:
    return shared_data / "dicom_mr_t1_sag_series"


def test_ct_small_is_hounsfield_with_geometry():
    path = PYDICOM_FILES / "CT_small.dcm"
    array, meta = io.read(path)
    reference = pydicom.dcmread(path)
    assert array.shape == (128, 128, 1) and array.dtype == np.int16
    expected = reference.pixel_array.astype(np.int32) * int(reference.RescaleSlope) + int(reference.RescaleIntercept)
    np.testing.assert_array_equal(array[:, :, 0], expected.T)
    assert meta.units == "HU" and meta.modality == "ct" and meta.source_format == "dicom"
    assert meta.origin == pytest.approx([float(v) for v in reference.ImagePositionPatient])
    assert meta.spacing[:2] == pytest.approx([float(reference.PixelSpacing[1]), float(reference.PixelSpacing[0])])
    assert "PatientName" not in meta.dicom and "PatientID" not in meta.dicom
    assert meta.dicom["SourceSOPInstanceUIDs"] == [reference.SOPInstanceUID]


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm"])
def test_compressed_transfer_syntaxes_match_uncompressed(name):
    plain, _ = io.read(PYDICOM_FILES / "MR_small.dcm")
    compressed, meta = io.read(PYDICOM_FILES / name)
    np.testing.assert_array_equal(compressed, plain)
    assert meta.modality is not None and meta.modality.startswith("mri")


def test_jpeg2000_and_multiframe():
    image, meta = io.read(PYDICOM_FILES / "JPEG2000.dcm")
    assert image.ndim == 2 and image.shape == (1024, 256)
    dose, dose_meta = io.read(PYDICOM_FILES / "rtdose.dcm")  # 15 frames placed by GridFrameOffsetVector
    assert dose.shape == (10, 10, 15)
    assert dose_meta.spacing[2] == pytest.approx(5.0)
    raw = pydicom.dcmread(PYDICOM_FILES / "rtdose.dcm").pixel_array
    np.testing.assert_array_equal(dose[:, :, 0], raw[0].T)


def test_series_matches_simpleitk_and_dcm2niix(shared_data, tmp_path):
    folder = series_dir(shared_data)
    array, meta = io.read(folder)
    assert array.shape == (256, 256, 35) and meta.source_format == "dicom-series"
    assert meta.modality == "mri-t1" and io.modality_from_path(folder) is Modality.MRI_T1

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    np.testing.assert_allclose(meta.spacing, image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(meta.origin, image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), meta.direction, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), array)

    # DICOM → NIfTI → read keeps world geometry.
    ours = io.write(tmp_path / "mri-t1.nii.gz", array, meta)
    back, back_meta = io.read(ours)
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(back_meta.affine_lps, meta.affine_lps, atol=1e-4)
    assert back_meta.dicom["SeriesInstanceUID"] == meta.dicom["SeriesInstanceUID"]

    if not DCM2NIIX.exists():
        pytest.skip(f"dcm2niix not installed beside {sys.executable}")
    subprocess.run([str(DCM2NIIX), "-z", "y", "-b", "n", "-f", "ref", "-o", str(tmp_path), str(folder)], check=True, capture_output=True)
    reference = nibabel.as_closest_canonical(nibabel.load(str(tmp_path / "ref.nii.gz")))
    mine = nibabel.as_closest_canonical(nibabel.load(str(ours)))
    assert mine.shape == reference.shape
    np.testing.assert_allclose(mine.header.get_zooms(), reference.header.get_zooms(), atol=1e-4)
    np.testing.assert_allclose(mine.affine[:3, :3], reference.affine[:3, :3], atol=1e-4)
    # dcm2niix computes the origin in float32: measured 1.5e-4 mm from the DICOM header's value.
    np.testing.assert_allclose(mine.affine[:3, 3], reference.affine[:3, 3], atol=1e-3)
    np.testing.assert_array_equal(np.asanyarray(mine.dataobj), np.asanyarray(reference.dataobj))


def test_derived_series_round_trip_is_valid_and_anonymous(shared_data, tmp_path):
    array, meta = io.read(series_dir(shared_data))
    out = io.write(tmp_path / "mri-t1", array, meta.replace(synthetic=True, extra={"derivation": "T1 copy for a test"}))
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 35
    back, back_meta = io.read(out)
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(back_meta.affine_lps, meta.affine_lps, atol=1e-4)
    header = pydicom.dcmread(files[0])
    source = pydicom.dcmread(next(series_dir(shared_data).glob("*.dcm")))
    assert list(header.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "medm2g" in header.DerivationDescription and "T1 copy" in header.DerivationDescription
    assert header.StudyInstanceUID != source.StudyInstanceUID and header.SeriesInstanceUID != source.SeriesInstanceUID
    assert header.FrameOfReferenceUID == source.FrameOfReferenceUID  # overlays its input in viewers
    assert header.SOPClassUID == pydicom.uid.MRImageStorage and header.BurnedInAnnotation == "NO"
    assert len(header.SourceImageSequence) == 35
    assert str(header.PatientName) == "" and header.PatientID == ""
    raw = b"".join(f.read_bytes() for f in files)
    assert bytes(str(source.PatientID), "ascii") not in raw and b"crlab" not in raw
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(out)))
    image = reader.Execute()
    np.testing.assert_allclose(image.GetOrigin(), meta.origin, atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), meta.spacing, atol=1e-4)


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) not installed")
def test_written_dicom_passes_dciodvfy(tmp_path):
    ct, ct_meta = io.read(PYDICOM_FILES / "CT_small.dcm")
    series = io.write(tmp_path / "ct", np.repeat(ct, 3, axis=2), ct_meta)
    single = io.write(tmp_path / "ct.dcm", ct, ct_meta)
    mr, mr_meta = io.read(PYDICOM_FILES / "MR_small.dcm")
    mr_series = io.write(tmp_path / "mri", (mr.astype(np.float32) * 0.37), mr_meta.replace(modality="mri-t2"))
    xray = np.random.default_rng(0).integers(0, 4096, (48, 40)).astype(np.uint16)
    xray_file = io.write(tmp_path / "xray.dcm", xray, ImageMeta(spacing=(0.2, 0.2), shape=xray.shape, modality="xray", synthetic=True))
    for path in [series / "0002.dcm", single, mr_series / "0001.dcm", xray_file]:
        assert _dciodvfy_errors(path) == [], path
    back, back_meta = io.read(xray_file)
    np.testing.assert_array_equal(back, xray)
    assert back_meta.modality == "xray" and back_meta.spacing == pytest.approx((0.2, 0.2))
    mr_back, _ = io.read(mr_series)
    np.testing.assert_allclose(mr_back, mr.astype(np.float32) * 0.37, atol=mr.max() * 0.37 / 65535)


def _copy_series(shared_data: Path, tmp_path: Path, keep) -> Path:
    folder = tmp_path / "series"
    folder.mkdir()
    for index, path in enumerate(sorted(series_dir(shared_data).glob("*.dcm"))):
        if keep(index):
            shutil.copy(path, folder / path.name)
    return folder


def test_series_with_a_missing_slice_is_refused(shared_data, tmp_path):
    folder = _copy_series(shared_data, tmp_path, lambda index: index != 17)
    with pytest.raises(InputError, match="missing"):
        io.read(folder)


def test_series_with_a_missing_slice_is_read_with_allow_irregular(shared_data, tmp_path):
    complete, complete_meta = io.read(series_dir(shared_data))
    folder = _copy_series(shared_data, tmp_path, lambda index: index != 17)
    array, meta = io.read(folder, allow_irregular=True)
    assert array.shape[2] == complete.shape[2] - 1
    assert "missing" in meta.extra["irregular"] and "about 1 slice(s) missing" in meta.extra["irregular"]
    # Positions are kept: the gap is visible there, and the step is the regular one, not the average.
    positions = np.asarray(meta.extra["slice_positions"])
    assert positions.shape == (array.shape[2], 3)
    along = positions @ np.asarray(meta.direction)[:, 2]
    steps = np.diff(along)
    assert steps.max() == pytest.approx(2 * steps.min(), rel=1e-3)
    assert meta.spacing[2] == pytest.approx(complete_meta.spacing[2], rel=1e-4)
    assert meta.origin == pytest.approx(complete_meta.origin)
    np.testing.assert_array_equal(array[:, :, :5], complete[:, :, :5])
    assert "irregular" not in complete_meta.extra


def test_mixed_orientations_and_several_series_are_refused(shared_data, tmp_path):
    folder = _copy_series(shared_data, tmp_path, lambda index: index < 6)
    odd = pydicom.dcmread(next(folder.glob("0003_*.dcm")))
    odd.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    odd.save_as(next(folder.glob("0003_*.dcm")))
    with pytest.raises(InputError, match="orientations"):
        io.read(folder)
    other = pydicom.dcmread(next(folder.glob("0004_*.dcm")))
    other.SeriesInstanceUID = pydicom.uid.generate_uid()
    other.save_as(next(folder.glob("0004_*.dcm")))
    with pytest.raises(InputError, match="2 DICOM series"):
        io.read(folder)
    array, _ = io.read(folder, series_uid=other.SeriesInstanceUID)
    assert array.shape == (256, 256, 1)


def test_non_dicom_dcm_and_empty_folder(tmp_path):
    fake = tmp_path / "image.dcm"
    fake.write_bytes(b"not dicom at all" * 100)
    with pytest.raises(InputError, match="image.dcm"):
        io.read(fake)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no DICOM"):
        io.read(empty)
