"""Radiology reports written from a phantom's findings: ``FINDINGS: ... IMPRESSION: ...``.

Several phrasings per finding and per negation, laterality, lobe and size, so that a text model
has to read the words rather than memorise one sentence per label. The report mentions a finding's
name (``effusion``, ``nodule`` ...) exactly when the finding is present or explicitly negated; the
labels come from the same ``Finding`` records, so report and ``labels.json`` cannot disagree.
"""

from __future__ import annotations

import numpy as np

from medm2g_core.data.synth.findings import Device, Finding


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _size(rng: np.random.Generator, size_mm: float) -> str:
    """``14 mm`` or ``1.4 cm`` (either unit, as radiologists write both)."""
    if size_mm >= 10 and rng.random() < 0.5:
        return f"{size_mm / 10:.1f} cm"
    return f"{size_mm:.0f} mm"


def _lobe(finding: Finding) -> str:
    return f"{finding.side} {finding.lobe} lobe"


def _side(finding: Finding) -> str:
    return "bilateral" if finding.side == "bilateral" else f"{finding.side}-sided"


def _device_sentence(rng: np.random.Generator, device: Device, ett_cm: float | None) -> str:
    side = (device.side or "right").capitalize()
    if device.kind == "endotracheal_tube":
        cm = f"{ett_cm if ett_cm is not None else 4.0:.1f} cm"
        return _pick(rng, [f"Endotracheal tube terminates {cm} above the carina.", f"ET tube tip is {cm} above the carina.",
                           f"An endotracheal tube is in place, its tip {cm} above the carina."])
    if device.kind == "enteric_tube":
        return _pick(rng, ["Enteric tube courses below the diaphragm with its tip in the stomach.",
                           "Nasogastric tube with its tip in the stomach.", "A feeding tube passes below the diaphragm into the stomach."])
    if device.kind == "central_line":
        vein = "internal jugular" if device.route == "jugular" else "subclavian"
        return _pick(rng, [f"{side} {vein} central venous catheter with its tip in the lower SVC.",
                           f"{side} {vein} central line terminates in the SVC.",
                           f"A {device.side} {vein} central venous catheter is in place, tip at the cavoatrial junction."])
    if device.kind == "pacemaker":
        return _pick(rng, [f"{side} chest wall pacemaker with leads in the right atrium and right ventricle.",
                           f"Dual-chamber pacemaker, generator over the {device.side} chest, leads terminating in the right atrium and right ventricle.",
                           f"A {device.side}-sided pacemaker is present with two leads in the right heart."])
    if device.kind == "sternotomy_wires":
        return _pick(rng, ["Median sternotomy wires are intact.", "Status post median sternotomy.",
                           "Intact median sternotomy wires are noted."])
    if device.kind == "chest_tube":
        return _pick(rng, [f"{side} chest tube in place, its tip projecting over the apex.",
                           f"A {device.side}-sided chest tube is in place.", f"{side} pleural drain (chest tube) with the tip at the lung apex."])
    raise AssertionError(device.kind)


def chest_report(findings: dict[str, Finding], *, rng: np.random.Generator, cardiothoracic_ratio: float,
                 ett_above_carina_cm: float | None = None) -> str:
    """Chest radiograph/CT report for the present ``findings`` (absent ones are negated; support devices,
    as in real reports, only mentioned when present, first)."""
    sentences: list[str] = []
    impressions: list[str] = []
    if "support_devices" in findings:
        sentences.extend(_device_sentence(rng, device, ett_above_carina_cm) for device in findings["support_devices"].devices)
    if "cardiomegaly" in findings:
        grade = findings["cardiomegaly"].grade
        sentences.append(_pick(rng, [
            f"The heart is {'markedly ' if grade == 'marked' else ''}enlarged (cardiomegaly, cardiothoracic ratio {cardiothoracic_ratio:.2f}).",
            f"{grade.capitalize() if grade else 'Mild'} cardiomegaly, cardiothoracic ratio approximately {cardiothoracic_ratio:.2f}.",
            f"Cardiac silhouette is enlarged, consistent with cardiomegaly (cardiothoracic ratio {cardiothoracic_ratio:.2f}).",
        ]))
        impressions.append(_pick(rng, [f"{(grade or 'mild').capitalize()} cardiomegaly.", "Cardiomegaly."]))
    else:
        sentences.append(_pick(rng, [
            "Heart size is normal.", "The cardiac silhouette is within normal limits.",
            "Normal cardiomediastinal silhouette.", "No cardiomegaly.",
        ]))
    if "consolidation" in findings:
        finding = findings["consolidation"]
        sentences.append(_pick(rng, [
            f"Airspace consolidation in the {_lobe(finding)} with air bronchograms.",
            f"There is consolidation of the {_lobe(finding)}.",
            f"Patchy consolidation is seen in the {_lobe(finding)}, compatible with pneumonia in the appropriate clinical setting.",
        ]))
        impressions.append(_pick(rng, [f"{_lobe(finding).capitalize()} consolidation.", f"Consolidation in the {_lobe(finding)}."]))
    if "nodule" in findings:
        finding = findings["nodule"]
        size = _size(rng, float(finding.size_mm or 0))
        sentences.append(_pick(rng, [
            f"A {size} pulmonary nodule is present in the {_lobe(finding)}.",
            f"There is a {size} nodule in the {_lobe(finding)}.",
            f"Solitary {size} nodule projecting over the {_lobe(finding)}.",
        ]))
        impressions.append(_pick(rng, [f"{size} {_lobe(finding)} nodule; follow-up CT recommended.",
                                       f"Pulmonary nodule in the {_lobe(finding)} ({size})."]))
    if "effusion" in findings:
        finding = findings["effusion"]
        where = "bilateral" if finding.side == "bilateral" else finding.side
        sentences.append(_pick(rng, [
            f"{(finding.grade or 'small').capitalize()} {where} pleural effusion with blunting of the costophrenic angle{'s' if finding.side == 'bilateral' else ''}.",
            f"There is a {finding.grade} {_side(finding)} pleural effusion.",
            f"{'Bilateral pleural effusions' if finding.side == 'bilateral' else f'Pleural effusion on the {finding.side}'}, {finding.grade} in size.",
        ]))
        impressions.append(_pick(rng, [f"{(finding.grade or 'small').capitalize()} {where} pleural effusion.", f"{_side(finding).capitalize()} pleural effusion."]))
    if "pneumothorax" in findings:
        finding = findings["pneumothorax"]
        depth = _size(rng, float(finding.size_mm or 0))
        sentences.append(_pick(rng, [
            f"{(finding.grade or 'small').capitalize()} {finding.side} pneumothorax with a {depth} apical-lateral pleural air rim and no lung markings beyond the visceral pleural line.",
            f"There is a {finding.grade} {finding.side}-sided pneumothorax, measuring {depth} from the chest wall.",
            f"A {finding.side} pneumothorax is present ({depth} rim of pleural air).",
        ]))
        impressions.append(_pick(rng, [f"{(finding.grade or 'small').capitalize()} {finding.side} pneumothorax.", f"{finding.side.capitalize()}-sided pneumothorax."]))
    # Negations for what is absent, grouped as radiologists write them.
    pleural_absent = [name for name in ("effusion", "pneumothorax") if name not in findings]
    if pleural_absent == ["effusion", "pneumothorax"]:
        sentences.append(_pick(rng, ["No pleural effusion or pneumothorax.", "There is no pleural effusion or pneumothorax.",
                                     "No pneumothorax or pleural effusion is seen."]))
    elif pleural_absent == ["effusion"]:
        sentences.append(_pick(rng, ["No pleural effusion.", "There is no pleural effusion."]))
    elif pleural_absent == ["pneumothorax"]:
        sentences.append(_pick(rng, ["No pneumothorax.", "There is no pneumothorax."]))
    lung_absent = [name for name in ("consolidation", "nodule") if name not in findings]
    if lung_absent == ["consolidation", "nodule"]:
        sentences.append(_pick(rng, ["The lungs are clear without focal consolidation or nodule.",
                                     "No focal consolidation or pulmonary nodule.", "Lungs are clear; no consolidation or nodule."]))
    elif lung_absent == ["consolidation"]:
        sentences.append(_pick(rng, ["No other focal consolidation.", "No consolidation."]))
    elif lung_absent == ["nodule"]:
        sentences.append(_pick(rng, ["No pulmonary nodule.", "No suspicious nodule is seen."]))
    sentences.append(_pick(rng, ["The osseous structures are intact.", "No acute bony abnormality.", "Visualised bones are unremarkable."]))
    if not impressions:
        impressions.append(_pick(rng, ["No acute cardiopulmonary abnormality.", "Normal chest.", "No acute cardiopulmonary process."]))
    if "support_devices" in findings:
        impressions.append(_pick(rng, ["Support devices as described.", "Lines and tubes in satisfactory position."]))
    return f"FINDINGS: {' '.join(sentences)}\nIMPRESSION: {' '.join(impressions)}\n"


def head_report(findings: dict[str, Finding], *, rng: np.random.Generator) -> str:
    """Head CT/MRI report for the present ``findings`` (absent ones are negated)."""
    sentences: list[str] = []
    impressions: list[str] = []
    if "tumour" in findings:
        finding = findings["tumour"]
        size = _size(rng, float(finding.size_mm or 0))
        where = f"{finding.side} {finding.lobe} lobe"
        sentences.append(_pick(rng, [
            f"A {size} intra-axial tumour in the {where} with surrounding vasogenic oedema, T2 hyperintense and T1 hypointense.",
            f"There is a {size} tumour in the {where}, surrounded by oedema.",
            f"Mass lesion (tumour) of the {where} measuring {size} with perilesional oedema.",
        ]))
        impressions.append(_pick(rng, [f"{size} {where} tumour with oedema.", f"Intra-axial {where} tumour ({size}) with surrounding oedema."]))
    else:
        sentences.append(_pick(rng, ["No mass or oedema.", "No intracranial mass lesion.", "No focal mass, oedema or mass effect."]))
    if "ventriculomegaly" in findings:
        grade = findings["ventriculomegaly"].grade or "mild"
        sentences.append(_pick(rng, [
            f"The lateral ventricles are {'markedly ' if grade == 'marked' else ''}enlarged ({grade} ventriculomegaly).",
            f"{grade.capitalize()} ventriculomegaly.",
            f"Ventricular system is dilated, consistent with {grade} ventriculomegaly.",
        ]))
        impressions.append(_pick(rng, [f"{grade.capitalize()} ventriculomegaly.", "Ventriculomegaly."]))
    else:
        sentences.append(_pick(rng, ["Ventricles are normal in size.", "No ventriculomegaly.", "The ventricular system is of normal size."]))
    sentences.append(_pick(rng, ["Grey-white matter differentiation is preserved.", "The calvarium is intact.",
                                 "No extra-axial collection."]))
    if not impressions:
        impressions.append(_pick(rng, ["No acute intracranial abnormality.", "Normal brain.", "Unremarkable head examination."]))
    return f"FINDINGS: {' '.join(sentences)}\nIMPRESSION: {' '.join(impressions)}\n"
