"""Cut one registered subject into axial slabs, each a patient folder, so a single-subject set has a held-out part.

IXI002 in ``../shared/data`` is one subject: to train and test on it without testing on trained slices, its volumes
are cut along the scanner's inferior–superior axis into an inferior, a middle and a superior slab (by the brain's
extent in ``mask.nii.gz`` when there is one); the middle one is held out. Each slab keeps its exact place in the
scanner (nibabel's slicer moves the affine's origin), so a slab's prediction overlays the slab and the original.
Neighbouring slabs share anatomy across the cut, so this measures less than a held-out subject does; it says so
where it is used.
"""

from __future__ import annotations

from pathlib import Path

from medm2g_core.errors import InputError

SLABS = ("inferior", "middle", "superior")
HELD_OUT_SLAB = "middle"


def _superior_axis(affine) -> int:
    import nibabel

    codes = nibabel.aff2axcodes(affine)
    return next(axis for axis, code in enumerate(codes) if code in ("S", "I"))


def split_slabs(patient: str | Path, out: str | Path, *, middle: tuple[float, float] = (0.35, 0.65)) -> dict[str, list[str]]:
    """Write ``OUT/<id>-inferior|middle|superior/`` holding every NIfTI of ``patient`` cut along its S–I axis.

    ``middle``: the held-out slab, as fractions of the brain's extent along that axis (the mask's, else the first
    volume's nonzero voxels). Returns ``{"train": [inferior, superior ids], "test": [middle id]}``.

    Raises:
        InputError: no NIfTI in ``patient``, or volumes on different grids (cut only registered volumes: import
            IXI with ``--register``).
    """
    import nibabel
    import numpy as np

    from medm2g_core.serialization import atomic_path

    patient, out = Path(patient), Path(out)
    files = sorted(patient.glob("*.nii.gz"))
    if not files:
        raise InputError(patient, "holds no .nii.gz volume to cut into slabs", "import the subject first")
    images = {f.name: nibabel.load(str(f)) for f in files}
    first = images[files[0].name]
    for name, image in images.items():
        if image.shape[:3] != first.shape[:3] or not np.allclose(image.affine, first.affine, atol=1e-3):
            raise InputError(patient / name, f"is on another grid than {files[0].name}; slabs cut registered volumes only",
                             "import IXI with --register (T2/PD resampled onto the T1 grid)")
    axis = _superior_axis(first.affine)
    reference = images.get("mask.nii.gz", first)
    inside = np.asarray(reference.dataobj) > 0
    present = np.flatnonzero(inside.any(axis=tuple(a for a in range(inside.ndim) if a != axis)))
    low, high = (int(present[0]), int(present[-1]) + 1) if present.size else (0, first.shape[axis])
    cuts = [0, low + int(round(middle[0] * (high - low))), low + int(round(middle[1] * (high - low))), first.shape[axis]]
    ids = {}
    for slab, start, stop in zip(SLABS, cuts[:-1], cuts[1:]):
        ids[slab] = f"{patient.name}-{slab}"
        index = [slice(None)] * 3
        index[axis] = slice(start, stop)
        for name, image in images.items():
            part = image.slicer[tuple(index)]
            target = out / ids[slab] / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target, suffix=".nii.gz") as tmp:
                nibabel.save(part, str(tmp))
    return {"train": [ids["inferior"], ids["superior"]], "test": [ids[HELD_OUT_SLAB]]}
