"""scan_cohort on a small real cohort written with medm2g_core.io: what it finds and the problems it names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medm2g_core import io
from medm2g_core.data.manifest import MANIFEST_NAME, scan_cohort, write_manifest
from medm2g_core.errors import InputError
from medm2g_core.modalities import Modality
from medm2g_core.types import ImageMeta

GRID = ImageMeta(spacing=(2.0, 2.0, 3.0), origin=(-16.0, -16.0, 10.0), shape=(16, 16, 6))


def build_cohort(root: Path) -> Path:
    """chest/P0001 complete and clean; head/P0001 with a DICOM series on another grid than its CT;
    P0003 with every kind of damage."""
    rng = np.random.default_rng(0)
    good = root / "chest" / "P0001"
    io.write(good / "ct.nii.gz", rng.integers(-1000, 1000, GRID.shape).astype(np.int16), GRID.replace(modality="ct", units="HU", synthetic=True))
    io.write(good / "mri-t1.nii.gz", rng.random(GRID.shape, dtype=np.float32), GRID.replace(modality="mri-t1", synthetic=True))
    io.write(good / "xray.png", rng.integers(0, 65535, (32, 24)).astype(np.uint16), ImageMeta(spacing=(0.5, 0.5), shape=(32, 24), modality="xray"))
    io.write_report(good / "report.txt", io.Report.from_sections(findings="Clear lungs.", impression="Normal."), synthetic=True)
    (good / "labels.json").write_text(json.dumps({"cardiomegaly": 0, "effusion": 1}))
    (good / "ct.nii.gz.json").write_text("{}")  # a sidecar: ignored

    head = root / "head" / "P0001"
    io.write(head / "ct.nii.gz", np.zeros(GRID.shape, np.int16), GRID.replace(modality="ct", units="HU"))
    other = GRID.replace(spacing=(1.0, 1.0, 3.0), modality="mri-t1")
    io.write(head / "mri-t1", rng.integers(0, 900, GRID.shape).astype(np.int16), other)  # DICOM series folder

    bad = root / "P0003"
    path = io.write(bad / "ct.nii.gz", rng.integers(-1000, 1000, (40, 40, 30)).astype(np.int16), GRID.replace(shape=(40, 40, 30)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    io.write(bad / "xray.nii.gz", np.zeros((8, 8, 4), np.uint8), GRID.replace(shape=(8, 8, 4)))
    (bad / "report.txt").write_text("  \n")
    (bad / "notes.docx").write_bytes(b"PK\x03\x04")
    (bad / "labels.json").write_text("[1, 2]")
    latin = root / "P0004"
    latin.mkdir()
    (latin / "report.txt").write_bytes("Befund: vergr\u00f6\u00dfert".encode("latin-1"))
    (root / "README.md").write_text("not a patient")
    return root


def by_id(records):
    return {record.patient_id: record for record in records}


def test_scan_finds_nested_patients_and_names_problems(tmp_path):
    records = by_id(scan_cohort(build_cohort(tmp_path / "cohort")))
    assert sorted(records) == ["P0003", "P0004", "chest/P0001", "head/P0001"]

    good = records["chest/P0001"]
    assert set(good.files) == {Modality.CT, Modality.MRI_T1, Modality.XRAY, Modality.REPORT}
    assert good.labels == {"cardiomegaly": 0, "effusion": 1}
    assert good.shapes[Modality.XRAY] == (32, 24) and good.spacings[Modality.CT] == (2.0, 2.0, 3.0)
    assert good.synthetic
    assert [p for p in good.problems if "duplicate" not in p] == []

    head = records["head/P0001"]
    assert head.files[Modality.MRI_T1].is_dir() and head.shapes[Modality.MRI_T1] == (16, 16, 6)
    assert any("different grids" in p for p in head.problems)
    assert any("duplicate patient folder name 'P0001'" in p for p in head.problems)
    assert any("duplicate patient folder name 'P0001'" in p for p in good.problems)

    bad = records["P0003"].problems
    assert any(p.startswith("ct.nii.gz:") and "truncated" in p for p in bad), bad
    assert any("X-ray is not 2D" in p for p in bad)
    assert any(p == "report.txt: empty report" for p in bad)
    assert any(p.startswith("notes.docx: unrecognised file") for p in bad)
    assert any(p.startswith("labels.json:") for p in bad)
    assert any("not UTF-8" in p for p in records["P0004"].problems)


def test_write_manifest_is_jsonl_with_relative_paths(tmp_path):
    root = build_cohort(tmp_path / "cohort")
    path = write_manifest(root, scan_cohort(root))
    assert path == root / MANIFEST_NAME
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    first = next(line for line in lines if line["patient_id"] == "chest/P0001")
    assert first["files"]["ct"] == "chest/P0001/ct.nii.gz" and first["folder"] == "chest/P0001"
    assert first["labels"] == {"cardiomegaly": 0, "effusion": 1}
    assert len(lines) == 4
    # Re-indexing with the manifest present finds the same patients.
    assert len(scan_cohort(root)) == 4


def test_root_errors(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        scan_cohort(tmp_path / "missing")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InputError, match="no patient folders"):
        scan_cohort(tmp_path / "empty")
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        scan_cohort(file)


def test_importer_auxiliary_files_are_extras_not_problems(tmp_path):
    root = tmp_path / "cohort"
    patient = root / "CXR1"
    io.write(patient / "xray.png", np.zeros((8, 8), np.uint8), ImageMeta(spacing=(1.0, 1.0), shape=(8, 8)))
    names = ["xray-lateral.png", "xray-lateral-2.jpg", "xray-frontal-2.png", "xray-view-3.jpg",
             "mask.nii.gz", "seg.nii.gz", "cbct.nii.gz"]
    for name in names:
        (patient / name).write_bytes(b"not read")  # listed, never decoded
    (patient / "xray-oblique.png").write_bytes(b"x")  # not a name any importer writes
    (patient / "xray-lateral.jpg").write_bytes(b"x")  # the same view twice
    record = scan_cohort(root)[0]
    assert set(record.files) == {Modality.XRAY}
    assert sorted(record.extras) == sorted(n.split(".")[0] for n in names)
    assert record.extras["xray-lateral"] == patient.absolute() / "xray-lateral.jpg"
    assert record.to_json(root=root)["extras"]["seg"] == "CXR1/seg.nii.gz"
    assert sorted(p.split(":")[0] for p in record.problems) == ["xray-lateral.png", "xray-oblique.png"]
    assert any(p.startswith("xray-lateral.png: a second xray-lateral file") for p in record.problems)
    broken = tmp_path / "broken" / "P1"
    io.write(broken / "mri-t1.nii.gz", np.zeros(GRID.shape, np.float32), GRID)
    (broken / "SEG.nii.gz").symlink_to(tmp_path / "gone.nii.gz")  # matched case-insensitively
    assert [p.split(" (")[0] for p in scan_cohort(broken.parent)[0].problems] == ["SEG.nii.gz: broken link"]


def test_symlinked_files_are_listed_by_their_place_in_the_cohort(tmp_path):
    source = tmp_path / "downloads" / "IXI"
    io.write(source / "IXI002-Guys-0828-T1.nii.gz", np.zeros(GRID.shape, np.float32), GRID)
    (source / "reports").mkdir()
    io.write_report(source / "reports" / "r.txt", "FINDINGS: clear. IMPRESSION: normal.", synthetic=False)
    root = tmp_path / "cohort"
    (root / "IXI002").mkdir(parents=True)
    (root / "IXI002" / "mri-t1.nii.gz").symlink_to(source / "IXI002-Guys-0828-T1.nii.gz")
    (root / "IXI002" / "report.txt").symlink_to(source / "reports" / "r.txt")
    record = scan_cohort(root)[0]
    assert record.files[Modality.MRI_T1] == (root / "IXI002" / "mri-t1.nii.gz").absolute()
    shown = record.to_json(root=root)
    assert shown["files"] == {"mri-t1": "IXI002/mri-t1.nii.gz", "report": "IXI002/report.txt"} and shown["folder"] == "IXI002"
    line = json.loads(write_manifest(root, [record]).read_text(encoding="utf-8"))
    assert line["files"]["mri-t1"] == "IXI002/mri-t1.nii.gz"


def test_mri_contrasts_of_one_patient_on_different_grids(tmp_path):
    root = tmp_path / "cohort"
    ixi = root / "IXI002"  # IXI: T1 sagittal, T2/PD axial, never co-registered
    io.write(ixi / "mri-t1.nii.gz", np.zeros(GRID.shape, np.float32), GRID)
    io.write(ixi / "mri-t2.nii.gz", np.zeros((16, 16, 8), np.float32), GRID.replace(shape=(16, 16, 8), spacing=(1.0, 1.0, 3.0)))
    io.write(ixi / "mri-pd.nii.gz", np.zeros((16, 16, 8), np.float32), GRID.replace(shape=(16, 16, 8), spacing=(1.0, 1.0, 3.0)))
    shifted = root / "P2"
    io.write(shifted / "mri-t1.nii.gz", np.zeros(GRID.shape, np.float32), GRID)
    io.write(shifted / "mri-t2.nii.gz", np.zeros(GRID.shape, np.float32), GRID.replace(origin=(0.0, 0.0, 10.0)))
    registered = root / "P3"
    for name in ("ct.nii.gz", "mri-t1.nii.gz", "mri-t2.nii.gz"):
        io.write(registered / name, np.zeros(GRID.shape, np.int16), GRID)
    records = by_id(scan_cohort(root))
    assert records["IXI002"].problems == [
        "mri-t1 and mri-t2 are on different grids (shape (16, 16, 6) vs (16, 16, 8), spacing 2×2×3 vs 1×1×3 mm); "
        "register them before training paired flows",
        "mri-t1 and mri-pd are on different grids (shape (16, 16, 6) vs (16, 16, 8), spacing 2×2×3 vs 1×1×3 mm); "
        "register them before training paired flows",
    ]  # T2 and PD share their grid
    assert len(records["P2"].problems) == 1 and "different origin or direction" in records["P2"].problems[0]
    assert records["P3"].problems == []


def test_irregular_dicom_series_is_a_warning_with_allow_irregular(tmp_path):
    root = tmp_path / "cohort"
    series = io.write(root / "P1" / "ct", np.zeros(GRID.shape, np.int16), GRID.replace(modality="ct", units="HU"))
    files = sorted(series.iterdir())
    assert len(files) == 6
    files[3].unlink()  # one slice missing in the middle
    strict = scan_cohort(root)[0]
    assert strict.files == {} and strict.warnings == []
    assert len(strict.problems) == 1 and strict.problems[0].startswith("ct: ") and "missing" in strict.problems[0]
    lenient = scan_cohort(root, allow_irregular=True)[0]
    assert set(lenient.files) == {Modality.CT} and lenient.shapes[Modality.CT] == (16, 16, 5)
    assert lenient.problems == []
    assert len(lenient.warnings) == 1 and lenient.warnings[0].startswith("ct/: irregular series read anyway") and "missing" in lenient.warnings[0]
    assert lenient.to_json(root=root)["warnings"] == lenient.warnings
