"""WordPiece tokenizer trained with Hugging Face ``tokenizers`` on the training reports.

Saved with ``save_pretrained(dir)`` (``tokenizer.json`` + configs, no pickles) and loaded with
``load_tokenizer(dir)`` for the small BERT text encoder; a local Hugging Face encoder folder
(``--text-encoder DIR``) brings its own tokenizer, loaded the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_vocabulary(texts: Iterable[str], *, vocab_size: int) -> dict[str, int]:
    """A deterministic WordPiece vocabulary: special tokens, every character (word-initial and
    ``##``-continuation), then whole words by descending frequency (ties alphabetical).

    ``tokenizers``' ``WordPieceTrainer`` breaks frequency ties in hash-map order, so two trainings
    on the same reports gave different vocabularies (a rerun with the same seed, or a second DDP rank,
    then saw different token ids). Words left out fall back to characters, so nothing maps to [UNK]
    that the training text contained.
    """
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(piece for piece, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    initial = sorted({word[0] for word in words})
    continuation = sorted({f"##{char}" for word in words for char in word[1:]})
    vocabulary: dict[str, int] = {}
    for token in [*SPECIAL_TOKENS, *initial, *continuation]:
        vocabulary.setdefault(token, len(vocabulary))
    for word, _ in sorted(words.items(), key=lambda item: (-item[1], item[0])):
        if len(vocabulary) >= vocab_size:
            break
        vocabulary.setdefault(word, len(vocabulary))
    return vocabulary


def train_wordpiece(texts: Iterable[str], *, vocab_size: int, max_tokens: int) -> Any:
    """Build a lower-casing BERT-style WordPiece tokenizer from the reports → ``PreTrainedTokenizerFast``.

    Deterministic: the same texts (in any order) give the same vocabulary in every process.
    ``max_tokens`` becomes ``model_max_length``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocabulary = build_vocabulary(texts, vocab_size=vocab_size)
    tokenizer = Tokenizer(models.WordPiece(vocabulary, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
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
