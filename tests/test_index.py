"""End to end: images pushed to a real registry, indexed and queried through the CLI."""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from faults import FaultProxy, interrupt_when_stalled
from images import (
    directory,
    file,
    make_image,
    make_index,
    make_layer,
    opaque,
    symlink,
    whiteout,
)
from registry_server import BasicRegistry, HubRegistry, RegistryServer
from sqlalchemy import FromClause, create_engine, func, select
from token_server import PASSWORD, USERNAME

from layerindex.index.schema import entries

Run = Callable[..., Result]


def db_path(home: Path) -> Path:
    return home / "data" / "layerindex" / "index.db"


def count_rows(home: Path, table: FromClause) -> int:
    engine = create_engine(f"sqlite:///{db_path(home)}")
    with engine.connect() as connection:
        value = int(connection.execute(select(func.count()).select_from(table)).scalar_one())
    engine.dispose()
    return value


def login(home: Path, host: str, username: str, password: str) -> None:
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    (home / "docker").mkdir(exist_ok=True)
    (home / "docker" / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))


KUBECTL = b"#!/bin/sh\necho kubectl\n"

BASE = make_layer(
    [
        directory("usr"),
        directory("usr/bin"),
        file("usr/bin/kubectl", b"old kubectl", mode=0o755),
        directory("etc"),
        file("etc/motd", b"hello\n"),
        directory("opt"),
        file("opt/old.txt", b"old"),
    ],
    "gzip",
)
MIDDLE = make_layer([file("usr/bin/kubectl", KUBECTL, mode=0o755), whiteout("etc/motd")], "zstd")
TOP = make_layer(
    [directory("opt"), opaque("opt"), file("opt/new.txt", b"new"), symlink("usr/bin/k", "kubectl")],
    "none",
)
APP = make_image([BASE, MIDDLE, TOP])


def table(*lines: list[str]) -> str:
    """A table as the CLI prints it: columns padded to their widest cell, two spaces apart."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in lines
    )


def test_index_then_find_names_the_right_layer(registry: RegistryServer, run: Run) -> None:
    digest = registry.push("team/app", "1.0", APP)
    ref = f"{registry.host}/team/app:1.0"
    result = run("index", ref)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{ref}  {digest}  linux/amd64  layers: 3 indexed, 0 known, 0 skipped, 0 failed  "
        "entries: 13\n"
    )
    # What start-up made is out of the garbage collector's sight for the rest of the run.
    assert gc.get_freeze_count() > 0
    result = run("find", "/usr/bin/kubectl", "--json", "--all-layers")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [(r["layer_index"], r["layer_digest"], r["size"], r["state"]) for r in rows] == [
        (0, BASE.digest, len(b"old kubectl"), "overwritten"),
        (1, MIDDLE.digest, len(KUBECTL), "present"),
    ]
    assert rows[1] == {
        "image": ref,
        "manifest_digest": digest,
        "platform": "linux/amd64",
        "layer_index": 1,
        "layer_digest": MIDDLE.digest,
        "path": "/usr/bin/kubectl",
        "size": len(KUBECTL),
        "type": "file",
        "mode": 0o755,
        "link_target": None,
        "state": "present",
        "changed_by_layer": None,
        "sha256": None,
    }
    # By default: the final filesystem only, what a container started from the image sees.
    final = json.loads(run("find", "/usr/bin/kubectl", "--json").stdout)
    assert final == [rows[1]]


def test_find_states_for_whiteouts_opaque_dirs_and_links(
    registry: RegistryServer, run: Run
) -> None:
    registry.push("team/app", "1.0", APP)
    assert run("index", f"{registry.host}/team/app:1.0").exit_code == 0

    def states(path: str) -> list[tuple[int, str, object]]:
        result = run("find", path, "--json", "--all-layers")
        return [
            (r["layer_index"], r["state"], r["changed_by_layer"]) for r in json.loads(result.stdout)
        ]

    assert states("/etc/motd") == [(0, "deleted", 1)]
    assert states("/opt/old.txt") == [(0, "deleted", 2)]
    assert states("/opt/new.txt") == [(2, "present", None)]
    link = json.loads(run("find", "usr/bin/k", "--json").stdout)
    assert [(r["type"], r["link_target"]) for r in link] == [("symlink", "kubectl")]


def test_find_table_and_exit_codes(registry: RegistryServer, run: Run) -> None:
    digest = registry.push("team/app", "1.0", APP)
    ref = f"{registry.host}/team/app:1.0"
    run("index", ref)
    result = run("find", "/usr/bin/kubectl")
    assert (result.exit_code, result.stdout) == (
        0,
        table(
            ["IMAGE", "PLATFORM", "LAYER", "DIGEST", "TYPE", "SIZE", "MODE", "PATH"],
            [
                ref,
                "linux/amd64",
                "1",
                MIDDLE.digest[:19],
                "file",
                f"{len(KUBECTL)} B",
                "0755",
                "/usr/bin/kubectl",
            ],
        ),
    )
    result = run("find", "/usr/bin/kubectl", "--all-layers")
    assert result.exit_code == 0
    assert result.stdout == table(
        ["IMAGE", "PLATFORM", "LAYER", "DIGEST", "TYPE", "SIZE", "MODE", "STATE", "PATH"],
        [
            ref,
            "linux/amd64",
            "0",
            BASE.digest[:19],
            "file",
            "11 B",
            "0755",
            "overwritten by layer 1",
            "/usr/bin/kubectl",
        ],
        [
            ref,
            "linux/amd64",
            "1",
            MIDDLE.digest[:19],
            "file",
            f"{len(KUBECTL)} B",
            "0755",
            "present",
            "/usr/bin/kubectl",
        ],
    )
    missing = run("find", "/usr/bin/nope")
    assert (missing.exit_code, missing.stdout) == (1, "")
    assert missing.stderr == "/usr/bin/nope: not found in any indexed image\n"
    # Deleted by a whiteout: in a layer, but not in the image.
    deleted = run("find", "/etc/motd")
    assert (deleted.exit_code, deleted.stdout) == (1, "")
    assert digest


def index_line(
    ref: str, digest: str, platform: str, counts: tuple[int, int, int, int], n: int
) -> str:
    indexed, known, skipped, failed = counts
    return (
        f"{ref}  {digest}  {platform}  layers: {indexed} indexed, {known} known, "
        f"{skipped} skipped, {failed} failed  entries: {n}\n"
    )


def test_docker_hub_like_token_auth_and_cross_host_redirects(
    hub_registry: HubRegistry, blob_server: object, token_server: object, run: Run
) -> None:
    digest = hub_registry.push("team/app", "1.0", APP)
    token_server.reset()  # type: ignore[attr-defined]  # forget the push helper's tokens
    ref = f"{hub_registry.host}/team/app:1.0"
    result = run("index", ref)
    assert (result.exit_code, result.stdout) == (
        0,
        index_line(ref, digest, "linux/amd64", (3, 0, 0, 0), 13),
    )
    # Every layer came from the second host, and none of those requests carried the
    # registry's Authorization header (the blob host answers 400 to it, as S3 does).
    served = [r for r in blob_server.requests if r.path.endswith("/data")]  # type: ignore[attr-defined]
    assert len(served) == 4  # three layers and the config
    assert all("Authorization" not in r.headers for r in served)
    assert all(r.status == 200 for r in served)
    # One token for the repository's pull scope, reused for every request.
    assert [r.scopes for r in token_server.requests] == [("repository:team/app:pull",)]  # type: ignore[attr-defined]


def test_private_repository_needs_credentials_from_docker_config(
    hub_registry: HubRegistry, home: Path, run: Run
) -> None:
    digest = hub_registry.push("private/app", "1.0", APP)
    ref = f"{hub_registry.host}/private/app:1.0"
    denied = run("index", ref)
    assert denied.exit_code == 1
    assert (
        denied.stdout
        == f"{ref}  -  -  layers: 0 indexed, 0 known, 0 skipped, 0 failed  entries: 0\n"
    )
    assert "Error:" in denied.stderr and "login" in denied.stderr
    login(home, hub_registry.host, USERNAME, PASSWORD)
    allowed = run("index", ref)
    assert (allowed.exit_code, allowed.stdout) == (
        0,
        index_line(ref, digest, "linux/amd64", (3, 0, 0, 0), 13),
    )


def test_basic_auth_registry(basic_registry: BasicRegistry, home: Path, run: Run) -> None:
    digest = basic_registry.push("team/app", "1.0", APP)
    ref = f"{basic_registry.host}/team/app:1.0"
    assert run("index", ref).exit_code == 1
    login(home, basic_registry.host, basic_registry.username, basic_registry.password)
    result = run("index", ref)
    assert (result.exit_code, result.stdout) == (
        0,
        index_line(ref, digest, "linux/amd64", (3, 0, 0, 0), 13),
    )


def test_multi_platform_index(registry: RegistryServer, run: Run) -> None:
    amd = make_image([make_layer({"/bin/tool": b"amd64"})])
    arm = make_image([make_layer({"/bin/tool": b"arm64!"})], platform="linux/arm64/v8")
    registry.push("team/multi", "2", make_index([amd, arm], style="docker"))
    ref = f"{registry.host}/team/multi:2"
    assert run("index", ref).stdout == index_line(ref, amd.digest, "linux/amd64", (1, 0, 0, 0), 1)
    assert run("index", "--platform", "linux/arm64", ref).stdout == index_line(
        ref, arm.digest, "linux/arm64/v8", (1, 0, 0, 0), 1
    )
    assert run("index", "--platform", "all", ref).stdout == (  # both indexed already
        f"{ref}  {amd.digest}  linux/amd64  unchanged  entries: 1\n"
        f"{ref}  {arm.digest}  linux/arm64/v8  unchanged  entries: 1\n"
    )
    rows = json.loads(run("find", "/bin/tool", "--json").stdout)
    assert [(r["platform"], r["size"], r["state"]) for r in rows] == [
        ("linux/amd64", 5, "present"),
        ("linux/arm64/v8", 6, "present"),
    ]


def test_same_tar_in_another_compression_is_linked_not_downloaded(
    registry: RegistryServer, fault_proxy: FaultProxy, run: Run
) -> None:
    members = [directory("srv"), file("srv/data.bin", b"x" * 5000)]
    gzipped = make_layer(members, "gzip")
    zstded = make_layer(members, "zstd", style="docker")
    assert gzipped.diff_id == zstded.diff_id and gzipped.digest != zstded.digest
    first = make_image([gzipped])
    second = make_image([zstded], style="docker")
    registry.push("team/gz", "1", first)
    registry.push("team/zst", "1", second)
    assert run("index", f"{fault_proxy.host}/team/gz:1").exit_code == 0
    result = run("index", f"{fault_proxy.host}/team/zst:1")
    assert result.stdout == index_line(
        f"{fault_proxy.host}/team/zst:1", second.digest, "linux/amd64", (0, 1, 0, 0), 2
    )
    assert fault_proxy.seen(f"/blobs/{zstded.digest}") == []
    assert fault_proxy.seen(f"/blobs/{gzipped.digest}") != []
    rows = json.loads(run("find", "/srv/data.bin", "--json").stdout)
    assert [r["layer_digest"] for r in rows] == [gzipped.digest, zstded.digest]


def test_layer_shared_by_two_images_is_fetched_once(
    registry: RegistryServer, fault_proxy: FaultProxy, run: Run
) -> None:
    other = make_image([BASE, make_layer({"/srv/other": b"other"})])
    registry.push("team/app", "1.0", APP)
    registry.push("team/other", "1", other)
    run("index", f"{fault_proxy.host}/team/app:1.0")
    result = run("index", f"{fault_proxy.host}/team/other:1")
    assert "layers: 1 indexed, 1 known, 0 skipped, 0 failed  entries: 8" in result.stdout
    assert len(fault_proxy.seen(f"/blobs/{BASE.digest}", "GET")) == 1


def test_index_of_an_image_already_indexed_costs_one_head_request(
    registry: RegistryServer, fault_proxy: FaultProxy, run: Run
) -> None:
    digest = registry.push("team/app", "1.0", APP)
    ref = f"{fault_proxy.host}/team/app:1.0"
    assert run("index", ref).exit_code == 0
    fault_proxy.requests.clear()
    result = run("index", ref)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{ref}  {digest}  linux/amd64  unchanged  entries: 13\n"
    # A registry ping, then a HEAD of the tag: no manifest GET (a Docker Hub pull), no blob.
    assert sorted((r.method, r.path) for r in fault_proxy.requests) == [
        ("GET", "/v2/"),
        ("HEAD", "/v2/team/app/manifests/1.0"),
    ]


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("corrupt", "sha256"),
        ("truncated", "zstd"),
    ],
)
def test_bad_layer_fails_alone_commits_nothing_and_is_retried(
    registry: RegistryServer,
    fault_proxy: FaultProxy,
    home: Path,
    run: Run,
    fault: str,
    message: str,
) -> None:
    digest = registry.push("team/app", "1.0", APP)
    ref = f"{fault_proxy.host}/team/app:1.0"
    if fault == "corrupt":
        fault_proxy.corrupt(f"/blobs/{MIDDLE.digest}", times=1)
    else:  # a registry serving a short blob, Content-Length and all
        fault_proxy.respond(
            f"/blobs/{MIDDLE.digest}",
            body=MIDDLE.blob[:40],
            headers={"Content-Type": "application/octet-stream"},
            times=1,
        )
    result = run("index", ref)
    assert result.exit_code == 1
    assert result.stdout == index_line(ref, digest, "linux/amd64", (2, 0, 0, 1), 11)
    assert f"image {ref} layer {MIDDLE.digest}" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert count_rows(home, entries) == 11  # BASE and TOP only
    rows = json.loads(run("layers", ref, "--json").stdout)["layers"]
    assert [r["status"].split(":")[0] for r in rows] == ["indexed", "failed", "indexed"]
    # The next run fetches just the failed layer, and the image is complete.
    again = run("index", ref)
    assert (again.exit_code, again.stdout) == (
        0,
        index_line(ref, digest, "linux/amd64", (1, 2, 0, 0), 13),
    )
    assert count_rows(home, entries) == 13


def test_unknown_tag_is_a_clear_error_and_other_images_still_index(
    registry: RegistryServer, run: Run
) -> None:
    digest = registry.push("team/app", "1.0", APP)
    good = f"{registry.host}/team/app:1.0"
    missing = f"{registry.host}/team/app:9.9"
    result = run("index", missing, good)
    assert result.exit_code == 1
    assert result.stdout == (
        f"{missing}  -  -  layers: 0 indexed, 0 known, 0 skipped, 0 failed  entries: 0\n"
        + index_line(good, digest, "linux/amd64", (3, 0, 0, 0), 13)
    )
    assert "tag 9.9 not found" in result.stderr


def test_malformed_reference_fails_before_any_request(fault_proxy: FaultProxy, run: Run) -> None:
    result = run("index", f"{fault_proxy.host}/team/app:1.0", f"{fault_proxy.host}/Team/App")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: invalid reference")
    assert fault_proxy.requests == []


def test_html_error_page_instead_of_a_manifest(
    registry: RegistryServer, fault_proxy: FaultProxy, run: Run
) -> None:
    registry.push("team/app", "1.0", APP)
    fault_proxy.html_page("/manifests/")
    result = run("index", f"{fault_proxy.host}/team/app:1.0")
    assert result.exit_code == 1
    assert "HTML" in result.stderr and "team/app" in result.stderr


def test_schema1_manifest_is_refused_with_the_reason(fault_proxy: FaultProxy, run: Run) -> None:
    body = json.dumps({"schemaVersion": 1, "name": "team/old", "tag": "1", "fsLayers": []})
    fault_proxy.respond(
        "/manifests/",
        body=body.encode(),
        headers={"Content-Type": "application/vnd.docker.distribution.manifest.v1+prettyjws"},
    )
    result = run("index", f"{fault_proxy.host}/team/old:1")
    assert result.exit_code == 1
    assert "schema 1" in result.stderr and "deprecated" in result.stderr


def test_foreign_layer_is_recorded_as_skipped(
    registry: RegistryServer, fault_proxy: FaultProxy, run: Run
) -> None:
    app = make_layer({"/app/run": b"run"})
    foreign = make_layer(
        {"/Windows/System32/x.dll": b"x"},
        style="docker",
        media_type="application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    )
    image = make_image([foreign, app], style="docker")
    registry.push_blob("team/win", app.blob, app.digest)
    registry.push_blob("team/win", image.config, image.config_digest)
    fault_proxy.respond(
        "/manifests/1$",
        body=image.manifest,
        headers={"Content-Type": image.manifest_media_type},
    )
    ref = f"{fault_proxy.host}/team/win:1"
    result = run("index", ref)
    assert (result.exit_code, result.stdout) == (
        0,
        index_line(ref, image.digest, "linux/amd64", (1, 0, 1, 0), 1),
    )
    rows = json.loads(run("layers", ref, "--json").stdout)["layers"]
    assert rows[0]["status"].startswith("skipped: foreign layer")
    assert fault_proxy.seen(f"/blobs/{foreign.digest}") == []


def test_media_types_lie_compression_comes_from_the_bytes(
    registry: RegistryServer, run: Run
) -> None:
    zstd_as_gzip = make_layer(
        {"/a": b"a"}, "zstd", media_type="application/vnd.oci.image.layer.v1.tar+gzip"
    )
    tar_as_zstd = make_layer(
        {"/b": b"b"}, "none", media_type="application/vnd.oci.image.layer.v1.tar+zstd"
    )
    registry.push("team/liar", "1", make_image([zstd_as_gzip, tar_as_zstd]))
    result = run("index", f"{registry.host}/team/liar:1")
    assert result.exit_code == 0, result.output
    assert [r["state"] for r in json.loads(run("find", "/b", "--json").stdout)] == ["present"]


def test_names_that_are_not_utf8_can_be_found(registry: RegistryServer, run: Run) -> None:
    registry.push("team/bytes", "1", make_image([make_layer([file(b"data/caf\xe9", b"latin-1")])]))
    assert run("index", f"{registry.host}/team/bytes:1").exit_code == 0
    # A shell passes the raw bytes; Python hands them to us as surrogate escapes.
    rows = json.loads(run("find", "/data/caf\udce9", "--json").stdout)
    assert [(r["path"], r["size"]) for r in rows] == [("/data/caf\\xe9", 7)]


def test_listings_images_layers_ls(registry: RegistryServer, run: Run) -> None:
    digest = registry.push("team/app", "1.0", APP)
    ref = f"{registry.host}/team/app:1.0"
    run("index", ref)
    images = json.loads(run("images", "--json").stdout)
    assert [
        (i["image"], i["manifest_digest"], i["platform"], i["layers"], i["entries"]) for i in images
    ] == [(ref, digest, "linux/amd64", 3, 13)]
    report = json.loads(run("layers", ref, "--json").stdout)
    assert [
        (
            r["layer_index"],
            r["layer_digest"],
            r["media_type"],
            r["size"],
            r["uncompressed_size"],
            r["entries"],
            r["added_bytes"],
            r["wasted_bytes"],
            r["created_by"],
            r["status"],
        )
        for r in report["layers"]
    ] == [
        (0, BASE.digest, BASE.media_type, len(BASE.blob), len(BASE.tar), 7, 20, 20,
         "layerindex test layer 0", "indexed"),
        (1, MIDDLE.digest, MIDDLE.media_type, len(MIDDLE.blob), len(MIDDLE.tar), 2, 23, 0,
         "layerindex test layer 1", "indexed"),
        (2, TOP.digest, TOP.media_type, len(TOP.blob), len(TOP.tar), 4, 3, 0,
         "layerindex test layer 2", "indexed"),
    ]  # fmt: skip
    # Wasted: all of layer 0's files, hidden later: kubectl's 11 bytes (overwritten by 23),
    # motd's 6 (whited out) and old.txt's 3 (under /opt made opaque). dive's score, a deletion
    # a version of 0 B: kubectl 11, 23; motd 6, 0; old.txt 3, 0; new.txt 3 → smallest 11 + 0
    # + 0 + 3 = 14 over 34 + 6 + 3 + 3 = 46.
    assert (report["wasted_bytes"], report["efficiency"]) == (20, 14 / 46)
    final = run("ls", ref, "--csv")
    assert final.stdout.splitlines() == [
        "image,platform,layer_index,type,mode,uid,gid,size,path,link_target,sha256",
        f"{ref},linux/amd64,0,dir,493,0,0,0,/etc,,",
        f"{ref},linux/amd64,2,dir,493,0,0,0,/opt,,",
        f"{ref},linux/amd64,2,file,420,0,0,3,/opt/new.txt,,",
        f"{ref},linux/amd64,0,dir,493,0,0,0,/usr,,",
        f"{ref},linux/amd64,0,dir,493,0,0,0,/usr/bin,,",
        f"{ref},linux/amd64,2,symlink,511,0,0,0,/usr/bin/k,kubectl,",
        f"{ref},linux/amd64,1,file,493,0,0,23,/usr/bin/kubectl,,",
    ]
    layer = run("ls", MIDDLE.digest, "--nl")
    assert [json.loads(line) for line in layer.stdout.splitlines()] == [
        {
            "type": "whiteout",
            "mode": 0o600,
            "uid": 0,
            "gid": 0,
            "size": 0,
            "path": "/etc/motd",
            "link_target": None,
            "sha256": None,
        },
        {
            "type": "file",
            "mode": 493,
            "uid": 0,
            "gid": 0,
            "size": 23,
            "path": "/usr/bin/kubectl",
            "link_target": None,
            "sha256": None,
        },
    ]


def test_find_with_image_filter(registry: RegistryServer, run: Run) -> None:
    registry.push("team/app", "1.0", APP)
    other = make_image([make_layer({"/usr/bin/kubectl": b"other"})])
    registry.push("team/other", "1", other)
    run("index", f"{registry.host}/team/app:1.0", f"{registry.host}/team/other:1")
    rows = json.loads(
        run("find", "/usr/bin/kubectl", "--json", "--image", f"{registry.host}/team/other:1").stdout
    )
    assert [(r["image"], r["size"]) for r in rows] == [(f"{registry.host}/team/other:1", 5)]
    unknown = run("find", "/usr/bin/kubectl", "--image", f"{registry.host}/team/never:1")
    assert unknown.exit_code == 2
    assert "is not indexed" in unknown.stderr


def test_download_cut_mid_layer_resumes_with_a_range_request(
    registry: RegistryServer, fault_proxy: FaultProxy, run: Run
) -> None:
    digest = registry.push("team/app", "1.0", APP)
    ref = f"{fault_proxy.host}/team/app:1.0"
    fault_proxy.cut(f"/blobs/{TOP.digest}", after=3000, times=1)
    result = run("index", ref)
    assert (result.exit_code, result.stdout) == (
        0,
        index_line(ref, digest, "linux/amd64", (3, 0, 0, 0), 13),
    )
    ranges = [r.headers.get("Range") for r in fault_proxy.seen(f"/blobs/{TOP.digest}", "GET")]
    assert ranges == [None, "bytes=3000-"]


def test_all_platforms_after_one_indexes_the_others(registry: RegistryServer, run: Run) -> None:
    amd = make_image([make_layer({"/bin/tool": b"amd64"})])
    arm = make_image([make_layer({"/bin/tool": b"arm64!"})], platform="linux/arm64/v8")
    registry.push("team/multi", "3", make_index([amd, arm]))
    ref = f"{registry.host}/team/multi:3"
    assert run("index", ref).stdout == index_line(ref, amd.digest, "linux/amd64", (1, 0, 0, 0), 1)
    assert run("index", "--platform", "all", ref).stdout == (
        f"{ref}  {amd.digest}  linux/amd64  unchanged  entries: 1\n"
        + index_line(ref, arm.digest, "linux/arm64/v8", (1, 0, 0, 0), 1)
    )


def test_all_platforms_keep_the_index_order_when_a_later_one_is_known(
    registry: RegistryServer, run: Run
) -> None:
    amd = make_image([make_layer({"/bin/tool": b"amd64"})])
    arm = make_image([make_layer({"/bin/tool": b"arm64!"})], platform="linux/arm64/v8")
    registry.push("team/multi", "4", make_index([amd, arm]))
    ref = f"{registry.host}/team/multi:4"
    run("index", "--platform", "linux/arm64", ref)
    assert run("index", "--platform", "all", ref).stdout == (
        index_line(ref, amd.digest, "linux/amd64", (1, 0, 0, 0), 1)
        + f"{ref}  {arm.digest}  linux/arm64/v8  unchanged  entries: 1\n"
    )


# 5 MB that gzip cannot shrink: walked in a walker process (walkproc.CHILD_WALK_MIN_BYTES).
BIG_BLOB = make_layer(
    {
        "/opt/big.bin": b"".join(
            hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(160_000)
        )
    }
)


@pytest.mark.parametrize("layers", ["big", "small", "big and small"])
def test_ctrl_c_while_a_download_stalls_exits_at_once(
    registry: RegistryServer, fault_proxy: FaultProxy, home: Path, layers: str
) -> None:
    # The registry stops sending in the middle of a blob. A big layer is walked ahead, in a
    # walker process; a small one in process; an image of both walks its layers in threads.
    chosen = {"big": [BIG_BLOB], "small": [MIDDLE], "big and small": [BASE, BIG_BLOB]}[layers]
    fault_proxy.push("team/stall", "1", make_image(chosen))
    stalled = chosen[-1]
    fault_proxy.stall(f"/blobs/{stalled.digest}", after=len(stalled.blob) // 2, seconds=60)
    done = interrupt_when_stalled(
        fault_proxy, stalled.digest, ["index", f"{fault_proxy.host}/team/stall:1"]
    )
    assert done.returncode == 130
    assert done.stderr.strip() == "Error: interrupted; nothing of an unfinished layer was kept"
    if layers != "big and small":  # the other layer may be done already
        assert count_rows(home, entries) == 0


def test_a_database_failing_mid_layer_is_an_error_message_and_keeps_nothing(
    registry: RegistryServer, db_url: str, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real failure of each database while a layer is written: SQLite's disk full (a page
    # limit), PostgreSQL's connection ended by the server (an administrator, a restart).
    from layerindex.index.store import Store

    registry.push("team/app", "1.0", APP)
    ref = f"{registry.host}/team/app:1.0"
    write_entries = Store._write_entries

    def failing(self: Store, connection: Any, *args: Any) -> int:
        if connection.dialect.name == "sqlite":  # the file may not grow, and this write must
            pages = connection.exec_driver_sql("PRAGMA page_count").scalar()
            connection.exec_driver_sql(f"PRAGMA max_page_count = {pages}")
            connection.exec_driver_sql("INSERT INTO names (name) VALUES (?)", ("x" * 10**6,))
        else:
            connection.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")
        return write_entries(self, connection, *args)

    monkeypatch.setattr(Store, "_write_entries", failing)
    result = run("--db", db_url, "index", ref)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    reason = "full" if db_url.startswith("sqlite") else "terminating connection"
    assert result.stderr.startswith("Error: the database failed: ")
    assert reason in result.stderr, result.stderr
    monkeypatch.setattr(Store, "_write_entries", write_entries)
    again = run("--db", db_url, "index", ref)
    assert again.exit_code == 0, again.output
    assert index_line(ref, APP.digest, "linux/amd64", (3, 0, 0, 0), 13) == again.stdout


def test_a_reader_that_leaves_early_is_not_an_error(registry: RegistryServer, home: Path) -> None:
    # `layerindex find … | head -1`: the rest of the output has nowhere to go.
    many = make_image([make_layer({f"/srv/data/file{i:05d}": b"" for i in range(3000)})])
    registry.push("team/many", "1", many)
    command = [sys.executable, "-m", "layerindex"]
    subprocess.run([*command, "index", f"{registry.host}/team/many:1"], check=True, timeout=60)
    process = subprocess.Popen(
        [*command, "find", "--contains", "/srv/data/"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline()
    process.stdout.close()
    with process.stderr:
        assert process.wait(timeout=60) == 0
        assert process.stderr.read() == ""
