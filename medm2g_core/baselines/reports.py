"""Report-generation baselines: nearest-neighbour retrieval through the aligned space, and the most
frequent training report.

- **Retrieval**: the query image's aligned embedding (``AlignModel.encode_image``, L2-normalised) is
  compared by cosine similarity with the aligned embeddings of every training report
  (``AlignModel.encode_text``); the most similar training report is the prediction (the first one
  on ties). Report embeddings are computed when predicting, from the texts stored in the bundle, so
  they always come from the bundle's current align stage.
- **Most frequent**: the mode of the training reports after whitespace normalisation (runs of
  spaces/newlines → one space); ties go to the lexicographically first text, so it is deterministic.

Stored as one JSON file ``baselines/report/reports.json`` (``ReportBaselines``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from medm2g_core.errors import BundleError


def normalise_whitespace(text: str) -> str:
    """``"FINDINGS:  a\\n b"`` → ``"FINDINGS: a b"``."""
    return " ".join(str(text).split())


def most_frequent_report(texts: Sequence[str]) -> tuple[str, int]:
    """The mode of ``texts`` after whitespace normalisation, and how often it occurs.

    Raises:
        ValueError: no texts.
    """
    counts = Counter(normalise_whitespace(t) for t in texts if normalise_whitespace(t))
    if not counts:
        raise ValueError("no non-empty reports to take the most frequent of")
    text, count = min(counts.items(), key=lambda item: (-item[1], item[0]))
    return text, count


@dataclass
class ReportBaselines:
    """The training reports (for retrieval) and their mode.

    Attributes:
        image_modality: the imaging modality whose aligned embedding queries the reports (``xray``,
            or the middle axial slice of a volume modality when a cohort has no X-ray).
        patients, reports: training patient ids and their report texts (whitespace-normalised), aligned.
        most_frequent, most_frequent_count: the mode and its count.
    """

    image_modality: str
    patients: list[str]
    reports: list[str]
    most_frequent: str
    most_frequent_count: int
    details: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, reports: dict[str, str], *, image_modality: str, **details: Any) -> "ReportBaselines":
        """From training ``{patient_id: report text}``."""
        ids = sorted(reports)
        texts = [normalise_whitespace(reports[i]) for i in ids]
        mode, count = most_frequent_report(texts)
        return cls(image_modality=image_modality, patients=ids, reports=texts, most_frequent=mode,
                   most_frequent_count=count, details=dict(details))

    def save(self, path: str | Path) -> Path:
        from medm2g_core.serialization import write_record

        return write_record(path, self, class_name="ReportBaselines")

    @classmethod
    def load(cls, path: str | Path) -> "ReportBaselines":
        from medm2g_core.serialization import read_record

        loaded = cls(**read_record(path, class_name="ReportBaselines", what="a report-baseline file"))
        if len(loaded.patients) != len(loaded.reports) or not loaded.reports:
            raise BundleError(f"{path}: no training reports stored (or ids and reports differ in number); refit the baseline")
        return loaded


def embed_reports(align: Any, texts: Sequence[str], *, batch_size: int = 64):
    """L2-normalised aligned embeddings (N, D) of ``texts``."""
    import torch
    import torch.nn.functional as F

    parts = []
    with torch.no_grad():
        for first in range(0, len(texts), batch_size):
            pooled, _, _ = align.encode_text(list(texts[first:first + batch_size]))
            parts.append(F.normalize(pooled.float(), dim=-1).cpu())
    return torch.cat(parts)


def nearest_reports(align: Any, images: Any, *, modality: str, report_embeddings: Any) -> list[int]:
    """Index of the nearest training report for each normalised image (B, 1, H, W) in [-1, 1]."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        pooled, _ = align.encode_image(images.float(), modality)
        query = F.normalize(pooled.float(), dim=-1).cpu()
    return [int(i) for i in (query @ report_embeddings.T).argmax(dim=1)]
