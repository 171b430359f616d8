"""WordPiece tokenizer trained with Hugging Face ``tokenizers`` on the training reports.

Saved with ``save_pretrained(dir)`` (``tokenizer.json`` + configs, no pickles) and loaded with
``load_tokenizer(dir)`` for the small BERT text encoder; a local Hugging Face encoder folder
(``--text-encoder DIR``) brings its own tokenizer, loaded the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_wordpiece(texts: Iterable[str], *, vocab_size: int, max_tokens: int) -> Any:
    """Train a lower-casing BERT-style WordPiece tokenizer → ``PreTrainedTokenizerFast``.

    Deterministic for the same texts in the same order (callers sort them). ``max_tokens`` becomes
    ``model_max_length``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_tokens,
    )


def load_tokenizer(directory: str | Path) -> Any:
    """A fast tokenizer from a local folder (offline; never downloads)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True, use_fast=True)
