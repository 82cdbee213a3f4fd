"""The shape of the house, checked: one-way imports between stages, no cycles, no oversized files.

Stages, lowest first (an import may only point to the same stage or a lower one):
    base (errors, atomic/outputs, duck, hashing, config, metrics) -> data -> features -> encoding -> model
    -> training -> serving -> cli
Imports inside functions (lazy imports) count like top-level ones. The package root ``deepcrossing/__init__.py``
is the public facade (``deepcrossing.load``): nothing inside the package imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "deepcrossing"
STAGES = ["base", "data", "features", "encoding", "model", "training", "serving", "cli"]
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    return parts[1] if parts[1] in STAGES else "base"


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every deepcrossing module ``module`` imports, anywhere in the file (resolved to known modules)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()

    def add(name: str) -> None:
        while name and name not in known:  # "deepcrossing.x.y.Name" -> the module that defines it
            name = name.rsplit(".", 1)[0] if "." in name else ""
        if name:
            found.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "deepcrossing":
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "deepcrossing":
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                add(full if full in known else target)
    found.discard(module)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def test_no_import_points_up_a_stage() -> None:
    wrong = []
    for module, targets in _graph().items():
        if _stage(module) == "root":
            continue
        for target in targets:
            if _stage(target) == "root":
                wrong.append(f"{module} -> {target} (the package root is the public facade; import the module)")
            elif STAGES.index(_stage(target)) > STAGES.index(_stage(module)):
                wrong.append(f"{module} ({_stage(module)}) -> {target} ({_stage(target)})")
    assert not wrong, "imports that point to a higher stage:\n" + "\n".join(sorted(wrong))


def test_import_graph_has_no_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            # a package's __init__ importing its own submodules (re-exports) is not a cycle of meaning
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_source_file_over_the_limit(path: Path) -> None:
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(SRC)} has {n} lines (limit {MAX_LINES}): split it by concern"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text("def f():\n    from deepcrossing.serving import engine\n    import deepcrossing.cli\n")
    known = {"deepcrossing.serving.engine", "deepcrossing.cli", "deepcrossing.serving"}
    assert _imports("deepcrossing.model.m", mod, known) == {"deepcrossing.serving.engine", "deepcrossing.cli"}
