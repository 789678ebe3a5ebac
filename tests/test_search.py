"""find with patterns and filters: images pushed to a real registry, queried through the CLI;
the trigram indexes on SQLite and PostgreSQL, fed through the store."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from images import directory, file, make_image, make_index, make_layer, sha256, symlink
from registry_server import RegistryServer
from sqlalchemy import func, select, text
from test_index import APP, KUBECTL, Run, db_path, table
from test_store import e, image, index_image

from layerindex.errors import UsageError
from layerindex.index.database import Reader
from layerindex.index.find import FindFilters
from layerindex.index.images import Finder
from layerindex.index.patterns import glob_regex, parse, regex_literal
from layerindex.index.schema import entries, names
from layerindex.index.store import Store
from layerindex.layer.entries import EntryType
from layerindex.regex import compile_regex

HELM = b"helm binary"
TOOLS = make_image(
    [
        make_layer(
            [
                directory("usr"),
                directory("usr/local"),
                directory("usr/local/bin"),
                file("usr/local/bin/kubeadm", b"kubeadm", mode=0o755),
                file("usr/local/bin/helm", HELM, mode=0o755),
                directory("usr/share"),
                directory("usr/share/kube-docs"),
                file("usr/share/kube-docs/README", b"read me"),
                symlink("usr/local/bin/h", "helm"),
            ]
        )
    ]
)


@pytest.fixture
def indexed(registry: RegistryServer, run: Run) -> tuple[str, str]:
    registry.push("team/app", "1.0", APP)
    registry.push("team/tools", "2", TOOLS)
    app, tools = f"{registry.host}/team/app:1.0", f"{registry.host}/team/tools:2"
    assert run("index", app).exit_code == 0
    assert run("index", "--hash-files", tools).exit_code == 0
    return app, tools


def found(run: Run, *args: str) -> list[tuple[str, str, int]]:
    result = run("find", *args, "--json")
    assert result.exit_code in (0, 1), result.output
    return [
        (r["image"].rsplit("/", 2)[-1], r["path"], r["layer_index"])
        for r in json.loads(result.stdout or "[]")
    ]


def test_globs(indexed: tuple[str, str], run: Run) -> None:
    assert found(run, "/usr/*/kube*") == [
        ("app:1.0", "/usr/bin/kubectl", 1),
        ("tools:2", "/usr/share/kube-docs", 0),
    ]
    # ** crosses directories; * stays in one.
    assert found(run, "/usr/**/kube*") == [
        ("app:1.0", "/usr/bin/kubectl", 1),
        ("tools:2", "/usr/local/bin/kubeadm", 0),
        ("tools:2", "/usr/share/kube-docs", 0),
    ]
    assert found(run, "/usr/local/bin/?elm") == [("tools:2", "/usr/local/bin/helm", 0)]
    assert found(run, "/usr/local/bin/[gh]*") == [
        ("tools:2", "/usr/local/bin/h", 0),
        ("tools:2", "/usr/local/bin/helm", 0),
    ]
    assert found(run, "/usr/local/bin/[!h]*") == [("tools:2", "/usr/local/bin/kubeadm", 0)]
    assert found(run, "/usr/share/**") == [
        ("tools:2", "/usr/share/kube-docs", 0),
        ("tools:2", "/usr/share/kube-docs/README", 0),
    ]
    assert found(run, "**/README") == [("tools:2", "/usr/share/kube-docs/README", 0)]
    # Deleted by a whiteout or an opaque directory: not in the final view.
    assert found(run, "/opt/*") == [("app:1.0", "/opt/new.txt", 2)]
    assert found(run, "/opt/*", "--all-layers") == [
        ("app:1.0", "/opt/new.txt", 2),
        ("app:1.0", "/opt/old.txt", 0),
    ]
    # [*] is a literal star, as in a shell.
    assert found(run, "/usr/bin/[*]") == []
    # A class matches within a segment, never "/", even in a range across it.
    assert found(run, "/usr/local[%-~]bin/helm") == []
    assert found(run, "/usr/loca[%-~]/bin/helm") == [("tools:2", "/usr/local/bin/helm", 0)]
    assert found(run, "/usr/local[/]bin/helm") == []
    # [!-~]: neither "-" nor "~" (not a range from "/" to "~").
    assert found(run, "/usr/loca[!-~]/bin/helm") == [("tools:2", "/usr/local/bin/helm", 0)]


def test_name_contains_regex(indexed: tuple[str, str], run: Run) -> None:
    assert found(run, "--name", "kubectl") == [("app:1.0", "/usr/bin/kubectl", 1)]
    assert found(run, "--name", "kubectl", "--all-layers") == [
        ("app:1.0", "/usr/bin/kubectl", 0),
        ("app:1.0", "/usr/bin/kubectl", 1),
    ]
    assert found(run, "--contains", "ctl") == [("app:1.0", "/usr/bin/kubectl", 1)]
    # A substring in a directory finds everything under it.
    assert found(run, "--contains", "kube-do") == [
        ("tools:2", "/usr/share/kube-docs", 0),
        ("tools:2", "/usr/share/kube-docs/README", 0),
    ]
    # Across the directory/name join.
    assert found(run, "--contains", "bin/k") == [
        ("app:1.0", "/usr/bin/k", 2),
        ("app:1.0", "/usr/bin/kubectl", 1),
        ("tools:2", "/usr/local/bin/kubeadm", 0),
    ]
    # Shorter than a trigram: a scan of the distinct names, same answer shape.
    assert found(run, "--contains", "lm") == [("tools:2", "/usr/local/bin/helm", 0)]
    assert found(run, "--regex", r"kube(ctl|adm)$") == [
        ("app:1.0", "/usr/bin/kubectl", 1),
        ("tools:2", "/usr/local/bin/kubeadm", 0),
    ]
    assert found(run, "--regex", r"^/usr/bin/.$") == [("app:1.0", "/usr/bin/k", 2)]


def test_filters(indexed: tuple[str, str], run: Run, registry: RegistryServer) -> None:
    app, tools = indexed
    assert found(run, "/usr/**", "--type", "symlink") == [
        ("app:1.0", "/usr/bin/k", 2),
        ("tools:2", "/usr/local/bin/h", 0),
    ]
    assert found(run, "/usr/**", "--type", "file", "--min-size", "10") == [
        ("app:1.0", "/usr/bin/kubectl", 1),
        ("tools:2", "/usr/local/bin/helm", 0),
    ]
    assert found(run, "/usr/**", "--type", "file", "--max-size", "7") == [
        ("tools:2", "/usr/local/bin/kubeadm", 0),
        ("tools:2", "/usr/share/kube-docs/README", 0),
    ]
    assert found(run, "/usr/**", "--repo", "team/app", "--type", "file") == [
        ("app:1.0", "/usr/bin/kubectl", 1)
    ]
    assert found(run, "/usr/**", "--repo", f"{registry.host}/team/tools", "--limit", "1") == [
        ("tools:2", "/usr/local", 0)
    ]
    assert found(run, "--contains", "kube", "--image", tools, "--image", app, "--type", "file") == [
        ("app:1.0", "/usr/bin/kubectl", 1),
        ("tools:2", "/usr/local/bin/kubeadm", 0),
        ("tools:2", "/usr/share/kube-docs/README", 0),
    ]


def test_platform_filter(registry: RegistryServer, run: Run) -> None:
    amd = make_image([make_layer({"/bin/tool": b"amd64"})])
    arm = make_image([make_layer({"/bin/tool": b"arm64!"})], platform="linux/arm64/v8")
    registry.push("team/multi", "2", make_index([amd, arm]))
    assert run("index", "--platform", "all", f"{registry.host}/team/multi:2").exit_code == 0
    rows = json.loads(run("find", "/bin/tool", "--platform", "linux/arm64", "--json").stdout)
    assert [(r["platform"], r["size"]) for r in rows] == [("linux/arm64/v8", 6)]
    none = run("find", "/bin/tool", "--platform", "linux/s390x")
    assert (none.exit_code, none.stdout) == (1, "")
    # index's grammar in find too: "all", and a comma-separated list
    for spec in ("all", "linux/s390x,linux/arm64/v8,linux/amd64"):
        rows = json.loads(run("find", "/bin/tool", "--platform", spec, "--json").stdout)
        assert sorted((r["platform"], r["size"]) for r in rows) == [
            ("linux/amd64", 5),
            ("linux/arm64/v8", 6),
        ]


def test_find_by_file_digest(indexed: tuple[str, str], run: Run) -> None:
    _, tools = indexed
    result = run("find", "--digest", sha256(HELM))
    assert (result.exit_code, result.stdout) == (
        0,
        table(
            ["IMAGE", "PLATFORM", "LAYER", "DIGEST", "TYPE", "SIZE", "MODE", "PATH"],
            [
                tools,
                "linux/amd64",
                "0",
                TOOLS.layers[0].digest[:19],
                "file",
                f"{len(HELM)} B",
                "0755",
                "/usr/local/bin/helm",
            ],
        ),
    )
    rows = json.loads(run("find", "--digest", sha256(HELM), "--json").stdout)
    assert rows[0]["sha256"] == sha256(HELM)
    # Not hashed at index time: app's kubectl has no digest to find.
    missing = run("find", "--digest", sha256(KUBECTL))
    assert (missing.exit_code, missing.stderr) == (
        1,
        f"--digest {sha256(KUBECTL)}: not found in any indexed image\n",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/usr/[abc"], "Error: glob '/usr/[abc': '[' at 5 opens a character class never closed\n"),
        (["--regex", "kube("], "Error: --regex 'kube(' is not a valid regular expression: "),
        (
            ["--regex", "a{99999999999}"],  # an OverflowError traceback from Python's re
            "Error: --regex 'a{99999999999}': the repetition {99999999999} counts past 1000, "
            "the most RE2 matches; use a smaller count or +\n",
        ),
        (
            ["--regex", "kube(?=ctl)"],
            "Error: --regex 'kube(?=ctl)' is not a valid regular expression: invalid perl "
            "operator: (?= (RE2 syntax: no backreferences or look-around, so that matching "
            "stays linear in the name)\n",
        ),
        (["/usr/[z-a]"], "Error: glob class [z-a]: a range runs backwards (z-a); write a-z\n"),
        (["--digest", "sha256:abc"], "Error: --digest 'sha256:abc' is not a digest like "),
        (["--name", "a/b"], "Error: --name takes a basename without '/', not 'a/b'\n"),
        (["/a", "--name", "b"], "Error: give one of PATH, --name, --contains, --regex or --digest"),
        ([], "Error: give one of PATH, --name, --contains, --regex or --digest"),
        (["/a", "--type", "socket"], "Error: Invalid value for '--type'"),
    ],
)
def test_bad_patterns_exit_2_without_a_traceback(
    home: Path, run: Run, args: list[str], message: str
) -> None:
    result = run("find", *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_patterns_are_data_not_sql(indexed: tuple[str, str], home: Path, run: Run) -> None:
    before = dump(db_path(home))
    for args in (
        ["--contains", "'; DROP TABLE entries; --"],
        ["--name", "x' OR '1'='1"],
        ["/usr/bin/%"],
        ["--contains", "_"],
        ["--regex", ".*'; DELETE FROM names; --"],
    ):
        result = run("find", *args)
        assert (result.exit_code, result.stdout) == (1, ""), args
    assert dump(db_path(home)) == before


# Names an image author picks against patterns that backtrack in Python's re: `(a+)+$` tries
# 2^40 ways to fail on the first, the glob's nine "**a" runs C(48, 9) on the second.
CRAFTED = make_image(
    [
        make_layer(
            {
                "/d/" + "a" * 40 + "b": b"",
                "/d/" + "a" * 48: b"",
                "/d/ab": b"",
                "/d/aaz": b"",
            }
        )
    ]
)
HOSTILE_PATTERNS = [
    (["--regex", "(a+)+$"], ["/d/" + "a" * 48]),
    (["--regex", "^/d/(a|aa)+z$"], ["/d/aaz"]),
    (["/d/" + "**a" * 9 + "**z"], []),
    (["/d/**a**z"], ["/d/aaz"]),
]


def test_hostile_patterns_over_crafted_names_finish(
    registry: RegistryServer, run: Run, home: Path
) -> None:
    """Matching is linear in the name (RE2): each find ends at once. The old backtracking
    matcher took hours on these; the subprocess's timeout only keeps a regression from
    hanging the suite."""
    registry.push("evil/crafted", "1", CRAFTED)
    assert run("index", f"{registry.host}/evil/crafted:1").exit_code == 0
    for args, paths in HOSTILE_PATTERNS:
        result = subprocess.run(
            [sys.executable, "-m", "layerindex", "find", *args, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == (0 if paths else 1), result.stderr
        assert [row["path"] for row in json.loads(result.stdout or "[]")] == paths, args


def test_compile_regex_refuses_with_usage_errors() -> None:
    """The one way a user's regex is compiled (find, and an image list's tag regexes)."""
    for pattern, message in (
        ("a{" + "9" * 5000 + "}", "counts past 1000"),  # int() of it would raise ValueError
        ("a{2,1001}", "the repetition {2,1001} counts past 1000"),
        ("(a)\\1", "invalid escape sequence: \\1"),
        ("x\udcff", "it holds bytes that are not UTF-8"),  # argv that is not UTF-8
        ("(?:a{1000}){1000}", "invalid repetition size: {1000}"),  # too big a program
    ):
        with pytest.raises(UsageError, match=re.escape(message)):
            compile_regex(pattern, "--regex x")
    # A registry's tag may hold a lone surrogate (JSON "\ud800"): it just does not match.
    assert not compile_regex("^v1$", "x").search("v1\ud800")
    assert compile_regex("é+", "x").fullmatch("éé")


def dump(path: Path) -> list[str]:
    """The database's contents as SQL (the file's bytes change when SQLite checkpoints its WAL,
    which any reader may do; the contents must not)."""
    connection = sqlite3.connect(path)
    try:
        return list(connection.iterdump())
    finally:
        connection.close()


def test_translations() -> None:
    assert glob_regex("/usr/*/bin/kube*") == r"/usr/[^/]*/bin/kube[^/]*"
    assert glob_regex("/a/**/b") == r"/a/(?:.*/)?b"
    assert regex_literal(r"^/usr/(s)?bin/kube(ctl|adm)$") == "bin/kube"
    assert regex_literal(r"(?i)kubectl") == ""
    assert parse("glob", "usr/*").text == "/usr/*"


# --- the trigram indexes, on SQLite and PostgreSQL ----------------------------------------------


def test_search_indexes_follow_the_interned_names(store: Store, finder: Finder) -> None:
    index_image(
        store,
        image("sha256:i1", ["sha256:l0"]),
        [[e("/usr/lib/python3/site-packages/kubernetes/client.py"), e("/usr/bin/kubectl")]],
    )
    index_image(store, image("sha256:i2", ["sha256:l1"], "app:2"), [[e("/opt/kubeadm")]])

    def paths(kind: str, value: str) -> list[tuple[str, str]]:
        rows = finder.find(parse(kind, value), FindFilters())  # type: ignore[arg-type]
        return [(r["image"], r["path"]) for r in rows]

    assert paths("contains", "kube") == [
        ("app:1", "/usr/bin/kubectl"),
        ("app:1", "/usr/lib/python3/site-packages/kubernetes/client.py"),
        ("app:2", "/opt/kubeadm"),
    ]
    assert paths("contains", "packages/kub") == [
        ("app:1", "/usr/lib/python3/site-packages/kubernetes/client.py")
    ]
    assert paths("glob", "/usr/**/*.py") == [
        ("app:1", "/usr/lib/python3/site-packages/kubernetes/client.py")
    ]
    assert paths("regex", "adm$") == [("app:2", "/opt/kubeadm")]
    assert paths("contains", "KUBE") == []  # paths are case-sensitive


def test_sqlite_substring_search_uses_the_trigram_index(tmp_path: Path) -> None:
    from layerindex.index.database import open_database

    engine = open_database(f"sqlite:///{tmp_path / 'index.db'}")
    store = Store(engine)
    layer = [e(f"/usr/share/doc/pkg{i}/file{i}.txt") for i in range(20000)]
    index_image(store, image("sha256:i1", ["sha256:l0"]), [[*layer, e("/usr/bin/kubectl")]])
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM names_fts")).scalar_one() == (
            connection.execute(select(func.count()).select_from(names)).scalar_one()
        )
        plan = connection.execute(
            text("EXPLAIN QUERY PLAN SELECT rowid FROM names_fts WHERE name GLOB '*ubec*'")
        ).all()
        assert "VIRTUAL TABLE INDEX" in plan[0][3]
        # The search indexes hold distinct dirs and names, a few dozen bytes a path.
        search_bytes = connection.execute(
            text("SELECT sum(pgsize) FROM dbstat WHERE name LIKE '%_fts%'")
        ).scalar_one()
        paths = connection.execute(select(func.count()).select_from(entries)).scalar_one()
    assert search_bytes / paths <= 110
    with Reader.from_engine(engine) as reader:
        rows = Finder(reader).find(parse("contains", "ubect"), FindFilters())
    assert [r["path"] for r in rows] == ["/usr/bin/kubectl"]
    engine.dispose()


def test_find_streams_in_order_and_stops_at_the_limit(store: Store, finder: Finder) -> None:
    # Seven images: find reads them in growing batches and stops once the limit is reached;
    # every limit gives the first rows of the whole answer, fates and all.
    package = "/usr/lib/python3/dist-packages/pkg"
    for n in range(7):
        upper = (
            [e(f"{package}/__init__.py", size=5), e("/opt/x", EntryType.WHITEOUT)]
            if n % 2
            else [e("/etc/conf", size=9)]
        )
        base = [e(f"{package}/__init__.py"), e(f"{package}/core.py"), e("/opt/x/__init__.py")]
        layers = [f"sha256:a{n}", f"sha256:b{n}"]
        index_image(store, image(f"sha256:i{n}", layers, f"app:{n}"), [base, upper])

    def rows(kind: str, value: str, **filters: Any) -> list[tuple[str, str, int, str]]:
        found = finder.find(parse(kind, value), FindFilters(**filters))  # type: ignore[arg-type]
        return [(r["image"], r["path"], r["layer_index"], r["state"]) for r in found]

    assert rows("glob", "/usr/lib/python3/dist-packages/*/__init__.py", limit=3) == [
        ("app:0", f"{package}/__init__.py", 0, "present"),
        ("app:1", f"{package}/__init__.py", 1, "present"),
        ("app:2", f"{package}/__init__.py", 0, "present"),
    ]
    assert rows("name", "__init__.py", all_layers=True, limit=4) == [
        ("app:0", "/opt/x/__init__.py", 0, "present"),
        ("app:0", f"{package}/__init__.py", 0, "present"),
        ("app:1", "/opt/x/__init__.py", 0, "deleted"),
        ("app:1", f"{package}/__init__.py", 0, "overwritten"),
    ]
    for kind, value in [
        ("name", "__init__.py"),
        ("glob", "/usr/lib/python3/dist-packages/*/__init__.py"),
        ("glob", "/opt/**"),
        ("contains", "core"),
        ("exact", "/etc/conf"),
    ]:
        for all_layers in (False, True):
            everything = rows(kind, value, all_layers=all_layers)
            assert everything
            for limit in range(1, len(everything) + 2):
                assert (
                    rows(kind, value, all_layers=all_layers, limit=limit) == (everything[:limit])
                ), (kind, value, all_layers, limit)


def test_directories_read_in_path_order_give_the_same_rows(store: Store, finder: Finder) -> None:
    # --contains reads matching directories a few at a time in path order (with a limit);
    # paths of one dir sort among another's ("/srv/pkg1-x/a" < "/srv/pkg1/a" < "/srv/pkg10/a").
    layer = []
    for i in range(100):
        for folder in (f"/srv/pkg{i}", f"/srv/pkg{i}-x", f"/srv/pkg{i}/sub"):
            layer += [e(folder, EntryType.DIR), e(f"{folder}/a"), e(f"{folder}/zz")]
    index_image(store, image("sha256:i1", ["sha256:l0", "sha256:l1"]), [layer, [e("/srv/pkg7")]])
    index_image(store, image("sha256:i2", ["sha256:l2"], "app:2"), [layer[::2]])
    for all_layers in (False, True):
        everything = finder.find(parse("contains", "pkg"), FindFilters(all_layers=all_layers))
        assert [r["path"] for r in everything[:4]] == [
            "/srv/pkg0",
            "/srv/pkg0-x",
            "/srv/pkg0-x/a",
            "/srv/pkg0-x/zz",
        ]
        for limit in (1, 63, 64, 65, 200, 500, 900, 1000, len(everything)):
            limited = finder.find(
                parse("contains", "pkg"), FindFilters(all_layers=all_layers, limit=limit)
            )
            assert limited == everything[:limit], (all_layers, limit)


def test_an_opaque_root_deletes_every_lower_path(store: Store, finder: Finder) -> None:
    # "/.wh..wh..opq" makes the root opaque: nothing of the layers below stays, even at "/x".
    index_image(
        store,
        image("sha256:i1", ["sha256:l0", "sha256:l1"]),
        [[e("/x"), e("/usr/bin/x")], [e("/", EntryType.OPAQUE, 0), e("/y")]],
    )
    both = [("/usr/bin/x", "deleted", 1), ("/x", "deleted", 1)]
    for pattern, expected in [
        (parse("exact", "/x"), both[1:]),
        (parse("name", "x"), both),
        (parse("contains", "x"), both),
    ]:
        for limit in (None, 1):
            rows = finder.find(pattern, FindFilters(all_layers=True, limit=limit))
            assert [(r["path"], r["state"], r["changed_by_layer"]) for r in rows] == (
                expected[:limit]
            )
            assert finder.find(pattern, FindFilters(limit=limit)) == []
