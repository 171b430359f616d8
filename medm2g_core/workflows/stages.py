"""What the demo workflows share: a resumable stage runner and the pieces of their HTML pages.

``StageRunner.do(stage)`` runs one ``Stage`` unless the state file (``OUT/<state file>``) records it finished
with the same inputs (its settings and the keys of the stages it depends on); a training stage that was
interrupted resumes (``resume=True``) when the state file says it started with the same inputs. The state file
is rewritten atomically after each stage. ``workflows.demo`` (phantoms) and ``workflows.demo_real`` (the
shared real sets) both run their plans through it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from medm2g_core.types import ProgressEvent, ProgressFn

STATE_VERSION = 1


@dataclass
class StageRecord:
    """One stage of this run: ``reused`` when the state file already had it with the same inputs."""

    name: str
    seconds: float
    reused: bool


@dataclass
class Stage:
    """One step of a plan: ``action(resume) → JSON-able result``; ``clean`` is emptied before a fresh run."""

    name: str
    inputs: dict[str, Any]
    after: tuple[str, ...]
    action: Callable[[bool], dict[str, Any]]
    clean: tuple[Path, ...] = ()
    resumable: bool = False  # training: an interrupted run continues from its checkpoint


class StageState:
    """``OUT/<state file>``: ``{"version", "stages": {name: {"key", "status", "seconds", "result"}}}``."""

    def __init__(self, path: Path):
        from medm2g_core.serialization import read_json

        self.path = path
        self.data: dict[str, Any] = {"version": STATE_VERSION, "stages": {}}
        if path.is_file():
            try:
                loaded = read_json(path)
            except (OSError, ValueError):
                loaded = None
            if isinstance(loaded, dict) and loaded.get("version") == STATE_VERSION and isinstance(loaded.get("stages"), dict):
                self.data = loaded

    def entry(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {})

    def finished(self, name: str, key: str) -> bool:
        entry = self.entry(name)
        return entry.get("status") == "finished" and entry.get("key") == key

    def started(self, name: str, key: str) -> bool:
        entry = self.entry(name)
        return entry.get("status") == "started" and entry.get("key") == key

    def mark(self, name: str, key: str, status: str, **details: Any) -> None:
        from medm2g_core.serialization import write_json

        self.data["stages"][name] = {"key": key, "status": status, **details}
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json(self.path, self.data)

    def seconds(self) -> dict[str, float]:
        """Stage → the wall seconds it took when it last ran."""
        return {name: float(entry.get("seconds", 0.0)) for name, entry in self.data["stages"].items()}


def stage_key(inputs: Any) -> str:
    """A short hash of a stage's JSON-able inputs."""
    from medm2g_core.serialization import to_jsonable

    return hashlib.sha256(json.dumps(to_jsonable(inputs), sort_keys=True).encode("utf-8")).hexdigest()[:16]


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class StageRunner:
    """Runs stages in order, reusing finished ones; ``results[name]`` holds each stage's result.

    ``task`` names the outer progress events (one per stage, ``message`` = stage name); each stage's own
    events are forwarded with the stage name prefixed (``stage_progress``).
    """

    def __init__(self, *, out_dir: Path, state_file: str, bundle_name: str, seed: int, progress: ProgressFn, task: str = "demo"):
        self.out_dir = out_dir
        # The demo folder layout both demos share: OUT/cohort, OUT/<bundle>, OUT/predictions, OUT/evaluation.
        self.cohort = out_dir / "cohort"
        self.bundle = out_dir / bundle_name
        self.predictions = out_dir / "predictions"
        self.evaluation = out_dir / "evaluation"
        self.seed = seed
        self.outer_progress = progress
        self.task = task
        self.state = StageState(out_dir / state_file)
        self.records: list[StageRecord] = []
        self.keys: dict[str, str] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.total = 0

    def progress(self, event: ProgressEvent) -> None:
        self.outer_progress(event)

    def stage_progress(self, stage: str) -> ProgressFn:
        def forward(event: ProgressEvent) -> None:
            self.outer_progress(replace(event, task=f"{stage}: {event.task}" if event.task else stage))

        return forward

    def do(self, stage: Stage) -> None:
        index = len(self.records)
        key = stage_key({"inputs": stage.inputs, "after": [self.keys[name] for name in stage.after], "seed": self.seed})
        self.keys[stage.name] = key
        self.progress(ProgressEvent(task=self.task, completed=index, total=self.total, message=stage.name))
        if self.state.finished(stage.name, key):
            self.results[stage.name] = self.state.entry(stage.name).get("result", {})
            self.records.append(StageRecord(stage.name, 0.0, True))
            return
        resume = stage.resumable and self.state.started(stage.name, key)
        if not resume:
            for path in stage.clean:
                remove_path(path)
        self.state.mark(stage.name, key, "started")
        began, cpu_began = time.monotonic(), time.process_time()
        result = stage.action(resume)
        seconds = round(time.monotonic() - began, 1)
        # CPU seconds of this process (all threads): on a shared machine wall time overstates the cost.
        cpu_seconds = round(time.process_time() - cpu_began, 1)
        self.results[stage.name] = result
        self.state.mark(stage.name, key, "finished", seconds=seconds, cpu_seconds=cpu_seconds, resumed=resume, result=result)
        self.records.append(StageRecord(stage.name, seconds, False))


# --------------------------------------------------------------------------- page pieces
def table_json(evaluation: Any) -> dict[str, Any]:
    """An ``evaluate`` result as JSON: its table, ``values`` (system → metric → value) and the first problems."""
    columns, rows = evaluation.table()
    values = {name: {metric: summary.value for metric, summary in system.metrics.items()}
              for name, system in evaluation.systems.items()}
    return {"columns": columns, "rows": [[name, *cells] for name, cells in rows], "values": values,
            "problems": evaluation.problems[:20]}


def pick(values: dict[str, Any], pattern: str) -> float | None:
    """The first value whose metric name matches ``pattern`` (a regex)."""
    for name, value in values.items():
        if re.search(pattern, name) and value is not None:
            return float(value)
    return None


def body_of(page: Path, prefix: str) -> str:
    """The sections of an evaluate page (its <h1> dropped, ids made unique) for inclusion in another page."""
    if not page.is_file():
        return '<p class="notes">page missing</p>'
    text = page.read_text(encoding="utf-8")
    start, end = text.find("<body>"), text.rfind("</body>")
    body = text[start + len("<body>"): end] if start >= 0 and end > start else text
    body = re.sub(r"<h1>.*?</h1>", "", body, count=1, flags=re.S)
    body = body.replace('id="', f'id="{prefix}-').replace("<h2>", "<h3>").replace("</h2>", "</h3>")
    return body


def embedded_png(path: Path, alt: str) -> str:
    """An <img> holding the PNG itself (the page stays one file)."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def budget_text(budget: dict[str, Any] | None) -> str:
    """``"1000 steps, 209 s"``; the reason a system trains nothing (``{"training": why}``); ``fitted, no steps``."""
    if budget is None:
        return "—"
    if budget.get("steps"):
        seconds = budget.get("seconds")
        return f"{budget['steps']} steps" + (f", {seconds:.0f} s" if isinstance(seconds, (int, float)) else "")
    if "training" in budget:
        return str(budget["training"])
    return "fitted, no steps"


def write_tile_grid(path: str | Path, rows: list[tuple[str, list[tuple[str, Any]]]], *, tile: int, left: int, footer: str) -> Path:
    """A grey PNG montage: one row per ``(label, [(title, uint8 image or None), ...])``, tiles resized to ``tile``
    pixels under their titles, the row label in a ``left``-pixel margin, ``footer`` along the bottom (atomic)."""
    from PIL import Image, ImageDraw

    from medm2g_core.serialization import atomic_path

    columns = max((len(tiles) for _, tiles in rows), default=1)
    header = 16
    canvas = Image.new("L", (left + tile * columns, max(len(rows), 1) * (tile + header) + 18), 0)
    draw = ImageDraw.Draw(canvas)
    for row, (name, tiles) in enumerate(rows):
        top = row * (tile + header)
        draw.text((4, top + header + 4), name, fill=255)
        for column, (title, image) in enumerate(tiles):
            draw.text((left + column * tile + 3, top + 2), title, fill=220)
            if image is not None:
                canvas.paste(Image.fromarray(image).resize((tile, tile), Image.BILINEAR), (left + column * tile, top + header))
    draw.text((4, canvas.height - 15), footer, fill=200)
    with atomic_path(path, suffix=".png") as tmp:
        canvas.save(tmp, format="PNG", optimize=True)
    return Path(path)
