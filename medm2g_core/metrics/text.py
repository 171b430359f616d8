"""Report-generation text metrics in the R2Gen convention, scored by pycocoevalcap itself.

Convention (``/work/shared/EVALUATION.md``): both generated and reference reports are cleaned the
way R2Gen's tokenizer cleans them (``clean_report_iu_xray`` / ``clean_report_mimic_cxr``: lower-case,
list numbering dropped, the punctuation ``.,?;*!%^&_+():-[]{}`` and quotes/slashes removed inside a
sentence, sentences joined by " . " and closed by " ."), then scored with pycocoevalcap's
``Bleu(4)`` (corpus-level, "closest" reference length), ``Meteor()`` (the METEOR 1.5 jar, needs a
Java runtime), ``Rouge()`` (LCS F-measure, beta 1.2) and ``Cider()`` (CIDEr-D, document frequencies
from this test set). No PTB tokenizer. R2Gen additionally maps words below its vocabulary threshold
to ``<unk>`` and truncates to ``max_seq_length`` tokens; that needs the training vocabulary, so here
only the optional truncation (``max_tokens``) is offered.

When no Java runtime is found (install ``default-jre-headless`` on Debian), METEOR is reported as
``None`` ("not computed"), never as 0.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

Cleaning = Literal["iu_xray", "mimic_cxr", "none"]

# R2Gen's character class verbatim: note that ":-\[" is a range (":" … "["), which also removes
# ";<=>?@" and the capitals (already lower-cased by then). Kept as is so that scores match R2Gen.
_R2GEN_PUNCTUATION = re.compile("[.,?;*!%^&_+():-\\[\\]{}]")

BLEU_NAMES = tuple(f"BLEU-{n}[r2gen-clean, corpus]" for n in range(1, 5))
METEOR_NAME = "METEOR[1.5 jar, r2gen-clean]"
ROUGE_NAME = "ROUGE-L[r2gen-clean, beta 1.2]"
CIDER_NAME = "CIDEr-D[r2gen-clean, test-set df]"


def _numbering(text: str) -> str:
    return (
        text.replace("1. ", "").replace(". 2. ", ". ").replace(". 3. ", ". ").replace(". 4. ", ". ")
        .replace(". 5. ", ". ").replace(" 2. ", ". ").replace(" 3. ", ". ").replace(" 4. ", ". ").replace(" 5. ", ". ")
    )


def _sentence(text: str) -> str:
    text = text.replace('"', "").replace("/", "").replace("\\", "").replace("'", "").strip().lower()
    return _R2GEN_PUNCTUATION.sub("", text)


def clean_report(text: str, *, style: Cleaning = "iu_xray", max_tokens: int | None = None) -> str:
    """Clean ``text`` exactly as R2Gen's tokenizer does before building/decoding its vocabulary.

    ``style="iu_xray"`` ports ``clean_report_iu_xray``, ``"mimic_cxr"`` ports
    ``clean_report_mimic_cxr`` (newlines, repeated underscores and double spaces collapsed first),
    ``"none"`` returns ``text`` unchanged. R2Gen keeps empty sentences (its filter compares a string
    with ``[]``), and so does this port. ``max_tokens`` truncates the cleaned token list as R2Gen's
    ``max_seq_length`` does (IU X-ray 60, MIMIC-CXR 100); ``None`` keeps every token.
    """
    if style == "none":
        cleaned = text
    else:
        if style == "mimic_cxr":
            text = text.replace("\n", " ")
            for _ in range(7):
                text = text.replace("__", "_")
            for _ in range(6):
                text = text.replace("  ", " ")
            for _ in range(5):
                text = text.replace("..", ".")
        elif style != "iu_xray":
            raise ValueError(f"unknown cleaning style {style!r}; use 'iu_xray', 'mimic_cxr' or 'none'")
        for _ in range(3):
            text = text.replace("..", ".")
        sentences = _numbering(text).strip().lower().split(". ")
        cleaned = " . ".join(_sentence(sentence) for sentence in sentences) + " ."
    if max_tokens is not None:
        cleaned = " ".join(cleaned.split()[:max_tokens])
    return cleaned


def java_available() -> bool:
    """True when a ``java`` executable is on PATH (pycocoevalcap's METEOR runs the 1.5 jar)."""
    return shutil.which("java") is not None


@dataclass
class TextScores:
    """Corpus-level scores and per-report values, keyed by the convention names above.

    ``corpus[name]`` is the corpus score (``None`` = not computed, reason in ``notes``);
    ``per_report[name][report_id]`` the sentence-level value pycocoevalcap returns for that report
    (BLEU per report uses the sentence's own brevity penalty, as pycocoevalcap's list does).
    """

    corpus: dict[str, float | None]
    per_report: dict[str, dict[str, float]]
    cleaned_predictions: dict[str, str]
    cleaned_references: dict[str, list[str]]
    notes: list[str] = field(default_factory=list)


def score_reports(
    predictions: Mapping[str, str],
    references: Mapping[str, str | Sequence[str]],
    *,
    cleaning: Cleaning = "iu_xray",
    max_tokens: int | None = None,
    meteor: bool = True,
) -> TextScores:
    """Score generated reports against references with pycocoevalcap (R2Gen convention).

    Args:
        predictions: report id → generated report text.
        references: report id → reference text (or several references). Ids must match exactly.
        cleaning: R2Gen cleaning style applied to both sides (see ``clean_report``).
        max_tokens: optional R2Gen ``max_seq_length`` truncation after cleaning.
        meteor: compute METEOR (starts a Java process); ``False`` or no Java → ``None`` with a note.

    Returns:
        ``TextScores`` with BLEU-1..4, METEOR, ROUGE-L and CIDEr-D, all in [0, 1] except CIDEr-D
        (unbounded, ×10 scaled as pycocoevalcap returns it).
    """
    if set(predictions) != set(references):
        missing = sorted(set(references) - set(predictions))[:5]
        extra = sorted(set(predictions) - set(references))[:5]
        raise ValueError(f"prediction and reference ids differ (missing {missing}, without reference {extra}); pair them first")
    if not predictions:
        raise ValueError("no reports to score; give at least one (prediction, reference) pair")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ids = sorted(predictions)
    res = {i: [clean_report(predictions[i], style=cleaning, max_tokens=max_tokens)] for i in ids}
    gts: dict[str, list[str]] = {}
    for i in ids:
        refs = references[i]
        refs = [refs] if isinstance(refs, str) else list(refs)
        gts[i] = [clean_report(r, style=cleaning, max_tokens=max_tokens) for r in refs]

    corpus: dict[str, float | None] = {}
    per_report: dict[str, dict[str, float]] = {}
    notes: list[str] = []

    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    for n, name in enumerate(BLEU_NAMES):
        corpus[name] = float(bleu[n])
        per_report[name] = {i: float(v) for i, v in zip(ids, bleu_each[n])}

    corpus[METEOR_NAME], meteor_each, note = _meteor(gts, res, enabled=meteor)
    if meteor_each is not None:
        per_report[METEOR_NAME] = {i: float(v) for i, v in zip(ids, meteor_each)}
    if note:
        notes.append(note)

    rouge, rouge_each = Rouge().compute_score(gts, res)
    corpus[ROUGE_NAME] = float(rouge)
    per_report[ROUGE_NAME] = {i: float(v) for i, v in zip(ids, rouge_each)}

    cider, cider_each = Cider().compute_score(gts, res)
    corpus[CIDER_NAME] = float(cider)
    per_report[CIDER_NAME] = {i: float(v) for i, v in zip(ids, cider_each)}
    if len(ids) < 2:
        notes.append("CIDEr-D uses the test set's document frequencies; with one report its value is degenerate")
    return TextScores(corpus=corpus, per_report=per_report, cleaned_predictions={i: res[i][0] for i in ids}, cleaned_references=gts, notes=notes)


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]], *, enabled: bool) -> tuple[float | None, list[float] | None, str | None]:
    if not enabled:
        return None, None, "METEOR not computed (disabled)"
    if not java_available():
        return None, None, "METEOR not computed: no Java runtime on PATH (Debian: apt-get install default-jre-headless)"
    from pycocoevalcap.meteor.meteor import Meteor

    class _Meteor(Meteor):
        def close(self) -> None:
            """Stop the Java process now; the parent's ``__del__`` can deadlock at interpreter exit."""
            try:
                self.meteor_p.stdin.close()
            except OSError:
                pass
            self.meteor_p.kill()
            self.meteor_p.wait()

        def __del__(self) -> None:
            pass

    scorer = None
    try:
        scorer = _Meteor()
        score, each = scorer.compute_score(gts, res)
        return float(score), [float(v) for v in each], None
    except (OSError, ValueError) as error:
        return None, None, f"METEOR not computed: the METEOR 1.5 jar failed ({type(error).__name__}: {error})"
    finally:
        if scorer is not None:
            scorer.close()
