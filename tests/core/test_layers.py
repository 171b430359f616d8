"""Every import in ``medm2g_core`` points down: no cycles, no import from a lower layer to a higher one.

The layer order is the one drawn in docs/architecture.md. Imports are read with ``ast`` (function-local
and ``TYPE_CHECKING`` imports included), so a lazy import cannot hide a call that runs the wrong way.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "medm2g_core"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE

# Bottom to top. A module may import its own package (any layer's sub-modules, without cycles) and
# anything in a lower layer; never a higher one. The root ``medm2g_core/__init__.py`` is the roof.
LAYERS = [
    ["_version", "errors"],
    ["serialization", "modalities"],
    ["types"],
    ["config"],
    ["bundle"],
    ["io"],
    ["data"],
    ["metrics"],
    ["models"],
    ["training"],
    ["align"],
    ["sampling"],
    ["flows"],
    ["baselines"],
    ["inference"],
    ["jobs"],
    ["workflows"],
    [""],  # the roof: medm2g_core/__init__.py re-exports only
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, is_package)
    return found


MODULES = _modules()


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The ``medm2g_core`` modules an import statement loads (the deepest one each name resolves to)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
        return [n for n in names if n.split(".")[0] == PACKAGE]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != PACKAGE:
        return []
    submodules = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in MODULES]
    if submodules and len(submodules) == len(node.names):
        return submodules
    return [source, *submodules]


def _edges() -> dict[str, set[tuple[str, int]]]:
    edges: dict[str, set[tuple[str, int]]] = {}
    for module, (path, is_package) in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, is_package, node):
                    if target != module:
                        found.add((target, node.lineno))
        edges[module] = found
    return edges


def _unit(module: str) -> str:
    """``medm2g_core.flows.model`` → ``flows``; the root package → ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer():
    missing = sorted({_unit(m) for m in MODULES} - set(RANK))
    assert not missing, f"add these to LAYERS (and docs/architecture.md): {missing}"


def test_imports_point_down():
    wrong = []
    for module, targets in _edges().items():
        for target, line in sorted(targets):
            here, there = _unit(module), _unit(target)
            if here != there and RANK[there] > RANK[here]:
                wrong.append(f"{module}:{line} imports {target} (layer {there!r} is above {here!r})")
            if there == "" and here != "":
                wrong.append(f"{module}:{line} imports the roof {target}; import the defining module instead")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = {module: {t for t, _ in targets if t in MODULES} for module, targets in _edges().items()}
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_layers_match_the_architecture_page():
    """docs/architecture.md states the order in one line: ``Layers, bottom to top: a, b | c | ...``."""
    page = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    line = next((l for l in page.splitlines() if l.startswith("Layers, bottom to top:")), None)
    assert line is not None, "docs/architecture.md lost its 'Layers, bottom to top:' line"
    written = [[name.strip() for name in group.split(",")] for group in line.split(":", 1)[1].strip(" .`").split("|")]
    assert written == [names for names in LAYERS if names != [""]]
