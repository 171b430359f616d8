from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medm2g_core.align.losses import batch_normalize, cross_correlation, info_nce, visual_invariance_loss


def _ce(logits, target):
    return -math.log(math.exp(logits[target]) / sum(math.exp(v) for v in logits))


def test_info_nce_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # normalised: (1, 0), (.7071, .7071)
    s = 2.0
    r = 1 / math.sqrt(2)
    # a→b rows: a0·b = (1, r), a1·b = (0, r); b→a rows: b0·a = (1, 0), b1·a = (r, r)
    expected_ab = (_ce([s * 1, s * r], 0) + _ce([0, s * r], 1)) / 2
    expected_ba = (_ce([s * 1, 0], 0) + _ce([s * r, s * r], 1)) / 2
    got = info_nce(a, b, logit_scale=s)
    assert got.item() == pytest.approx(0.5 * (expected_ab + expected_ba), abs=1e-6)


def test_info_nce_is_symmetric_and_temperature_matters():
    torch.manual_seed(0)
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    one_way = F.cross_entropy(10 * F.normalize(a, dim=1) @ F.normalize(b, dim=1).T, torch.arange(5))
    other_way = F.cross_entropy(10 * F.normalize(b, dim=1) @ F.normalize(a, dim=1).T, torch.arange(5))
    assert not torch.isclose(one_way, other_way)  # the directions differ, so both must be included
    assert torch.isclose(info_nce(a, b, logit_scale=10.0), 0.5 * (one_way + other_way))
    assert torch.isclose(info_nce(a, b, logit_scale=10.0), info_nce(b, a, logit_scale=10.0))
    assert not torch.isclose(info_nce(a, b, logit_scale=10.0), info_nce(a, b, logit_scale=1.0))
    scale = torch.tensor(3.0, requires_grad=True)
    info_nce(a, b, logit_scale=scale).backward()
    assert scale.grad is not None and scale.grad.abs() > 0  # the temperature is learnable


def test_info_nce_global_negatives_and_missing_rows():
    torch.manual_seed(1)
    a_all, b_all = torch.randn(6, 4), torch.randn(6, 4)
    # process 1 of 2 holds rows 3..5; its loss over global negatives equals the full-batch loss rows 3..5
    local = info_nce(a_all[3:], b_all[3:], logit_scale=5.0, a_all=a_all, b_all=b_all, offset=3)
    logits_ab = 5 * F.normalize(a_all, dim=1) @ F.normalize(b_all, dim=1).T
    expected = 0.5 * (F.cross_entropy(logits_ab[3:], torch.arange(3, 6)) + F.cross_entropy(logits_ab.T[3:], torch.arange(3, 6)))
    assert torch.isclose(local, expected, atol=1e-6)
    valid = torch.tensor([True, True, False, True, True, True])
    masked = info_nce(a_all, b_all, logit_scale=5.0, valid_all=valid)
    keep = valid.nonzero().squeeze(1)
    assert torch.isclose(masked, info_nce(a_all[keep], b_all[keep], logit_scale=5.0), atol=1e-6)
    none = info_nce(a_all, b_all, logit_scale=5.0, valid_all=torch.zeros(6, dtype=torch.bool))
    assert none.item() == 0.0


def test_visual_invariance_loss_hand_computed():
    z1 = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    z2 = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    # batch-normalised: z1 → [[-1, 1], [1, -1]], z2 → [[-1, -1], [1, 1]] (eps → 0)
    c = cross_correlation(z1, z2, eps=0.0)
    assert torch.allclose(c, torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
    # on-diagonal (1-1)² + (1-(-1))² = 4; off-diagonal 1² + (-1)² = 2
    assert visual_invariance_loss(z1, z2, off_diagonal_weight=0.5, eps=0.0).item() == pytest.approx(4 + 0.5 * 2)
    assert visual_invariance_loss(z1, z1, off_diagonal_weight=0.0, eps=0.0).item() == pytest.approx(0.0)
    assert torch.allclose(batch_normalize(z1, eps=0.0).std(0, unbiased=False), torch.ones(2))


def test_info_nce_semantic_targets_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    s, w = 3.0, 0.5
    same = torch.tensor([[True, False, True], [False, True, False], [True, False, True]])  # rows 0 and 2 read alike
    # anchor 0: target (1 − w)·e0 + w·(½ e0 + ½ e2) = (.75, 0, .25); anchor 1: e1; anchor 2: (.25, 0, .75)
    targets = torch.tensor([[0.75, 0.0, 0.25], [0.0, 1.0, 0.0], [0.25, 0.0, 0.75]])
    logits = s * F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    expected = 0.5 * (-(targets * F.log_softmax(logits, 1)).sum(1).mean() - (targets * F.log_softmax(logits.T, 1)).sum(1).mean())
    got = info_nce(a, b, logit_scale=s, same_findings=same, semantic_weight=w)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    # weight 0, or only the diagonal alike, is the plain one-hot InfoNCE
    plain = info_nce(a, b, logit_scale=s)
    assert torch.isclose(info_nce(a, b, logit_scale=s, same_findings=same, semantic_weight=0.0), plain)
    assert torch.isclose(info_nce(a, b, logit_scale=s, same_findings=torch.eye(3, dtype=torch.bool), semantic_weight=w), plain)


def test_info_nce_semantic_targets_skip_missing_columns():
    torch.manual_seed(2)
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    same = torch.ones(4, 4, dtype=torch.bool)
    valid = torch.tensor([True, False, True, True])
    masked = info_nce(a, b, logit_scale=4.0, valid_all=valid, same_findings=same, semantic_weight=0.6)
    keep = valid.nonzero().squeeze(1)
    alone = info_nce(a[keep], b[keep], logit_scale=4.0, same_findings=same[keep][:, keep], semantic_weight=0.6)
    assert torch.isfinite(masked) and torch.isclose(masked, alone, atol=1e-6)
