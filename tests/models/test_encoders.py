"""Image-encoder pooling: the generalised mean sits between the mean and the max, and learns its exponent."""

import pytest
import torch

from medm2g_core.models.encoders import GeMPool, ImageEncoder, ImageEncoderConfig


def test_gem_is_the_mean_at_p1_and_tends_to_the_max():
    features = torch.rand(2, 3, 4, 4) + 0.1
    pool = GeMPool(p=1.0)
    assert torch.allclose(pool(features), features.flatten(2).mean(dim=2), atol=1e-6)
    with torch.no_grad():
        pool.p.fill_(60.0)
    assert torch.allclose(pool(features), features.flatten(2).amax(dim=2), rtol=0.05)


def test_gem_lets_one_bright_token_count_where_the_mean_dilutes_it():
    """A pacemaker-sized finding: one token of 64 lit up."""
    background = torch.full((1, 1, 8, 8), 0.1)
    lit = background.clone()
    lit[..., 2, 5] = 2.0
    mean_gain = float(lit.mean() - background.mean())
    gem_gain = float(GeMPool(p=3.0)(lit) - GeMPool(p=3.0)(background))
    assert gem_gain > 10 * mean_gain


def test_gem_exponent_is_learned_and_negative_features_are_safe():
    pool = GeMPool()
    features = torch.randn(4, 8, 5, 5, requires_grad=True)  # SiLU outputs dip below zero; randn goes further
    out = pool(features)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert pool.p.grad is not None and torch.isfinite(pool.p.grad) and torch.isfinite(features.grad).all()


def test_encoder_refuses_unknown_pooling_and_builds_gem():
    encoder = ImageEncoder(ImageEncoderConfig(pooling="gem", widths=(8, 16)))
    assert isinstance(encoder.pool, GeMPool)
    pooled, tokens = encoder(torch.randn(2, 1, 16, 16))
    assert pooled.shape == (2, 64) and tokens.shape == (2, 16, 16)
    with pytest.raises(ValueError, match="gem"):
        ImageEncoder(ImageEncoderConfig(pooling="max"))
