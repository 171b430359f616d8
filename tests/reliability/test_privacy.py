"""Issue 10 §4, privacy: a DICOM series whose identifying fields are marker strings goes through
``data index --json``, ``translate`` (NIfTI and DICOM output, ``--json``, ``--verbose``); no marker
appears in any output file, sidecar, run.json, stdout or stderr, and DICOM outputs get new UIDs and
ImageType DERIVED\\SECONDARY.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from reliability_support import Tiny, run_cli

MARKERS = {
    "PatientName": "ZZMARKERNAME^QQX",
    "PatientID": "ZZMARKERID7731",
    "PatientBirthDate": "19010203",
    "OtherPatientIDs": "ZZMARKEROTHERID",
    "AccessionNumber": "ZZMARKERACC",
    "InstitutionName": "ZZMARKERINSTITUTE",
    "ReferringPhysicianName": "ZZMARKERDOCTOR",
    "PatientAddress": "ZZMARKERSTREET",
}


def marker_series(folder: Path, *, slices: int = 8) -> dict[str, str]:
    """An MR T1 series built from pydicom's MR_small.dcm with marker identities; returns its UIDs."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    template = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(slices):
        dataset = copy.deepcopy(template)
        for keyword, value in MARKERS.items():
            setattr(dataset, keyword, value)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.FrameOfReferenceUID = study, series, frame
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.SeriesDescription = "T1 SE"
        dataset.InstanceNumber = index + 1
        dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        dataset.ImagePositionPatient = [0.0, 0.0, float(index) * 2.0]
        dataset.SliceThickness = 2.0
        pixels = (rng.normal(400, 50, (dataset.Rows, dataset.Columns))).clip(0, 4000).astype(np.uint16)
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 0
        dataset.PixelData = pixels.tobytes()
        dataset.save_as(folder / f"{index:04d}.dcm")
    return {"study": study, "series": series, "frame": frame}


def find_markers(blobs: dict[str, bytes]) -> list[str]:
    found = []
    for name, blob in blobs.items():
        for keyword, marker in MARKERS.items():
            variants = {marker, marker.replace("^", " "), *marker.split("^")}
            for variant in variants:
                if variant.encode() in blob or variant.encode("utf-16-le") in blob:
                    found.append(f"{keyword} ({variant!r}) in {name}")
    return found


def files_under(root: Path) -> dict[str, bytes]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.name.endswith(".gz"):
                import gzip

                data += gzip.decompress(data)
            out[str(path.relative_to(root.parent))] = data
    return out


def test_no_identifying_field_reaches_any_output_or_log(tiny: Tiny, tmp_path: Path) -> None:
    import pydicom

    cohort = tmp_path / "cohort"
    source = marker_series(cohort / "case01" / "mri-t1")
    # the source really carries the markers (so their absence below means something)
    assert find_markers(files_under(cohort))

    streams: dict[str, bytes] = {}

    def run(name: str, args: list) -> None:
        result = run_cli(args, env=tiny.env())
        streams[f"{name}: stdout"] = result.stdout.encode()
        streams[f"{name}: stderr"] = result.stderr.encode()
        assert result.returncode == 0, f"{name}: exit {result.returncode}\n{result.stderr}"

    run("data index", ["data", "index", cohort, "--json"])
    run("data index verbose", ["--verbose", "data", "index", cohort])
    common = ["--to", "ct", "--from", "mri-t1", "--model", tiny.reference, "--device", "cpu", "--samples", "2"]
    run("translate nifti", ["--verbose", "translate", cohort / "case01", *common, "--out", tmp_path / "nifti", "--json"])
    run("translate dicom", ["--verbose", "translate", cohort / "case01" / "mri-t1", *common, "--out", tmp_path / "dicom",
                            "--format", "dicom", "--json"])
    outputs = {**files_under(tmp_path / "nifti"), **files_under(tmp_path / "dicom")}
    assert any(name.endswith("run.json") for name in outputs) and any(name.endswith("ct.json") for name in outputs)
    assert any(name.endswith(".dcm") for name in outputs) and any(name.endswith("ct.nii.gz") for name in outputs)
    leaks = find_markers({**outputs, **streams})
    assert not leaks, "identifying fields leaked:\n" + "\n".join(leaks)

    written = [pydicom.dcmread(path) for path in sorted((tmp_path / "dicom").rglob("*.dcm"))]
    assert len(written) == 8
    assert len({d.SeriesInstanceUID for d in written}) == 1 and len({d.SOPInstanceUID for d in written}) == 8
    for dataset in written:
        assert dataset.StudyInstanceUID != source["study"]
        assert dataset.SeriesInstanceUID != source["series"]
        assert list(dataset.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert "medm2g" in str(dataset.get("DerivationDescription", ""))
        for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
            assert str(dataset.get(keyword, "")) not in (MARKERS[keyword],)
