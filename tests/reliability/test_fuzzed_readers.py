"""Issue 10 §2, fuzzed readers: truncated, bit-flipped, zero-length, huge-dimension, NaN-filled and
wrong-extension files at every reader raise only ``InputError`` (the project's own error type), headers
are checked before allocation, and the CLI turns bad inputs into one line per file, no traceback.
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medm2g_core import io
from medm2g_core.errors import InputError
from medm2g_core.types import ImageMeta

from reliability_support import Tiny, refused_with_peak, run_cli

SUFFIXES = (".nii.gz", ".nii", ".dcm", ".png", ".jpg", ".mha", ".nrrd")
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
                derandomize=True)


def _ct_small() -> bytes:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm")).read_bytes()


def _write_seed(folder: Path, suffix: str, *, nan: bool = False) -> Path:
    """A small valid file of each format (NaN-filled float data with ``nan``)."""
    path = folder / f"seed{suffix}"
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 20, (6, 5, 4)).astype(np.float32)
    if nan:
        volume[:] = np.nan
    meta = ImageMeta(spacing=(1.0, 1.5, 2.0), shape=volume.shape, modality="mri-t1")
    if suffix in (".nii.gz", ".nii", ".mha", ".nrrd"):
        io.write(path, volume, meta)
    elif suffix == ".dcm":
        path.write_bytes(_ct_small())
    elif suffix == ".png":
        io.write(path, rng.integers(0, 65535, (8, 7)).astype(np.uint16), ImageMeta(spacing=(1.0, 1.0), shape=(8, 7)))
    elif suffix == ".jpg":
        from PIL import Image

        Image.fromarray(rng.integers(0, 255, (8, 7)).astype(np.uint8)).save(path, format="JPEG")
    return path


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("seeds")
    found = {suffix: _write_seed(folder, suffix).read_bytes() for suffix in SUFFIXES}
    found[".txt"] = "FINDINGS: Heart size normal.\n\nIMPRESSION: No acute disease.\n".encode()
    return found


def read_only_input_errors(path: Path) -> None:
    """The property: a reader either returns or raises InputError — nothing else."""
    try:
        if path.name.endswith(".txt"):
            io.read_report(path)
        else:
            array, meta = io.read(path)
            assert tuple(array.shape) == tuple(meta.shape)
    except InputError:
        pass


def mutate(data: bytes, kind: str, draw: st.DataObject) -> bytes:
    if kind == "truncate":
        return data[: draw.draw(st.integers(0, max(len(data) - 1, 0)), label="keep")]
    if kind == "zero":
        return b""
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw.draw(st.integers(1, 8), label="flips")):
            position = draw.draw(st.integers(0, len(out) - 1), label="byte")
            out[position] ^= 1 << draw.draw(st.integers(0, 7), label="bit")
        return bytes(out)
    if kind == "flip-inside-gzip":  # reach the NIfTI header parser behind the gzip layer
        inner = bytearray(gzip.decompress(data))
        for _ in range(draw.draw(st.integers(1, 8), label="flips")):
            position = draw.draw(st.integers(0, min(len(inner), 400) - 1), label="byte")
            inner[position] ^= 1 << draw.draw(st.integers(0, 7), label="bit")
        return gzip.compress(bytes(inner))
    if kind == "overwrite":
        out = bytearray(data)
        start = draw.draw(st.integers(0, len(out) - 1), label="start")
        chunk = draw.draw(st.binary(min_size=1, max_size=64), label="chunk")
        out[start : start + len(chunk)] = chunk
        return bytes(out)
    raise AssertionError(kind)


@pytest.mark.parametrize("suffix", [*SUFFIXES, ".txt"])
@FUZZ
@given(data=st.data())
def test_damaged_files_raise_only_input_error(seeds: dict[str, bytes], suffix: str, data: st.DataObject) -> None:
    kinds = ["truncate", "zero", "flip", "overwrite"] + (["flip-inside-gzip"] if suffix == ".nii.gz" else [])
    kind = data.draw(st.sampled_from(kinds), label="mutation")
    content = mutate(seeds[suffix], kind, data)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"input{suffix}"
        path.write_bytes(content)
        read_only_input_errors(path)


@pytest.mark.parametrize("suffix", [*SUFFIXES, ".txt"])
def test_wrong_extension_raises_only_input_error(seeds: dict[str, bytes], suffix: str, tmp_path: Path) -> None:
    """Every format's bytes under every other suffix (a JPEG named .png, a NIfTI named .dcm...)."""
    for source, content in seeds.items():
        path = tmp_path / f"from-{source.strip('.').replace('.', '-')}{suffix}"
        path.write_bytes(content)
        read_only_input_errors(path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_nan_filled_volumes_read_or_raise_input_error(suffix: str, tmp_path: Path) -> None:
    read_only_input_errors(_write_seed(tmp_path, suffix, nan=True))


# -- huge dimensions: headers claiming 100000³ are refused before any allocation --------------------


def _nifti_header_bytes(shape: tuple[int, ...], *, version: int) -> bytes:
    import nibabel

    header = (nibabel.Nifti2Header if version == 2 else nibabel.Nifti1Header)()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header.set_data_offset(header.sizeof_hdr + 4)
    return header.binaryblock + b"\x00" * 4 + b"\x00" * 64


def _png_bytes(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _jpeg_bytes(width: int, height: int, tmp: Path) -> bytes:
    from PIL import Image

    small = tmp / "small.jpg"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(small, format="JPEG")
    data = bytearray(small.read_bytes())
    marker = data.index(b"\xff\xc0")  # baseline SOF0: length(2) precision(1) height(2) width(2)
    data[marker + 5 : marker + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _dicom_bytes(tmp: Path) -> bytes:
    import pydicom
    from pydicom.data import get_testdata_file

    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.Rows, dataset.Columns, dataset.NumberOfFrames = 65535, 65535, 100000
    out = tmp / "huge.dcm"
    dataset.save_as(out)
    return out.read_bytes()


def huge_files(tmp: Path) -> dict[str, bytes]:
    n = 100000
    nifti2 = _nifti_header_bytes((n, n, n), version=2)
    return {
        "nifti1.nii": _nifti_header_bytes((32767, 32767, 32767), version=1),  # NIfTI-1 dims are int16
        "nifti2.nii": nifti2,
        "nifti2.nii.gz": gzip.compress(nifti2),
        # under the memory limit, but far more than the file can hold: refused by the file-size check
        "truncated.nii.gz": gzip.compress(_nifti_header_bytes((512, 512, 512), version=1)),
        "huge.mha": f"ObjectType = Image\nNDims = 3\nDimSize = {n} {n} {n}\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n".encode() + b"\x00" * 64,
        "huge.nrrd": f"NRRD0004\ntype: float\ndimension: 3\nsizes: {n} {n} {n}\nendian: little\nencoding: raw\n\n".encode() + b"\x00" * 64,
        "huge.png": _png_bytes(n, n),
        "huge.jpg": _jpeg_bytes(65535, 65535, tmp),
        "huge.dcm": _dicom_bytes(tmp),
    }


def test_huge_dimension_headers_are_refused_before_allocation(tmp_path: Path) -> None:
    import resource

    files = huge_files(tmp_path)
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        error, peak = refused_with_peak(io.read, path)
        rss_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        message = str(error)
        assert "\n" not in message and name in message
        # the header's claim is named: refused from the header, not after trying to read the pixels
        assert "claims" in message or "too large" in message or "exceeds" in message, f"{name}: {message}"
        assert peak < 32 * 2**20, f"{name}: {peak / 2**20:.0f} MiB allocated while refusing it"
        assert rss_growth_kib < 256 * 1024, f"{name}: resident memory grew {rss_growth_kib / 1024:.0f} MiB"


def test_oversized_report_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "report.txt"
    with open(path, "wb") as handle:  # sparse: 64 MiB claimed, nothing written
        handle.truncate(64 * 2**20)
    _, peak = refused_with_peak(io.read_report, path, match="too large")
    assert peak < 4 * 2**20


# -- the CLI: one line per bad file, no traceback ------------------------------------------------


def damaged_cohort(tiny: Tiny, root: Path) -> Path:
    """Six patients: P0001 truncated T1, P0002 bit-flipped T1 (compressed stream), P0003 empty T1, P0004 NaN-filled T1,
    P0005 a PNG named mri-t1.nii.gz, P0006 untouched."""
    cohort = root / "damaged"
    shutil.copytree(tiny.cohort, cohort)
    t1 = lambda p: cohort / p / "mri-t1.nii.gz"  # noqa: E731
    good = t1("P0001").read_bytes()
    t1("P0001").write_bytes(good[: len(good) // 3])
    flipped = bytearray(good)
    for position in range(len(flipped) // 2, len(flipped) // 2 + 64, 8):
        flipped[position] ^= 0x5A  # bit flips inside the deflate stream
    t1("P0002").write_bytes(bytes(flipped))
    t1("P0003").write_bytes(b"")
    volume, meta = io.read(t1("P0004"))
    io.write(t1("P0004"), np.full(volume.shape, np.nan, np.float32), meta)
    t1("P0005").write_bytes(_png_bytes(4, 4))
    return cohort


def assert_clean_stderr(stderr: str) -> None:
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr


def test_cli_translate_reports_each_bad_input_in_one_line_and_finishes_the_rest(tiny: Tiny, tmp_path: Path) -> None:
    cohort = damaged_cohort(tiny, tmp_path)
    out = tmp_path / "out"
    result = run_cli(["translate", cohort, "--to", "ct", "--out", out, "--model", tiny.reference, "--device", "cpu", "--json"],
                     env=tiny.env())
    assert result.returncode == 1, result.stderr
    assert_clean_stderr(result.stderr)
    items = {Path(item["input"]).name: item for item in map(json.loads, result.stdout.splitlines())}
    assert items["P0006"]["status"] == "ok" and (out / "P0006" / "ct.nii.gz").is_file()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    for patient in ("P0001", "P0002", "P0003", "P0004", "P0005"):
        assert items[patient]["status"] == "failed"
        assert "\n" not in items[patient]["message"]
        assert sum(patient in line for line in errors) == 1, f"{patient}: {errors}"
    assert "NaN" in items["P0004"]["message"]


def test_cli_single_bad_input_and_zero_inputs(tiny: Tiny, tmp_path: Path) -> None:
    cohort = damaged_cohort(tiny, tmp_path)
    one = run_cli(["translate", cohort / "P0002" / "mri-t1.nii.gz", "--to", "ct", "--out", tmp_path / "o", "--model", tiny.reference],
                  env=tiny.env())
    assert one.returncode == 1 and "P0002" in one.stderr
    assert_clean_stderr(one.stderr)
    none = run_cli(["translate", str(tmp_path / "nothing-*.nii.gz"), "--to", "ct", "--model", tiny.reference], env=tiny.env())
    assert none.returncode == 2 and "no inputs" in none.stderr
    assert_clean_stderr(none.stderr)
    missing_bundle = run_cli(["translate", cohort, "--to", "ct", "--model", tmp_path / "no-bundle"], env=tiny.env())
    assert missing_bundle.returncode == 2 and len([l for l in missing_bundle.stderr.splitlines() if l.startswith("error:")]) == 1


def test_cli_data_index_names_each_damaged_file(tiny: Tiny, tmp_path: Path) -> None:
    """`data index` is the tool that finds problems: every damaged file is named in its patient's
    problems (one line each), the other patients are indexed, no traceback."""
    cohort = damaged_cohort(tiny, tmp_path)
    result = run_cli(["data", "index", cohort, "--json"], env=tiny.env())
    assert result.returncode == 0, result.stderr
    assert_clean_stderr(result.stderr)
    records = {r["patient_id"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert len(records) == 6 and records["P0006"]["problems"] == []
    for patient in ("P0001", "P0003", "P0005"):  # (P0002's damage is in the pixel data, which index does not read)
        problems = records[patient]["problems"]
        assert any("mri-t1" in p for p in problems) and all("\n" not in p for p in problems), (patient, problems)


def test_cli_generate_and_evaluate_with_damaged_files(tiny: Tiny, tmp_path: Path) -> None:
    bad_xray = tmp_path / "P0001" / "xray.png"
    bad_xray.parent.mkdir()
    bad_xray.write_bytes(_png_bytes(100000, 100000))
    generated = run_cli(["generate", "--to", "report", "--from", bad_xray, "--model", tiny.reference, "--out", tmp_path / "g"],
                        env=tiny.env())
    assert generated.returncode in (1, 2), generated.stderr
    assert_clean_stderr(generated.stderr)
    assert len([l for l in generated.stderr.splitlines() if l.startswith("error:")]) == 1

    cohort = damaged_cohort(tiny, tmp_path / "c")
    pred = tmp_path / "pred"
    for patient in ("P0001", "P0006"):
        (pred / patient).mkdir(parents=True)
        shutil.copy(cohort / patient / "mri-t1.nii.gz", pred / patient / "ct.nii.gz")
    evaluated = run_cli(["evaluate", "--task", "translation", "--pred", pred, "--ref", tiny.cohort, "--json"], env=tiny.env())
    assert evaluated.returncode == 1, evaluated.stderr
    assert_clean_stderr(evaluated.stderr)
    assert sum("P0001" in line and "ct.nii.gz" in line for line in evaluated.stderr.splitlines()) == 1
    json.loads(evaluated.stdout)  # the rest was scored
