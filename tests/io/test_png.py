"""PNG/JPEG: 8/16-bit grayscale round trips, spacing in a text chunk, synthetic mark, content sniffing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medm2g_core import io
from medm2g_core.errors import InputError
from medm2g_core.types import ImageMeta


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_round_trip_keeps_pixels_spacing_and_synthetic(tmp_path, dtype):
    rng = np.random.default_rng(0)
    array = rng.integers(0, np.iinfo(dtype).max, size=(37, 53), dtype=dtype)
    meta = ImageMeta(spacing=(0.139, 0.143), shape=array.shape, modality="xray", synthetic=True)
    path = io.write(tmp_path / "xray.png", array, meta)
    with Image.open(path) as image:
        assert image.text["Software"].startswith("medm2g")
        assert image.text["medm2g:synthetic"] == "true"
    back, back_meta = io.read(path)
    assert back.dtype == dtype and back.shape == (37, 53)
    np.testing.assert_array_equal(back, array)
    assert back_meta.spacing == pytest.approx((0.139, 0.143))
    assert back_meta.synthetic and back_meta.modality == "xray" and back_meta.source_format == "png"


def test_round_trip_keeps_origin_and_direction(tmp_path):
    # The PA projection frame drr_from_ct gives a phantom X-ray: rows run inferior, cols run left.
    pa = ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0))
    meta = ImageMeta(spacing=(0.7, 0.4), origin=(-120.5, 0.0, 310.25), direction=pa, shape=(6, 5), modality="xray")
    path = io.write(tmp_path / "xray.png", np.zeros((6, 5), np.uint16), meta)
    with Image.open(path) as image:
        assert image.text["medm2g:origin"] and image.text["medm2g:direction"]
    _, back = io.read(path)
    assert back.origin == pytest.approx(meta.origin) and back.direction == pa
    np.testing.assert_allclose(back.affine_lps, meta.affine_lps)
    # A PNG from elsewhere (no medm2g chunks, or damaged ones) keeps the defaults.
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "plain.png")
    _, plain = io.read(tmp_path / "plain.png")
    assert plain.origin == (0.0, 0.0, 0.0) and plain.direction == ImageMeta(spacing=(1.0, 1.0)).direction
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("medm2g:origin", "1 2")
    info.add_text("medm2g:direction", "2 0 0 0 1 0 0 0 1")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "odd.png", pnginfo=info)
    _, odd = io.read(tmp_path / "odd.png")
    assert odd.origin == (0.0, 0.0, 0.0) and odd.direction == plain.direction


def test_real_rgb_png_is_read_as_grayscale(shared_data):
    array, meta = io.read(shared_data / "iu_xray" / "images" / "CXR7_IM-2263-1001.png")
    assert array.shape == (512, 512) and array.dtype == np.uint8
    assert meta.extra["converted_from"] == "RGB" and meta.extra["spacing_source"] == "unknown"
    assert meta.modality == "xray" and not meta.synthetic


def test_png_that_is_really_a_jpeg_is_read_by_content(tmp_path):
    path = tmp_path / "xray.png"
    Image.fromarray(np.full((20, 30), 128, dtype=np.uint8)).save(path, format="JPEG")
    array, meta = io.read(path)
    assert array.shape == (20, 30)
    assert meta.source_format == "jpeg" and "JPEG" in meta.extra["format_mismatch"]


def test_jpeg_read(tmp_path):
    path = tmp_path / "cxr.jpg"
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (16, 1))).save(path, format="JPEG", quality=95)
    array, meta = io.read(path)
    assert array.shape == (16, 64) and meta.source_format == "jpeg" and "format_mismatch" not in meta.extra


def test_truncated_png_and_non_image(tmp_path):
    good = io.write(tmp_path / "a.png", np.zeros((64, 64), np.uint16), ImageMeta(spacing=(1.0, 1.0)))
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:60])
    with pytest.raises(InputError, match="broken.png"):
        io.read(broken)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(InputError, match="notes.png"):
        io.read(text)


def test_float_arrays_are_refused(tmp_path):
    with pytest.raises(ValueError, match="uint16"):
        io.write(tmp_path / "x.png", np.zeros((4, 4), np.float32), ImageMeta(spacing=(1.0, 1.0)))
