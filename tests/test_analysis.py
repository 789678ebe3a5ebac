"""Looking at an image: inspect, layers with wasted bytes (dive's efficiency), ls --layer / -l /
--tree, and diff; images pushed to a real registry, indexed and read back through the CLI."""

from __future__ import annotations

import json

import pytest
from images import (
    CREATED,
    History,
    Image,
    directory,
    file,
    hardlink,
    make_image,
    make_index,
    make_layer,
    opaque,
    sha256,
    symlink,
    whiteout,
)
from registry_server import RegistryServer
from test_index import Run, table

from layerindex.analysis import InefficientFile, efficiency
from layerindex.layer.entries import EntryType

F, D, W, OPQ, L, HL = (
    EntryType.FILE,
    EntryType.DIR,
    EntryType.WHITEOUT,
    EntryType.OPAQUE,
    EntryType.SYMLINK,
    EntryType.HARDLINK,
)

# --- wasted bytes and dive's efficiency, layer by layer ----------------------------------------
# Each path's versions are the sizes layers wrote there, a deletion of what was there a version
# of 0 B (dive/filetree/efficiency.go counts a whited-out file so); the score is the sum of
# each path's smallest over the sum of all. A layer wastes the bytes of its files the final
# filesystem hides.


def test_a_path_written_once_wastes_nothing() -> None:
    result = efficiency([[("/a", D, 0), ("/a/f", F, 100)], [("/b", F, 50)]])
    assert (result.efficiency, result.wasted_bytes, result.wasted_by_layer) == (1.0, 0, (0, 0))


def test_no_file_bytes_is_fully_efficient() -> None:
    assert efficiency([]).efficiency == 1.0
    assert efficiency([[("/d", D, 0), ("/l", L, 7)]]).efficiency == 1.0  # a link has no bytes


def test_overwritten_file_wastes_what_it_hides() -> None:
    # /f: 100 then 30 → versions 100, 30: score 30 / 130; layer 0's 100 bytes are hidden.
    result = efficiency([[("/f", F, 100)], [("/f", F, 30)]])
    assert (result.wasted_bytes, result.wasted_by_layer) == (100, (100, 0))
    assert result.efficiency == 30 / 130


def test_a_file_that_grows_wastes_only_the_old_bytes() -> None:
    # /f: 100 then 150 (grew by 50): versions 100, 150 → score 100 / 250. Layer 0 wastes its
    # 100 bytes, not the 150 of dive's total - smallest (more than the layer holds).
    result = efficiency([[("/f", F, 100)], [("/f", F, 150)]])
    assert (result.wasted_bytes, result.wasted_by_layer) == (100, (100, 0))
    assert result.efficiency == 100 / 250


def test_each_layer_is_charged_its_own_hidden_bytes() -> None:
    # 10, 100, 40: layers 0 and 1 lose their 10 and 100 bytes; score 10 / 150.
    result = efficiency([[("/f", F, 10)], [("/f", F, 100)], [("/f", F, 40)]])
    assert (result.wasted_bytes, result.wasted_by_layer) == (110, (10, 100, 0))
    assert result.efficiency == 10 / 150


def test_a_whiteout_is_a_version_of_0_bytes() -> None:
    # /f: 100, then whited out (0 B, as dive counts a deleted file); /g: 100. Versions: /f 100
    # and 0, /g 100 → score (0 + 100) / (100 + 100); layer 0's /f (100 B) is wasted.
    result = efficiency([[("/f", F, 100), ("/g", F, 100)], [("/f", W, 0)]])
    assert (result.wasted_bytes, result.wasted_by_layer) == (100, (100, 0))
    assert result.efficiency == 100 / 200


def test_deleting_a_directory_deletes_each_path_under_it() -> None:
    # /d/a (60 B) and /d/sub/b (40 B) are deleted: each has versions 60, 0 and 40, 0. /d
    # itself holds no bytes; a file of 5 B in its place is a version of 5. dive counts a
    # directory's whiteout as one version of all its bytes at /d, and misses opaque markers:
    # a score of 1.0 for each.
    base = [("/d", D, 0), ("/d/a", F, 60), ("/d/sub/b", F, 40)]  # /d/sub left implicit
    for deletion, score in (
        ([("/d", W, 0)], 0 / 100),
        ([("/d", D, 0), ("/d", OPQ, 0)], 0 / 100),
        ([("/d", F, 5)], 5 / 105),
    ):
        result = efficiency([base, deletion])
        assert result.wasted_bytes == 100, deletion
        assert result.wasted_by_layer == (100, 0), deletion
        assert result.efficiency == score, deletion


def test_a_path_deleted_and_written_again() -> None:
    # 100, deleted (0), then 30: versions 100, 0, 30 → score 0 / 130; layer 0's 100 wasted.
    result = efficiency([[("/f", F, 100)], [("/f", W, 0)], [("/f", F, 30)]])
    assert (result.wasted_bytes, result.wasted_by_layer) == (100, (100, 0, 0))
    assert result.efficiency == 0 / 130


def test_a_hard_link_keeps_its_deleted_targets_bytes() -> None:
    # /real (40 B) and its hard link /alias share their data; deleting /real leaves the 40
    # bytes at /alias: nothing wasted. The score is dive's (a link a 0 B version): /real 40, 0
    # and /alias 0 → 0 / 40. Delete /alias too and the 40 bytes are wasted.
    base = [("/alias", HL, 0), ("/real", F, 40)]
    links = [(0, "/alias", "/real")]
    kept = efficiency([base, [("/real", W, 0)]], top=5, hard_links=links)
    assert (kept.wasted_by_layer, kept.efficiency, kept.inefficient_files) == ((0, 0), 0.0, ())
    both = efficiency([base, [("/real", W, 0), ("/alias", W, 0)]], top=5, hard_links=links)
    assert both.wasted_by_layer == (40, 0)
    assert both.inefficient_files == (InefficientFile("/real", 1, 40),)


def test_the_most_wasteful_paths_first() -> None:
    # Hidden: /a 5 (twice over: layers 0 and 1), /b 7, /c 7, /d 1; /e is never hidden.
    layers = [
        [("/a", F, 2), ("/b", F, 7), ("/c", F, 7), ("/d", F, 1), ("/e", F, 9)],
        [("/a", F, 3), ("/b", W, 0), ("/c", F, 1), ("/d", F, 1)],
        [("/a", F, 4)],
    ]
    found = efficiency(layers, top=3).inefficient_files
    assert found == (
        InefficientFile("/b", 1, 7),  # of equals, the first in path order
        InefficientFile("/c", 2, 7),
        InefficientFile("/a", 3, 5),
    )
    assert efficiency(layers).inefficient_files == ()


# --- the CLI ------------------------------------------------------------------------------------

BASE = make_layer(
    [
        directory("app"),
        file("app/big.bin", b"x" * 1000),
        file("app/conf", b"v1" * 5, mode=0o600),
        directory("tmp"),
        file("tmp/cache", b"c" * 300),
        symlink("app/current", "big.bin"),
    ]
)
FIX = make_layer([file("app/conf", b"v2" * 10), whiteout("tmp/cache"), file("app/new", b"n")])
IMAGE = make_image(
    [BASE, FIX],
    history=[History("ADD rootfs /"), History("ENV MODE=prod", empty_layer=True), "RUN fix"],
    labels={"org.opencontainers.image.title": "app", "team": "core"},
    env=["PATH=/usr/bin", "MODE=prod"],
    entrypoint=["/app/run"],
    cmd=["serve", "--port", "80"],
)
# By hand: the versions are /app/big.bin 1000; /app/conf 10 then 20; /tmp/cache 300 then
# deleted (0); /app/new 1; /app/current a link (0). Smallest: 1000 + 10 + 0 + 1 = 1011, totals
# 1000 + 30 + 300 + 1 = 1331. Wasted: layer 0's /app/conf (10) and /tmp/cache (300) = 310;
# file bytes 1310 + 21 = 1331, 21 of them above the base: 310 / 21 of them wasted.
EFFICIENCY = 1011 / 1331


def pushed(registry: RegistryServer, run: Run, name: str, image: Image) -> str:
    """The reference of ``image`` pushed as ``name`` and indexed."""
    registry.push(*name.split(":"), image)
    ref = f"{registry.host}/{name}"
    assert run("index", ref).exit_code == 0
    return ref


@pytest.fixture
def app(registry: RegistryServer, run: Run) -> str:
    return pushed(registry, run, "team/app:1.0", IMAGE)


def test_layers_json(app: str, run: Run) -> None:
    result = run("layers", app, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "image": app,
        "manifest_digest": IMAGE.digest,
        "platform": "linux/amd64",
        "layers": [
            {
                "image": app,
                "platform": "linux/amd64",
                "layer_index": 0,
                "layer_digest": BASE.digest,
                "media_type": BASE.media_type,
                "size": len(BASE.blob),
                "uncompressed_size": len(BASE.tar),
                "entries": 6,
                "added_bytes": 1310,
                "wasted_bytes": 310,
                "created_by": "ADD rootfs /",
                "status": "indexed",
            },
            {
                "image": app,
                "platform": "linux/amd64",
                "layer_index": 1,
                "layer_digest": FIX.digest,
                "media_type": FIX.media_type,
                "size": len(FIX.blob),
                "uncompressed_size": len(FIX.tar),
                "entries": 3,
                "added_bytes": 21,
                "wasted_bytes": 0,
                "created_by": "RUN fix",
                "status": "indexed",
            },
        ],
        "files_bytes": 1331,
        "tar_bytes": len(BASE.tar) + len(FIX.tar),
        "compressed_bytes": len(BASE.blob) + len(FIX.blob),
        "wasted_bytes": 310,
        "user_wasted_ratio": 310 / 21,
        "efficiency": EFFICIENCY,
        "inefficient_files": [
            {"path": "/tmp/cache", "copies": 1, "wasted_bytes": 300},
            {"path": "/app/conf", "copies": 2, "wasted_bytes": 10},
        ],
    }


def test_layers_help_says_what_json_prints(run: Run) -> None:
    text = " ".join(run("layers", "--help").stdout.split())
    assert "--json One JSON object: the layers, the image's sizes, waste, efficiency." in text
    assert "One JSON array" not in text


def test_layers_table_and_summary(app: str, run: Run) -> None:
    result = run("layers", app)
    assert result.exit_code == 0
    assert result.stdout == table(
        ["PLATFORM", "LAYER", "DIGEST", "MEDIA TYPE", "SIZE", "UNCOMPRESSED", "ENTRIES", "ADDS",
         "WASTED", "STATUS", "CREATED BY"],
        ["linux/amd64", "0", BASE.digest[:19], BASE.media_type, f"{len(BASE.blob)} B", "10.2 kB",
         "6", "1.3 kB", "310 B", "indexed", "ADD rootfs /"],
        ["linux/amd64", "1", FIX.digest[:19], FIX.media_type, f"{len(FIX.blob)} B", "10.2 kB",
         "3", "21 B", "0 B", "indexed", "RUN fix"],
    )  # fmt: skip
    assert len(BASE.tar) == len(FIX.tar) == 10240
    compressed = len(BASE.blob) + len(FIX.blob)
    assert result.stderr == (
        f"Image size: files 1.3 kB, tar 20.5 kB, compressed {compressed} B\n"
        "Wasted: 310 B (1476 % of the bytes added above the base)  Efficiency: 75 %\n"
        "Inefficient files:\n"
        "  COPIES     WASTED  PATH\n"
        "       1      300 B  /tmp/cache\n"
        "       2       10 B  /app/conf\n"
    )
    assert run("layers", app, "--files", "0").stderr.endswith("Efficiency: 75 %\n")


# Every kind of change the issue names (a file that grows, a deleted directory, a directory
# replaced by a file, a chown, a same-size content change, an opaque directory), in one image.
CHANGES = make_image(
    [
        make_layer(
            [
                file("bin/tool", b"t" * 100),
                directory("old"),
                file("old/a", b"a" * 60),
                file("old/sub/b", b"b" * 40),  # /old/sub left implicit
                directory("repl"),
                file("repl/x", b"x" * 70),
                file("etc/owned", b"o" * 30),
                file("etc/same", b"aaaaaaaa"),
                directory("opq"),
                file("opq/lower", b"l" * 50),
                file("keep", b"k" * 10),
            ]
        ),
        make_layer(
            [
                file("bin/tool", b"T" * 150),  # grew by 50
                whiteout("old"),
                file("repl", b"r" * 5),  # a file where a directory was
                file("etc/owned", b"o" * 30, uid=1000, gid=1000),  # chown: the bytes again
                file("etc/same", b"bbbbbbbb"),
                directory("opq"),
                opaque("opq"),
                file("opq/upper", b"u" * 20),
            ]
        ),
    ]
)
# By hand, each path's versions (a deletion is 0) and the bytes of layer 0 hidden at the end:
#   /bin/tool 100, 150 (100 hidden)      /old/a 60, 0 (60)       /old/sub/b 40, 0 (40)
#   /repl 5 (the directory held none)    /repl/x 70, 0 (70)      /etc/owned 30, 30 (30)
#   /etc/same 8, 8 (8)                   /opq/lower 50, 0 (50)   /opq/upper 20   /keep 10
# Smallest: 100 + 0 + 0 + 5 + 0 + 30 + 8 + 0 + 20 + 10 = 173. Totals: 250 + 60 + 40 + 5 + 70
# + 60 + 16 + 50 + 20 + 10 = 581. Layer 0 adds 100 + 60 + 40 + 70 + 30 + 8 + 50 + 10 = 368 and
# wastes all but /keep: 358; layer 1 adds 150 + 5 + 30 + 8 + 20 = 213 and wastes nothing.
# dive would score the whiteout of /old as a version of 100 at /old (no waste: 1.0 there) and
# see no deletion under /opq.
CHANGES_EFFICIENCY = 173 / 581


@pytest.fixture
def changes(registry: RegistryServer, run: Run) -> str:
    return pushed(registry, run, "team/changes:1", CHANGES)


def test_layers_waste_for_every_kind_of_change(changes: str, run: Run) -> None:
    result = run("layers", changes, "--json", "--files", "3")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(r["added_bytes"], r["wasted_bytes"]) for r in data["layers"]] == [(368, 358), (213, 0)]
    assert (data["files_bytes"], data["wasted_bytes"], data["efficiency"]) == (
        581,
        358,
        CHANGES_EFFICIENCY,
    )
    assert data["user_wasted_ratio"] == 358 / 213
    # /opq's total is what the final filesystem holds under it: /opq/upper's 20 bytes, not the
    # 50 of /opq/lower hidden by the opaque marker; /repl is a file now.
    tree = run("ls", changes, "--tree", "-l").stdout
    assert "├── [0755 0/0 20 B L1]  opq\n" in tree
    assert tree.endswith("└── [0644 0/0 5 B L1]  repl\n\n1 directory, 6 files\n")
    assert data["inefficient_files"] == [
        {"path": "/bin/tool", "copies": 2, "wasted_bytes": 100},
        {"path": "/repl/x", "copies": 1, "wasted_bytes": 70},
        {"path": "/old/a", "copies": 1, "wasted_bytes": 60},
    ]


def test_fail_on_gates_as_dive_ci(changes: str, run: Run) -> None:
    # Efficiency 173 / 581 = 0.2978; 358 bytes wasted; 358 / 213 = 1.6808 of the user bytes.
    passing = run(
        "layers",
        changes,
        "--files",
        "0",
        "--fail-on",
        "lowest-efficiency=0.29,highest-wasted-bytes=358,highest-user-wasted-percent=1.69",
    )
    assert passing.exit_code == 0, passing.output
    assert passing.stderr.endswith(
        "PASS: lowest-efficiency\nPASS: highest-wasted-bytes\nPASS: highest-user-wasted-percent\n"
    )
    failing = run(
        "layers",
        changes,
        "--json",
        "--fail-on",
        "lowest-efficiency=0.3,highest-wasted-bytes=0.357kB,highest-user-wasted-percent=1.68",
    )
    assert failing.exit_code == 1
    assert json.loads(failing.stdout)["wasted_bytes"] == 358  # the report is written all the same
    assert failing.stderr == (
        "FAIL: lowest-efficiency: efficiency 0.2978 < 0.3\n"
        "FAIL: highest-wasted-bytes: 358 bytes wasted > 357\n"
        "FAIL: highest-user-wasted-percent: wasted / bytes added above the base 1.6808 > 1.68\n"
    )
    for bad in ("lowest-efficiency", "smallest-image=1", "highest-wasted-bytes=20 parsecs"):
        wrong = run("layers", changes, "--fail-on", bad)
        assert (wrong.exit_code, wrong.stdout) == (2, ""), bad
        assert wrong.stderr.startswith("Error: --fail-on: "), bad


def test_inspect(registry: RegistryServer, app: str, run: Run) -> None:
    registry.push("team/app", "latest", IMAGE)
    run("index", f"{registry.host}/team/app:latest")
    result = run("inspect", app)
    assert result.exit_code == 0
    assert result.stdout == (
        f"Name:         {registry.host}/team/app\n"
        f"Digest:       {IMAGE.digest}\n"
        "Tags here:    1.0, latest\n"
        f"Created:      {CREATED}\n"
        "Architecture: amd64\n"
        "OS:           linux\n"
        "Labels:\n"
        "  org.opencontainers.image.title=app\n"
        "  team=core\n"
        "Env:\n"
        "  PATH=/usr/bin\n"
        "  MODE=prod\n"
        'Entrypoint:   ["/app/run"]\n'
        'Cmd:          ["serve", "--port", "80"]\n'
        "Layers:\n"
        f"  0  {BASE.digest}  {len(BASE.blob)}  {BASE.media_type}\n"
        f"  1  {FIX.digest}  {len(FIX.blob)}  {FIX.media_type}\n"
        "History:\n"
        f"  0  {CREATED}  ADD rootfs /\n"
        f"  -  {CREATED}  ENV MODE=prod\n"
        f"  1  {CREATED}  RUN fix\n"
    )
    data = json.loads(run("inspect", app, "--json").stdout)
    assert data == {
        "name": f"{registry.host}/team/app",
        "reference": f"{registry.host}/team/app:latest",  # as last indexed
        "digest": IMAGE.digest,
        "index_digest": None,
        "media_type": IMAGE.manifest_media_type,
        "tags_here": ["1.0", "latest"],
        "created": CREATED,
        "architecture": "amd64",
        "os": "linux",
        "variant": None,
        "labels": {"org.opencontainers.image.title": "app", "team": "core"},
        "env": ["PATH=/usr/bin", "MODE=prod"],
        "entrypoint": ["/app/run"],
        "cmd": ["serve", "--port", "80"],
        "layers": [
            {"digest": BASE.digest, "media_type": BASE.media_type, "size": len(BASE.blob)},
            {"digest": FIX.digest, "media_type": FIX.media_type, "size": len(FIX.blob)},
        ],
        "history": [
            {"created": CREATED, "created_by": "ADD rootfs /", "empty_layer": False},
            {"created": CREATED, "created_by": "ENV MODE=prod", "empty_layer": True},
            {"created": CREATED, "created_by": "RUN fix", "empty_layer": False},
        ],
    }
    # The stored manifest and config, byte for byte.
    assert run("inspect", app, "--raw").stdout_bytes == IMAGE.manifest
    assert run("inspect", app, "--config").stdout_bytes == IMAGE.config
    # A tag moved elsewhere no longer names this image.
    other = make_image([make_layer({"/other": b"o"})])
    registry.push("team/app", "latest", other)
    run("index", f"{registry.host}/team/app:latest")
    assert json.loads(run("inspect", app, "--json").stdout)["tags_here"] == ["1.0"]
    assert json.loads(run("inspect", f"{registry.host}/team/app:latest", "--json").stdout)[
        "tags_here"
    ] == ["latest"]
    # The label says what the list is: the repository has both tags, one names this image.
    assert "Tags here:    1.0\n" in run("inspect", app).stdout


def test_multi_platform_defaults_to_linux_amd64(registry: RegistryServer, run: Run) -> None:
    amd = make_image([make_layer({"/bin/tool": b"amd64"})])
    arm = make_image([make_layer({"/bin/tool": b"arm64!"})], platform="linux/arm64/v8")
    index = make_index([amd, arm])
    registry.push("team/multi", "2", index)
    ref = f"{registry.host}/team/multi:2"
    assert run("index", "--platform", "all", ref).exit_code == 0
    # As index, skopeo and dive: linux/amd64 unless --platform says otherwise.
    data = json.loads(run("inspect", ref, "--json").stdout)
    assert (data["digest"], data["architecture"]) == (amd.digest, "amd64")
    assert json.loads(run("layers", ref, "--json").stdout)["platform"] == "linux/amd64"
    assert [r["size"] for r in json.loads(run("ls", ref, "--json").stdout)] == [5]
    # --platform matches as index's does: arm64 is arm64/v8.
    for platform in ("linux/arm64", "linux/arm64/v8", "linux/aarch64"):
        data = json.loads(run("inspect", ref, "--platform", platform, "--json").stdout)
        assert (data["digest"], data["index_digest"], data["variant"], data["tags_here"]) == (
            arm.digest,
            index.digest,
            "v8",
            ["2"],
        ), platform
    assert "Variant:      v8\n" in run("inspect", ref, "--platform", "linux/arm64").stdout
    for platform in ("linux/arm64", "linux/arm64/v8", "linux/aarch64"):  # find alike
        found = json.loads(run("find", "/bin/tool", "--platform", platform, "--json").stdout)
        assert [r["platform"] for r in found] == ["linux/arm64/v8"], platform
    diff = run("diff", ref, ref, "--platform", "linux/arm64")
    assert (diff.exit_code, diff.stdout) == (0, "")
    # Two platforms of one tag: /bin/tool is "amd64" (5 bytes) on one, "arm64!" (6) on the other.
    across = run("diff", ref, ref, "--platform", "linux/amd64", "--platform", "linux/arm64")
    assert (across.exit_code, across.stdout) == (
        0,
        table(["CHANGE", "PATH", "DETAILS"], ["changed", "/bin/tool", "size 5 -> 6"]),
    )
    thrice = run("diff", ref, ref, *["--platform", "linux/amd64"] * 3)
    assert thrice.exit_code == 2 and "give --platform once" in thrice.stderr
    # Without linux/amd64 among them, one must be picked.
    arm32 = make_image([make_layer({"/bin/tool": b"arm"})], platform="linux/arm/v7")
    arm64 = make_image([make_layer({"/bin/tool": b"arm64"})], platform="linux/arm64/v8")
    registry.push("team/multi", "3", make_index([arm64, arm32]))
    other = f"{registry.host}/team/multi:3"
    assert run("index", "--platform", "all", other).exit_code == 0
    ambiguous = run("inspect", other)
    assert (ambiguous.exit_code, ambiguous.stdout) == (2, "")
    assert ambiguous.stderr == (
        f"Error: {other} names 2 indexed images (linux/arm/v7, linux/arm64/v8); "
        "pick one with --platform\n"
    )
    missing = run("inspect", ref, "--platform", "linux/s390x")
    assert (missing.exit_code, missing.stderr) == (
        2,
        f"Error: {ref} has no indexed linux/s390x image; indexed: linux/amd64, linux/arm64/v8\n",
    )


def test_not_indexed_is_an_error(registry: RegistryServer, run: Run) -> None:
    ref = f"{registry.host}/team/never:1"
    assert run("db", "upgrade").exit_code == 0  # an index, without this image
    for command in ("inspect", "layers", "ls"):
        result = run(command, ref)
        assert (result.exit_code, result.stdout) == (2, "")
        assert result.stderr == f"Error: {ref} is not indexed; run: layerindex index {ref}\n"
    result = run("diff", ref, ref)
    assert (result.exit_code, result.stdout) == (2, "")


def test_ls_one_layer_long_and_tree(app: str, run: Run) -> None:
    result = run("ls", app, "--layer", "1")
    assert (result.exit_code, result.stdout) == (
        0,
        table(
            ["TYPE", "PATH", "TARGET"],
            ["file", "/app/conf", ""],
            ["file", "/app/new", ""],
            ["whiteout", "/tmp/cache", ""],
        ),
    )
    # By digest or a prefix of it, as tables print it.
    assert run("ls", app, "--layer", FIX.digest[:19]).stdout == result.stdout
    missing = run("ls", app, "--layer", "2")
    assert (missing.exit_code, missing.stderr) == (
        2,
        f"Error: {app} has 2 layers (0 to 1); there is no layer 2\n",
    )
    assert run("ls", app, "-l").stdout == table(
        ["TYPE", "MODE", "OWNER", "SIZE", "LAYER", "PATH", "TARGET"],
        ["dir", "0755", "0/0", "0 B", "0", "/app", ""],
        ["file", "0644", "0/0", "1.0 kB", "0", "/app/big.bin", ""],
        ["file", "0644", "0/0", "20 B", "1", "/app/conf", ""],
        ["symlink", "0777", "0/0", "0 B", "0", "/app/current", "big.bin"],
        ["file", "0644", "0/0", "1 B", "1", "/app/new", ""],
        ["dir", "0755", "0/0", "0 B", "0", "/tmp", ""],
    )
    assert run("ls", app, "--tree").stdout == (
        "/\n"
        "├── app\n"
        "│   ├── big.bin\n"
        "│   ├── conf\n"
        "│   ├── current -> big.bin\n"
        "│   └── new\n"
        "└── tmp\n"
        "\n"
        "2 directories, 4 files\n"
    )
    assert run("ls", app, "/app", "--tree", "-l", "--layer", "0").stdout == (
        "/app\n"
        "├── [0644 0/0 1.0 kB L0]  big.bin\n"
        "├── [0600 0/0 10 B L0]  conf\n"
        "└── [0777 0/0 0 B L0]  current -> big.bin\n"
        "\n"
        "0 directories, 3 files\n"
    )
    # A layer's own tree shows its whiteouts; directories it leaves implicit are drawn too.
    assert run("ls", FIX.digest, "--tree").stdout == (
        "/\n"
        "├── app\n"
        "│   ├── conf\n"
        "│   └── new\n"
        "└── tmp\n"
        "    └── cache (whiteout)\n"
        "\n"
        "0 directories, 2 files\n"
    )
    # -l: a directory's size is the total of the files under it: /app 1000 + 20 + 1 = 1021 B
    # (the link 0), /tmp none (its cache was deleted).
    assert run("ls", app, "--tree", "-l").stdout == (
        "/\n"
        "├── [0755 0/0 1.0 kB L0]  app\n"
        "│   ├── [0644 0/0 1.0 kB L0]  big.bin\n"
        "│   ├── [0644 0/0 20 B L1]  conf\n"
        "│   ├── [0777 0/0 0 B L0]  current -> big.bin\n"
        "│   └── [0644 0/0 1 B L1]  new\n"
        "└── [0755 0/0 0 B L0]  tmp\n"
        "\n"
        "2 directories, 4 files\n"
    )
    bad = run("ls", app, "--tree", "--json")
    assert bad.exit_code == 2 and "--tree draws text" in bad.stderr


def test_ls_and_find_apply_deletions_above_the_path(registry: RegistryServer, run: Run) -> None:
    image = make_image(
        [
            make_layer(
                [
                    directory("usr"),
                    directory("usr/lib"),
                    file("usr/lib/a", b"a"),
                    directory("lib"),
                    file("lib/x", b"x"),
                    file("top", b"t"),
                ]
            ),
            make_layer([whiteout("usr"), symlink("lib", "usr/lib")]),
        ]
    )
    ref = pushed(registry, run, "team/gone:1", image)
    # /usr went with its whiteout: nothing under it is left, whatever the prefix.
    for prefix in ("/usr/lib", "/usr/lib/a", "/no/such/path"):
        for args, nothing in (([], ""), (["--tree"], ""), (["--json"], "[]\n")):
            listed = run("ls", ref, prefix, *args)
            assert (listed.exit_code, listed.stdout) == (1, nothing), (prefix, args)
            assert listed.stderr == f"{prefix}: not found in {ref}\n"
    assert [r["path"] for r in json.loads(run("ls", ref, "--json").stdout)] == ["/lib", "/top"]
    # /lib/x went with its directory, replaced by a link: deleted, not overwritten.
    found = json.loads(run("find", "/lib/x", "--all-layers", "--json").stdout)
    assert [(r["state"], r["changed_by_layer"]) for r in found] == [("deleted", 1)]


def test_a_hard_link_is_its_targets_file(registry: RegistryServer, run: Run) -> None:
    perl = b"p" * 3800
    image = make_image(
        [
            make_layer(
                [
                    file("usr/bin/perl", perl, mode=0o755),
                    hardlink("usr/bin/perl5.36", "usr/bin/perl"),
                    file("lib/real", b"r" * 40),
                    hardlink("lib/alias", "lib/real"),
                ]
            ),
            make_layer([whiteout("lib/real")]),
        ]
    )
    ref = pushed(registry, run, "team/links:1", image)
    # A container sees a 3.8 kB file at /usr/bin/perl5.36, and 40 bytes at /lib/alias after
    # /lib/real is gone.
    assert run("ls", ref, "-l").stdout == table(
        ["TYPE", "MODE", "OWNER", "SIZE", "LAYER", "PATH", "TARGET"],
        ["file", "0644", "0/0", "40 B", "0", "/lib/alias", "/lib/real"],
        ["file", "0755", "0/0", "3.8 kB", "0", "/usr/bin/perl", ""],
        ["file", "0644", "0/0", "3.8 kB", "0", "/usr/bin/perl5.36", "/usr/bin/perl"],
    )
    assert run("ls", ref, "/usr/bin/perl5.36", "-l").stdout == table(
        ["TYPE", "MODE", "OWNER", "SIZE", "LAYER", "PATH", "TARGET"],
        ["file", "0644", "0/0", "3.8 kB", "0", "/usr/bin/perl5.36", "/usr/bin/perl"],
    )
    # Layer 0 holds 3800 + 40 bytes of files (a link's data is its target's, stored once);
    # the 40 of /lib/real are still at /lib/alias: nothing wasted. dive's score: /lib/real 40
    # then 0, perl 3800, the links 0 B each → 3800 / 3840.
    data = json.loads(run("layers", ref, "--json").stdout)
    assert [(r["added_bytes"], r["wasted_bytes"]) for r in data["layers"]] == [(3840, 0), (0, 0)]
    assert (data["wasted_bytes"], data["efficiency"]) == (0, 3800 / 3840)


def test_diff(registry: RegistryServer, run: Run) -> None:
    old = make_image(
        [
            make_layer(
                [
                    directory("app"),
                    file("app/bin", b"v1", mode=0o755),
                    file("app/conf", b"debug=1"),
                    file("app/same", b"same"),
                    symlink("app/current", "bin"),
                    file("app/gone", b"gone"),
                ]
            )
        ]
    )
    new = make_image(
        [
            make_layer(
                [
                    directory("app"),
                    file("app/bin", b"v2", mode=0o755),  # same size, other content
                    file("app/conf", b"debug=0\nlog=1", mode=0o600),
                    file("app/same", b"same"),
                    symlink("app/current", "bin.new"),
                    directory("app/gone"),
                    file("app/added", b"new"),
                ]
            )
        ]
    )
    registry.push("team/app", "1", old)
    registry.push("team/app", "2", new)
    one, two = f"{registry.host}/team/app:1", f"{registry.host}/team/app:2"
    assert run("index", "--hash-files", one, two).exit_code == 0
    result = run("diff", one, two)
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == table(
        ["CHANGE", "PATH", "DETAILS"],
        ["added", "/app/added", "file, 3 bytes"],
        ["changed", "/app/bin", "content"],
        ["changed", "/app/conf", "size 7 -> 13, mode 0644 -> 0600, content"],
        ["changed", "/app/current", "link target bin -> bin.new"],
        ["changed", "/app/gone", "type file -> dir, size 4 -> 0, mode 0644 -> 0755"],
    )
    back = json.loads(run("diff", two, one, "--json").stdout)
    assert [(r["change"], r["path"]) for r in back] == [
        ("removed", "/app/added"),
        ("changed", "/app/bin"),
        ("changed", "/app/conf"),
        ("changed", "/app/current"),
        ("changed", "/app/gone"),
    ]
    assert back[0] == {
        "change": "removed",
        "path": "/app/added",
        "details": "file, 3 bytes",
        "old_type": "file",
        "new_type": None,
        "old_size": 3,
        "new_size": None,
        "old_mode": 0o644,
        "new_mode": None,
        "old_uid": 0,
        "new_uid": None,
        "old_gid": 0,
        "new_gid": None,
        "old_link_target": None,
        "new_link_target": None,
        "old_sha256": sha256(b"new"),
        "new_sha256": None,
    }
    same = run("diff", one, one)
    assert (same.exit_code, same.stdout) == (0, "")


def test_a_path_of_1001_components_reads_like_any_other(registry: RegistryServer, run: Run) -> None:
    # 2,002 bytes: within PATH_MAX, so indexed; every reader walks its ancestors without
    # recursing on the depth (find ended in RecursionError for every image of the index).
    deep = "a/" * 1001 + "leaf"
    old = make_image([make_layer([file("top", b"1")])])
    new = make_image(
        [
            make_layer([file("top", b"1")]),
            make_layer(
                [*(directory("a/" * n) for n in range(1, 1002)), file(deep, b"deep"), whiteout("x")]
            ),
        ]
    )
    registry.push("team/deep", "1", old)
    registry.push("team/deep", "2", new)
    one, two = f"{registry.host}/team/deep:1", f"{registry.host}/team/deep:2"
    assert run("index", one, two).exit_code == 0
    leaf, deepest_dir = "/" + deep, "/" + deep.removesuffix("/leaf")
    for args, path in (
        (["--name", "leaf"], leaf),
        (["--contains", "lea"], leaf),
        (["--name", "a", "--all-layers"], deepest_dir),
        (["/a/**/leaf"], leaf),
        ([leaf], leaf),
    ):
        result = run("find", *args, "--json")
        assert (result.exit_code, result.stderr) == (0, ""), args
        assert path in [r["path"] for r in json.loads(result.stdout)], args
    listed = run("ls", two, "--json")
    assert listed.exit_code == 0
    assert [r["path"] for r in json.loads(listed.stdout)][-2:] == [leaf, "/top"]
    layers = run("layers", two, "--json")
    assert layers.exit_code == 0
    assert [r["added_bytes"] for r in json.loads(layers.stdout)["layers"]] == [1, 4]
    changes = run("diff", one, two, "--json")
    assert changes.exit_code == 0
    added = [r["path"] for r in json.loads(changes.stdout) if r["change"] == "added"]
    assert added[-1] == leaf and len(added) == 1002


def test_ls_and_diff_read_postgresql_through_its_reader(
    registry: RegistryServer, run: Run, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # psycopg outside a transaction: diff reads two images' paths at once, each through its own
    # server-side cursor held past its statement (single-row streams would refuse the second).
    monkeypatch.setenv("LAYERINDEX_DB", postgres_url)
    old = make_image([make_layer({"/etc/a": b"1", "/etc/b": b"2"})])
    new = make_image([make_layer({"/etc/a": b"1", "/etc/b": b"2"}), make_layer({"/etc/c": b"3"})])
    registry.push("team/pg", "1", old)
    registry.push("team/pg", "2", new)
    one, two = f"{registry.host}/team/pg:1", f"{registry.host}/team/pg:2"
    assert run("index", one, two).exit_code == 0
    listed = run("ls", two, "/etc", "--json")
    assert (listed.exit_code, listed.stderr) == (0, "")
    assert [(r["path"], r["layer_index"]) for r in json.loads(listed.stdout)] == [
        ("/etc/a", 0),
        ("/etc/b", 0),
        ("/etc/c", 1),
    ]
    changed = run("diff", one, two, "--json")
    assert (changed.exit_code, changed.stderr) == (0, "")
    assert [(r["change"], r["path"]) for r in json.loads(changed.stdout)] == [("added", "/etc/c")]
