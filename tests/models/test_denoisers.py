"""Denoisers: shapes, condition use, shared weights saved once, save/reload identity, warm-start init."""

from __future__ import annotations

import pytest
import torch

from medm2g_core.errors import BundleError
from medm2g_core.models.conditioning import ConditionInputs, SemanticSource, SharedCrossAttention, assemble_condition
from medm2g_core.models.denoisers import ImageDenoiser, TextLatentDenoiser
from medm2g_core.serialization import load_weights
from tiny_models import C, W, perturb, tiny_image_denoiser, tiny_shared, tiny_text_denoiser


def condition_for(batch: int, *, spatial: bool, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = ConditionInputs(
        semantic=[SemanticSource(torch.randn(batch, 3, C, generator=generator))],
        spatial=[torch.randn(batch, 1, 16, 16, generator=generator)] if spatial else [],
    )
    return assemble_condition(inputs)


@pytest.mark.parametrize("backbone", ["unet2d", "conv"])
def test_image_denoiser_shapes_and_condition_matters(backbone):
    torch.manual_seed(0)
    model = tiny_image_denoiser(tiny_shared(), spatial_channels=(1,), backbone=backbone).eval()
    perturb(model)
    assert model.config.in_channels == 3  # target + spatial + presence
    noisy = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        a = model(noisy, torch.tensor([1, 900]), condition=condition_for(2, spatial=True))
        b = model(noisy, torch.tensor([1, 900]), condition=condition_for(2, spatial=True, seed=1))
        c = model(noisy, 5, condition=condition_for(2, spatial=True))
    assert a.shape == noisy.shape and not torch.allclose(a, b) and c.shape == noisy.shape


def test_text_denoiser_shapes_and_gradient_reaches_shared_layers():
    torch.manual_seed(0)
    shared = tiny_shared()
    model = tiny_text_denoiser(shared)
    perturb(model)
    out = model(torch.randn(2, 4, 6), torch.tensor([3, 700]), condition=condition_for(2, spatial=False))
    assert out.shape == (2, 4, 6)
    out.pow(2).mean().backward()
    assert shared.layers[0].to_k.weight.grad is not None and shared.layers[0].to_k.weight.grad.abs().sum() > 0


def test_wrong_widths_are_refused():
    with pytest.raises(ValueError, match="query_dim"):
        tiny_image_denoiser(tiny_shared(), block_out_channels=(8, 32))


@pytest.mark.parametrize("kind", ["image", "image-conv", "text"])
def test_save_reload_identical_and_shared_saved_once(kind, tmp_path):
    torch.manual_seed(0)
    shared = tiny_shared()
    model = (tiny_image_denoiser(shared, spatial_channels=(1,), backbone="conv" if kind == "image-conv" else "unet2d")
             if kind != "text" else tiny_text_denoiser(shared)).eval()
    kind = "image" if kind == "image-conv" else kind
    perturb(model)
    cls = ImageDenoiser if kind == "image" else TextLatentDenoiser
    noisy = torch.randn(2, 1, 16, 16) if kind == "image" else torch.randn(2, 4, 6)
    condition = condition_for(2, spatial=kind == "image")

    shared.save_pretrained(tmp_path / "shared")
    model.save_pretrained(tmp_path / "flow")
    saved = load_weights(tmp_path / "flow" / "model.safetensors")
    shared_ids = {id(p) for p in shared.parameters()}
    shared_names = {n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in shared_ids}
    assert shared_names and not shared_names & set(saved)  # shared layers excluded from the flow's file

    shared_again = SharedCrossAttention.from_pretrained(tmp_path / "shared")
    again = cls.from_pretrained(tmp_path / "flow", shared=shared_again).eval()
    with torch.no_grad():
        assert torch.equal(model(noisy, torch.tensor([4, 600]), condition=condition),
                           again(noisy, torch.tensor([4, 600]), condition=condition))
    # A second flow loaded against the same shared object shares it literally.
    other = cls.from_pretrained(tmp_path / "flow", shared=shared_again)
    assert set(map(id, other.shared.parameters())) == set(map(id, again.shared.parameters()))


def test_mismatched_weights_are_a_bundle_error(tmp_path):
    shared = tiny_shared()
    tiny_image_denoiser(shared).save_pretrained(tmp_path / "flow")
    (tmp_path / "flow" / "config.json").write_text(
        (tmp_path / "flow" / "config.json").read_text().replace('"spatial_channels": []', '"spatial_channels": [1]'))
    with pytest.raises(BundleError, match="do not match"):
        ImageDenoiser.from_pretrained(tmp_path / "flow", shared=shared)


def test_zero_init_noise_path_makes_a_regressor():
    torch.manual_seed(0)
    for model, shape in ((tiny_image_denoiser(tiny_shared(), spatial_channels=(1,)), (2, 1, 16, 16)),
                         (tiny_image_denoiser(tiny_shared(), spatial_channels=(1,), backbone="conv"), (2, 1, 16, 16)),
                         (tiny_text_denoiser(tiny_shared()), (2, 4, 6))):
        model.eval()
        perturb(model)
        model.zero_init_noise_path()
        condition = condition_for(2, spatial=len(shape) == 4)
        with torch.no_grad():
            a = model(torch.randn(shape), torch.tensor([0, 10]), condition=condition)
            b = model(torch.randn(shape), torch.tensor([999, 500]), condition=condition)
        torch.testing.assert_close(a, b)  # output depends on the condition only


@pytest.mark.parametrize("kind", ["image", "image-conv", "text"])
def test_dropped_source_tokens_do_not_reach_the_output(kind):
    torch.manual_seed(0)
    shared = tiny_shared()
    model = (tiny_image_denoiser(shared, backbone="conv" if kind == "image-conv" else "unet2d")
             if kind != "text" else tiny_text_denoiser(shared)).eval()
    kind = "image" if kind == "image-conv" else kind
    perturb(model)
    noisy = torch.randn(2, 1, 16, 16) if kind == "image" else torch.randn(2, 4, 6)
    kept = SemanticSource(torch.randn(2, 2, C))
    keep = torch.tensor([[True, False], [True, False]])

    def run(dropped_tokens):
        inputs = ConditionInputs(semantic=[kept, SemanticSource(dropped_tokens)])
        with torch.no_grad():
            return model(noisy, torch.tensor([7, 70]), condition=assemble_condition(inputs, keep=keep))

    torch.testing.assert_close(run(torch.randn(2, 3, C)), run(torch.randn(2, 3, C) * 10))
    # masked, not merely zeroed: identical to giving only the kept source
    with torch.no_grad():
        alone = model(noisy, torch.tensor([7, 70]), condition=assemble_condition(ConditionInputs(semantic=[kept])))
    torch.testing.assert_close(run(torch.randn(2, 3, C)), alone, atol=1e-5, rtol=1e-5)


def test_conv_backbone_ties_the_shared_layers_and_gets_their_gradient():
    torch.manual_seed(0)
    shared = tiny_shared()
    model = tiny_image_denoiser(shared, spatial_channels=(1,), backbone="conv")
    assert model.cross_attention_points == 1 and model.unet.attention["down1"].layer is shared.layers[0]
    perturb(model)
    model(torch.randn(2, 1, 16, 16), torch.tensor([3, 700]), condition=condition_for(2, spatial=True)).pow(2).mean().backward()
    assert shared.layers[0].to_k.weight.grad.abs().sum() > 0


def test_conv_backbone_refuses_sizes_it_cannot_halve():
    with pytest.raises(ValueError, match="divisible"):
        tiny_image_denoiser(tiny_shared(), backbone="conv", sample_size=18, block_out_channels=(8, 8, W))
    with pytest.raises(ValueError, match="backbone"):
        tiny_image_denoiser(tiny_shared(), backbone="vit")
