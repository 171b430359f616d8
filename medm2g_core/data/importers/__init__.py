"""Public datasets as downloaded → canonical patient folders (DESIGN.md §3), by symlink.

```python
from medm2g_core.data.importers import import_dataset
result = import_dataset("iu-xray", "downloads/iu_xray", out="cohorts/iu")
result.patients, result.reports_only, result.splits, result.problems
```

One module per dataset (``iu_xray``, ``mimic_cxr``, ``synthrad``, ``ixi``, ``brats``, ``aanlib``,
``kermany``), each with an ``import_<dataset>(source, *, out, ..., progress)`` function; ``base`` holds
what they share (placing files, the split by subject/case/person ``assign_splits``).
"""

from __future__ import annotations

from pathlib import Path

from medm2g_core.data.importers.base import ImportResult
from medm2g_core.errors import ConfigError
from medm2g_core.modalities import Modality
from medm2g_core.types import ProgressFn, no_progress

__all__ = ["DATASETS", "ImportResult", "import_dataset"]

DATASETS = ("iu-xray", "mimic-cxr", "synthrad", "ixi", "brats", "aanlib", "kermany")
_OPTIONS = {"register": ("ixi",), "limit": ("aanlib", "kermany"), "seed": ("ixi", "brats", "aanlib", "kermany")}


def import_dataset(
    dataset: str,
    source: str | Path,
    *,
    out: str | Path,
    copy: bool = False,
    mr_modality: Modality | None = None,
    register: bool = False,
    limit: int | None = None,
    seed: int | None = None,
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
        register: IXI only — resample T2/PD onto the T1 grid (``ixi.import_ixi``).
        limit: AANLIB (slices per case) and Kermany (children per class) only — import a subset.
        seed: the seed of the split by subject/case/person (IXI, BraTS, AANLIB, Kermany; default 0).
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
    for option, value in (("register", register), ("limit", limit), ("seed", seed)):
        if value not in (None, False) and name not in _OPTIONS[option]:
            raise ConfigError(f"--{option} applies to {', '.join(_OPTIONS[option])} only, not {name}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, not {limit}")
    seed = 0 if seed is None else seed
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

        return import_ixi(source, out=out, copy=copy, register=register, seed=seed, progress=progress)
    if name == "aanlib":
        from medm2g_core.data.importers.aanlib import import_aanlib

        if copy:
            raise ConfigError("--copy does not apply to aanlib: its PNG slices are converted into volumes, never linked")
        return import_aanlib(source, out=out, seed=seed, limit=limit, progress=progress)
    if name == "kermany":
        from medm2g_core.data.importers.kermany import import_kermany

        return import_kermany(source, out=out, copy=copy, seed=seed, limit=limit, progress=progress)
    from medm2g_core.data.importers.brats import import_brats

    return import_brats(source, out=out, copy=copy, seed=seed, progress=progress)
