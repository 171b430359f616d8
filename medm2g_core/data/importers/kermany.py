"""Kermany et al. paediatric chest X-rays (normal / bacterial / viral pneumonia) → one folder per image.

Layout as downloaded (Mendeley Data ``chest_xray/``, or its copy in ``../shared/data/cxr_pediatric_pneumonia``):
``train/NORMAL/IM-0115-0001.jpeg``, ``train/NORMAL/NORMAL2-IM-1427-0001.jpeg``,
``train/PNEUMONIA/person1000_bacteria_2931.jpeg``, ``.../person1000_virus_1681.jpeg``; ``test/`` and
``val/`` alike. SRC may be the top folder or one split folder.

Output ``<image stem>/`` (``person1000_bacteria_2931/``): ``xray.jpeg`` (linked), ``labels.json``
(``{"pneumonia": 0|1, "bacterial": 0|1, "viral": 0|1, "no finding": 0|1}``) and ``report.txt`` — the
dataset has **no reports**: the text is made from the label (``"IMPRESSION: Bacterial pneumonia."``)
and starts with the ``LABEL-DERIVED`` header line (``io.text``), so it is never taken for a
radiologist's report. ``DIR/splits.json`` splits **by child** (several images per child:
``person1000_*`` are one child, ``IM-0115-*`` one child, ``NORMAL2-IM-1427-*`` another), with the
dataset's own ``test`` folder kept as test when it is imported too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from medm2g_core.data.importers.base import (
    ImportResult,
    assign_splits,
    iter_files,
    nothing_recognised,
    require_source,
    run_import,
)
from medm2g_core.types import ProgressFn, no_progress

DATASET = "kermany"
EXPECTED = "NORMAL/*.jpeg and PNEUMONIA/person*_{bacteria,virus}_*.jpeg (e.g. train/NORMAL/IM-0115-0001.jpeg)"
_PNEUMONIA = re.compile(r"^(?P<person>person\d+)_(?P<kind>bacteria|virus)_\d+(?:_\d+)?\.jpe?g$", re.IGNORECASE)
_NORMAL = re.compile(r"^(?P<person>(?:NORMAL\d*-)?IM-\d+)-\d+(?:-\d+)?\.jpe?g$", re.IGNORECASE)
REPORTS = {
    "normal": "FINDINGS: No consolidation. Normal chest.\n\nIMPRESSION: Normal chest. No pneumonia.",
    "bacterial": "FINDINGS: Consolidation consistent with bacterial pneumonia.\n\nIMPRESSION: Bacterial pneumonia.",
    "viral": "FINDINGS: Opacities consistent with viral pneumonia.\n\nIMPRESSION: Viral pneumonia.",
}
"""The label-derived text of each class (what ``report.txt`` holds; nothing in it is observed). FINDINGS names the
class too, since report metrics score the FINDINGS section (R2Gen convention)."""
CLASSES = tuple(REPORTS)


@dataclass(frozen=True)
class _Image:
    patient_id: str
    person: str
    label: str  # one of CLASSES
    split: str | None  # the dataset's folder (train/val/test) when SRC holds it
    path: Path


def class_of_labels(labels: dict[str, int]) -> str:
    """The class a ``labels.json`` (``labels_of``) says: ``"normal"``, ``"bacterial"`` or ``"viral"``."""
    return "normal" if labels.get("no finding") else "bacterial" if labels.get("bacterial") else "viral"


def labels_of(label: str) -> dict[str, int]:
    """``labels.json`` of one class: pneumonia, bacterial, viral, no finding as 0/1."""
    return {"pneumonia": int(label != "normal"), "bacterial": int(label == "bacterial"),
            "viral": int(label == "viral"), "no finding": int(label == "normal")}


def import_kermany(
    source: str | Path,
    *,
    out: str | Path,
    copy: bool = False,
    seed: int = 0,
    limit: int | None = None,
    progress: ProgressFn = no_progress,
) -> ImportResult:
    """Import the paediatric X-rays in ``source`` with label-derived reports; split by child.

    ``limit``: import at most this many children per class (the first by name; for tests and quick
    looks). Raises ``InputError`` when ``source`` is missing or holds no image of the dataset's naming.
    """
    source = require_source(source, dataset=DATASET, expected=EXPECTED)
    result = ImportResult(dataset=DATASET, source=source, out=Path(out))
    images: list[_Image] = []
    for path in iter_files(source, suffixes=(".jpeg", ".jpg")):
        folder = path.parent.name.upper()
        parts = [p.lower() for p in path.relative_to(source).parts[:-1]]
        split = next((p for p in parts if p in ("train", "val", "test")), None)
        if folder == "PNEUMONIA" and (match := _PNEUMONIA.match(path.name)):
            label = "bacterial" if match.group("kind").lower() == "bacteria" else "viral"
        elif folder == "NORMAL" and (match := _NORMAL.match(path.name)):
            label = "normal"
        else:
            continue
        images.append(_Image(patient_id=path.name.rsplit(".", 1)[0], person=match.group("person"), label=label, split=split, path=path))
    if not images:
        raise nothing_recognised(source, dataset=DATASET, expected=EXPECTED)
    if limit is not None:
        kept: dict[str, list[str]] = {}
        for image in sorted(images, key=lambda i: (i.label, i.person)):
            people = kept.setdefault(image.label, [])
            if image.person not in people and len(people) < limit:
                people.append(image.person)
        images = [i for i in images if i.person in kept.get(i.label, [])]

    def write_image(writer, image: _Image) -> None:
        writer.place(image.path, image.patient_id, "xray" + image.path.suffix.lower())
        writer.labels(image.patient_id, labels_of(image.label))
        writer.report(image.patient_id, REPORTS[image.label], label_derived=True)

    writer = run_import(images, write_image, study_id=lambda i: i.patient_id, result=result, copy=copy, progress=progress)
    imported = [i for i in images if i.patient_id in writer.patients]
    # The dataset's own test folder stays test; everything else is split by child.
    official_test = sorted(i.patient_id for i in imported if i.split == "test")
    splits = assign_splits({i.patient_id: i.person for i in imported if i.split != "test"}, seed=seed)
    if official_test:
        splits["test"] = sorted(set(splits.get("test", [])) | set(official_test))
    writer.splits(splits)
    people = len({i.person for i in imported})
    counts = {label: sum(1 for i in imported if i.label == label) for label in CLASSES}
    result.notes.append(f"{len(imported)} images of {people} children ({', '.join(f'{v} {k}' for k, v in counts.items())}); "
                        "split by child, never by image")
    result.notes.append("report.txt is label-derived text (marked LABEL-DERIVED): the dataset has no reports")
    return result


LABELS = ("pneumonia", "bacterial", "viral", "no finding")
"""What ``KermanyLabeler`` reads from a text: the classes of ``labels.json``."""
_TEXT_BACTERIAL = re.compile(r"\bbacteri", re.IGNORECASE)
_TEXT_VIRAL = re.compile(r"\bvir(?:al|us)\b", re.IGNORECASE)
_TEXT_PNEUMONIA = re.compile(r"\bpneumonia\b", re.IGNORECASE)
_TEXT_NO_PNEUMONIA = re.compile(r"\bno\s+pneumonia\b", re.IGNORECASE)
_TEXT_NORMAL = re.compile(r"\bnormal\b", re.IGNORECASE)


def class_of_text(text: str) -> str | None:
    """The class a (generated or label-derived) text names: ``"bacterial"``, ``"viral"``, ``"normal"`` or None
    when it names none or contradicts itself (both kinds of pneumonia, or pneumonia and a normal chest)."""
    bacterial, viral = bool(_TEXT_BACTERIAL.search(text)), bool(_TEXT_VIRAL.search(text))
    pneumonia = bool(_TEXT_PNEUMONIA.search(_TEXT_NO_PNEUMONIA.sub("", text)))
    normal = bool(_TEXT_NORMAL.search(text)) or bool(_TEXT_NO_PNEUMONIA.search(text))
    if bacterial and not viral and not normal:
        return "bacterial"
    if viral and not bacterial and not normal:
        return "viral"
    if normal and not (bacterial or viral or pneumonia):
        return "normal"
    return None


class KermanyLabeler:
    """A ``data.labeler.Labeler`` for the Kermany classes (CE-style F1 of generated label text against the labels).

    Each text gets ``LABELS`` as 1/0 from ``class_of_text``: bacterial or viral → that label and pneumonia; normal →
    no finding; a text naming no class (or a contradictory one) → pneumonia 1 if it says pneumonia, else all 0.
    The reference texts are the importer's ``REPORTS``, so they label exactly as ``labels.json`` says."""

    name = "kermany-label-text"
    labels = LABELS

    def __call__(self, texts: Sequence[str]) -> list[dict[str, int | None]]:
        out = []
        for text in texts:
            found = class_of_text(text)
            if found is None:
                pneumonia = int(bool(_TEXT_PNEUMONIA.search(_TEXT_NO_PNEUMONIA.sub("", text))))
                out.append({"pneumonia": pneumonia, "bacterial": 0, "viral": 0, "no finding": 0})
            else:
                out.append(labels_of(found))
        return out
