"""IU X-ray (Indiana University Chest X-ray Collection, Open-i) → one patient folder per study.

Recognised in SRC (any combination; at least one source of report text is needed):

- Open-i XML reports ``ecgen-radiology/<uid>.xml``, as a folder or inside a tarball whose name
  contains "report" (``NLMCXR_reports.tgz``). The tarball is read in place with ``tarfile``: only
  regular members named ``ecgen-radiology/<digits>.xml`` are read, into memory, size-capped; nothing
  is extracted to disk, so member paths cannot escape anywhere.
- The Kaggle tables ``indiana_reports.csv`` (report text for studies missing from the XML) and
  ``indiana_projections.csv`` (which image is Frontal / Lateral).
- R2Gen's ``annotation.json`` (any ``*annotation*.json``): the train/val/test split of study ids such as
  ``CXR2384_IM-0942`` → ``DIR/splits.json``.
- Images, anywhere under SRC: Open-i names ``CXR<uid>_IM-....png`` (also ``CXR<uid>_<n>_IM-....png``),
  Kaggle names ``<uid>_IM-....dcm.png``, or R2Gen folders ``images/CXR<uid>_IM-..../{0,1}.png``.

Output per study ``CXR<uid>/``: ``report.txt`` = ``FINDINGS: ...`` / ``IMPRESSION: ...`` from the XML
``AbstractText[@Label]``; the first frontal image as ``xray.png`` and the first lateral as
``xray-lateral.png`` (further views ``xray-frontal-2.png``, ``xray-lateral-2.png``...). Studies
without images on disk are imported as reports only and counted in ``ImportResult.reports_only``.
Author names in the XML are never read.
"""

from __future__ import annotations

import json
import re
import tarfile
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

from medm2g_core.data.importers.base import (
    CohortWriter,
    ImportResult,
    StudyError,
    find_first,
    iter_files,
    nothing_recognised,
    open_table,
    require_source,
    run_import,
)
from medm2g_core.io.text import Report
from medm2g_core.types import ProgressFn, no_progress

DATASET = "iu-xray"
EXPECTED = (
    "Open-i reports (ecgen-radiology/*.xml or NLMCXR_reports.tgz) and/or indiana_reports.csv, "
    "optionally indiana_projections.csv, R2Gen annotation.json and images/*.png"
)
MAX_XML_BYTES = 1 << 20  # an Open-i report is a few kB; anything larger is not one

_XML_MEMBER = re.compile(r"(?:^|/)ecgen-radiology/(\d+)\.xml$")
# CXR7_IM-2263-1001, CXR1_1_IM-0001-3001 (Open-i), 7_IM-2263-1001 (Kaggle, after dropping .dcm)
_IMAGE_ID = re.compile(r"^(?:CXR)?(\d+)(?:_\d+)?_(IM-\d+-\d+)$")
# R2Gen study ids: CXR2384_IM-0942, CXR1_1_IM-0001, sometimes with the image number (CXR2372_IM-0933-0001)
_R2GEN_STUDY = re.compile(r"^CXR(\d+)(?:_\d+)?_IM-\d+(?:-\d+)?$")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class IUStudy:
    """One IU X-ray study: its uid, report sections, and image keys in the XML's order."""

    uid: str
    findings: str = ""
    impression: str = ""
    image_keys: list[str] = field(default_factory=list)  # "IM-2263-1001"
    problem: str | None = None  # set when its XML could not be read

    @property
    def patient_id(self) -> str:
        return f"CXR{self.uid}"

    @property
    def report(self) -> Report | None:
        """The canonical ``FINDINGS: ... / IMPRESSION: ...`` report; None when both are empty."""
        if not self.findings and not self.impression:
            return None
        return Report.from_sections(findings=self.findings, impression=self.impression)


@dataclass
class IUImage:
    path: Path
    key: str  # "IM-2263-1001", or "r2gen-0" for R2Gen's numbered files
    projection: str | None = None  # "frontal" | "lateral" | None (unknown)


def import_iu_xray(
    source: str | Path,
    *,
    out: str | Path,
    copy: bool = False,
    progress: ProgressFn = no_progress,
) -> ImportResult:
    """Import IU X-ray from ``source`` (the folder as downloaded) into patient folders under ``out``.

    Returns an ``ImportResult``; ``reports_only`` counts studies whose images are not on disk.
    Raises ``InputError`` when ``source`` is missing or holds no IU X-ray report text.
    """
    source = require_source(source, dataset=DATASET, expected=EXPECTED)
    result = ImportResult(dataset=DATASET, source=source, out=Path(out))
    studies = _read_reports(source, result)
    if not studies:
        raise nothing_recognised(source, dataset=DATASET, expected=EXPECTED)
    images = _find_images(source, result)
    ordered = [studies[uid] for uid in sorted(studies, key=int)]

    def write(writer: CohortWriter, study: IUStudy) -> None:
        if study.problem:
            raise StudyError(study.problem)
        _write_study(writer, study, images.get(study.uid, []))

    writer = run_import(ordered, write, study_id=lambda s: s.patient_id, result=result, copy=copy, progress=progress)
    _write_splits(source, writer, result)
    no_text = sum(1 for s in ordered if not s.problem and s.report is None)
    if no_text:
        result.notes.append(f"{no_text} studies have neither FINDINGS nor IMPRESSION text: no report.txt written for them")
    return result


def _write_study(writer: CohortWriter, study: IUStudy, images: list[IUImage]) -> None:
    report = study.report
    if report is None and not images:
        return  # nothing to import for this study (counted in the notes)
    for image, name in _name_views(study, images):
        writer.place(image.path, study.patient_id, name)
    if report is not None:
        writer.report(study.patient_id, report)


def _name_views(study: IUStudy, images: list[IUImage]) -> list[tuple[IUImage, str]]:
    """Frontal → ``xray``, lateral → ``xray-lateral``, extras numbered; unknown views by XML order."""
    xml_order = {key: index for index, key in enumerate(study.image_keys)}
    images = sorted(images, key=lambda im: (xml_order.get(im.key, len(xml_order)), im.key))
    frontal = [im for im in images if im.projection == "frontal"]
    lateral = [im for im in images if im.projection == "lateral"]
    unknown = [im for im in images if im.projection is None]
    if not frontal and unknown:  # no projection table: the first view (Open-i order) is taken as frontal
        frontal.append(unknown.pop(0))
    named: list[tuple[IUImage, str]] = []
    for view, group in (("frontal", frontal), ("lateral", lateral), ("view", unknown)):
        for index, image in enumerate(group, start=1):
            suffix = ".jpg" if image.path.suffix.lower() in (".jpg", ".jpeg") else ".png"
            if view == "frontal" and index == 1:
                stem = "xray"
            elif view == "lateral" and index == 1:
                stem = "xray-lateral"
            else:
                stem = f"xray-{view}-{index}"
            named.append((image, stem + suffix))
    return named


# --- reports -------------------------------------------------------------------------------------


def _read_reports(source: Path, result: ImportResult) -> dict[str, IUStudy]:
    studies: dict[str, IUStudy] = {}
    for folder in _xml_folders(source):
        for path in sorted(folder.glob("*.xml")):
            match = re.fullmatch(r"(\d+)\.xml", path.name)
            if not match or match.group(1) in studies:
                continue
            uid = match.group(1)
            if path.stat().st_size > MAX_XML_BYTES:
                studies[uid] = IUStudy(uid=uid, problem=f"{path}: {path.stat().st_size} bytes, too large for a report")
                continue
            studies[uid] = _study_from_xml(uid, path.read_bytes(), where=str(path))
    for tarball in _report_tarballs(source):
        _read_tarball(tarball, studies, result)
    table = find_first(source, ["indiana_reports.csv"], depth=1)
    if table is not None:
        added = 0
        for row in open_table(table):
            uid = (row.get("uid") or "").strip()
            if uid.isdigit() and uid not in studies:
                studies[uid] = IUStudy(uid=uid, findings=_clean(row.get("findings")), impression=_clean(row.get("impression")))
                added += 1
        if studies and added and added < len(studies):
            result.notes.append(f"{added} studies taken from indiana_reports.csv (not in the XML reports)")
    return studies


def _xml_folders(source: Path) -> list[Path]:
    candidates = [source / "ecgen-radiology", *sorted(source.glob("*/ecgen-radiology"))]
    return [c for c in candidates if c.is_dir()]


def _report_tarballs(source: Path) -> list[Path]:
    found = []
    for path in sorted(source.iterdir()):
        name = path.name.lower()
        if path.is_file() and "report" in name and name.endswith((".tgz", ".tar.gz", ".tar")):
            found.append(path)
    return found


def _read_tarball(tarball: Path, studies: dict[str, IUStudy], result: ImportResult) -> None:
    """Read ``ecgen-radiology/<uid>.xml`` members into memory; nothing is written to disk."""
    try:
        with tarfile.open(tarball, mode="r:*") as archive:
            for member in archive:
                match = _XML_MEMBER.search(member.name)
                if not match or not member.isfile() or match.group(1) in studies:
                    continue
                uid = match.group(1)
                where = f"{tarball.name}:{member.name}"
                if member.size > MAX_XML_BYTES:
                    studies[uid] = IUStudy(uid=uid, problem=f"{where}: {member.size} bytes, too large for a report")
                    continue
                handle = archive.extractfile(member)
                data = handle.read(MAX_XML_BYTES + 1) if handle is not None else b""
                studies[uid] = _study_from_xml(uid, data, where=where)
    except (tarfile.TarError, OSError, EOFError) as error:
        # A damaged tail still leaves the members read so far; say so, keep them.
        result.problems.append(f"{tarball.name}: damaged archive ({error}); {len(studies)} reports read before the damage")


def _study_from_xml(uid: str, data: bytes, *, where: str) -> IUStudy:
    # Reports never declare a DTD; refusing one rules out entity-expansion tricks.
    head = data[:4096].lower()
    if b"<!doctype" in head or b"<!entity" in data.lower():
        return IUStudy(uid=uid, problem=f"{where}: declares a DTD/entities, refused")
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as error:
        return IUStudy(uid=uid, problem=f"{where}: not well-formed XML ({error})")
    sections: dict[str, str] = {}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").upper()
        sections[label] = _clean("".join(node.itertext()))
    keys = []
    for node in root.iter("parentImage"):
        match = _IMAGE_ID.match(node.get("id") or "")
        if match:
            keys.append(match.group(2))
    return IUStudy(uid=uid, findings=sections.get("FINDINGS", ""), impression=sections.get("IMPRESSION", ""), image_keys=keys)


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


# --- images ----------------------------------------------------------------------------------------


def _find_images(source: Path, result: ImportResult) -> dict[str, list[IUImage]]:
    projections = _read_projections(source)
    images: dict[str, list[IUImage]] = {}
    seen: set[tuple[str, str]] = set()
    for path in iter_files(source, suffixes=_IMAGE_SUFFIXES):
        stem = path.name[: -len(path.suffix)]
        if stem.lower().endswith(".dcm"):
            stem = stem[:-4]
        match = _IMAGE_ID.match(stem)
        if match:
            uid, key = match.group(1), match.group(2)
            projection = projections.get((uid, key))
        else:
            parent = _R2GEN_STUDY.match(path.parent.name)
            if not parent or not stem.isdigit():
                continue
            # R2Gen stores the two views as 0.png / 1.png in Open-i order (frontal first).
            uid, key = parent.group(1), f"r2gen-{int(stem)}"
            projection = {"r2gen-0": "frontal", "r2gen-1": "lateral"}.get(key)
        if (uid, key) in seen:  # the same image under two names (Open-i and Kaggle copies)
            continue
        seen.add((uid, key))
        images.setdefault(uid, []).append(IUImage(path=path, key=key, projection=projection))
    if images and not projections and any(not k.startswith("r2gen") for ims in images.values() for k in (i.key for i in ims)):
        result.notes.append("indiana_projections.csv not found: the first image of each study (Open-i order) was taken as frontal")
    return images


def _read_projections(source: Path) -> dict[tuple[str, str], str]:
    table = find_first(source, ["indiana_projections.csv"], depth=1)
    if table is None:
        return {}
    projections = {}
    for row in open_table(table):
        stem = (row.get("filename") or "").strip()
        for suffix in (".png", ".jpg", ".dcm"):
            stem = stem[: -len(suffix)] if stem.lower().endswith(suffix) else stem
        match = _IMAGE_ID.match(stem)
        view = (row.get("projection") or "").strip().lower()
        if match and view in ("frontal", "lateral"):
            projections[(match.group(1), match.group(2))] = view
    return projections


# --- splits ----------------------------------------------------------------------------------------


def _write_splits(source: Path, writer: CohortWriter, result: ImportResult) -> None:
    candidates = sorted(p for p in source.glob("*annotation*.json") if p.is_file())
    if not candidates:
        return
    path = candidates[0]
    try:
        annotation = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        result.problems.append(f"{path.name}: not readable JSON ({error}); no splits.json written")
        return
    if not isinstance(annotation, dict):
        result.problems.append(f"{path.name}: expected R2Gen's {{'train': [...], 'val': [...], 'test': [...]}}")
        return
    imported = set(writer.patients) & {p.name for p in writer.out.iterdir() if p.is_dir()}
    splits: dict[str, list[str]] = {}
    ignored_keys = []
    for name, items in annotation.items():
        if name not in ("train", "val", "test") or not isinstance(items, list):
            ignored_keys.append(repr(name))
            continue
        for item in items:
            match = _R2GEN_STUDY.match(str(item.get("id", ""))) if isinstance(item, dict) else None
            if match and f"CXR{match.group(1)}" in imported:
                splits.setdefault(name, []).append(f"CXR{match.group(1)}")
    if ignored_keys:
        result.notes.append(f"{path.name}: ignored keys {', '.join(ignored_keys)} (not train/val/test)")
    if not splits:
        return
    writer.splits(splits)
    outside = len(imported) - sum(len(v) for v in splits.values())
    if outside > 0:
        result.notes.append(
            f"{outside} imported studies are in no {path.name} split "
            "(R2Gen leaves out studies without findings; its test split may be absent from this copy)"
        )
