"""The modalities medm2g knows, their canonical file names, and the flow pairs between them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


CT_HU_RANGE = (-1024.0, 3000.0)
"""The physical CT range in HU (air to dense bone): the default CT window of normalisation, the clip
of translated CT and the range the image metrics clip to."""
MRI_PERCENTILES = (0.5, 99.5)
"""Volume percentiles an MRI is normalised with unless a recipe's ``data.mri_percentiles`` says otherwise."""


class Modality(str, Enum):
    """A modality; the value is its canonical file stem in a patient folder (DESIGN.md §3)."""

    XRAY = "xray"
    CT = "ct"
    MRI_T1 = "mri-t1"
    MRI_T2 = "mri-t2"
    MRI_PD = "mri-pd"
    MRI_FLAIR = "mri-flair"
    MRI_T1C = "mri-t1c"
    REPORT = "report"

    @property
    def is_image(self) -> bool:
        return self is not Modality.REPORT

    @property
    def is_mri(self) -> bool:
        """An MRI contrast (T1, T2, PD, FLAIR, contrast-enhanced T1): percentile-normalised, one encoder."""
        return self.value.startswith("mri-")

    @property
    def is_volume(self) -> bool:
        return self is Modality.CT or self.is_mri

    @property
    def encoder_family(self) -> str:
        """Which aligned encoder serves this modality (MRI contrasts share one MRI encoder)."""
        return "mri" if self.is_mri else self.value


IMAGE_MODALITIES = tuple(m for m in Modality if m.is_image)
VOLUME_MODALITIES = tuple(m for m in Modality if m.is_volume)
MRI_MODALITIES = tuple(m for m in Modality if m.is_mri)

# Short names accepted on the command line (``--pair t2+pd-t1``, ``--to ct``).
ALIASES: dict[str, Modality] = {
    "xray": Modality.XRAY,
    "cxr": Modality.XRAY,
    "ct": Modality.CT,
    "mri": Modality.MRI_T1,
    "t1": Modality.MRI_T1,
    "mri-t1": Modality.MRI_T1,
    "t2": Modality.MRI_T2,
    "mri-t2": Modality.MRI_T2,
    "pd": Modality.MRI_PD,
    "mri-pd": Modality.MRI_PD,
    "flair": Modality.MRI_FLAIR,
    "t2f": Modality.MRI_FLAIR,
    "mri-flair": Modality.MRI_FLAIR,
    "t1c": Modality.MRI_T1C,
    "t1ce": Modality.MRI_T1C,
    "t1gd": Modality.MRI_T1C,
    "mri-t1c": Modality.MRI_T1C,
    "report": Modality.REPORT,
    "text": Modality.REPORT,
}


def parse_modality(name: str) -> Modality:
    """``"t1"`` → ``Modality.MRI_T1``; raises ``ValueError`` listing the valid names."""
    key = name.strip().lower()
    if key not in ALIASES:
        raise ValueError(f"unknown modality {name!r}; valid: {', '.join(sorted(ALIASES))}")
    return ALIASES[key]


@dataclass(frozen=True)
class Pair:
    """A generation flow: one or more sources → one target (``t2+pd-t1``, ``mri-ct``)."""

    sources: tuple[Modality, ...]
    target: Modality

    @property
    def name(self) -> str:
        """Canonical folder name of the flow inside a bundle, e.g. ``mri-t2+mri-pd-mri-t1``."""
        return "+".join(s.value for s in self.sources) + "__" + self.target.value

    @property
    def is_paired_image(self) -> bool:
        """Registered image→image flows concatenate the source spatially (voxel-for-voxel anatomy)."""
        return self.target.is_volume and all(s.is_volume for s in self.sources)

    def __str__(self) -> str:
        return self.name


def parse_pair(text: str) -> Pair:
    """Parse ``xray-report``, ``mri-ct``, ``t2+pd-t1`` or ``mri-t1-ct``.

    The last ``-`` that leaves a valid modality on both sides splits sources from target, so
    hyphenated names such as ``mri-t1`` work.
    """
    text = text.strip().lower()
    for cut in range(len(text) - 1, 0, -1):
        if text[cut] != "-":
            continue
        left, right = text[:cut], text[cut + 1 :]
        try:
            target = parse_modality(right)
            sources = tuple(parse_modality(s) for s in left.split("+"))
        except ValueError:
            continue
        if target in sources or len(set(sources)) != len(sources):
            break
        return Pair(sources, target)
    raise ValueError(
        f"cannot read flow pair {text!r}; expected SOURCE[+SOURCE]-TARGET such as "
        "xray-report, report-xray, mri-ct, ct-mri, t1-t2, t2-t1, t2+pd-t1, t2+flair-t1, t1-flair"
    )


CANONICAL_PAIRS = ("xray-report", "report-xray", "mri-ct", "ct-mri", "t1-t2", "t2-t1", "t2+pd-t1", "t2+flair-t1", "t1-flair")

CT_WINDOW_8BIT_UNITS = "8-bit window (not HU)"
CT_WINDOW_8BIT_RANGE = (0.0, 255.0)
"""The ``ImageMeta.units`` of a CT that reached us already windowed to 8 bits (AANLIB's atlas PNGs):
grey levels 0..255 of a display window, with no Hounsfield scale to recover. Nothing reports such a CT
in HU (``metrics``/``workflows.evaluate`` label its errors in grey levels). A flow trained on such a CT records
these units (recipe ``data.ct_units``), so its translated CT carries them too; ``CT_WINDOW_8BIT_RANGE`` is its range."""
