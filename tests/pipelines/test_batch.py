"""Batch infrastructure without a model: inputs, output names, collisions, shards, skip-existing, devices."""

from __future__ import annotations

import io as stdio
from pathlib import Path

import numpy as np
import pytest

from medm2g_core import io
from medm2g_core.errors import ConfigError, InputError
from medm2g_core.modalities import Modality
from medm2g_cli import parsing
from medm2g_core.jobs import inputs as batch_inputs, runs as batch
from medm2g_core.types import ImageMeta


def _volume(path: Path, *, modality: str = "mri-t1", shape=(6, 6, 4)) -> Path:
    meta = ImageMeta(spacing=(1.0, 1.0, 2.0), shape=shape, modality=modality, synthetic=True)
    io.write(path, np.ones(shape, np.float32), meta)
    return path


@pytest.fixture()
def cohort(tmp_path: Path) -> Path:
    for patient in ("P0001", "P0002", "P0003"):
        _volume(tmp_path / "cohort" / patient / "mri-t1.nii.gz")
    return tmp_path / "cohort"


def test_stdin_inputs_blank_lines_and_duplicates(cohort: Path) -> None:
    paths = [str(p) for p in sorted(cohort.glob("*/mri-t1.nii.gz"))]
    stream = stdio.StringIO("\n".join(paths + ["", paths[0]]) + "\n")
    assert batch_inputs.expand_inputs(["-"], stdin=stream) == [Path(p) for p in paths]


def test_globs_expand_and_missing_files_are_kept_for_their_own_failure(cohort: Path) -> None:
    found = batch_inputs.expand_inputs([str(cohort / "*" / "mri-t1.nii.gz"), str(cohort / "nope.nii.gz")])
    assert len(found) == 4 and found[-1].name == "nope.nii.gz"


@pytest.mark.parametrize("inputs", [[], ["-"]])
def test_zero_inputs_is_an_input_error(inputs: list[str]) -> None:
    with pytest.raises(InputError, match="no inputs"):
        batch_inputs.expand_inputs(inputs, stdin=stdio.StringIO(""))


def test_glob_matching_nothing_names_the_pattern(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no file matches .*\*\.nii\.gz"):
        batch_inputs.expand_inputs([str(tmp_path / "*.nii.gz")])


def test_output_names_come_from_the_patient_folder(cohort: Path, tmp_path: Path) -> None:
    assert batch_inputs.patient_name(cohort / "P0002" / "mri-t1.nii.gz") == "P0002"
    assert batch_inputs.patient_name(cohort / "P0002") == "P0002"
    flat = _volume(tmp_path / "scans" / "IXI002-Guys-T1.nii.gz")
    assert batch_inputs.patient_name(flat) == "IXI002-Guys-T1"  # free-form names: their own stem, so a flat folder never collides


def test_cohort_folder_expands_to_patient_folders(cohort: Path) -> None:
    assert [p.name for p in batch_inputs.expand_folders([cohort])] == ["P0001", "P0002", "P0003"]


def test_collision_is_found_before_any_work(tmp_path: Path) -> None:
    jobs = [batch.Job(input=f"{site}/P0001/mri-t1.nii.gz", key="P0001/ct.nii.gz", output=tmp_path / "out" / "P0001" / "ct.nii.gz")
            for site in ("a", "b")]
    with pytest.raises(InputError, match="2 inputs would write the same output"):
        batch.check_collisions(jobs)


def test_shards_partition_deterministically_whatever_the_input_order(tmp_path: Path) -> None:
    jobs = [batch.Job(input=str(i), key=f"P{i:04d}/ct.nii.gz", output=tmp_path / f"P{i:04d}") for i in range(10)]
    shards = [batch.select_shard(jobs, (k, 3)) for k in range(3)]
    reversed_shards = [batch.select_shard(list(reversed(jobs)), (k, 3)) for k in range(3)]
    assert [[j.key for j in s] for s in shards] == [[j.key for j in s] for s in reversed_shards]
    keys = sorted(j.key for s in shards for j in s)
    assert keys == sorted(j.key for j in jobs)  # every job exactly once
    assert parsing.parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "a/b", "1/0"):
        with pytest.raises(ConfigError):
            parsing.parse_shard(bad)


def test_skip_existing_trusts_only_a_matching_sidecar(tmp_path: Path) -> None:
    output = _volume(tmp_path / "out" / "P0001" / "ct.nii.gz", modality="ct")
    current = batch.fingerprint(bundle="abc", arguments={"to": "ct", "seed": 0})
    assert not batch.output_is_current(output, current)  # no sidecar: a killed run's output is not trusted
    from medm2g_core.serialization import write_json

    stale = batch.fingerprint(bundle="abc", arguments={"to": "ct", "seed": 1})
    write_json(batch.sidecar_path(output), {"fingerprint": stale})
    assert not batch.output_is_current(output, current)
    write_json(batch.sidecar_path(output), {"fingerprint": current})
    assert batch.output_is_current(output, current)
    batch.sidecar_path(output).write_text("{ truncated")
    assert not batch.output_is_current(output, current)
    batch.remove_stale_sidecar(output)
    assert not batch.sidecar_path(output).exists()


def test_sidecar_and_std_names(tmp_path: Path) -> None:
    assert batch.sidecar_path(tmp_path / "ct.nii.gz").name == "ct.json"
    assert batch.sidecar_path(tmp_path / "ct").name == "ct.json"  # a DICOM series folder
    assert batch.std_path(tmp_path / "ct.nii.gz").name == "ct.std.nii.gz"


def test_isolation_one_failure_does_not_stop_the_rest(tmp_path: Path) -> None:
    jobs = [batch.Job(input=name, key=name, output=tmp_path / name) for name in ("a", "bad", "c")]
    seen: list[str] = []

    def work(job: batch.Job) -> batch.ItemResult:
        if job.input == "bad":
            raise InputError(Path("bad"), "not a readable NIfTI file", "export it again")
        return batch.ItemResult(job.input, batch.STATUS_OK)

    results = batch.run_jobs(jobs, work, on_result=lambda item: seen.append(item.status))
    assert seen == ["ok", "failed", "ok"]
    assert results[1].message == "bad: not a readable NIfTI file — export it again"
    assert batch.summary_counts(results) == {"ok": 2, "failed": 1, "skipped": 0}


def test_memory_parse_and_check(tmp_path: Path) -> None:
    assert parsing.parse_memory("4G") == 4 * 2**30
    assert parsing.parse_memory("512MiB") == 512 * 2**20
    with pytest.raises(ConfigError):
        parsing.parse_memory("lots")
    path = _volume(tmp_path / "big.nii.gz", shape=(20, 20, 20))
    shape, voxels = batch.estimate_array_bytes(path)
    assert shape == (20, 20, 20) and voxels == 8000
    with pytest.raises(InputError, match=r"20×20×20 volume needs .* more than --max-memory"):
        batch.check_memory(path, voxels=voxels, shape=shape, bytes_per_voxel=32, limit=1000)


def test_run_record_has_no_patient_data(tmp_path: Path) -> None:
    record = batch.RunRecord(command="translate", arguments={"to": "ct"}, seed=0, bundle_hash="h", bundle_name="b",
                             synthetic_bundle=True, device="cpu")
    record.items = [batch.ItemResult("P0001/mri-t1.nii.gz", "ok", output="out/P0001/ct.nii.gz")]
    data = batch.read_json(record.write(tmp_path))
    assert data["version"] and data["bundle"]["hash"] == "h" and data["counts"]["ok"] == 1 and data["seed"] == 0


def test_modality_of_canonical_and_token_names(tmp_path: Path) -> None:
    assert batch_inputs.canonical_modality("mri-t1.nii.gz") is Modality.MRI_T1
    assert batch_inputs.canonical_modality("IXI002-T1.nii.gz") is None
    assert batch_inputs.modality_of(Path("IXI002-Guys-T1.nii.gz")) is Modality.MRI_T1
