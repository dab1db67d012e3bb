"""The package's layering: no module imports from a layer above its own, and only cli imports cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "voxdiff"

#: Bottom (0) to top; a module may import from its own layer or below.
LAYERS: dict[str, int] = {
    "errors": 0, "paths": 0, "io": 0, "ops": 0, "config": 0,
    "intensity": 1, "data": 1, "diffusion": 1, "nets": 1, "sim": 1, "metrics": 1, "losses": 1, "plots": 1,
    "cases": 1,
    "tasks": 2, "train": 2, "bench": 2, "models": 2, "export": 2,
    "pipelines": 3,
    "demo": 4,
    "cli": 5, "__main__": 5,
}


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "voxdiff" and len(parts) > 1 else None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


MODULES = sorted(p for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC)


def test_every_top_level_module_has_a_layer():
    tops = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in MODULES}
    assert tops <= set(LAYERS), sorted(tops - set(LAYERS))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_upward_import(path):
    own = path.relative_to(SRC).parts[0].removesuffix(".py")
    bad = []
    for line, module in _imports(path):
        top = _top(module)
        if top is None or top not in LAYERS:
            continue
        if LAYERS[top] > LAYERS[own] or (top == "cli" and own not in ("cli", "__main__")):
            bad.append(f"line {line}: {module}")
    assert not bad, f"{path.relative_to(SRC)} imports from a layer above it: {bad}"
