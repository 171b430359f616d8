"""One pre/post-processing pair per flow, built from the normalisation the flow recorded at training.

``Processing(ct_window, mri_percentiles)`` is the recipe's ``data.ct_window``/``data.mri_percentiles``
as written into ``flows/<pair>/config.json`` (``FlowNetworkConfig.normalisation``):

- ``preprocess(array, modality)``: physical units → float32 in [-1, 1] and the ``NormState`` of the
  inverse (CT: the HU window; MRI: the volume's percentiles; X-ray: the dtype range). RGB(A) X-rays
  become grey first.
- ``postprocess(values, target, state)``: the flow's [-1, 1] output → physical units on the scale the
  flow was trained on (CT clipped to ``modalities.CT_HU_RANGE``, or 0..255 for an 8-bit window; X-rays as uint16).
- ``target_state(target, source_states)``: what ``postprocess`` maps with — the training CT window for a
  CT target, labelled with the window's units (``ct_units``: HU, or ``modalities.CT_WINDOW_8BIT_UNITS`` for a
  flow trained on a CT that reached us as an 8-bit display window — AANLIB — so its output is never called HU); for an MRI target the percentile range of the first source of the same encoder family
  (MRI has no absolute units), else [0, 1000]; the uint16 range for X-rays.

Training datasets, translate, generate and the translation baselines all use this pair, so training
and inference cannot normalise differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from medm2g_core.data.transforms import NormState, as_grey, denormalize, normalize
from medm2g_core.modalities import CT_HU_RANGE, CT_WINDOW_8BIT_RANGE, CT_WINDOW_8BIT_UNITS, MRI_PERCENTILES, Modality

XRAY_RANGE = (0.0, 65535.0)  # generated X-rays are 16-bit


@dataclass(frozen=True)
class Processing:
    """A flow's normalisation: ``ct_window`` (low, high in ``ct_units``) and ``mri_percentiles`` (low, high).

    ``ct_units``: "HU" or ``CT_WINDOW_8BIT_UNITS`` (grey levels of a CT already windowed to 8 bits).
    """

    ct_window: tuple[float, float] = CT_HU_RANGE
    mri_percentiles: tuple[float, float] = MRI_PERCENTILES
    ct_units: str = "HU"

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> "Processing":
        """From a flow's recorded ``normalisation`` (``{"ct_window": [...], "mri_percentiles": [...]}``)."""
        record = record or {}
        return cls(ct_window=tuple(float(v) for v in record.get("ct_window", CT_HU_RANGE)),
                   mri_percentiles=tuple(float(v) for v in record.get("mri_percentiles", MRI_PERCENTILES)),
                   ct_units=str(record.get("ct_units", "HU")))

    @classmethod
    def of(cls, flow: Any) -> "Processing":
        """Of a loaded flow (``FlowModel``, ``RegressionModel``: anything with ``normalise_options``)."""
        return cls.from_record(flow.normalise_options)

    @classmethod
    def from_data(cls, data: Any) -> "Processing":
        """From a recipe's ``DataConfig`` (what training records)."""
        return cls(ct_window=tuple(float(v) for v in data.ct_window),
                   mri_percentiles=tuple(float(v) for v in data.mri_percentiles), ct_units=data.ct_units)

    def record(self) -> dict[str, Any]:
        """The ``normalisation`` written beside a flow's weights."""
        return {"ct_window": list(self.ct_window), "mri_percentiles": list(self.mri_percentiles), "ct_units": self.ct_units}

    @property
    def ct_range(self) -> tuple[float, float]:
        """Where a generated CT is clipped: the HU range, or 0..255 for an 8-bit window."""
        return CT_WINDOW_8BIT_RANGE if self.ct_units == CT_WINDOW_8BIT_UNITS else CT_HU_RANGE

    def preprocess(self, array: np.ndarray, modality: Modality) -> tuple[np.ndarray, NormState]:
        """Physical units → float32 in [-1, 1] (same shape; RGB(A) X-rays → grey), with the inverse's state."""
        return normalize(as_grey(np.asarray(array), modality), modality, ct_window=self.ct_window,
                         mri_percentiles=self.mri_percentiles)

    def target_state(self, target: Modality, sources: Mapping[Modality, NormState] | None = None) -> NormState:
        """The ``NormState`` that maps the flow's output for ``target`` back to physical units."""
        if target is Modality.CT:
            return NormState(target.value, "window", float(self.ct_window[0]), float(self.ct_window[1]), units=self.ct_units)
        if target is Modality.XRAY:
            return NormState(target.value, "dtype", *XRAY_RANGE)
        for modality, state in (sources or {}).items():
            if modality.encoder_family == target.encoder_family:
                return NormState(target.value, "percentile", state.low, state.high, percentiles=state.percentiles)
        return NormState(target.value, "minmax", 0.0, 1000.0)

    def postprocess(self, values: Any, target: Modality, state: NormState) -> np.ndarray:
        """[-1, 1] → physical units: float32 (CT clipped to ``ct_range``), uint16 for X-rays."""
        physical = np.asarray(denormalize(np.asarray(values, dtype=np.float32), state), dtype=np.float32)
        if target is Modality.CT:
            return np.clip(physical, *self.ct_range)
        if target is Modality.XRAY:
            return np.rint(physical).clip(*XRAY_RANGE).astype(np.uint16)
        return physical

    @staticmethod
    def spread(std: np.ndarray, state: NormState) -> np.ndarray:
        """A per-pixel std of [-1, 1] outputs in physical units (the map is affine: × (high − low) / 2)."""
        return np.maximum(std, 0.0) * np.float32((state.high - state.low) / 2.0)
