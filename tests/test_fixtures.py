"""The test fixtures are real: images build as specified, registries store and serve them, auth
is enforced, blobs redirect to another host, and each fault rule does what it says.

Plain ``requests`` only: nothing here uses layerindex itself."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from typing import Any

import pytest
import registry_server
import requests
import zstandard
from faults import FaultProxy
from images import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    SCHEMA1_SIGNED,
    History,
    Image,
    chardev,
    directory,
    fifo,
    file,
    hardlink,
    make_image,
    make_index,
    make_layer,
    make_tar,
    opaque,
    sha256,
    symlink,
    whiteout,
)
from registry_server import BasicRegistry, BlobServer, HubRegistry, RegistryServer
from token_server import PASSWORD, SERVICE, USERNAME, TokenServer, TokenSigner

ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])

IMAGE = make_image(
    [
        make_layer({"/usr/bin/kubectl": b"kubectl " * 4000}),
        make_layer({"/etc/os-release": b"ID=test\n"}, "zstd"),
    ]
)


def names(tar: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return archive.getnames()


def challenge(response: requests.Response) -> dict[str, str]:
    header = response.headers["WWW-Authenticate"]
    scheme, _, rest = header.partition(" ")
    params = dict(part.split("=", 1) for part in rest.split(","))
    return {"scheme": scheme} | {k: v.strip('"') for k, v in params.items()}


# --- images ----------------------------------------------------------------------------------


def test_layers_are_deterministic_and_digests_cover_blob_and_tar() -> None:
    files = {"/usr/bin/kubectl": b"binary"}
    gz, zst, plain = (make_layer(files, c) for c in ("gzip", "zstd", "none"))
    assert make_layer(files) == gz
    assert gzip.decompress(gz.blob) == gz.tar == zst.tar == plain.tar == plain.blob
    assert zstandard.ZstdDecompressor().decompress(zst.blob) == zst.tar
    assert (gz.digest, gz.diff_id) == (sha256(gz.blob), sha256(gz.tar))
    assert gz.diff_id == zst.diff_id != gz.digest != zst.digest
    assert gz.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert zst.media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert plain.media_type == "application/vnd.oci.image.layer.v1.tar"
    docker = make_layer(files, style="docker")
    assert docker.media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    assert gz.blob[4:8] == b"\0\0\0\0"  # gzip mtime 0


def test_tar_members_names_types_and_prefix() -> None:
    members = [
        directory("/usr/bin"),
        file("/usr/bin/x", b"x", mode=0o755),
        symlink("/usr/bin/y", "x"),
        hardlink("/usr/bin/z", "/usr/bin/x"),
        whiteout("/etc/passwd"),
        opaque("/var/cache"),
        fifo("/run/pipe"),
        chardev("/dev/null", 1, 3),
        file(b"/odd/\xff\xfe", b"raw"),
    ]
    docker = make_tar(members)
    assert names(docker) == [
        "./usr/bin",
        "./usr/bin/x",
        "./usr/bin/y",
        "./usr/bin/z",
        "./etc/.wh.passwd",
        "./var/cache/.wh..wh..opq",
        "./run/pipe",
        "./dev/null",
        "./odd/\udcff\udcfe",
    ]
    assert names(make_tar(members, prefix=""))[:2] == ["usr/bin", "usr/bin/x"]
    with tarfile.open(fileobj=io.BytesIO(docker)) as archive:
        infos = archive.getmembers()
        assert [i.type for i in infos[:8]] == [
            tarfile.DIRTYPE,
            tarfile.REGTYPE,
            tarfile.SYMTYPE,
            tarfile.LNKTYPE,
            tarfile.REGTYPE,
            tarfile.REGTYPE,
            tarfile.FIFOTYPE,
            tarfile.CHRTYPE,
        ]
        assert infos[3].linkname == "./usr/bin/x"
        assert (infos[7].devmajor, infos[7].devminor) == (1, 3)
        assert {i.mtime for i in infos} == {1700000000}
        assert oct(infos[1].mode) == "0o755"
    assert b"/odd/\xff\xfe" in docker  # raw bytes, not re-encoded


def test_image_config_and_index_platforms() -> None:
    layer = make_layer({"/a": b"a"})
    image = make_image(
        [layer],
        platform="linux/arm64/v8",
        style="docker",
        history=[History("ENV A=1", empty_layer=True), "COPY a /a"],
        labels={"org.opencontainers.image.source": "test"},
        env=["A=1"],
        entrypoint=["/a"],
        cmd=["--help"],
    )
    config = json.loads(image.config)
    assert (config["os"], config["architecture"], config["variant"]) == ("linux", "arm64", "v8")
    assert config["rootfs"] == {"type": "layers", "diff_ids": [layer.diff_id]}
    assert config["config"] == {
        "Env": ["A=1"],
        "Entrypoint": ["/a"],
        "Cmd": ["--help"],
        "Labels": {"org.opencontainers.image.source": "test"},
    }
    assert [h.get("empty_layer", False) for h in config["history"]] == [True, False]
    manifest = json.loads(image.manifest)
    assert manifest["mediaType"] == image.manifest_media_type == DOCKER_MANIFEST
    assert manifest["config"] == {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "digest": sha256(image.config),
        "size": len(image.config),
    }
    assert image.digest == sha256(image.manifest)
    index = make_index([IMAGE, image], style="docker")
    body = json.loads(index.manifest)
    assert body["mediaType"] == index.media_type == DOCKER_LIST
    assert [m["platform"] for m in body["manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    with pytest.raises(ValueError, match="2 non-empty history entries for 1 layers"):
        make_image([layer], history=["a", "b"])


# --- plain registry --------------------------------------------------------------------------


def fetch_manifest(
    url: str, repo: str, ref: str, *, token: str | None = None, **kwargs: Any
) -> requests.Response:
    headers = {"Accept": ACCEPT} | ({"Authorization": f"Bearer {token}"} if token else {})
    return requests.get(f"{url}/v2/{repo}/manifests/{ref}", headers=headers, timeout=10, **kwargs)


def test_plain_registry_serves_what_was_pushed(registry: RegistryServer) -> None:
    assert registry.push("fixtures/plain", "v1", IMAGE) == IMAGE.digest
    manifest = fetch_manifest(registry.url, "fixtures/plain", "v1")
    assert manifest.status_code == 200
    assert manifest.content == IMAGE.manifest
    assert manifest.headers["Content-Type"] == OCI_MANIFEST
    assert manifest.headers["Docker-Content-Digest"] == IMAGE.digest
    layer = IMAGE.layers[0]
    blob = requests.get(f"{registry.url}/v2/fixtures/plain/blobs/{layer.digest}", timeout=10)
    assert blob.status_code == 200
    assert blob.content == layer.blob
    ranged = requests.get(
        f"{registry.url}/v2/fixtures/plain/blobs/{layer.digest}",
        headers={"Range": "bytes=0-1"},
        timeout=10,
    )
    assert (ranged.status_code, ranged.content) == (206, b"\x1f\x8b")


def test_index_is_pushed_with_its_children(registry: RegistryServer) -> None:
    arm = make_image([make_layer({"/arm": b"arm"})], platform="linux/arm64/v8")
    index = make_index([IMAGE, arm])
    assert registry.push("fixtures/multi", "latest", index) == index.digest
    listed = fetch_manifest(registry.url, "fixtures/multi", "latest")
    assert (listed.status_code, listed.content) == (200, index.manifest)
    assert listed.headers["Content-Type"] == OCI_INDEX
    child = fetch_manifest(registry.url, "fixtures/multi", arm.digest)
    assert (child.status_code, child.content) == (200, arm.manifest)


def test_push_by_digest_and_skip_existing_blobs(
    registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert registry.push("fixtures/bydigest", None, IMAGE) == IMAGE.digest
    assert registry.has_blob("fixtures/bydigest", IMAGE.config_digest)
    methods: list[str] = []
    send = registry._pusher.request

    def counting(method: str, url: str, **kwargs: object) -> requests.Response:
        methods.append(method)
        return send(method, url, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(registry._pusher, "request", counting)
    assert registry.push("fixtures/bydigest", None, IMAGE) == IMAGE.digest
    assert methods == ["HEAD", "HEAD", "HEAD", "PUT"]  # two layers and the config were there
    by_digest = fetch_manifest(registry.url, "fixtures/bydigest", IMAGE.digest)
    assert (by_digest.status_code, by_digest.content) == (200, IMAGE.manifest)
    tags = requests.get(f"{registry.url}/v2/fixtures/bydigest/tags/list", timeout=10)
    assert tags.status_code == 404  # no tag, so distribution 2.8 says NAME_UNKNOWN
    assert tags.json()["errors"][0]["code"] == "NAME_UNKNOWN"


def test_registry_refuses_schema1_pushes(registry: RegistryServer) -> None:
    body = json.dumps({"schemaVersion": 1, "name": "fixtures/s1", "tag": "v1", "fsLayers": []})
    response = registry.push_raw_manifest("fixtures/s1", "v1", body.encode(), SCHEMA1_SIGNED)
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "MANIFEST_INVALID"


def test_missing_binary_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry_server, "BINARY", "/nonexistent/docker-registry")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: registry tests must run"):
        registry_server.require_binary()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install docker-registry"):
        registry_server.require_binary()


# --- basic auth ------------------------------------------------------------------------------


def test_basic_registry_checks_the_password(basic_registry: BasicRegistry) -> None:
    basic_registry.push("fixtures/basic", "v1", IMAGE)
    anonymous = fetch_manifest(basic_registry.url, "fixtures/basic", "v1")
    assert anonymous.status_code == 401
    assert challenge(anonymous) == {"scheme": "Basic", "realm": "layerindex-basic"}
    wrong = fetch_manifest(
        basic_registry.url, "fixtures/basic", "v1", auth=(basic_registry.username, "wrong")
    )
    assert wrong.status_code == 401
    right = fetch_manifest(
        basic_registry.url,
        "fixtures/basic",
        "v1",
        auth=(basic_registry.username, basic_registry.password),
    )
    assert (right.status_code, right.content) == (200, IMAGE.manifest)


# --- token auth ------------------------------------------------------------------------------


def get_token(challenge_params: dict[str, str], auth: tuple[str, str] | None = None) -> str:
    response = requests.get(
        challenge_params["realm"],
        params={"service": challenge_params["service"], "scope": challenge_params["scope"]},
        auth=auth,
        timeout=10,
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    return str(body["token"])


def test_token_flow(hub_registry: HubRegistry, token_server: TokenServer) -> None:
    hub_registry.push("fixtures/hub", "v1", IMAGE)
    token_server.reset()  # forget the push helper's request
    first = fetch_manifest(hub_registry.url, "fixtures/hub", "v1")
    assert first.status_code == 401
    params = challenge(first)
    assert params == {
        "scheme": "Bearer",
        "realm": token_server.realm,
        "service": SERVICE,
        "scope": "repository:fixtures/hub:pull",
    }
    token = get_token(params)
    second = fetch_manifest(hub_registry.url, "fixtures/hub", "v1", token=token)
    assert (second.status_code, second.content) == (200, IMAGE.manifest)
    assert token_server.count == 1
    assert token_server.requests[0].scopes == ("repository:fixtures/hub:pull",)
    assert token_server.requests[0].username is None


def bearer(token: str) -> dict[str, str]:
    return {"Accept": ACCEPT, "Authorization": f"Bearer {token}"}


def test_registry_rejects_tokens_it_cannot_trust(
    hub_registry: HubRegistry, token_server: TokenServer
) -> None:
    hub_registry.push("fixtures/hub", "v1", IMAGE)
    url = f"{hub_registry.url}/v2/fixtures/hub/manifests/v1"
    access = [{"type": "repository", "name": "fixtures/hub", "actions": ["pull"]}]
    good = token_server.signer.token(access)
    assert requests.get(url, headers=bearer(good), timeout=10).status_code == 200
    stranger = TokenSigner().token(access)
    wrong_audience = token_server.signer.token(access, audience="elsewhere")
    head, claims, _signature = good.split(".")
    unsigned = f"{head}.{claims}."
    for token in (stranger, wrong_audience, unsigned):
        assert requests.get(url, headers=bearer(token), timeout=10).status_code == 401


def test_private_repository_needs_credentials(
    hub_registry: HubRegistry, token_server: TokenServer
) -> None:
    hub_registry.push("private/app", "v1", IMAGE)
    url = f"{hub_registry.url}/v2/private/app/manifests/v1"
    params = challenge(requests.get(url, headers={"Accept": ACCEPT}, timeout=10))
    anonymous = requests.get(url, headers=bearer(get_token(params)), timeout=10)
    assert anonymous.status_code == 401
    assert challenge(anonymous)["error"] == "insufficient_scope"
    reader = requests.get(url, headers=bearer(get_token(params, (USERNAME, PASSWORD))), timeout=10)
    assert (reader.status_code, reader.content) == (200, IMAGE.manifest)
    refused = requests.get(
        params["realm"], params={"service": SERVICE}, auth=(USERNAME, "wrong"), timeout=10
    )
    assert refused.status_code == 401
    assert [r.username for r in token_server.requests[-3:]] == [None, USERNAME, USERNAME]
    assert [r.status for r in token_server.requests[-3:]] == [200, 200, 401]


def test_token_without_expires_in(token_server: TokenServer) -> None:
    token_server.expires_in = None
    body = requests.get(token_server.realm, params={"service": SERVICE}, timeout=10).json()
    assert set(body) == {"token", "access_token", "issued_at"}


# --- blob redirects --------------------------------------------------------------------------


def test_blob_get_redirects_to_another_host_that_refuses_authorization(
    hub_registry: HubRegistry, blob_server: BlobServer
) -> None:
    hub_registry.push("fixtures/hub", "v1", IMAGE)
    layer = IMAGE.layers[0]
    access = [{"type": "repository", "name": "fixtures/hub", "actions": ["pull"]}]
    auth = {"Authorization": f"Bearer {hub_registry.token_server.signer.token(access)}"}
    url = f"{hub_registry.url}/v2/fixtures/hub/blobs/{layer.digest}"
    redirect = requests.get(url, headers=auth, allow_redirects=False, timeout=10)
    assert redirect.status_code == 307
    hex_digest = layer.digest.removeprefix("sha256:")
    location = redirect.headers["Location"]
    assert location == (
        f"{blob_server.url}/docker/registry/v2/blobs/sha256/{hex_digest[:2]}/{hex_digest}/data"
    )
    assert blob_server.host.split(":")[0] != "127.0.0.1"

    forwarded = requests.get(location, headers=auth, timeout=10)
    assert forwarded.status_code == 400
    assert b"Only one auth mechanism allowed" in forwarded.content
    plain = requests.get(location, timeout=10)
    assert (plain.status_code, plain.content) == (200, layer.blob)
    # requests itself drops Authorization when a redirect changes host
    followed = requests.get(url, headers=auth, timeout=10)
    assert (followed.status_code, followed.content) == (200, layer.blob)
    assert [r.status for r in blob_server.requests] == [400, 200, 200]
    assert "Authorization" not in blob_server.requests[2].headers
    assert blob_server.bytes_served == 2 * layer.size + len(forwarded.content)


def test_blob_server_ranges(hub_registry: HubRegistry, blob_server: BlobServer) -> None:
    hub_registry.push("fixtures/hub", "v1", IMAGE)
    layer = IMAGE.layers[0]
    hex_digest = layer.digest.removeprefix("sha256:")
    url = f"{blob_server.url}/docker/registry/v2/blobs/sha256/{hex_digest[:2]}/{hex_digest}/data"
    part = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=10)
    assert (part.status_code, part.content) == (206, layer.blob[10:20])
    assert part.headers["Content-Range"] == f"bytes 10-19/{layer.size}"
    tail = requests.get(url, headers={"Range": "bytes=-5"}, timeout=10)
    assert (tail.status_code, tail.content) == (206, layer.blob[-5:])
    beyond = requests.get(url, headers={"Range": f"bytes={layer.size}-"}, timeout=10)
    assert beyond.status_code == 416
    blob_server.ranges = False
    whole = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=10)
    assert (whole.status_code, whole.content) == (200, layer.blob)
    assert blob_server.bytes_served == 10 + 5 + layer.size


# --- fault proxy -----------------------------------------------------------------------------


def blob_url(proxy: FaultProxy, repo: str, image: Image = IMAGE) -> str:
    return f"{proxy.url}/v2/{repo}/blobs/{image.layers[0].digest}"


def test_rate_limit_then_pass(fault_proxy: FaultProxy) -> None:
    fault_proxy.push("fixtures/faults", "v1", IMAGE)
    fault_proxy.rate_limit(r"/manifests/", retry_after=7, times=2)
    answers = [fetch_manifest(fault_proxy.url, "fixtures/faults", "v1") for _ in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 200]
    assert answers[0].headers["Retry-After"] == "7"
    assert answers[2].content == IMAGE.manifest
    assert [r.rule for r in fault_proxy.seen("/manifests/")] == ["status 429", "status 429", None]


def test_unavailable_then_pass_only_for_its_method(fault_proxy: FaultProxy) -> None:
    fault_proxy.push("fixtures/faults", "v1", IMAGE)
    fault_proxy.unavailable(r"/manifests/v1$", method="GET")
    url = f"{fault_proxy.url}/v2/fixtures/faults/manifests/v1"
    head = requests.head(url, headers={"Accept": ACCEPT}, timeout=10)
    assert head.status_code == 200
    assert head.headers["Docker-Content-Digest"] == IMAGE.digest
    assert head.headers["Content-Length"] == str(len(IMAGE.manifest))
    assert requests.get(url, timeout=10).status_code == 503
    assert fetch_manifest(fault_proxy.url, "fixtures/faults", "v1").status_code == 200


def test_cut_mid_blob_then_resume_with_range(fault_proxy: FaultProxy) -> None:
    fault_proxy.push("fixtures/faults", "v1", IMAGE)
    blob = IMAGE.layers[0].blob
    fault_proxy.cut(r"/blobs/sha256:", after=100)
    with requests.get(blob_url(fault_proxy, "fixtures/faults"), stream=True, timeout=10) as cut:
        assert cut.headers["Content-Length"] == str(len(blob))
        received = bytearray()
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            for chunk in cut.iter_content(10):  # 100 is a multiple: no partial chunk lost
                received += chunk
    assert bytes(received) == blob[:100]
    rest = requests.get(
        blob_url(fault_proxy, "fixtures/faults"), headers={"Range": "bytes=100-"}, timeout=10
    )
    assert rest.status_code == 206
    assert bytes(received) + rest.content == blob


def test_corrupt_keeps_length_changes_digest(fault_proxy: FaultProxy) -> None:
    fault_proxy.push("fixtures/faults", "v1", IMAGE)
    fault_proxy.corrupt(r"/blobs/sha256:")
    body = requests.get(blob_url(fault_proxy, "fixtures/faults"), timeout=10).content
    layer = IMAGE.layers[0]
    assert len(body) == layer.size
    assert sha256(body) != layer.digest


def test_html_page_and_custom_schema1_answer(fault_proxy: FaultProxy) -> None:
    fault_proxy.html_page(r"/manifests/html$")
    page = fetch_manifest(fault_proxy.url, "fixtures/faults", "html")
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.content.startswith(b"<!DOCTYPE html>")
    schema1 = b'{"schemaVersion": 1, "name": "fixtures/faults", "fsLayers": []}'
    fault_proxy.respond(
        r"/manifests/old$",
        body=schema1,
        headers={"Content-Type": SCHEMA1_SIGNED, "Docker-Content-Digest": sha256(schema1)},
    )
    old = fetch_manifest(fault_proxy.url, "fixtures/faults", "old")
    assert (old.status_code, old.content) == (200, schema1)
    assert old.headers["Content-Type"] == SCHEMA1_SIGNED


def test_hang_outlasts_a_client_timeout(fault_proxy: FaultProxy) -> None:
    fault_proxy.hang(r"/v2/$", seconds=5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{fault_proxy.url}/v2/", timeout=0.3)
    assert requests.get(f"{fault_proxy.url}/v2/", timeout=10).status_code == 200


def test_proxy_records_authorization(hub_fault_proxy: FaultProxy) -> None:
    hub_fault_proxy.push("fixtures/hub", "v1", IMAGE)
    access = [{"type": "repository", "name": "fixtures/hub", "actions": ["pull"]}]
    token = hub_fault_proxy.upstream.token_server.signer.token(access)  # type: ignore[attr-defined]
    anonymous = fetch_manifest(hub_fault_proxy.url, "fixtures/hub", "v1")
    assert anonymous.status_code == 401
    signed_in = requests.get(
        f"{hub_fault_proxy.url}/v2/fixtures/hub/manifests/v1", headers=bearer(token), timeout=10
    )
    assert signed_in.status_code == 200
    seen = hub_fault_proxy.seen(r"/manifests/v1$")
    assert ["Authorization" in r.headers for r in seen] == [False, True]
    assert seen[1].headers["authorization"] == f"Bearer {token}"
