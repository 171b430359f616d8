"""TextVAE: latent shape and unit RMS, save/reload identity, and exact reconstruction after overfitting."""

from __future__ import annotations

import time

import pytest
import torch

from medm2g_core.models.text_vae import TextVAE, TextVAEConfig, ids_to_texts, texts_to_ids

SENTENCES = [
    "heart size is normal . no effusion .",
    "cardiomegaly with small left effusion .",
    "right upper lobe nodule measuring 8 mm .",
    "no pneumothorax . lungs are clear .",
]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for s in SENTENCES for w in s.split()})
    vocab = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def tiny_config(tokenizer) -> TextVAEConfig:
    return TextVAEConfig.from_tokenizer(tokenizer, max_tokens=16, width=32, heads=2)


def test_config_from_tokenizer(tokenizer):
    config = tiny_config(tokenizer)
    assert (config.pad_id, config.bos_id, config.eos_id) == (0, 1, 2)
    assert config.vocab_size == tokenizer.get_vocab_size()


def test_latents_have_unit_rms_and_noise_only_in_training(tokenizer):
    torch.manual_seed(0)
    vae = TextVAE(tiny_config(tokenizer))
    ids, mask = texts_to_ids(tokenizer, SENTENCES, max_tokens=16, pad_id=0)
    latents = vae.encode(ids, mask)
    assert latents.shape == (4, 8, 32)
    torch.testing.assert_close(latents.pow(2).mean(-1), torch.ones(4, 8), atol=1e-3, rtol=0)
    assert not any("latent_norm.weight" in k for k in vae.state_dict())  # no learned scale
    vae.eval()
    assert torch.equal(vae.loss(ids, mask)["ce"], vae.loss(ids, mask)["ce"])  # no noise in eval


def test_save_reload_identical(tokenizer, tmp_path):
    torch.manual_seed(0)
    vae = TextVAE(tiny_config(tokenizer)).eval()
    ids, mask = texts_to_ids(tokenizer, SENTENCES, max_tokens=16, pad_id=0)
    vae.save_pretrained(tmp_path / "text_vae")
    again = TextVAE.from_pretrained(tmp_path / "text_vae").eval()
    assert torch.equal(vae(ids, mask), again(ids, mask))


def test_overfits_a_handful_of_sentences(tokenizer):
    torch.manual_seed(0)
    config = tiny_config(tokenizer)
    vae = TextVAE(config)
    ids, mask = texts_to_ids(tokenizer, SENTENCES, max_tokens=16, pad_id=0)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=5e-3)
    start = time.perf_counter()
    for _ in range(120):
        out = vae.loss(ids, mask)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        if out["token_accuracy"] == 1.0 and out["ce"] < 0.05:
            break
    vae.eval()
    decoded = vae.decode(vae.encode(ids, mask), max_tokens=16)
    assert ids_to_texts(tokenizer, decoded, eos_id=config.eos_id, pad_id=config.pad_id) == SENTENCES
    assert time.perf_counter() - start < 30


def test_flow_space_centres_and_scales_the_training_latents_and_round_trips(tokenizer, tmp_path):
    torch.manual_seed(0)
    vae = TextVAE(tiny_config(tokenizer)).eval()
    ids, mask = texts_to_ids(tokenizer, SENTENCES, max_tokens=16, pad_id=0)
    latents = vae.encode(ids, mask)
    assert torch.equal(vae.to_flow(latents), latents)  # no flow space recorded: identity (configs saved before it)
    vae.fit_flow_space(latents)
    flow = vae.to_flow(latents)
    torch.testing.assert_close(flow.mean(0), torch.zeros_like(flow[0]), atol=1e-4, rtol=0)
    assert abs(float(flow.pow(2).mean().sqrt()) - 1.0) < 1e-3
    # The spread between reports is a fraction of the raw unit RMS, so the flow space enlarges it.
    assert float(latents.std(0).mean()) < float(flow.std(0).mean())
    torch.testing.assert_close(vae.from_flow(flow), latents, atol=1e-4, rtol=0)
    vae.save_pretrained(tmp_path / "text_vae")
    again = TextVAE.from_pretrained(tmp_path / "text_vae").eval()
    torch.testing.assert_close(again.to_flow(latents), flow, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="at least 2"):
        vae.fit_flow_space(latents[:1])
