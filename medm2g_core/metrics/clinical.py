"""Clinical efficacy: finding labels extracted from reports, then precision / recall / F1.

The labeler is rule-based in the CheXpert/NegBio style: each sentence is searched for *mentions* of a
finding; a mention is classified as **negative** (a negation cue — "no", "without", "free of",
"negative for", "no evidence of", "resolved", "is normal" … — governs it), **uncertain** (a hedge —
"may", "possible", "cannot exclude", "likely" …) or **positive**. A report's label is aggregated as
CheXpert does: any positive mention → 1, else any uncertain → −1, else any negative → 0, else blank
(``None``, not mentioned). ``no_finding`` is 1 when no other finding is 1 or −1 (CheXpert's rule,
support devices excepted: a patient with a pacemaker and nothing else has no finding).

Scoring convention (``label_scores``): a label counts as *present* when it is 1 **or −1**
(uncertain treated as positive, CheXpert's "U-Ones"), and absent when 0 or blank. Per label TP/FP/FN
between generated (prediction) and reference labels give precision, recall and F1; **micro** pools the
counts over all labels, **macro** averages per-label values over labels that are present in at least one
reference or prediction (a label never present anywhere has an undefined F1 and is left out, listed in
``undefined_labels``).

A local CheXbert model can replace this labeler through the ``Labeler`` protocol (``name`` +
``__call__(texts) -> list[dict[str, int | None]]``); the labeler's name is part of every metric name,
because CE numbers from different labelers are not comparable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1

# Finding → mention patterns (regex on lower-cased text). Head findings serve the head phantoms.
FINDINGS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": (
        r"cardiomegaly", r"(?:heart|cardiac(?: silhouette)?|cardiomediastinal silhouette)(?: size)?(?: is| appears| remains)?(?: mildly| moderately| markedly| severely)? (?:enlarged|enlargement|large)",
        r"enlarge(?:d|ment of the)? (?:heart|cardiac silhouette)",
    ),
    "effusion": (r"(?:pleural )?effusions?", r"fluid in the (?:pleural space|costophrenic)", r"blunting of the (?:left |right |bilateral )?costophrenic"),
    "nodule": (r"nodules?", r"nodular (?:opacity|opacities|density)", r"(?:lung|pulmonary) mass(?:es)?", r"granulomas?"),
    "pneumothorax": (r"pneumothora(?:x|ces)",),
    "consolidation": (r"consolidations?", r"consolidat(?:ed|ive)", r"airspace (?:disease|opacity|opacities)"),
    "edema": (r"(?:pulmonary|interstitial|alveolar) o?edema", r"vascular congestion", r"(?<!\w)edema"),
    "atelectasis": (r"atelecta(?:sis|ses|tic)", r"collapse of the"),
    "pneumonia": (r"pneumonias?", r"infectious process", r"infection"),
    "fracture": (r"fractures?", r"fractured"),
    "support_devices": (
        r"support devices?", r"(?:lines? and tubes?|tubes? and lines?)",
        r"(?:endotracheal|et|enteric|nasogastric|ng|orogastric|og|feeding|chest|tracheostomy|dobhoff) tubes?",
        r"(?:central venous|central|picc|venous|dialysis) (?:catheters?|lines?)", r"\bcatheters?\b", r"\bpicc\b",
        r"(?:dual-chamber |single-chamber )?pacemakers?", r"\bpacers?\b", r"defibrillator", r"\ba?icd\b",
        r"(?:median )?sternotomy(?: wires)?", r"sternal wires", r"pleural drains?", r"port-?a-?cath",
    ),
    "tumour": (
        r"tumou?rs?", r"neoplasms?", r"gliomas?", r"glioblastomas?", r"metastas[ie]s",
        r"(?:intracranial|intra-axial|brain|cerebral|enhancing|space-occupying) (?:mass|lesion)(?:es|s)?",
    ),
    "oedema": (r"(?:peri-?tumou?ral|perilesional|vasogenic|cerebral|surrounding|white matter) o?edema", r"(?<!\w)oedema"),
    "ventriculomegaly": (r"ventriculomegaly", r"hydrocephalus", r"(?:enlarged|dilated|prominent) (?:lateral )?ventricles", r"ventricles? (?:is |are )?(?:enlarged|dilated)"),
}
# Neutral size mentions: positive only with an enlargement word, negative with a normal/negated
# description ("heart size is normal", "ventricles are normal in size"), otherwise not a mention.
SIZE_MENTIONS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": (r"heart size", r"cardiac (?:silhouette|size)", r"cardiomediastinal silhouette", r"\bheart\b"),
    "ventriculomegaly": (r"ventricular (?:size|system)", r"(?:lateral )?ventricles"),
}
NO_FINDING = "no_finding"
LABELS: tuple[str, ...] = (*FINDINGS, NO_FINDING)

# Cues, CheXpert/NegBio style, checked inside the mention's clause (split at "but", "however", ";").
_NEGATION_BEFORE = re.compile(
    r"(?:\bno\b|\bnot\b|\bwithout\b|\bfree of\b|\bnegative for\b|\bno evidence of\b|\babsence of\b|\bnor\b|"
    r"\brule[sd]? out\b|\bruled out\b|\bclear of\b|\bresolution of\b|\bresolved\b|\bno longer\b|\bexclude[sd]?\b|\bdenies\b)"
)
_NEGATION_AFTER = re.compile(
    r"^\W*(?:is|are|has|have|was|were)?\s*(?:been\s+)?(?:not (?:seen|present|identified|visualized|demonstrated|evident)|absent|"
    r"resolved|cleared|gone|normal|within normal limits|unremarkable|stable and normal|not enlarged|"
    r"upper (?:limits? of )?normal|top normal|(?:is |are )?(?:normal|unremarkable))"
)
# Normal descriptions that negate a size-type finding ("heart size is normal").
_NORMAL = re.compile(r"\b(?:normal|unremarkable|within normal limits|not enlarged|upper normal|top normal)\b")
_ENLARGED = re.compile(r"enlarg|\blarge\b|increased|prominent|dilat|cardiomegaly")
_UNCERTAIN = re.compile(
    r"(?:\bmay\b|\bmight\b|\bpossible\b|\bpossibly\b|\bprobable\b|\bprobably\b|\bcannot (?:be )?(?:exclude|excluded|ruled out|rule out)\b|"
    r"\bcan not be excluded\b|\bnot (?:be )?excluded\b|\blikely\b|\bsuggest(?:s|ive|ing)?\b|\bquestionable\b|\bversus\b|\bvs\b|"
    r"\bconcern(?:ing)? for\b|\bcould\b|\bequivocal\b|\bsuspicious for\b|\bdifferential\b|\bnot (?:entirely )?(?:clear|certain)\b|\bcannot be ruled out\b)"
)
_CLAUSE_SPLIT = re.compile(r"\bbut\b|\bhowever\b|\balthough\b|;|\bwith the exception of\b|\bexcept\b")
_COMPILED = [(label, re.compile(p), False) for label, patterns in FINDINGS.items() for p in patterns] + [
    (label, re.compile(p), True) for label, patterns in SIZE_MENTIONS.items() for p in patterns
]


class Labeler(Protocol):
    """Anything that turns reports into finding labels (1 / 0 / −1 / None per label in ``LABELS``)."""

    name: str

    def __call__(self, texts: Sequence[str]) -> list[dict[str, int | None]]: ...


@dataclass(frozen=True)
class Mention:
    label: str
    value: int
    sentence: str
    span: tuple[int, int]


class RuleBasedLabeler:
    """medm2g's rule-based, negation- and uncertainty-aware labeler (see the module docstring)."""

    name = "rule-based"

    def __call__(self, texts: Sequence[str]) -> list[dict[str, int | None]]:
        return [label_report(text) for text in texts]


def find_mentions(text: str) -> list[Mention]:
    """Every finding mention in ``text`` with its classification (1 positive, 0 negative, −1 uncertain)."""
    mentions: list[Mention] = []
    for sentence in _sentences(text):
        taken: list[tuple[int, int]] = []
        for label, pattern, size_mention in _COMPILED:
            for match in pattern.finditer(sentence):
                span = match.span()
                if any(span[0] < end and start < span[1] for start, end in taken):
                    continue  # an earlier, more specific pattern already claimed this text
                value = _classify(sentence, span, size_mention=size_mention)
                if value is not None:
                    taken.append(span)
                    mentions.append(Mention(label, value, sentence, span))
    return mentions


def label_report(text: str) -> dict[str, int | None]:
    """Labels of one report: ``{label: 1 | 0 | -1 | None}`` over ``LABELS`` (CheXpert aggregation)."""
    labels: dict[str, int | None] = {label: None for label in LABELS}
    for mention in find_mentions(text):
        labels[mention.label] = _aggregate(labels[mention.label], mention.value)
    findings = [labels[label] for label in FINDINGS if label != "support_devices"]  # devices are not a pathology
    labels[NO_FINDING] = None if any(v in (POSITIVE, UNCERTAIN) for v in findings) else POSITIVE
    return labels


def _aggregate(current: int | None, new: int) -> int:
    order = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1}
    if current is None or order[new] > order[current]:
        return new
    return current


def _sentences(text: str) -> list[str]:
    text = re.sub(r"\b(?:findings|impression|indication|comparison|history|technique)\s*:", ". ", text.lower())
    return [s.strip() for s in re.split(r"(?<!\d)\.(?!\d)|\n|\?|!", text) if s.strip()]


def _clause(sentence: str, span: tuple[int, int]) -> tuple[str, str]:
    """Text before and after the mention, cut at clause boundaries ("but", "however", ";")."""
    before = sentence[: span[0]]
    after = sentence[span[1] :]
    cuts = list(_CLAUSE_SPLIT.finditer(before))
    if cuts:
        before = before[cuts[-1].end() :]
    cut = _CLAUSE_SPLIT.search(after)
    if cut:
        after = after[: cut.start()]
    return before, after


def _classify(sentence: str, span: tuple[int, int], *, size_mention: bool) -> int | None:
    before, after = _clause(sentence, span)
    if size_mention:
        # "heart size" alone says nothing: enlargement words make it a finding, normal words a negative.
        if _ENLARGED.search(after) and not re.search(r"\bnot\b|\bno\b", after):
            return UNCERTAIN if _UNCERTAIN.search(before + after) else POSITIVE
        if _NORMAL.search(after) or _NORMAL.search(before[-25:]) or _NEGATION_AFTER.search(after):
            return NEGATIVE
        return None
    # Hedges win over negations that they contain ("cannot exclude", "not excluded").
    if _UNCERTAIN.search(before) or _UNCERTAIN.search(after[:40]):
        return UNCERTAIN
    if _NEGATION_BEFORE.search(before[-60:]):
        return NEGATIVE
    if _NEGATION_AFTER.search(after):
        return NEGATIVE
    return POSITIVE


@dataclass
class LabelScores:
    """Precision/recall/F1 per label and pooled; counts in ``support`` (reference positives)."""

    labeler: str
    per_label: dict[str, dict[str, float]]
    micro: dict[str, float]
    macro: dict[str, float]
    support: dict[str, int]
    undefined_labels: list[str] = field(default_factory=list)
    predicted_labels: dict[str, dict[str, int | None]] = field(default_factory=dict)
    reference_labels: dict[str, dict[str, int | None]] = field(default_factory=dict)


def _present(value: int | None) -> bool:
    return value in (POSITIVE, UNCERTAIN)


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": float(tp), "fp": float(fp), "fn": float(fn)}


def label_scores(
    predictions: Mapping[str, str],
    references: Mapping[str, str],
    *,
    labeler: Labeler | None = None,
    labels: Sequence[str] = LABELS,
) -> LabelScores:
    """Clinical-efficacy precision/recall/F1 between generated and reference reports.

    Args:
        predictions: report id → generated text; references: report id → reference text (same ids).
        labeler: a ``Labeler``; default ``RuleBasedLabeler``. Its ``name`` is recorded.
        labels: which labels to score (default all of ``LABELS``).

    Uncertain (−1) counts as present, blank and 0 as absent (see the module docstring).
    """
    if set(predictions) != set(references):
        raise ValueError("prediction and reference ids differ; pair the reports first")
    labeler = labeler or RuleBasedLabeler()
    ids = sorted(predictions)
    predicted = dict(zip(ids, labeler([predictions[i] for i in ids])))
    reference = dict(zip(ids, labeler([references[i] for i in ids])))
    per_label: dict[str, dict[str, float]] = {}
    support: dict[str, int] = {}
    totals = [0, 0, 0]
    undefined: list[str] = []
    for label in labels:
        tp = sum(_present(predicted[i].get(label)) and _present(reference[i].get(label)) for i in ids)
        fp = sum(_present(predicted[i].get(label)) and not _present(reference[i].get(label)) for i in ids)
        fn = sum(not _present(predicted[i].get(label)) and _present(reference[i].get(label)) for i in ids)
        support[label] = tp + fn
        per_label[label] = _prf(tp, fp, fn)
        if tp + fp + fn == 0:
            undefined.append(label)
        totals = [totals[0] + tp, totals[1] + fp, totals[2] + fn]
    micro = _prf(*totals)
    defined = [per_label[label] for label in labels if label not in undefined]
    macro = {k: (sum(v[k] for v in defined) / len(defined) if defined else 0.0) for k in ("precision", "recall", "f1")}
    return LabelScores(
        labeler=labeler.name, per_label=per_label, micro={k: micro[k] for k in ("precision", "recall", "f1")},
        macro=macro, support=support, undefined_labels=undefined, predicted_labels=predicted, reference_labels=reference,
    )
