"""No import cycles inside the ``cacs`` package.

A cycle between modules works only as long as nobody reorders an import or
touches a name at import time; when it breaks, it breaks as a half-initialised
module (``ImportError: cannot import name ...``) far from the change that
caused it.  This test reads every module under ``src/cacs`` with :mod:`ast`
(nothing is imported), builds the graph of imports between cacs modules and
fails on any cycle, so a new one is caught the day it is written.

Two kinds of edges are collected:

* *top-level* imports run when the module is imported (module body, including
  ``if``/``try`` blocks and class bodies); a cycle among these is always an error;
* *deferred* imports sit inside a function and run when it is called.  A cycle
  that needs one of them still couples the two modules both ways (and usually
  means a shared piece belongs in a third module), so it is an error too.

Imports under ``if TYPE_CHECKING:`` never run and are ignored.  Importing a
module also runs the ``__init__`` of every package above it; those edges count,
except for the importer's own parent packages, which are already being
initialised when it runs (``from cacs.figures import data`` inside
``cacs.figures.write_all`` needs only ``data``).  A name taken from a package,
``from cacs.figures import figure1``, needs that package's ``__init__``: counted.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "cacs"

Graph = Mapping[str, Iterable[str]]


# ------------------------------------------------------------------------------ the graph


def module_names(src: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package (packages by ``__init__``)."""
    modules: dict[str, Path] = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute package or module a ``from ... import`` reads from (relative imports resolved)."""
    base = node.module or ""
    if node.level:
        anchor = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            anchor = anchor.rpartition(".")[0]
        base = f"{anchor}.{base}" if base else anchor
    return base


def _resolve(name: str, modules: Mapping[str, Path]) -> str | None:
    """The module a dotted name lives in (``cacs.x.func`` -> ``cacs.x``), or None outside the package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _with_parents(target: str, importer: str, modules: Mapping[str, Path]) -> set[str]:
    """``target`` and the packages above it that importing it initialises, except the importer's own.

    The importer's ancestors are already being initialised when it runs, so Python never
    re-enters them for a submodule; any other parent package's ``__init__`` does run.
    """
    out = {target}
    parts = target.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent in modules and not (importer == parent or importer.startswith(parent + ".")):
            out.add(parent)
    return out


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: Mapping[str, Path]) -> set[str]:
    """The package's modules an import statement runs (empty for imports from elsewhere).

    ``from pkg import name`` runs ``pkg.name`` when that is a submodule, else it needs
    ``pkg`` itself (a name defined or re-exported by its ``__init__``).
    """
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = _base(node, module, is_package)
        for alias in node.names:
            full = f"{base}.{alias.name}"
            names.append(full if full in modules else base)
    out: set[str] = set()
    for name in names:
        target = _resolve(name, modules)  # None for anything outside the package (numpy, os, ...)
        if target is not None:
            out |= _with_parents(target, module, modules)
    out.discard(module)
    return out


def _imports(tree: ast.Module) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every runtime import statement of a module, with whether it is deferred (inside a function)."""

    def visit(node: ast.AST, deferred: bool) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, deferred
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:  # the body never runs; an else branch does
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), deferred)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from visit(child, True)
            else:
                yield from visit(child, deferred)

    return visit(tree, False)


def import_graph(src: Path = SRC, package: str = PACKAGE) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(top-level edges, deferred edges) between the package's modules: module -> modules it imports."""
    modules = module_names(src, package)
    top: dict[str, set[str]] = {m: set() for m in modules}
    deferred: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, is_deferred in _imports(tree):
            (deferred if is_deferred else top)[module].update(_targets(node, module, is_package, modules))
    return top, deferred


# -------------------------------------------------------------------------- the cycle finder


def find_cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import), each sorted.

    Tarjan's algorithm, written iteratively so a long import chain cannot hit the
    recursion limit.  Every module of a component can reach every other, so each
    component is one set of mutually dependent modules, however many cycles run
    through it.
    """
    nodes = sorted(set(graph) | {t for targets in graph.values() for t in targets})
    succ = {n: sorted(graph.get(n, ())) for n in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            if i < len(succ[node]):
                work.append((node, i + 1))
                nxt = succ[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in succ[node]:
                    components.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return sorted(components)


def _merged(a: Mapping[str, set[str]], b: Mapping[str, set[str]]) -> dict[str, set[str]]:
    return {m: set(a.get(m, ())) | set(b.get(m, ())) for m in set(a) | set(b)}


def _describe(cycles: list[list[str]], top: Mapping[str, set[str]], deferred: Mapping[str, set[str]]) -> str:
    """Each cycle with its edges, deferred ones marked, so the message says which import to move."""
    lines = []
    for cycle in cycles:
        members = set(cycle)
        edges = [
            f"{a} -> {b}{' (in a function)' if b in deferred.get(a, ()) and b not in top.get(a, ()) else ''}"
            for a in cycle
            for b in sorted((top.get(a, set()) | deferred.get(a, set())) & members)
        ]
        lines.append(f"{' <-> '.join(cycle)}: " + "; ".join(edges))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- tests


def test_find_cycles_on_synthetic_graphs() -> None:
    """The finder itself: it must see a cycle (else the package tests below could never fail)."""
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"a"}}) == [["a"]]
    two = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c", "e"}, "e": set()}
    assert find_cycles(two) == [["a", "b"], ["c", "d"]]
    chain = {f"m{i}": {f"m{i + 1}"} for i in range(5000)}  # deeper than the recursion limit
    chain["m5000"] = {"m0"}
    assert len(find_cycles(chain)[0]) == 5001


def test_graph_separates_top_level_and_deferred_imports(tmp_path: Path) -> None:
    """The parser: which imports count, and as which kind (a tiny fake package)."""
    pkg = tmp_path / "fake"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "sub/__init__.py": "from fake.sub.leaf import VALUE\nfrom fake.sub.loop import OTHER\n",
        "sub/leaf.py": "VALUE = 1\n",
        "sub/loop.py": "from fake.sub import VALUE\nOTHER = VALUE\n",  # needs sub's __init__: a real cycle
        "a.py": (
            "from typing import TYPE_CHECKING\n"
            "import os\n"
            "from fake import b\n"
            "from .sub.leaf import VALUE\n"
            "if TYPE_CHECKING:\n"
            "    from fake import c\n"
            "try:\n"
            "    import fake.d\n"
            "except ImportError:\n"
            "    pass\n"
            "def f():\n"
            "    from fake.e import thing\n"
            "    return thing\n"
        ),
        "b.py": "",
        "c.py": "",
        "d.py": "",
        "e.py": "from fake.a import f\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    top, deferred = import_graph(tmp_path, "fake")
    # not os, not the TYPE_CHECKING import, not the package fake itself (a's own parent),
    # but fake.sub, whose __init__ runs before fake.sub.leaf
    assert top["fake.a"] == {"fake.b", "fake.sub", "fake.sub.leaf", "fake.d"}
    assert deferred["fake.a"] == {"fake.e"}
    assert top["fake.sub"] == {"fake.sub.leaf", "fake.sub.loop"}
    assert top["fake.sub.loop"] == {"fake.sub"}
    assert find_cycles(top) == [["fake.sub", "fake.sub.loop"]]
    assert find_cycles(_merged(top, deferred)) == [["fake.a", "fake.e"], ["fake.sub", "fake.sub.loop"]]


def test_the_package_is_parsed() -> None:
    top, _ = import_graph()
    assert "cacs.agatston" in top and "cacs.evaluate" in top, sorted(top)
    assert "cacs.agatston.clinical" in top["cacs.agatston"]


def test_no_cycles_among_top_level_imports() -> None:
    top, deferred = import_graph()
    cycles = find_cycles(top)
    assert not cycles, "import cycles among top-level imports:\n" + _describe(cycles, top, deferred)


def test_no_cycles_through_function_level_imports() -> None:
    top, deferred = import_graph()
    cycles = find_cycles(_merged(top, deferred))
    assert not cycles, (
        "import cycles through imports inside functions (move the shared piece into a module both "
        "can import):\n" + _describe(cycles, top, deferred)
    )

