"""The package layout: which modules may import which, and no import cycles.

The import graph is read from the source with :mod:`ast` (every ``import`` of a
``trio_jobs`` module, wherever it is: top level, inside functions, under
``TYPE_CHECKING``), so a cycle hidden in a function-level import is caught too.
Importing a module is not counted as importing its parent packages.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "trio_jobs"
LAYOUT_PAGE = ROOT / "docs" / "explanation" / "layout.rst"

#: The layers, lowest first. A module may import only from its own layer or lower
#: ones. ``pkg.*`` names the package ``pkg`` and every module under it. Every
#: module of the package must be in exactly one layer.
LAYERS: list[tuple[str, list[str]]] = [
    (
        "records",
        [
            "trio_jobs._records",
            "trio_jobs._exceptions",
            "trio_jobs._retry",
            "trio_jobs._priority_channel",
            "trio_jobs._flow",
        ],
    ),
    (
        "storage core",
        [
            "trio_jobs.storage._base",
            "trio_jobs.storage._browse",
            "trio_jobs.storage._codec",
            "trio_jobs.storage._memory",
            "trio_jobs.storage._memory_flow",
            "trio_jobs.storage._memory_browse",
            "trio_jobs.storage._memory_admin",
        ],
    ),
    ("storage backends", ["trio_jobs.storage.sqlite.*", "trio_jobs.storage.postgres.*"]),
    ("storage facade", ["trio_jobs.storage"]),
    (
        "engine",
        [
            "trio_jobs._context",
            "trio_jobs._events",
            "trio_jobs._handle",
            "trio_jobs._submit",
            "trio_jobs._outcome",
            "trio_jobs._attempt",
            "trio_jobs._scheduler",
            "trio_jobs._threads",
            "trio_jobs._middleware",
            "trio_jobs._periodic",
            "trio_jobs._store_flow",
            "trio_jobs._store_admin",
            "trio_jobs._runner",
            "trio_jobs._admin",
            "trio_jobs._client",
            "trio_jobs._blocking",
            "trio_jobs._tracing",
        ],
    ),
    ("public API", ["trio_jobs"]),
    ("dashboard", ["trio_jobs.dashboard.*"]),
    ("command line", ["trio_jobs.cli.*", "trio_jobs.__main__"]),
]

#: Pairs of module groups that must not import each other, in either direction.
INDEPENDENT: list[tuple[str, str]] = [
    ("trio_jobs.storage.sqlite.*", "trio_jobs.storage.postgres.*"),
]


def matches(module: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        package = pattern[:-2]
        return module == package or module.startswith(package + ".")
    return module == pattern


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module under ``package``, by its dotted name."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(
    name: str, tree: ast.AST, *, is_package: bool, known: Iterable[str]
) -> set[str]:
    """The ``trio_jobs`` modules that module ``name`` imports, relative imports resolved."""
    known = set(known)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                if not is_package:
                    base.pop()
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                # ``from pkg import mod`` imports the module ``pkg.mod``.
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in known else source)
    return {m for m in found if m == "trio_jobs" or m.startswith("trio_jobs.")}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    files = module_files(package)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        imports = imported_modules(name, tree, is_package=path.name == "__init__.py", known=files)
        graph[name] = imports - {name}
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a path ``[a, b, ..., a]``, or ``None`` if it has none."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in sorted(graph.get(node, ())):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def layer_of(module: str) -> int:
    [layer] = [i for i, (_, patterns) in enumerate(LAYERS) for p in patterns if matches(module, p)]
    return layer


# -- the layout -----------------------------------------------------------------------------


def test_the_packages_import() -> None:
    import trio_jobs
    import trio_jobs.cli
    import trio_jobs.storage.postgres
    import trio_jobs.storage.sqlite

    assert trio_jobs.storage.sqlite.SQLiteStorage is trio_jobs.SQLiteStorage
    assert trio_jobs.storage.postgres.PostgresStorage is trio_jobs.PostgresStorage
    assert callable(trio_jobs.cli.main)


def test_the_packages_import_without_psycopg() -> None:
    code = (
        "import sys\n"
        "sys.modules['psycopg'] = sys.modules['psycopg_pool'] = None  # import fails\n"
        "import trio_jobs.cli, trio_jobs.storage.postgres, trio_jobs.storage.sqlite\n"
        "trio_jobs.storage.postgres.PostgresStorage('postgresql://localhost/x')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_module_is_in_exactly_one_layer() -> None:
    for module in import_graph():
        owners = [n for n, patterns in LAYERS for p in patterns if matches(module, p)]
        assert len(owners) == 1, f"{module} is in layers {owners}: declare it in LAYERS once"


def test_modules_import_only_their_layer_or_lower_ones() -> None:
    wrong = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not wrong, "imports from a higher layer:\n" + "\n".join(wrong)


def test_independent_modules_do_not_import_each_other() -> None:
    graph = import_graph()
    wrong = [
        f"{module} imports {target}"
        for one, other in INDEPENDENT
        for a, b in [(one, other), (other, one)]
        for module, targets in sorted(graph.items())
        if matches(module, a)
        for target in sorted(targets)
        if matches(target, b)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_docs_list_every_module() -> None:
    """``docs/explanation/layout.rst`` shows the tree: one line per file, nested by indent."""
    text = LAYOUT_PAGE.read_text()
    tree = text.partition(".. code-block:: text\n\n")[2].partition("\n\n")[0]
    listed: set[str] = set()
    folders: list[str] = []
    for line in tree.splitlines():
        depth = (len(line) - len(line.lstrip()) - 3) // 2
        name = line.split()[0]
        del folders[depth:]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        else:
            listed.add("/".join([*folders, name]))
    files = {str(p.relative_to(PACKAGE.parent)) for p in module_files().values()}
    assert listed == files


# -- the checker itself ---------------------------------------------------------------------


def test_relative_imports_resolve_to_modules() -> None:
    known = {"trio_jobs.storage.postgres._sql", "trio_jobs._records"}
    source = (
        "from . import _sql as sql\n"
        "from ..._records import Job\n"
        "def later():\n"
        "    from ...cli import main\n"
        "import trio, trio_jobs.storage\n"
    )
    found = imported_modules(
        "trio_jobs.storage.postgres._store", ast.parse(source), is_package=False, known=known
    )
    assert found == {*known, "trio_jobs.cli", "trio_jobs.storage"}
    in_package = imported_modules(
        "trio_jobs.cli", ast.parse("from ._main import main"), is_package=True, known=()
    )
    assert in_package == {"trio_jobs.cli._main"}


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ],
)
def test_find_cycle(graph: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle
