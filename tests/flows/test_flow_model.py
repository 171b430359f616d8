"""FlowNetwork save/load contract and the condition path (per-source dropout, composition)."""

from __future__ import annotations

import torch

from medm2g_core.flows.model import FlowNetwork, FlowNetworkConfig, expand_keep, window_channels
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


def test_window_channels_map_hu_windows_from_the_normalised_ct():
    hu = torch.tensor([-1024.0, -50.0, 0.0, 40.0, 80.0, 500.0, 3000.0]).view(1, 1, 1, 7)
    normalised = (hu + 1024.0) / 4024.0 * 2 - 1  # data.ct_window [-1024, 3000]
    out = window_channels(normalised, (-1024.0, 3000.0), [(0.0, 80.0), (-160.0, 240.0)])
    assert out.shape == (1, 3, 1, 7)
    assert torch.equal(out[:, :1], normalised)
    torch.testing.assert_close(out[0, 1, 0], torch.tensor([-1.0, -1.0, -1.0, 0.0, 1.0, 1.0, 1.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[0, 2, 0], torch.tensor([-1.0, -0.45, -0.2, 0.0, 0.2, 1.0, 1.0]), atol=1e-4, rtol=0)


def test_recipe_refuses_a_reversed_ct_window():
    import pytest

    from medm2g_core.errors import ConfigError
    from medm2g_core.flows.recipe import parse_flow_recipe

    assert parse_flow_recipe({"ct_source_windows": [[0, 80]]}).ct_source_windows
    with pytest.raises(ConfigError, match=r"low < high, e.g. \[0, 80\]"):
        parse_flow_recipe({"ct_source_windows": [[80, 0]]})


def test_a_flow_saved_before_normalisation_was_recorded_loads_with_the_defaults(tmp_path):
    """Bundles written before ``normalisation`` / ``ct_source_windows`` existed were trained with the
    default CT window and MRI percentiles and one CT channel: they load as exactly that."""
    import json

    network = tiny()
    network.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("normalisation", "ct_source_windows"):
        config.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(config))
    reloaded = FlowNetwork.from_pretrained(tmp_path, shared=network.shared)
    assert reloaded.config.normalise_options == {"ct_window": (-1024.0, 3000.0), "mri_percentiles": (0.5, 99.5), "ct_units": "HU"}
    assert reloaded.config.ct_source_windows == []


def test_batch_condition_norm_spreads_nearly_identical_sources_and_round_trips(tmp_path):
    """Pooled embeddings that differ by 2 % of their length (as the aligned X-ray embeddings do) reach the
    projection at unit spread under ``condition_norm: batch``; the running statistics are saved with the flow."""
    from dataclasses import replace

    torch.manual_seed(0)
    plain = tiny()
    network = FlowNetwork(replace(plain.config, condition_norm="batch"), shared=plain.shared)
    generator = torch.Generator().manual_seed(1)
    pooled = torch.ones(16, 8) + 0.02 * torch.randn(16, 8, generator=generator)
    tokens = torch.randn(16, 5, 12, generator=generator)

    network.pooled_projection.load_state_dict(plain.pooled_projection.state_dict())  # the same projection in both

    def spread(net):
        out = net.semantic_source(Modality.MRI_T2, pooled=pooled, tokens=tokens, mask=None).pooled
        return float((out - out.mean(0)).pow(2).mean().sqrt())

    network.train()
    with torch.no_grad():
        standardised, raw = spread(network), spread(plain.train())
    assert standardised > 10 * raw, (standardised, raw)
    assert float(network.pooled_norms["mri"].running_mean.abs().sum()) > 0  # statistics were collected
    network.eval().save_pretrained(tmp_path)
    reloaded = FlowNetwork.from_pretrained(tmp_path, shared=network.shared).eval()
    assert reloaded.config.condition_norm == "batch"
    with torch.no_grad():
        a = network.semantic_source(Modality.MRI_T2, pooled=pooled[:1], tokens=tokens[:1], mask=None)
        b = reloaded.semantic_source(Modality.MRI_T2, pooled=pooled[:1], tokens=tokens[:1], mask=None)
    assert torch.equal(a.tokens, b.tokens)


def test_unknown_condition_norm_is_refused():
    import pytest

    from medm2g_core.errors import ConfigError
    from medm2g_core.flows.recipe import FlowRecipe

    with pytest.raises(ConfigError, match="condition_norm"):
        FlowRecipe(condition_norm="layer")
