"""The core's import drawing: imports in common/ run down the layers only, and no module imports itself back.

Every import counts: at the top, inside a function (lazy) and under ``TYPE_CHECKING``. The
layers, lowest first, are the subpackages in ``LAYERS``; a module may import from its own
subpackage or from one below it, never from one above, and the module graph has no circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

COMMON = Path(__file__).resolve().parents[3] / "common"

# The architecture, lowest layer first (docs/development.md, "Layout").
LAYERS = ("base", "world", "config", "data", "faults", "monitor", "frameworks", "checkpoint",
          "loop", "strategies", "launch")


def module_name(path: Path) -> str:
    parts = path.relative_to(COMMON.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(COMMON.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The core's modules ``path`` imports, wherever the import stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from common.monitor import profiling`` imports the module common.monitor.profiling
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, known) - {name} for name, path in mods.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_module_is_in_a_layer():
    outside = [m for m in modules() if m != "common" and layer(m) is None]
    assert not outside, f"modules outside the layers {LAYERS}: {outside}"


def test_imports_run_down_the_layers_only():
    upward = [f"{m} (layer {LAYERS[layer(m)]}) imports {t} (layer {LAYERS[layer(t)]})"
              for m, targets in graph().items() if m != "common"
              for t in sorted(targets) if t != "common" and layer(t) > layer(m)]
    assert not upward, "imports that run back up a layer:\n" + "\n".join(upward)


def test_no_import_circle():
    assert circles(graph()) == []


def test_the_checker_finds_a_circle_and_an_upward_import():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("common.base.errors") < layer("common.loop.trainer")


@pytest.mark.parametrize("module", sorted(modules()))
def test_each_module_says_what_it_owns_in_its_first_line(module):
    doc = ast.get_docstring(ast.parse(modules()[module].read_text())) or ""
    first = doc.splitlines()[0] if doc else ""
    if modules()[module].name == "__init__.py":
        assert first.split(":")[0].strip(), f"{module}: its docstring names what the package holds"
    else:
        assert " owns " in first, f"{module}: first line should say what it owns, got {first!r}"
