"""Torch datasets that stream patient folders from disk (bounded LRU caches of decoded files/slices).

Inputs are ``PatientRecord``s (``medm2g_core.data.manifest.scan_cohort``; anything with
``patient_id``, ``files: dict[Modality, Path]`` and ``labels`` works) — usually one split of them
(``medm2g_core.data.splits.split_records``, which honours the cohort's ``splits.json`` through the
``cohort_root`` each scanned record carries; ``records_for_split`` does both steps). Nothing loads the
cohort eagerly: each worker process keeps at most ``cache_items`` decoded, normalised files (flows) or
resized slice stacks per (patient, modality) (alignment), least recently used first out.

All datasets here set ``epoch_indexed = True``: the training loop hands them *global* indices
``epoch * len + i``; ``index % len`` picks the item and the full index seeds its augmentation, so an
item's randomness is a pure function of ``(seed, index)`` (reproducible with any worker count and
after ``--resume``). Each has a ``collate(items)`` the loop uses as ``collate_fn``: tensors are
stacked, everything else becomes a list.

Images are normalised per modality to [-1, 1] (a flow's ``preprocess``, default ``transforms.normalize``; the ``NormState`` of the
inverse travels with the item as a dict) and resized to ``image_size × image_size``. Volumes give
axial slices ``volume[:, :, k]`` with ``k`` kept for reassembly.

- ``AlignDataset``: one item per patient — report text and, for each available imaging modality,
  one or more slices in two augmented views (training) or one clean view (evaluation).
- ``PairSliceDataset``: registered image→image flows (MRI→CT, T1→T2, T2+PD→T1): one item per
  (patient, slice) with the source slices (plus context slices) as channels and the target slice.
- ``ImageTextDataset``: X-ray ↔ report flows (and any image ↔ report): image, report text, labels.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medm2g_core.config import AugmentConfig
from medm2g_core.data.transforms import (
    NormState,
    augment_report,
    as_grey,
    augment_view,
    axial_slice,
    item_generator,
    normalize,
    resize_image,
    slice_indices,
)
from medm2g_core.modalities import Modality, parse_modality


Preprocess = Callable[[np.ndarray, Modality], "tuple[np.ndarray, NormState]"]
"""Physical units → ([-1, 1] array, ``NormState``): a flow's ``inference.processing.Processing.preprocess``;
default ``transforms.normalize`` with the default CT window and MRI percentiles."""


def collate_dicts(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors key by key (recursing into dicts); other values become lists."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], dict) and values[0] and all(isinstance(v, torch.Tensor) for v in values[0].values()):
            out[key] = collate_dicts(values)
        else:
            out[key] = values
    return out


class _CohortReader:
    """Reads and normalises image files and reports, with two bounded LRU caches (``cache_items`` each).

    - ``image(path, modality)``: the whole normalised array (flows, which need full resolution).
    - ``slice_stack(path, modality, size)``: the normalised slices already resized to ``size²`` —
      (D, size, size) for a volume's axial slices, (1, size, size) for a 2D image — one entry per
      (file, modality), i.e. per (patient, modality). At 64² a 64-slice volume is 1 MB, against 300 MB
      for a 512²×300 CT read whole, so alignment can keep every patient of an epoch decoded.

    Nothing is loaded eagerly; each DataLoader worker process has its own caches (they fill as it sees
    patients and are lost when the worker exits).
    """

    def __init__(self, *, preprocess: Preprocess | None, cache_items: int):
        self.preprocess = preprocess or normalize
        self.cache_items = cache_items
        self._cache: OrderedDict[tuple[str, str], tuple[np.ndarray, NormState]] = OrderedDict()
        self._stacks: OrderedDict[tuple[str, str, int], tuple[torch.Tensor, NormState]] = OrderedDict()

    def _remember(self, cache: OrderedDict, key: tuple, value: Any) -> None:
        if self.cache_items > 0:
            cache[key] = value
            while len(cache) > self.cache_items:
                cache.popitem(last=False)

    def _decode(self, path: Path, modality: Modality) -> tuple[np.ndarray, NormState]:
        from medm2g_core import io

        array, _meta = io.read(path)
        return self.preprocess(as_grey(array, modality), modality)

    def image(self, path: Path, modality: Modality) -> tuple[np.ndarray, NormState]:
        key = (str(path), modality.value)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = self._decode(path, modality)
        self._remember(self._cache, key, value)
        return value

    def slice_stack(self, path: Path, modality: Modality, size: int) -> tuple[torch.Tensor, NormState]:
        """Normalised slices resized to ``size²``: (D, size, size) axial slices ``volume[:, :, k]`` of a
        volume (index k = slice k), (1, size, size) for a 2D image. Cached; treat as read-only."""
        key = (str(path), modality.value, size)
        if key in self._stacks:
            self._stacks.move_to_end(key)
            return self._stacks[key]
        array, state = self._decode(path, modality)
        # All slices in one interpolate call (axial slices as channels): the same per-slice resampling.
        stack = resize_image(np.moveaxis(array, 2, 0) if modality.is_volume else array, size)
        value = (stack, state)
        self._remember(self._stacks, key, value)
        return value

    @staticmethod
    def report(path: Path) -> str:
        from medm2g_core import io

        return io.read_report(path).text


def records_for_split(
    root: str | Path, split: str, *, seed: int = 0, fractions: Sequence[float] = (0.8, 0.1, 0.1)
) -> list[Any]:
    """The scanned records of one split (``"train"``, ``"val"``, ``"test"``) of the cohort at ``root``:
    ``root/splits.json`` where it lists a patient, the hash split otherwise (``data.splits``)."""
    from medm2g_core.data.manifest import scan_cohort
    from medm2g_core.data.splits import SPLITS, split_records

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split_records(scan_cohort(root), seed=seed, fractions=fractions, root=root)[split]


def _modalities(names: Sequence[Modality | str]) -> tuple[Modality, ...]:
    return tuple(parse_modality(n) if isinstance(n, str) else n for n in names)


class AlignDataset(Dataset):
    """One item per patient for alignment (text hub + visual invariance).

    Args:
        records: patient records (one split).
        modalities: imaging modalities to load (absent files are simply missing from the item).
        image_size: output pixels per side.
        augment: two-view augmentation strengths; None = evaluation (one clean view, middle slices).
        slices_per_volume: N axial slices per volume (training: jittered positions in the central part,
            the same relative position for every volume of the patient so registered CT/MRI match;
            evaluation: evenly spaced). 2D images (X-ray) always give one.
        seed: augmentation/slice-sampling seed.
        cache_items: (patient, modality) slice stacks kept decoded, normalised and resized per process
            (``_CohortReader.slice_stack``, LRU); about ``depth × image_size² × 4`` bytes each. With at
            least ``len(records) × len(modalities)`` nothing is decoded twice after the first epoch.

    Item: ``{"patient_id": str, "text": str ("" when no report), "has_text": bool, "labels": dict | None,
    "report_findings": (L,) uint8 (the labeler's positive findings of the report, ``_report_findings``),
    "images": {modality: (V, N_m, 1, H, W)}, "slice_index": {modality: [k, ...]}}`` with V = 2 views
    (training) or 1, N_m = N for volumes and 1 for 2D images. ``collate`` gives ``images[m]``
    (B, V, N_m, 1, H, W) zero-filled where missing, ``present[m]`` (B,) bool, ``has_text`` (B,) bool, and
    lists for the rest.
    """

    epoch_indexed = True

    def __init__(
        self,
        records: Sequence[Any],
        *,
        modalities: Sequence[Modality | str],
        image_size: int,
        augment: AugmentConfig | None = None,
        slices_per_volume: int = 1,
        seed: int = 0,
        preprocess: Preprocess | None = None,
        cache_items: int = 8,
    ):
        self.records = list(records)
        self.modalities = _modalities(modalities)
        self.image_size = image_size
        self.augment = augment
        self.slices_per_volume = slices_per_volume
        self.seed = seed
        self.reader = _CohortReader(preprocess=preprocess, cache_items=cache_items)
        self._reports: dict[str, str] = {}  # a few hundred bytes per patient
        self._findings: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def views(self) -> int:
        return 1 if self.augment is None else 2

    def slices_of(self, modality: Modality) -> int:
        """N_m: slices per item of ``modality`` (``slices_per_volume`` for volumes, 1 for 2D images)."""
        return self.slices_per_volume if modality.is_volume else 1

    def _positions(self, generator: torch.Generator) -> list[float]:
        count = self.slices_per_volume
        if self.augment is None:
            return [0.5] if count == 1 else [0.2 + 0.6 * i / (count - 1) for i in range(count)]
        centres = [0.5] if count == 1 else [0.2 + 0.6 * i / (count - 1) for i in range(count)]
        spread = 0.25 if count == 1 else 0.3 / count
        return [min(max(c + spread * (2 * float(torch.rand((), generator=generator)) - 1), 0.0), 1.0) for c in centres]

    def _report(self, path: Path) -> str:
        key = str(path)
        if key not in self._reports:
            self._reports[key] = self.reader.report(path)
        return self._reports[key]

    def _report_findings(self, path: Path | None, text: str) -> torch.Tensor:
        """(L,) 0/1: the findings the rule-based labeler reads as present in the report (``data.labeler.LABELS``,
        "no finding" included), from the report as written (before any text augmentation); all 0 without one."""
        from medm2g_core.data.labeler import LABELS, label_report

        if path is None or not text.strip():
            return torch.zeros(len(LABELS), dtype=torch.uint8)
        key = str(path)
        if key not in self._findings:
            labels = label_report(text)
            self._findings[key] = torch.tensor([int(labels[name] == 1) for name in LABELS], dtype=torch.uint8)
        return self._findings[key]

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index % len(self.records)]
        generator = item_generator(self.seed, index)
        positions = self._positions(generator)
        report_path = record.files.get(Modality.REPORT)
        text = self._report(report_path) if report_path is not None else ""
        findings = self._report_findings(report_path, text)
        if self.augment is not None and text:
            text = augment_report(text, self.augment, generator=item_generator(self.seed, index, salt=1))
        images: dict[str, torch.Tensor] = {}
        indices: dict[str, list[int]] = {}
        for modality in self.modalities:
            path = record.files.get(modality)
            if path is None:
                continue
            stack, _state = self.reader.slice_stack(path, modality, self.image_size)  # (D or 1, H, W)
            if modality.is_volume:
                depth = stack.shape[0]
                ks = [int(p * (depth - 1) + 0.5) for p in positions]
            else:
                ks = [0]
            chosen = stack[ks][:, None]  # (N_m, 1, H, W), a copy: the cached stack is never modified
            if self.augment is None:
                views = chosen[None]
            else:
                views = torch.stack(
                    [torch.stack([augment_view(s, self.augment, generator=generator) for s in chosen]) for _ in range(2)]
                )
            images[modality.value] = views
            indices[modality.value] = ks
        return {
            "patient_id": record.patient_id, "text": text, "has_text": bool(text.strip()),
            "labels": getattr(record, "labels", None), "images": images, "slice_index": indices,
            "report_findings": findings,
        }

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        images, present = {}, {}
        for modality in self.modalities:
            name = modality.value
            shape = (self.views, self.slices_of(modality), 1, self.image_size, self.image_size)
            present[name] = torch.tensor([name in item["images"] for item in items])
            images[name] = torch.stack([item["images"].get(name, torch.zeros(shape)) for item in items])
        return {
            "patient_id": [item["patient_id"] for item in items],
            "text": [item["text"] for item in items],
            "has_text": torch.tensor([item["has_text"] for item in items]),
            "report_findings": torch.stack([item["report_findings"] for item in items]),
            "labels": [item["labels"] for item in items],
            "images": images,
            "present": present,
            "slice_index": [item["slice_index"] for item in items],
        }


GRID_TOLERANCE_MM = 1e-2


def check_same_grid(record: Any, *, sources: Sequence[Modality], target: Modality) -> int:
    """The target's depth (axial slices) after checking from the headers that every source lies on
    the target's voxel grid (shape and affine within ``GRID_TOLERANCE_MM``).

    Raises:
        InputError: a source on another grid, naming the file, both grids and the fix.
    """
    from medm2g_core.data.manifest import read_meta
    from medm2g_core.errors import InputError

    target_path = Path(record.files[target])
    target_meta = read_meta(target_path)
    if len(target_meta.shape) != 3:
        raise InputError(target_path, f"is not a volume (shape {tuple(target_meta.shape)})", "paired image flows take 3D volumes")
    for modality in sources:
        path = Path(record.files[modality])
        meta = read_meta(path)
        if not meta.same_grid(target_meta, tolerance_mm=GRID_TOLERANCE_MM):
            raise InputError(
                path,
                f"is on another voxel grid than {target_path.name} of the same patient (shape {tuple(meta.shape)} vs "
                f"{tuple(target_meta.shape)}, spacing {_mm(meta.spacing)} vs {_mm(target_meta.spacing)} mm"
                + (", other origin or direction" if tuple(meta.shape) == tuple(target_meta.shape) else "")
                + f"), so slice k of {modality.value} is not slice k of {target.value}",
                "register them onto one grid first: `medm2g data import ixi SRC --out DIR --register` for IXI, "
                "or resample with SimpleITK/ANTs; `medm2g data index` lists every such patient",
            )
    return int(target_meta.shape[2])


def _mm(values: Sequence[float]) -> str:
    return "×".join(f"{float(v):g}" for v in values)


class PairSliceDataset(Dataset):
    """Slices of registered image→image pairs (MRI→CT, T1→T2, T2+PD→T1) for flows.

    Args:
        records: patient records; those lacking a source or the target are skipped (``self.skipped``).
        sources: source modalities (volumes), stacked as channels in this order.
        target: target modality (volume on the same grid).
        image_size: output pixels per side.
        slices: "all" axial slices, "middle", or N evenly spaced slices (central 80 %) per patient.
        context_slices: c neighbouring slices on each side added as source channels (2.5D; clamped at
            the volume's ends), channel order ``[src0 k-c..k+c, src1 k-c..k+c, ...]``.
        augment: optional augmentation applied identically (same random draw) to source and target.
        seed: augmentation seed.

    Building it reads each patient's headers once (depth, grid; no pixels) and **refuses** a patient
    whose sources and target lie on different voxel grids (``InputError`` naming the file, with the fix:
    ``data import ixi --register`` or resampling): pairing slice k of one grid with slice k of another
    would train on mismatched anatomy without a word.

    Item: ``{"source": (S·(2c+1), H, W), "target": (1, H, W), "patient_id": str, "slice_index": k,
    "depth": int, "original_shape": (h, w), "source_norm": [NormState dict per source],
    "target_norm": NormState dict}`` in [-1, 1]; ``transforms.denormalize(x, NormState.from_json(d))``
    and ``transforms.resize_back`` undo it for reassembly.
    """

    epoch_indexed = True

    def __init__(
        self,
        records: Sequence[Any],
        *,
        sources: Sequence[Modality | str],
        target: Modality | str,
        image_size: int,
        slices: str | int = "all",
        context_slices: int = 0,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        preprocess: Preprocess | None = None,
        cache_items: int = 4,
    ):
        self.sources = _modalities(sources)
        self.target = _modalities([target])[0]
        for modality in (*self.sources, self.target):
            if not modality.is_volume:
                raise ValueError(f"PairSliceDataset pairs volumes; {modality.value} is not one (use ImageTextDataset)")
        self.image_size = image_size
        self.context_slices = context_slices
        self.augment = augment
        self.seed = seed
        self.reader = _CohortReader(preprocess=preprocess, cache_items=cache_items)
        self.records, self.skipped = [], []
        for record in records:
            if all(m in record.files for m in (*self.sources, self.target)):
                self.records.append(record)
            else:
                self.skipped.append(record.patient_id)
        self.items: list[tuple[int, int, int]] = []  # (record index, slice k, depth)
        for r, record in enumerate(self.records):
            depth = check_same_grid(record, sources=self.sources, target=self.target)
            self.items += [(r, k, depth) for k in slice_indices(depth, slices)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r, k, depth = self.items[index % len(self.items)]
        record = self.records[r]
        channels, source_norms = [], []
        for modality in self.sources:
            array, state = self.reader.image(record.files[modality], modality)
            source_norms.append(state.to_json())
            for offset in range(-self.context_slices, self.context_slices + 1):
                kk = min(max(k + offset, 0), array.shape[2] - 1)
                channels.append(resize_image(axial_slice(array, kk), self.image_size)[0])
        target_array, target_state = self.reader.image(record.files[self.target], self.target)
        original_shape = tuple(int(s) for s in target_array.shape[:2])
        source = torch.stack(channels)
        # The target is shrunk without antialiasing: a prediction is resized back to the input grid and scored there,
        # and an antialiased target averages thin bright structures (the skull of a 256² CT) into their neighbours,
        # which the flow then learns as blur (AANLIB, README Real data). Sources keep it (a clean input).
        target = resize_image(axial_slice(target_array, k), self.image_size, antialias=False)
        if self.augment is not None:
            joint = augment_view(torch.cat([source, target]), self.augment, generator=item_generator(self.seed, index))
            source, target = joint[:-1], joint[-1:]
        return {
            "source": source,
            "target": target,
            "patient_id": record.patient_id,
            "slice_index": k,
            "depth": depth,
            "original_shape": original_shape,
            "source_norm": source_norms,
            "target_norm": target_state.to_json(),
        }

    collate = staticmethod(collate_dicts)


class ImageTextDataset(Dataset):
    """Image ↔ report pairs (X-ray ↔ report by default; volumes give their middle axial slice).

    Item: ``{"image": (1, H, W) in [-1, 1], "text": str, "patient_id": str, "labels": dict | None,
    "norm": NormState dict, "original_shape": (h, w)}``. Patients without the image or the report
    are skipped (``self.skipped``).
    """

    epoch_indexed = True

    def __init__(
        self,
        records: Sequence[Any],
        *,
        image_modality: Modality | str = Modality.XRAY,
        image_size: int,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        preprocess: Preprocess | None = None,
        cache_items: int = 8,
    ):
        self.modality = _modalities([image_modality])[0]
        self.image_size = image_size
        self.augment = augment
        self.seed = seed
        self.reader = _CohortReader(preprocess=preprocess, cache_items=cache_items)
        self.records = [r for r in records if self.modality in r.files and Modality.REPORT in r.files]
        self.skipped = [r.patient_id for r in records if not (self.modality in r.files and Modality.REPORT in r.files)]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index % len(self.records)]
        array, state = self.reader.image(record.files[self.modality], self.modality)
        if self.modality.is_volume:
            array = axial_slice(array, array.shape[2] // 2)
        image = resize_image(array, self.image_size)
        if self.augment is not None:
            image = augment_view(image, self.augment, generator=item_generator(self.seed, index))
        return {
            "image": image,
            "text": self.reader.report(record.files[Modality.REPORT]),
            "patient_id": record.patient_id,
            "labels": getattr(record, "labels", None),
            "norm": state.to_json(),
            "original_shape": tuple(int(s) for s in array.shape[:2]),
        }

    collate = staticmethod(collate_dicts)
