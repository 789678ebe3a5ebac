"""Database fixtures: SQLite in a temp dir, and a real PostgreSQL server (a database per test).

PostgreSQL: ``LAYERINDEX_TEST_POSTGRES`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432``,
trust auth). Each test gets a database of its own, created and dropped here. Under ``CI=true`` a
server that cannot be reached fails the run; elsewhere those tests skip with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

POSTGRES = os.environ.get(
    "LAYERINDEX_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432"
)


def _admin_url() -> str:
    return f"{POSTGRES}/postgres"


def postgres_available() -> str | None:
    """None if the server answers, else why not."""
    try:
        engine = create_engine(_admin_url())
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except (OperationalError, ModuleNotFoundError) as exc:
        return f"PostgreSQL at {POSTGRES} is not reachable: {exc}"
    return None


def require_postgres() -> None:
    reason = postgres_available()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run)")
    pytest.skip(reason)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    require_postgres()
    name = f"layerindex_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
