"""Scheduled crawls: image lists, incremental re-crawls, runs, back-off, locks, workers, crashes."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from faults import FaultProxy, interrupt_when_stalled
from images import make_image, make_layer
from registry_server import RegistryServer
from sqlalchemy import create_engine, text

from layerindex.cli.main import cli
from layerindex.crawl.crawler import backoff, worker_name
from layerindex.crawl.imagelist import parse_line, version_key
from layerindex.errors import UsageError
from layerindex.index.database import open_database
from layerindex.index.store import Writer

ONE = make_image([make_layer({"/bin/one": b"1"}), make_layer({"/etc/one.conf": b"one"}, "zstd")])
TWO = make_image([make_layer({"/bin/two": b"22"})])


@pytest.fixture
def env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The clean user environment, with LAYERINDEX_DB set as a crawl's cron job would."""
    monkeypatch.setenv("LAYERINDEX_DB", f"sqlite:///{home / 'index.db'}")
    return home


def crawl(env: Path, *lines: str, extra: tuple[str, ...] = ()) -> Result:
    image_list = env / "images.txt"
    image_list.write_text("# test list\n\n" + "\n".join(lines) + "\n")
    return CliRunner().invoke(
        cli, ["crawl", "--images", str(image_list), *extra], catch_exceptions=False
    )


def runs(env: Path) -> list[dict[str, object]]:
    result = CliRunner().invoke(cli, ["runs", "--json"], catch_exceptions=False)
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


# --- image lists ---------------------------------------------------------------------------


def test_list_lines() -> None:
    assert parse_line("  # a comment") is None
    assert parse_line("") is None
    entry = parse_line("alpine:3.20  # pinned")
    assert entry is not None and str(entry.reference) == "docker.io/library/alpine:3.20"
    assert not entry.expands
    filtered = parse_line(r"bitnami/kubectl:/^1\.3[0-9]\./ --tags 2")
    assert filtered is not None and filtered.newest == 2
    assert filtered.tag_pattern is not None
    assert [filtered.tag_pattern.search(t) for t in ("1.31.2", "1.29.0", "11.3.0")] == [
        True,
        False,
        False,
    ]
    assert filtered.reference.repository == "bitnami/kubectl"


def test_bad_list_lines_say_where() -> None:
    with pytest.raises(UsageError, match=r"list\.txt:3: tag regex /\(/ is not a valid regular"):
        parse_line("app:/(/", "list.txt:3")
    with pytest.raises(UsageError, match=r"list\.txt:4: invalid reference"):
        parse_line("App:1", "list.txt:4")


def test_newest_tags_sort_by_version() -> None:
    assert sorted(["1.10", "1.9", "1.2", "1.10.1"], key=version_key) == [
        "1.2",
        "1.9",
        "1.10",
        "1.10.1",
    ]


def test_version_sort_is_exact_and_bounded_for_huge_numbers() -> None:
    # int() of more than 4300 digits raises ValueError; the key compares digit strings.
    huge, huger = "9" * 5000, "1" + "0" * 5000
    tags = [huger, "1.10", huge, "0010", "9", "1.9", "²", "1.10.1"]
    assert sorted(tags, key=version_key) == ["1.9", "1.10", "1.10.1", "9", "0010", huge, huger, "²"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"alpine:3.20\ncaf\xe9:1\n",
            "Error: image list {path}:2 is not UTF-8 text (byte 15); save it as UTF-8 text, "
            "one image reference a line\n",
        ),
        (
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00",
            "Error: image list {path}:1 is not UTF-8 text (byte 1); save it as UTF-8 text, "
            "one image reference a line\n",
        ),
        (
            b"alpine\n\nbusy\x00box\n",
            "Error: image list {path}:3 holds a NUL byte: it is not a text file (byte 12); save "
            "it as UTF-8 text, one image reference a line\n",
        ),
        (
            b"# tools\nalpine:/a{99999999999}/\n",
            "Error: {path}:2: tag regex /a{{99999999999}}/: the repetition {{99999999999}} counts "
            "past 1000, the most RE2 matches; use a smaller count or +\n",
        ),
        (
            b"alpine --tags " + b"9" * 5000 + b"\n",
            "Error: {path}:1: --tags needs a count from 1 to 100000, not a 5000-digit number\n",
        ),
    ],
    ids=["latin-1", "gzip", "nul", "regex-overflow", "huge-count"],
)
def test_an_unreadable_image_list_is_an_error_naming_file_and_line(
    env: Path, content: bytes, message: str
) -> None:
    image_list = env / "images.txt"
    image_list.write_bytes(content)
    result = CliRunner().invoke(cli, ["crawl", "--images", str(image_list)])
    assert (result.exit_code, result.stdout, result.stderr) == (
        2,
        "",
        message.format(path=image_list),
    )
    assert not (env / "index.db").exists()  # refused before the database was opened


def test_backoff_grows_after_the_second_failure() -> None:
    assert [backoff(n) for n in (0, 1, 2, 3, 4)] == [
        dt.timedelta(0),
        dt.timedelta(0),
        dt.timedelta(minutes=1),
        dt.timedelta(minutes=2),
        dt.timedelta(minutes=4),
    ]
    assert backoff(40) == dt.timedelta(hours=6)


# --- crawls against the real registry ------------------------------------------------------


def test_rerun_with_nothing_changed_costs_one_head_per_tag_and_no_blob_bytes(
    registry: RegistryServer, fault_proxy: FaultProxy, env: Path
) -> None:
    registry.push("team/one", "1", ONE)
    registry.push("team/two", "1", TWO)
    lines = (f"{fault_proxy.host}/team/one:1", f"{fault_proxy.host}/team/two:1")
    first = crawl(env, *lines)
    assert first.exit_code == 0, first.output
    assert first.stderr.splitlines()[-1].startswith("run 1 ok in ") and first.stderr.splitlines()[
        -1
    ].endswith(
        "2 images (0 unchanged, 0 failed), layers 3 indexed, 0 known, 0 skipped, 0 failed, "
        f"{sum(len(layer.blob) for layer in (*ONE.layers, *TWO.layers))} B downloaded"
    )
    fault_proxy.requests.clear()
    second = crawl(env, *lines)
    assert second.exit_code == 0, second.output
    # One ping of the registry per run, then one HEAD per tag: no GET, no blob.
    assert sorted((r.method, r.path) for r in fault_proxy.requests) == [
        ("GET", "/v2/"),
        ("HEAD", "/v2/team/one/manifests/1"),
        ("HEAD", "/v2/team/two/manifests/1"),
    ]
    assert f"{fault_proxy.host}/team/one:1  {ONE.digest}  linux/amd64  unchanged  entries: 2" in (
        second.stderr
    )
    recorded = runs(env)
    assert [
        (r["id"], r["status"], r["images"], r["images_unchanged"], r["bytes"]) for r in recorded
    ] == [
        (2, "ok", 2, 2, 0),
        (1, "ok", 2, 0, sum(len(layer.blob) for layer in (*ONE.layers, *TWO.layers))),
    ]


def test_a_moved_tag_is_indexed_and_its_history_kept(registry: RegistryServer, env: Path) -> None:
    registry.push("team/moving", "stable", ONE)
    assert crawl(env, f"{registry.host}/team/moving:stable").exit_code == 0
    registry.push("team/moving", "stable", TWO)
    result = crawl(env, f"{registry.host}/team/moving:stable")
    assert "layers: 1 indexed, 0 known" in result.stderr
    history = CliRunner().invoke(cli, ["tags", f"{registry.host}/team/moving:stable", "--json"])
    rows = json.loads(history.stdout)
    assert [(r["tag"], r["digest"]) for r in rows] == [
        ("stable", ONE.digest),
        ("stable", TWO.digest),
    ]
    assert all(r["first_seen"] <= r["last_seen"] for r in rows)
    assert rows[0]["last_seen"] <= rows[1]["first_seen"]


def test_tag_filters_expand_through_the_tag_list(registry: RegistryServer, env: Path) -> None:
    for tag in ("1.2", "1.9", "1.10", "2.0", "latest"):
        registry.push("team/versions", tag, TWO)
    result = crawl(env, rf"{registry.host}/team/versions:/^1\./ --tags 2")
    assert result.exit_code == 0, result.output
    indexed = sorted(line.split()[0] for line in result.stderr.splitlines() if "entries:" in line)
    assert indexed == [f"{registry.host}/team/versions:1.10", f"{registry.host}/team/versions:1.9"]


def test_a_5000_digit_tag_in_a_tag_list_does_not_stop_the_crawl(
    registry: RegistryServer, fault_proxy: FaultProxy, env: Path
) -> None:
    # The registry refuses tags over 128 characters; a hostile one lists whatever it likes.
    for tag in ("1", "2"):
        registry.push("team/versions", tag, TWO)
    registry.push("team/one", "1", ONE)
    huge = "9" * 5000
    fault_proxy.respond(
        "/v2/team/versions/tags/list",
        body=json.dumps({"name": "team/versions", "tags": ["1", huge, "2"]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    result = crawl(
        env, f"{fault_proxy.host}/team/versions --tags 2", f"{fault_proxy.host}/team/one:1"
    )
    # The tag list drops the huge tag with a warning (not a tag name), and the version sort
    # is bounded besides (test_version_sort_is_exact_and_bounded_for_huge_numbers): the run
    # goes on to its end, with the list's other images.
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(
        f"Warning: {fault_proxy.host}/team/versions: skipped 1 tag(s) the registry listed that "
        "are not valid tag names: "
    )
    indexed = sorted(line.split()[0] for line in result.stderr.splitlines() if "sha256:" in line)
    assert indexed == [
        f"{fault_proxy.host}/team/{name}" for name in ("one:1", "versions:1", "versions:2")
    ]
    (run,) = runs(env)
    assert (run["status"], run["images"]) == ("ok", 3)


def test_failures_are_recorded_and_retried_by_the_next_run(
    registry: RegistryServer, fault_proxy: FaultProxy, env: Path
) -> None:
    registry.push("team/one", "1", ONE)
    ref = f"{fault_proxy.host}/team/one:1"
    fault_proxy.corrupt(f"/blobs/{ONE.layers[1].digest}", times=1)
    failed = crawl(env, ref, f"{fault_proxy.host}/team/missing:1")
    assert failed.exit_code == 1
    (run,) = runs(env)
    assert (run["status"], run["images"], run["images_failed"], run["layers_failed"]) == (
        "failed",
        2,
        2,
        1,
    )
    errors = run["errors"]
    assert isinstance(errors, list) and len(errors) == 2
    assert {e["image"] for e in errors} == {ref, f"{fault_proxy.host}/team/missing:1"}
    retried = crawl(env, ref)
    assert retried.exit_code == 0, retried.output
    assert "layers: 1 indexed, 1 known, 0 skipped, 0 failed" in retried.stderr


def test_a_run_whose_images_wait_out_their_back_off_says_so(
    registry: RegistryServer, env: Path
) -> None:
    missing = f"{registry.host}/team/missing:1"
    for _ in range(2):  # the second failure in a row starts a back-off of a minute
        assert crawl(env, missing).exit_code == 1
    deferred = crawl(env, missing)
    assert deferred.exit_code == 0, deferred.output
    engine = create_engine(os.environ["LAYERINDEX_DB"])
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT next_attempt FROM targets")).scalar_one()
    engine.dispose()
    until = dt.datetime.fromisoformat(stored)
    assert re.fullmatch(
        r"run 3 ok in \d+\.\ds: 0 images \(0 unchanged, 0 failed\), 1 in back-off until "
        + re.escape(f"{until:%Y-%m-%d %H:%M:%S}Z")
        + r" at the earliest, layers 0 indexed, 0 known, 0 skipped, 0 failed, 0 B downloaded\n",
        deferred.stderr,
    ), deferred.stderr
    run = runs(env)[0]
    assert (run["status"], run["images"], run["images_deferred"], run["deferred_until"]) == (
        "ok",
        0,
        1,
        f"{until:%Y-%m-%dT%H:%M:%S}+00:00",
    )


def test_a_list_line_whose_tags_cannot_be_listed_is_an_error_line_not_an_image(
    registry: RegistryServer, env: Path
) -> None:
    registry.push("team/two", "1", TWO)
    line = f"{registry.host}/team/missing --tags 2"
    result = crawl(env, line, f"{registry.host}/team/two:1")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    (error,) = [e for e in lines if e.startswith("Error: ")]
    assert error.startswith(f"Error: {line}: cannot list tags: ")
    assert error.endswith(f"repository {registry.host}/team/missing not found")
    assert lines[-1].endswith(
        ": 1 images (0 unchanged, 0 failed), 1 list lines failed, layers 1 indexed, 0 known, "
        f"0 skipped, 0 failed, {len(TWO.layers[0].blob)} B downloaded"
    )
    (run,) = runs(env)
    assert (run["status"], run["images"], run["images_failed"], run["lists_failed"]) == (
        "failed",
        1,
        0,
        1,
    )


def test_second_crawl_on_the_same_sqlite_database_is_refused(
    registry: RegistryServer, env: Path
) -> None:
    registry.push("team/one", "1", ONE)
    engine = open_database(os.environ["LAYERINDEX_DB"])
    with Writer(engine).crawl_lock(worker_name()):
        result = crawl(env, f"{registry.host}/team/one:1")
    engine.dispose()
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: another crawl is running on ")
    assert f"pid {os.getpid()}" in result.stderr


def test_every_runs_again_until_max_runs(registry: RegistryServer, env: Path) -> None:
    registry.push("team/one", "1", ONE)
    result = crawl(
        env, f"{registry.host}/team/one:1", extra=("--every", "0.05s", "--max-runs", "2")
    )
    assert result.exit_code == 0, result.output
    assert [(r["status"], r["images_unchanged"]) for r in runs(env)] == [("ok", 1), ("ok", 0)]


# --- processes: crashes and workers ----------------------------------------------------------

MANY = make_layer({f"/data/{i:05d}.txt": b"x" * 900 for i in range(8000)}, "none")
BIG = make_image([make_layer({"/bin/base": b"base"}), MANY])


def crawl_process(
    db: str, image_list: Path, *extra: str, tmpdir: Path | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "layerindex",
            "--db",
            db,
            "crawl",
            "--images",
            str(image_list),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "DOCKER_CONFIG": str(image_list.parent / "docker"),
            "TMPDIR": str(tmpdir or tempfile.gettempdir()),
        },
    )


def finish(process: subprocess.Popen[str]) -> None:
    out, err = process.communicate(timeout=90)
    assert process.returncode == 0, (out, err)


def snapshot(db: str) -> dict[str, list[tuple[object, ...]]]:
    """What the index holds, without ids or timestamps: equal for equal contents."""
    engine = create_engine(db)
    queries = {
        "layers": "SELECT l.digest, d.diff_id, d.entry_count, l.last_error FROM layers l "
        "LEFT JOIN diffs d ON d.id = l.diff_ref ORDER BY l.digest",
        "entries": "SELECT d.diff_id, di.path, n.name, e.type, e.size FROM entries e "
        "JOIN diffs d ON d.id = e.diff_ref JOIN dirs di ON di.id = e.dir_id "
        "JOIN names n ON n.id = e.name_id ORDER BY 1, 2, 3",
        "images": "SELECT digest, platform, indexed_at IS NOT NULL FROM images ORDER BY digest",
        "dirs": "SELECT path FROM dirs ORDER BY path",
    }
    with engine.connect() as connection:
        out = {k: [tuple(r) for r in connection.execute(text(q))] for k, q in queries.items()}
    engine.dispose()
    return out


def wait_for(condition: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_kill_9_mid_layer_then_rerun_equals_a_clean_run(
    registry: RegistryServer, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    registry.push("team/big", "1", BIG)
    image_list = tmp_path / "images.txt"
    image_list.write_text(f"{fault_proxy.host}/team/big:1\n")
    crashed = f"sqlite:///{tmp_path / 'crashed.db'}"
    clean = f"sqlite:///{tmp_path / 'clean.db'}"
    open_database(crashed).dispose()
    # Most of the big layer arrives (thousands of rows written, uncommitted), then it stalls.
    fault_proxy.stall(f"/blobs/{MANY.digest}", after=len(MANY.blob) * 9 // 10, seconds=60)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    process = crawl_process(crashed, image_list, tmpdir=tmpdir)
    wait_for(lambda: fault_proxy.seen(f"/blobs/{MANY.digest}") or process.poll() is not None)
    assert process.poll() is None, process.communicate()
    time.sleep(1.0)  # let it walk what it received
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=10)
    fault_proxy.reset()
    # The walker process's spool has no name on disk: nothing is left behind in $TMPDIR.
    wait_for(lambda: not any(tmpdir.iterdir()), timeout=30)
    half = snapshot(crashed)
    assert [row[0] for row in half["layers"] if row[1] is not None] == [BIG.layers[0].digest]
    assert half["entries"] == [r for r in half["entries"] if r[0] == BIG.layers[0].diff_id]
    finish(crawl_process(crashed, image_list))
    finish(crawl_process(clean, image_list))
    assert snapshot(crashed) == snapshot(clean)
    # The killed run does not stay "running": the next run on this machine saw its process gone.
    engine = create_engine(crashed)
    with engine.connect() as connection:
        statuses = connection.execute(
            text("SELECT status, finished_at IS NOT NULL FROM runs ORDER BY id")
        ).all()
    engine.dispose()
    assert [tuple(row) for row in statuses] == [("killed", True), ("ok", True)]
    assert len(snapshot(clean)["entries"]) == 8001


@pytest.mark.parametrize(
    ("count", "made_first"),
    [(2, True), (4, False)],
    ids=["2-workers", "4-workers-on-an-empty-database"],
)
def test_workers_on_postgresql_fetch_each_layer_once(
    registry: RegistryServer,
    fault_proxy: FaultProxy,
    postgres_url: str,
    tmp_path: Path,
    count: int,
    made_first: bool,
) -> None:
    # On an empty database each worker makes the schema it found missing: one at a time,
    # under the schema lock (not: duplicate key … "pg_type_typname_nsp_index", exit 2).
    images = [
        make_image([BIG.layers[0], make_layer({f"/srv/{n}/{i}": b"y" * 100 for i in range(300)})])
        for n in range(6)
    ]
    for n, image in enumerate(images):
        registry.push(f"team/w{n}", "1", image)
    image_list = tmp_path / "images.txt"
    image_list.write_text("".join(f"{fault_proxy.host}/team/w{n}:1\n" for n in range(6)))
    if made_first:
        open_database(postgres_url).dispose()
    workers = [crawl_process(postgres_url, image_list, "--worker", "-j", "2") for _ in range(count)]
    for worker in workers:
        finish(worker)
    layer_digests = {layer.digest for image in images for layer in image.layers}
    gets = {d: len(fault_proxy.seen(f"/blobs/{d}", "GET")) for d in layer_digests}
    assert gets == dict.fromkeys(layer_digests, 1)
    state = snapshot(postgres_url)
    assert len(state["layers"]) == 7 and all(row[1] is not None for row in state["layers"])
    assert len(state["entries"]) == 1 + 6 * 300
    assert all(row[2] for row in state["images"])


def test_a_killed_workers_lease_expires_and_another_worker_finishes(
    registry: RegistryServer, fault_proxy: FaultProxy, postgres_url: str, tmp_path: Path
) -> None:
    registry.push("team/big", "1", BIG)
    image_list = tmp_path / "images.txt"
    image_list.write_text(f"{fault_proxy.host}/team/big:1\n")
    open_database(postgres_url).dispose()
    fault_proxy.stall(f"/blobs/{MANY.digest}", after=len(MANY.blob) // 2, seconds=60)
    first = crawl_process(postgres_url, image_list, "--worker", "--lease", "2s")
    wait_for(lambda: fault_proxy.seen(f"/blobs/{MANY.digest}") or first.poll() is not None)
    assert first.poll() is None, first.communicate()
    time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)
    fault_proxy.reset()
    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        owner = connection.execute(
            text("SELECT lease_owner FROM layers WHERE digest = :d"), {"d": MANY.digest}
        ).scalar_one()
    engine.dispose()
    assert f":{first.pid}:" in owner  # host:pid:thread of the worker that died
    time.sleep(2.5)  # the dead worker's leases run out
    finish(crawl_process(postgres_url, image_list, "--worker", "--lease", "2s"))
    state = snapshot(postgres_url)
    assert len(state["entries"]) == 8001
    assert all(row[2] for row in state["images"])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_while_a_download_stalls_ends_the_crawl_at_once(
    registry: RegistryServer, fault_proxy: FaultProxy, env: Path, sig: signal.Signals
) -> None:
    # Images are indexed in threads: Ctrl-C must not wait for the stalled read (60 s), nor
    # go on with the images still queued.
    others = [make_image([make_layer({f"/srv/{n}": b"n" * n})]) for n in range(1, 7)]
    registry.push("team/big", "1", BIG)
    for n, image in enumerate(others):
        registry.push(f"team/other{n}", "1", image)
    (env / "images.txt").write_text(
        f"{fault_proxy.host}/team/big:1\n"
        + "".join(f"{fault_proxy.host}/team/other{n}:1\n" for n in range(len(others)))
    )
    fault_proxy.stall(f"/blobs/{MANY.digest}", after=len(MANY.blob) // 2, seconds=60)
    tmpdir = env / "tmp"
    tmpdir.mkdir()
    done = interrupt_when_stalled(
        fault_proxy,
        MANY.digest,
        ["crawl", "-j", "1", "--images", str(env / "images.txt")],
        sig,
        env={**os.environ, "TMPDIR": str(tmpdir)},
    )
    # SIGTERM (systemd, a timeout, a pod's end) leaves as cleanly as Ctrl-C.
    said = "interrupted" if sig == signal.SIGINT else "terminated"
    assert done.returncode == 128 + sig
    assert done.stderr.endswith(f"Error: {said}; nothing of an unfinished layer was kept\n")
    assert not any(tmpdir.iterdir())
    assert [(r["status"]) for r in runs(env)] == ["interrupted"]
    state = snapshot(f"sqlite:///{env / 'index.db'}")
    # The stalled layer kept nothing and was not counted a failure (no back-off for it).
    assert (MANY.digest, None, None, None) in state["layers"]
    assert len(state["images"]) < 1 + len(others)  # what was queued did not run
    engine = create_engine(f"sqlite:///{env / 'index.db'}")
    with engine.connect() as connection:
        failures = connection.execute(text("SELECT sum(failures) FROM targets")).scalar()
    engine.dispose()
    assert not failures
    # The next run indexes everything.
    fault_proxy.reset()
    again = CliRunner().invoke(
        cli, ["crawl", "--images", str(env / "images.txt")], catch_exceptions=False
    )
    assert again.exit_code == 0, again.output
    assert [r["status"] for r in runs(env)] == ["ok", "interrupted"]
    assert len(snapshot(f"sqlite:///{env / 'index.db'}")["images"]) == 1 + len(others)
