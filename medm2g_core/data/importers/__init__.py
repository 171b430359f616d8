"""Public datasets as downloaded → canonical patient folders (DESIGN.md §3), by symlink.

```python
from medm2g_core.data.importers import import_dataset
result = import_dataset("iu-xray", "downloads/iu_xray", out="cohorts/iu")
result.patients, result.reports_only, result.splits, result.problems
```

One module per dataset (``iu_xray``, ``mimic_cxr``, ``synthrad``, ``ixi``, ``brats``), each with an
``import_<dataset>(source, *, out, copy, progress)`` function; ``base`` holds what they share.
"""

from __future__ import annotations

from pathlib import Path

from medm2g_core.data.importers.base import ImportResult
from medm2g_core.errors import ConfigError
from medm2g_core.modalities import Modality
from medm2g_core.types import ProgressFn, no_progress

__all__ = ["DATASETS", "ImportResult", "import_dataset"]

DATASETS = ("iu-xray", "mimic-cxr", "synthrad", "ixi", "brats")


def import_dataset(
    dataset: str,
    source: str | Path,
    *,
    out: str | Path,
    copy: bool = False,
    mr_modality: Modality | None = None,
    progress: ProgressFn = no_progress,
) -> ImportResult:
    """Import ``dataset`` from ``source`` into patient folders under ``out``.

    Args:
        dataset: one of ``DATASETS``.
        source: the dataset's top folder as downloaded.
        out: the cohort folder to write (created; existing identical files are left alone).
        copy: copy images/volumes instead of symlinking them.
        mr_modality: SynthRAD only — the modality its ``mr.nii.gz`` is imported as (default: T1 for
            brain, T2 for pelvis).
        progress: receives one ``ProgressEvent`` per study.

    Raises:
        ConfigError: unknown dataset, or an option the dataset does not take.
        InputError: ``source`` missing, or nothing of the dataset's layout found in it.
    """
    name = dataset.strip().lower()
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    if mr_modality is not None and name != "synthrad":
        raise ConfigError(f"--mr-as applies to synthrad only, not {name}")
    if name == "iu-xray":
        from medm2g_core.data.importers.iu_xray import import_iu_xray

        return import_iu_xray(source, out=out, copy=copy, progress=progress)
    if name == "mimic-cxr":
        from medm2g_core.data.importers.mimic_cxr import import_mimic_cxr

        return import_mimic_cxr(source, out=out, copy=copy, progress=progress)
    if name == "synthrad":
        from medm2g_core.data.importers.synthrad import import_synthrad

        return import_synthrad(source, out=out, copy=copy, mr_modality=mr_modality, progress=progress)
    if name == "ixi":
        from medm2g_core.data.importers.ixi import import_ixi

        return import_ixi(source, out=out, copy=copy, progress=progress)
    from medm2g_core.data.importers.brats import import_brats

    return import_brats(source, out=out, copy=copy, progress=progress)
