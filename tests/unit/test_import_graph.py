"""The import graph of the package, ``benchmarks/`` and ``tests/``, read from the source with
``ast``: no cycles anywhere, and the layering holds.

Every import counts: module level, under ``if TYPE_CHECKING:`` and inside functions. The core
(contract, errors, extras, files, keys, options, signals, cli) sits in root modules; ``client``
must stay thin (it shares only the core with the rest and imports no other role), and ``export``
and ``server`` reach the client's code never. ``perf`` may: its harness answers image ->
probabilities through ``ImageClassifier``, as a library user would, and the client importing no
``perf`` keeps that free of cycles. The package's own ``__init__`` is the public library API, so it
may import the client, and only the client: ``import resnet18_triton`` must work on the base
install.

Around the package: ``benchmarks/`` are scripts, so neither the package nor the tests import
them (what a test checks lives in the package, e.g. ``perf.harness`` and ``perf.flood``); tests
share code through support modules (``tests/support.py`` and its siblings), never by importing a
``test_*`` module or a ``conftest``, which pytest loads itself.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import PROJECT_ROOT

PACKAGE = "resnet18_triton"
SOURCE_ROOT = PROJECT_ROOT / "src"
# (folder on sys.path, top-level package): everything whose imports are checked.
TREES = ((SOURCE_ROOT, PACKAGE), (PROJECT_ROOT, "benchmarks"), (PROJECT_ROOT, "tests"))

Graph = dict[str, set[str]]


def module_name(path: Path, source_root: Path) -> str:
    """``src/pkg/sub/mod.py`` -> ``pkg.sub.mod``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(source_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every dotted name the module imports, wherever the import statement stands."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph(*trees: tuple[Path, str]) -> Graph:
    """Module -> the modules of the ``(source root, package)`` trees it imports (the longest
    name that is a module)."""
    paths = {
        module_name(path, source_root): path
        for source_root, package in trees
        for path in (source_root / package).rglob("*.py")
    }
    graph: Graph = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names = imported_names(tree, module, path.name == "__init__.py")
        targets = {name for name in names if name in paths and name != module}
        # `from pkg import mod` names both pkg and pkg.mod: the module is what is imported.
        graph[module] = {t for t in targets if not any(o.startswith(t + ".") for o in targets)}
    return graph


def find_cycle(graph: Graph) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None when the graph is acyclic."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def in_subpackage(module: str, subpackage: str) -> bool:
    prefix = f"{PACKAGE}.{subpackage}"
    return module == prefix or module.startswith(prefix + ".")


def crossings(graph: Graph, sources: tuple[str, ...], targets: tuple[str, ...]) -> list[str]:
    """Edges ``a -> b`` with ``a`` in one of ``sources`` and ``b`` in one of ``targets``."""
    return sorted(
        f"{module} -> {target}"
        for module, imported in graph.items()
        if any(in_subpackage(module, s) for s in sources)
        for target in imported
        if any(in_subpackage(target, t) for t in targets)
    )


@pytest.fixture(scope="module")
def whole() -> Graph:
    """The package, the benchmarks and the tests."""
    return import_graph(*TREES)


@pytest.fixture(scope="module")
def graph(whole: Graph) -> Graph:
    """The package alone."""
    return {module: targets for module, targets in whole.items() if in_package(module, PACKAGE)}


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_sees_the_whole_package(graph: Graph) -> None:
    assert f"{PACKAGE}.client.cli" in graph
    assert f"{PACKAGE}.client.api" in graph[f"{PACKAGE}.client.cli"]
    assert f"{PACKAGE}.errors" in graph[f"{PACKAGE}.cli"]
    assert f"{PACKAGE}.server.watchdog" in graph[f"{PACKAGE}.server.embedded"]


def test_the_graph_sees_the_benchmarks_and_the_tests(whole: Graph) -> None:
    assert f"{PACKAGE}.perf.flood" in whole["benchmarks.flood"]
    assert "tests.support" in whole["tests.unit.test_import_graph"]
    assert "tests.integration.conftest" in whole


def test_the_package_the_benchmarks_and_the_tests_have_no_import_cycle(whole: Graph) -> None:
    cycle = find_cycle(whole)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_neither_the_package_nor_the_tests_import_the_benchmarks(whole: Graph) -> None:
    edges = sorted(
        f"{module} -> {target}"
        for module, targets in whole.items()
        if not in_package(module, "benchmarks")
        for target in targets
        if in_package(target, "benchmarks")
    )
    assert edges == [], "move what both need into the package (e.g. resnet18_triton.perf)"


def is_test_or_conftest(module: str) -> bool:
    last = module.rpartition(".")[2]
    return last.startswith("test_") or last == "conftest"


def test_tests_import_no_test_module_and_no_conftest(whole: Graph) -> None:
    edges = {
        f"{module} -> {target}"
        for module, targets in whole.items()
        for target in targets
        if is_test_or_conftest(target)
    }
    assert sorted(edges) == [], (
        "shared test code belongs in a support module such as tests/support.py"
    )


def test_export_and_server_do_not_import_the_client(graph: Graph) -> None:
    assert crossings(graph, ("export", "server"), ("client",)) == []


def test_the_client_imports_nothing_from_export_server_or_perf(graph: Graph) -> None:
    assert crossings(graph, ("client",), ("export", "server", "perf")) == []


def test_the_package_root_exports_the_client_and_imports_nothing_that_needs_an_extra(
    graph: Graph,
) -> None:
    assert f"{PACKAGE}.client.api" in graph[PACKAGE]
    needs_an_extra = ("export", "server", "perf", "ui", "deploy")
    reached = [t for t in graph[PACKAGE] if any(in_subpackage(t, s) for s in needs_an_extra)]
    assert reached == []


def test_the_ui_reaches_triton_only_through_the_client_and_nothing_imports_it(
    graph: Graph,
) -> None:
    assert crossings(graph, ("ui",), ("export", "server", "perf")) == []
    reached = {edge.split(" -> ")[1] for edge in crossings(graph, ("ui",), ("repository",))}
    assert reached <= {f"{PACKAGE}.repository.variants"}
    assert crossings(graph, ("client", "export", "server", "perf"), ("ui",)) == []
    assert f"{PACKAGE}.client.api" in graph[f"{PACKAGE}.ui.service"]


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_imports_under_type_checking_and_in_functions_make_a_cycle(tmp_path: Path) -> None:
    _write(tmp_path, "pkg/__init__.py", "")
    _write(
        tmp_path,
        "pkg/a.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.b\n",
    )
    _write(tmp_path, "pkg/sub/__init__.py", "")
    _write(tmp_path, "pkg/b.py", "def f():\n    from .sub import c\n")
    _write(tmp_path, "pkg/sub/c.py", "from .. import a\n")
    graph = import_graph((tmp_path, "pkg"))
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]


def test_a_layering_breach_is_reported_by_its_edge() -> None:
    graph = {f"{PACKAGE}.perf.bench": {f"{PACKAGE}.client.api", f"{PACKAGE}.contract"}}
    assert crossings(graph, ("perf",), ("client",)) == [
        f"{PACKAGE}.perf.bench -> {PACKAGE}.client.api"
    ]


def test_the_repository_core_imports_no_other_subpackage(graph: Graph) -> None:
    others = ("export", "server", "perf", "client", "ui", "deploy")
    assert crossings(graph, ("repository",), others) == []


def test_the_client_reaches_the_repository_only_through_its_standard_library_layout(
    graph: Graph,
) -> None:
    reached = {edge.split(" -> ")[1] for edge in crossings(graph, ("client",), ("repository",))}
    assert reached <= {f"{PACKAGE}.repository.layout", f"{PACKAGE}.repository.variants"}


def is_cli_module(module: str) -> bool:
    """A module that defines subcommands: a package's ``cli`` (the group's and each
    subpackage's) or a module of a ``cli`` package (tests/unit/test_cli_modules.py)."""
    package, _, last = module.rpartition(".")
    return last == "cli" or package.rpartition(".")[2] == "cli"


def test_no_cli_module_imports_another_cli_module(graph: Graph) -> None:
    cli_modules = {module for module in graph if is_cli_module(module)}
    expected = {"perf.tune.cli", "ui.cli", "cli", "export.cli.export", "export.cli.quantize"}
    assert {f"{PACKAGE}.{module}" for module in expected} <= cli_modules
    edges = sorted(
        f"{module} -> {target}"
        for module in cli_modules
        for target in graph[module]
        if target in cli_modules
    )
    assert edges == [], "shared options belong in resnet18_triton.options"
