"""A CT flow records the units of its window: an 8-bit display-window CT (AANLIB) is never labelled HU."""

from __future__ import annotations

import numpy as np
import pytest

from medm2g_core.config import DataConfig
from medm2g_core.errors import ConfigError
from medm2g_core.inference.processing import Processing
from medm2g_core.modalities import CT_WINDOW_8BIT_UNITS, Modality


def test_an_8bit_flow_records_and_restores_its_units() -> None:
    processing = Processing.from_data(DataConfig(ct_window=(0.0, 255.0), ct_units=CT_WINDOW_8BIT_UNITS))
    record = processing.record()
    assert record["ct_units"] == CT_WINDOW_8BIT_UNITS
    restored = Processing.from_record(record)
    state = restored.target_state(Modality.CT)
    assert state.units == CT_WINDOW_8BIT_UNITS and (state.low, state.high) == (0.0, 255.0)
    out = restored.postprocess(np.array([-1.0, 0.0, 1.5], dtype=np.float32), Modality.CT, state)
    assert out.min() >= 0 and out.max() <= 255 and out[1] == pytest.approx(127.5)


def test_flows_saved_before_units_were_recorded_read_as_hu() -> None:
    state = Processing.from_record({"ct_window": [-1024, 3000]}).target_state(Modality.CT)
    assert state.units == "HU"


def test_recipe_refuses_an_8bit_window_beyond_0_255_and_unknown_units() -> None:
    with pytest.raises(ConfigError, match=r"\[0, 255\]"):
        DataConfig(ct_units=CT_WINDOW_8BIT_UNITS)  # the default HU window
    with pytest.raises(ConfigError, match="ct_units"):
        DataConfig(ct_units="grey")
