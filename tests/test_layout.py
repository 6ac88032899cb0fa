"""The package's shape, measured from the source (AST only, nothing imported): no import
cycle, no module importing a package above it, no function over 80 lines, no module over
600. The limits the code aims at are lower (about 60 and 500); these are the ones that fail."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "oga_npu"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 600


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = p.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports, anywhere in its body (a deferred import
    still closes a cycle). `from . import x` names the submodule x, not the package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    deps = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = {f"{target}.{a.name}" for a in node.names} & known.keys()
            if len(subs) < len(node.names) and target in known:
                deps.add(target)  # names taken from the module (or package) itself
            deps |= subs
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names} & known.keys()
    deps.discard(name)
    return deps


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_no_module_imports_a_package_above_it(graph):
    up = sorted((name, dep) for name, deps in graph.items() for dep in deps if name.startswith(dep + "."))
    assert up == [], "import the module that holds the name, not the package (the package imports its modules)"


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import x\n")
    (pkg / "a.py").write_text("x = 1\ndef f():\n    from .b import y\n")
    (pkg / "b.py").write_text("from .a import x\ny = 2\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from .. import a\nfrom .. import x\n")
    known = modules(pkg)
    g = {n: imports(n, p, known) for n, p in known.items()}
    assert cycles(g) == [["pkg.a", "pkg.b"]]
    assert g["pkg.sub.c"] == {"pkg.a", "pkg"}  # a submodule; a name from the package itself


def test_no_function_over_the_limit():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


def test_no_module_over_the_limit():
    big = [
        f"{p.relative_to(REPO)} ({n} lines)"
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    ]
    assert big == []
