"""Dataset importers: tiny fake trees with each dataset's real layout and file names, plus the real
IU X-ray reports and IXI002 MRI in ../shared/data when present (read in place, never copied)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from medm2g_core.data.importers import import_dataset
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


def test_iu_xray_real_shared_data(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "iu_xray"
    if not source.is_dir():
        pytest.skip("no iu_xray in shared data")
    result = import_dataset("iu-xray", source, out=tmp_path / "cohort")
    cohort = tmp_path / "cohort"
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


# --- bad input, dispatch ---------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["iu-xray"])
def test_missing_source_is_input_error(tmp_path: Path, dataset: str) -> None:
    with pytest.raises(InputError, match="does not exist"):
        import_dataset(dataset, tmp_path / "nope", out=tmp_path / "cohort")


@pytest.mark.parametrize("dataset", ["iu-xray"])
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
