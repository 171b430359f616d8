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
