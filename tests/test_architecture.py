"""The package's import graph keeps the architecture: no cycles, an HTTP layer that never
reaches torch or a model, pure learning functions without web or Label Studio libraries.

The graph is read from the source (every import, module level or inside a function; those
under ``if TYPE_CHECKING:`` are left out, as they never run), so a lazy import cannot hide an
edge. One check also imports the HTTP layer in a fresh interpreter and looks at what loaded.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ml_backend"
MODEL_LIBRARIES = {"torch", "torchvision", "ultralytics", "transformers", "segment_anything"}
WEB_AND_LABEL_STUDIO = {"flask", "werkzeug", "requests", "label_studio_sdk"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(source: str, known: Iterable[str]) -> set[str]:
    """Modules a source file imports: a package's submodule where ``from pkg import sub``
    names one of ``known``, else the module named after ``from``."""
    known = set(known)
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if _is_type_checking(node.test):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:  # the package uses absolute imports only
                raise AssertionError(f"relative import of {node.module!r}")
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else str(node.module))

    Visitor().visit(ast.parse(source))
    return found


def package_graph() -> dict[str, set[str]]:
    """Every ml_backend module → everything it imports (internal and third-party)."""
    paths = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    return {name: imported_names(path.read_text(), paths) for name, path in paths.items()}


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def reachable(graph: Mapping[str, Iterable[str]], start: str) -> dict[str, str]:
    """Everything ``start`` imports, directly or through other package modules: name → the
    package module that imports it (to say where a forbidden edge comes from)."""
    via: dict[str, str] = {}
    todo = [start]
    seen = {start}
    while todo:
        module = todo.pop()
        for name in graph.get(module, ()):
            via.setdefault(name, module)
            if name in graph and name not in seen:
                seen.add(name)
                todo.append(name)
    return via


def top_level(names: Mapping[str, str]) -> dict[str, str]:
    return {name.split(".")[0]: importer for name, importer in names.items()}


GRAPH = package_graph()


def test_the_checks_can_fail() -> None:
    """The helpers see a cycle, an edge through a function-local import, and ignore
    TYPE_CHECKING imports: the tests below cannot pass by seeing nothing."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
              "def f():\n    from ml_backend.runtime import Runtime\n")
    assert imported_names(source, {"ml_backend.runtime"}) == {"typing", "ml_backend.runtime"}
    assert "ml_backend.runtime" in GRAPH["ml_backend.cli"]  # a function-local import
    assert top_level(reachable(GRAPH, "ml_backend.app"))["torch"]


def test_no_import_cycles() -> None:
    internal = {m: {d for d in deps if d in GRAPH and d != m} for m, deps in GRAPH.items()}
    assert cycles(internal) == []


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith("ml_backend.http")))
def test_http_never_reaches_a_model(module: str) -> None:
    reached = reachable(GRAPH, module)
    libraries = top_level(reached)
    assert not {lib: libraries[lib] for lib in MODEL_LIBRARIES if lib in libraries}
    internal = [m for m in reached if m.startswith(("ml_backend.runtime", "ml_backend.models",
                                                    "ml_backend.pipeline", "ml_backend.jobs"))]
    assert internal == []


@pytest.mark.parametrize("module",
                         sorted(m for m in GRAPH if m.startswith("ml_backend.learning")))
def test_learning_is_pure(module: str) -> None:
    libraries = top_level(reachable(GRAPH, module))
    forbidden = (WEB_AND_LABEL_STUDIO | MODEL_LIBRARIES) & set(libraries)
    assert not {lib: libraries[lib] for lib in forbidden}


def test_importing_the_http_layer_loads_no_torch() -> None:
    code = ("import sys, ml_backend.http.routes\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{sorted(MODEL_LIBRARIES)!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_every_module_imports(module: str) -> None:
    importlib.import_module(module)


FAMILY_LAYER = sorted(m for m in GRAPH if m == "ml_backend.models.family" or (
    m.startswith("ml_backend.models.") and m.rsplit(".", 1)[-1] in {"family", "model"}))


@pytest.mark.parametrize("module", FAMILY_LAYER)
def test_families_sit_below_the_runtime(module: str) -> None:
    """A family (and its model wrapper) knows nothing of who composes it: the runtime, the
    pipeline, the job queues or the HTTP layer."""
    above = ("ml_backend.runtime", "ml_backend.pipeline", "ml_backend.jobs",
             "ml_backend.service", "ml_backend.http", "ml_backend.app")
    assert [m for m in reachable(GRAPH, module) if m.startswith(above)] == []
