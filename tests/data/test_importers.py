"""Dataset importers: tiny fake trees with each dataset's real layout and file names, plus the real
IU X-ray reports and IXI002 MRI in ../shared/data when present (read in place, never copied)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from medm2g_core.data.importers import ImportResult, import_dataset
from medm2g_core.data.importers.iu_xray import import_iu_xray
from medm2g_core.errors import ConfigError, InputError
from medm2g_core.io import read_report
from medm2g_core.types import ProgressEvent

# --- fake-tree builders -----------------------------------------------------------------------------

XML_TEMPLATE = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <uId id="CXR{uid}"/>
   <IUXRId id="{uid}"/>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <Abstract>
            <AbstractText Label="COMPARISON">None.</AbstractText>
            <AbstractText Label="INDICATION">Cough</AbstractText>
            <AbstractText Label="FINDINGS">{findings}</AbstractText>
            <AbstractText Label="IMPRESSION">{impression}</AbstractText>
         </Abstract>
         <AuthorList CompleteYN="Y"><Author ValidYN="Y"><LastName>Doe-Marker</LastName><ForeName>Jane</ForeName></Author></AuthorList>
      </Article>
   </MedlineCitation>
   {images}
</eCitation>
"""


def xml_report(uid: int, findings: str, impression: str, image_ids: list[str]) -> str:
    images = "\n".join(f'<parentImage id="{i}"><figureId>F1</figureId></parentImage>' for i in image_ids)
    return XML_TEMPLATE.format(uid=uid, findings=findings, impression=impression, images=images)


def write_png(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 128).save(path)
    return path


def make_iu_tree(root: Path, *, tarball: bool) -> Path:
    """Open-i XML (folder or NLMCXR_reports.tgz), Kaggle CSVs, R2Gen annotation, Open-i PNG names."""
    root.mkdir(parents=True, exist_ok=True)
    reports = {
        # Open-i order lists the lateral first here: the projection table must win over XML order.
        7: xml_report(7, "The cardiac contours are normal.", "Basilar atelectasis.", ["CXR7_IM-2263-2001", "CXR7_IM-2263-1001"]),
        10: xml_report(10, "Lungs clear.", "No acute disease.", ["CXR10_IM-0002-1001"]),
        11: xml_report(11, "", "Normal chest.", ["CXR11_IM-0003-1001"]),
        12: xml_report(12, "", "", []),  # no text and no image: nothing to import
        13: "<eCitation><AbstractText Label='FINDINGS'>broken",  # unreadable
    }
    if tarball:
        with tarfile.open(root / "NLMCXR_reports.tgz", "w:gz") as archive:
            for uid, text in reports.items():
                data = text.encode()
                member = tarfile.TarInfo(f"ecgen-radiology/{uid}.xml")
                member.size = len(data)
                archive.addfile(member, io.BytesIO(data))
            link = tarfile.TarInfo("ecgen-radiology/99.xml")  # a link member is never followed
            link.type = tarfile.SYMTYPE
            link.linkname = "/etc/passwd"
            archive.addfile(link)
    else:
        folder = root / "ecgen-radiology"
        folder.mkdir()
        for uid, text in reports.items():
            (folder / f"{uid}.xml").write_text(text)
    (root / "indiana_reports.csv").write_text(
        "uid,MeSH,Problems,image,indication,comparison,findings,impression\n"
        '7,normal,normal,Xray Chest PA and Lateral,Cough,None.,"CSV text, not used.",CSV.\n'
        '20,normal,normal,Xray Chest PA and Lateral,Cough,None.,"Heart normal, lungs clear.",Normal.\n'
    )
    (root / "indiana_projections.csv").write_text(
        "uid,filename,projection\n7,7_IM-2263-1001.dcm.png,Frontal\n7,7_IM-2263-2001.dcm.png,Lateral\n"
        "10,10_IM-0002-1001.dcm.png,Frontal\n"
    )
    annotation = {
        "train": [{"id": "CXR7_IM-2263", "report": "x", "image_path": ["CXR7_IM-2263/0.png"], "split": "train"},
                  {"id": "CXR20_IM-0009-1001", "report": "x", "image_path": [], "split": "train"}],
        "val": [{"id": "CXR10_IM-0002", "report": "x", "image_path": [], "split": "val"}],
        "test": [{"id": "CXR11_IM-0003", "report": "x", "image_path": [], "split": "test"}],
    }
    (root / "annotation.json").write_text(json.dumps(annotation))
    write_png(root / "images" / "CXR7_IM-2263-1001.png")
    write_png(root / "images" / "CXR7_IM-2263-2001.png")
    write_png(root / "images" / "10_IM-0002-1001.dcm.png")  # Kaggle name
    return root


# --- IU X-ray ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tarball", [True, False], ids=["tgz", "xml-folder"])
def test_iu_xray_fake_tree(tmp_path: Path, tarball: bool) -> None:
    source = make_iu_tree(tmp_path / "iu", tarball=tarball)
    events: list[ProgressEvent] = []
    result = import_iu_xray(source, out=tmp_path / "cohort", progress=events.append)

    cohort = tmp_path / "cohort"
    assert sorted(p.name for p in cohort.iterdir() if p.is_dir()) == ["CXR10", "CXR11", "CXR20", "CXR7"]
    # Frontal from the projection table, although the XML lists the lateral first.
    assert os.readlink(cohort / "CXR7" / "xray.png") == str((source / "images" / "CXR7_IM-2263-1001.png").resolve())
    assert os.readlink(cohort / "CXR7" / "xray-lateral.png").endswith("CXR7_IM-2263-2001.png")
    assert os.readlink(cohort / "CXR10" / "xray.png").endswith("10_IM-0002-1001.dcm.png")
    report = read_report(cohort / "CXR7" / "report.txt")
    assert report.findings == "The cardiac contours are normal." and report.impression == "Basilar atelectasis."
    assert not report.synthetic
    assert "Doe-Marker" not in (cohort / "CXR7" / "report.txt").read_text()
    assert read_report(cohort / "CXR11" / "report.txt").impression == "Normal chest."
    assert read_report(cohort / "CXR20" / "report.txt").findings == "Heart normal, lungs clear."  # CSV-only study
    assert not (cohort / "CXR12").exists()

    assert result.patients == 4
    assert result.reports_only == 2  # CXR11 (image not downloaded) and CXR20
    assert result.files["xray.png"] == 2 and result.files["report.txt"] == 4
    assert len(result.problems) == 1 and result.problems[0].startswith("CXR13:")
    assert json.loads((cohort / "splits.json").read_text()) == {"train": ["CXR20", "CXR7"], "val": ["CXR10"], "test": ["CXR11"]}
    assert result.splits == {"train": 2, "val": 1, "test": 1}
    assert events[-1].completed == events[-1].total == 6  # 5 XML + 1 CSV-only study
    assert "Doe-Marker" not in json.dumps(result.problems + result.notes)


def test_iu_xray_rerun_is_idempotent(tmp_path: Path) -> None:
    source = make_iu_tree(tmp_path / "iu", tarball=True)
    first = import_iu_xray(source, out=tmp_path / "cohort")
    before = {p: (p.lstat().st_mtime_ns, p.lstat().st_ino) for p in (tmp_path / "cohort").rglob("*")}
    second = import_iu_xray(source, out=tmp_path / "cohort")
    after = {p: (p.lstat().st_mtime_ns, p.lstat().st_ino) for p in (tmp_path / "cohort").rglob("*")}
    assert second.written == 0 and second.unchanged == first.written
    assert before == after
    assert not [p for p in (tmp_path / "cohort").rglob(".*")]  # no temporary files left behind


def test_iu_xray_copy_mode(tmp_path: Path) -> None:
    source = make_iu_tree(tmp_path / "iu", tarball=False)
    result = import_iu_xray(source, out=tmp_path / "cohort", copy=True)
    xray = tmp_path / "cohort" / "CXR7" / "xray.png"
    assert result.mode == "copy" and not xray.is_symlink()
    assert xray.read_bytes() == (source / "images" / "CXR7_IM-2263-1001.png").read_bytes()
    assert import_iu_xray(source, out=tmp_path / "cohort", copy=True).written == 0


def test_iu_xray_bad_image_is_one_problem(tmp_path: Path) -> None:
    source = make_iu_tree(tmp_path / "iu", tarball=False)
    (source / "images" / "10_IM-0002-1001.dcm.png").write_text("<html>not found</html>")
    result = import_iu_xray(source, out=tmp_path / "cohort")
    assert any(p.startswith("CXR10:") and "PNG" in p for p in result.problems)
    assert (tmp_path / "cohort" / "CXR7" / "xray.png").exists()


def test_iu_xray_without_projection_table_takes_openi_order(tmp_path: Path) -> None:
    source = make_iu_tree(tmp_path / "iu", tarball=False)
    (source / "indiana_projections.csv").unlink()
    result = import_iu_xray(source, out=tmp_path / "cohort")
    assert os.readlink(tmp_path / "cohort" / "CXR7" / "xray.png").endswith("CXR7_IM-2263-2001.png")
    assert any("indiana_projections.csv" in note for note in result.notes)


def test_iu_xray_r2gen_image_folders(tmp_path: Path) -> None:
    source = tmp_path / "iu"
    (source / "ecgen-radiology").mkdir(parents=True)
    (source / "ecgen-radiology" / "1.xml").write_text(xml_report(1, "Clear.", "Normal.", ["CXR1_1_IM-0001-4001"]))
    write_png(source / "images" / "CXR1_1_IM-0001" / "0.png")
    write_png(source / "images" / "CXR1_1_IM-0001" / "1.png")
    import_iu_xray(source, out=tmp_path / "cohort")
    assert os.readlink(tmp_path / "cohort" / "CXR1" / "xray.png").endswith("CXR1_1_IM-0001/0.png")
    assert os.readlink(tmp_path / "cohort" / "CXR1" / "xray-lateral.png").endswith("CXR1_1_IM-0001/1.png")


def test_iu_xray_refuses_dtd(tmp_path: Path) -> None:
    source = tmp_path / "iu"
    (source / "ecgen-radiology").mkdir(parents=True)
    bomb = '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><eCitation>&b;</eCitation>'
    (source / "ecgen-radiology" / "5.xml").write_text(bomb)
    (source / "ecgen-radiology" / "6.xml").write_text(xml_report(6, "Clear.", "Normal.", []))
    result = import_iu_xray(source, out=tmp_path / "cohort")
    assert result.patients == 1 and "DTD" in result.problems[0]


# --- bad input, dispatch ---------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["iu-xray", "mimic-cxr", "synthrad", "ixi", "brats"])
def test_missing_source_is_input_error(tmp_path: Path, dataset: str) -> None:
    with pytest.raises(InputError, match="does not exist"):
        import_dataset(dataset, tmp_path / "nope", out=tmp_path / "cohort")


@pytest.mark.parametrize("dataset", ["iu-xray", "mimic-cxr", "synthrad", "ixi", "brats"])
def test_unrecognised_layout_is_input_error_naming_what_was_expected(tmp_path: Path, dataset: str) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match="no .* data recognised") as info:
        import_dataset(dataset, tmp_path / "src", out=tmp_path / "cohort")
    assert info.value.fix and "expected" in info.value.fix


def test_unknown_dataset_and_misplaced_option(tmp_path: Path) -> None:
    from medm2g_core.modalities import Modality

    with pytest.raises(ConfigError, match="valid: iu-xray"):
        import_dataset("chexpert", tmp_path, out=tmp_path / "cohort")
    with pytest.raises(ConfigError, match="synthrad only"):
        import_dataset("ixi", tmp_path, out=tmp_path / "cohort", mr_modality=Modality.MRI_T2)


# --- MIMIC-CXR-JPG ----------------------------------------------------------------------------------

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def write_jpg(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 100).save(path, format="JPEG")
    return path


def make_mimic_tree(root: Path, *, gz: bool = True) -> Path:
    import gzip

    study = root / "files" / "p10" / "p10000032" / "s50414267"
    write_jpg(study / "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg")  # PA
    write_jpg(study / "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962.jpg")  # LATERAL
    write_jpg(study / "0a0b1c2d-00000000-00000000-00000000-00000000.jpg")  # AP
    write_jpg(root / "files" / "p10" / "p10000032" / "s53189527" / "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab.jpg")  # AP only
    reports = root / "mimic-cxr-reports" / "files" / "p10" / "p10000032"
    reports.mkdir(parents=True)
    (reports / "s50414267.txt").write_text(MIMIC_REPORT)
    (reports / "s53189527.txt").write_text(" WET READ: ___ 3:55 PM\n  Nothing.\n")  # no FINDINGS/IMPRESSION
    (reports / "s56699142.txt").write_text(" IMPRESSION:\n No change.\n")  # report only
    tables = {
        "mimic-cxr-2.0.0-metadata.csv": "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns\n"
        "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544\n"
        "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544\n"
        "0a0b1c2d-00000000-00000000-00000000-00000000,10000032,50414267,CHEST (PA AND LAT),AP,3056,2544\n"
        "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,10000032,53189527,CHEST (PORTABLE AP),AP,2705,2539\n",
        "mimic-cxr-2.0.0-split.csv": "dicom_id,study_id,subject_id,split\n"
        "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,50414267,10000032,train\n"
        "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,53189527,10000032,validate\n"
        "99999999-b0ded155-c0de8eb9-c124d10e-82c5caab,56699142,10000032,test\n",
        "mimic-cxr-2.0.0-chexpert.csv": "subject_id,study_id," + ",".join(
            ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion",
             "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices"])
        + "\n10000032,50414267,,,,,,,,,1.0,,,,,\n10000032,53189527,,-1.0,0.0,,,,,,,1.0,,,,\n",
    }
    for name, text in tables.items():
        if gz:
            with gzip.open(root / f"{name}.gz", "wt") as handle:
                handle.write(text)
        else:
            (root / name).write_text(text)
    return root


@pytest.mark.parametrize("gz", [True, False], ids=["csv.gz", "csv"])
def test_mimic_cxr_fake_tree(tmp_path: Path, gz: bool) -> None:
    source = make_mimic_tree(tmp_path / "mimic", gz=gz)
    result = import_dataset("mimic-cxr", source, out=tmp_path / "cohort")
    study = tmp_path / "cohort" / "p10000032_s50414267"
    assert os.readlink(study / "xray.jpg").endswith("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg")  # PA over AP
    assert os.readlink(study / "xray-lateral.jpg").endswith("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962.jpg")
    assert os.readlink(study / "xray-view-2.jpg").endswith("0a0b1c2d-00000000-00000000-00000000-00000000.jpg")
    report = read_report(study / "report.txt")
    assert report.findings.startswith("There is no focal consolidation") and report.findings.endswith("nipple shadows.")
    assert report.impression == "No acute cardiopulmonary process."
    assert "INDICATION" not in report.text and "___" not in report.text
    assert json.loads((study / "labels.json").read_text()) == {"no_finding": 1}
    other = tmp_path / "cohort" / "p10000032_s53189527"
    assert os.readlink(other / "xray.jpg").endswith("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab.jpg")
    assert not (other / "report.txt").exists()
    assert json.loads((other / "labels.json").read_text()) == {"cardiomegaly": -1, "consolidation": 0, "pleural_effusion": 1}
    assert read_report(tmp_path / "cohort" / "p10000032_s56699142" / "report.txt").impression == "No change."
    assert result.patients == 3 and result.reports_only == 1 and result.problems == []
    assert json.loads((tmp_path / "cohort" / "splits.json").read_text()) == {
        "train": ["p10000032_s50414267"], "val": ["p10000032_s53189527"], "test": ["p10000032_s56699142"]}
    assert any("neither a FINDINGS nor an IMPRESSION" in note for note in result.notes)


def test_mimic_cxr_truncated_jpg_is_one_problem(tmp_path: Path) -> None:
    source = make_mimic_tree(tmp_path / "mimic")
    (source / "files" / "p10" / "p10000032" / "s53189527" / "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab.jpg").write_bytes(b"")
    result = import_dataset("mimic-cxr", source, out=tmp_path / "cohort")
    assert len(result.problems) == 1 and result.problems[0].startswith("p10000032_s53189527:")
    assert (tmp_path / "cohort" / "p10000032_s50414267" / "xray.jpg").exists()


# --- NIfTI datasets ---------------------------------------------------------------------------------


def write_nifti(path: Path, *, shape: tuple[int, int, int] = (2, 3, 4), zoom: float = 1.0) -> Path:
    import nibabel
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(np.zeros(shape, dtype=np.int16), np.diag([zoom, zoom, zoom, 1.0])), str(path))
    return path


def test_synthrad_fake_tree_defaults_and_override(tmp_path: Path) -> None:
    from medm2g_core.modalities import Modality

    source = tmp_path / "synthrad"
    for case in ("Task1/brain/1BA001", "Task1/brain/1BC002", "Task1/pelvis/1PA001", "Task2/brain/2BA001"):
        for name in ("cbct.nii.gz" if case.startswith("Task2") else "mr.nii.gz", "ct.nii.gz", "mask.nii.gz"):
            write_nifti(source / case / name)
    (source / "Task1" / "brain" / "overview").mkdir()
    result = import_dataset("synthrad", source, out=tmp_path / "cohort")
    cohort = tmp_path / "cohort"
    assert sorted(os.listdir(cohort / "1BA001")) == ["ct.nii.gz", "mask.nii.gz", "mri-t1.nii.gz"]
    assert sorted(os.listdir(cohort / "1PA001")) == ["ct.nii.gz", "mask.nii.gz", "mri-t2.nii.gz"]
    assert sorted(os.listdir(cohort / "2BA001")) == ["cbct.nii.gz", "ct.nii.gz", "mask.nii.gz"]
    assert os.readlink(cohort / "1PA001" / "mri-t2.nii.gz").endswith("Task1/pelvis/1PA001/mr.nii.gz")
    assert result.patients == 4 and result.files["mri-t1.nii.gz"] == 2 and result.problems == []
    assert not (cohort / "splits.json").exists()

    result = import_dataset("synthrad", source / "Task1" / "pelvis", out=tmp_path / "pelvis-t1", mr_modality=Modality.MRI_T1)
    assert sorted(os.listdir(tmp_path / "pelvis-t1" / "1PA001")) == ["ct.nii.gz", "mask.nii.gz", "mri-t1.nii.gz"]


def test_synthrad_broken_volume_is_one_problem_and_writes_nothing_for_it(tmp_path: Path) -> None:
    source = tmp_path / "Task1" / "brain"
    for case in ("1BA001", "1BA002"):
        for name in ("mr.nii.gz", "ct.nii.gz", "mask.nii.gz"):
            write_nifti(source / case / name)
    (source / "1BA002" / "ct.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    result = import_dataset("synthrad", tmp_path, out=tmp_path / "cohort")
    assert len(result.problems) == 1 and result.problems[0].startswith("1BA002:") and "NIfTI" in result.problems[0]
    assert not (tmp_path / "cohort" / "1BA002").exists()
    assert result.patients == 1


@pytest.mark.parametrize("layout", ["per-contrast", "flat"])
def test_ixi_fake_tree(tmp_path: Path, layout: str) -> None:
    source = tmp_path / "ixi"
    for subject in ("IXI002-Guys-0828", "IXI012-HH-1211"):
        for contrast in ("T1", "T2", "PD", "MRA"):
            folder = source / f"IXI-{contrast}" if layout == "per-contrast" else source
            write_nifti(folder / f"{subject}-{contrast}.nii.gz")
    result = import_dataset("ixi", source, out=tmp_path / "cohort")
    assert sorted(os.listdir(tmp_path / "cohort" / "IXI012-HH-1211")) == ["mri-pd.nii.gz", "mri-t1.nii.gz", "mri-t2.nii.gz"]
    assert result.patients == 2 and result.files == {"mri-pd.nii.gz": 2, "mri-t1.nii.gz": 2, "mri-t2.nii.gz": 2}
    assert any("not co-registered" in note for note in result.notes)


def test_ixi_real_shared_data(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "brain_mri_ixi002"
    if not source.is_dir():
        pytest.skip("no brain_mri_ixi002 in shared data")
    result = import_dataset("ixi", source, out=tmp_path / "cohort")
    patient = tmp_path / "cohort" / "IXI002-Guys-0828"
    assert sorted(os.listdir(patient)) == ["mask.nii.gz", "mri-t1.nii.gz", "mri-t2.nii.gz"]
    assert Path(os.readlink(patient / "mri-t1.nii.gz")) == (source / "hd_bet_IXI002-Guys-0828-T1.nii.gz").resolve()
    assert Path(os.readlink(patient / "mask.nii.gz")) == (source / "hd_bet_mask_IXI002-Guys-0828-T1.nii.gz").resolve()
    assert result.problems == [] and any("1 T1-grid brain masks kept" in note for note in result.notes)


@pytest.mark.parametrize("naming", ["2021", "2023"])
def test_brats_fake_tree(tmp_path: Path, naming: str) -> None:
    source = tmp_path / "brats"
    if naming == "2021":
        cases = {"BraTS2021_00000": ["t1", "t1ce", "t2", "flair", "seg"], "BraTS2021_00002": ["t1", "t1ce", "t2", "flair"]}
        name = "{case}/{case}_{sequence}.nii.gz"
    else:
        cases = {"BraTS-GLI-00000-000": ["t1n", "t1c", "t2w", "t2f", "seg"], "BraTS-GLI-00002-000": ["t1n", "t1c", "t2w", "t2f"]}
        name = "{case}/{case}-{sequence}.nii.gz"
    for case, sequences in cases.items():
        for sequence in sequences:
            write_nifti(source / name.format(case=case, sequence=sequence))
    result = import_dataset("brats", source, out=tmp_path / "cohort")
    first = sorted(cases)[0]
    assert sorted(os.listdir(tmp_path / "cohort" / first)) == ["mri-flair.nii.gz", "mri-t1.nii.gz", "mri-t1c.nii.gz", "mri-t2.nii.gz", "seg.nii.gz"]
    assert os.readlink(tmp_path / "cohort" / first / "mri-t2.nii.gz").endswith("t2.nii.gz" if naming == "2021" else "t2w.nii.gz")
    assert os.readlink(tmp_path / "cohort" / first / "mri-t1c.nii.gz").endswith("t1ce.nii.gz" if naming == "2021" else "t1c.nii.gz")
    assert result.patients == 2 and result.problems == []
    assert any("1 cases have no seg.nii.gz" in note for note in result.notes)
    splits = json.loads((tmp_path / "cohort" / "splits.json").read_text())
    assert sorted(sum(splits.values(), [])) == sorted(cases) and len(splits["test"]) == 1


def test_brats_subject_folders_with_short_names(tmp_path: Path) -> None:
    """The layout of ../shared/data/brain_mri_brats: CASE/{t1,t1c,t2,flair}.nii.gz."""
    source = tmp_path / "brats"
    for case in ("SubjectA", "SubjectB", "SubjectC"):
        for sequence in ("t1", "t1c", "t2", "flair"):
            write_nifti(source / case / f"{sequence}.nii.gz")
    write_nifti(source / "t1.nii.gz")  # a loose file at the top names no case: ignored
    result = import_dataset("brats", source, out=tmp_path / "cohort")
    assert result.patients == 3 and result.files == {f"mri-{c}.nii.gz": 3 for c in ("flair", "t1", "t1c", "t2")}
    assert result.splits == {"train": 2, "test": 1}


def test_splits_by_group_are_deterministic_and_keep_groups_whole() -> None:
    from medm2g_core.data.importers.base import assign_splits

    groups = {f"person{p}_{i}": f"person{p}" for p in range(40) for i in range(3)}
    splits = assign_splits(groups, seed=3)
    assert splits == assign_splits(dict(reversed(list(groups.items()))), seed=3)  # order does not matter
    assert splits != assign_splits(groups, seed=4)
    where = {pid: name for name, ids in splits.items() for pid in ids}
    for person in {g for g in groups.values()}:
        assert len({where[pid] for pid, g in groups.items() if g == person}) == 1
    assert [len(splits[n]) // 3 for n in ("train", "val", "test")] == [32, 4, 4]
    assert assign_splits({"a": "a"}) == {"train": ["a"]}
    assert assign_splits({"a": "a", "b": "b", "c": "c"}).keys() == {"train", "test"}


def test_kermany_fake_tree_label_text_and_children(tmp_path: Path) -> None:
    from medm2g_core.data.importers.kermany import REPORTS

    source = tmp_path / "chest_xray"
    names = {"train/NORMAL": ["IM-0115-0001.jpeg", "IM-0115-0002.jpeg", "NORMAL2-IM-0115-0001.jpeg"],
             "train/PNEUMONIA": ["person7_bacteria_1.jpeg", "person7_virus_2.jpeg", "person8_bacteria_3.jpeg"],
             "test/NORMAL": ["IM-0001-0001.jpeg"]}
    for folder, files in names.items():
        for name in files:
            path = source / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\xff\xd8\xff\xe0 not decoded by the importer")
    (source / "train" / "NORMAL" / "notes.jpeg").write_bytes(b"\xff\xd8\xff")  # not the dataset's naming: ignored
    result = import_dataset("kermany", source, out=tmp_path / "cohort")
    assert result.patients == 7 and result.problems == []
    report = read_report(tmp_path / "cohort" / "person7_virus_2" / "report.txt")
    assert report.label_derived and not report.synthetic and report.text == REPORTS["viral"]
    labels = json.loads((tmp_path / "cohort" / "person7_virus_2" / "labels.json").read_text())
    assert labels == {"pneumonia": 1, "bacterial": 0, "viral": 1, "no finding": 0}
    splits = json.loads((tmp_path / "cohort" / "splits.json").read_text())
    where = {pid: name for name, ids in splits.items() for pid in ids}
    assert where["person7_bacteria_1"] == where["person7_virus_2"]  # one child, one split
    assert where["IM-0115-0001"] == where["IM-0115-0002"]
    assert where["IM-0001-0001"] == "test"  # the dataset's own test folder stays test
    again = import_dataset("kermany", source, out=tmp_path / "cohort")
    assert again.written == 0  # idempotent


def test_aanlib_fake_tree_cases_units_and_refusals(tmp_path: Path) -> None:
    import numpy as np

    from medm2g_core import io
    from medm2g_core.modalities import CT_WINDOW_8BIT_UNITS
    from medm2g_core.types import ImageMeta

    source = tmp_path / "aanlib"
    meta = ImageMeta(spacing=(1.0, 1.0), shape=(8, 8))
    for name, value in (("16003", 10), ("16004", 20), ("2004", 30), ("21010", 40)):
        io.write(source / "ct" / f"{name}.png", np.full((8, 8), value, np.uint8), meta)
        io.write(source / "mri" / f"{name}.png", np.full((8, 8), value + 1, np.uint8), meta)
    io.write(source / "ct" / "16005.png", np.zeros((8, 8), np.uint8), meta)  # no MRI partner: skipped
    result = import_dataset("aanlib", source, out=tmp_path / "cohort")
    assert result.patients == 3 and result.problems == [] and any("1 CT slices have no MRI" in n for n in result.notes)
    ct, ct_meta = io.read(tmp_path / "cohort" / "case16" / "ct.nii.gz")
    assert ct.shape == (8, 8, 2) and ct.dtype == np.uint8 and list(ct[0, 0]) == [10, 20]
    assert ct_meta.units == CT_WINDOW_8BIT_UNITS and "HU" not in ct_meta.units.replace("not HU", "")
    mri, mri_meta = io.read(tmp_path / "cohort" / "case16" / "mri-t2.nii.gz")
    assert mri_meta.same_grid(ct_meta) and list(mri[0, 0]) == [11, 21]
    assert json.loads((tmp_path / "cohort" / "case16" / "slices.json").read_text()) == {"slices": ["16003.png", "16004.png"]}
    assert (tmp_path / "cohort" / "case20s").is_dir()  # four-digit names are their own case
    assert import_dataset("aanlib", source, out=tmp_path / "cohort").written == 0
    with pytest.raises(ConfigError, match="--copy does not apply to aanlib"):
        import_dataset("aanlib", source, out=tmp_path / "c2", copy=True)
    with pytest.raises(ConfigError, match="--register applies to ixi only"):
        import_dataset("brats", source, out=tmp_path / "c2", register=True)


# --- what `data index` makes of imported folders --------------------------------------------------


@pytest.fixture(scope="module")
def real_iu_cohort(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, ImportResult]:
    """The real IU X-ray reports and images in ../shared/data imported once (symlinks into it)."""
    source = shared_data / "iu_xray"
    if not source.is_dir():
        pytest.skip("no iu_xray in shared data")
    out = tmp_path_factory.mktemp("iu") / "cohort"
    return out, import_dataset("iu-xray", source, out=out)


def test_iu_xray_real_shared_data(real_iu_cohort: tuple[Path, ImportResult], shared_data: Path) -> None:
    cohort, result = real_iu_cohort
    source = shared_data / "iu_xray"
    # 3,364 studies; 28 have neither findings nor impression; 2 studies (7, 1900) have images.
    assert result.problems == []
    assert result.patients == 3336
    assert result.files["xray.png"] == 2 and result.files["xray-lateral.png"] == 2
    assert result.reports_only == 3334
    assert result.splits == {"train": 2069, "val": 296}
    for uid, image in ((7, "CXR7_IM-2263-1001.png"), (1900, "CXR1900_IM-0584-1001.png")):
        assert Path(os.readlink(cohort / f"CXR{uid}" / "xray.png")) == (source / "images" / image).resolve()
    report = read_report(cohort / "CXR7" / "report.txt")
    assert report.findings.startswith("The cardiac contours are normal.")
    assert report.impression == "Basilar atelectasis. No confluent lobar consolidation or pleural effusion."




def test_data_index_accepts_real_iu_xray_import(real_iu_cohort: tuple[Path, ImportResult]) -> None:
    from medm2g_core.data.manifest import scan_cohort
    from medm2g_core.modalities import Modality

    records = {record.patient_id: record for record in scan_cohort(real_iu_cohort[0])}
    assert len(records) == 3336
    reports_only = [r for r in records.values() if set(r.files) == {Modality.REPORT}]
    assert len(reports_only) == 3334 and all(not r.problems for r in reports_only)
    for patient in ("CXR7", "CXR1900"):
        assert set(records[patient].files) == {Modality.XRAY, Modality.REPORT}
        assert records[patient].shapes[Modality.XRAY] == (512, 512)
        assert set(records[patient].extras) == {"xray-lateral"}
        assert records[patient].problems == []


def test_data_index_accepts_lateral_views(real_iu_cohort: tuple[Path, ImportResult]) -> None:
    from medm2g_core.data.manifest import scan_cohort

    assert all(not record.problems for record in scan_cohort(real_iu_cohort[0]))
