"""Safe, atomic persistence: JSON configs, safetensors weights, temp-file-and-rename writes.

Nothing here unpickles. Weights are safetensors only; a folder holding pickle-based weight files is
refused with an explanation (``refuse_pickles``). Every write goes to a temporary file in the target
folder and is renamed into place, so a killed process never leaves a partial file under the final
name.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterator, TypeVar

from medm2g_core._version import __version__
from medm2g_core.errors import BundleError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

T = TypeVar("T")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary name keeps the final suffix (``.nii.gz``) so that format-sniffing writers work.
    On error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs must be readable like any file
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    remove_stale_temporaries(path.parent, prefix=f".{path.name.split('.')[0]}.", suffix=f".tmp{suffix}")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (old one removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            trash = path.with_name(f".{path.name}.old")
            if trash.exists():
                shutil.rmtree(trash)
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    remove_stale_temporaries(path.parent, prefix=f".{path.name}.", suffix=".tmp")


STALE_TEMPORARY_SECONDS = 3600.0
"""A temporary file or folder of ``atomic_path``/``atomic_dir`` untouched this long was left by a killed
process (an exception removes its own): the next successful write of the same name removes it."""


def remove_stale_temporaries(folder: Path, *, prefix: str, suffix: str, older_than: float = STALE_TEMPORARY_SECONDS) -> list[Path]:
    """Remove ``folder/{prefix}*{suffix}`` entries not modified for ``older_than`` seconds; return them.

    Only names made by ``tempfile`` for this prefix/suffix are candidates, and only old ones, so a write
    of the same name in flight in another process is never touched.
    """
    removed = []
    now = time.time()
    for candidate in folder.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        try:
            if now - candidate.lstat().st_mtime < older_than:
                continue
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate)
            else:
                candidate.unlink()
            removed.append(candidate)
        except OSError:
            continue  # gone already, or not ours to remove
    return removed


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(to_jsonable(data), indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path}: not valid UTF-8 JSON ({error}); the file is damaged — recreate it") from None


def to_jsonable(value: Any) -> Any:
    """Dataclasses, tuples, Paths and numpy scalars → plain JSON types."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: to_jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "value") and isinstance(getattr(value, "value"), str):  # Enum
        return value.value
    return value


def dataclass_from_dict(cls: type[T], data: dict[str, Any], *, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys are rejected with the valid ones listed."""
    valid = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - valid - {"_class_name", "_medm2g_version"})
    if unknown:
        from medm2g_core.errors import ConfigError

        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
    kwargs = {k: v for k, v in data.items() if k in valid}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name in kwargs and isinstance(kwargs[f.name], list) and "tuple" in str(f.type):
            kwargs[f.name] = tuple(kwargs[f.name])
    return cls(**kwargs)


def save_config(directory: str | Path, config: Any, *, class_name: str) -> Path:
    """Write ``config.json`` with ``_class_name`` and ``_medm2g_version`` beside the weights."""
    return write_record(Path(directory) / "config.json", config, class_name=class_name)


def write_record(path: str | Path, record: Any, *, class_name: str) -> Path:
    """Write ``record`` (a dataclass) as JSON headed by ``_class_name`` and ``_medm2g_version``, atomically."""
    return write_json(path, {"_class_name": class_name, "_medm2g_version": __version__, **to_jsonable(record)})


def read_record(path: str | Path, *, class_name: str, what: str) -> dict[str, Any]:
    """The fields of a JSON record written by ``write_record`` (``_``-prefixed keys dropped).

    Raises ``BundleError`` "``path``: not ``what`` written by medm2g" when ``_class_name`` differs.
    """
    data = read_json(path)
    if not isinstance(data, dict) or data.get("_class_name") != class_name:
        raise BundleError(f"{path}: not {what} written by medm2g")
    return {k: v for k, v in data.items() if not k.startswith("_")}


def load_config(directory: str | Path, cls: type[T], *, class_name: str | None = None) -> T:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise BundleError(f"{path} is missing; the component folder is incomplete — retrain or copy the whole bundle")
    data = read_json(path)
    if class_name is not None and data.get("_class_name") not in (None, class_name):
        raise BundleError(f"{path}: holds a {data.get('_class_name')}, expected {class_name}")
    return dataclass_from_dict(cls, data, where=str(path))


def refuse_pickles(directory: str | Path) -> None:
    """Raise ``BundleError`` if ``directory`` holds pickle-based weight files (never unpickled)."""
    directory = Path(directory)
    found = [p for p in directory.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES and "training" not in p.parts]
    if found:
        names = ", ".join(str(p.relative_to(directory)) for p in found[:5])
        raise BundleError(
            f"{directory}: contains pickle-based weight files ({names}); medm2g loads weights only from "
            "safetensors because unpickling can execute code — convert them with safetensors.torch.save_file "
            "in a trusted environment"
        )


def safe_child(root: str | Path, relative: str | Path) -> Path:
    """Resolve ``relative`` inside ``root``; reject absolute paths and ``..`` escapes."""
    root = Path(root).resolve()
    candidate = (root / relative).resolve()
    if Path(relative).is_absolute() or (candidate != root and root not in candidate.parents):
        raise BundleError(f"path {str(relative)!r} escapes {root}; paths inside bundles and manifests must stay inside")
    return candidate


def save_weights(path: str | Path, state_dict: dict[str, Any], *, metadata: dict[str, str] | None = None) -> Path:
    """Atomically write a safetensors file (tensors made contiguous; shared storage de-duplicated by copy)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=metadata or {"format": "pt"})
    return Path(path)


def load_weights(path: str | Path, *, device: str = "cpu") -> dict[str, Any]:
    """Read a safetensors file; anything else is refused."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise BundleError(f"{path}: only .safetensors weights are loaded (pickle formats can execute code)")
    if not path.is_file():
        raise BundleError(f"{path} is missing; the bundle is incomplete — retrain this component or copy it again")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as error:
        raise BundleError(f"{path}: unreadable safetensors file ({error}); the file is damaged — retrain or copy again") from None


def check_state_matches(own: dict[str, Any], state: dict[str, Any], *, where: str) -> None:
    """Raise a readable ``BundleError`` unless ``state`` has exactly the keys and shapes of ``own``."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise BundleError(
            f"{where}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {wrong[:3]}); config.json and model.safetensors come from different trainings"
        )


def load_state_strict(module: Any, state: dict[str, Any], *, where: str) -> None:
    """``module.load_state_dict`` with key and shape checks turned into a readable ``BundleError``."""
    check_state_matches(module.state_dict(), state, where=where)
    module.load_state_dict(state)
