import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from medm2g_core.metrics.report import ImageRow, Page, ReportPair, render_page, write_page


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.srcs, self.classes = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag in ("img", "script", "link") and ("src" in attrs or "href" in attrs):
            self.srcs.append(attrs.get("src") or attrs.get("href"))
        if "class" in attrs:
            self.classes.append(attrs["class"])


def _page() -> Page:
    yy, xx = np.mgrid[0:48, 0:48]
    reference = np.where((yy - 24) ** 2 + (xx - 24) ** 2 < 300, 40.0, -1000.0)
    prediction = reference + 30 * np.sin(xx / 5.0)
    return Page(
        title="medm2g evaluate — translation",
        columns=["model", "identity"],
        table=[("ct: PSNR[synthrad, HU -1024..3000, mask: HU>-500]", ["30.1 ± 1.2", "21.0 ± 0.4"])],
        image_rows=[ImageRow("P0001", {"input": reference / 10, "prediction": prediction, "reference": reference,
                                        "error": np.abs(prediction - reference), "uncertainty": None},
                             {"prediction": (-160, 240), "reference": (-160, 240), "error": (0, 100), "input": (-100, 10)})],
        report_pairs=[ReportPair("P0002", "The heart is enlarged.", "No cardiomegaly.", {"cardiomegaly": 1}, {"cardiomegaly": 0})],
        histograms={"ct: PSNR": [30.0, 31.0, 29.5, 33.0]},
        notes=["P0003: missing prediction"],
    )


def test_page_is_self_contained_and_has_five_panels(tmp_path):
    path = write_page(tmp_path / "eval.html", _page())
    parser = _Collect()
    parser.feed(path.read_text())
    assert {"metrics", "images", "reports", "histograms", "notes"} <= set(parser.ids)
    assert parser.srcs and all(src.startswith("data:image/png;base64,") for src in parser.srcs)
    assert "disagree" in parser.classes
    assert "http" not in path.read_text().replace("http://www.w3.org/2000/svg", "")
    assert "<svg" in path.read_text() and "not available" in path.read_text()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium not installed")
def test_page_renders_in_headless_chromium(tmp_path):
    page = tmp_path / "eval.html"
    write_page(page, _page())
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()],
        check=True, capture_output=True, timeout=90,
    )
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (2000, 1200)
    assert image.std() > 10  # something was drawn, not a blank page
    # the red "disagree" badge colour (#f6d4d4) appears somewhere
    assert np.any(np.all(np.abs(image.astype(int) - [246, 212, 212]) < 4, axis=-1))
    if (keep := __import__("os").environ.get("MEDM2G_KEEP_SCREENSHOT")):
        shutil.copy(shot, keep)
