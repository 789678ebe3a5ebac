"""``layerindex get``: one file out of a real registry, fetching only the layer that holds it."""

from __future__ import annotations

import gzip
import os
import random
import re
import socket
import stat
import threading
from pathlib import Path

import pytest
import tarcorpus
from faults import FaultProxy
from images import (
    Image,
    directory,
    file,
    hardlink,
    make_image,
    make_index,
    make_layer,
    opaque,
    symlink,
    whiteout,
)
from registry_server import HubRegistry
from test_index import Run

TOOL = b"#!/bin/sh\necho new tool\n"
BASE = make_layer(
    [
        directory("usr"),
        directory("usr/bin"),
        file("usr/bin/tool", b"old tool", mode=0o755),
        directory("etc"),
        file("etc/conf", b"conf from the gzip layer\n"),
        file("etc/gone", b"deleted later"),
        directory("lib"),
        file("lib/real.so", b"\x7fELF real lib"),
        directory("srv"),
        file("srv/old", b"hidden by an opaque dir"),
    ],
    "gzip",
)
MIDDLE = make_layer(
    [
        file("usr/bin/tool", TOOL, mode=0o4755),  # set-uid: never carried to the output
        whiteout("etc/gone"),
        directory("opt"),
        file("opt/data", b"zstd layer data, also reached through a hard link"),
        hardlink("opt/data-link", "opt/data"),
        symlink("usr/bin/a", "b"),
        symlink("usr/bin/b", "/usr/bin/tool"),
        directory("usr/local"),
        symlink("usr/local/lib", "../../lib"),
        symlink("usr/bin/escape", "../../../../../etc/conf"),
    ],
    "zstd",
)
TOP = make_layer(
    [
        file("plain.txt", b"from the plain tar layer"),
        symlink("loop1", "loop2"),
        symlink("loop2", "/loop1"),
        symlink("dangling", "/nowhere/file"),
        directory("srv"),
        opaque("srv"),
        file("srv/new", b"new"),
        hardlink("srv/old-data", "opt/data"),  # not in this layer: the file below at that path
    ],
    "none",
)
APP = make_image([BASE, MIDDLE, TOP])


def indexed(proxy: FaultProxy, run: Run, image: Image, *flags: str, repo: str = "team/app") -> str:
    proxy.push(repo, "1", image)
    ref = f"{proxy.host}/{repo}:1"
    result = run("index", *flags, ref)
    assert result.exit_code == 0, result.output
    proxy.reset()  # the tests look at what `get` asks for
    return ref


def blob_gets(proxy: FaultProxy) -> list[str]:
    return [r.path.rsplit("/", 1)[1] for r in proxy.seen("/blobs/", "GET")]


@pytest.mark.parametrize(
    ("path", "layer", "content"),
    [
        ("/etc/conf", BASE, b"conf from the gzip layer\n"),
        ("/opt/data", MIDDLE, b"zstd layer data, also reached through a hard link"),
        ("plain.txt", TOP, b"from the plain tar layer"),  # relative: from the image's root
        ("/usr/bin/tool", MIDDLE, TOOL),  # replaced by a later layer: the later content
    ],
)
def test_get_writes_the_file_to_stdout_from_its_layer_only(
    fault_proxy: FaultProxy, run: Run, path: str, layer: object, content: bytes
) -> None:
    ref = indexed(fault_proxy, run, APP)
    result = run("get", ref, path)
    assert (result.exit_code, result.stdout_bytes, result.stderr) == (0, content, "")
    assert blob_gets(fault_proxy) == [layer.digest]  # type: ignore[attr-defined]


def test_symlinks_are_followed_inside_the_image(fault_proxy: FaultProxy, run: Run) -> None:
    ref = indexed(fault_proxy, run, APP)
    # a -> b (relative) -> /usr/bin/tool (absolute)
    assert run("get", ref, "/usr/bin/a").stdout_bytes == TOOL
    # a directory symlink in the middle of the path: /usr/local/lib -> ../../lib
    assert run("get", ref, "/usr/local/lib/real.so").stdout_bytes == b"\x7fELF real lib"
    # ".." cannot climb above the image's root, as in a container
    assert run("get", ref, "/usr/bin/escape").stdout_bytes == b"conf from the gzip layer\n"
    assert blob_gets(fault_proxy) == [MIDDLE.digest, BASE.digest, BASE.digest]


def test_symlink_loop_and_dangling_link_are_errors(fault_proxy: FaultProxy, run: Run) -> None:
    ref = indexed(fault_proxy, run, APP)
    loop = run("get", ref, "/loop1")
    assert (loop.exit_code, loop.stdout) == (2, "")
    assert loop.stderr.startswith("Error: /loop1: too many levels of symbolic links in ")
    dangling = run("get", ref, "/dangling")
    assert (dangling.exit_code, dangling.stdout) == (2, "")
    assert dangling.stderr == (
        f"Error: /dangling: not in the image's filesystem (/nowhere/file does not exist): "
        f"{ref} (linux/amd64)\n"
    )
    assert fault_proxy.seen("/blobs/") == []


def test_no_follow_writes_the_link_target(
    fault_proxy: FaultProxy, run: Run, tmp_path: Path
) -> None:
    ref = indexed(fault_proxy, run, APP)
    result = run("get", "--no-follow", ref, "/usr/bin/a")
    assert (result.exit_code, result.stdout_bytes, result.stderr) == (0, b"b", "")
    out = tmp_path / "link.txt"
    assert run("get", "--no-follow", ref, "/usr/bin/b", "-o", str(out)).exit_code == 0
    assert out.read_bytes() == b"/usr/bin/tool" and not out.is_symlink()
    # Directory symlinks on the way are still followed; a regular file is got as usual.
    through = run("get", "--no-follow", ref, "/usr/local/lib/real.so")
    assert through.stdout_bytes == b"\x7fELF real lib"
    assert blob_gets(fault_proxy) == [BASE.digest]  # link targets come from the index


def test_hard_links_get_their_targets_data(fault_proxy: FaultProxy, run: Run) -> None:
    ref = indexed(fault_proxy, run, APP, "--hash-files")
    data = b"zstd layer data, also reached through a hard link"
    same_layer = run("get", ref, "/opt/data-link")
    assert (same_layer.exit_code, same_layer.stdout_bytes) == (0, data)
    # A hard link to a path its layer does not hold: the file the layers below have there.
    lower = run("get", ref, "/srv/old-data")
    assert (lower.exit_code, lower.stdout_bytes) == (0, data)
    assert blob_gets(fault_proxy) == [MIDDLE.digest, MIDDLE.digest]


def test_deleted_hidden_missing_and_directories_are_errors(
    fault_proxy: FaultProxy, run: Run
) -> None:
    ref = indexed(fault_proxy, run, APP)
    image = f"{ref} (linux/amd64)"
    cases = {
        "/etc/gone": f"Error: /etc/gone: not in the image's filesystem: {image}\n",
        "/srv/old": f"Error: /srv/old: not in the image's filesystem: {image}\n",
        "/etc/nope": f"Error: /etc/nope: not in the image's filesystem: {image}\n",
        "/etc": f"Error: /etc: is a directory in {image}\n",
        "/usr/local/lib": f"Error: /usr/local/lib: is a directory in {image}\n",
        "/": f"Error: /: is a directory (the root) in {image}\n",
        "/etc/conf/x": f"Error: /etc/conf/x: /etc/conf is a file in {image}\n",
    }
    for path, message in cases.items():
        result = run("get", ref, path)
        assert (result.exit_code, result.stdout, result.stderr) == (2, "", message), path
    assert run("get", ref, "/srv/new").stdout_bytes == b"new"
    assert blob_gets(fault_proxy) == [TOP.digest]


def test_image_not_indexed_is_an_error_without_a_request(fault_proxy: FaultProxy, run: Run) -> None:
    ref = f"{fault_proxy.host}/team/never:1"
    assert run("db", "upgrade").exit_code == 0  # an index, without this image
    result = run("get", ref, "/etc/conf")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"Error: {ref} is not indexed; run: layerindex index {ref}\n"
    assert fault_proxy.requests == []


def test_output_file_mode_refusal_and_force(
    fault_proxy: FaultProxy, run: Run, tmp_path: Path
) -> None:
    ref = indexed(fault_proxy, run, APP)
    tmp_path = tmp_path / "out"  # tmp_path itself holds the test's home
    tmp_path.mkdir()
    out = tmp_path / "tool"
    result = run("get", ref, "/usr/bin/tool", "-o", str(out))
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    assert out.read_bytes() == TOOL
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755 & ~umask  # set-uid dropped
    out.write_bytes(b"mine")
    refused = run("get", ref, "/etc/conf", "-o", str(out))
    assert (refused.exit_code, refused.stderr) == (
        2,
        f"Error: {out}: already exists; use --force to replace it\n",
    )
    assert out.read_bytes() == b"mine"
    # A symlink at -o is replaced, never written through.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"keep")
    link = tmp_path / "link"
    link.symlink_to(elsewhere)
    assert run("get", ref, "/etc/conf", "-o", str(link)).exit_code == 2
    assert run("get", "--force", ref, "/etc/conf", "-o", str(link)).exit_code == 0
    assert not link.is_symlink() and link.read_bytes() == b"conf from the gzip layer\n"
    assert elsewhere.read_bytes() == b"keep"
    assert run("get", "--force", ref, "/etc/conf", "-o", str(out)).exit_code == 0
    assert out.read_bytes() == b"conf from the gzip layer\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "link", "tool"]


def test_devices_and_fifos_are_written_into_never_replaced(
    fault_proxy: FaultProxy, run: Run, tmp_path: Path
) -> None:
    """As cp and a shell's ">" do: /dev/null stays the null device, with or without --force,
    and a FIFO gets the bytes (once checked) without being replaced."""
    ref = indexed(fault_proxy, run, APP)
    result = run("get", ref, "/etc/conf", "-o", os.devnull)  # --force on /dev/null: below
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = run("get", "--force", ref, "/etc/conf", "-o", str(fifo))
    reader.join(timeout=60)
    assert (result.exit_code, result.stderr) == (0, "")
    assert received == [b"conf from the gzip layer\n"]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    if hasattr(os, "mknod") and os.geteuid() == 0:  # a null device of our own to --force
        null = tmp_path / "null"
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        assert run("get", "--force", ref, "/etc/conf", "-o", str(null)).exit_code == 0
        assert stat.S_ISCHR(null.lstat().st_mode)


def test_other_special_files_are_refused_without_suggesting_force(
    fault_proxy: FaultProxy, run: Run, tmp_path: Path
) -> None:
    ref = indexed(fault_proxy, run, APP)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "sock"))
        for flags in ((), ("--force",)):
            result = run("get", *flags, ref, "/etc/conf", "-o", str(tmp_path / "sock"))
            assert (result.exit_code, result.stdout, result.stderr) == (
                2,
                "",
                f"Error: {tmp_path / 'sock'}: is a socket; get replaces only a regular file, "
                "and writes into a character device or a FIFO\n",
            )
        assert stat.S_ISSOCK((tmp_path / "sock").lstat().st_mode)
    assert fault_proxy.seen("/blobs/") == []


def test_an_output_where_no_file_can_be_made_is_an_error(fault_proxy: FaultProxy, run: Run) -> None:
    ref = indexed(fault_proxy, run, APP)
    result = run("get", ref, "/etc/conf", "-o", "/proc/self/x")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        "Error: /proc/self/x: cannot create a file in /proc/self: No such file or directory\n"
    )


def tampered(members_content: bytes) -> bytes:
    """BASE's tar with /etc/conf's bytes swapped for others of the same length."""
    layer = make_layer(
        [
            directory("usr"),
            directory("usr/bin"),
            file("usr/bin/tool", b"old tool", mode=0o755),
            directory("etc"),
            file("etc/conf", members_content),
        ],
        "gzip",
    )
    return layer.blob


def test_sha256_is_checked_when_indexed_and_nothing_is_written(
    fault_proxy: FaultProxy, run: Run, tmp_path: Path
) -> None:
    ref = indexed(fault_proxy, run, APP, "--hash-files")
    fault_proxy.respond(
        f"/blobs/{BASE.digest}",
        body=tampered(b"CONF FROM THE GZIP LAYER\n"),
        headers={"Content-Type": "application/octet-stream"},
    )
    tmp_path = tmp_path / "out"  # tmp_path itself holds the test's home
    tmp_path.mkdir()
    out = tmp_path / "conf"
    result = run("get", ref, "/etc/conf", "-o", str(out))
    assert (result.exit_code, result.stdout) == (2, "")
    assert "/etc/conf: sha256 mismatch: the index says sha256:" in result.stderr
    assert "nothing was written" in result.stderr
    assert list(tmp_path.iterdir()) == []
    # Stdout gets nothing either: the bytes are checked before any is written.
    fault_proxy.respond(
        f"/blobs/{BASE.digest}",
        body=tampered(b"CONF FROM THE GZIP LAYER\n"),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert run("get", ref, "/etc/conf").stdout_bytes == b""


def test_size_is_checked_without_hashes(fault_proxy: FaultProxy, run: Run) -> None:
    ref = indexed(fault_proxy, run, APP)
    fault_proxy.respond(
        f"/blobs/{BASE.digest}",
        body=tampered(b"short\n"),
        headers={"Content-Type": "application/octet-stream"},
    )
    result = run("get", ref, "/etc/conf")
    assert (result.exit_code, result.stdout) == (2, "")
    assert "/etc/conf is 6 bytes in the layer but 25 in the index" in result.stderr


def test_corrupt_blob_is_a_digest_error(fault_proxy: FaultProxy, run: Run, tmp_path: Path) -> None:
    ref = indexed(fault_proxy, run, APP)
    fault_proxy.corrupt(f"/blobs/{BASE.digest}")
    tmp_path = tmp_path / "out"  # tmp_path itself holds the test's home
    tmp_path.mkdir()
    out = tmp_path / "conf"
    result = run("get", ref, "/etc/conf", "-o", str(out))
    assert (result.exit_code, result.stdout) == (2, "")
    assert f"Error: layer {BASE.digest} of {ref}: blob digest mismatch: got sha256:" in (
        result.stderr
    )
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_registry_failure_is_an_error(fault_proxy: FaultProxy, run: Run, tmp_path: Path) -> None:
    ref = indexed(fault_proxy, run, APP)
    fault_proxy.status(f"/blobs/{BASE.digest}", 404, times=None)
    tmp_path = tmp_path / "out"  # tmp_path itself holds the test's home
    tmp_path.mkdir()
    out = tmp_path / "conf"
    result = run("get", ref, "/etc/conf", "-o", str(out))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"Error: blob {BASE.digest} not found in {ref.rsplit(':', 1)[0]}\n"
    assert list(tmp_path.iterdir()) == []


BIG = random.Random(4).randbytes(48 << 20)  # incompressible: the blob is as big as the tar


def compressed_bytes_read(stderr: str) -> tuple[int, int]:
    match = re.search(r"read (\d+) of (\d+) compressed bytes", stderr)
    assert match, stderr
    return int(match[1]), int(match[2])


def test_download_stops_once_the_file_is_read_and_matches_its_hash(
    fault_proxy: FaultProxy, run: Run
) -> None:
    big_layer = make_layer([file("etc/first", b"early in a big layer"), file("big.bin", BIG)])
    image = make_image([big_layer])
    ref = indexed(fault_proxy, run, image, "--hash-files", repo="team/big")
    result = run("-v", "get", ref, "/etc/first")
    assert (result.exit_code, result.stdout_bytes) == (0, b"early in a big layer")
    read, size = compressed_bytes_read(result.stderr)
    assert size == big_layer.size > 48 << 20
    assert read < size // 4  # the decompressor's read-ahead, not the layer


def test_without_file_hashes_the_layer_is_read_to_its_end(
    fault_proxy: FaultProxy, run: Run
) -> None:
    """Only the blob's digest can prove the bytes then, and only the layer's end says which copy
    of a path is the last."""
    big_layer = make_layer([file("etc/first", b"early in a big layer"), file("big.bin", BIG)])
    ref = indexed(fault_proxy, run, make_image([big_layer]), repo="team/big")
    result = run("-v", "get", ref, "/etc/first")
    assert (result.exit_code, result.stdout_bytes) == (0, b"early in a big layer")
    read, size = compressed_bytes_read(result.stderr)
    assert read == size == big_layer.size


TWICE = make_layer(
    [
        directory("etc"),
        file("etc/passwd", b"root:x:0:0:benign\n"),  # what a reader of the first copy sees
        file("etc/other", b"between the copies"),
        file("etc/passwd", b"root:x:0:0:EVIL!!\n", mode=0o600),  # what a container sees
    ],
    "gzip",
)


@pytest.mark.parametrize("flags", [(), ("--hash-files",)], ids=["sizes", "hashes"])
def test_a_path_written_twice_in_a_layer_gives_the_last_copy(
    fault_proxy: FaultProxy, run: Run, tmp_path: Path, flags: tuple[str, ...]
) -> None:
    ref = indexed(fault_proxy, run, make_image([TWICE]), *flags, repo="team/twice")
    result = run("get", ref, "/etc/passwd")
    assert (result.exit_code, result.stdout_bytes, result.stderr) == (
        0,
        b"root:x:0:0:EVIL!!\n",
        "",
    )
    out = tmp_path / "passwd"
    assert run("get", ref, "/etc/passwd", "-o", str(out)).exit_code == 0
    assert out.read_bytes() == b"root:x:0:0:EVIL!!\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_other_bytes_of_the_same_size_are_caught_by_the_blob_digest(
    fault_proxy: FaultProxy, run: Run, tmp_path: Path
) -> None:
    """Indexed without file hashes: a registry (or proxy) serving a blob of the same size with
    the file's bytes changed is caught at the layer's end, and nothing is written."""
    ref = indexed(fault_proxy, run, APP)
    forged = TOP.blob.replace(b"from the plain tar layer", b"FROM THE PLAIN TAR LAYER")
    assert len(forged) == len(TOP.blob) and forged != TOP.blob
    fault_proxy.respond(
        f"/blobs/{TOP.digest}", body=forged, headers={"Content-Type": "application/octet-stream"}
    )
    tmp_path = tmp_path / "out"  # tmp_path itself holds the test's home
    tmp_path.mkdir()
    out = tmp_path / "plain.txt"
    for args in (("-o", str(out)), ()):
        result = run("get", ref, "/plain.txt", *args)
        assert (result.exit_code, result.stdout) == (2, "")
        assert result.stderr.startswith(
            f"Error: layer {TOP.digest} of {ref}: blob digest mismatch: got sha256:"
        )
        assert result.stderr.endswith(
            "; the registry or a proxy sent other bytes; nothing was written\n"
        )
    assert list(tmp_path.iterdir()) == []


def pax_layer(header: bytes) -> bytes:
    """A gzip blob: a pax header, as big as ``header`` says, in front of /plain.txt."""
    return gzip.compress(header + tarcorpus.member(b"plain.txt", b"x") + tarcorpus.END, mtime=0)


@pytest.mark.parametrize(
    ("blob", "problem"),
    [
        (  # 200,000 digits: tarfile's quadratic pax parsing (CVE-2024-6232) took 40 s on it
            pax_layer(tarcorpus.member(b"./PaxHeaders/x", b"1" * 200_000 + b" path=x\n", b"x")),
            "malformed pax extended header record at tar offset 0",
        ),
        (  # a 1 GiB pax header: tarfile read it into memory (2.4 GB RSS); here refused unread
            pax_layer(tarcorpus.header(b"./PaxHeaders/x", b"x", size=1 << 30)),
            "pax or GNU long-name header of 1073741824 bytes at tar offset 512",
        ),
    ],
    ids=["long-record", "huge-header"],
)
def test_get_reads_the_layer_with_the_walkers_limits(
    fault_proxy: FaultProxy, run: Run, blob: bytes, problem: str
) -> None:
    ref = indexed(fault_proxy, run, APP)
    fault_proxy.respond(
        f"/blobs/{TOP.digest}", body=blob, headers={"Content-Type": "application/octet-stream"}
    )
    result = run("get", ref, "/plain.txt")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr.startswith(f"Error: layer {TOP.digest} of {ref}: blob digest mismatch: ")
    assert result.stderr.endswith(f"; they read as: {problem}\n")


def test_docker_hub_like_registry_token_and_redirect(
    hub_registry: HubRegistry, blob_server: object, run: Run
) -> None:
    hub_registry.push("team/app", "1.0", APP)
    ref = f"{hub_registry.host}/team/app:1.0"
    assert run("index", ref).exit_code == 0
    blob_server.reset()  # type: ignore[attr-defined]
    result = run("get", ref, "/usr/bin/a")
    assert (result.exit_code, result.stdout_bytes) == (0, TOOL)
    served = blob_server.requests  # type: ignore[attr-defined]
    assert [r.path.split("/")[-2] for r in served] == [MIDDLE.digest.split(":")[1]]
    assert all("Authorization" not in r.headers for r in served)


def test_multi_platform_defaults_to_linux_amd64(fault_proxy: FaultProxy, run: Run) -> None:
    amd = make_image([make_layer({"/bin/tool": b"amd64"})])
    arm = make_image([make_layer({"/bin/tool": b"arm64"})], platform="linux/arm64/v8")
    fault_proxy.push("team/multi", "1", make_index([amd, arm]))
    ref = f"{fault_proxy.host}/team/multi:1"
    assert run("index", "--platform", "all", ref).exit_code == 0
    assert run("get", ref, "/bin/tool").stdout_bytes == b"amd64"  # as index, skopeo, dive
    for platform in ("linux/arm64", "linux/arm64/v8"):  # as index matches them
        assert run("get", "--platform", platform, ref, "/bin/tool").stdout_bytes == b"arm64"
    # Without linux/amd64 among them, one must be picked.
    arm32 = make_image([make_layer({"/bin/tool": b"arm"})], platform="linux/arm/v7")
    arm64 = make_image([make_layer({"/bin/tool": b"arm64!"})], platform="linux/arm64/v8")
    fault_proxy.push("team/multi", "2", make_index([arm64, arm32]))
    other = f"{fault_proxy.host}/team/multi:2"
    assert run("index", "--platform", "all", other).exit_code == 0
    both = run("get", other, "/bin/tool")
    assert (both.exit_code, both.stderr) == (
        2,
        f"Error: {other} is indexed for linux/arm/v7, linux/arm64/v8; choose one with --platform\n",
    )
    missing = run("get", "--platform", "linux/s390x", ref, "/bin/tool")
    assert (missing.exit_code, missing.stderr) == (
        2,
        f"Error: {ref} is not indexed for linux/s390x; run: "
        f"layerindex index --platform linux/s390x {ref}\n",
    )


def test_get_reads_an_index_in_postgresql(
    fault_proxy: FaultProxy, run: Run, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAYERINDEX_DB", postgres_url)
    ref = indexed(fault_proxy, run, APP)
    assert run("get", ref, "/usr/bin/a").stdout_bytes == TOOL  # two symlinks, from the index
    assert run("get", ref, "/srv/old-data").stdout_bytes == (
        b"zstd layer data, also reached through a hard link"
    )
    assert blob_gets(fault_proxy) == [MIDDLE.digest, MIDDLE.digest]
    deleted = run("get", ref, "/etc/gone")  # by a whiteout in the middle layer
    assert (deleted.exit_code, deleted.stderr) == (
        2,
        f"Error: /etc/gone: not in the image's filesystem: {ref} (linux/amd64)\n",
    )
