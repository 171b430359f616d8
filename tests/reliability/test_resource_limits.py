"""Issue 10 §6, resource limits: a volume that cannot fit is refused with the numbers before its pixels
are allocated — ``translate --max-memory`` as a per-input failure (the rest finish), the readers'
header check (``MEDM2G_MAX_ARRAY_BYTES``, default half the RAM) as an ``InputError`` — never an OOM kill.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medm2g_core import io

from reliability_support import Tiny, refused_with_peak, run_cli


def gzip_bomb_nifti(path: Path, shape: tuple[int, int, int]) -> int:
    """A valid .nii.gz of zeros (float32): tiny on disk, ``prod(shape) * 4`` bytes when read."""
    import nibabel

    header = nibabel.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header.set_data_offset(352)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    nbytes = int(np.prod(shape)) * 4
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(header.binaryblock + b"\x00" * 4)
        zeros = b"\x00" * 2**22
        for _ in range(nbytes // len(zeros)):
            handle.write(zeros)
        handle.write(b"\x00" * (nbytes % len(zeros)))
    return nbytes


def test_reader_refuses_a_volume_over_the_memory_limit_before_allocating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mri-t1.nii.gz"
    nbytes = gzip_bomb_nifti(path, (256, 256, 256))  # 64 MiB when read, ~64 KiB on disk
    assert path.stat().st_size < nbytes / 100
    monkeypatch.setenv("MEDM2G_MAX_ARRAY_BYTES", str(16 * 2**20))
    error, peak = refused_with_peak(io.read, path)
    message = str(error)
    assert "256×256×256" in message and "memory limit" in message and "GiB" in message
    assert "MEDM2G_MAX_ARRAY_BYTES" in message
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB allocated while refusing"
    monkeypatch.setenv("MEDM2G_MAX_ARRAY_BYTES", str(2**30))
    array, meta = io.read(path)  # under a sufficient limit the same file reads
    assert array.shape == (256, 256, 256)


def test_translate_max_memory_fails_that_input_with_the_numbers(tiny: Tiny, tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    for patient in ("P0001", "P0002"):
        shutil.copytree(tiny.cohort / patient, cohort / patient)
    big = cohort / "P0002" / "mri-t1.nii.gz"
    gzip_bomb_nifti(big, (128, 128, 128))  # 8× the voxels of the 64³ phantoms
    out = tmp_path / "out"
    result = run_cli(["translate", cohort, "--to", "ct", "--out", out, "--model", tiny.reference, "--device", "cpu",
                      "--max-memory", "16M", "--json"], env=tiny.env())
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    items = {Path(item["input"]).name: item for item in map(json.loads, result.stdout.splitlines())}
    assert items["P0001"]["status"] == "ok" and (out / "P0001" / "ct.nii.gz").is_file()
    failed = items["P0002"]
    assert failed["status"] == "failed" and not (out / "P0002").exists()
    assert "128×128×128" in failed["message"] and "GiB" in failed["message"] and "--max-memory" in failed["message"]
    assert sum("P0002" in line for line in result.stderr.splitlines() if line.startswith("error:")) == 1


def test_bad_max_memory_is_a_usage_error(tiny: Tiny, tmp_path: Path) -> None:
    result = run_cli(["translate", tiny.cohort / "P0001", "--to", "ct", "--model", tiny.reference, "--max-memory", "lots",
                      "--out", tmp_path / "o"], env=tiny.env())
    assert result.returncode == 2 and "--max-memory" in result.stderr and "Traceback" not in result.stderr
