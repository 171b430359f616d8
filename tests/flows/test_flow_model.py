"""FlowNetwork save/load contract and the condition path (per-source dropout, composition)."""

from __future__ import annotations

import torch

from medm2g_core.flows.model import FlowNetwork, FlowNetworkConfig, expand_keep
from medm2g_core.modalities import Modality
from medm2g_core.models.conditioning import SharedCrossAttention, SharedCrossAttentionConfig, assemble_condition


def tiny(shared=None) -> FlowNetwork:
    shared = shared or SharedCrossAttention(SharedCrossAttentionConfig(num_layers=2, query_dim=16, condition_dim=16, heads=2))
    config = FlowNetworkConfig(sources=("mri-t2", "mri-pd"), target="mri-t1", spatial=True, image_size=16, embed_dim=8,
                               token_dims={"mri": 12}, flow={"sampling_steps": 2},
                               denoiser={"sample_size": 16, "block_out_channels": [8, 16], "norm_num_groups": 4, "condition_dim": 16,
                                         "attention_heads": 2, "spatial_channels": [1, 1]})
    return FlowNetwork(config, shared=shared)


def condition(network, *, pooled_scale=1.0):
    generator = torch.Generator().manual_seed(0)
    pooled = torch.randn(2, 8, generator=generator) * pooled_scale
    tokens = torch.randn(2, 5, 12, generator=generator)
    semantic = [network.semantic_source(m, pooled=pooled, tokens=tokens, mask=None) for m in (Modality.MRI_T2, Modality.MRI_PD)]
    from medm2g_core.models.conditioning import ConditionInputs

    return ConditionInputs(semantic=semantic, spatial=[torch.randn(2, 1, 16, 16, generator=generator)] * 2)


def test_save_load_roundtrip_is_identical_and_excludes_shared(tmp_path):
    torch.manual_seed(0)
    network = tiny()
    with torch.no_grad():
        for p in network.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    network.save_pretrained(tmp_path)
    from medm2g_core.serialization import load_weights

    assert not any(k.startswith("denoiser.unet.mid_block.attentions.0.transformer_blocks.0.attn2") for k in load_weights(tmp_path / "model.safetensors"))
    reloaded = FlowNetwork.from_pretrained(tmp_path, shared=network.shared)
    noisy = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        cond = assemble_condition(condition(network))
        assert torch.equal(network.eval()(noisy, 10, condition=cond), reloaded.eval()(noisy, 10, condition=cond))
    assert reloaded.config.pair.name == "mri-t2+mri-pd__mri-t1"


def test_dropping_a_modality_drops_its_semantic_and_spatial_parts():
    keep = torch.tensor([[True, False], [False, False]])
    assert expand_keep(keep, spatial=True).tolist() == [[True, False, True, False], [False, False, False, False]]
    network = tiny()
    cond = assemble_condition(condition(network), keep=expand_keep(keep, spatial=True))
    assert cond.presence.tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert torch.all(cond.spatial[1] == 0) and torch.all(cond.spatial[0][1] == 0)


def test_pooled_embedding_is_scale_invariant_aligned_direction():
    network = tiny()
    a = network.semantic_source(Modality.MRI_T2, pooled=torch.ones(1, 8), tokens=None, mask=None)
    b = network.semantic_source(Modality.MRI_T2, pooled=5 * torch.ones(1, 8), tokens=None, mask=None)
    assert torch.allclose(a.pooled, b.pooled) and a.tokens.shape == (1, 1, 16)
    # A family the flow was not trained with contributes only its aligned pooled token.
    c = network.semantic_source(Modality.REPORT, pooled=torch.ones(1, 8), tokens=torch.ones(1, 4, 99), mask=None)
    assert c.tokens.shape == (1, 1, 16)
