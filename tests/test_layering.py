"""Import rules between layerindex's packages (in the spirit of go-containerregistry's depcheck
test): every import of every module, at its top, inside functions and under TYPE_CHECKING,
read with ast, never by importing the module.

- Only ``index/`` (and the Alembic migrations it owns) imports a database library: SQLAlchemy,
  Alembic, psycopg, sqlite3.
- ``registry/`` imports nothing of ``index/``, ``layer/``, ``crawl/``, the use cases or the CLI.
- ``layer/`` imports nothing of the registry's HTTP stack (requests, urllib3,
  ``layerindex.registry``), nor of ``index/``, ``crawl/``, the use cases or the CLI: the
  walker process must start without them.
- ``cli/`` imports click and the standard library, and of layerindex only the modules in
  ``CLI_ENTRY_POINTS`` (the use cases and each package's entry points), public names only.
  Nothing but ``layerindex.__main__`` imports ``cli/``.
- A package's ``__init__.py`` imports nothing: importing ``layerindex.index.find`` must not
  load the rest of ``index/`` (``find`` on SQLite starts without SQLAlchemy).
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"layerindex": ROOT / "layerindex", "layerindex.migrations": ROOT / "migrations"}

DATABASE_LIBRARIES = {"sqlalchemy", "alembic", "psycopg", "sqlite3"}
HTTP_STACK = {"requests", "urllib3", "layerindex.registry"}
CLI_ENTRY_POINTS = {
    "layerindex.errors",
    "layerindex.output",
    "layerindex.reference",
    "layerindex.get",  # use case: get
    "layerindex.analysis",  # use cases: layers, inspect, diff
    "layerindex.crawl.crawler",  # index
    "layerindex.crawl.job",  # crawl (and index's crawl lock)
    "layerindex.crawl.imagelist",  # crawl --images
    "layerindex.crawl.progress",  # index, crawl: what they print
    "layerindex.index.database",  # --db, db upgrade, the readers
    "layerindex.index.store",  # index, crawl: the writer
    "layerindex.index.find",  # find
    "layerindex.index.patterns",  # find: PATH, --name, --contains, --regex, --digest
    "layerindex.index.images",  # images, layers, ls, inspect, diff
    "layerindex.index.history",  # runs, tags
    "layerindex.registry.client",  # index, crawl, get
    "layerindex.registry.credentials",  # the keychain the client is given
    "layerindex.layer.entries",  # find --type, ls: entry types and paths
}


def _module_name(package: str, base: Path, path: Path) -> str:
    parts = path.relative_to(base).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((package, *parts))


@cache
def modules() -> dict[str, Path]:
    found = {}
    for package, base in SOURCES.items():
        for path in sorted(base.rglob("*.py")):
            found[_module_name(package, base, path)] = path
    return found


def _is_module(name: str) -> bool:
    return name in modules() or (ROOT / "layerindex" / Path(*name.split(".")[1:])).is_dir()


@cache
def imports(module: str) -> frozenset[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for every import in ``module``; a
    ``from package import module`` is the module."""
    found: set[tuple[str, str | None]] = set()
    for node in ast.walk(ast.parse(modules()[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {(alias.name, None) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, f"{module}: a relative import"
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule.startswith("layerindex.") and _is_module(submodule):
                    found.add((submodule, None))
                else:
                    found.add((node.module, alias.name))
    return frozenset(found)


def imported(module: str) -> set[str]:
    return {name for name, _ in imports(module)}


def _under(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_sources_are_found() -> None:
    # Guards the guard: a moved folder must not leave the rules checking nothing.
    found = set(modules())
    assert {"layerindex.index.find", "layerindex.layer.walkproc", "layerindex.cli.main"} <= found
    assert "layerindex.migrations.env" in found
    assert ("sqlalchemy", "select") in imports("layerindex.index.store")
    assert "layerindex.registry.transport" in imported("layerindex.registry.client")
    assert "layerindex.index.find" in imported("layerindex.cli.main")  # inside a function


def test_only_the_index_imports_a_database_library() -> None:
    outside = {
        module: used
        for module, used in forbidden_imports("layerindex", DATABASE_LIBRARIES).items()
        if not (_in(module, "layerindex.index") or _in(module, "layerindex.migrations"))
    }
    assert outside == {}


# What sits above the registry and the layer code: neither may import any of it.
ABOVE_STAGES = {
    "layerindex.index",
    "layerindex.crawl",
    "layerindex.cli",
    "layerindex.get",
    "layerindex.analysis",
}


def forbidden_imports(package: str, forbidden: set[str]) -> dict[str, set[str]]:
    """Per module of ``package``, what it imports of ``forbidden`` (modules or packages)."""
    found = {}
    for module in modules():
        if _in(module, package):
            used = {name for name in imported(module) if _under(name, forbidden)}
            if used:
                found[module] = used
    return found


def test_the_registry_imports_nothing_of_the_index_or_above() -> None:
    assert forbidden_imports("layerindex.registry", ABOVE_STAGES | {"layerindex.layer"}) == {}


def test_the_layer_imports_nothing_of_the_http_stack() -> None:
    assert forbidden_imports("layerindex.layer", ABOVE_STAGES | HTTP_STACK) == {}


def test_nothing_but_main_imports_the_cli() -> None:
    outside = {
        module: {n for n in imported(module) if _in(n, "layerindex.cli")}
        for module in modules()
        if not _in(module, "layerindex.cli") and module != "layerindex.__main__"
    }
    assert {module: used for module, used in outside.items() if used} == {}


def test_the_cli_imports_only_click_and_the_entry_points() -> None:
    for module in modules():
        if not _in(module, "layerindex.cli"):
            continue
        for name, taken in imports(module):
            top = name.split(".")[0]
            if top == "layerindex":
                assert name in CLI_ENTRY_POINTS, f"{module} imports {name}"
                assert taken is None or not taken.startswith("_"), f"{module}: {name}.{taken}"
            else:
                assert top == "click" or top in sys.stdlib_module_names, f"{module}: {name}"


def test_a_packages_init_imports_nothing() -> None:
    for module, path in modules().items():
        if path.name == "__init__.py" and module.count(".") >= 1:
            assert not imports(module), module
