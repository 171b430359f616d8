"""``MedM2G``: the library's front door — one loaded bundle, every flow it holds, translate and generate.

```python
from medm2g_core import MedM2G, io
model = MedM2G.from_pretrained("demo.m2g", device="cpu")
volume, meta = io.read("P0001/mri-t1.nii.gz")
result = model.translate(volume, meta, to="ct", samples=4, seed=0)   # .image, .std, .meta
io.write("P0001/ct.nii.gz", result.image, result.meta)
report = model.generate(to="report", source=io.read("P0001/xray.png"))   # .text, .reports
```

Opening reads ``bundle.json`` only; each flow is loaded on first use and cached, and the aligned
encoders and shared cross-attention are loaded once and handed to every flow. The CLI's batch
commands hold one ``MedM2G`` for a whole run.

Flow choice for a target and a set of sources: a flow with exactly those sources; else a
multi-source flow that has them all (the missing ones are dropped, as in training); else a flow from
one of them, the others composed in CoDi-style (``FlowModel.predict`` with extra sources and
``weights``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medm2g_core.errors import BundleError, ConfigError, InputError
from medm2g_core.modalities import Modality, Pair, parse_modality, parse_pair
from medm2g_core.inference.generate import TARGETS, GenerationResult, generate_one, source_modality
from medm2g_core.inference.translate import TranslationResult, translate_volume, translate_volume_jointly
from medm2g_core.types import ImageMeta, ProgressFn, no_progress

ModalityLike = Modality | str


def _modality(value: ModalityLike) -> Modality:
    if isinstance(value, Modality):
        return value
    try:
        return parse_modality(value)
    except ValueError as error:
        raise ConfigError(str(error)) from None


class MedM2G:
    """A model bundle opened for inference (weights loaded lazily, flow by flow)."""

    def __init__(self, path: Path, *, device: str, bundle: Any):
        self.path = Path(path)
        self.device = device
        self.bundle = bundle
        self._flows: dict[str, Any] = {}
        self._joints: dict[tuple[Pair, ...], Any] = {}
        self._align: Any = None
        self._shared: Any = None
        from medm2g_core.bundle import bundle_fingerprint

        self.fingerprint = bundle_fingerprint(self.path)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, *, device: str = "cpu") -> "MedM2G":
        """Open a bundle for inference (reads ``bundle.json``; weights load lazily, flow by flow).

        Args:
            path: bundle folder, or None for the default bundle (``bundle.resolve_model``).
            device: ``auto|cpu|cuda[:N]|mps``; a requested device that is missing is a ``ConfigError``.

        Raises:
            BundleError: no such bundle / no default bundle (run `medm2g demo` or pass --model).
        """
        from medm2g_core.bundle import Bundle, resolve_model
        from medm2g_core.training.devices import resolve_device

        resolved = resolve_model(path)
        bundle = Bundle.open(resolved)
        return cls(resolved, device=resolve_device(device), bundle=bundle)

    # -- what the bundle holds ------------------------------------------------------------------
    @property
    def synthetic(self) -> bool:
        """True when the bundle was trained on synthetic phantoms (every run must say so)."""
        return bool(self.bundle.synthetic)

    @property
    def synthetic_warning(self) -> str:
        return f"model {self.path.name} was trained on synthetic phantoms; output means nothing clinically"

    @property
    def flows(self) -> list[Pair]:
        """The bundle's flows in training order."""
        found = []
        for name in self.bundle.flows:
            try:
                found.append(_pair_from_folder(name))
            except ValueError:
                continue
        return found

    def select_flow(self, *, target: ModalityLike, available: Sequence[ModalityLike]) -> Pair:
        """The flow to make ``target`` from (some of) ``available`` sources (module docstring's order).

        Raises:
            BundleError: no flow of the bundle makes ``target`` from any of them.
        """
        target = _modality(target)
        have = [_modality(m) for m in available if _modality(m) is not target]
        candidates = [pair for pair in self.flows if pair.target is target]
        exact = [p for p in candidates if set(p.sources) == set(have)]
        if exact:
            return exact[0]
        superset = [p for p in candidates if set(have) and set(have) <= set(p.sources)]
        if superset:
            return superset[0]
        for source in have:  # in the caller's order: the first one the bundle can translate from
            for pair in candidates:
                if set(pair.sources) <= set(have) and source in pair.sources:
                    return pair
        known = ", ".join(p.name for p in self.flows) or "none"
        raise BundleError(
            f"{self.path}: no flow makes {target.value} from {', '.join(m.value for m in have) or 'nothing'} (flows: {known})",
        ) if not candidates else InputError(
            None,
            f"the bundle's flows to {target.value} ({', '.join(p.name for p in candidates)}) need "
            f"{' or '.join('+'.join(s.value for s in p.sources) for p in candidates)}, but only "
            f"{', '.join(m.value for m in have) or 'nothing'} was given",
            "pass a source these flows take (--from)",
        )

    def flow(self, pair: Pair | str) -> Any:
        """The loaded ``FlowModel`` of ``pair`` (loaded on first use, then cached)."""
        from medm2g_core.flows.model import FlowModel

        pair = parse_pair(pair) if isinstance(pair, str) else pair
        if pair.name not in self._flows:
            model = FlowModel.load(self.path, pair, device=self.device, shared=self._shared, align=self._align)
            self._shared, self._align = model.shared, model.align
            self._flows[pair.name] = model
        return self._flows[pair.name]

    # -- translate -----------------------------------------------------------------------------
    def translate(
        self,
        volume: np.ndarray,
        meta: ImageMeta,
        *,
        to: ModalityLike,
        source: ModalityLike | None = None,
        additional: Mapping[ModalityLike, tuple[np.ndarray, ImageMeta]] | None = None,
        samples: int = 1,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        weights: Sequence[float] | Mapping[ModalityLike, float] | None = None,
        batch_size: int | None = None,
        mirror: bool = False,
        progress: ProgressFn = no_progress,
    ) -> TranslationResult:
        """Translate a volume ``(i, j, k)`` to modality ``to`` on the same grid.

        Args:
            volume, meta: as ``io.read`` returns them (physical units; ``meta`` geometry is kept).
            to: target modality (``ct``, ``mri-t1``, ``mri-t2``, ``mri-pd``).
            source: the volume's modality when ``meta.modality`` does not say it.
            additional: more registered sources on the same grid (``{"mri-pd": (array, meta)}``) for
                multi-source flows or composition.
            samples: K samples; > 1 gives ``result.std`` (per-voxel std, an uncertainty map).
            seed: same seed → identical output; slice k uses ``translate.slice_seed(seed, k)``.
            weights: composition weights, one per source in order (primary first) or by modality.
            batch_size: slices per forward pass (memory/speed only).
            mirror: also translate each slice mirrored left–right and average (test-time mirroring; twice the time).

        Returns:
            ``TranslationResult(image, std, meta, flow, warnings, seconds)``; ``image`` float32 in HU for
            CT (clipped to [-1024, 3000]).
        """
        if not isinstance(to, (str, Modality)):
            raise ConfigError(f"translate makes one target, got {list(to)!r}; translate_jointly(..., to=[...]) makes two in one loop")
        target = _modality(to)
        arrays = self._translation_sources(volume, meta, source=source, additional=additional, targets=[target])
        _check_samples(samples)
        pair = self.select_flow(target=target, available=list(arrays))
        weight_map = _weights(weights, list(arrays))
        result = translate_volume(self.flow(pair), arrays, meta, samples=samples, seed=seed, steps=steps, guidance=guidance,
                                  weights=weight_map, batch_size=batch_size, mirror=mirror, bundle_name=self.path.name,
                                  progress=progress)
        if self.synthetic:
            result.warnings.append(self.synthetic_warning)
        return result

    # -- joint translation ------------------------------------------------------------------------
    def joint_pairs(self, targets: Sequence[ModalityLike], *, available: Sequence[ModalityLike] | None = None) -> tuple[Pair, ...]:
        """The flows that make ``targets`` together from one source, which the bundle has a joint stage for.

        ``available``: the sources at hand (each target's flow is then ``select_flow``'s choice); None = any source
        two of the bundle's flows share (a pair with a trained joint stage first).

        Raises:
            BundleError: no joint stage for those flows — the message names ``medm2g train-flow --stage joint ...``.
            ConfigError: fewer than two targets, or no flows to them from one source.
        """
        from itertools import product

        from medm2g_core.bundle import JOINT, joint_name
        from medm2g_core.flows.joint import missing_joint_message

        wanted = [_modality(t) for t in targets]
        if len(wanted) != 2 or wanted[0] is wanted[1]:
            raise ConfigError(f"joint generation makes two different targets, got {', '.join(t.value for t in wanted)}")
        if available is not None:
            options = [tuple(self.select_flow(target=t, available=available) for t in wanted)]
        else:
            candidates = [[p for p in self.flows if p.target is t] for t in wanted]
            options = [combo for combo in product(*candidates) if len({c.sources for c in combo}) == 1]
        if not options:
            raise ConfigError(f"{self.path}: no two flows make {' and '.join(t.value for t in wanted)} from one source "
                              f"(flows: {', '.join(p.name for p in self.flows) or 'none'}); joint generation needs them")
        for combo in options:
            if self.bundle.has_component(JOINT, joint_name(combo[0].name, combo[1].name)):
                return combo
        raise BundleError(missing_joint_message(self.path, options[0]))

    def joint(self, pairs: Sequence[Pair]) -> Any:
        """The loaded ``flows.joint.JointFlowModel`` of ``pairs`` (loaded on first use, then cached)."""
        from medm2g_core.flows.joint import JointFlowModel

        key = tuple(pairs)
        if key not in self._joints:
            self._joints[key] = JointFlowModel.load(self.path, key, device=self.device, flows=[self.flow(p) for p in key])
        return self._joints[key]

    def translate_jointly(
        self,
        volume: np.ndarray,
        meta: ImageMeta,
        *,
        to: Sequence[ModalityLike],
        source: ModalityLike | None = None,
        additional: Mapping[ModalityLike, tuple[np.ndarray, ImageMeta]] | None = None,
        samples: int = 1,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        batch_size: int | None = None,
        mirror: bool = False,
        progress: ProgressFn = no_progress,
    ) -> dict[Modality, TranslationResult]:
        """Translate a volume to two targets in ONE sampling loop (the bundle's joint stage of their flows).

        Arguments as ``translate`` (``to``: the two targets, e.g. ``["ct", "mri-t2"]``). Never falls back to separate
        generation: without a joint stage for those flows it raises ``BundleError`` naming
        ``medm2g train-flow --stage joint --pair ...``.

        Returns:
            target → ``TranslationResult`` on the input's grid, in ``to``'s order.
        """
        wanted = [_modality(t) for t in to]
        arrays = self._translation_sources(volume, meta, source=source, additional=additional, targets=wanted)
        _check_samples(samples)
        pairs = self.joint_pairs(wanted, available=list(arrays))
        results = translate_volume_jointly(self.joint(pairs), arrays, meta, samples=samples, seed=seed, steps=steps,
                                           guidance=guidance, batch_size=batch_size, mirror=mirror, bundle_name=self.path.name,
                                           progress=progress)
        by_target = {_modality(r.meta.modality): r for r in results}
        if self.synthetic:
            for result in results:
                result.warnings.append(self.synthetic_warning)
        return {target: by_target[target] for target in wanted}

    def _translation_sources(self, volume: np.ndarray, meta: ImageMeta, *, source: ModalityLike | None,
                             additional: Mapping[ModalityLike, tuple[np.ndarray, ImageMeta]] | None,
                             targets: Sequence[Modality]) -> dict[Modality, np.ndarray]:
        """The registered source arrays by modality (the volume first), checked as ``translate`` checks them."""
        primary = _modality(source) if source is not None else (_modality(meta.modality) if meta.modality else None)
        if primary is None:
            raise InputError(None, "the volume's modality is unknown (meta.modality is empty)", "pass source='mri-t1' (CLI: --from)")
        for target in targets:
            if not primary.is_volume or not target.is_volume:
                raise ConfigError(f"translate maps volumes to volumes (ct and the MRI contrasts); got {primary.value} → {target.value}")
        arrays: dict[Modality, np.ndarray] = {primary: np.asarray(volume)}
        for modality, (array, other) in (additional or {}).items():
            modality = _modality(modality)
            if not other.same_grid(meta, tolerance_mm=1e-2):
                raise InputError(None, f"the {modality.value} source is not on the volume's grid", "register the sources to one grid first")
            arrays[modality] = np.asarray(array)
        for target in targets:
            if target in arrays:
                raise ConfigError(f"the target {target.value} is also a source")
        return arrays

    # -- generate ------------------------------------------------------------------------------
    def generate(
        self,
        *,
        to: ModalityLike,
        source: Any = None,
        sources: Sequence[Any] | None = None,
        samples: int = 1,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        weights: Sequence[float] | None = None,
        progress: ProgressFn = no_progress,
    ) -> GenerationResult:
        """X-ray → report, report → X-ray, and compositions of several sources.

        Args:
            to: ``"report"`` or ``"xray"``.
            source: one source — ``(array, ImageMeta)`` as ``io.read`` returns it (2D image, or a volume
                whose middle axial slice is used), a ``Report``, or report text.
            sources: several such sources, composed CoDi-style; ``weights`` one per source.
            samples: K reports or images.

        Returns:
            ``GenerationResult``: ``.reports``/``.text`` for reports, ``.images``/``.image`` (uint16) and
            ``.meta`` for X-rays.
        """
        items = list(sources or []) + ([source] if source is not None else [])
        if not items:
            raise ConfigError("generate needs a source (an X-ray, a report text or file)")
        target = _modality(to)
        if target not in TARGETS:
            raise ConfigError(f"--to {target.value}: generate makes report or xray (volumes: use `medm2g translate`)")
        _check_samples(samples)
        modalities = [source_modality(item) for item in items]
        if len(set(modalities)) != len(modalities):
            raise ConfigError(f"two sources of one modality ({', '.join(m.value for m in modalities)}); compose different modalities")
        if target in modalities:
            raise ConfigError(f"the target {target.value} is also a source")
        pair = self.select_flow(target=target, available=modalities)
        started = time.monotonic()
        result = generate_one(self.flow(pair), items, samples=samples, seed=seed, steps=steps, guidance=guidance,
                              weights=weights, bundle_name=self.path.name, progress=progress)
        result.seconds = time.monotonic() - started
        if self.synthetic:
            result.warnings.append(self.synthetic_warning)
        return result


def _check_samples(samples: int) -> None:
    if samples < 1:
        raise ConfigError(f"samples must be ≥ 1, got {samples}")


def _weights(weights: Sequence[float] | Mapping[ModalityLike, float] | None, order: list[Modality]) -> dict[Modality, float] | None:
    if weights is None:
        return None
    if isinstance(weights, Mapping):
        return {_modality(m): float(w) for m, w in weights.items()}
    values = [float(w) for w in weights]
    if len(values) != len(order):
        raise ConfigError(f"got {len(values)} weights for {len(order)} sources ({', '.join(m.value for m in order)}); give one per source")
    return dict(zip(order, values))


def _pair_from_folder(name: str) -> Pair:
    """``mri-t2+mri-pd__mri-t1`` (a bundle's flow folder name) → ``Pair``."""
    if "__" in name:
        left, right = name.split("__", 1)
        return Pair(tuple(parse_modality(s) for s in left.split("+")), parse_modality(right))
    return parse_pair(name)
