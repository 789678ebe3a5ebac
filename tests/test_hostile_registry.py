"""A registry that is out to get us (issue 14): its Link headers, tags, redirects, error text,
token endpoint and blob lengths are data from a stranger, and its connections break (issue 15).

The real test registry behind the fault proxy (``faults.py``) plays each trick; a second proxy
on another port plays "another host" and records what reaches it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import Result
from faults import FaultProxy, Upstream, _ProxyHandler
from images import make_image, make_layer
from registry_server import BasicRegistry

from layerindex.errors import AuthError, DigestMismatch, RegistryError
from layerindex.reference import parse_reference
from layerindex.registry import client as registry_module
from layerindex.registry.client import RegistryClient
from layerindex.registry.credentials import Credentials, Keychain, StaticKeychain

# incompressible, so the blob is long enough to cut and to dribble
BIG = make_layer(
    {"/opt/big.bin": b"".join(hashlib.sha256(i.to_bytes(2, "big")).digest() for i in range(2048))}
)
IMAGE = make_image([BIG])
JSON = {"Content-Type": "application/json"}


def client(keychain: Keychain | None = None, **kwargs: Any) -> RegistryClient:
    return RegistryClient(
        keychain=keychain or Keychain([]), sleep=lambda s: None, jitter=lambda: 0.5, **kwargs
    )


def read_blob(reg: RegistryClient, text: str, digest: str, size: int | None = None) -> bytes:
    with reg.open_blob(parse_reference(text), digest, size) as stream:
        return stream.read()


@pytest.fixture
def app(fault_proxy: FaultProxy) -> str:
    """``test/app:1`` pushed, named through the proxy."""
    fault_proxy.push("test/app", "1", IMAGE)
    return f"{fault_proxy.host}/test/app:1"


@pytest.fixture
def basic_proxies(basic_registry: BasicRegistry) -> Iterator[tuple[FaultProxy, FaultProxy]]:
    """Two proxies on two ports in front of the Basic-auth registry: ours and "another host"."""
    ours, other = FaultProxy(basic_registry), FaultProxy(basic_registry)
    yield ours, other
    ours.stop()
    other.stop()


# --- item 1: tag pagination ---------------------------------------------------------------------


def test_a_tag_page_link_to_another_host_is_refused_and_gets_no_credentials(
    basic_registry: BasicRegistry, basic_proxies: tuple[FaultProxy, FaultProxy]
) -> None:
    ours, other = basic_proxies
    basic_registry.push("test/paged", "1", IMAGE)
    link = f'<{other.url}/v2/test/paged/tags/list?n=1000&last=1>; rel="next"'
    ours.respond(r"/tags/list$", body=b'{"tags": ["1"]}', headers={**JSON, "Link": link})
    creds = StaticKeychain(
        {ours.host: Credentials(basic_registry.username, basic_registry.password)}
    )
    with pytest.raises(RegistryError) as caught:
        list(client(creds).list_tags(parse_reference(f"{ours.host}/test/paged")))
    assert str(caught.value) == (
        f"{ours.host}/test/paged: the tag list's next page is on another host "
        f"({other.url}/v2/test/paged/tags/list); layerindex follows pages only on {ours.host}"
    )
    assert ours.seen(r"/tags/list$")[0].headers.get("Authorization", "").startswith("Basic ")
    assert [r.headers.get("Authorization") for r in other.requests] == []


def test_transport_never_sends_authorization_off_the_registry_origin(
    basic_registry: BasicRegistry, basic_proxies: tuple[FaultProxy, FaultProxy]
) -> None:
    """Whatever URL the registry names, the credentials stay with its origin."""
    ours, other = basic_proxies
    basic_registry.push("test/paged", "1", IMAGE)
    creds = StaticKeychain(
        {ours.host: Credentials(basic_registry.username, basic_registry.password)}
    )
    reg = client(creds)
    ref = parse_reference(f"{ours.host}/test/paged")
    with pytest.raises(AuthError):  # the other host asks for the credentials it did not get
        reg._registry_request(ref, "GET", f"{other.url}/v2/test/paged/tags/list")
    assert [r.headers.get("Authorization") for r in other.requests] == [None]


def test_endless_tag_pages_stop_at_the_cap(
    fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "TAG_PAGES_MAX", 5)
    pages = iter(range(50))  # endless as far as the cap can tell; ends so a bug cannot hang

    def endless(handler: _ProxyHandler, fetch: Callable[[], Upstream]) -> None:
        page = next(pages)
        headers = [("Content-Type", "application/json")]
        if page < 49:
            link = f'</v2/test/endless/tags/list?n=1000&last=t{page}>; rel="next"'
            headers.append(("Link", link))
        handler.send(Upstream(200, headers, json.dumps({"tags": [f"t{page}"]}).encode()))

    fault_proxy.add(r"/tags/list$", endless, times=None)
    listed: list[str] = []
    with pytest.raises(RegistryError) as caught:
        listed.extend(client().list_tags(parse_reference(f"{fault_proxy.host}/test/endless")))
    assert str(caught.value) == (
        f"{fault_proxy.host}/test/endless: the tag list goes on past 5 pages, the most "
        "layerindex reads; name the tags to index instead"
    )
    assert len(fault_proxy.seen(r"/tags/list$")) == 5


def test_too_many_tags_stop_at_the_cap(
    fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "TAGS_MAX", 3)
    tags = json.dumps({"tags": ["a", "b", "c", "d"]}).encode()
    fault_proxy.respond(r"/tags/list$", body=tags, headers=JSON)
    with pytest.raises(RegistryError) as caught:
        list(client().list_tags(parse_reference(f"{fault_proxy.host}/test/many")))
    assert str(caught.value) == (
        f"{fault_proxy.host}/test/many: the tag list has more than 3 tags, the most "
        "layerindex reads; name the tags to index instead"
    )


# --- item 9: tags are data ----------------------------------------------------------------------


def test_tags_that_are_not_tag_names_are_skipped_and_reported(
    fault_proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    tags = ["1.0", "../../../v2/other/manifests/x", "\x1b]0;owned\x07", 7, "9" * 5000, "2.0"]
    fault_proxy.respond(r"/tags/list$", body=json.dumps({"tags": tags}).encode(), headers=JSON)
    caplog.set_level(logging.WARNING, logger="layerindex")
    listed = list(client().list_tags(parse_reference(f"{fault_proxy.host}/test/evil")))
    assert listed == ["1.0", "2.0"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{fault_proxy.host}/test/evil: skipped 4 tag(s) the registry listed that are not valid "
        "tag names: '../../../v2/other/manifests/x', '\\x1b]0;owned\\x07', 7 and 1 more"
    ]


# --- item 5: deadlines and declared sizes -------------------------------------------------------


def test_a_dribbling_token_endpoint_ends_at_the_deadline(fault_proxy: FaultProxy) -> None:
    realm = f"{fault_proxy.url}/token"
    fault_proxy.status(
        r"^/v2/$",
        401,
        times=None,
        headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="test"'},
    )
    token = json.dumps({"token": "x" * 200}).encode()
    fault_proxy.dribble(r"^/token$", every=0.05, body=token, headers=JSON)
    with pytest.raises(RegistryError) as caught:
        client(body_deadline=0.5).get_manifest(parse_reference(f"{fault_proxy.host}/test/app:1"))
    message = str(caught.value)
    assert message.startswith(
        f"token answer from {fault_proxy.host} did not arrive within 0.5 s ("
    ), message
    assert message.endswith(" bytes received)")
    assert len(fault_proxy.seen(r"^/token$")) == 1  # too slow is not asked again


def test_headers_dribbled_a_byte_at_a_time_end_at_the_deadline(
    fault_proxy: FaultProxy, app: str
) -> None:
    def dribble_headers(handler: _ProxyHandler, fetch: Callable[[], Upstream]) -> None:
        handler.close_connection = True
        try:
            handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            for _ in range(200):  # 10 s in all, so that the test ends without the deadline
                handler.wfile.write(b"z")
                handler.wfile.flush()
                if fault_proxy._release.wait(0.05):
                    break
        except OSError:
            pass  # the client hung up: what it must do

    fault_proxy.add(r"/manifests/", dribble_headers)
    with pytest.raises(RegistryError) as caught:
        client(retries=0, read_timeout=0.5).get_manifest(parse_reference(app))
    assert str(caught.value) == f"timed out talking to {fault_proxy.host}: no answer within 0.5 s"


def _endless_blob(handler: _ProxyHandler, fetch: Callable[[], Upstream]) -> None:
    """The blob, then zeros: no Content-Length, the body ends when the connection does."""
    handler.send_response(200)
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.close_connection = True
    try:
        handler.wfile.write(BIG.blob)
        for _ in range(256):  # 16 MB, so that the test ends without the check
            handler.wfile.write(bytes(64 * 1024))
    except OSError:
        pass  # the client hung up: what it must do


@pytest.mark.parametrize("announced", [False, True])
def test_a_blob_longer_than_the_manifest_declares_is_refused(
    fault_proxy: FaultProxy, app: str, announced: bool
) -> None:
    if announced:
        fault_proxy.respond(r"/blobs/", body=BIG.blob + b"more", headers={}, times=1)
        said = (
            f"the registry announces {BIG.size + 4} bytes, more than the {BIG.size} the "
            "manifest declares"
        )
    else:
        fault_proxy.add(r"/blobs/", _endless_blob)
        said = f"the registry sent more than the {BIG.size} bytes the manifest declares"
    with pytest.raises(DigestMismatch) as caught:
        read_blob(client(), app, BIG.digest, BIG.size)
    assert str(caught.value) == f"blob {BIG.digest} of {app} from {fault_proxy.host}: {said}"


def test_a_blob_that_dribbles_is_a_stall_and_resumes(
    fault_proxy: FaultProxy, app: str, caplog: pytest.LogCaptureFixture
) -> None:
    fault_proxy.dribble(r"/blobs/", every=0.05)
    caplog.set_level(logging.INFO, logger="layerindex")
    reg = client(blob_progress=(1000, 0.5))
    assert read_blob(reg, app, BIG.digest, BIG.size) == BIG.blob
    assert [r.headers.get("Range") is not None for r in fault_proxy.seen(r"/blobs/")] == [
        False,
        True,
    ]
    assert any("fewer than 1000" in r.getMessage() for r in caplog.records)


# --- issue 15 item 2: every GET retries a cut body ----------------------------------------------


def test_a_cut_token_manifest_config_and_tag_list_are_asked_for_again(
    fault_proxy: FaultProxy, app: str
) -> None:
    realm = f"{fault_proxy.url}/token"
    challenge = {"WWW-Authenticate": f'Bearer realm="{realm}",service="test"'}
    fault_proxy.status(r"^/v2/$", 401, times=None, headers=challenge)
    token = json.dumps({"token": "t" * 200}).encode()

    def cut_token(handler: _ProxyHandler, fetch: Callable[[], Upstream]) -> None:
        handler.send(Upstream(200, list(JSON.items()), token), body_limit=20)
        handler.close_connection = True

    fault_proxy.add(r"^/token$", cut_token, name="cut token")
    fault_proxy.respond(r"^/token$", body=token, headers=JSON)
    paths = r"^/token$|/(manifests|blobs)/|/tags/list$"
    fault_proxy.cut_first(paths, after=20)
    reg = client()
    ref = parse_reference(app)
    fetched = reg.get_manifest(ref)
    assert fetched.body == IMAGE.manifest
    assert reg.get_blob_bytes(ref, IMAGE.config_digest, 1 << 20) == IMAGE.config
    assert list(reg.list_tags(ref)) == ["1"]
    # each asked for twice: cut the first time, whole the second
    again = [
        (path, "cut first after 20")
        for path in (
            "/v2/test/app/manifests/1",
            f"/v2/test/app/blobs/{IMAGE.config_digest}",
            "/v2/test/app/tags/list",
        )
        for _ in range(2)
    ]
    assert [(urlsplit(r.path).path, r.rule) for r in fault_proxy.seen(paths)] == [
        ("/token", "cut token"),
        ("/token", "respond"),
        *again,
    ]


def test_a_body_cut_every_time_gives_up_after_every_try(fault_proxy: FaultProxy, app: str) -> None:
    fault_proxy.cut(r"/manifests/", after=10, times=100)
    with pytest.raises(RegistryError) as caught:
        client(retries=2).get_manifest(parse_reference(app))
    # the server's doing in words, not urllib3's IncompleteRead(10 bytes read, …)
    assert str(caught.value) == (
        f"manifest of {app}: connection lost: the server closed the connection "
        f"{len(IMAGE.manifest) - 10} bytes before the end (tried 3 times)"
    )
    assert len(fault_proxy.seen(r"/manifests/")) == 3


def test_index_survives_the_first_get_of_every_blob_and_manifest_cut(
    fault_proxy: FaultProxy, app: str, run: Callable[..., Result], home: Path
) -> None:
    fault_proxy.cut_first(r"/(manifests|blobs)/", after=100)
    result = run("index", app)
    assert result.exit_code == 0, result.output
    assert "1 indexed, 0 known, 0 skipped, 0 failed" in result.output


# --- item 8: leaks ------------------------------------------------------------------------------


def test_user_info_in_a_redirect_stays_out_of_errors(fault_proxy: FaultProxy, app: str) -> None:
    location = f"http://alice:hunter2@{fault_proxy.host}/elsewhere"
    fault_proxy.status(r"/manifests/", 307, headers={"Location": location})
    fault_proxy.status(r"^/elsewhere$", 403, times=None)
    with pytest.raises(AuthError) as caught:
        client().get_manifest(parse_reference(app))
    assert str(caught.value) == f"{fault_proxy.host} refused access to manifest of {app} (403)"


def test_user_info_in_a_blob_redirect_stays_out_of_the_database(
    fault_proxy: FaultProxy, app: str, run: Callable[..., Result]
) -> None:
    location = f"http://alice:hunter2@{fault_proxy.host}/elsewhere"
    fault_proxy.status(f"/blobs/{BIG.digest}", 307, headers={"Location": location})
    fault_proxy.status(r"^/elsewhere$", 403, times=None)
    assert run("index", app).exit_code == 1
    layers = run("layers", app, "--json")
    assert layers.exit_code == 0
    [status] = [layer["status"] for layer in json.loads(layers.stdout)["layers"]]
    assert status.startswith("failed")
    assert f"{fault_proxy.host} refused access to blob {BIG.digest}" in status
    assert "hunter2" not in status and "hunter2" not in layers.output


def test_registry_error_text_is_escaped(fault_proxy: FaultProxy, app: str) -> None:
    said = "denied\x1b]52;c;b3duZWQ=\x07 see http://bob:pw@evil.example/x\nError: forged"
    body = json.dumps({"errors": [{"code": "DENIED", "message": said}]}).encode()
    fault_proxy.status(r"/manifests/", 403, body=body, headers=JSON)
    with pytest.raises(AuthError) as caught:
        client().get_manifest(parse_reference(app))
    assert str(caught.value) == (
        f"{fault_proxy.host} refused access to manifest of {app} (403: denied\\x1b]52;c;"
        "b3duZWQ=\\x07 see http://***@evil.example/x\\x0aError: forged)"
    )


def test_a_status_reason_and_content_type_are_escaped(fault_proxy: FaultProxy, app: str) -> None:
    def odd(handler: _ProxyHandler, fetch: Callable[[], Upstream]) -> None:
        handler.send_response(500, "Oops\x1b[2J")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    fault_proxy.add(r"/manifests/", odd)
    fault_proxy.respond(r"/manifests/", body=b"x", headers={"Content-Type": "text/\x1b[2Jx"})
    with pytest.raises(RegistryError) as caught:
        client(retries=0).get_manifest(parse_reference(app))
    assert str(caught.value) == (
        f"{fault_proxy.host} answered 500 Oops\\x1b[2J for manifest of {app}"
    )
    with pytest.raises(RegistryError) as caught:
        client(retries=0).get_manifest(parse_reference(app))
    assert str(caught.value) == (
        f"{app}: the registry returned something that is not JSON (text/\\x1b[2Jx) instead of "
        "a manifest"
    )


# --- issue 15: every error is a message ---------------------------------------------------------


def test_a_port_out_of_range_is_a_message(run: Callable[..., Result]) -> None:
    result = run("index", "127.0.0.1:99999/x")
    assert result.exit_code == 2
    assert result.output == (
        "Error: invalid reference '127.0.0.1:99999/x': registry '127.0.0.1:99999' has an "
        "invalid port '99999' (ports are 1-65535)\n"
    )


def test_a_refused_connection_is_said_in_words(
    run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    kwdefaults = RegistryClient.__init__.__kwdefaults__
    assert kwdefaults is not None
    monkeypatch.setitem(kwdefaults, "retries", 0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        result = run("index", f"127.0.0.1:{port}/x")
    # `index` exits 1 when an image failed (its documented contract), 2 on bad input
    assert result.exit_code == 1
    assert f"Error: cannot connect to 127.0.0.1:{port}: connection refused\n" in result.output
    assert "HTTPConnection" not in result.output and "0x" not in result.output
