import os
import stat

import pytest

from medm2g_core.errors import BundleError
from medm2g_core.serialization import atomic_dir, atomic_path, refuse_pickles, safe_child, write_json, read_json


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_outputs_are_world_readable(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "series") as folder:
            (folder / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "series").stat().st_mode) == 0o755
    assert read_json(tmp_path / "a.json") == {"x": 1}


def test_refuse_pickles_and_path_escape(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\x80\x04")
    with pytest.raises(BundleError, match="pickle"):
        refuse_pickles(tmp_path)
    with pytest.raises(BundleError, match="escapes"):
        safe_child(tmp_path, "../etc/passwd")
    assert safe_child(tmp_path, "a/b") == (tmp_path / "a" / "b").resolve()


def test_stale_temporaries_of_killed_writes_are_removed(tmp_path):
    """A SIGKILL between creating the temporary and the rename leaves it behind; the next successful
    write of the same name removes it once it is old, and never one that may still be in flight."""
    import os
    import time

    from medm2g_core.serialization import STALE_TEMPORARY_SECONDS, atomic_dir, atomic_path

    old = time.time() - STALE_TEMPORARY_SECONDS - 60
    stale_dir = tmp_path / ".flows.abc123.tmp"
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"x" * 100)
    fresh_dir = tmp_path / ".flows.def456.tmp"
    fresh_dir.mkdir()
    other = tmp_path / ".align.zzz.tmp"  # another name's temporary: not this write's business
    other.mkdir()
    stale_file = tmp_path / ".ct.q1w2e3.tmp.nii.gz"
    stale_file.write_bytes(b"y")
    for path in (stale_dir, other, stale_file):
        os.utime(path, (old, old))

    with atomic_dir(tmp_path / "flows") as tmp:
        (tmp / "config.json").write_text("{}")
    assert not stale_dir.exists() and fresh_dir.exists() and other.exists()
    assert (tmp_path / "flows" / "config.json").is_file()

    with atomic_path(tmp_path / "ct.nii.gz") as tmp:
        tmp.write_bytes(b"z")
    assert not stale_file.exists() and (tmp_path / "ct.nii.gz").read_bytes() == b"z"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".align.zzz.tmp", ".flows.def456.tmp", "ct.nii.gz", "flows"]
