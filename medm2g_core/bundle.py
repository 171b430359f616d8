"""The model bundle (DESIGN.md §4): one folder holding every trained component and what it was trained on.

```
BUNDLE/
  bundle.json                     # format version, modalities, flows (training order), data, metrics...
  README.md                       # generated model card
  align/{config.json, model.safetensors, tokenizer/}
  autoencoders/<modality>/{config.json, model.safetensors}
  text_vae/{config.json, model.safetensors}
  flows/<pair>/{config.json, model.safetensors, ema.safetensors}
  joint/<flowA>+<flowB>/{config.json, model.safetensors, ema.safetensors}   # environment encoders of two flows
  training/<stage>/               # resumable Accelerate state (never needed for inference)
```

``bundle.json`` is the only file ``medm2g info`` reads. Components are written by their own
``save_pretrained(bundle.component_dir(...))``; this module records them. Only rank 0 writes.
The default bundle (what `medm2g demo` made last) is remembered in ``$MEDM2G_HOME/default-bundle``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from pathlib import Path
from typing import Any

from medm2g_core._version import __version__
from medm2g_core.errors import BundleError
from medm2g_core.serialization import read_json, refuse_pickles, to_jsonable, write_json, write_text

FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
# Every folder and file name of the layout (DESIGN §4); other modules use these, never the strings.
ALIGN, AUTOENCODERS, TEXT_VAE, FLOWS = "align", "autoencoders", "text_vae", "flows"
TRAINING, BASELINES, SHARED, TOKENIZER = "training", "baselines", "shared", "tokenizer"
JOINT = "joint"
CONFIG_FILE, WEIGHTS_FILE, EMA_WEIGHTS = "config.json", "model.safetensors", "ema.safetensors"
COMPONENT_KINDS = (ALIGN, AUTOENCODERS, TEXT_VAE, FLOWS, JOINT)


def component_key(kind: str, name: str | None = None) -> str:
    """The key of a component in ``bundle.json`` (``components``, ``stages``, ``metrics``): its folder relative to
    the bundle — ``align``, ``text_vae``, ``autoencoders/<modality>``, ``flows/<pair>``."""
    return kind if name is None else f"{kind}/{name}"


SHARED_KEY = component_key(FLOWS, SHARED)
"""``flows/shared``: the shared cross-attention's component and stage key."""


def align_dir(root: str | Path) -> Path:
    """``align/`` (aligned encoders; its tokenizer in ``align/tokenizer``)."""
    return Path(root) / ALIGN


def text_vae_dir(root: str | Path) -> Path:
    return Path(root) / TEXT_VAE


def autoencoder_dir(root: str | Path, modality: str) -> Path:
    return Path(root) / AUTOENCODERS / modality


def flow_dir(root: str | Path, pair: str) -> Path:
    """``flows/<pair>/`` (``Pair.name``)."""
    return Path(root) / FLOWS / pair


def shared_dir(root: str | Path) -> Path:
    """``flows/shared/``: the cross-attention every flow of the bundle shares."""
    return Path(root) / FLOWS / SHARED


def joint_name(flow_a: str, flow_b: str) -> str:
    """``<flowA>+<flowB>``: the joint stage of two flows (``Pair.name``), in sorted order so that either order
    names the same stage."""
    first, second = sorted((flow_a, flow_b))
    return f"{first}+{second}"


def joint_dir(root: str | Path, flow_a: str, flow_b: str) -> Path:
    """``joint/<flowA>+<flowB>/``: the environment encoders and gates of two flows' joint generation."""
    return Path(root) / JOINT / joint_name(flow_a, flow_b)


def training_dir(root: str | Path, stage: str) -> Path:
    """Resumable state of a stage: ``training/<stage>/``."""
    return Path(root) / TRAINING / stage


def baselines_dir(root: str | Path) -> Path:
    return Path(root) / BASELINES


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


class Bundle:
    """A bundle folder. Build with ``Bundle.create(path)`` or ``Bundle.open(path)``.

    ``data`` is the parsed ``bundle.json``::

        {"format_version": 1, "created_by": "medm2g 0.1.0", "created": iso, "updated": iso,
         "modalities": ["report", "xray", ...], "flows": ["xray__report", ...],   # training order
         "components": {"align": "align", "flows/xray__report": ...},
         "data": {"patients": 64, "synthetic": true, "source": "...", "splits": {...}},
         "stages": {"align": {"recipe": {...}, "steps": 300, "finished": iso, "seconds": 80.1}},
         "metrics": {"align": {"report->xray": {"R@1": ...}}},
         "forgetting": {"xray__report": {"before": {...}, "after": {...}}}}
    """

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = Path(path)
        self.data = data

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, exist_ok: bool = True) -> "Bundle":
        """Open ``path`` if it is a bundle (``exist_ok``), else create an empty one there.

        A non-empty folder that is not a bundle is refused (nothing is overwritten).
        """
        path = Path(path)
        if (path / BUNDLE_JSON).is_file():
            if not exist_ok:
                raise BundleError(f"{path} already holds a bundle; choose another --out or remove it")
            return cls.open(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise BundleError(f"{path} exists and is not a medm2g bundle (no {BUNDLE_JSON}); choose an empty or new folder")
        path.mkdir(parents=True, exist_ok=True)
        now = _now()
        bundle = cls(
            path,
            {
                "format_version": FORMAT_VERSION,
                "created_by": f"medm2g {__version__}",
                "created": now,
                "updated": now,
                "modalities": [],
                "flows": [],
                "components": {},
                "data": {},
                "stages": {},
                "metrics": {},
                "forgetting": {},
            },
        )
        bundle.save()
        return bundle

    @classmethod
    def open(cls, path: str | Path) -> "Bundle":
        """Read ``bundle.json`` (no weights). Refuses pickled weights and unknown format versions."""
        path = Path(path)
        if not path.is_dir():
            raise BundleError(f"{path}: no such bundle folder; run `medm2g demo` or `medm2g align --out {path}` first")
        manifest = path / BUNDLE_JSON
        if not manifest.is_file():
            raise BundleError(f"{path}: not a medm2g bundle ({BUNDLE_JSON} missing); pass the folder `medm2g align --out` made")
        data = read_json(manifest)
        if not isinstance(data, dict) or "format_version" not in data:
            raise BundleError(f"{manifest}: not a bundle manifest (no format_version)")
        version = data["format_version"]
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise BundleError(
                f"{manifest}: bundle format {version} is newer than this medm2g understands ({FORMAT_VERSION}); "
                "upgrade medm2g"
            )
        refuse_pickles(path)
        for key in ("modalities", "flows"):
            data.setdefault(key, [])
        for key in ("components", "data", "stages", "metrics", "forgetting"):
            data.setdefault(key, {})
        return cls(path, data)

    def save(self) -> None:
        """Atomically rewrite ``bundle.json`` and the model card."""
        self.data["updated"] = _now()
        write_json(self.path / BUNDLE_JSON, self.data)
        write_text(self.path / "README.md", model_card(self.data))

    # -- folders -------------------------------------------------------------------------------
    def component_dir(self, kind: str, name: str | None = None) -> Path:
        """``align``, ``text_vae``, ``autoencoders/<modality>``, ``flows/<pair>`` or ``joint/<name>`` (not created)."""
        if kind not in COMPONENT_KINDS:
            raise ValueError(f"unknown component kind {kind!r}; valid: {', '.join(COMPONENT_KINDS)}")
        if kind in (AUTOENCODERS, FLOWS, JOINT):
            if not name:
                raise ValueError(f"{kind} components need a name (modality or pair)")
            return self.path / kind / name
        return self.path / kind

    def training_dir(self, stage: str) -> Path:
        """Resumable state of a stage: ``training/<stage>/`` (e.g. ``align``, ``flows-xray__report``)."""
        return training_dir(self.path, stage)

    def has_component(self, kind: str, name: str | None = None) -> bool:
        return (self.component_dir(kind, name) / CONFIG_FILE).is_file()

    # -- records -------------------------------------------------------------------------------
    def record_component(self, kind: str, name: str | None = None) -> None:
        """Note that a component was (re)written; flows are kept in training order (the shared cross-attention,
        ``FLOWS``/``SHARED``, is a component but not a flow)."""
        key = component_key(kind, name)
        folder = shared_dir(self.path) if key == SHARED_KEY else self.component_dir(kind, name)
        self.data["components"][key] = str(folder.relative_to(self.path))
        if kind == FLOWS and name != SHARED and name not in self.data["flows"]:
            self.data["flows"].append(name)

    def stage(self, key: str) -> dict[str, Any]:
        """The record of stage ``key`` (``component_key(...)``; ``{}`` when it never ran): a copy."""
        return dict(self.data["stages"].get(key, {}))

    def metrics(self, key: str) -> dict[str, Any] | None:
        """The metrics stored for stage ``key`` (None when none were)."""
        return self.data["metrics"].get(key)

    @property
    def align_hub(self) -> str | None:
        """Why the align stage had no text hub (an MRI-only or CT–MRI cohort), or None."""
        return self.data.get("align_hub")

    def set_align_hub(self, note: str) -> None:
        self.data["align_hub"] = note

    def baselines(self, pair: str) -> dict[str, Any]:
        """The fitted-baselines record of flow ``pair`` (``{}`` when none): a copy."""
        return dict(self.data.get("baselines", {}).get(pair, {}))

    @property
    def baseline_pairs(self) -> list[str]:
        """Flows with a baselines record, in the order they were fitted."""
        return list(self.data.get("baselines", {}))

    def set_baselines(self, pair: str, record: dict[str, Any]) -> None:
        self.data.setdefault("baselines", {})[pair] = to_jsonable(record)

    def add_modalities(self, names: list[str]) -> None:
        for name in names:
            if name not in self.data["modalities"]:
                self.data["modalities"].append(name)

    def record_stage(self, stage: str, *, recipe: dict[str, Any] | None = None, **details: Any) -> None:
        """Store a stage's resolved recipe section and details (steps, seconds, finished time...)."""
        entry = dict(self.data["stages"].get(stage, {}))
        if recipe is not None:
            entry["recipe"] = to_jsonable(recipe)
        entry.update(to_jsonable(details))
        entry["finished"] = _now()
        self.data["stages"][stage] = entry

    def set_data_summary(self, *, patients: int, synthetic: bool, **details: Any) -> None:
        """What the bundle was trained on. ``synthetic`` makes generate/translate warn on every run."""
        summary = dict(self.data.get("data") or {})
        summary.update({"patients": int(patients), "synthetic": bool(synthetic or summary.get("synthetic", False))})
        summary.update(to_jsonable(details))
        self.data["data"] = summary

    def set_metrics(self, stage: str, metrics: dict[str, Any]) -> None:
        self.data["metrics"][stage] = to_jsonable(metrics)

    def set_forgetting(self, flow: str, report: dict[str, Any]) -> None:
        """Earlier flows measured before and after training ``flow`` (DESIGN §1.6)."""
        self.data["forgetting"][flow] = to_jsonable(report)

    @property
    def synthetic(self) -> bool:
        return bool(self.data.get("data", {}).get("synthetic", False))

    def set_real_sets(self, sets: dict[str, str]) -> None:
        """Record that the bundle was trained on real data: set name → its licence and attribution line.
        The model card lists them, and every translate/generate sidecar carries them (never "synthetic phantoms")."""
        summary = dict(self.data.get("data") or {})
        summary["real"] = True
        summary["synthetic"] = False
        summary["real_sets"] = {str(name): str(line) for name, line in sets.items()}
        self.data["data"] = summary

    @property
    def real_sets(self) -> dict[str, str]:
        """Set name → licence line of the real data the bundle was trained on (empty when not recorded)."""
        return dict(self.data.get("data", {}).get("real_sets") or {})

    @property
    def modalities(self) -> list[str]:
        return list(self.data["modalities"])

    @property
    def flows(self) -> list[str]:
        return list(self.data["flows"])

    def summary(self) -> dict[str, Any]:
        """What ``medm2g info --json`` prints: bundle.json plus the path."""
        return {"path": str(self.path), **self.data}


def model_card(data: dict[str, Any]) -> str:
    """The generated README.md of a bundle (Markdown)."""
    summary = data.get("data") or {}
    lines = ["# medm2g model bundle", ""]
    if summary.get("synthetic"):
        lines += [
            "> **Trained on synthetic phantom patients.** It runs on real files, but its outputs mean nothing "
            "clinically.",
            "",
        ]
    if summary.get("real_sets"):
        lines += ["> **Trained on real public scans and reports** (small research samples; not for diagnosis). "
                  "Each set's licence and attribution:", ""]
        lines += [f"> - {name}: {line}" for name, line in summary["real_sets"].items()]
        lines.append("")
    lines += [
        "MedM2G (Zhan et al., CVPR 2024, arXiv 2403.04290) re-implemented by medm2g: aligned encoders for chest "
        "X-ray, CT, MRI and report text, and cross-guided diffusion flows between them.",
        "",
        "## Intended use",
        "",
        "Research on medical multi-modal generation. **Not for diagnosis** or any clinical decision; outputs are "
        "synthetic and may be wrong in ways that look plausible.",
        "",
        "## Contents",
        "",
        f"- created by: {data.get('created_by', '?')} on {data.get('created', '?')} (updated {data.get('updated', '?')})",
        f"- modalities: {', '.join(data.get('modalities') or []) or 'none yet'}",
        f"- flows (training order): {', '.join(data.get('flows') or []) or 'none yet'}",
        "",
        "## Training data",
        "",
    ]
    if summary:
        for key, value in summary.items():
            lines.append(f"- {key}: {value}")
    else:
        lines.append("- not recorded yet")
    lines += ["", "## Training", ""]
    for stage, entry in (data.get("stages") or {}).items():
        details = ", ".join(f"{k}: {v}" for k, v in entry.items() if k != "recipe")
        lines.append(f"- {stage}: {details}")
    if not data.get("stages"):
        lines.append("- nothing trained yet")
    lines += ["", "## Metrics", ""]
    for stage, metrics in (data.get("metrics") or {}).items():
        lines.append(f"### {stage}")
        lines.append("")
        for name, value in _flatten(metrics):
            lines.append(f"- {name}: {value:.4g}" if isinstance(value, float) else f"- {name}: {value}")
        lines.append("")
    if data.get("forgetting"):
        lines += ["## Forgetting (earlier flows measured before → after each new flow)", ""]
        for flow, report in data["forgetting"].items():
            for name, value in _flatten(report):
                lines.append(f"- {flow} {name}: {value}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        out: list[tuple[str, Any]] = []
        for key, inner in value.items():
            out += _flatten(inner, f"{prefix}{key}" if not prefix else f"{prefix} {key}")
        return out
    return [(prefix, value)]


def bundle_fingerprint(path: str | Path) -> str:
    """Cheap identity of a bundle: ``bundle.json``'s bytes plus the names and sizes of its weights
    (sha256, 16 hex). Retraining any component rewrites ``bundle.json`` (its ``updated`` stamp)."""
    path = Path(path)
    digest = hashlib.sha256((path / BUNDLE_JSON).read_bytes())
    for weights in sorted(path.rglob("*.safetensors")):
        if TRAINING in weights.relative_to(path).parts:
            continue
        digest.update(f"{weights.relative_to(path).as_posix()}:{weights.stat().st_size}".encode())
    return digest.hexdigest()[:16]


# -- the default bundle ------------------------------------------------------------------------


def medm2g_home() -> Path:
    """``$MEDM2G_HOME`` or ``~/.cache/medm2g``."""
    return Path(os.environ.get("MEDM2G_HOME") or Path.home() / ".cache" / "medm2g")


def set_default_bundle(path: str | Path) -> Path:
    """Remember ``path`` (absolute) as the default model; returns the registry file."""
    return write_text(medm2g_home() / "default-bundle", str(Path(path).resolve()) + "\n")


def default_bundle() -> Path | None:
    """The remembered default bundle if it still exists, else None."""
    registry = medm2g_home() / "default-bundle"
    if not registry.is_file():
        return None
    path = Path(registry.read_text(encoding="utf-8").strip())
    return path if (path / BUNDLE_JSON).is_file() else None


def resolve_model(path: str | Path | None) -> Path:
    """``--model`` if given (must be a bundle), else the default bundle; ``BundleError`` when neither."""
    if path is not None:
        path = Path(path)
        if not (path / BUNDLE_JSON).is_file():
            raise BundleError(f"{path}: not a medm2g bundle ({BUNDLE_JSON} missing); pass the folder `medm2g align --out` made")
        return path
    found = default_bundle()
    if found is None:
        raise BundleError("no model bundle given and no default one; run `medm2g demo` or pass --model BUNDLE")
    return found
