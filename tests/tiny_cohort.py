"""A tiny on-disk cohort written with medm2g_core.io (for tests until/besides the phantom generator).

Half the patients have an "effusion": a bright band at the bottom of every image, and the word in the
report; alignment should learn to tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medm2g_core import io
from medm2g_core.modalities import Modality
from medm2g_core.types import ImageMeta


@dataclass
class Record:
    patient_id: str
    folder: Path
    files: dict = field(default_factory=dict)
    labels: dict | None = None
    problems: list = field(default_factory=list)


def write_cohort(root: Path, *, patients: int = 8, size: int = 16, depth: int = 6, seed: int = 0, ct_only: tuple = ()) -> list[Record]:
    rng = np.random.default_rng(seed)
    records = []
    for p in range(patients):
        pid = f"P{p:04d}"
        folder = root / pid
        folder.mkdir(parents=True, exist_ok=True)
        effusion = p % 2 == 1
        base = rng.normal(0, 1, (size, size, depth))
        body = np.zeros((size, size, depth))
        body[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
        if effusion:
            body[:, -size // 4 :] += 2
        meta3 = ImageMeta(spacing=(2.0, 2.0, 3.0), shape=(size, size, depth), synthetic=True)
        files = {}
        io.write(folder / "ct.nii.gz", (body * 400 - 900 + 20 * base).astype(np.int16), meta3.replace(units="HU", modality="ct"))
        files[Modality.CT] = folder / "ct.nii.gz"
        if pid not in ct_only:
            io.write(folder / "mri-t1.nii.gz", (body * 300 + 10 * base + 50).astype(np.float32), meta3.replace(modality="mri-t1"))
            io.write(folder / "mri-t2.nii.gz", (body * 200 + 10 * base + 80).astype(np.float32), meta3.replace(modality="mri-t2"))
            files[Modality.MRI_T1] = folder / "mri-t1.nii.gz"
            files[Modality.MRI_T2] = folder / "mri-t2.nii.gz"
        xray = (body.sum(axis=2) * 5000 + rng.uniform(0, 2000, (size, size))).clip(0, 65535).astype(np.uint16)
        io.write(folder / "xray.png", xray, ImageMeta(spacing=(1.0, 1.0), shape=(size, size), synthetic=True, modality="xray"))
        files[Modality.XRAY] = folder / "xray.png"
        text = "FINDINGS: " + ("There is a pleural effusion." if effusion else "No effusion. Lungs are clear.") + " IMPRESSION: done."
        io.write_report(folder / "report.txt", text, synthetic=True)
        files[Modality.REPORT] = folder / "report.txt"
        records.append(Record(pid, folder, files, {"effusion": int(effusion)}))
    return records
