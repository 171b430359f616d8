"""A self-contained HTML evaluation page: metric table, image grids, report pairs, histograms.

No external assets: images are embedded as base64 PNG data URIs (drawn with Pillow), histograms are
inline SVG, styles inline. The page is written atomically.
"""

from __future__ import annotations

import base64
import html
import io as _bytes_io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from medm2g_core.serialization import write_text

PANEL_ORDER = ("input", "prediction", "reference", "error", "uncertainty")


@dataclass
class ImageRow:
    """One patient's grid. ``images[panel]`` is a 2D array (display orientation: rows top→bottom) or
    None when missing; ``windows[panel]`` the (low, high) intensity window used to draw it."""

    patient_id: str
    images: dict[str, np.ndarray | None]
    windows: dict[str, tuple[float, float]]
    caption: str = ""


@dataclass
class ReportPair:
    """A generated and a reference report with their labels (1 / 0 / −1 / None per label)."""

    patient_id: str
    prediction: str
    reference: str
    predicted_labels: Mapping[str, int | None]
    reference_labels: Mapping[str, int | None]


@dataclass
class Page:
    """Everything the page shows. ``table`` rows are ``(metric name, [value per column])``."""

    title: str
    columns: list[str]
    table: list[tuple[str, list[str]]]
    image_rows: list[ImageRow] = field(default_factory=list)
    report_pairs: list[ReportPair] = field(default_factory=list)
    histograms: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def png_data_uri(image: np.ndarray, *, window: tuple[float, float], colormap: str = "gray") -> str:
    """Window a 2D array to 8 bit and return a ``data:image/png;base64,...`` URI.

    ``colormap`` "gray" or "hot" (black→red→yellow→white, for error and uncertainty maps).
    """
    from PIL import Image

    low, high = window
    scale = (np.asarray(image, dtype=np.float64) - low) / max(high - low, 1e-12)
    scale = np.nan_to_num(np.clip(scale, 0.0, 1.0))
    if colormap == "hot":
        rgb = np.stack([np.clip(3 * scale, 0, 1), np.clip(3 * scale - 1, 0, 1), np.clip(3 * scale - 2, 0, 1)], axis=-1)
        picture = Image.fromarray((rgb * 255).round().astype(np.uint8), mode="RGB")
    else:
        picture = Image.fromarray((scale * 255).round().astype(np.uint8), mode="L")
    if max(picture.size) < 160:  # small phantoms: upscale for viewing, nearest to keep voxels honest
        factor = math.ceil(160 / max(picture.size))
        picture = picture.resize((picture.size[0] * factor, picture.size[1] * factor), Image.NEAREST)
    buffer = _bytes_io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def histogram_svg(values: Sequence[float], *, title: str, bins: int = 12, width: int = 320, height: int = 160) -> str:
    """An inline SVG histogram of finite ``values`` (axis labels: min, max, count)."""
    array = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
             f'<rect width="{width}" height="{height}" fill="#fafafa" stroke="#ccc"/>']
    if array.size:
        low, high = float(array.min()), float(array.max())
        if high == low:
            low, high = low - 0.5, high + 0.5
        counts, _ = np.histogram(array, bins=bins, range=(low, high))
        top = max(int(counts.max()), 1)
        plot_w, plot_h, left, base = width - 20, height - 40, 10, height - 22
        bar_w = plot_w / bins
        for b, count in enumerate(counts):
            bar_h = plot_h * count / top
            parts.append(f'<rect x="{left + b * bar_w + 1:.1f}" y="{base - bar_h:.1f}" width="{bar_w - 2:.1f}" height="{bar_h:.1f}" fill="#4a78b5"/>')
        parts.append(f'<text x="{left}" y="{height - 6}" font-size="11" font-family="sans-serif">{low:.4g}</text>')
        parts.append(f'<text x="{width - 10}" y="{height - 6}" font-size="11" text-anchor="end" font-family="sans-serif">{high:.4g}</text>')
        parts.append(f'<text x="{width / 2:.0f}" y="{height - 6}" font-size="11" text-anchor="middle" font-family="sans-serif">n={array.size}, max bin {top}</text>')
    else:
        parts.append(f'<text x="10" y="{height / 2:.0f}" font-size="12" font-family="sans-serif">no finite values</text>')
    parts.append("</svg>")
    return "".join(parts)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1150px}
h1{font-size:22px} h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left;font-family:monospace}
.grid td{text-align:center;vertical-align:top;font-size:12px} .grid img{width:160px;image-rendering:pixelated}
.pair{display:flex;gap:12px;margin:8px 0;font-size:13px} .pair div{flex:1;border:1px solid #ddd;padding:6px}
.agree{background:#d8f0d8;color:#145214;padding:1px 4px;margin:2px;display:inline-block;border-radius:3px}
.disagree{background:#f6d4d4;color:#7a1010;padding:1px 4px;margin:2px;display:inline-block;border-radius:3px}
.hists{display:flex;flex-wrap:wrap;gap:12px} .hists figure{margin:0} figcaption{font-size:12px;font-family:monospace}
.notes{font-size:12px;color:#555}
"""


def page_head(title: str, *, css: str = "") -> str:
    """The opening of every medm2g HTML page up to ``<body>``: doctype, charset, escaped ``title``, the shared
    style sheet plus ``css`` (a page's own rules)."""
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}{css}</style></head><body>")


def _label_text(value: int | None) -> str:
    return {1: "1", 0: "0", -1: "-1 (uncertain)", None: "blank"}[value]


def render_page(page: Page) -> str:
    """The HTML text of ``page`` (five sections, each with an ``id``: metrics, images, reports, histograms, notes)."""
    e = html.escape
    out = [page_head(page.title), f"<h1>{e(page.title)}</h1>"]
    out.append('<section id="metrics"><h2>Metrics</h2><table><thead><tr><th>metric [convention]</th>')
    out += [f"<th>{e(c)}</th>" for c in page.columns]
    out.append("</tr></thead><tbody>")
    for name, values in page.table:
        out.append(f"<tr><td>{e(name)}</td>" + "".join(f"<td>{e(v)}</td>" for v in values) + "</tr>")
    out.append("</tbody></table></section>")

    out.append('<section id="images"><h2>Images (mid axial slice)</h2>')
    if page.image_rows:
        out.append('<table class="grid"><thead><tr><th>patient</th>' + "".join(f"<th>{p if p != 'error' else '|error|'}</th>" for p in PANEL_ORDER) + "</tr></thead><tbody>")
        for row in page.image_rows:
            cells = []
            for panel in PANEL_ORDER:
                image = row.images.get(panel)
                if image is None:
                    cells.append('<td><span class="notes">not available</span></td>')
                    continue
                window = row.windows.get(panel, (float(np.min(image)), float(np.max(image))))
                uri = png_data_uri(image, window=window, colormap="hot" if panel in ("error", "uncertainty") else "gray")
                cells.append(f'<td><img alt="{e(row.patient_id)} {panel}" src="{uri}"><br>[{window[0]:.4g}, {window[1]:.4g}]</td>')
            out.append(f"<tr><td>{e(row.patient_id)}<br><span class=\"notes\">{e(row.caption)}</span></td>{''.join(cells)}</tr>")
        out.append("</tbody></table>")
    else:
        out.append('<p class="notes">No image panels for this task.</p>')
    out.append("</section>")

    out.append('<section id="reports"><h2>Reports (label agreement: green agrees, red differs)</h2>')
    if page.report_pairs:
        for pair in page.report_pairs:
            badges = []
            for label in pair.reference_labels:
                predicted, reference = pair.predicted_labels.get(label), pair.reference_labels.get(label)
                if predicted is None and reference is None:
                    continue
                same = (predicted in (1, -1)) == (reference in (1, -1))
                badges.append(f'<span class="{"agree" if same else "disagree"}" title="generated {_label_text(predicted)} / reference {_label_text(reference)}">'
                              f"{e(label)}: {_label_text(predicted)} / {_label_text(reference)}</span>")
            out.append(f"<h3>{e(pair.patient_id)}</h3><div>{''.join(badges)}</div>"
                       f'<div class="pair"><div><b>generated</b><br>{e(pair.prediction)}</div><div><b>reference</b><br>{e(pair.reference)}</div></div>')
    else:
        out.append('<p class="notes">No report pairs for this task.</p>')
    out.append("</section>")

    out.append('<section id="histograms"><h2>Per-patient metrics</h2><div class="hists">')
    for name, values in page.histograms.items():
        out.append(f"<figure>{histogram_svg(values, title=name)}<figcaption>{e(name)}</figcaption></figure>")
    if not page.histograms:
        out.append('<p class="notes">No per-patient values.</p>')
    out.append("</div></section>")
    out.append('<section id="notes"><h2>Notes and problems</h2><ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in page.notes) + "</ul></section>")
    out.append("</body></html>")
    return "\n".join(out)


def write_page(path: str | Path, page: Page) -> Path:
    """Render ``page`` and write it atomically to ``path``."""
    return write_text(path, render_page(page))
