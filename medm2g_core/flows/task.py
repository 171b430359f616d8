"""Training tasks of the generative stage, each implementing the loop's ``Task`` protocol.

- ``ImageAutoencoderTask``: the KL autoencoder of one imaging modality (L1 [+ SSIM] + KL [+ patch critic]).
- ``TextVAETask``: the report autoencoder (cross-entropy, token accuracy; validation adds the ROUGE-L of
  decode(encode(report)) on held-out reports).
- ``FlowTask``: one cross-guided diffusion flow (``FlowNetwork``) in pixel or latent space. Its condition
  comes from the frozen aligned encoders (``flows.model.build_condition``); each source modality is
  dropped with ``source_dropout`` and all at once with ``FlowConfig.condition_dropout`` (classifier-free
  guidance). For the first ``warm_start_steps`` it is trained as a regressor of x0 (``warm_start_loss``) from the
  condition at t = T−1 from the noisy input the sampler starts from (the noise path of the denoiser starts zero-initialised),
  then with the DDPM objective of its ``FlowConfig`` (DESIGN §8). Validation: the diffusion loss at
  stratified timesteps with seeded noise (deterministic), and a sample grid / decoded texts written to
  the stage's ``samples/`` folder.

Batches come from ``ImageTextDataset`` (``image``, ``text``) or ``PairSliceDataset`` (``source``,
``target``) of ``medm2g_core.data.datasets``, and ``ReportDataset`` below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from medm2g_core.flows.config import FlowConfig
from medm2g_core.flows.model import FlowNetwork, build_condition, center_channels, encode_channels, expand_keep
from medm2g_core.flows.objective import (
    add_noise,
    diffusion_loss,
    make_noise_scheduler,
    min_snr_weights,
    regression_loss,
    sample_keep_mask,
    training_target,
)
from medm2g_core.modalities import Modality, Pair
from medm2g_core.models.conditioning import assemble_condition


# --------------------------------------------------------------------------- reports
class ReportDataset(Dataset):
    """Report texts of patient records (those with ``report.txt``): items ``{"text", "patient_id"}``."""

    def __init__(self, records: Sequence[Any]):
        from medm2g_core import io

        self.items = [(r.patient_id, io.read_report(r.files[Modality.REPORT]).text) for r in records if Modality.REPORT in r.files]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        patient_id, text = self.items[index % len(self.items)]
        return {"text": text, "patient_id": patient_id}

    @staticmethod
    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"text": [i["text"] for i in items], "patient_id": [i["patient_id"] for i in items]}


# --------------------------------------------------------------------------- autoencoders
def sampler_grid(config: FlowConfig) -> torch.Tensor:
    """The integer timesteps the flow's own sampler visits with ``config.sampling_steps`` (long, descending)."""
    from medm2g_core.sampling.sample import make_sampling_scheduler

    scheduler = make_sampling_scheduler(config)
    scheduler.set_timesteps(config.sampling_steps)
    return scheduler.timesteps.long().clone()


def _images_of(batch: dict[str, Any]) -> torch.Tensor:
    return batch["target"] if "target" in batch else batch["image"]


class ImageAutoencoderTask:
    """Train an ``ImageAutoencoder`` on slices (``PairSliceDataset`` target) or X-rays (``ImageTextDataset``).

    With ``adversarial_weight`` > 0 in its config a ``PatchCritic`` trains beside it (a second trainable module,
    checkpointed for ``--resume`` but not saved with the autoencoder), used from ``adversarial_start`` on.
    Validation reports the loss terms and the reconstruction's PSNR and SSIM ([-1, 1] units, data range 2).
    """

    def __init__(self, autoencoder: nn.Module):
        from medm2g_core.models.autoencoders import PatchCritic

        self.autoencoder = autoencoder
        self.critic = PatchCritic(autoencoder.config) if autoencoder.config.adversarial_weight > 0 else None

    def trainable_modules(self) -> dict[str, nn.Module]:
        modules: dict[str, nn.Module] = {"autoencoder": self.autoencoder}
        if self.critic is not None:
            modules["critic"] = self.critic
        return modules

    def training_step(self, batch: dict[str, Any], *, step: int) -> dict[str, torch.Tensor]:
        critic = self.critic if step >= self.autoencoder.config.adversarial_start else None
        return self.autoencoder.loss(_images_of(batch).to(self._device()), critic=critic)

    def validation_step(self, batch: dict[str, Any]) -> dict[str, float]:
        from medm2g_core.metrics.image import psnr

        images = _images_of(batch).to(self._device())
        losses = self.autoencoder.loss(images)
        reconstruction = self.autoencoder(images).detach().clamp(-1, 1).cpu().numpy()
        reference = images.cpu().numpy()
        return {"loss": float(losses["loss"]), "recon": float(losses["recon"]),
                "psnr": psnr(reconstruction, reference, data_range=2.0), "ssim": reconstruction_ssim(reconstruction, reference)}

    def _device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device


def reconstruction_ssim(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Mean SSIM over the images of a batch (B, C, *S) in [-1, 1] (data range 2, skimage's 7-pixel window)."""
    from medm2g_core.metrics.image import ssim

    return float(np.mean([ssim(p, r, data_range=2.0) for p, r in zip(prediction[:, 0], reference[:, 0])]))


class TextVAETask:
    """Train a ``TextVAE`` on report texts with a tokenizer (the align stage's WordPiece)."""

    def __init__(self, vae: nn.Module, tokenizer: Any):
        self.vae = vae
        self.tokenizer = tokenizer

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"text_vae": self.vae}

    def ids(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        from medm2g_core.models.text_vae import texts_to_ids

        device = next(self.vae.parameters()).device
        ids, mask = texts_to_ids(self.tokenizer, texts, max_tokens=self.vae.config.max_tokens, pad_id=self.vae.config.pad_id)
        return ids.to(device), mask.to(device)

    def training_step(self, batch: dict[str, Any], *, step: int) -> dict[str, torch.Tensor]:
        return self.vae.loss(*self.ids(batch["text"]))

    @torch.no_grad()
    def fit_flow_space(self, texts: Sequence[str], *, weights: dict[str, torch.Tensor] | None = None, batch_size: int = 64) -> None:
        """Record the flow space (``TextVAE.fit_flow_space``) from ``texts`` (the training reports), encoded
        with ``weights`` (the EMA weights inference will load) when given, else the current ones."""
        import copy

        encoder = self.vae.eval()
        if weights is not None:  # a copy: the module itself keeps (and saves) its raw weights beside the EMA file
            encoder = copy.deepcopy(encoder)
            encoder.load_own_state(weights, where="text_vae EMA weights")
        latents = [encoder.encode(*self.ids(texts[start:start + batch_size])) for start in range(0, len(texts), batch_size)]
        self.vae.fit_flow_space(torch.cat(latents))

    def validation_step(self, batch: dict[str, Any]) -> dict[str, float]:
        ids, mask = self.ids(batch["text"])
        losses = self.vae.loss(ids, mask)
        return {"loss": float(losses["loss"]), "token_accuracy": float(losses["token_accuracy"]),
                "rouge_l": self.reconstruction_rouge(batch["text"])}

    @torch.no_grad()
    def reconstruction_rouge(self, texts: Sequence[str]) -> float:
        """ROUGE-L of decode(encode(report)) against the report (R2Gen cleaning, no METEOR)."""
        from medm2g_core.metrics.text import ROUGE_NAME, score_reports
        from medm2g_core.models.text_vae import ids_to_texts

        ids, mask = self.ids(texts)
        decoded = ids_to_texts(self.tokenizer, self.vae.decode(self.vae.encode(ids, mask), max_tokens=self.vae.config.max_tokens),
                               eos_id=self.vae.config.eos_id, pad_id=self.vae.config.pad_id)
        keys = [str(i) for i in range(len(texts))]
        scores = score_reports(dict(zip(keys, decoded)), dict(zip(keys, texts)), meteor=False)
        return float(scores.corpus[ROUGE_NAME])


# --------------------------------------------------------------------------- flows
def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return ((image.float().clamp(-1, 1).cpu().numpy() + 1) * 127.5).round().astype(np.uint8)


def write_grid(path: Path, rows: list[list[torch.Tensor]]) -> Path:
    """A PNG of (H, W) images in [-1, 1], one row per item (e.g. source | sample | target).

    Tiles smaller than 128 px are enlarged by an integer factor (nearest neighbour: pixels stay
    pixels) so that a 64² grid can be judged by eye.
    """
    from medm2g_core import io
    from medm2g_core.types import ImageMeta

    gap = 2
    height, width = rows[0][0].shape[-2:]
    zoom = max(1, 128 // max(height, width))
    columns = max(len(r) for r in rows)
    tile_h, tile_w = height * zoom, width * zoom
    canvas = np.full((len(rows) * (tile_h + gap) - gap, columns * (tile_w + gap) - gap), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            tile = _to_uint8(image.reshape(height, width)).repeat(zoom, axis=0).repeat(zoom, axis=1)
            canvas[r * (tile_h + gap): r * (tile_h + gap) + tile_h, c * (tile_w + gap): c * (tile_w + gap) + tile_w] = tile
    path.parent.mkdir(parents=True, exist_ok=True)
    return io.write(path, canvas, ImageMeta(spacing=(1.0, 1.0), shape=canvas.shape, synthetic=True, units="normalised"))


class FlowTask:
    """One flow's training (see the module docstring).

    Args:
        network: the flow's ``FlowNetwork`` (its shared cross-attention is trained too when
            ``shared_trainable``; otherwise its parameters are frozen).
        shared_layers: with ``shared_trainable``, the indices of the shared layers that train (None = all); the
            others keep ``requires_grad=False`` (layers earlier flows trained, under ``flows.shared: frozen``).
        shared_anchor, anchored_layers: L2-SP guard of ``flows.shared: finetune`` (Li et al. 2018): the training
            loss gains ``shared_anchor / 2 · Σ ‖θ − θ⁰‖²`` over the parameters of ``anchored_layers``, θ⁰ their
            values when the task is built (what earlier flows were trained with); 0 = no guard.
        align: the frozen ``AlignModel`` of the bundle.
        text_vae, tokenizer: report targets (frozen).
        autoencoders: latent flows: modality → frozen ``ImageAutoencoder``.
        warm_start_steps: L1-regression steps before the diffusion objective (``sample`` prediction only): x0 from
            the condition and x_{T-1} at t = T−1, exactly the sampler's first step.
        regression: the plain regression baseline: its (all warm-start) steps see a zero input instead of noise.
        source_dropout: per-source-modality dropout probability (multi-source flows).
        sample_batch: a collated batch of a few validation items for the sample grid.
        gradient_checkpointing: recompute UNet activations in backward.
    """

    def __init__(self, network: FlowNetwork, align: nn.Module, *, text_vae: nn.Module | None = None, tokenizer: Any = None,
                 autoencoders: dict[Modality, nn.Module] | None = None, warm_start_steps: int = 0,
                 source_dropout: float = 0.0, shared_trainable: bool = True, shared_layers: Sequence[int] | None = None,
                 shared_anchor: float = 0.0, anchored_layers: Sequence[int] = (), sample_batch: dict[str, Any] | None = None,
                 gradient_checkpointing: bool = False, regression: bool = False):
        self.network = network
        self.align = align.eval().requires_grad_(False)
        self.text_vae = None if text_vae is None else text_vae.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.autoencoders = {m: ae.eval().requires_grad_(False) for m, ae in (autoencoders or {}).items()}
        self.pair: Pair = network.config.pair
        self.config: FlowConfig = network.config.flow_config
        self.warm_start_steps = warm_start_steps if self.config.prediction_type == "sample" else 0
        self.regression = regression
        self.source_dropout = source_dropout if len(self.pair.sources) > 1 else 0.0
        layers = network.shared.layers
        self.shared_layers = (tuple(sorted(range(len(layers)) if shared_layers is None else set(shared_layers)))
                              if shared_trainable else ())
        self.shared_trainable = bool(self.shared_layers)
        network.shared.requires_grad_(False)
        for index in self.shared_layers:
            layers[index].requires_grad_(True)
        # (parameter, its value before this flow) for the L2-SP guard; the copies follow the parameter's device.
        self.shared_anchor = float(shared_anchor)
        self._anchors = [(p, p.detach().clone()) for index in sorted(set(anchored_layers)) if index in self.shared_layers
                         for p in layers[index].parameters()] if self.shared_anchor else []
        self.sample_batch = sample_batch
        self.alphas_cumprod = make_noise_scheduler(self.config).alphas_cumprod
        self.sampler_timesteps = sampler_grid(self.config) if self.config.timesteps == "sampler" else None
        self._encoder_cache: dict[Modality, dict[Any, tuple[torch.Tensor, torch.Tensor]]] = {}
        if gradient_checkpointing and hasattr(network.denoiser, "unet"):
            network.denoiser.unet.enable_gradient_checkpointing()

    def trainable_modules(self) -> dict[str, nn.Module]:
        modules: dict[str, nn.Module] = {"flow": self.network}
        if self.shared_trainable:
            modules["shared"] = self.network.shared
        return modules

    def on_train_start(self, accelerator: Any) -> None:
        self.align.to(accelerator.device)
        for module in (self.text_vae, *self.autoencoders.values()):
            if module is not None:
                module.to(accelerator.device)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    # -- batches → (sources, x0) ---------------------------------------------------------------
    def sources_of(self, batch: dict[str, Any]) -> dict[Modality, Any]:
        """Source modality → image tensor (B, 2c+1, H, W) or list of report strings."""
        device = self.device
        if "source" in batch:
            per_source = batch["source"].shape[1] // len(self.pair.sources)
            return {m: batch["source"][:, i * per_source:(i + 1) * per_source].to(device) for i, m in enumerate(self.pair.sources)}
        (source,) = self.pair.sources
        return {source: list(batch["text"]) if source is Modality.REPORT else batch["image"].to(device)}

    @torch.no_grad()
    def target_of(self, batch: dict[str, Any]) -> torch.Tensor:
        """x0 the flow generates: image/slice in [-1, 1], its autoencoder latent, or the text latent."""
        if self.pair.target is Modality.REPORT:
            from medm2g_core.models.text_vae import texts_to_ids

            ids, mask = texts_to_ids(self.tokenizer, batch["text"], max_tokens=self.text_vae.config.max_tokens,
                                     pad_id=self.text_vae.config.pad_id)
            return self.text_vae.to_flow(self.text_vae.encode(ids.to(self.device), mask.to(self.device)))
        image = (batch["target"] if "target" in batch else batch["image"]).to(self.device)
        if self.config.latent:
            return self.autoencoders[self.pair.target].encode(image)
        return image

    def condition_inputs(self, sources: dict[Modality, Any], *, keys: Sequence[Any] | None = None):
        """``ConditionInputs`` of a batch; ``keys`` (one hashable per item, e.g. (patient, slice)) lets the frozen
        aligned encoders' outputs be computed once per training item and reused on every later visit."""
        spatial = None
        if self.config.latent and self.network.config.spatial:
            with torch.no_grad():
                spatial = {m: encode_channels(self.autoencoders[m], v) for m, v in sources.items()}
        encoded = self._cached_encodings(sources, keys) if keys is not None else None
        inputs, _ = build_condition(self.network, self.align, sources, spatial=spatial, encoded=encoded)
        return inputs

    def _cached_encodings(self, sources: dict[Modality, Any], keys: Sequence[Any]) -> dict[Modality, tuple]:
        from medm2g_core.flows.model import encode_aligned, family_of

        encoded = {}
        for modality, value in sources.items():
            if not isinstance(value, torch.Tensor) or family_of(modality) in self.network.condition_encoders:
                continue
            cache = self._encoder_cache.setdefault(modality, {})
            missing = [i for i, key in enumerate(keys) if key not in cache]
            if missing:
                pooled, tokens, _ = encode_aligned(self.align, modality, value[missing],
                                                   context_slices=self.network.config.context_slices)
                for row, i in enumerate(missing):
                    cache[keys[i]] = (pooled[row].cpu(), tokens[row].cpu())
            rows = [cache[key] for key in keys]
            encoded[modality] = (torch.stack([r[0] for r in rows]).to(self.device),
                                 torch.stack([r[1] for r in rows]).to(self.device), None)
        return encoded

    @staticmethod
    def item_keys(batch: dict[str, Any]) -> list[Any] | None:
        """(patient, slice) per item of a ``PairSliceDataset`` batch, whose sources are not augmented; else None."""
        if "source" not in batch or "slice_index" not in batch or "patient_id" not in batch:
            return None
        return [(str(p), int(k)) for p, k in zip(batch["patient_id"], batch["slice_index"])]

    # -- the loop's contract ----------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], *, step: int) -> dict[str, torch.Tensor]:
        sources = self.sources_of(batch)
        x0 = self.target_of(batch)
        batch_size = x0.shape[0]
        keep = sample_keep_mask(batch_size, num_sources=len(self.pair.sources), source_dropout=self.source_dropout,
                                condition_dropout=0.0, device=x0.device)
        unconditional = torch.rand(batch_size, 1, device=x0.device) < self.config.condition_dropout
        # A registered flow's unconditional branch still sees its source image: with guidance 1 that branch is never
        # sampled, and learning to invent a CT without the MRI spent a tenth of every batch.
        keep = expand_keep(keep, spatial=self.network.config.spatial, unconditional=unconditional)
        condition = assemble_condition(self.condition_inputs(sources, keys=self.item_keys(batch)), keep=keep)
        if step < self.warm_start_steps:
            timesteps = torch.full((batch_size,), self.config.num_train_timesteps - 1, device=x0.device, dtype=torch.long)
            # The input the sampler's first step sees (x_{T-1}, pure noise up to ᾱ_{T-1}); the regression baseline
            # (regression=True) sees zeros, a plain regressor of x0 from the condition.
            start = torch.zeros_like(x0) if self.regression else add_noise(
                x0, torch.randn_like(x0), timesteps, alphas_cumprod=self.alphas_cumprod)
            prediction = self.network(start, timesteps, condition=condition)
            loss = regression_loss(prediction, x0, norm=self.config.warm_start_loss)
            return self._guarded({"loss": loss, self.config.warm_start_loss: loss.detach()})
        noise = torch.randn_like(x0)
        timesteps = torch.randint(0, self.config.num_train_timesteps, (batch_size,), device=x0.device)
        if self.sampler_timesteps is not None:  # half of the batch on the levels the sampler visits
            grid = self.sampler_timesteps.to(x0.device)
            on_grid = grid[torch.randint(0, len(grid), (batch_size,), device=x0.device)]
            timesteps = torch.where(torch.arange(batch_size, device=x0.device) % 2 == 0, on_grid, timesteps)
        return self._guarded({"loss": self._diffusion_loss(x0, noise, timesteps, condition)})

    def _guarded(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``out`` with the L2-SP pull of the anchored shared layers added to its loss (reported as ``shared_l2sp``)."""
        if not self._anchors:
            return out
        for index, (parameter, anchor) in enumerate(self._anchors):
            if anchor.device != parameter.device:
                self._anchors[index] = (parameter, anchor.to(parameter.device))
        penalty = 0.5 * self.shared_anchor * sum(((p - a) ** 2).sum() for p, a in self._anchors)
        return {**out, "loss": out["loss"] + penalty, "shared_l2sp": penalty.detach()}

    def _diffusion_loss(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, condition) -> torch.Tensor:
        noisy = add_noise(x0, noise, timesteps, alphas_cumprod=self.alphas_cumprod)
        prediction = self.network(noisy, timesteps, condition=condition)
        target = training_target(x0, noise, timesteps, alphas_cumprod=self.alphas_cumprod, prediction_type=self.config.prediction_type)
        weights = None
        if self.config.min_snr_gamma:
            weights = min_snr_weights(timesteps, alphas_cumprod=self.alphas_cumprod, gamma=self.config.min_snr_gamma,
                                      prediction_type=self.config.prediction_type)
        return diffusion_loss(prediction, target, weights=weights, norm=self.config.loss)

    def validation_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Diffusion loss at stratified timesteps (t_i = (i + ½)/B · T) with the caller-seeded noise,
        every source kept; deterministic for a given batch and seed."""
        sources = self.sources_of(batch)
        x0 = self.target_of(batch)
        batch_size = x0.shape[0]
        T = self.config.num_train_timesteps
        timesteps = ((torch.arange(batch_size, device=x0.device) + 0.5) / batch_size * T).long().clamp(0, T - 1)
        noise = torch.randn_like(x0)
        condition = assemble_condition(self.condition_inputs(sources))
        return {"loss": float(self._diffusion_loss(x0, noise, timesteps, condition))}

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], *, seed: int = 0, samples: int = 1) -> torch.Tensor:
        """K samples (K, B, ...) of the flow's x0 space for a batch, with the current weights."""
        from medm2g_core.sampling.sample import make_sampling_scheduler, sample_many

        sources = self.sources_of(batch)
        x0 = self.target_of(batch)
        was_training = self.network.training
        self.network.eval()
        try:
            drawn = sample_many(
                self.network, make_sampling_scheduler(self.config), tuple(x0.shape), samples=samples,
                condition=self.condition_inputs(sources), steps=self.config.sampling_steps, guidance=self.config.guidance,
                generator=torch.Generator(device=x0.device).manual_seed(seed), prediction_type=self.config.prediction_type,
                clip_sample=self.config.clip_sample, clip_range=self.config.clip_range, eta=self.config.eta, device=x0.device,
            )
        finally:
            self.network.train(was_training)
        return drawn.samples

    def on_validation(self, step: int, out_dir: Path) -> None:
        """Write ``out_dir/step-NNNNNNNN.png`` (source | sample | target per row) or ``.txt`` (report targets)."""
        if not self.sample_batch:
            return
        batch = self.sample_batch
        drawn = self.generate(batch, seed=0)[0]
        out_dir = Path(out_dir)
        if self.pair.target is Modality.REPORT:
            from medm2g_core.flows.model import decode_texts
            from medm2g_core.serialization import write_text

            texts = decode_texts(self.text_vae, self.tokenizer, drawn[None])
            lines = [f"# {self.pair} samples at step {step} (generated | reference)", ""]
            for patient, generated, reference in zip(batch.get("patient_id", []), texts, batch["text"]):
                lines += [f"## {patient}", f"GENERATED: {generated[0]}", f"REFERENCE: {' '.join(reference.split())}", ""]
            write_text(out_dir / f"step-{step:08d}.txt", "\n".join(lines))
            return
        target = self.target_of(batch)
        if self.config.latent:
            autoencoder = self.autoencoders[self.pair.target]
            drawn, target = autoencoder.decode(drawn).clamp(-1, 1), autoencoder.decode(target).clamp(-1, 1)
        rows = []
        sources = self.sources_of(batch)
        for i in range(target.shape[0]):
            row = [center_channels(v[i:i + 1], context_slices=self.network.config.context_slices)[0, 0]
                   for v in sources.values() if isinstance(v, torch.Tensor)]
            rows.append(row + [drawn[i, 0], target[i, 0]])
        write_grid(out_dir / f"step-{step:08d}.png", rows)
