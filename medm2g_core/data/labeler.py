"""Finding labels read from report text by a rule-based labeler (CheXpert/NegBio style).

Each sentence is searched for *mentions* of a
finding; a mention is classified as **negative** (a negation cue — "no", "without", "free of",
"negative for", "no evidence of", "resolved", "is normal" … — governs it), **uncertain** (a hedge —
"may", "possible", "cannot exclude", "likely" …) or **positive**. A report's label is aggregated as
CheXpert does: any positive mention → 1, else any uncertain → −1, else any negative → 0, else blank
(``None``, not mentioned). ``no_finding`` is 1 when no other finding is 1 or −1 (CheXpert's rule,
support devices excepted: a patient with a pacemaker and nothing else has no finding).

Datasets read the labels as training targets; ``metrics.clinical`` scores generated reports with them.
A local CheXbert model can replace this labeler through the ``Labeler`` protocol (``name`` +
``__call__(texts) -> list[dict[str, int | None]]``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, Sequence

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
    """Anything that turns reports into finding labels (1 / 0 / −1 / None per label in ``LABELS``, or in its own
    ``labels`` attribute when it has one: ``label_scores`` then scores those)."""

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


# --------------------------------------------------------------------------- the X-ray probe's findings
PROBE_FINDINGS = ("cardiomegaly", "effusion", "pacemaker")
"""What the report → X-ray probe scores: the findings a 64² chest X-ray shows (``baselines.classifier``)."""

_PACEMAKER_NEGATED = re.compile(r"\b(?:no|without|removed|absent)\b", re.IGNORECASE)


def probe_findings(text: str) -> list[int]:
    """0/1 per ``PROBE_FINDINGS``: this labeler's cardiomegaly and effusion (uncertain counts as present), and a
    sentence naming a pacemaker without a negation for the device (the labeler pools every device into one label)."""
    labels = label_report(text)
    pacemaker = any("pacemaker" in s.lower() and not _PACEMAKER_NEGATED.search(s) for s in re.split(r"(?<=[.;])\s+", text))
    return [int(labels.get("cardiomegaly") in (POSITIVE, UNCERTAIN)), int(labels.get("effusion") in (POSITIVE, UNCERTAIN)),
            int(pacemaker)]
