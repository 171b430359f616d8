"""MIMIC-CXR-JPG (with the MIMIC-CXR reports) → one patient folder per study.

Layout as downloaded (PhysioNet):
- images ``files/p10/p10000032/s50414267/<dicom_id>.jpg``;
- ``mimic-cxr-2.0.0-metadata.csv(.gz)`` (``dicom_id, subject_id, study_id, ViewPosition``...);
- ``mimic-cxr-2.0.0-split.csv(.gz)`` (``dicom_id, study_id, subject_id, split``: train/validate/test);
- ``mimic-cxr-2.0.0-chexpert.csv(.gz)`` (``subject_id, study_id`` + 14 CheXpert labels: 1.0 positive,
  0.0 negative, -1.0 uncertain, blank = not mentioned);
- reports ``mimic-cxr-reports/files/p10/p10000032/s50414267.txt`` (also accepted next to the image
  folders, ``files/p10/p10000032/s50414267.txt``, as in MIMIC-CXR's DICOM release).

Output ``p10000032_s50414267/``: ``xray.jpg`` (PA preferred, then AP; symlink, never re-encoded),
``xray-lateral.jpg`` (LATERAL/LL), further views ``xray-view-<n>.jpg``; ``report.txt`` =
``FINDINGS:`` / ``IMPRESSION:`` sections taken from the free-text report; ``labels.json`` =
CheXpert labels in snake case (1 present, 0 absent, -1 uncertain; blank labels left out);
``DIR/splits.json`` from the official split ("validate" → "val").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from medm2g_core.data.importers.base import (
    CohortWriter,
    ImportResult,
    StudyError,
    check_file,
    find_first,
    iter_files,
    nothing_recognised,
    open_table,
    require_source,
    run_import,
)
from medm2g_core.io.text import Report
from medm2g_core.types import ProgressFn, no_progress

DATASET = "mimic-cxr"
EXPECTED = (
    "files/p10/p10000032/s50414267/<dicom_id>.jpg and/or mimic-cxr-reports/files/p10/p10000032/s50414267.txt, "
    "with mimic-cxr-2.0.0-{metadata,split,chexpert}.csv(.gz)"
)
MAX_REPORT_BYTES = 1 << 20
CHEXPERT_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
_FRONTAL = ("PA", "AP")
_LATERAL = ("LATERAL", "LL", "RL")
_SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}
_STUDY_DIR = re.compile(r"^s\d+$")
_PATIENT_DIR = re.compile(r"^p\d+$")
# A section heading at the start of a line: "FINDINGS:", "IMPRESSION:", "WET READ:"...
_HEADING = re.compile(r"^[ \t]*([A-Z][A-Z /&-]{2,40}):", re.MULTILINE)


@dataclass
class MimicStudy:
    subject: str  # "p10000032"
    study: str  # "s50414267"
    images: list[Path] = field(default_factory=list)
    report: Path | None = None

    @property
    def patient_id(self) -> str:
        return f"{self.subject}_{self.study}"


def import_mimic_cxr(
    source: str | Path,
    *,
    out: str | Path,
    copy: bool = False,
    progress: ProgressFn = no_progress,
) -> ImportResult:
    """Import MIMIC-CXR-JPG studies from ``source`` into patient folders under ``out``.

    Raises ``InputError`` when ``source`` is missing or holds neither images nor reports.
    """
    source = require_source(source, dataset=DATASET, expected=EXPECTED)
    result = ImportResult(dataset=DATASET, source=source, out=Path(out))
    studies = _find_studies(source)
    if not studies:
        raise nothing_recognised(source, dataset=DATASET, expected=EXPECTED)
    views = _read_views(source, result)
    labels = _read_labels(source, result)
    ordered = [studies[key] for key in sorted(studies)]
    without_sections: list[str] = []

    def write(writer: CohortWriter, study: MimicStudy) -> None:
        if not _write_study(writer, study, views, labels.get(study.study[1:])):
            without_sections.append(study.patient_id)

    writer = run_import(ordered, write, study_id=lambda s: s.patient_id, result=result, copy=copy, progress=progress)
    _write_splits(source, writer, result)
    if without_sections:
        result.notes.append(
            f"{len(without_sections)} reports have neither a FINDINGS nor an IMPRESSION section: no report.txt "
            "for them (studies without images were then skipped)"
        )
    return result


def _find_studies(source: Path) -> dict[tuple[str, str], MimicStudy]:
    studies: dict[tuple[str, str], MimicStudy] = {}
    for root in (source / "files", source / "mimic-cxr-jpg" / "files"):
        if root.is_dir():
            for path in iter_files(root, suffixes=(".jpg", ".txt")):
                if path.suffix.lower() == ".jpg" and _STUDY_DIR.match(path.parent.name) and _PATIENT_DIR.match(path.parent.parent.name):
                    key = (path.parent.parent.name, path.parent.name)
                    studies.setdefault(key, MimicStudy(*key)).images.append(path)
                elif path.suffix == ".txt":
                    _add_report(studies, path)
    for root in (source / "mimic-cxr-reports" / "files", source / "files" / "mimic-cxr-reports" / "files"):
        if root.is_dir():
            for path in iter_files(root, suffixes=(".txt",)):
                _add_report(studies, path)
    return studies


def _add_report(studies: dict[tuple[str, str], MimicStudy], path: Path) -> None:
    stem = path.name[: -len(".txt")]
    if _STUDY_DIR.match(stem) and _PATIENT_DIR.match(path.parent.name):
        study = studies.setdefault((path.parent.name, stem), MimicStudy(path.parent.name, stem))
        study.report = study.report or path


def _read_views(source: Path, result: ImportResult) -> dict[str, str]:
    table = find_first(source, ["mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"], depth=1)
    if table is None:
        result.notes.append("mimic-cxr-2.0.0-metadata.csv not found: view positions unknown, the first image of each study was taken as xray.jpg")
        return {}
    return {row["dicom_id"]: (row.get("ViewPosition") or "").strip().upper() for row in open_table(table) if row.get("dicom_id")}


def _read_labels(source: Path, result: ImportResult) -> dict[str, dict[str, int]]:
    table = find_first(source, ["mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-chexpert.csv"], depth=1)
    if table is None:
        return {}
    labels: dict[str, dict[str, int]] = {}
    for row in open_table(table):
        study = (row.get("study_id") or "").strip()
        values = {}
        for name in CHEXPERT_LABELS:
            raw = (row.get(name) or "").strip()
            if raw:
                try:
                    values[name.lower().replace(" ", "_")] = int(float(raw))
                except ValueError:
                    continue
        if study:
            labels[study] = values
    return labels


def _write_study(writer: CohortWriter, study: MimicStudy, views: dict[str, str], labels: dict[str, int] | None) -> bool:
    """Write one study; False when its report has no FINDINGS/IMPRESSION section."""
    report = _read_report(study.report) if study.report else None
    if not study.images and report is None:
        return False  # a report without the two sections and no image: nothing to import
    for image in study.images:
        check_file(image)
    for image, name in _name_views(study.images, views):
        writer.place(image, study.patient_id, name, check=False)
    if report is not None:
        writer.report(study.patient_id, report)
    if labels:
        writer.labels(study.patient_id, labels)
    return study.report is None or report is not None


def _name_views(images: list[Path], views: dict[str, str]) -> list[tuple[Path, str]]:
    def rank(path: Path) -> tuple[int, str]:
        view = views.get(path.stem, "")
        order = (*_FRONTAL, *_LATERAL)
        return (order.index(view) if view in order else len(order), path.name)

    ordered = sorted(images, key=rank)
    named = []
    extra = 1
    have_frontal = have_lateral = False
    for path in ordered:
        view = views.get(path.stem, "")
        if not have_frontal and (view in _FRONTAL or not views):
            named.append((path, "xray.jpg"))
            have_frontal = True
        elif not have_lateral and view in _LATERAL:
            named.append((path, "xray-lateral.jpg"))
            have_lateral = True
        else:
            extra += 1
            named.append((path, f"xray-view-{extra}.jpg"))
    return named


def _read_report(path: Path) -> Report | None:
    """FINDINGS and IMPRESSION sections of a free-text MIMIC report; None when it has neither."""
    if path.stat().st_size > MAX_REPORT_BYTES:
        raise StudyError(f"{path}: too large for a report")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise StudyError(f"{path}: not UTF-8 text ({error.reason})") from None
    sections = extract_sections(text)
    if not sections.get("FINDINGS") and not sections.get("IMPRESSION"):
        return None
    return Report.from_sections(findings=sections.get("FINDINGS", ""), impression=sections.get("IMPRESSION", ""))


def extract_sections(text: str) -> dict[str, str]:
    """Upper-case heading → whitespace-normalised text, for every ``HEADING:`` at a line start."""
    matches = list(_HEADING.finditer(text))
    sections: dict[str, str] = {}
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        name = " ".join(match.group(1).split())
        body = " ".join(text[match.end() : end].split())
        sections[name] = f"{sections[name]} {body}".strip() if name in sections else body
    return sections


def _write_splits(source: Path, writer: CohortWriter, result: ImportResult) -> None:
    table = find_first(source, ["mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv"], depth=1)
    if table is None:
        return
    imported = set(writer.patients)
    splits: dict[str, set[str]] = {}
    for row in open_table(table):
        patient = f"p{(row.get('subject_id') or '').strip()}_s{(row.get('study_id') or '').strip()}"
        split = _SPLITS.get((row.get("split") or "").strip().lower())
        if split and patient in imported:
            splits.setdefault(split, set()).add(patient)
    if splits:
        writer.splits({name: sorted(ids) for name, ids in splits.items()})
