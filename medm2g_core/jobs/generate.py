"""``medm2g generate`` over files, folders, stdin and report text: X-ray → report, report → X-ray.

Sources (``--from``, repeatable):

- a file: an X-ray (PNG/JPEG/DICOM), a report (``.txt``) or a volume (its middle axial slice);
- a patient folder: the file of the modality the target needs (``xray.png`` for ``--to report``,
  ``report.txt`` for ``--to xray``); a cohort folder (or ``-``, paths on stdin): every patient in it;
- anything else that does not look like a path: report text (``"FINDINGS: ... IMPRESSION: ..."``).

One ``--from`` may expand to many inputs (a batch, one output per patient). Several ``--from``
values are **composed** into one condition (CoDi-style): the first one picks the flow, the others
join as extra sources with ``weights``; each must then name exactly one item.

Outputs with ``--out DIR``: ``DIR/<patient>/report.txt`` or ``xray.png`` (``xray.dcm`` with
``--format dicom``); inputs given as text write to ``DIR/`` itself. ``--samples K`` writes K files
(``report.txt``, ``report-2.txt`` ... ``report-K.txt``).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from medm2g_core.errors import ConfigError, InputError
from medm2g_core.inference.generate import TARGETS
from medm2g_core.jobs import inputs as batch_inputs
from medm2g_core.jobs import runs
from medm2g_core.modalities import Modality
from medm2g_core.types import ProgressFn, no_progress

TARGET_FILES = {Modality.REPORT: "report.txt", Modality.XRAY: "xray.png"}
PATH_SUFFIXES = (".txt", ".png", ".jpg", ".jpeg", ".dcm", ".nii", ".nii.gz", ".mha", ".nrrd")


def looks_like_path(value: str) -> bool:
    """A ``--from`` value that should be a file (so a typo fails loudly instead of becoming report text)."""
    if value == "-" or Path(value).exists():
        return True
    if any(c.isspace() for c in value.strip()):
        return False
    lowered = value.lower()
    return lowered.endswith(PATH_SUFFIXES) or "/" in value or os.sep in value or any(c in value for c in "*?[")


def _needed_source(target: Modality) -> Modality:
    return Modality.XRAY if target is Modality.REPORT else Modality.REPORT


def _expand_source(value: str, *, target: Modality, stdin: Any) -> list[tuple[str, Any, str | None]]:
    """One ``--from`` value → [(label, source path or text, patient)]."""
    if not looks_like_path(value):
        return [("<text>", value, None)]
    paths = batch_inputs.expand_folders(batch_inputs.expand_inputs([value], stdin=stdin))
    found = []
    for path in paths:
        if path.is_dir() and not batch_inputs.is_series_folder(path):
            files = batch_inputs.patient_files(path)
            wanted = _needed_source(target)
            chosen = files.get(wanted)
            found.append((str(path), chosen if chosen is not None else path, batch_inputs.patient_name(path)))
        else:
            found.append((str(path), path, batch_inputs.patient_name(path)))
    return found


def _load_source(source: Any) -> Any:
    from medm2g_core import io

    if isinstance(source, str):
        return source
    path = Path(source)
    if path.is_dir() and not batch_inputs.is_series_folder(path):
        raise InputError(path, "holds no xray.png/report.txt for this target", "pass the file itself")
    if path.name.lower().endswith(".txt"):
        report = io.read_report(path)
        if report.is_empty:
            raise InputError(path, "is an empty report", "give a report with FINDINGS/IMPRESSION text")
        return report
    return io.read(path)


def generate_batch(
    sources: Sequence[str],
    *,
    to: Modality,
    model: str | Path | None = None,
    out: Path | None = None,
    output_format: str = "png",
    samples: int = 1,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    weights: Sequence[float] | None = None,
    overwrite: bool = False,
    skip_existing: bool = False,
    device: str = "auto",
    stdin: Any = None,
    each: Sequence[str | Path] | None = None,
    progress: ProgressFn = no_progress,
    on_result: runs.ResultFn = runs.no_result,
    on_warning: Callable[[str], None] = lambda message: None,
) -> runs.BatchResult:
    """Each input (or one composition of several) → report.txt / xray.png files, and ``OUT/run.json``.

    ``sources`` are the ``--from`` values: one (a file, patient or cohort folder, ``-`` for paths on ``stdin``, or
    report text) is generated from item by item; several are composed into one generation. ``each``, instead of
    ``sources``: files or folders generated from one by one (what ``-`` reads from stdin, for callers in Python).
    """
    from medm2g_core import io
    from medm2g_core.inference.model import MedM2G

    started = time.monotonic()
    target = to
    if target not in TARGETS:
        raise ConfigError(f"--to {target.value}: generate makes report or xray; use `medm2g translate --to {target.value}` for volumes")
    if output_format not in ("png", "dicom"):
        raise ConfigError(f"--format {output_format!r}: use png or dicom (X-ray outputs)")
    if overwrite and skip_existing:
        raise ConfigError("--overwrite and --skip-existing contradict each other; choose one")
    if each is not None and sources:
        raise ConfigError("pass the inputs to generate from one by one (each) or the --from sources, not both")
    if not sources and not each:
        raise InputError(None, "no --from given", "pass --from FILE, a patient folder, or quoted report text")
    weight_values = None if weights is None else [float(w) for w in weights]
    expanded = [_expand_source(value, target=target, stdin=stdin) for value in sources]
    if each is not None:
        groups = [[item] for value in each for item in _expand_source(str(value), target=target, stdin=None)]
    elif len(sources) > 1:
        too_many = [value for value, found in zip(sources, expanded) if len(found) != 1]
        if too_many:
            raise ConfigError(f"--from {too_many[0]!r} names {len(expanded[sources.index(too_many[0])])} inputs; "
                              "when composing several --from, each must name exactly one file or text")
        groups = [[found[0] for found in expanded]]
    else:
        groups = [[item] for item in expanded[0]]
    loaded = MedM2G.from_pretrained(model, device=device)
    out_dir = Path(out) if out is not None else Path("medm2g-output")
    name = TARGET_FILES[target] if not (target is Modality.XRAY and output_format == "dicom") else "xray.dcm"
    jobs = []
    for group in groups:
        label, _, patient = next((g for g in group if g[2] is not None), group[0])
        destination = out_dir / patient / name if patient else out_dir / name
        jobs.append(runs.Job(input=" + ".join(g[0] for g in group), key=os.path.relpath(destination, out_dir),
                             output=destination, sources={i: g[1] for i, g in enumerate(group)}))
    arguments = {"to": target.value, "format": output_format, "samples": samples, "seed": seed, "steps": steps,
                 "guidance": guidance, "weights": weight_values,
                 # report text from the command line is recorded by hash only (it may name the patient)
                 "text_sha256": [hashlib.sha256(g[1].encode()).hexdigest()[:16] for g in groups[0] if isinstance(g[1], str)]
                 if len(groups) == 1 else None}

    def work(job: runs.Job, expected: str) -> runs.ItemResult:
        items = [_load_source(source) for source in job.sources.values()]
        result = loaded.generate(to=target, sources=items, samples=samples, seed=seed, steps=steps, guidance=guidance,
                                 weights=weight_values, progress=progress)
        runs.remove_stale_sidecar(job.output)
        written = []
        stem = batch_inputs.strip_suffix(job.output.name)
        for k in range(samples):
            path = job.output if k == 0 else job.output.with_name(f"{stem}-{k + 1}{job.output.name[len(stem):]}")
            if target is Modality.REPORT:
                written.append(str(io.write_report(path, result.reports[k], synthetic=True)))
            else:
                written.append(str(io.write(path, result.images[k], result.meta)))
        runs.write_sidecar(job.output, kind="generate", fingerprint_value=expected, model=loaded, flow=result.flow,
                           arguments=arguments, seed=seed, outputs=written, extra={"seconds": round(result.seconds, 3)})
        details: dict[str, Any] = {"flow": result.flow}
        if target is Modality.REPORT:
            details["texts"] = [report.text for report in result.reports]
        return runs.ItemResult(job.input, runs.STATUS_OK, output=written[0], outputs=written, details=details)

    return runs.run_batch(jobs, work, model=loaded, command="generate", arguments=arguments, seed=seed, out_dir=out_dir,
                          overwrite=overwrite, skip_existing=skip_existing, started=started,
                          on_result=on_result, on_warning=on_warning)
