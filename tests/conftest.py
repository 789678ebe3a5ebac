"""Shared fixtures: real registries (started lazily, once per session), the fault proxy, and a
database URL for SQLite and PostgreSQL.

Registry fixtures: ``registry`` (anonymous), ``hub_registry`` (token auth + blob redirects to
another host), ``basic_registry`` (htpasswd); ``token_server`` and ``blob_server`` are the hub's,
reset for each test; ``fault_proxy`` / ``hub_fault_proxy`` stand in front of ``registry`` /
``hub_registry`` with no rules at the start of each test. A failing test gets the registries'
log lines written during it in its report.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from databases import postgres_url  # noqa: F401  (a fixture, used by db_url)
from faults import FaultProxy
from registry_server import (
    RUNNING,
    BasicRegistry,
    BlobServer,
    HubRegistry,
    RegistryServer,
    start_basic,
    start_hub,
    start_plain,
)
from token_server import TokenServer

from layerindex.cli.main import cli
from layerindex.index.database import Reader, open_database
from layerindex.index.images import Finder
from layerindex.index.store import Store

# --- registries ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """An anonymous registry at ``registry.url``."""
    server = start_plain(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def hub_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubRegistry]:
    """Token auth and blob redirects to ``hub_registry.blob_server`` on another host name."""
    server = start_hub(tmp_path_factory.mktemp("hub-registry"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BasicRegistry]:
    """htpasswd Basic auth with ``basic_registry.username`` / ``.password``."""
    server = start_basic(tmp_path_factory.mktemp("basic-registry"))
    yield server
    server.stop()


@pytest.fixture
def token_server(hub_registry: HubRegistry) -> Iterator[TokenServer]:
    """The hub's token server, its request records cleared and settings restored."""
    hub_registry.token_server.reset()
    yield hub_registry.token_server
    hub_registry.token_server.reset()


@pytest.fixture
def blob_server(hub_registry: HubRegistry) -> Iterator[BlobServer]:
    """The hub's redirect target, its counters cleared and Range support restored."""
    hub_registry.blob_server.reset()
    yield hub_registry.blob_server
    hub_registry.blob_server.reset()


@pytest.fixture(scope="session")
def _plain_proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(registry)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def _hub_proxy(hub_registry: HubRegistry) -> Iterator[FaultProxy]:
    proxy = FaultProxy(hub_registry)
    yield proxy
    proxy.stop()


@pytest.fixture
def fault_proxy(_plain_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """A fault proxy in front of ``registry``, with no rules and no records."""
    _plain_proxy.reset()
    yield _plain_proxy
    _plain_proxy.reset()


@pytest.fixture
def hub_fault_proxy(_hub_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """A fault proxy in front of ``hub_registry`` (token realm and blob host stay direct)."""
    _hub_proxy.reset()
    yield _hub_proxy
    _hub_proxy.reset()


# --- the CLI in a clean user environment ----------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A clean user environment: no credentials from this machine, a database in tmp."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("LAYERINDEX_DB", raising=False)
    monkeypatch.delenv("LAYERINDEX_INSECURE_REGISTRIES", raising=False)
    yield tmp_path
    # `index` and `crawl` freeze every object alive (cli._imports_done): in a real process its
    # start-up, here also whatever earlier tests left behind.
    gc.unfreeze()


@pytest.fixture
def run(home: Path) -> Callable[..., Result]:
    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    return invoke


# --- databases -------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty database: SQLite in a temp dir, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'index.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A Store on an empty database of each kind."""
    engine = open_database(db_url)
    yield Store(engine)
    engine.dispose()


@pytest.fixture
def finder(store: Store) -> Iterator[Finder]:
    """The read API on one of the store's connections: what the store wrote is read."""
    with Reader.from_engine(store.engine) as reader:
        yield Finder(reader)


# --- registry logs in failure reports --------------------------------------------------------

_LOG_MARKS = pytest.StashKey[dict[int, int]]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_LOG_MARKS] = {id(server): server.log_size() for server in RUNNING}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        marks = item.stash.get(_LOG_MARKS, {})
        for server in RUNNING:
            text = server.log_tail(since=marks.get(id(server), 0))
            if text:
                report.sections.append((f"registry log {server.url}", text))
    return report
