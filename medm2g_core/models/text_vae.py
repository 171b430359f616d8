"""``TextVAE``: the report autoencoder whose latent the text flows diffuse in (DESIGN.md §1.4, §8).

What worked at small scale (§8), not the Optimus KL-VAE: a plain noise-regularised autoencoder.

- Encoder: token + position embeddings → 2-layer ``nn.TransformerEncoder`` (width 128) → 8 learned
  queries attend to the token states → linear to 32 dims → LayerNorm WITHOUT learned scale
  (``elementwise_affine=False``), so every latent token has zero mean and unit RMS and diffusion sees
  unit variance. In training only, Gaussian noise σ = 0.2 is added to the latent. No KL, no word dropout.
- Decoder: a 2-layer GPT-2 (``transformers.GPT2LMHeadModel``, ``add_cross_attention=True``) that
  attends to the (projected) latent tokens by **cross-attention**, not as a prefix.

**Flow space.** A report flow does not diffuse the raw latent: most of each latent token is the same for
every report (the template), and what tells reports apart was measured at a fifth of the unit RMS — below
the training noise σ. ``fit_flow_space`` records, after training, the per-element mean of the training
reports' latents (``latent_shift``) and the RMS of what is left (``latent_scale``), as Stable Diffusion
records its autoencoder's shift and scaling factors; ``to_flow``/``from_flow`` map between the two spaces.
A config without them (saved before they existed) is the identity.

Token ids are content tokens without BOS/EOS (``texts_to_ids`` makes them from a ``tokenizers``
Tokenizer or a Hugging Face fast tokenizer); the decoder is fed ``[bos] + ids`` and predicts
``ids + [eos]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medm2g_core.models.pretrained import PretrainedModule


@dataclass
class TextVAEConfig:
    """Sizes and special token ids. ``vocab_size``/ids come from the tokenizer (``from_tokenizer``)."""

    vocab_size: int = 2000
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    max_tokens: int = 128
    width: int = 128
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    latent_tokens: int = 8
    latent_dim: int = 32
    latent_noise: float = 0.2
    # Std of the learned latent queries at init. At 0.02 (the default, what DESIGN §8 measured) the queries barely
    # move the pooling attention, so the latent tokens of a report start out nearly equal (RMS 0.004 apart vs 0.29
    # between reports) and differ only as the queries grow; 1.0 starts them apart. ``demo --real`` sets 1.0 for
    # the IU reports: R2Gen val reconstruction ROUGE-L 0.597 vs 0.509 at 900 steps (one seed).
    query_init_std: float = 0.02
    latent_shift: list[list[float]] | None = None  # flow space (``fit_flow_space``): per-element mean of training latents
    latent_scale: float = 1.0                      # RMS of the training latents around that mean

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **changes: Any) -> "TextVAEConfig":
        """Read vocabulary size and pad/bos/eos ids from a ``tokenizers.Tokenizer`` or HF fast tokenizer.

        Looks for ``[PAD]``/``<pad>``, ``[CLS]``/``<bos>``/``<s>`` and ``[SEP]``/``<eos>``/``</s>``.
        """
        vocab = tokenizer.get_vocab()

        def find(*names: str) -> int:
            for name in names:
                if name in vocab:
                    return int(vocab[name])
            raise ValueError(f"tokenizer has none of the special tokens {names}; add one or pass its id explicitly")

        size = tokenizer.get_vocab_size() if hasattr(tokenizer, "get_vocab_size") else len(tokenizer)
        values = dict(vocab_size=size, pad_id=find("[PAD]", "<pad>"), bos_id=find("[CLS]", "<bos>", "<s>", "[BOS]"),
                      eos_id=find("[SEP]", "<eos>", "</s>", "[EOS]"))
        values.update(changes)
        return cls(**values)


def texts_to_ids(tokenizer: Any, texts: Sequence[str], *, max_tokens: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Content token ids (no special tokens), right-padded: ``ids`` (B, L) long, ``mask`` (B, L) bool."""
    # A Hugging Face fast tokenizer encodes through its ``tokenizers`` backend: the same ids, without the warning
    # that a report is longer than the align encoder's ``model_max_length`` (the VAE's own limit applies here).
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if hasattr(backend, "encode_batch"):
        rows = [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    else:
        rows = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    rows = [row[:max_tokens] for row in rows]
    length = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return ids, mask


def ids_to_texts(tokenizer: Any, ids: torch.Tensor, *, eos_id: int, pad_id: int) -> list[str]:
    """Decode generated ids (B, L), cutting each row at its first EOS."""
    texts = []
    for row in ids.tolist():
        if eos_id in row:
            row = row[: row.index(eos_id)]
        row = [t for t in row if t != pad_id]
        texts.append(tokenizer.decode(row))
    return texts


class TextVAE(PretrainedModule):
    """Report autoencoder: ``encode(ids, mask) -> (B, latent_tokens, latent_dim)``, ``decode(latents) -> ids``."""

    config_class = TextVAEConfig

    def __init__(self, config: TextVAEConfig):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        self.config = config
        width = config.width
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.position_embedding = nn.Embedding(config.max_tokens, width)
        layer = nn.TransformerEncoderLayer(width, config.heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.encoder_layers, enable_nested_tensor=False)
        self.encoder_norm = nn.LayerNorm(width)
        self.queries = nn.Parameter(torch.randn(1, config.latent_tokens, width) * config.query_init_std)
        self.pool = nn.MultiheadAttention(width, config.heads, batch_first=True)
        self.to_latent = nn.Linear(width, config.latent_dim)
        self.latent_norm = nn.LayerNorm(config.latent_dim, elementwise_affine=False)  # unit RMS, no learned scale
        self.from_latent = nn.Linear(config.latent_dim, width)
        self.decoder = GPT2LMHeadModel(GPT2Config(
            vocab_size=config.vocab_size, n_positions=config.max_tokens + 1, n_embd=width, n_layer=config.decoder_layers,
            n_head=config.heads, add_cross_attention=True, bos_token_id=config.bos_id, eos_token_id=config.eos_id,
            pad_token_id=config.pad_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
        ))

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Clean latents (B, latent_tokens, latent_dim), each token zero-mean unit-RMS. ``ids``/``mask`` (B, L)."""
        if ids.shape[1] > self.config.max_tokens:
            raise ValueError(f"{ids.shape[1]} tokens exceed max_tokens {self.config.max_tokens}; truncate with texts_to_ids")
        mask = mask.bool()
        positions = torch.arange(ids.shape[1], device=ids.device)
        states = self.token_embedding(ids) + self.position_embedding(positions)[None]
        states = self.encoder_norm(self.encoder(states, src_key_padding_mask=~mask))
        pooled, _ = self.pool(self.queries.expand(ids.shape[0], -1, -1), states, states, key_padding_mask=~mask, need_weights=False)
        return self.latent_norm(self.to_latent(pooled))

    def to_flow(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents (B, T, d) → the flow's space: centred on the training reports' mean, unit RMS."""
        if self.config.latent_shift is None:
            return latents
        shift = torch.tensor(self.config.latent_shift, dtype=latents.dtype, device=latents.device)
        return (latents - shift) / self.config.latent_scale

    def from_flow(self, values: torch.Tensor) -> torch.Tensor:
        """Inverse of ``to_flow``: flow-space values (…, T, d) → latents the decoder reads."""
        if self.config.latent_shift is None:
            return values
        shift = torch.tensor(self.config.latent_shift, dtype=values.dtype, device=values.device)
        return values * self.config.latent_scale + shift

    @torch.no_grad()
    def fit_flow_space(self, latents: torch.Tensor) -> None:
        """Record ``latent_shift``/``latent_scale`` from clean latents (N, T, d) of the training reports."""
        if latents.shape[0] < 2:
            raise ValueError("fit_flow_space needs the latents of at least 2 reports")
        shift = latents.float().mean(0)
        self.config.latent_shift = [[round(float(v), 6) for v in row] for row in shift.tolist()]
        self.config.latent_scale = max(float((latents.float() - shift).pow(2).mean().sqrt()), 1e-3)

    def _decoder_logits(self, latents: torch.Tensor, inputs: torch.Tensor, input_mask: torch.Tensor | None) -> torch.Tensor:
        return self.decoder(input_ids=inputs, attention_mask=input_mask, encoder_hidden_states=self.from_latent(latents),
                            use_cache=False).logits

    def loss(self, ids: torch.Tensor, mask: torch.Tensor, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``{"loss", "ce", "token_accuracy"}``; σ-noise on the latent in training mode only."""
        latents = self.encode(ids, mask)
        if self.training and self.config.latent_noise > 0:
            latents = latents + self.config.latent_noise * torch.randn(latents.shape, generator=generator, device=latents.device)
        mask = mask.bool()
        batch = ids.shape[0]
        lengths = mask.sum(1)
        bos = torch.full((batch, 1), self.config.bos_id, dtype=ids.dtype, device=ids.device)
        inputs = torch.cat([bos, torch.where(mask, ids, torch.full_like(ids, self.config.pad_id))], 1)
        targets = torch.cat([ids, torch.full((batch, 1), self.config.pad_id, dtype=ids.dtype, device=ids.device)], 1)
        targets = torch.where(torch.cat([mask, mask.new_zeros(batch, 1)], 1), targets, torch.full_like(targets, -100))
        targets[torch.arange(batch), lengths] = self.config.eos_id
        input_mask = torch.cat([mask.new_ones(batch, 1), mask], 1).long()
        logits = self._decoder_logits(latents, inputs, input_mask)
        ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        valid = targets != -100
        accuracy = ((logits.argmax(-1) == targets) & valid).sum() / valid.sum().clamp_min(1)
        return {"loss": ce, "ce": ce, "token_accuracy": accuracy.detach()}

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, max_tokens: int = 128, greedy: bool = True, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Token ids (B, ≤ max_tokens) from latents (B, latent_tokens, latent_dim); rows end with EOS then pad."""
        batch, device = latents.shape[0], latents.device
        max_tokens = min(max_tokens, self.config.max_tokens)
        sequence = torch.full((batch, 1), self.config.bos_id, dtype=torch.long, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        for _ in range(max_tokens):
            # No KV cache: sequences are short and the decoder has 2 layers; recomputing keeps this loop plain.
            logits = self._decoder_logits(latents, sequence, torch.ones_like(sequence))[:, -1]
            if greedy:
                token = logits.argmax(-1)
            else:
                probabilities = torch.softmax(logits / temperature, -1)
                token = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
            token = torch.where(finished, torch.full_like(token, self.config.pad_id), token)
            sequence = torch.cat([sequence, token[:, None]], 1)
            finished |= token == self.config.eos_id
            if bool(finished.all()):
                break
        return sequence[:, 1:]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next-token logits (B, L+1, vocab) from the clean latent (for tests/eval)."""
        latents = self.encode(ids, mask)
        batch = ids.shape[0]
        bos = torch.full((batch, 1), self.config.bos_id, dtype=ids.dtype, device=ids.device)
        inputs = torch.cat([bos, torch.where(mask.bool(), ids, torch.full_like(ids, self.config.pad_id))], 1)
        return self._decoder_logits(latents, inputs, torch.cat([mask.new_ones(batch, 1).long(), mask.long()], 1))
