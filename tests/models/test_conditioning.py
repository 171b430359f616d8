"""Condition assembly (pure), shared cross-attention, environment tokens fed by the partner."""

from __future__ import annotations

import torch

from medm2g_core.models.conditioning import (
    ConditionInputs,
    EnvironmentEncoder,
    EnvironmentEncoderConfig,
    SemanticSource,
    SharedCrossAttention,
    assemble_condition,
    joint_predictions,
    stack_spatial,
)
from tiny_models import C, perturb, tiny_image_denoiser, tiny_shared, tiny_text_denoiser


def two_sources(batch: int = 3) -> ConditionInputs:
    torch.manual_seed(0)
    a = SemanticSource(torch.randn(batch, 2, C), pooled=torch.ones(batch, C), weight=0.7, name="xray")
    b = SemanticSource(torch.randn(batch, 3, C), pooled=torch.full((batch, C), 3.0), weight=0.3, name="report")
    return ConditionInputs(semantic=[a, b], spatial=[torch.randn(batch, 1, 4, 4)])


def test_tokens_concatenated_and_pooled_weighted():
    inputs = two_sources()
    condition = assemble_condition(inputs)
    assert condition.tokens.shape == (3, 5, C) and condition.mask.all()
    torch.testing.assert_close(condition.pooled, torch.full((3, C), 0.7 * 1 + 0.3 * 3))
    assert condition.presence.tolist() == [[1.0]] * 3


def test_dropped_source_masked_zeroed_and_pooled_renormalised():
    inputs = two_sources()
    keep = torch.tensor([[True, False, True], [False, False, False], [False, True, False]])
    condition = assemble_condition(inputs, keep=keep)
    assert condition.mask[0].tolist() == [True, True, False, False, False]
    assert condition.tokens[0, 2:].abs().sum() == 0
    torch.testing.assert_close(condition.pooled[0], torch.ones(C))  # only source a: weight renormalised
    torch.testing.assert_close(condition.pooled[1], torch.zeros(C))  # nothing kept → zeros (null)
    torch.testing.assert_close(condition.pooled[2], torch.full((C,), 3.0))
    assert condition.spatial[0][1].abs().sum() == 0 and condition.spatial[0][0].abs().sum() > 0
    assert condition.presence[:, 0].tolist() == [1.0, 0.0, 0.0]


def test_missing_sources_and_spatial_stack():
    inputs = two_sources()
    inputs = ConditionInputs(semantic=[inputs.semantic[0], None], spatial=[None])
    condition = assemble_condition(inputs)
    assert condition.tokens.shape == (3, 2, C) and condition.presence.sum() == 0
    stacked = stack_spatial(condition, channels=(1,), like=torch.zeros(3, 1, 4, 4))
    assert stacked.shape == (3, 2, 4, 4) and stacked.abs().sum() == 0  # zeros + presence 0


def test_shared_layers_are_the_same_objects_in_every_flow():
    shared = tiny_shared()
    image_a, image_b = tiny_image_denoiser(shared), tiny_image_denoiser(shared, spatial_channels=(1,))
    text = tiny_text_denoiser(shared)
    attn_a = image_a.unet.mid_block.attentions[0].transformer_blocks[0].attn2
    attn_b = image_b.unet.mid_block.attentions[0].transformer_blocks[0].attn2
    assert attn_a is attn_b is shared.layers[0] is text.blocks[0].cross_attention
    assert text.blocks[1].cross_attention is shared.layers[1]
    # adaptive parameters are per flow
    assert image_a.unet.class_embedding is not image_b.unet.class_embedding
    assert image_a.null_token is not image_b.null_token


def test_environment_tokens_come_from_the_partner():
    torch.manual_seed(0)
    shared = tiny_shared()
    image, text = tiny_image_denoiser(shared).eval(), tiny_text_denoiser(shared).eval()
    perturb(text)
    env_image = EnvironmentEncoder(EnvironmentEncoderConfig(kind="image", channels=1, condition_dim=C, patch_size=4))
    env_text = EnvironmentEncoder(EnvironmentEncoderConfig(kind="tokens", channels=6, condition_dim=C))
    noisy_image, noisy_text = torch.randn(2, 1, 16, 16), torch.randn(2, 4, 6)
    t = torch.tensor([10, 500])

    def run(image_latent, text_latent):
        with torch.no_grad():
            return joint_predictions(denoisers=[image, text], noisy=[image_latent, text_latent], timesteps=t,
                                     environment_encoders=[env_image, env_text])

    base = run(noisy_image, noisy_text)
    # The image diffuser is conditioned on tokens of the TEXT latent (its partner), 4 tokens.
    assert base["environment"][0][0].tokens.shape == (2, 4, C)
    assert base["environment"][1][0].tokens.shape == (2, 16, C)
    # Changing the partner's latent changes the prediction...
    other_text = run(noisy_image, torch.randn(2, 4, 6))
    assert not torch.allclose(other_text["predictions"][0], base["predictions"][0])
    # ...while changing a diffuser's own latent leaves the environment tokens it receives unchanged.
    other_image = run(torch.randn(2, 1, 16, 16), noisy_text)
    assert torch.equal(other_image["environment"][0][0].tokens, base["environment"][0][0].tokens)
    assert not torch.equal(other_image["environment"][1][0].tokens, base["environment"][1][0].tokens)


def test_shared_and_environment_save_reload(tmp_path):
    shared = tiny_shared()
    shared.save_pretrained(tmp_path / "shared")
    again = SharedCrossAttention.from_pretrained(tmp_path / "shared")
    hidden, tokens = torch.randn(2, 5, 16), torch.randn(2, 3, C)
    assert torch.equal(shared.layers[1](hidden, encoder_hidden_states=tokens), again.layers[1](hidden, encoder_hidden_states=tokens))
    env = EnvironmentEncoder(EnvironmentEncoderConfig(kind="image", channels=1, condition_dim=C, patch_size=4))
    env.save_pretrained(tmp_path / "env")
    latent = torch.randn(1, 1, 8, 8)
    assert torch.equal(env(latent).tokens, EnvironmentEncoder.from_pretrained(tmp_path / "env")(latent).tokens)
