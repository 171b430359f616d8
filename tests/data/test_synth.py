"""Phantom cohorts: the physics of each modality, findings consistent across images, report and labels,
determinism and the synthetic mark."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy import ndimage

from medm2g_core import io
from medm2g_core.data.synth import FINDINGS, build_patient, synthesize_cohort, synthesize_patient
from medm2g_core.data.synth.findings import resolve_prevalence
from medm2g_core.data.synth.physics import SEQUENCES, TISSUES, Tissue, drr_from_ct, spin_echo_signal, tissue_signal

NONE = {"chest": {name: 0.0 for name in FINDINGS["chest"]}, "head": {name: 0.0 for name in FINDINGS["head"]}}


def _core(phantom, tissue, iterations=1):
    """Voxels of ``tissue`` away from its border (no partial volume)."""
    mask = phantom.labels == tissue
    return ndimage.binary_erosion(mask, iterations=iterations) if iterations else mask


@pytest.fixture(scope="module")
def chest():
    return build_patient(index=0, anatomy="chest", seed=11, size=64, prevalence=NONE["chest"])


@pytest.fixture(scope="module")
def head():
    return build_patient(index=0, anatomy="head", seed=11, size=64, prevalence=NONE["head"])


# --- physics, pure ------------------------------------------------------------------------------

def test_spin_echo_equation_matches_hand_computed_value():
    value = spin_echo_signal(0.7, 800.0, 80.0, tr_ms=500.0, te_ms=15.0)
    assert value == pytest.approx(0.7 * (1 - np.exp(-500 / 800)) * np.exp(-15 / 80), rel=1e-6)


def test_tissue_contrasts_follow_the_textbook():
    t1, t2, pd = (tissue_signal(SEQUENCES[name]) for name in ("mri-t1", "mri-t2", "mri-pd"))
    assert t1[Tissue.WHITE_MATTER] > t1[Tissue.GREY_MATTER] > t1[Tissue.CSF]  # T1w: WM > GM > CSF
    assert t1[Tissue.FAT] == max(t1)  # fat brightest on T1w
    assert t2[Tissue.CSF] > t2[Tissue.GREY_MATTER] > t2[Tissue.WHITE_MATTER]  # T2w: CSF > GM > WM
    fluids = {Tissue.CSF, Tissue.VITREOUS, Tissue.EFFUSION}
    assert all(t2[Tissue.CSF] > t2[t] for t in Tissue if t not in fluids)  # fluid brightest on T2w
    assert pd[Tissue.GREY_MATTER] > pd[Tissue.WHITE_MATTER]  # PD: proton density ordering, little T1/T2 weighting
    assert t2[Tissue.OEDEMA] > t2[Tissue.WHITE_MATTER] and t1[Tissue.OEDEMA] < t1[Tissue.WHITE_MATTER]
    assert t2[Tissue.EFFUSION] > t2[Tissue.MUSCLE]
    assert max(t1[Tissue.AIR], t2[Tissue.AIR], pd[Tissue.AIR]) == 0.0
    assert TISSUES[Tissue.LUNG].hu == pytest.approx(-850, abs=50)


# --- CT ------------------------------------------------------------------------------------------

def test_ct_numbers_of_tissues_are_in_their_ranges(chest):
    phantom, images, _ = chest
    ct, meta = images["ct"]
    assert ct.dtype == np.int16 and meta.units == "HU"
    assert meta.spacing == pytest.approx((6.0, 6.0, 6.0))
    ranges = {Tissue.LUNG: (-900, -780), Tissue.FAT: (-130, -70), Tissue.MUSCLE: (20, 70), Tissue.LIVER: (40, 80)}
    for tissue, (low, high) in ranges.items():
        core = _core(phantom, tissue)
        assert core.sum() > 20, tissue
        assert low <= np.median(ct[core]) <= high, (tissue, np.median(ct[core]))
    air = ct[:3, :3, :3]
    assert -1024 <= np.median(air) <= -960
    bone = ct[phantom.labels == Tissue.CORTICAL_BONE]
    assert 700 <= np.percentile(bone, 90) <= 1500  # cortical bone, partial-volumed at 6 mm voxels
    noise = ct[_core(phantom, Tissue.LIVER, 2)].std()
    assert 5 <= noise <= 25  # realistic CT noise (HU)


# --- MRI -----------------------------------------------------------------------------------------

def test_head_mri_contrasts(head):
    phantom, images, _ = head
    means = {}
    for name in ("mri-t1", "mri-t2", "mri-pd"):
        volume, meta = images[name]
        assert volume.dtype == np.int16 and meta.same_grid(images["ct"][1])
        means[name] = {t: float(volume[_core(phantom, t, 0 if t == Tissue.CSF else 1)].mean())
                       for t in (Tissue.WHITE_MATTER, Tissue.GREY_MATTER, Tissue.CSF)}
    t1, t2, pd = means["mri-t1"], means["mri-t2"], means["mri-pd"]
    assert t1[Tissue.WHITE_MATTER] > t1[Tissue.GREY_MATTER] > t1[Tissue.CSF]
    assert t2[Tissue.CSF] > t2[Tissue.GREY_MATTER] > t2[Tissue.WHITE_MATTER]
    assert pd[Tissue.GREY_MATTER] > pd[Tissue.WHITE_MATTER]
    air = images["mri-t1"][0][:4, :4, :4]
    assert air.mean() < 0.1 * t1[Tissue.WHITE_MATTER]  # Rician noise floor only


def test_head_ct_grey_white_and_bone(head):
    phantom, images, _ = head
    ct = images["ct"][0]
    grey, white = (np.median(ct[_core(phantom, t)]) for t in (Tissue.GREY_MATTER, Tissue.WHITE_MATTER))
    assert grey > white and 30 <= grey <= 50 and 18 <= white <= 38
    assert np.percentile(ct[phantom.labels == Tissue.CORTICAL_BONE], 90) >= 700


# --- DRR -----------------------------------------------------------------------------------------

def test_drr_is_brighter_where_rays_cross_bone(chest):
    phantom, images, _ = chest
    ct = images["ct"][0]
    boneless = ct.copy()
    bone = np.isin(phantom.labels, (Tissue.CORTICAL_BONE, Tissue.CANCELLOUS_BONE))
    boneless[bone] = 40
    with_bone = drr_from_ct(ct, grid=phantom.grid, rng=np.random.default_rng(0))
    without = drr_from_ct(boneless, grid=phantom.grid, rng=np.random.default_rng(0))
    crosses = bone.any(axis=1).T[::-1, :]  # same layout as the DRR: rows superior → inferior, cols right → left
    gain = with_bone.image.astype(float) - without.image.astype(float)
    assert gain[crosses].mean() > 2000 and abs(gain[~crosses].mean()) < gain[crosses].mean() / 4
    # Radiograph polarity: the spine column is brighter than the lung fields beside it at mid-chest.
    image = with_bone.image.astype(float)
    rows = slice(20, 36)
    assert image[rows, 31:33].mean() > image[rows, 14:18].mean() + 5000
    assert with_bone.image.dtype == np.uint16 and images["xray"][1].spacing == pytest.approx((6.0, 6.0))


# --- findings: images, report and labels agree ------------------------------------------------------

def _positive(report: str, keyword: str) -> bool:
    """True when ``keyword`` appears in a sentence that is not a negation."""
    text = re.sub(r"\b(FINDINGS|IMPRESSION):", ".", report.replace("\n", " "))
    for sentence in re.split(r"(?<=[.;])\s+", text):
        if keyword in sentence.lower() and not re.match(r"\s*(no|there is no)\b", sentence.lower()):
            return True
    return False


KEYWORDS = {"cardiomegaly": "cardiomegaly", "effusion": "effusion", "nodule": "nodule", "pneumothorax": "pneumothorax",
            "consolidation": "consolidation", "tumour": "tumour", "ventriculomegaly": "ventriculomegaly"}
DEVICE_WORDS = {"endotracheal_tube": ("endotracheal tube", "et tube"), "enteric_tube": ("enteric tube", "nasogastric tube", "feeding tube"),
                "central_line": ("central venous catheter", "central line"), "pacemaker": ("pacemaker",),
                "sternotomy_wires": ("sternotomy",), "chest_tube": ("chest tube",)}


def _says(report: str, name: str) -> bool:
    """True when the report states finding ``name``: a non-negated keyword, or for support devices a
    sentence naming one."""
    if name == "support_devices":
        return any(_positive(report, word) for words in DEVICE_WORDS.values() for word in words)
    return _positive(report, KEYWORDS[name])


def test_effusion_is_fluid_in_ct_bright_on_t2_and_in_the_report():
    only = dict(NONE["chest"], effusion=1.0)
    phantom, images, report = build_patient(index=3, anatomy="chest", seed=5, size=64, prevalence=only)
    fluid = _core(phantom, Tissue.EFFUSION)
    assert fluid.sum() > 10
    assert -10 <= np.median(images["ct"][0][fluid]) <= 30
    t2 = images["mri-t2"][0]
    assert t2[fluid].mean() > 2 * t2[_core(phantom, Tissue.MUSCLE)].mean()
    assert _positive(report, "effusion") and phantom.findings["effusion"].side in report


def test_other_findings_change_the_tissues():
    everything = {name: 1.0 for name in FINDINGS["chest"]}
    phantom, images, report = build_patient(index=0, anatomy="chest", seed=2, size=64, prevalence=everything)
    counts = np.bincount(phantom.labels.ravel(), minlength=len(Tissue))
    assert counts[Tissue.NODULE] > 0 and counts[Tissue.CONSOLIDATION] > 0 and counts[Tissue.PLEURAL_AIR] > 0
    ct = images["ct"][0]
    assert np.median(ct[_core(phantom, Tissue.PLEURAL_AIR, 0)]) < -900  # air rim without lung markings
    assert np.median(ct[_core(phantom, Tissue.CONSOLIDATION, 0)]) > -300  # soft-tissue density in lung
    assert phantom.measurements["cardiothoracic_ratio"] > 0.5
    for name in FINDINGS["chest"]:
        assert _says(report, name), (name, report)


def test_support_devices_are_bright_on_the_radiograph_void_on_mri_and_named_in_the_report():
    """Devices are drawn on a patient's own anatomy (a separate random stream: with or without them the
    rest of the patient is the same), saturate the CT, stand out on the DRR and are each named."""
    devices = dict(NONE["chest"], support_devices=1.0)
    found = []
    for index in range(12):  # enough patients to meet every kind of device
        with_devices = build_patient(index=index, anatomy="chest", seed=3, size=64, prevalence=devices)
        phantom, images, report = with_devices
        kinds = [device.kind for device in phantom.findings["support_devices"].devices]
        assert kinds, "a patient drawn with support devices has at least one"
        found += kinds
        for device in phantom.findings["support_devices"].devices:
            assert any(word in report.lower() for word in DEVICE_WORDS[device.kind]), (device, report)
            if device.side and device.kind in ("pacemaker", "chest_tube"):
                assert device.side in report.lower()
        device_voxels = np.isin(phantom.labels, (Tissue.METAL, Tissue.TUBING))
        assert device_voxels.sum() > 5
        plain, plain_images, plain_report = build_patient(index=index, anatomy="chest", seed=3, size=64, prevalence=NONE["chest"])
        assert np.array_equal(phantom.labels[~device_voxels], plain.labels[~device_voxels])  # anatomy untouched
        assert images["ct"][0][device_voxels].max() == 3071  # saturates the CT scale
        # No MR signal (tubes in the airway and wires in bone replace tissue that was already dark).
        assert images["mri-t2"][0][device_voxels].mean() <= plain_images["mri-t2"][0][device_voxels].mean()
        if "pacemaker" in kinds:
            assert images["mri-t2"][0][device_voxels].mean() < 0.5 * plain_images["mri-t2"][0][device_voxels].mean()
            can = (phantom.labels == Tissue.METAL).any(axis=1).T[::-1, :]  # DRR layout: rows superior → inferior
            brighter = images["xray"][0].astype(float) - plain_images["xray"][0].astype(float)
            assert brighter[can].mean() > 0.2 * 65535  # a pacemaker is one of the brightest things on the film
    assert set(found) >= {"endotracheal_tube", "enteric_tube", "central_line", "pacemaker", "sternotomy_wires"}


def test_support_devices_have_their_own_random_stream():
    """Adding devices (or changing their prevalence) does not change any other finding of a cohort seed."""
    for index in range(20):
        with_devices, _, _ = build_patient(index=index, anatomy="chest", seed=9, size=32, prevalence={"support_devices": 1.0})
        without, _, _ = build_patient(index=index, anatomy="chest", seed=9, size=32, prevalence={"support_devices": 0.0})
        assert "support_devices" in with_devices.findings and "support_devices" not in without.findings
        assert {k: v for k, v in with_devices.findings.items() if k != "support_devices"} == without.findings


def test_head_tumour_has_oedema_in_every_modality():
    phantom, images, report = build_patient(index=1, anatomy="head", seed=4, size=64, prevalence={"tumour": 1.0, "ventriculomegaly": 0.0})
    oedema, white = phantom.labels == Tissue.OEDEMA, _core(phantom, Tissue.WHITE_MATTER)
    assert oedema.sum() > 10
    mean = {name: (images[name][0][oedema].mean(), images[name][0][white].mean()) for name in ("mri-t1", "mri-t2", "ct")}
    assert mean["mri-t2"][0] > 1.3 * mean["mri-t2"][1]  # T2 bright
    assert mean["mri-t1"][0] < mean["mri-t1"][1]  # T1 dark
    assert mean["ct"][0] < mean["ct"][1]  # slightly hypodense
    assert _positive(report, "tumour") and phantom.findings["tumour"].lobe in report


def test_ventriculomegaly_enlarges_the_ventricles():
    csf = []
    for prevalence in (0.0, 1.0):
        phantom, images, _ = build_patient(index=2, anatomy="head", seed=9, size=32, prevalence={"tumour": 0.0, "ventriculomegaly": prevalence})
        centre = phantom.labels[10:22, 8:24, 14:24]  # the deep brain around the lateral ventricles
        csf.append(int((centre == Tissue.CSF).sum()))
    assert csf[1] > csf[0] * 1.3


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    chest = synthesize_cohort(root / "chest", patients=8, anatomy="chest", seed=1, size=32, workers=0)
    head = synthesize_cohort(root / "head", patients=4, anatomy="head", seed=1, size=32, workers=0)
    return root, chest, head


def test_canonical_folders_labels_match_reports_and_files_are_synthetic(cohorts):
    root, chest, head = cohorts
    assert [f.name for f in chest] == [f"P{i:04d}" for i in range(1, 9)]
    for anatomy, folders in (("chest", chest), ("head", head)):
        for folder in folders:
            names = {p.name for p in folder.iterdir()}
            expected = {"ct.nii.gz", "mri-t1.nii.gz", "mri-t2.nii.gz", "mri-pd.nii.gz", "report.txt", "labels.json"}
            assert names == expected | ({"xray.png"} if anatomy == "chest" else set())
            labels = json.loads((folder / "labels.json").read_text())
            assert list(labels) == list(FINDINGS[anatomy])
            report = io.read_report(folder / "report.txt")
            assert report.synthetic and report.findings and report.impression
            assert (folder / "report.txt").read_text().startswith("#")
            for name, value in labels.items():
                assert _says(report.text, name) == bool(value), (folder, name, report.text)
            ct, ct_meta = io.read(folder / "ct.nii.gz")
            assert ct_meta.synthetic and ct.shape == (32, 32, 32)
            for name in ("mri-t1", "mri-t2", "mri-pd"):
                _, meta = io.read(folder / f"{name}.nii.gz")
                assert meta.synthetic and meta.same_grid(ct_meta)
            if anatomy == "chest":
                xray, meta = io.read(folder / "xray.png")
                assert meta.synthetic and xray.shape == (32, 32) and meta.spacing == pytest.approx((12.0, 12.0))
    assert sum(sum(json.loads((f / "labels.json").read_text()).values()) for f in chest) > 0


def test_same_seed_gives_identical_bytes_whatever_the_workers(cohorts, tmp_path):
    root, chest, _ = cohorts
    again = synthesize_cohort(tmp_path / "again", patients=3, anatomy="chest", seed=1, size=32, workers=2)
    for folder in again:
        for path in sorted(folder.iterdir()):
            assert path.read_bytes() == (root / "chest" / folder.name / path.name).read_bytes(), path
    other = synthesize_patient(tmp_path / "other", index=0, anatomy="chest", seed=2, size=32)
    assert (other.folder / "ct.nii.gz").read_bytes() != (chest[0] / "ct.nii.gz").read_bytes()


def test_invalid_requests_are_refused_with_the_valid_choices(tmp_path):
    with pytest.raises(ValueError, match="chest, head"):
        synthesize_cohort(tmp_path, patients=1, anatomy="knee", seed=0)
    with pytest.raises(ValueError, match="64"):
        synthesize_cohort(tmp_path, patients=1, anatomy="chest", seed=0, size=50)
    with pytest.raises(ValueError, match="cardiomegaly"):
        resolve_prevalence("chest", {"tumour": 0.5})
    with pytest.raises(ValueError, match="probability"):
        resolve_prevalence("chest", {"nodule": 1.5})


def test_reports_only_writes_the_same_report_without_images(tmp_path):
    """A report corpus: each patient's report and labels, the very text the full patient gets, and no image."""
    _, images, report = build_patient(index=4, anatomy="chest", seed=6, size=32)
    phantom, none, same = build_patient(index=4, anatomy="chest", seed=6, size=32, images=False)
    assert none == {} and same == report and "cardiothoracic_ratio" in phantom.measurements and images
    folders = synthesize_cohort(tmp_path / "corpus", patients=5, anatomy="chest", seed=6, size=32, workers=0, reports_only=True)
    assert [sorted(f.name for f in folder.iterdir()) for folder in folders] == [["labels.json", "report.txt"]] * 5
    assert io.read_report(folders[4] / "report.txt").text == report.strip()
    full = synthesize_cohort(tmp_path / "full", patients=1, anatomy="head", seed=6, size=32, workers=0)[0]
    head = synthesize_cohort(tmp_path / "head", patients=1, anatomy="head", seed=6, size=32, workers=0, reports_only=True)[0]
    assert (head / "report.txt").read_bytes() == (full / "report.txt").read_bytes()
    assert json.loads((head / "labels.json").read_text()) == json.loads((full / "labels.json").read_text())
