"""Opening, making and changing the database: schema changes in one transaction (processes
killed half-way; workers started together: test_crawl), ``--db`` as a path or a
URL, read-only commands that never make a database, bad ``--db`` values as messages."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result
from images import make_image, make_layer
from registry_server import RegistryServer
from sqlalchemy import inspect
from test_crawl import wait_for
from test_store import e, image, index_image

from layerindex.errors import DatabaseError, DuplicateRow, LayerIndexError
from layerindex.index import database
from layerindex.index.store import Store

Run = Callable[..., Result]
TESTS = Path(__file__).parent
SMALL = make_image([make_layer({"/bin/tool": b"tool"}), make_layer({"/etc/tool.conf": b"conf"})])


def paused(point: str, mark: Path, *args: str) -> subprocess.Popen[str]:
    """``layerindex ARGS`` stopped at ``point`` (tests/paused_cli.py), once ``mark`` exists."""
    process = subprocess.Popen(
        [sys.executable, str(TESTS / "paused_cli.py"), point, str(mark), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: mark.exists() or process.poll() is not None, timeout=60)
    assert process.poll() is None, process.communicate()
    return process


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_an_upgrade_killed_half_way_leaves_the_database_as_it_was(
    tmp_path: Path, run: Run, how: signal.Signals
) -> None:
    # 0006 → 0007 copies entries into entries_new, drops entries, renames the copy. Killed
    # before the rename it left entries_new behind (made outside any transaction), and every
    # later upgrade failed: "table entries_new already exists".
    url = f"sqlite:///{tmp_path / 'index.db'}"
    store = Store(database.open_database(url))
    index_image(store, image("sha256:i1", ["sha256:l0"]), [[e("/usr/bin/kubectl")]])
    store.engine.dispose()
    database.downgrade(url, "0006_name_layer_type_index")
    before = sqlite3.connect(tmp_path / "index.db").execute("SELECT * FROM entries").fetchall()

    process = paused("rename_table", tmp_path / "paused", "--db", url, "db", "upgrade")
    process.send_signal(how)
    process.communicate(timeout=30)
    engine = database.create(url)
    assert "entries_new" not in inspect(engine).get_table_names()
    engine.dispose()

    result = run("--db", url, "db", "upgrade")
    assert (result.exit_code, result.stdout) == (
        0,
        f"upgraded 0006_name_layer_type_index -> {database.head_revision()}\n",
    )
    connection = sqlite3.connect(tmp_path / "index.db")
    assert connection.execute("SELECT * FROM entries").fetchall() == before
    assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_a_first_index_killed_while_making_the_schema_is_made_by_the_next(
    registry: RegistryServer, tmp_path: Path, run: Run
) -> None:
    # Half the tables were made (each CREATE committed alone), no revision stamped: the file
    # was refused for ever as "not a layerindex database".
    registry.push("team/first", "1", SMALL)
    ref = f"{registry.host}/team/first:1"
    db = tmp_path / "index.db"
    process = paused("head_statements", tmp_path / "paused", "--db", str(db), "index", ref)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert sqlite3.connect(db).execute("SELECT name FROM sqlite_master").fetchall() == []

    result = run("--db", str(db), "index", ref)
    assert result.exit_code == 0, result.output
    assert "entries: 2" in result.stdout


def test_db_may_be_a_sqlite_files_path(
    registry: RegistryServer, home: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.push("team/path", "1", SMALL)
    ref = f"{registry.host}/team/path:1"
    work = home / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert run("--db", "index.db", "index", ref).exit_code == 0
    assert (work / "index.db").is_file()
    found = run("--db", "~/work/index.db", "find", "/bin/tool")
    assert (found.exit_code, found.stdout.splitlines()[1].split()[0]) == (0, ref)
    monkeypatch.setenv("LAYERINDEX_DB", "index.db")
    assert run("images").stdout.splitlines()[1].startswith(ref)


READ_COMMANDS = {
    "ls": ["ls", "{ref}"],
    "images": ["images"],
    "runs": ["runs"],
    "tags": ["tags", "{repo}"],
    "layers": ["layers", "{ref}"],
    "inspect": ["inspect", "{ref}"],
    "diff": ["diff", "{ref}", "{ref}"],
    "get": ["get", "{ref}", "/etc/tool.conf"],
    "find": ["find", "/bin/tool"],
}


def read_command(name: str, ref: str) -> list[str]:
    repo = ref.rpartition(":")[0]
    return [arg.format(ref=ref, repo=repo) for arg in READ_COMMANDS[name]]


@pytest.mark.parametrize("command", READ_COMMANDS)
def test_read_commands_never_make_a_database(home: Path, run: Run, command: str) -> None:
    typo = home / "typo" / "index.db"
    result = run("--db", f"sqlite:///{typo}", *read_command(command, "registry.test/team/app:1"))
    assert (result.exit_code, result.stdout, result.stderr) == (
        2,
        "",
        f"Error: there is no index at {typo}; index an image first (layerindex index REF) "
        "or give the database with --db or LAYERINDEX_DB\n",
    )
    assert not typo.parent.exists()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory others may read (pytest's tmp_path is its owner's alone); the # in its
    name ends a SQLite URI unless escaped."""
    path = Path(tempfile.mkdtemp(prefix="layerindex-shared-#"))
    path.chmod(0o755)
    yield path
    path.chmod(0o755)
    shutil.rmtree(path)


def as_reader(args: list[str]) -> list[str]:
    """``args`` run by a user who may not write what they do not own. Tests run as root, whom
    permissions do not bind: root without CAP_DAC_OVERRIDE (and its kin) is bound by them."""
    if os.geteuid() != 0:
        return args
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", *args]


@pytest.mark.parametrize("command", READ_COMMANDS)
def test_every_read_command_reads_a_shared_index_it_cannot_write(
    registry: RegistryServer, run: Run, shared_dir: Path, command: str
) -> None:
    registry.push("team/shared", "1", SMALL)
    ref = f"{registry.host}/team/shared:1"
    db = shared_dir / "index.db"
    (shared_dir / "images.txt").write_text(f"{ref}\n")
    assert run("--db", str(db), "crawl", "--images", str(shared_dir / "images.txt")).exit_code == 0
    db.chmod(0o444)
    shared_dir.chmod(0o555)
    files, content, mtime = sorted(shared_dir.iterdir()), db.read_bytes(), db.stat().st_mtime_ns
    url = f"sqlite:///{db}"
    args = [sys.executable, "-m", "layerindex", "--db", url, *read_command(command, ref)]
    done = subprocess.run(as_reader(args), capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert b"Error" not in done.stderr
    assert done.stdout or command == "diff"  # an image and itself: no differences
    assert (sorted(shared_dir.iterdir()), db.read_bytes(), db.stat().st_mtime_ns) == (
        files,
        content,
        mtime,
    )


@pytest.mark.parametrize("command", READ_COMMANDS)
def test_every_read_command_on_sqlite_imports_neither_sqlalchemy_nor_alembic(
    registry: RegistryServer, run: Run, home: Path, command: str
) -> None:
    # The read commands go through index.database.Reader (stdlib sqlite3): ls on a big index
    # starts as fast as find.
    registry.push("team/fast", "1", SMALL)
    ref = f"{registry.host}/team/fast:1"
    url = f"sqlite:///{home / 'index.db'}"
    assert run("--db", url, "index", ref).exit_code == 0
    args = [sys.executable, "-X", "importtime", "-m", "layerindex", "--db", url]
    done = subprocess.run(
        [*args, *read_command(command, ref)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # -X importtime writes a line per imported module: "import time: self | cumulative | name".
    imported = {line.rpartition("|")[2].strip() for line in done.stderr.splitlines()}
    assert "layerindex.index.database" in imported
    assert not {m for m in imported if m.split(".")[0] in ("sqlalchemy", "alembic")}


BAD_DB = [
    (
        "postgresql+psycopg://alice:s3cret@127.0.0.1:abc/db",
        "--db 'postgresql+psycopg://alice:***@127.0.0.1:abc/db' is not a database URL: give "
        "sqlite:///PATH, postgresql+psycopg://USER@HOST[:PORT]/NAME or a SQLite file's path",
    ),
    (
        "postgresql+psycopg://alice:s3cret@[::1/db",
        "--db 'postgresql+psycopg://alice:***@[::1/db' is not a database URL: give "
        "sqlite:///PATH, postgresql+psycopg://USER@HOST[:PORT]/NAME or a SQLite file's path",
    ),
    (
        "alice:s3cret@db.example/index",
        "--db 'alice:***@db.example/index' is a database URL without its scheme: give "
        "postgresql+psycopg://… (or a SQLite file's path)",
    ),
    (
        "postgresql+psycopg://alice:s3cret@127.0.0.1:99999/db",
        "cannot open database postgresql+psycopg://alice:***@127.0.0.1:99999/db: connection "
        'is bad: invalid port number: "99999"',
    ),
]


@pytest.mark.parametrize(("db", "said"), BAD_DB)
def test_bad_db_values_are_messages_without_the_password(
    run: Run, db: str, said: str, tmp_path: Path
) -> None:
    for args in (["images"], ["db", "upgrade"], ["crawl", "--images", str(tmp_path / "l.txt")]):
        (tmp_path / "l.txt").write_text("alpine\n")
        result = run("--db", db, *args)
        assert (result.exit_code, result.stdout, result.stderr) == (2, "", f"Error: {said}\n")


def test_find_shows_no_password_from_the_drivers_error(run: Run) -> None:
    # libpq quotes a URL it cannot parse whole.
    result = run("--db", "postgresql+psycopg://alice:s3cret@[::1/db", "find", "/x")
    assert (result.exit_code, result.stderr) == (
        2,
        "Error: cannot open database postgresql+psycopg://alice:***@[::1/db: end of string "
        'reached when looking for matching "]" in IPv6 host address in URI: '
        '"postgresql://alice:***@[::1/db"\n',
    )


@pytest.mark.parametrize(
    ("where", "said"),
    [("file", "a file of that name is there"), ("file/sub", "Not a directory")],
)
def test_an_uncreatable_database_directory_is_a_message(
    run: Run, tmp_path: Path, where: str, said: str
) -> None:
    (tmp_path / "file").write_text("not a directory")
    result = run("--db", str(tmp_path / where / "index.db"), "index", "registry.test/x:1")
    assert (result.exit_code, result.stderr) == (
        2,
        f"Error: cannot make the directory {tmp_path / where} for the database: {said}; "
        "give another --db\n",
    )


def test_the_drivers_errors_are_the_error_trees_database_errors(tmp_path: Path) -> None:
    # What the index package raises for a failing database is its own DatabaseError, not the
    # driver's or SQLAlchemy's (the CLI recognises it without looking into sys.modules); a
    # broken unique constraint is a DuplicateRow; neither is a LayerIndexError, which a crawl
    # would record as one layer's failure and go on.
    url = f"sqlite:///{tmp_path / 'index.db'}"
    engine = database.open_database(url)
    insert = "INSERT INTO repositories (registry, name) VALUES ('docker.io', 'library/x')"
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(insert)
        with pytest.raises(DuplicateRow) as duplicate, engine.begin() as connection:
            connection.exec_driver_sql(insert)
        assert duplicate.value.said.startswith("UNIQUE constraint failed: repositories.")
        with sqlite3.connect(tmp_path / "index.db") as raw:
            raw.execute("DROP TABLE runs")
        with pytest.raises(DatabaseError) as failed, engine.connect() as connection:
            connection.exec_driver_sql("SELECT * FROM runs")
        assert type(failed.value) is DatabaseError
        assert str(failed.value) == "the database failed: no such table: runs"
        assert not isinstance(failed.value, LayerIndexError)
    finally:
        engine.dispose()


def test_a_database_failure_of_a_read_command_says_nothing_of_layers(
    run: Run, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'index.db'}"
    database.open_database(url).dispose()
    with sqlite3.connect(tmp_path / "index.db") as connection:
        connection.execute("DROP TABLE runs")
    result = run("--db", url, "runs")
    assert (result.exit_code, result.stderr) == (
        2,
        "Error: the database failed: no such table: runs: run the command again once the "
        "database works\n",
    )
