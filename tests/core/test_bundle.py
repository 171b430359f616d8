from __future__ import annotations

import json

import pytest

from medm2g_core import bundle as bundle_module
from medm2g_core.bundle import Bundle, default_bundle, resolve_model, set_default_bundle
from medm2g_core.errors import BundleError


def test_create_record_and_reopen(tmp_path):
    bundle = Bundle.create(tmp_path / "b")
    bundle.add_modalities(["report", "xray"])
    bundle.record_component("align")
    bundle.record_component("flows", "xray__report")
    bundle.record_component("flows", "mri-t1__ct")
    bundle.set_data_summary(patients=64, synthetic=True, source="phantom chest")
    bundle.set_metrics("align", {"report->xray": {"R@1": 0.5}})
    bundle.record_stage("align", recipe={"embed_dim": 8}, steps=3)
    bundle.save()
    again = Bundle.open(tmp_path / "b")
    assert again.flows == ["xray__report", "mri-t1__ct"]
    assert again.synthetic and again.modalities == ["report", "xray"]
    assert again.data["stages"]["align"]["recipe"] == {"embed_dim": 8}
    card = (tmp_path / "b" / "README.md").read_text()
    assert "Not for diagnosis" in card and "synthetic phantom" in card and "R@1: 0.5" in card
    assert again.component_dir("autoencoders", "ct") == tmp_path / "b" / "autoencoders" / "ct"


def test_open_refuses_non_bundles_pickles_and_future_versions(tmp_path):
    with pytest.raises(BundleError, match="run `medm2g demo`"):
        Bundle.open(tmp_path / "missing")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "junk.txt").write_text("hi")
    with pytest.raises(BundleError, match="not a medm2g bundle"):
        Bundle.create(tmp_path / "x")
    bundle = Bundle.create(tmp_path / "b")
    (bundle.path / "align").mkdir()
    (bundle.path / "align" / "model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(BundleError, match="pickle"):
        Bundle.open(bundle.path)
    (bundle.path / "align" / "model.bin").unlink()
    data = json.loads((bundle.path / "bundle.json").read_text())
    data["format_version"] = 99
    (bundle.path / "bundle.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="newer"):
        Bundle.open(bundle.path)


def test_default_bundle_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDM2G_HOME", str(tmp_path / "home"))
    assert default_bundle() is None
    with pytest.raises(BundleError, match="run `medm2g demo` or pass --model"):
        resolve_model(None)
    bundle = Bundle.create(tmp_path / "b")
    set_default_bundle(bundle.path)
    assert default_bundle() == bundle.path.resolve()
    assert resolve_model(None) == bundle.path.resolve()
    assert resolve_model(bundle.path) == bundle.path
    with pytest.raises(BundleError):
        resolve_model(tmp_path)
    assert bundle_module.medm2g_home() == tmp_path / "home"


def test_the_layout_is_spelled_only_in_bundle_py():
    """No module but ``bundle.py`` writes a bundle folder name as a string (``"flows/..."``, ``"autoencoders/..."``,
    ``"text_vae"``...) or reaches around the ``Bundle`` API into ``bundle.data[...]``."""
    import ast
    from pathlib import Path

    import medm2g_core
    from medm2g_core.bundle import ALIGN, AUTOENCODERS, BASELINES, FLOWS, SHARED, TEXT_VAE, TRAINING

    names = {AUTOENCODERS, TEXT_VAE, FLOWS, BASELINES, SHARED, TRAINING, ALIGN}
    root = Path(medm2g_core.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "bundle.py" and path.parent == root:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                head = node.value.split("/")[0]
                if "/" in node.value and head in names and not node.value.startswith(("flows/objective", "flows/model")):
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.value!r}")
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "data" \
                    and isinstance(node.value.value, ast.Name) and node.value.value.id in ("bundle", "handle"):
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.value.value.id}.data[...]")
    assert not found, "use medm2g_core.bundle's names and Bundle methods:\n" + "\n".join(found)
