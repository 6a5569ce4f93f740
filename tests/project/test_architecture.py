"""Facts about the tree a reviewer would otherwise check by hand: no import circles between cnnlens's
modules (counting imports inside functions too: a lazy import is still a dependency), and the core
imports nothing but NumPy and the standard library."""

from __future__ import annotations

import ast
import os
import sys
from typing import Dict, List, Set

import cnnlens

ROOT = os.path.dirname(os.path.abspath(cnnlens.__file__))


def _modules() -> Dict[str, str]:
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = "cnnlens." + os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[dotted[: -len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
    return found


def _imports(name: str, path: str, modules: Dict[str, str]) -> Set[str]:
    """Every cnnlens module ``name`` imports, anywhere in the file (the package's modules, not its parents:
    importing ``a.b`` runs ``a``'s ``__init__``, which holds no logic here but the public re-exports)."""
    package = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p) if node.level else (node.module or "")
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def _circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    circles: List[List[str]] = []

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
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10000))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return circles


def test_no_import_circles():
    modules = _modules()
    graph = {name: {m for m in _imports(name, path, modules) if m != "cnnlens"} for name, path in modules.items()}
    assert _circles(graph) == []


def test_a_planted_circle_is_found():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_imports_numpy_and_the_standard_library_only():
    allowed = set(sys.stdlib_module_names) | {"numpy", "cnnlens"}
    for folder, _, files in os.walk(os.path.join(ROOT, "core")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                if isinstance(node, ast.Import):
                    tops = [alias.name.split(".")[0] for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    tops = [(node.module or "").split(".")[0]]
                else:
                    continue
                assert set(tops) <= allowed, (path, tops)


def test_no_module_is_over_400_lines():
    """Small modules with one idea each: a module that grows past 400 lines is split, not let grow."""
    long = {name: n for name, path in _modules().items()
            if (n := sum(1 for _ in open(path, encoding="utf-8"))) > 400}
    assert not long, long


def test_backend_members_are_read_through_the_contract_only():
    """Every member the core and the adapters read off a backend is declared by the protocol in
    core/backend.py, so nothing reads one with ``getattr`` / ``hasattr`` and a default: the one
    place that may ask what an object is, is ``core.backend.is_backend``."""
    import re

    pattern = re.compile(r"\b(getattr|hasattr)\((self\.)?(backend|model|other)\b")
    found = []
    for name, path in _modules().items():
        if name == "cnnlens.core.backend":
            continue
        for number, line in enumerate(open(path, encoding="utf-8"), start=1):
            if pattern.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_shared_definitions_are_made_once():
    """The pages' stylesheet, ImageNet's statistics and the ReLU rule names each have one definition
    in the Python package (grep finds one)."""
    texts = {name: open(path, encoding="utf-8").read() for name, path in _modules().items()}
    where = lambda text: sorted(n for n, t in texts.items() if text in t)  # noqa: E731
    assert where("font-family:system-ui") == ["cnnlens.adapters.page_style"]
    assert where("0.485, 0.456, 0.406") == ["cnnlens.core.types"]
    assert where('("plain", "guided", "deconv")') == ["cnnlens.core.backend"]
