"""The package's structure: imports among ``nrcc_scale`` modules run one way, and no module is overlong.

The import graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` anywhere in a module - at the top, inside functions, inside ``try`` - and every
``importlib.import_module("literal")`` call. ``from package import name`` points at the submodule
``package.name`` when there is one, else at the package (its ``__init__``). The implicit import of a parent
package (which Python runs before any of its submodules) is not an edge: a package ``__init__`` that
re-exports its submodules would otherwise be a cycle with each of them. Imports under ``if TYPE_CHECKING:``
run only for type checkers and are left out.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = "nrcc_scale"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
MAX_LINES = 400
#: A module over MAX_LINES says why at its top, in its docstring: "Over 400 lines because ...".
REASON = re.compile(r"over\s+400\s+lines\s+because", re.IGNORECASE)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(tree: ast.AST):
    """Every node of the tree except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The ``nrcc_scale`` modules that module ``name`` (file ``path``) imports."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()

    def add(target: str) -> None:
        # the longest known module that is ``target`` or a parent of it (``import a.b.c`` of a function)
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)

    for node in _statements(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if source.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                add(sub if sub in known else source)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and node.args[0].value.split(".")[0] == PACKAGE):
            add(node.args[0].value)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a list of modules, the first repeated at the end) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan; the package has ~100 modules, recursion depth is no issue
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_cycle_in(component, graph) for component in components]


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first within the component)."""
    start, members = component[0], set(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if v != start else [start, start]
                if w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle found in the component {component}")  # Tarjan guarantees one


# ----------------------------------------------------------------------------------------------------------
# the checker itself, on small made-up graphs
# ----------------------------------------------------------------------------------------------------------


def test_cycle_finder_on_known_graphs() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    found = cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c", "a"}})
    assert sorted(found) == [["a", "b", "a"], ["c", "d", "e", "c"]]


def test_imports_are_read_from_every_kind_of_statement(tmp_path: Path) -> None:
    source = '''
from typing import TYPE_CHECKING
import nrcc_scale.a
from nrcc_scale import b
from nrcc_scale.pkg import c, not_a_module
from . import d
if TYPE_CHECKING:
    from nrcc_scale import e
def f():
    from nrcc_scale.pkg.g import thing
    import importlib
    importlib.import_module("nrcc_scale.h")
'''
    path = tmp_path / "x.py"
    path.write_text(source)
    known = {"nrcc_scale", "nrcc_scale.a", "nrcc_scale.b", "nrcc_scale.pkg", "nrcc_scale.pkg.c", "nrcc_scale.d",
             "nrcc_scale.e", "nrcc_scale.pkg.g", "nrcc_scale.h", "nrcc_scale.x"}
    assert imported_modules("nrcc_scale.x", path, known) == {
        "nrcc_scale.a", "nrcc_scale.b", "nrcc_scale.pkg.c", "nrcc_scale.pkg", "nrcc_scale.d", "nrcc_scale.pkg.g",
        "nrcc_scale.h"}


# ----------------------------------------------------------------------------------------------------------
# the package
# ----------------------------------------------------------------------------------------------------------


def test_no_import_cycle_among_nrcc_scale_modules() -> None:
    graph = import_graph()
    assert len(graph) > 50 and graph["nrcc_scale.cluster.gridshift"]  # the walk found the package
    found = cycles(graph)
    assert not found, "import cycles among nrcc_scale modules:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_module_over_400_lines_without_a_stated_reason() -> None:
    too_long = []
    for path in package_modules().values():
        text = path.read_text()
        n_lines = len(text.splitlines())
        if n_lines <= MAX_LINES:
            continue
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if not REASON.search(docstring):
            too_long.append(f"{path.relative_to(ROOT.parent)}: {n_lines} lines")
    assert not too_long, (f"modules over {MAX_LINES} lines without 'Over 400 lines because ...' in their "
                          "docstring:\n" + "\n".join(too_long))
