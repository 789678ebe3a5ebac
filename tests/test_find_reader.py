"""find's read path: plain SQL through the stdlib on SQLite (no SQLAlchemy, no Alembic), the
schema revision check on that path, and a database that is missing or not an index."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, make_url
from test_index import Run
from test_store import e, image, index_image

from layerindex.index import database
from layerindex.index.store import Store


def make_index(path: Path) -> str:
    url = f"sqlite:///{path}"
    engine = database.open_database(url)
    index_image(Store(engine), image("sha256:i1", ["sha256:l0"]), [[e("/usr/bin/kubectl")]])
    engine.dispose()
    return url


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_find_imports_neither_sqlalchemy_nor_alembic(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "sqlite":
        url = make_index(tmp_path / "index.db")
    else:  # read through psycopg
        url = request.getfixturevalue("postgres_url")
        engine = database.open_database(url)
        index_image(Store(engine), image("sha256:i1", ["sha256:l0"]), [[e("/usr/bin/kubectl")]])
        engine.dispose()
    command = ["layerindex", "--db", url, "find", "/usr/bin/kubectl", "--nl"]
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", *command],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert '"path": "/usr/bin/kubectl"' in result.stdout
    # -X importtime writes a line per imported module: "import time: self | cumulative | name".
    imported = {line.rpartition("|")[2].strip() for line in result.stderr.splitlines()}
    assert "layerindex.index.find" in imported
    assert not {m for m in imported if m.split(".")[0] in ("sqlalchemy", "alembic")}


def test_find_on_a_missing_database_is_an_error_and_creates_nothing(home: Path, run: Run) -> None:
    missing = home / "nowhere" / "index.db"
    result = run("--db", f"sqlite:///{missing}", "find", "/usr/bin/kubectl")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        f"Error: there is no index at {missing}; index an image first (layerindex index REF) "
        "or give the database with --db or LAYERINDEX_DB\n"
    )
    assert not missing.parent.exists()


def test_find_refuses_an_older_schema_with_the_command_to_upgrade(home: Path, run: Run) -> None:
    url = f"sqlite:///{home / 'old.db'}"
    database.upgrade(url, "0004_batch_search_index")
    result = run("--db", url, "find", "/usr/bin/kubectl")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        f"Error: the database {url} is at schema revision 0004_batch_search_index, this "
        f"layerindex needs {database.head_revision()}; upgrade it with: "
        f"layerindex --db '{url}' db upgrade\n"
    )
    assert run("--db", url, "db", "upgrade").exit_code == 0
    assert run("--db", url, "find", "/usr/bin/kubectl").exit_code == 1  # upgraded, nothing in it


def test_find_refuses_what_is_not_a_layerindex_database(home: Path, run: Run) -> None:
    empty, other, unknown = (home / name for name in ("empty.db", "other.db", "unknown.db"))
    empty.touch()
    connection = sqlite3.connect(other)
    connection.execute("CREATE TABLE something_else (id INTEGER)")
    connection.close()
    url = make_index(unknown)
    connection = sqlite3.connect(unknown)
    connection.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    connection.commit()
    connection.close()
    expected = {
        empty: f"Error: the database sqlite:///{empty} is empty; index an image first "
        "(layerindex index REF)\n",
        other: f"Error: sqlite:///{other} has tables but no layerindex schema revision: it is "
        "not a layerindex database; give another --db\n",
        unknown: f"Error: the database {url} has schema revision '9999_from_the_future', which "
        "this layerindex does not know: it was made by a newer layerindex, or is not a "
        "layerindex database\n",
    }
    for path, message in expected.items():
        result = run("--db", f"sqlite:///{path}", "find", "/usr/bin/kubectl")
        assert (result.exit_code, result.stdout, result.stderr) == (2, "", message)


def test_find_on_an_empty_postgresql_database_says_so_and_creates_nothing(
    postgres_url: str, run: Run
) -> None:
    result = run("--db", postgres_url, "find", "/usr/bin/kubectl")
    shown = repr(make_url(postgres_url))
    assert (result.exit_code, result.stdout, result.stderr) == (
        2,
        "",
        f"Error: the database {shown} is empty; index an image first (layerindex index REF)\n",
    )
    engine = create_engine(postgres_url)
    assert inspect(engine).get_table_names() == []  # reading made no schema
    engine.dispose()


def test_find_on_postgresql_reads_through_the_drivers_connection(
    postgres_url: str, run: Run
) -> None:
    engine = database.open_database(postgres_url)
    index_image(Store(engine), image("sha256:i1", ["sha256:l0"]), [[e("/usr/bin/kubectl")]])
    engine.dispose()
    result = run("--db", postgres_url, "find", "--contains", "kubect", "--nl")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["path"] for line in result.stdout.splitlines()] == ["/usr/bin/kubectl"]


def test_find_on_a_postgresql_server_that_refuses_says_so(postgres_url: str, run: Run) -> None:
    url = postgres_url.replace("postgres@", "postgres:secret@").rsplit("/", 1)[0] + "/nothere_x"
    result = run("--db", url, "find", "/usr/bin/kubectl")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr.startswith(
        f"Error: cannot open database {url.replace(':secret@', ':***@')}: "
    )
    assert 'database "nothere_x" does not exist' in result.stderr
    assert "secret" not in result.stderr


def test_find_errors_are_messages_before_any_output(home: Path, run: Run) -> None:
    url = make_index(home / "index.db")
    unknown = run("--db", url, "find", "/usr/bin/kubectl", "--image", "nothere:1", "--json")
    assert (unknown.exit_code, unknown.stdout) == (2, "")  # not even the JSON array's "["
    assert unknown.stderr == (
        "Error: nothere:1 is not indexed; run: layerindex index docker.io/library/nothere:1\n"
    )
    connection = sqlite3.connect(home / "index.db")
    connection.execute("DROP TABLE names_fts")
    connection.close()
    broken = run("--db", url, "find", "--contains", "kubect")
    assert (broken.exit_code, broken.stdout) == (2, "")
    assert broken.stderr == "Error: cannot read the index: no such table: names_fts\n"
