import pytest

from medm2g_core.metrics import text
from medm2g_core.metrics.text import BLEU_NAMES, CIDER_NAME, METEOR_NAME, ROUGE_NAME, clean_report, score_reports

PREDICTIONS = {
    "p1": "The heart is normal in size. No pleural effusion or pneumothorax.",
    "p2": "1. Lungs are clear. 2. No focal consolidation.",
    "p3": "Mild cardiomegaly (stable). Small left effusion!",
}
REFERENCES = {
    "p1": "Heart size is normal. There is no pleural effusion or pneumothorax.",
    "p2": "The lungs are clear bilaterally. No consolidation.",
    "p3": "Stable mild cardiomegaly. Small left pleural effusion.",
}


def test_clean_report_matches_r2gen_rules():
    assert clean_report("1. The Heart is normal. 2. No effusion..") == "the heart is normal . no effusion ."
    assert clean_report('Opacity (left), "xxxx" / 5% ok') == "opacity left xxxx  5 ok ."
    # R2Gen's range ":-[" also removes ";<=>?@".
    assert clean_report("a<b=c@d") == "abcd ."
    assert clean_report("Line one\nline two__x", style="mimic_cxr") == "line one line twox ."  # "_" is in R2Gen's removed set
    assert clean_report("a b c d", max_tokens=2) == "a b"
    with pytest.raises(ValueError, match="unknown cleaning"):
        clean_report("x", style="ptb")  # type: ignore[arg-type]


def _direct(scorer, gts, res):
    return scorer.compute_score(gts, res)


def test_scores_equal_direct_pycocoevalcap_calls():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    result = score_reports(PREDICTIONS, REFERENCES, meteor=False)
    gts = {i: [clean_report(REFERENCES[i])] for i in sorted(REFERENCES)}
    res = {i: [clean_report(PREDICTIONS[i])] for i in sorted(PREDICTIONS)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        assert result.corpus[BLEU_NAMES[n]] == pytest.approx(bleu[n], abs=0, rel=0)
    assert result.corpus[ROUGE_NAME] == Rouge().compute_score(gts, res)[0]
    assert result.corpus[CIDER_NAME] == Cider().compute_score(gts, res)[0]
    assert result.corpus[METEOR_NAME] is None and "disabled" in result.notes[0]
    assert set(result.per_report[ROUGE_NAME]) == set(PREDICTIONS)


def test_rouge_l_agrees_with_rouge_score_lcs():
    """pycocoevalcap's ROUGE-L is an LCS F-measure with beta 1.2; recompute it from rouge-score's LCS table."""
    from rouge_score.rouge_scorer import _lcs_table

    result = score_reports(PREDICTIONS, REFERENCES, meteor=False)
    for i in PREDICTIONS:
        candidate, reference = clean_report(PREDICTIONS[i]).split(), clean_report(REFERENCES[i]).split()
        lcs = _lcs_table(reference, candidate)[-1][-1]
        precision, recall = lcs / len(candidate), lcs / len(reference)
        beta = 1.2
        f = (1 + beta**2) * precision * recall / (recall + beta**2 * precision)
        assert result.per_report[ROUGE_NAME][i] == pytest.approx(f, abs=1e-12)


def test_identical_reports_score_one():
    result = score_reports(REFERENCES, REFERENCES, meteor=False)
    assert result.corpus[BLEU_NAMES[3]] == pytest.approx(1.0, abs=1e-6)
    assert result.corpus[ROUGE_NAME] == pytest.approx(1.0)


def test_meteor_without_java_is_not_computed(monkeypatch):
    monkeypatch.setattr(text, "java_available", lambda: False)
    result = score_reports(PREDICTIONS, REFERENCES)
    assert result.corpus[METEOR_NAME] is None
    assert any("default-jre-headless" in note for note in result.notes)


@pytest.mark.skipif(not text.java_available(), reason="no Java runtime for the METEOR 1.5 jar")
def test_meteor_equals_direct_pycocoevalcap():
    from pycocoevalcap.meteor.meteor import Meteor

    result = score_reports(PREDICTIONS, REFERENCES)
    gts = {i: [clean_report(REFERENCES[i])] for i in sorted(REFERENCES)}
    res = {i: [clean_report(PREDICTIONS[i])] for i in sorted(PREDICTIONS)}
    direct = Meteor().compute_score(gts, res)[0]
    assert result.corpus[METEOR_NAME] == pytest.approx(direct, abs=1e-9)
    assert 0 < result.corpus[METEOR_NAME] < 1


def test_mismatched_ids_are_an_error():
    with pytest.raises(ValueError, match="ids differ"):
        score_reports({"a": "x"}, {"b": "x"}, meteor=False)
