import pytest

from medm2g_core.metrics.clinical import LABELS, RuleBasedLabeler, label_report, label_scores


@pytest.mark.parametrize(
    "text, label, expected",
    [
        ("No pleural effusion.", "effusion", 0),
        ("Small left pleural effusion.", "effusion", 1),
        ("Heart size is normal.", "cardiomegaly", 0),
        ("Normal heart size.", "cardiomegaly", 0),
        ("The heart is enlarged.", "cardiomegaly", 1),
        ("The heart is not enlarged.", "cardiomegaly", 0),
        ("The cardiac silhouette is mildly enlarged.", "cardiomegaly", 1),
        ("Moderate cardiomegaly.", "cardiomegaly", 1),
        ("Lungs are clear without focal consolidation, effusion, or pneumothorax.", "pneumothorax", 0),
        ("Lungs are clear without focal consolidation, effusion, or pneumothorax.", "consolidation", 0),
        ("The lungs are free of consolidation.", "consolidation", 0),
        ("Negative for pneumothorax.", "pneumothorax", 0),
        ("No evidence of fracture.", "fracture", 0),
        ("The right effusion has resolved.", "effusion", 0),
        ("Possible right lower lobe pneumonia.", "pneumonia", -1),
        ("Cannot exclude a small pneumothorax.", "pneumothorax", -1),
        ("Findings may represent atelectasis.", "atelectasis", -1),
        ("Mild pulmonary edema is likely.", "edema", -1),
        ("A 6 mm nodule in the right upper lobe.", "nodule", 1),
        ("No pneumothorax, but a small effusion is present.", "effusion", 1),
        ("Enhancing mass in the right frontal lobe with surrounding oedema.", "tumour", 1),
        ("Enhancing mass in the right frontal lobe with surrounding oedema.", "oedema", 1),
        ("The lateral ventricles are enlarged.", "ventriculomegaly", 1),
        ("Ventricles are normal in size.", "ventriculomegaly", 0),
        ("Heart failure history.", "cardiomegaly", None),
        ("Left chest wall pacemaker with leads in the right atrium and right ventricle.", "support_devices", 1),
        ("Status post median sternotomy.", "support_devices", 1),
        ("ET tube tip is 4.5 cm above the carina.", "support_devices", 1),
        ("Right internal jugular central venous catheter with its tip in the lower SVC.", "support_devices", 1),
        ("Lines and tubes in satisfactory position.", "support_devices", 1),
        ("No support devices.", "support_devices", 0),
        ("No lung markings beyond the visceral pleural line.", "support_devices", None),
        ("History of cardiac catheterization.", "support_devices", None),
    ],
)
def test_rule_based_labels(text, label, expected):
    assert label_report(text)[label] == expected


def test_no_finding_follows_chexpert_rule():
    assert label_report("No acute cardiopulmonary process. No effusion.")["no_finding"] == 1
    assert label_report("Possible pneumonia.")["no_finding"] is None
    assert label_report("Cardiomegaly.")["no_finding"] is None
    assert label_report("Left chest pacemaker. No acute process.")["no_finding"] == 1  # devices are not a pathology


def test_positive_beats_uncertain_beats_negative():
    assert label_report("No effusion on the left. Possible effusion on the right.")["effusion"] == -1
    assert label_report("Possible effusion on the right. Definite left effusion.")["effusion"] == 1


def test_label_scores_on_hand_written_pairs():
    predictions = {
        "a": "The heart is enlarged. No pleural effusion.",
        "b": "Heart size is normal. Small right pleural effusion.",
        "c": "Possible pneumonia. No pneumothorax.",
    }
    references = {
        "a": "Cardiomegaly. Small left pleural effusion.",
        "b": "Normal heart size. No effusion.",
        "c": "Right lower lobe pneumonia.",
    }
    scores = label_scores(predictions, references)
    assert scores.labeler == "rule-based"
    # cardiomegaly: TP a; effusion: FN a, FP b; pneumonia: TP c (uncertain counts as positive); no_finding: FP b? no.
    assert scores.per_label["cardiomegaly"]["f1"] == 1.0
    assert scores.per_label["effusion"]["tp"] == 0 and scores.per_label["effusion"]["fp"] == 1 and scores.per_label["effusion"]["fn"] == 1
    assert scores.per_label["pneumonia"]["f1"] == 1.0
    assert scores.per_label["no_finding"]["fp"] == 0 and scores.per_label["no_finding"]["fn"] == 1  # b's reference is normal
    tp, fp, fn = 2, 1, 2
    assert scores.micro["precision"] == pytest.approx(tp / (tp + fp))
    assert scores.micro["recall"] == pytest.approx(tp / (tp + fn))
    assert "fracture" in scores.undefined_labels
    defined = [label for label in LABELS if label not in scores.undefined_labels]
    assert scores.macro["f1"] == pytest.approx(sum(scores.per_label[l]["f1"] for l in defined) / len(defined))


def test_custom_labeler_name_is_recorded():
    class Fixed:
        name = "chexbert[local]"

        def __call__(self, texts):
            return [{label: None for label in LABELS} for _ in texts]

    assert label_scores({"a": "x"}, {"a": "y"}, labeler=Fixed()).labeler == "chexbert[local]"
    assert RuleBasedLabeler.name == "rule-based"


def test_kermany_labeler_scores_its_own_classes() -> None:
    from medm2g_core.data.importers.kermany import REPORTS, KermanyLabeler, class_of_text

    assert {name: class_of_text(text) for name, text in REPORTS.items()} == {name: name for name in REPORTS}
    assert class_of_text("FINDINGS: Normal chest. IMPRESSION: Bacterial pneumonia.") is None  # contradicts itself
    references = {"a": REPORTS["bacterial"], "b": REPORTS["viral"], "c": REPORTS["normal"], "d": REPORTS["viral"]}
    predictions = {"a": REPORTS["bacterial"], "b": REPORTS["bacterial"], "c": REPORTS["normal"], "d": "opacities, pneumonia"}
    scores = label_scores(predictions, references, labeler=KermanyLabeler())
    assert scores.labeler == "kermany-label-text" and set(scores.per_label) == {"pneumonia", "bacterial", "viral", "no finding"}
    assert scores.per_label["bacterial"]["f1"] == pytest.approx(2 / 3)  # a right, b wrong (viral called bacterial)
    assert scores.per_label["viral"]["f1"] == 0.0 and scores.per_label["no finding"]["f1"] == 1.0
    assert scores.per_label["pneumonia"]["f1"] == 1.0  # d names pneumonia without its kind
