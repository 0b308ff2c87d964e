"""The package's shape, checked: the layers of the data flow, no import cycles, small modules.

Every import counts, the ones inside functions too (a lazy import can hide a cycle as well as a top
one). Third-party imports are ignored. The layer table is the README's Architecture section.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "deskpro"
MAX_LINES = 400

# Lower numbers are lower layers: a module may import its own layer and the ones below it.
LAYERS = (
    ("deskpro.common", 0),
    ("deskpro.config", 0),
    ("deskpro.weights", 0),
    ("deskpro.paper", 0),
    ("deskpro.manifests", 1),
    ("deskpro.synthetic", 2),
    ("deskpro.pipeline", 3),
    ("deskpro.weights_import", 3),
    ("deskpro.shards", 4),
    ("deskpro.model", 4),
    ("deskpro.train", 5),
    ("deskpro.experiments", 6),
    ("deskpro.demo", 6),
    ("deskpro.cli", 7),
    ("deskpro.__main__", 7),
    ("deskpro", 0),  # the package's own __init__ (version only)
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(name: str) -> int:
    for prefix, number in LAYERS:
        if name == prefix or (prefix != "deskpro" and name.startswith(prefix + ".")):
            return number
    raise AssertionError(f"{name}: not in the layer table of tests/test_architecture.py")


def _resolve(name: str) -> str | None:
    """The deskpro module an import of `name` loads (a package's __init__ for a package name)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str) -> set[str]:
    """deskpro modules that `name` imports anywhere in its body (`from pkg import mod` -> pkg.mod)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
                base = base.rstrip(".")
            # `from pkg import mod` loads pkg.mod; `from mod import name` loads mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            if target == "deskpro" or target.startswith("deskpro."):
                resolved = _resolve(target)
                if resolved and resolved != name:
                    found.add(resolved)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        layer(name)


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, targets in GRAPH.items()
        for target in sorted(targets)
        if layer(target) > layer(name) and target != "deskpro"
    ]
    assert not upward, "\n".join(upward)


def test_networks_import_no_pipeline_wrapper() -> None:
    wrong = [
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if name.startswith("deskpro.pipeline.nets")
        for target in targets
        if target.startswith("deskpro.pipeline") and not target.startswith("deskpro.pipeline.nets")
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if nxt == "deskpro" or nxt not in GRAPH:
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [node, nxt]) if nxt in path else node)
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_are_small(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]}: {lines} lines (at most {MAX_LINES})"


def test_no_function_local_deskpro_imports_outside_the_cli() -> None:
    """A lazy import of deskpro can only hide a dependency; the CLI imports lazily for a fast --help."""
    lazy = []
    for name, path in MODULES.items():
        if name.startswith("deskpro.cli"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(func):
                module = node.module if isinstance(node, ast.ImportFrom) else None
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if (module or "").startswith("deskpro") or any(n.startswith("deskpro") for n in names):
                    lazy.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} in {func.name}()")
    assert not lazy, "\n".join(sorted(set(lazy)))
