"""Generation between 2D images and reports: X-ray → report, report → X-ray, and compositions.

``generate_one`` turns sources (``(array, ImageMeta)`` images, ``Report``s or text) into one call of a
loaded flow (``MedM2G.generate`` picks the flow and calls it; ``jobs.generate`` runs it over files).
Several sources are **composed** into one condition (CoDi-style): the first one picks the flow, the
others join as extra sources with ``weights``. Reports come back with FINDINGS/IMPRESSION sections;
X-rays as 16-bit arrays marked synthetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from medm2g_core.errors import ConfigError, InputError
from medm2g_core.inference.processing import Processing
from medm2g_core.io.text import Report
from medm2g_core.modalities import Modality, parse_modality
from medm2g_core.types import ImageMeta, ProgressEvent, ProgressFn, no_progress

TARGETS = (Modality.REPORT, Modality.XRAY)


@dataclass
class GenerationResult:
    """What ``MedM2G.generate`` made: K reports (``to="report"``) or K images (``to="xray"``).

    Attributes:
        modality: the target.
        reports: K ``Report``s (report targets), else [].
        images: K arrays ``(rows, cols)`` uint16 (X-ray targets), else [].
        meta: the images' ``ImageMeta`` (synthetic, derivation noted), None for reports.
        flow: the flow used; warnings: to show the user; seconds: sampling time.
    """

    modality: Modality
    reports: list[Report] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    meta: ImageMeta | None = None
    flow: str = ""
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def text(self) -> str:
        """The first sample's report text ("" for image targets)."""
        return self.reports[0].text if self.reports else ""

    @property
    def image(self) -> np.ndarray | None:
        """The first sample's image (None for report targets)."""
        return self.images[0] if self.images else None


def source_modality(item: Any) -> Modality:
    """The modality of a source: text and ``Report`` → report; an image by its meta (2D: X-ray)."""
    if isinstance(item, (str, Report)):
        return Modality.REPORT
    _, meta = item
    if meta.modality:
        try:
            return parse_modality(meta.modality)
        except ValueError:
            pass
    return Modality.XRAY if len(meta.shape) == 2 else Modality.CT


def _image_tensor(item: tuple[np.ndarray, ImageMeta], modality: Modality, *, size: int, channels: int,
                  processing: Processing) -> Any:
    """An image source → (1, channels, size, size) in [-1, 1]; volumes give their middle axial slice
    (with ``channels // 2`` context slices per side)."""
    import torch

    from medm2g_core.data.transforms import resize_image

    array = np.asarray(item[0])
    if not np.all(np.isfinite(array)):
        raise InputError(None, f"the {modality.value} image holds NaN or infinite values", "fix the image first")
    values, _ = processing.preprocess(array, modality)
    context = channels // 2
    if values.ndim == 3:
        middle, depth = values.shape[2] // 2, values.shape[2]
        stack = np.stack([values[:, :, min(max(middle + o, 0), depth - 1)] for o in range(-context, context + 1)])
    elif values.ndim == 2:
        stack = np.repeat(values[None], channels, axis=0)
    else:
        raise InputError(None, f"cannot use a {values.ndim}D {modality.value} array as a source", "pass a 2D image or a 3D volume")
    return torch.as_tensor(resize_image(stack, size))[None]


def generate_one(flow: Any, items: Sequence[Any], *, samples: int = 1, seed: int = 0, steps: int | None = None,
                 guidance: float | None = None, weights: Sequence[float] | None = None, bundle_name: str = "",
                 progress: ProgressFn = no_progress) -> GenerationResult:
    """Generate ``samples`` outputs of the loaded ``flow``'s target from composed ``items``, in the order of
    ``source_modality(item)`` per item (see ``MedM2G.generate``)."""
    target = flow.pair.target
    modalities = [source_modality(item) for item in items]
    channels = 1 + 2 * int(getattr(flow, "context_slices", 0) or 0)
    processing = Processing.of(flow)
    inputs: dict[Modality, Any] = {}
    for modality, item in zip(modalities, items):
        if modality is Modality.REPORT:
            text = item.text if isinstance(item, Report) else str(item)
            if not text.strip():
                raise InputError(None, "the report text is empty", "give the report text or a report.txt with FINDINGS/IMPRESSION")
            inputs[modality] = [text.strip()]
        else:
            inputs[modality] = _image_tensor(item, modality, size=int(flow.image_size), channels=channels, processing=processing)
    kwargs: dict[str, Any] = {"samples": samples, "seed": seed, "steps": steps, "guidance": guidance}
    if weights is not None:
        if len(weights) != len(modalities):
            raise ConfigError(f"got {len(weights)} weights for {len(modalities)} sources; give one per --from")
        kwargs["weights"] = {m: float(w) for m, w in zip(modalities, weights)}
    prediction = flow.predict(inputs, **kwargs)
    progress(ProgressEvent(task="generate", completed=1, total=1))
    if target is Modality.REPORT:
        texts = (prediction.texts or [[]])[0]
        return GenerationResult(modality=target, reports=[as_report(t) for t in texts], flow=flow.pair.name)
    from medm2g_core._version import __version__

    state = processing.target_state(target)
    images = [processing.postprocess(prediction.samples[k, 0, 0].detach().float().cpu().clamp(-1, 1).numpy(), target, state)
              for k in range(prediction.samples.shape[0])]
    size = images[0].shape
    meta = ImageMeta(
        spacing=(1.0, 1.0), shape=tuple(size), units="a.u.", modality=Modality.XRAY.value, source_format="png", synthetic=True,
        extra={"derivation": f"medm2g {__version__} {flow.pair.name} generation with bundle {bundle_name}",
               "pixel_spacing": "unknown (generated at the flow's image size)", "seed": seed},
    )
    return GenerationResult(modality=target, images=images, meta=meta, flow=flow.pair.name)


def as_report(text: str) -> Report:
    """Generated text → a ``Report`` with FINDINGS and IMPRESSION headings.

    The text decoder's vocabulary is lower case and puts headings mid-line (``... impression : ...``), so
    the split is made here rather than by the line-anchored report parser."""
    import re

    flat = " ".join(text.split())
    match = re.search(r"\bimpression\s*:", flat, flags=re.IGNORECASE)
    findings, impression = (flat[: match.start()], flat[match.end():]) if match else (flat, "")
    findings = re.sub(r"^\s*findings\s*:\s*", "", findings, flags=re.IGNORECASE).strip()
    return Report.from_text(f"FINDINGS: {findings}\nIMPRESSION: {impression.strip()}", synthetic=True)
