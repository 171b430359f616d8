"""``AlignModel``: the aligned encoders of every modality, the learnable temperature, the tokenizer.

Saved as ``align/{config.json, model.safetensors, tokenizer/}`` (+ ``text_encoder/config.json`` for a
pretrained Hugging Face text encoder, so the bundle never needs the original folder again).
``AlignModel.from_pretrained(dir)`` rebuilds it exactly; nothing is unpickled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from medm2g_core.bundle import TOKENIZER
from medm2g_core.errors import BundleError, ConfigError
from medm2g_core.modalities import Modality, parse_modality
from medm2g_core.models.encoders import ImageEncoder, ImageEncoderConfig, TextEncoder
from medm2g_core.serialization import load_config, load_state_strict, load_weights, save_config, save_weights

CLASS_NAME = "AlignModel"


@dataclass(frozen=True)
class AlignModelConfig:
    """Everything needed to rebuild an ``AlignModel`` (saved as ``config.json``).

    Attributes:
        embed_dim: shared embedding dimension.
        families: image encoder families ("xray", "ct", "mri"; ``Modality.encoder_family``).
        image_widths / image_token_dim / spatial_dims / image_pooling / pool_grid: ``ImageEncoderConfig``
            of each family (``pooling``, ``pool_grid``; a config without them loads as "mean").
        text_encoder: "bert" (small BERT from scratch) or "pretrained" (architecture in ``text_encoder/``).
        text_source: where the pretrained encoder came from (informational).
        text_width / text_layers / text_heads: small-BERT size.
        vocab_size: tokenizer vocabulary size actually used.
        max_tokens: texts are truncated to this many tokens.
        temperature_init: initial τ; ``log_logit_scale = log(1/τ)``.
        learn_temperature: whether τ is trained.
    """

    embed_dim: int = 64
    families: tuple[str, ...] = ("xray", "ct", "mri")
    image_widths: tuple[int, ...] = (16, 32, 64)
    image_token_dim: int = 0
    spatial_dims: int = 2
    image_pooling: str = "mean"
    pool_grid: int = 8
    text_encoder: str = "bert"
    text_source: str = ""
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    vocab_size: int = 1000
    max_tokens: int = 96
    temperature_init: float = 0.07
    learn_temperature: bool = True


class AlignModel(nn.Module):
    """Text hub + one image encoder per family, projected to one ``embed_dim`` space.

    ``encode_text(texts) -> (pooled (B, D), tokens (B, L, H), mask (B, L))`` and
    ``encode_image(images (B, 1, H, W), modality) -> (pooled (B, D), tokens (B, N, C))``; pooled
    embeddings are not normalised (the losses and retrieval normalise). ``logit_scale`` = 1/τ.
    """

    def __init__(self, config: AlignModelConfig, *, tokenizer: Any, text_encoder: TextEncoder):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.text = text_encoder
        self.images = nn.ModuleDict(
            {
                family: ImageEncoder(
                    ImageEncoderConfig(
                        in_channels=1,
                        widths=tuple(config.image_widths),
                        embed_dim=config.embed_dim,
                        token_dim=config.image_token_dim,
                        spatial_dims=config.spatial_dims,
                        pooling=config.image_pooling,
                        pool_grid=config.pool_grid,
                    )
                )
                for family in config.families
            }
        )
        self.log_logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / config.temperature_init)), requires_grad=config.learn_temperature
        )

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        *,
        align: Any,
        modalities: Sequence[Modality | str],
        reports: Sequence[str],
        text_encoder_dir: str | Path | None = None,
        image_size: int = 64,
    ) -> "AlignModel":
        """A fresh model from the recipe's ``AlignConfig``.

        Args:
            align: ``medm2g_core.config.AlignConfig``.
            modalities: imaging modalities to serve (their encoder families are built).
            reports: training reports; the WordPiece tokenizer is trained on them (sorted, so every
                process trains the same one). Ignored with ``text_encoder_dir``.
            text_encoder_dir: a local Hugging Face encoder folder (loaded offline) instead of small BERT.
            image_size: pixels per side the encoders see (sizes the attention pool's positional grid).
        """
        families = tuple(dict.fromkeys((parse_modality(m) if isinstance(m, str) else m).encoder_family for m in modalities))
        if text_encoder_dir is None and align.text_encoder != "bert":
            text_encoder_dir = align.text_encoder
        if text_encoder_dir is not None:
            from transformers import AutoModel

            from medm2g_core.models.text_tokenizer import load_tokenizer

            directory = Path(text_encoder_dir)
            if not (directory / "config.json").is_file():
                raise ConfigError(f"--text-encoder {directory}: not a Hugging Face model folder (config.json missing)")
            tokenizer = load_tokenizer(directory)
            backbone = AutoModel.from_pretrained(str(directory), local_files_only=True, use_safetensors=True)
            text = TextEncoder(backbone, embed_dim=align.embed_dim)
            if align.freeze_text_backbone:
                text.backbone.requires_grad_(False)
            kind, source, vocab = "pretrained", str(directory), len(tokenizer)
        else:
            from medm2g_core.models.text_tokenizer import train_wordpiece

            if not reports:
                raise ConfigError("alignment needs reports to train its tokenizer; the training split has none")
            tokenizer = train_wordpiece(sorted(reports), vocab_size=align.vocab_size, max_tokens=align.max_tokens)
            vocab = len(tokenizer)
            text = TextEncoder.small_bert(
                vocab_size=vocab, width=align.text_width, layers=align.text_layers, heads=align.text_heads,
                max_tokens=align.max_tokens, embed_dim=align.embed_dim,
            )
            kind, source = "bert", ""
        config = AlignModelConfig(
            embed_dim=align.embed_dim,
            families=families,
            image_widths=tuple(align.image_widths),
            image_token_dim=align.image_token_dim,
            image_pooling=align.image_pooling,
            pool_grid=max(1, image_size // 2 ** len(align.image_widths)),
            text_encoder=kind,
            text_source=source,
            text_width=align.text_width,
            text_layers=align.text_layers,
            text_heads=align.text_heads,
            vocab_size=vocab,
            max_tokens=align.max_tokens,
            temperature_init=align.temperature_init,
            learn_temperature=align.learn_temperature,
        )
        return cls(config, tokenizer=tokenizer, text_encoder=text)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json``, ``model.safetensors``, ``tokenizer/`` (and ``text_encoder/config.json``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_config(directory, self.config, class_name=CLASS_NAME)
        self.tokenizer.save_pretrained(str(directory / TOKENIZER))
        for leftover in (directory / TOKENIZER).glob("*.bin"):
            leftover.unlink()  # never leave pickle-looking files in a bundle
        if self.config.text_encoder == "pretrained":
            self.text.backbone.config.to_json_file(str(directory / "text_encoder_config.json"))
            (directory / "text_encoder").mkdir(exist_ok=True)
            (directory / "text_encoder_config.json").replace(directory / "text_encoder" / "config.json")
        save_weights(directory / "model.safetensors", self.state_dict(), metadata={"format": "pt", "class": CLASS_NAME})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> "AlignModel":
        """Rebuild from ``save_pretrained``'s folder (offline, safetensors only)."""
        from medm2g_core.models.text_tokenizer import load_tokenizer

        directory = Path(directory)
        config = load_config(directory, AlignModelConfig, class_name=CLASS_NAME)
        if not (directory / TOKENIZER).is_dir():
            raise BundleError(f"{directory}/tokenizer is missing; the align component is incomplete — retrain it")
        tokenizer = load_tokenizer(directory / TOKENIZER)
        if config.text_encoder == "pretrained":
            from transformers import AutoConfig

            hf_config = AutoConfig.from_pretrained(str(directory / "text_encoder"), local_files_only=True)
            text = TextEncoder.from_hf_config(hf_config, embed_dim=config.embed_dim)
        else:
            text = TextEncoder.small_bert(
                vocab_size=config.vocab_size, width=config.text_width, layers=config.text_layers, heads=config.text_heads,
                max_tokens=config.max_tokens, embed_dim=config.embed_dim,
            )
        model = cls(config, tokenizer=tokenizer, text_encoder=text)
        load_state_strict(model, load_weights(directory / "model.safetensors"), where=str(directory))
        return model.to(device).eval()

    # -- encoding --------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.log_logit_scale.device

    @property
    def logit_scale(self) -> torch.Tensor:
        """1/τ, clamped to τ ≥ 0.01 (CLIP)."""
        return self.log_logit_scale.exp().clamp(max=100.0)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.config.max_tokens, return_tensors="pt",
            return_token_type_ids=False,
        )
        return {"input_ids": encoded["input_ids"].to(self.device), "attention_mask": encoded["attention_mask"].to(self.device)}

    def encode_text(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reports → pooled (B, D), hidden tokens (B, L, H), attention mask (B, L) (1 = token)."""
        encoded = self.tokenize(texts)
        pooled, tokens = self.text(encoded["input_ids"], encoded["attention_mask"])
        return pooled, tokens, encoded["attention_mask"]

    def encode_image(self, images: torch.Tensor, modality: Modality | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised slices (B, 1, H, W) in [-1, 1] → pooled (B, D), tokens (B, N, C)."""
        modality = parse_modality(modality) if isinstance(modality, str) else modality
        family = modality.encoder_family
        if family not in self.images:
            raise ConfigError(f"this align model has no {family} encoder (it serves {', '.join(self.images)}); retrain with that modality")
        return self.images[family](images.to(self.device))
