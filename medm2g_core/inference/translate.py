"""Volume translation (MRI ↔ CT, MRI contrasts): slices through a flow and back onto the input's grid.

``translate_volume`` is the per-volume algorithm (the ``MedM2G.translate`` facade calls it;
``jobs.translate`` runs it over files, folders and stdin). ``translate_volume_jointly`` is the same algorithm for
two flows of one source sampled in one loop by their joint stage (``MedM2G.translate_jointly``).

Per volume:

1. **Canonical frame.** The array is permuted/flipped to the axis order closest to the LPS world
   axes (``nibabel.orientations.io_orientation``), so axial slices are ``volume[:, :, k]`` whatever
   the file's storage order (sagittal acquisitions, LPS- or RAS-stored NIfTI, oblique affines); the
   exact inverse permutation is applied before writing. Phantom cohorts are stored in that frame
   already, so this is the identity for them.
2. **Normalisation** per source modality (``inference.processing``: CT HU window, MRI
   percentiles), the same as in training.
3. **Slices** ``k`` with ``context_slices`` neighbours per side (clamped at the ends) stacked as
   channels in the training order ``[src0 k-c..k+c, src1 k-c..k+c, ...]``, resized to the flow's
   ``image_size``.
4. **Sampling** in batches of ``batch_size`` slices. Each slice's noise comes from its own seed,
   ``slice_seed(seed, k)``, so the output is identical whatever the batch size. With ``mirror`` each batch is
   also run mirrored across the canonical left–right axis (the same seeds) and the mirrored prediction, flipped
   back, is averaged with the plain one (test-time mirroring, as nnU-Net does by default; for left–right
   symmetric anatomy such as the head). It averages out the errors the network does not make symmetrically, for
   twice the sampling time; the std map then pools both passes' samples (with one sample each: half their
   difference, where the network disagrees with its mirrored self).
5. **Reassembly**: each slice is resized back to its original in-plane size, the mean (and the
   per-voxel std of ``samples`` > 1 samples: an uncertainty map) denormalised to physical units — HU
   for CT, clipped to ``CT_HU_RANGE`` — and restacked; the inverse reorientation puts it back on the
   input grid, and the output's ``ImageMeta`` is the input's geometry unchanged (spacing, origin,
   direction, shape) with ``synthetic=True``, the target's modality/units and
   ``extra["derivation"]`` naming medm2g, the flow and the bundle.

Slice consistency: a 2D flow sees each slice independently, so neighbouring slices can disagree
(stripes in sagittal views). Flows trained with ``context_slices > 0`` see the neighbours (2.5D)
and are the remedy; overlapping slabs would only matter for 3D patch models, which this version
does not have, so slices are not processed twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from medm2g_core.errors import InputError
from medm2g_core.inference.processing import Processing
from medm2g_core.modalities import Modality, parse_modality
from medm2g_core.types import ImageMeta, ProgressEvent, ProgressFn, no_progress



@dataclass
class TranslationResult:
    """A translated volume on the input's grid.

    Attributes:
        image: ``(i, j, k)`` float32 in the target's physical units (HU for CT, clipped to ``modalities.CT_HU_RANGE``).
        std: per-voxel standard deviation over ``samples`` samples (and both passes with ``mirror``) in the same
            units, or None for one sample without ``mirror``.
        meta: the input's geometry with the target's modality/units, ``synthetic=True`` and a derivation note.
        flow: the flow used (``mri-t1__ct``).
        warnings: things the caller should tell the user (the CLI prints them on stderr).
        seconds: wall time of the sampling.
    """

    image: np.ndarray
    std: np.ndarray | None
    meta: ImageMeta
    flow: str
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def slice_seed(seed: int, index: int) -> int:
    """The noise seed of slice ``index`` in a run seeded ``seed`` (independent of batching)."""
    return (int(seed) * 1_000_003 + int(index) * 7919 + 17) % (2**63 - 1)


def canonical_orientation(meta: ImageMeta) -> np.ndarray:
    """nibabel ``ornt`` (3 × 2: output axis, flip) taking the array to the axis order closest to LPS."""
    from nibabel.orientations import io_orientation

    return io_orientation(meta.affine_lps)


def to_canonical(volume: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Flip then permute ``volume`` so that axis ``ornt[a, 0]`` of the result is input axis ``a``."""
    out = volume
    for axis, (_, flip) in enumerate(ornt):
        if flip < 0:
            out = np.flip(out, axis=axis)
    order = np.argsort(ornt[:, 0].astype(int))
    return np.ascontiguousarray(np.transpose(out, order))


def from_canonical(volume: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Exact inverse of ``to_canonical``."""
    out = np.transpose(volume, ornt[:, 0].astype(int))
    for axis, (_, flip) in enumerate(ornt):
        if flip < 0:
            out = np.flip(out, axis=axis)
    return np.ascontiguousarray(out)


def translate_volume(
    flow: Any,
    sources: Mapping[Modality, np.ndarray],
    meta: ImageMeta,
    *,
    samples: int = 1,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    weights: Mapping[Modality, float] | None = None,
    batch_size: int | None = None,
    mirror: bool = False,
    bundle_name: str = "",
    progress: ProgressFn = no_progress,
) -> TranslationResult:
    """Translate registered source volumes (same grid as ``meta``) with a loaded ``FlowModel``.

    Args:
        flow: a ``medm2g_core.flows.model.FlowModel`` (``pair``, ``image_size``, ``context_slices``, ``predict``).
        sources: modality → ``(i, j, k)`` array in physical units, all on ``meta``'s grid.
        meta: the geometry of the output (the first source's).
        samples: samples per slice; > 1 gives their mean and a std map.
        seed: one seed for the whole volume; slice k uses ``slice_seed(seed, k)``.
        batch_size: slices per ``predict`` call (default 8); does not change the result.
        mirror: also predict each slice mirrored left–right and average the two (module docstring, step 4).
    """
    def predict(inputs: dict[Modality, Any], seeds: list[int]) -> list[Any]:
        return [_predict(flow, inputs, samples=samples, seeds=seeds, steps=steps, guidance=guidance, weights=weights)]

    (result,) = _translate(flow, [flow], predict, sources, meta, samples=samples, seed=seed, batch_size=batch_size,
                           mirror=mirror, bundle_name=bundle_name, progress=progress)
    return result


def translate_volume_jointly(
    joint: Any,
    sources: Mapping[Modality, np.ndarray],
    meta: ImageMeta,
    *,
    samples: int = 1,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    batch_size: int | None = None,
    mirror: bool = False,
    bundle_name: str = "",
    progress: ProgressFn = no_progress,
) -> list[TranslationResult]:
    """Translate registered source volumes to every target of a ``flows.joint.JointFlowModel`` in ONE sampling loop
    per slice batch (the flows' joint stage couples them), one ``TranslationResult`` per flow in ``joint.flows`` order.

    Slicing, seeds, reassembly and output geometry are ``translate_volume``'s: slice k of every target uses
    ``slice_seed(seed, k)``, so with the joint stage's gates at 0 each output equals ``translate_volume`` with that flow.
    """
    def predict(inputs: dict[Modality, Any], seeds: list[int]) -> list[Any]:
        return joint.predict(inputs, seed=list(seeds), samples=samples, steps=steps, guidance=guidance)

    results = _translate(joint, joint.flows, predict, sources, meta, samples=samples, seed=seed, batch_size=batch_size,
                         mirror=mirror, bundle_name=bundle_name, progress=progress)
    for result in results:
        result.meta = result.meta.replace(extra={**result.meta.extra, "medm2g_joint": joint.name})
    return results


def _translate(model: Any, flows: Sequence[Any], predict: Any, sources: Mapping[Modality, np.ndarray], meta: ImageMeta, *,
               samples: int, seed: int, batch_size: int | None, mirror: bool, bundle_name: str,
               progress: ProgressFn) -> list[TranslationResult]:
    """The per-volume algorithm (module docstring) for ``flows`` that share one slicing (``model``'s image size, 2.5D
    context and normalisation); ``predict(inputs, seeds)`` returns one ``Prediction`` per flow for a slice batch."""
    import torch

    from medm2g_core.data.transforms import resize_back, resize_image

    shape = tuple(int(s) for s in meta.shape)
    if len(shape) != 3:
        raise InputError(None, f"translation needs a 3D volume, got shape {shape}", "pass a CT/MRI volume (2D images: use generate)")
    started = time.monotonic()
    processing = Processing.of(model)  # the recipe's normalisation, as in training
    ornt = canonical_orientation(meta)
    normalised: dict[Modality, np.ndarray] = {}
    states: dict[Modality, Any] = {}
    for modality, array in sources.items():
        if tuple(array.shape) != shape:
            raise InputError(None, f"{modality.value} has shape {tuple(array.shape)}, the volume {shape}",
                             "register all sources to one grid first")
        values = np.asarray(array, dtype=np.float32)
        if not np.all(np.isfinite(values)):
            raise InputError(None, f"{modality.value} holds NaN or infinite values", "fix or mask the volume before translating")
        normalised[modality], states[modality] = processing.preprocess(to_canonical(values, ornt), modality)
    canonical_shape = next(iter(normalised.values())).shape
    depth = canonical_shape[2]
    plane = canonical_shape[:2]
    context = int(getattr(model, "context_slices", 0) or 0)
    size = int(model.image_size)
    batch_size = max(1, int(batch_size or 8))
    means = [np.empty(canonical_shape, dtype=np.float32) for _ in flows]
    spreads = [np.empty(canonical_shape, dtype=np.float32) if samples > 1 or mirror else None for _ in flows]
    flow_sources = [m for m in flows[0].pair.sources if m in normalised]
    for first in range(0, depth, batch_size):
        indices = list(range(first, min(first + batch_size, depth)))
        batch_inputs: dict[Modality, torch.Tensor] = {}
        for modality in flow_sources:
            volume = normalised[modality]
            stacks = []
            for k in indices:
                channels = [volume[:, :, min(max(k + offset, 0), depth - 1)] for offset in range(-context, context + 1)]
                stacks.append(resize_image(np.stack(channels), size))
            batch_inputs[modality] = torch.stack(stacks)
        seeds = [slice_seed(seed, k) for k in indices]
        predictions = predict(batch_inputs, seeds)
        mirrored = predict({m: t.flip(-2) for m, t in batch_inputs.items()}, seeds) if mirror else [None] * len(predictions)
        for prediction, flipped, mean, spread in zip(predictions, mirrored, means, spreads):
            predicted_mean, predicted_std = _moments(prediction, flipped)
            for row, k in enumerate(indices):
                mean[:, :, k] = resize_back(predicted_mean[row], plane)[0].numpy()
                if spread is not None and predicted_std is not None:
                    spread[:, :, k] = resize_back(predicted_std[row], plane)[0].numpy()
        progress(ProgressEvent(task="slices", completed=indices[-1] + 1, total=depth))
    seconds = time.monotonic() - started
    return [_result(flow, processing, mean, spread, states, ornt, meta, samples=samples, seed=seed, mirror=mirror,
                    bundle_name=bundle_name, seconds=seconds) for flow, mean, spread in zip(flows, means, spreads)]


def _moments(prediction: Any, mirrored: Any | None) -> tuple[Any, Any | None]:
    """Mean and std (None for one sample) of a batch's prediction, pooled with its mirrored twin (flipped back along
    the canonical left–right axis, dim −2 of a slice) when there is one: the two passes' samples as one set, so one
    sample per pass gives half their difference — where the network disagrees with itself when mirrored."""
    mean = prediction.mean.detach().float().cpu()
    std = None if prediction.std is None else prediction.std.detach().float().cpu()
    if mirrored is None:
        return mean, std
    other_mean = mirrored.mean.detach().float().cpu().flip(-2)
    within = 0.0 if std is None else (std ** 2 + mirrored.std.detach().float().cpu().flip(-2) ** 2) / 2
    return (mean + other_mean) / 2, (within + ((mean - other_mean) / 2) ** 2).sqrt()


def _result(flow: Any, processing: Processing, mean: np.ndarray, spread: np.ndarray | None, states: Mapping[Modality, Any],
            ornt: np.ndarray, meta: ImageMeta, *, samples: int, seed: int, mirror: bool, bundle_name: str,
            seconds: float) -> TranslationResult:
    """One flow's reassembled canonical mean/std → physical units on the input grid, with its output ``ImageMeta``."""
    from medm2g_core._version import __version__
    from medm2g_core.io.meta import units_for

    target: Modality = flow.pair.target
    state = processing.target_state(target, states)
    image = from_canonical(processing.postprocess(mean, target, state), ornt)
    std = None if spread is None else from_canonical(processing.spread(spread, state), ornt)
    derivation = f"medm2g {__version__} {flow.pair.name} translation" + (f" with bundle {bundle_name}" if bundle_name else "")
    out_meta = meta.replace(
        modality=target.value,
        units=state.units if target is Modality.CT else units_for(target.value),  # an 8-bit-window CT flow: never "HU"
        synthetic=True,
        extra={**meta.extra, "derivation": derivation, "medm2g_flow": flow.pair.name, "samples": samples, "seed": seed,
               **({"mirror": True} if mirror else {})},
    )
    return TranslationResult(image=image, std=std, meta=out_meta, flow=flow.pair.name, seconds=seconds)


def _predict(flow: Any, inputs: dict[Modality, Any], *, samples: int, seeds: list[int], steps: int | None,
             guidance: float | None, weights: Mapping[Modality, float] | None) -> Any:
    """One ``flow.predict`` call with one seed per slice (``FlowModel.predict`` seeds each batch item, its
    K samples included, from its own seed), so the result does not depend on the batch size."""
    kwargs: dict[str, Any] = {"samples": samples, "steps": steps, "guidance": guidance}
    if weights:
        kwargs["weights"] = dict(weights)
    return flow.predict(inputs, seed=list(seeds), **kwargs)
