"""The one table of data sets (``nrcc_scale.data.catalog``): the allowed names come from it, it is built without
importing the run configuration, and the modules of ``nrcc_scale/data`` import one another without a circle
(counting imports inside functions, which run later but still tie the modules together)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from nrcc_scale.config import ConfigError
from nrcc_scale.config_checks import validate_config
from nrcc_scale.config_load import load_config
from nrcc_scale.data.catalog import BUILDERS, dataset_names

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "nrcc_scale"


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The ``nrcc_scale`` modules ``path`` imports at run time: at any depth, except under ``if TYPE_CHECKING``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                # ``from package import submodule`` imports the submodule; ``from module import name`` the module
                targets = [f"{child.module}.{a.name}" if f"{child.module}.{a.name}" in modules else child.module
                           for a in child.names]
            found.update(t for t in targets if t in modules)
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _reachable(start: str, graph: dict[str, set[str]]) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for nxt in graph[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _module_names()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_no_import_circle_among_the_data_modules(graph: dict[str, set[str]]) -> None:
    data = sorted(m for m in graph if m.startswith("nrcc_scale.data."))
    assert "nrcc_scale.data.catalog" in data and "nrcc_scale.data.cifar" in data
    circles = [m for m in data if m in _reachable(m, {k: {v for v in vs if v in data} for k, vs in graph.items()})]
    assert circles == []


def test_the_catalog_needs_no_config(graph: dict[str, set[str]]) -> None:
    # nrcc_scale.config may then read the allowed names from the catalog without an import circle
    reach = _reachable("nrcc_scale.data.catalog", graph)
    assert {"nrcc_scale.data.cifar", "nrcc_scale.data.imagenet", "nrcc_scale.data.image_files"} <= reach
    assert "nrcc_scale.config" not in reach
    assert "nrcc_scale.data.registry" not in reach
    # and at run time: importing the catalog (and the package) loads neither the config nor the registry
    code = ("import sys, nrcc_scale.data.catalog as c; "
            "print(len(c.BUILDERS), 'nrcc_scale.config' in sys.modules, 'nrcc_scale.data.registry' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(len(BUILDERS)), "False", "False"]


def test_dataset_names_are_the_table_in_order() -> None:
    names = dataset_names()
    assert names == tuple(BUILDERS) and len(set(names)) == len(names)
    assert names[0] == "digits" and {"image_folder", "cifar10", "cifar20_lt", "stl10", "tinyimagenet"} <= set(names)


def test_validate_config_allows_exactly_the_catalog_names() -> None:
    for name in dataset_names():
        try:
            validate_config(load_config(overrides=[f"data.dataset={name}"]))
        except ConfigError as err:  # other keys may object (image_folder needs data.root); data.dataset may not
            assert not str(err).startswith("data.dataset"), err
    with pytest.raises(ConfigError) as err:
        validate_config(load_config(overrides=["data.dataset=cifar11"]))
    assert str(err.value) == f"data.dataset = 'cifar11': allowed values are {', '.join(dataset_names())}"
