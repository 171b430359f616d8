"""Issue 10 §3, safe loading: weights only from safetensors (pickles refused, never unpickled), key and
shape checks as BundleError, configs are data (no YAML tags, no ``_target_``), and paths inside
bundles, manifests and imports cannot escape their folder.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest

from medm2g_core.errors import BundleError, ConfigError, MedM2GError

from reliability_support import FLOW, Tiny, copy_bundle, run_cli

REPO = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this creates ``marker`` — proof that a file was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


@pytest.mark.parametrize("name", ["flows/mri-t1__ct/pytorch_model.bin", "align/model.pt", "flows/shared/weights.pkl"])
def test_bundle_with_pickle_weights_is_refused_without_unpickling(tiny: Tiny, tmp_path: Path, name: str) -> None:
    from medm2g_core.bundle import Bundle
    from medm2g_core.flows.model import FlowModel
    from medm2g_core.inference.model import MedM2G

    bundle = copy_bundle(tiny.reference, tmp_path / "pickled.m2g")
    marker = tmp_path / "UNPICKLED"
    (bundle / name).write_bytes(pickle.dumps(_Payload(marker)))
    for load in (lambda: Bundle.open(bundle), lambda: MedM2G.from_pretrained(bundle, device="cpu"),
                 lambda: FlowModel.load(bundle, "mri-ct")):
        with pytest.raises(BundleError, match=r"pickle.*safetensors") as caught:
            load()
        assert Path(name).name in str(caught.value)
    assert not marker.exists()


def test_cli_refuses_a_pickled_bundle_with_an_explanation(tiny: Tiny, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny.reference, tmp_path / "pickled.m2g")
    marker = tmp_path / "UNPICKLED"
    (bundle / "flows" / FLOW / "model.pt").write_bytes(pickle.dumps(_Payload(marker)))
    result = run_cli(["translate", tiny.cohort / "P0001", "--to", "ct", "--model", bundle, "--out", tmp_path / "out"], env=tiny.env())
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pickle" in errors[0] and "safetensors" in errors[0] and "model.pt" in errors[0]
    assert "Traceback" not in result.stderr and not marker.exists() and not (tmp_path / "out").exists()


def _rewrite(path: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file(change(dict(tensors)), str(path))


@pytest.mark.parametrize("damage", ["renamed key", "missing key", "wrong shape", "not safetensors"])
@pytest.mark.parametrize("component", [f"flows/{FLOW}/model.safetensors", "align/model.safetensors"])
def test_safetensors_with_wrong_keys_or_shapes_is_a_bundle_error(tiny: Tiny, tmp_path: Path, damage: str, component: str) -> None:
    import torch

    from medm2g_core.flows.model import FlowModel

    bundle = copy_bundle(tiny.reference, tmp_path / "damaged.m2g")
    path = bundle / component
    if damage == "not safetensors":
        path.write_bytes(b"\x00" * 64)
    else:
        def change(tensors: dict) -> dict:
            key = sorted(tensors)[-1]
            if damage == "renamed key":
                tensors["unexpected." + key] = tensors.pop(key)
            elif damage == "missing key":
                tensors.pop(key)
            else:
                tensors[key] = torch.zeros(tuple(s + 1 for s in tensors[key].shape) or (2,))
            return tensors

        _rewrite(path, change)
    with pytest.raises(BundleError):  # use_ema=False: the raw weights are the damaged ones
        FlowModel.load(bundle, "mri-ct", use_ema=False)


def test_cli_reports_mismatched_weights_in_one_line(tiny: Tiny, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny.reference, tmp_path / "damaged.m2g")
    for name in ("model.safetensors", "ema.safetensors"):
        _rewrite(bundle / "flows" / FLOW / name, lambda t: {("x." + k): v for k, v in t.items()})
    result = run_cli(["translate", tiny.cohort / "P0001", "--to", "ct", "--model", bundle, "--out", tmp_path / "out"], env=tiny.env())
    assert result.returncode in (1, 2), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    assert any("do not match" in line for line in result.stderr.splitlines() if line.startswith("error:"))


# -- configs are data -------------------------------------------------------------------------------


def test_recipe_with_python_tags_is_refused_and_not_executed(tmp_path: Path) -> None:
    from medm2g_core.config import load_recipe

    marker = tmp_path / "EXECUTED"
    for text in (f"name: x\ntraining: !!python/object/apply:os.makedirs ['{marker}']\n",
                 f"name: !!python/object/new:os.makedirs ['{marker}']\n",
                 "name: !!python/name:os.system\n"):
        recipe = tmp_path / "evil.yaml"
        recipe.write_text(text)
        with pytest.raises(ConfigError):
            load_recipe(recipe)
    assert not marker.exists()


@pytest.mark.parametrize("section", ["", "align", "flows.objective", "training"])
def test_target_keys_are_not_imported(tmp_path: Path, section: str) -> None:
    """Hydra-style ``_target_`` keys are unknown keys: refused with the valid ones listed, nothing imported."""
    from medm2g_core.config import load_recipe, stage_training
    from medm2g_core.flows.config import FlowConfig
    from medm2g_core.flows.recipe import parse_flow_recipe
    from medm2g_core.modalities import parse_pair
    from medm2g_core.serialization import dataclass_from_dict, to_jsonable

    body = {"_target_": "os.system", "_args_": ["touch pwned"]}
    data: dict = {"name": "x"}
    if not section:
        data.update(body)
    elif "." in section:
        outer, inner = section.split(".")
        data[outer] = {inner: body}
    else:
        data[section] = body
    recipe = tmp_path / "target.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="_target_"):
        loaded = load_recipe(recipe)
        stage_training(loaded, "align")
        stage_training(loaded, "flows")
        # the objective section becomes a FlowConfig when the flow is built (train_flow._network_config)
        resolved = parse_flow_recipe(loaded.flows).resolve(parse_pair("mri-ct"))
        dataclass_from_dict(FlowConfig, {**to_jsonable(FlowConfig.demo_cpu(pair="mri-t1__ct")), **resolved.objective},
                            where="flows.objective")


def test_cli_rejects_an_executable_recipe(tiny: Tiny, tmp_path: Path) -> None:
    marker = tmp_path / "EXECUTED"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"name: x\ntraining: !!python/object/apply:os.makedirs ['{marker}']\n")
    bundle = copy_bundle(tiny.aligned, tmp_path / "b.m2g")
    result = run_cli(tiny.train_flow_args(bundle)[:-2] + ["--recipe", str(recipe)], env=tiny.env())
    assert result.returncode == 2 and "not valid YAML" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_no_code_executing_loaders_in_the_code() -> None:
    """Configs through yaml.safe_load only; no eval/exec, no pickle/torch.load, no dynamic imports of names from files."""
    forbidden = re.compile(
        r"yaml\.(load|unsafe_load|full_load)\s*\(|yaml\.Loader|(?<![\w.])eval\s*\(|(?<![\w.])exec\s*\(|pickle\.loads?\s*\("
        r"|torch\.load\s*\(|importlib\.import_module\s*\(|__import__\s*\(|dill\.|cloudpickle"
    )
    hits = []
    for folder in ("medm2g_core", "medm2g_cli"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                if forbidden.search(code) and '"' not in code.split("(")[0]:
                    hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    # a string that *mentions* torch.load in an error message's advice is fine; real calls are not
    hits = [h for h in hits if not re.search(r"['\"][^'\"]*torch\.load\(", h)]
    assert not hits, "code-executing loaders:\n" + "\n".join(hits)


# -- paths cannot escape ---------------------------------------------------------------------------


@pytest.mark.parametrize("relative", ["../outside", "a/../../outside", "/etc/passwd", "flows/../../x"])
def test_safe_child_rejects_escapes(tmp_path: Path, relative: str) -> None:
    from medm2g_core.serialization import safe_child

    with pytest.raises(BundleError, match="escapes"):
        safe_child(tmp_path, relative)
    assert safe_child(tmp_path, "flows/x/config.json") == (tmp_path / "flows/x/config.json").resolve()


def test_bundle_flow_names_cannot_point_outside_the_bundle(tiny: Tiny, tmp_path: Path) -> None:
    """bundle.json's flow list becomes folder names only through the modality parser, so ``../``
    entries are never opened; asking for such a flow is an error, not a read outside the bundle."""
    from medm2g_core.flows.model import FlowModel
    from medm2g_core.inference.model import MedM2G

    bundle = copy_bundle(tiny.reference, tmp_path / "b.m2g")
    outside = tmp_path / "outside"
    shutil.copytree(bundle / "flows" / FLOW, outside / "flows" / "x__ct")
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["flows"] += ["../../outside/flows/x__ct", "../outside"]
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    model = MedM2G.from_pretrained(bundle, device="cpu")
    assert [pair.name for pair in model.flows] == [FLOW]
    for name in ("../../outside/flows/x__ct", "../outside", "/etc/passwd"):
        with pytest.raises((MedM2GError, ValueError)):
            FlowModel.load(bundle, name)


def test_import_patient_ids_cannot_escape_the_cohort() -> None:
    from medm2g_core.data.importers.base import StudyError, check_patient_id

    for bad in ("..", "../P0001", "a/../../b", "/etc", ".hidden", "P/0001", ""):
        with pytest.raises(StudyError):
            check_patient_id(bad)
    assert check_patient_id("P0001") == "P0001"


def test_manifest_paths_stay_inside_the_cohort(tiny: Tiny, tmp_path: Path) -> None:
    """A file symlinked from outside is listed by its path in the cohort, never as ``../`` or absolute."""
    cohort = tmp_path / "cohort"
    shutil.copytree(tiny.cohort / "P0001", cohort / "P0001")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (cohort / "P0001" / "ct.nii.gz").rename(elsewhere / "ct.nii.gz")
    (cohort / "P0001" / "ct.nii.gz").symlink_to(elsewhere / "ct.nii.gz")
    result = run_cli(["data", "index", cohort, "--write", "--json"], env=tiny.env())
    assert result.returncode == 0, result.stderr
    for line in (cohort / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        for path in [*record["files"].values(), *record.get("extras", {}).values(), record["folder"]]:
            assert not Path(path).is_absolute() and ".." not in Path(path).parts, path
