"""The transport is layered: no module of ``sonm_p2p.transport`` imports, directly or through
others, a module that imports it back (deferred imports and ``TYPE_CHECKING`` included, so that a
circle cannot hide behind them)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import sonm_p2p.transport

ROOT = Path(sonm_p2p.transport.__file__).parent
PACKAGE = "sonm_p2p.transport"


def _modules(root: Path = ROOT) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([PACKAGE, *parts])] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Transport modules ``name`` imports anywhere in its source (a package's ``__init__``
    counts for ``from package import x``, or the submodule when ``x`` is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Which transport modules each transport module imports (a package importing its own
    submodules in its ``__init__`` is not an edge back)."""
    modules = _modules(root)
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    for name in graph:
        if modules[name].name != "__init__.py":
            graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (``a -> b -> a``), or None when the graph is acyclic."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)) is not None:
                return found
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name)) is not None:
            return found
    return None


def test_transport_import_graph_is_acyclic() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_check_finds_circles_behind_deferred_and_type_checking_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "transport"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "node.py").write_text("from sonm_p2p.transport._handles import Tunnel\n")
    (pkg / "_handles.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from sonm_p2p.transport.node import P2PNode\n"
    )
    (pkg / "relay.py").write_text("def f():\n    from sonm_p2p.transport import node\n")
    cycle = find_cycle(import_graph(pkg))
    assert cycle is not None and {"sonm_p2p.transport.node", "sonm_p2p.transport._handles"} <= set(
        cycle
    )


def test_no_transport_module_over_600_lines() -> None:
    long = {p.name: n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 600}
    assert not long


def test_each_transport_module_imports_alone() -> None:
    # A fresh interpreter per module: an import that only works after another module was
    # imported first (the symptom of a circle) fails here.
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    for name in sorted(_modules()):
        proc = subprocess.run(
            [sys.executable, "-c", code, name], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
