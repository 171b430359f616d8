from __future__ import annotations

from pathlib import Path

import pytest

from medm2g_core.config import (
    RECIPES_DIR, AlignConfig, Recipe, TrainingConfig, apply_overrides, load_recipe, merge_training,
    parse_recipe, recipe_to_dict, stage_training,
)
from medm2g_core.errors import ConfigError


def test_every_shipped_recipe_loads():
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    assert "demo-cpu" in names
    for name in names:
        recipe = load_recipe(RECIPES_DIR / f"{name}.yaml")
        assert isinstance(recipe.align, AlignConfig)
        assert stage_training(recipe, "align").steps >= 1


def test_default_is_demo_and_bare_names_resolve():
    assert load_recipe(None).name == "demo-cpu"
    assert load_recipe("demo-cpu").name == "demo-cpu"


def test_unknown_key_rejected_with_valid_keys_listed(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("align:\n  embed_dimm: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) embed_dimm; valid keys: .*embed_dim"):
        load_recipe(path)
    path.write_text("trainig: {}\n")
    with pytest.raises(ConfigError, match="trainig.*valid keys: .*training"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="stepz"):
        parse_recipe({"align": {"training": {"stepz": 3}}})


def test_yaml_is_never_executed(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(path)


def test_nested_sections_and_tuples():
    recipe = parse_recipe({"data": {"split_fractions": [0.5, 0.25, 0.25]}, "align": {"augment": {"rotate_deg": 2}, "image_widths": [8, 16]}})
    assert recipe.data.split_fractions == (0.5, 0.25, 0.25)
    assert recipe.align.augment.rotate_deg == 2
    assert recipe.align.image_widths == (8, 16)


def test_stage_training_merges_and_overrides_apply():
    recipe = parse_recipe({"training": {"lr": 0.1, "steps": 50}, "align": {"training": {"steps": 7}}, "flows": {"training": {"steps": 9}}})
    assert stage_training(recipe, "align") == TrainingConfig(lr=0.1, steps=7)
    assert stage_training(recipe, "flows").steps == 9
    changed = apply_overrides(recipe, {"align.training.steps": 3, "align.vi_weight": 0.0, "align.text_encoder": None})
    assert stage_training(changed, "align").steps == 3 and changed.align.vi_weight == 0.0
    assert changed.align.text_encoder == "bert"
    assert parse_recipe(recipe_to_dict(changed)) == changed


def test_invalid_values_are_config_errors():
    with pytest.raises(ConfigError, match="mixed_precision"):
        merge_training(TrainingConfig(), {"mixed_precision": "fp8"})
    with pytest.raises(ConfigError, match="imaging modalities only"):
        parse_recipe({"align": {"modalities": ["report"]}})
    with pytest.raises(ConfigError, match="split_fractions"):
        parse_recipe({"data": {"split_fractions": [0.5, 0.5, 0.5]}})
    assert Recipe().flows == {}


def test_recipes_ship_as_package_data():
    """A non-editable install must carry the recipes: they live in the package and pyproject declares them."""
    import fnmatch
    import tomllib

    import medm2g_core

    package = Path(medm2g_core.__file__).resolve().parent
    assert RECIPES_DIR.resolve().parent == package
    patterns = tomllib.loads((package.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["medm2g_core"]
    shipped = sorted(p.name for p in RECIPES_DIR.glob("*.yaml"))
    assert {"demo-cpu.yaml", "iu-xray.yaml", "mimic-cxr.yaml", "synthrad-brain.yaml", "synthrad-pelvis.yaml", "ixi-t1t2.yaml"} <= set(shipped)
    assert all(any(fnmatch.fnmatch(f"recipes/{name}", pattern) for pattern in patterns) for name in shipped)
