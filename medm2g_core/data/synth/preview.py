"""A PNG montage of a few patient folders, to look at a cohort: rows = patients, columns = modalities.

Axial slices are shown in the radiological convention (anterior at the top, patient right on the
image left); the DRR as written (a PA film as read). Columns: CT axial, MRI T1, T2 and PD axial at
the same slice, then the chest DRR or, for heads, a coronal T1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medm2g_core.serialization import atomic_path

TILE = 192
CT_WINDOWS = {"chest": (-1000.0, 400.0), "head": (-40.0, 120.0)}
AXIAL_FRACTION = {"chest": 0.5, "head": 0.62}


def window_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """``image`` linearly windowed from [low, high] to 0–255 (clipped), as uint8."""
    return (np.clip((image.astype(np.float64) - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)


def _percentile_window(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, [1.0, 99.5])
    return window_uint8(image, low, high)


def write_preview(path: str | Path, folders: list[Path], *, anatomy: str, max_patients: int = 4) -> Path:
    """Write a montage PNG of the first ``max_patients`` patient folders to ``path``; returns ``path``."""
    from PIL import Image, ImageDraw

    from medm2g_core import io

    titles = ["CT", "MRI T1", "MRI T2", "MRI PD", "X-ray DRR" if anatomy == "chest" else "T1 coronal"]
    rows = []
    for folder in folders[:max_patients]:
        folder = Path(folder)
        ct, _ = io.read(folder / "ct.nii.gz")
        k = int(round(AXIAL_FRACTION[anatomy] * (ct.shape[2] - 1)))
        tiles = [window_uint8(ct[:, :, k].T, *CT_WINDOWS[anatomy])]
        t1 = None
        for name in ("mri-t1", "mri-t2", "mri-pd"):
            volume, _ = io.read(folder / f"{name}.nii.gz")
            t1 = volume if t1 is None else t1
            tiles.append(_percentile_window(volume[:, :, k].T))
        if anatomy == "chest":
            xray, _ = io.read(folder / "xray.png")
            tiles.append(window_uint8(xray, 0, 65535))
        else:
            tiles.append(_percentile_window(t1[:, t1.shape[1] // 2, ::-1].T))
        labels = (folder / "labels.json").read_text(encoding="utf-8") if (folder / "labels.json").is_file() else ""
        rows.append((folder.name, labels, tiles))

    header, left = 22, 110
    canvas = Image.new("L", (left + TILE * len(titles), header + TILE * len(rows)), 0)
    draw = ImageDraw.Draw(canvas)
    for column, title in enumerate(titles):
        draw.text((left + column * TILE + 6, 4), title, fill=255)
    for row, (name, labels, tiles) in enumerate(rows):
        top = header + row * TILE
        present = [key for key, value in _parse_labels(labels).items() if value]
        draw.text((6, top + 6), name, fill=255)
        for line, finding in enumerate(present or ["normal"]):
            draw.text((6, top + 24 + 14 * line), finding, fill=200)
        for column, tile in enumerate(tiles):
            image = Image.fromarray(tile).resize((TILE, TILE), Image.BILINEAR)
            canvas.paste(image, (left + column * TILE, top))
    with atomic_path(path, suffix=".png") as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)


def _parse_labels(text: str) -> dict[str, int]:
    import json

    try:
        data = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}
