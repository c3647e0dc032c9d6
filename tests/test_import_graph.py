"""The package's imports form no circle, counting the lazy ones inside functions too (a lazy import hides a
circle from the interpreter, not from the design), and every module imports on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "glus").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for n in ast.walk(tree):  # every import: module level, TYPE_CHECKING blocks and inside functions
        if isinstance(n, ast.Import):
            targets = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - n.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in n.names]
        else:
            continue
        for target in targets:
            # ``from glus.x import y`` depends on glus.x, and on glus.x.y when y is a module
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("glus"):
                found.add(target)
    return found


def test_no_import_circle() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    # a package's __init__ is imported before its modules: edges into "glus" itself are not circles of substance
    for deps in graph.values():
        deps.discard("glus")
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    names = sorted(n for n in _modules() if n != "glus.__main__")  # __main__ runs the command line
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    done = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True,
                          env={"PYTHONPATH": str(SRC), "PATH": ""}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
