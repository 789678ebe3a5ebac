"""RegistryClient against real registries (anonymous, token + redirects, htpasswd) and the fault
proxy for what a real registry will not do on demand."""

from __future__ import annotations

import hashlib
import json
import logging
import socket

import pytest
from faults import FaultProxy
from images import SCHEMA1_SIGNED, make_image, make_index, make_layer, sha256
from registry_server import BasicRegistry, BlobServer, HubRegistry, RegistryServer
from token_server import PASSWORD, SERVICE, USERNAME, TokenServer

from layerindex.errors import (
    AuthError,
    DigestMismatch,
    NotFound,
    RateLimited,
    RegistryError,
    UnsupportedManifest,
)
from layerindex.reference import parse_reference
from layerindex.registry.client import RegistryClient
from layerindex.registry.credentials import Credentials, Keychain, StaticKeychain
from layerindex.registry.manifest import ImageIndex, ImageManifest, parse_config, parse_manifest
from layerindex.registry.transport import is_loopback, loggable_url

# incompressible, so the blob is big enough to cut in the middle
KUBECTL = make_layer(
    {"/usr/bin/kubectl": b"".join(hashlib.sha256(bytes([i])).digest() for i in range(256)) * 8}
)
BASE = make_layer({"/etc/os-release": b"ID=test\n"}, compression="zstd")
IMAGE = make_image([BASE, KUBECTL])
ARM_IMAGE = make_image([KUBECTL], platform="linux/arm64/v8", style="docker")
INDEX = make_index([IMAGE, ARM_IMAGE])
NOBODY = Keychain([])  # no credentials, whatever the machine has


def client(keychain: Keychain = NOBODY, **kwargs: object) -> RegistryClient:
    return RegistryClient(keychain=keychain, **kwargs)  # type: ignore[arg-type]


def read_blob(reg: RegistryClient, text: str, digest: str) -> bytes:
    with reg.open_blob(parse_reference(text), digest) as stream:
        chunks = []
        while chunk := stream.read(4096):
            chunks.append(chunk)
    return b"".join(chunks)


# --- pure helpers -----------------------------------------------------------------------------


def test_loopback_and_loggable_urls() -> None:
    for host in ("localhost", "localhost:5000", "127.0.0.1:5000", "127.9.9.9", "[::1]:5000"):
        assert is_loopback(host), host
    for host in ("ghcr.io", "10.0.0.1:5000", "[2001:db8::1]:5000", "localhost.example"):
        assert not is_loopback(host), host
    assert (
        loggable_url(
            "https://user:pw@cdn.example/blobs/sha256:ab/data?verify=1700-abc&sig=s3cr3t#frag"
        )
        == "https://cdn.example/blobs/sha256:ab/data"
    )
    assert client(insecure={"Reg.Example:5000"})._base_url("reg.example:5000") == (
        "http://reg.example:5000"
    )
    assert client()._base_url("ghcr.io") == "https://ghcr.io"
    assert client()._base_url("localhost:5000") == "http://localhost:5000"


# --- anonymous registry -----------------------------------------------------------------------


def test_anonymous_manifest_config_blob_head_and_tags(registry: RegistryServer) -> None:
    registry.push("test/app", "1", IMAGE)
    reg = client()
    ref = parse_reference(f"{registry.host}/test/app:1")
    fetched = reg.get_manifest(ref)
    assert fetched.body == IMAGE.manifest
    assert fetched.media_type == "application/vnd.oci.image.manifest.v1+json"
    assert fetched.digest == IMAGE.digest
    assert fetched.source == f"{registry.host}/test/app:1"
    assert reg.head_manifest(ref) == IMAGE.digest
    manifest = parse_manifest(fetched)
    assert isinstance(manifest, ImageManifest)
    config_bytes = reg.get_blob_bytes(ref, manifest.config.digest, 1 << 20)
    assert config_bytes == IMAGE.config
    assert parse_config(config_bytes, manifest).diff_ids == (BASE.diff_id, KUBECTL.diff_id)
    assert read_blob(reg, str(ref), KUBECTL.digest) == KUBECTL.blob
    assert read_blob(reg, str(ref), BASE.digest) == BASE.blob
    # by digest too
    assert reg.get_manifest(ref.with_digest(IMAGE.digest)).body == IMAGE.manifest


def test_tags_follow_link_pagination(fault_proxy: FaultProxy) -> None:
    # distribution 2.8 ignores n, so the proxy plays a paginating registry (spec.md Link)
    json_type = {"Content-Type": "application/json"}
    fault_proxy.respond(
        r"/tags/list$",
        body=b'{"name": "test/paged", "tags": ["a", "b"]}',
        headers={**json_type, "Link": '</v2/test/paged/tags/list?n=1000&last=b>; rel="next"'},
        times=1,
    )
    fault_proxy.respond(
        r"/tags/list$",
        body=b'{"name": "test/paged", "tags": ["c"]}',
        headers={
            **json_type,
            "Link": f'<{fault_proxy.url}/v2/test/paged/tags/list?n=1000&last=c>; rel="next"',
        },
        times=1,
    )
    fault_proxy.respond(
        r"/tags/list$", body=b'{"name": "test/paged", "tags": null}', headers=json_type, times=1
    )
    tags = list(client().list_tags(parse_reference(f"{fault_proxy.host}/test/paged")))
    assert tags == ["a", "b", "c"]
    assert [r.path for r in fault_proxy.seen(r"/tags/list$")] == [
        "/v2/test/paged/tags/list?n=1000",
        "/v2/test/paged/tags/list?n=1000&last=b",
        "/v2/test/paged/tags/list?n=1000&last=c",
    ]


def test_missing_tag_blob_and_repository(registry: RegistryServer) -> None:
    registry.push("test/app", "1", IMAGE)
    reg = client()
    with pytest.raises(NotFound) as caught:
        reg.get_manifest(parse_reference(f"{registry.host}/test/app:3.99"))
    assert str(caught.value) == f"manifest unknown: tag 3.99 not found in {registry.host}/test/app"
    missing = "sha256:" + "0" * 64
    with pytest.raises(NotFound) as blob:
        reg.get_blob_bytes(parse_reference(f"{registry.host}/test/app"), missing, 100)
    assert str(blob.value) == (
        f"blob unknown to registry: blob {missing} not found in {registry.host}/test/app"
    )
    with pytest.raises(NotFound) as head:
        reg.head_manifest(parse_reference(f"{registry.host}/test/app:3.99"))
    assert str(head.value) == f"tag 3.99 not found in {registry.host}/test/app"
    with pytest.raises(NotFound) as tags:
        list(reg.list_tags(parse_reference(f"{registry.host}/test/nothing")))
    assert str(tags.value) == (
        f"repository name not known to registry: repository {registry.host}/test/nothing not found"
    )


def test_index_then_platform_manifest(registry: RegistryServer) -> None:
    from layerindex.registry.manifest import select_platforms

    registry.push("test/multi", "1", INDEX)
    reg = client()
    ref = parse_reference(f"{registry.host}/test/multi:1")
    index = parse_manifest(reg.get_manifest(ref))
    assert isinstance(index, ImageIndex)
    assert index.digest == INDEX.digest
    (arm,) = select_platforms(index, "linux/arm64")
    child = parse_manifest(reg.get_manifest(ref.with_digest(arm.digest)))
    assert isinstance(child, ImageManifest)
    assert child.digest == ARM_IMAGE.digest
    assert child.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert [d.digest for d in select_platforms(index, "all")] == [IMAGE.digest, ARM_IMAGE.digest]


def test_connection_refused_names_the_host() -> None:
    waits: list[float] = []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(RegistryError) as caught:
            client(sleep=waits.append, jitter=lambda: 0.5).get_manifest(
                parse_reference(f"127.0.0.1:{port}/x:1")
            )
    # the operating system's words, not urllib3's HTTPConnection(host=…) or a repr at 0x…
    assert str(caught.value) == (
        f"cannot connect to 127.0.0.1:{port}: connection refused (tried 5 times)"
    )
    assert waits == [0.25, 0.5, 1.0, 2.0]  # refused is retried: a registry may be restarting


# --- faults -----------------------------------------------------------------------------------


def test_digest_mismatch_by_reference_and_by_header(fault_proxy: FaultProxy) -> None:
    fault_proxy.push("test/app", "1", IMAGE)
    other = make_image([KUBECTL])
    reg = client()
    pinned = parse_reference(f"{fault_proxy.host}/test/app@{IMAGE.digest}")
    fault_proxy.respond(
        r"/manifests/sha256:",
        body=other.manifest,
        headers={"Content-Type": other.manifest_media_type},
        times=1,
    )
    with pytest.raises(DigestMismatch) as caught:
        reg.get_manifest(pinned)
    assert str(caught.value) == (
        f"{fault_proxy.host}/test/app@{IMAGE.digest}: the registry served a manifest whose "
        f"digest is {other.digest}"
    )
    fault_proxy.respond(
        r"/manifests/1$",
        body=other.manifest,
        headers={"Content-Type": other.manifest_media_type, "Docker-Content-Digest": IMAGE.digest},
        times=1,
    )
    with pytest.raises(DigestMismatch) as header:
        reg.get_manifest(parse_reference(f"{fault_proxy.host}/test/app:1"))
    assert str(header.value) == (
        f"{fault_proxy.host}/test/app:1: Docker-Content-Digest says {IMAGE.digest} but the "
        f"manifest's digest is {other.digest}"
    )
    fault_proxy.corrupt(r"/blobs/", times=1)
    with pytest.raises(DigestMismatch) as blob:
        reg.get_blob_bytes(pinned, IMAGE.config_digest, 1 << 20)
    flipped = sha256(bytes(b ^ 0xFF for b in IMAGE.config))
    assert str(blob.value) == (
        f"blob {IMAGE.config_digest} of {fault_proxy.host}/test/app@{IMAGE.digest}: the bytes "
        f"received have digest {flipped}"
    )


def test_html_page_is_a_clear_error(fault_proxy: FaultProxy) -> None:
    fault_proxy.push("test/app", "1", IMAGE)
    fault_proxy.html_page(r"/manifests/1$")
    with pytest.raises(RegistryError) as caught:
        client().get_manifest(parse_reference(f"{fault_proxy.host}/test/app:1"))
    assert str(caught.value) == (
        f"{fault_proxy.host}/test/app:1: the registry returned an HTML page instead of a manifest"
    )


def test_schema1_is_refused(fault_proxy: FaultProxy) -> None:
    schema1 = b'{"schemaVersion": 1, "name": "test/old", "tag": "1", "fsLayers": []}'
    fault_proxy.respond(
        r"/manifests/1$",
        body=schema1,
        headers={"Content-Type": SCHEMA1_SIGNED, "Docker-Content-Digest": sha256(schema1)},
    )
    fetched = client().get_manifest(parse_reference(f"{fault_proxy.host}/test/old:1"))
    assert fetched.media_type == SCHEMA1_SIGNED
    with pytest.raises(UnsupportedManifest) as caught:
        parse_manifest(fetched)
    assert str(caught.value) == (
        f"{fault_proxy.host}/test/old:1 is a Docker image manifest schema 1, which is deprecated "
        "and not supported; re-push the image with a current docker or buildah to convert it"
    )
    accept = fault_proxy.seen(r"/manifests/1$")[0].headers["Accept"]
    assert accept == (
        "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
        "application/vnd.docker.distribution.manifest.list.v2+json, "
        "application/vnd.docker.distribution.manifest.v2+json, "
        "application/vnd.docker.distribution.manifest.v1+prettyjws, "
        "application/vnd.docker.distribution.manifest.v1+json"
    )


def test_rate_limited_and_unavailable(fault_proxy: FaultProxy) -> None:
    fault_proxy.push("test/app", "1", IMAGE)
    host = fault_proxy.host
    ref = parse_reference(f"{host}/test/app:1")
    fault_proxy.rate_limit(r"/manifests/1$", retry_after=7)
    waits: list[float] = []
    with pytest.raises(RateLimited) as limited:
        client(max_retry_after=5, sleep=waits.append).get_manifest(ref)
    assert limited.value.retry_after == 7.0
    assert str(limited.value) == (
        f"{host} rate limit reached (429) fetching manifest of {host}/test/app:1; try again in "
        f"7 s; log in with `docker login {host}` or `podman login {host}` if the registry gives "
        "accounts a higher limit"
    )
    assert waits == []
    fault_proxy.status(r"/manifests/1$", 503, times=None, body=b"service unavailable")
    with pytest.raises(RegistryError) as unavailable:
        client(retries=1, sleep=waits.append).get_manifest(ref)
    assert type(unavailable.value) is RegistryError
    assert str(unavailable.value) == (
        f"{host} answered 503 Service Unavailable for manifest of {host}/test/app:1 (tried 2 times)"
    )
    assert len(waits) == 1


def test_cut_mid_blob_every_time(fault_proxy: FaultProxy) -> None:
    fault_proxy.push("test/app", "1", IMAGE)
    fault_proxy.cut(r"/blobs/", after=1000, times=6)  # the first answer and 5 resumes
    with pytest.raises(RegistryError) as caught:
        read_blob(client(sleep=lambda _: None), f"{fault_proxy.host}/test/app", KUBECTL.digest)
    message = str(caught.value)
    assert message.startswith(
        f"blob {KUBECTL.digest} of {fault_proxy.host}/test/app:latest from {fault_proxy.host}: "
        "connection lost after 6000 bytes (resumed 5 times): "
    )
    ranges = [r.headers.get("Range") for r in fault_proxy.seen(r"/blobs/")]
    assert ranges == [
        None,
        "bytes=1000-",
        "bytes=2000-",
        "bytes=3000-",
        "bytes=4000-",
        "bytes=5000-",
    ]


def test_read_timeout(fault_proxy: FaultProxy) -> None:
    fault_proxy.hang(r"/v2/$", seconds=5, times=None)
    with pytest.raises(RegistryError) as caught:
        client(read_timeout=0.3, retries=1, sleep=lambda _: None).get_manifest(
            parse_reference(f"{fault_proxy.host}/x:1")
        )
    assert str(caught.value).startswith(f"timed out talking to {fault_proxy.host}: ")
    assert str(caught.value).endswith(" (tried 2 times)")


# --- token auth, like Docker Hub --------------------------------------------------------------


def test_token_flow_caches_tokens_and_redirects_blobs_without_authorization(
    hub_registry: HubRegistry,
    token_server: TokenServer,
    blob_server: BlobServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub_registry.push("test/app", "1", IMAGE)
    token_server.reset()
    caplog.set_level(logging.DEBUG, logger="layerindex")
    now = [1000.0]
    reg = client(clock=lambda: now[0])
    ref = parse_reference(f"{hub_registry.host}/test/app:1")
    assert reg.get_manifest(ref).body == IMAGE.manifest
    assert reg.get_blob_bytes(ref, IMAGE.config_digest, 1 << 20) == IMAGE.config
    assert read_blob(reg, str(ref), KUBECTL.digest) == KUBECTL.blob
    assert reg.head_manifest(ref) == IMAGE.digest
    # one token for the repository's pull scope, reused
    assert [(r.service, r.scopes, r.username) for r in token_server.requests] == [
        (SERVICE, ("repository:test/app:pull",), None)
    ]
    # the blobs came from the other host, which answers 400 to any Authorization header
    assert [(r.status, "Authorization" in r.headers) for r in blob_server.requests] == [
        (200, False),
        (200, False),
    ]
    # expires_in 300 minus a 30 s margin: a new token after 270 s
    now[0] += 271
    reg.get_manifest(ref)
    assert token_server.count == 2
    # logs name requests, never credentials
    assert f"GET http://{hub_registry.host}/v2/test/app/manifests/1 -> 200" in caplog.text
    assert f"GET {blob_server.url}/docker/registry/v2/blobs/sha256/" in caplog.text
    assert "Bearer" not in caplog.text and "eyJ" not in caplog.text


def test_token_without_expires_in_lasts_60_seconds(
    hub_registry: HubRegistry, token_server: TokenServer
) -> None:
    hub_registry.push("test/app", "1", IMAGE)
    token_server.reset()
    token_server.expires_in = None
    now = [0.0]
    reg = client(clock=lambda: now[0])
    ref = parse_reference(f"{hub_registry.host}/test/app:1")
    reg.get_manifest(ref)
    now[0] = 53.0
    reg.get_manifest(ref)
    assert token_server.count == 1
    now[0] = 55.0  # 60 s less a 6 s margin
    reg.get_manifest(ref)
    assert token_server.count == 2


def test_revoked_token_is_refreshed_once(
    hub_fault_proxy: FaultProxy, token_server: TokenServer
) -> None:
    hub_fault_proxy.push("test/app", "1", IMAGE)
    token_server.reset()
    reg = client()
    ref = parse_reference(f"{hub_fault_proxy.host}/test/app:1")
    reg.get_manifest(ref)
    challenge = (
        f'Bearer realm="{token_server.realm}",service="{SERVICE}",'
        'scope="repository:test/app:pull",error="invalid_token"'
    )
    hub_fault_proxy.status(r"/manifests/1$", 401, headers={"WWW-Authenticate": challenge})
    assert reg.get_manifest(ref).body == IMAGE.manifest
    assert token_server.count == 2
    seen = hub_fault_proxy.seen(r"/manifests/1$")
    assert [r.rule for r in seen] == [None, "status 401", None]
    # the first two carried the cached token, the retry a new one
    assert seen[0].headers["Authorization"] == seen[1].headers["Authorization"]
    assert seen[1].headers["Authorization"] != seen[2].headers["Authorization"]


def test_same_host_redirect_keeps_authorization(
    hub_fault_proxy: FaultProxy, blob_server: BlobServer
) -> None:
    hub_fault_proxy.push("test/app", "1", IMAGE)
    path = f"/v2/test/app/blobs/{IMAGE.config_digest}"
    hub_fault_proxy.respond(
        f"{path}$",
        status=307,
        body=b"",
        headers={"Location": f"{path}?hop=2"},
        times=1,
    )
    reg = client()
    ref = parse_reference(f"{hub_fault_proxy.host}/test/app:1")
    assert reg.get_blob_bytes(ref, IMAGE.config_digest, 1 << 20) == IMAGE.config
    seen = hub_fault_proxy.seen(f"{path}$")
    assert [(r.path, r.headers["Authorization"].startswith("Bearer ")) for r in seen] == [
        (path, True),
        (f"{path}?hop=2", True),
    ]
    # then the registry's own redirect to the blob host, without it
    assert ["Authorization" in r.headers for r in blob_server.requests] == [False]


def test_private_repository_without_and_with_credentials(
    hub_registry: HubRegistry, token_server: TokenServer
) -> None:
    hub_registry.push("private/app", "1", IMAGE)
    token_server.reset()
    ref = parse_reference(f"{hub_registry.host}/private/app:1")
    with pytest.raises(AuthError) as caught:
        client().get_manifest(ref)
    host = hub_registry.host
    assert str(caught.value) == (
        f"{host}/private/app: the registry requires authentication (401, insufficient_scope) "
        f"and no credentials were found for {host}; log in with `docker login {host}` or "
        f"`podman login {host}`, or check the repository exists (registries such as Docker Hub "
        "answer 401 for a repository that does not exist)"
    )
    reader = StaticKeychain({host: Credentials(USERNAME, PASSWORD)})
    assert client(reader).get_manifest(ref).body == IMAGE.manifest
    assert token_server.requests[-1].username == USERNAME
    wrong = StaticKeychain({host: Credentials(USERNAME, "wrong")})
    with pytest.raises(AuthError) as refused:
        client(wrong).get_manifest(ref)
    assert str(refused.value) == (
        f"the token service {token_server.host} refused the credentials for {host}/private/app "
        f"(401); log in with `docker login {host}` or `podman login {host}`"
    )
    assert "wrong" not in str(refused.value)


# --- htpasswd ---------------------------------------------------------------------------------


def test_basic_auth(basic_registry: BasicRegistry) -> None:
    basic_registry.push("test/app", "1", IMAGE)
    host = basic_registry.host
    ref = parse_reference(f"{host}/test/app:1")
    keychain = Keychain(
        [
            {
                "auths": {
                    host: {"username": basic_registry.username, "password": basic_registry.password}
                }
            }
        ]
    )
    reg = client(keychain)
    assert reg.get_manifest(ref).body == IMAGE.manifest
    assert read_blob(reg, str(ref), KUBECTL.digest) == KUBECTL.blob
    with pytest.raises(AuthError) as caught:
        client().get_manifest(ref)
    assert str(caught.value) == (
        f"{host}/test/app: the registry requires authentication (401) and no credentials were "
        f"found for {host}; log in with `docker login {host}` or `podman login {host}`, or check "
        "the repository exists (registries such as Docker Hub answer 401 for a repository that "
        "does not exist)"
    )
    bad = StaticKeychain({host: Credentials(basic_registry.username, "nope")})
    with pytest.raises(AuthError) as refused:
        client(bad).get_manifest(ref)
    assert str(refused.value) == (
        f"{host}/test/app: the registry refused the credentials for {host} (401); the account "
        f"may not be allowed to pull this repository or it may not exist; check "
        f"`docker login {host}` or `podman login {host}`"
    )


def test_tags_json_is_read(registry: RegistryServer) -> None:
    registry.push("test/one", "only", IMAGE)
    assert list(client().list_tags(parse_reference(f"{registry.host}/test/one"))) == ["only"]
    assert json.loads(IMAGE.manifest)["schemaVersion"] == 2
