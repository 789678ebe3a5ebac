"""HTTP the way registries really behave: 5xx and connection trouble retried with back-off, 429
waiting out Retry-After, Docker Hub's RateLimit headers, blobs resumed with Range after a cut.

A real registry sits behind the fault proxy. Waits go to an injected ``sleep`` that records them
(and the jitter is fixed at 0.5) so the exact back-off is asserted without waiting for it; one
test waits for real.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from typing import Any, cast

import pytest
from faults import FaultProxy, Upstream
from images import make_image, make_layer
from registry_server import BlobServer, HubRegistry, RegistryServer
from token_server import TokenServer

from layerindex.errors import NotFound, RateLimited, RegistryError
from layerindex.reference import parse_reference
from layerindex.registry.client import RegistryClient
from layerindex.registry.credentials import Keychain
from layerindex.registry.retry import Quota, RetryPolicy, parse_quota, say_duration

# incompressible, so the blob is long enough to cut in the middle
BIG = make_layer(
    {"/opt/big.bin": b"".join(hashlib.sha256(i.to_bytes(2, "big")).digest() for i in range(2048))}
)
IMAGE = make_image([BIG])
NOBODY = Keychain([])
HUB_HEADERS = [
    ("RateLimit-Limit", "100;w=21600"),
    ("RateLimit-Remaining", "{remaining};w=21600"),
    ("Docker-RateLimit-Source", "192.0.2.7"),
]


class Sleeps(list[float]):
    """An injected ``sleep``: records each wait and returns at once."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client(sleeps: Callable[[float], None] | None = None, **kwargs: Any) -> RegistryClient:
    return RegistryClient(
        keychain=NOBODY,
        sleep=sleeps if sleeps is not None else Sleeps(),
        jitter=lambda: 0.5,
        **kwargs,
    )


def read_blob(reg: RegistryClient, text: str, digest: str) -> bytes:
    with reg.open_blob(parse_reference(text), digest) as stream:
        chunks = []
        while chunk := stream.read(1000):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def app(fault_proxy: FaultProxy) -> str:
    """``test/app:1`` pushed, named through the proxy."""
    fault_proxy.push("test/app", "1", IMAGE)
    return f"{fault_proxy.host}/test/app:1"


def rules(proxy: FaultProxy, path: str, method: str | None = None) -> list[str | None]:
    return [r.rule for r in proxy.seen(path, method)]


# --- retry policy, no HTTP ---------------------------------------------------------------------


def test_backoff_doubles_from_the_base_up_to_the_cap_with_full_jitter() -> None:
    policy = RetryPolicy(backoff_base=0.5, max_backoff=3.0, jitter=lambda: 1.0)
    assert [policy.backoff(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert RetryPolicy(jitter=lambda: 0.0).backoff(3) == 0.0
    assert RetryPolicy(retries=4).attempts == 5


def test_rate_limit_headers_and_durations() -> None:
    assert parse_quota("100;w=21600", "76;w=21600") == Quota(76, 100, 21600)
    assert parse_quota("200", "3") == Quota(3, 200, None)
    assert parse_quota("100;w=21600", None) is None
    assert parse_quota("lots", "76") is None
    assert [Quota(r, 100, None).low for r in (9, 10, 50)] == [True, False, False]
    assert [Quota(r, 5000, None).low for r in (499, 500)] == [True, False]
    assert [say_duration(s) for s in (0.4, 7, 119, 120, 3600, 21600, 21660)] == [
        "0 s",
        "7 s",
        "119 s",
        "2 min",
        "60 min",
        "6 h",
        "6 h 1 min",
    ]


# --- 5xx and no answer ---------------------------------------------------------------------------


def test_503_three_times_then_200(fault_proxy: FaultProxy, app: str) -> None:
    fault_proxy.unavailable(r"/manifests/1$", times=3)
    sleeps = Sleeps()
    assert client(sleeps).get_manifest(parse_reference(app)).body == IMAGE.manifest
    assert rules(fault_proxy, r"/manifests/1$") == ["status 503"] * 3 + [None]
    assert sleeps == [0.25, 0.5, 1.0]


def test_persistent_500_gives_up_after_every_attempt(fault_proxy: FaultProxy, app: str) -> None:
    fault_proxy.status(r"/manifests/1$", 500, times=None)
    sleeps = Sleeps()
    with pytest.raises(RegistryError) as caught:
        client(sleeps, max_backoff=0.6).get_manifest(parse_reference(app))
    assert type(caught.value) is RegistryError
    assert str(caught.value) == (
        f"{fault_proxy.host} answered 500 Internal Server Error for manifest of {app} "
        "(tried 5 times)"
    )
    assert rules(fault_proxy, r"/manifests/1$") == ["status 500"] * 5
    assert sleeps == [0.25, 0.3, 0.3, 0.3]  # half of min(0.6, 0.5 * 2**n)


def test_retries_are_configurable(fault_proxy: FaultProxy, app: str) -> None:
    fault_proxy.status(r"/manifests/1$", 502, times=None)
    with pytest.raises(RegistryError, match=r"answered 502 Bad Gateway .* \(tried 2 times\)$"):
        client(retries=1).get_manifest(parse_reference(app))
    assert len(fault_proxy.seen(r"/manifests/1$")) == 2
    with pytest.raises(RegistryError, match=r"answered 502 Bad Gateway for manifest of [^(]*$"):
        client(retries=0).get_manifest(parse_reference(app))
    assert len(fault_proxy.seen(r"/manifests/1$")) == 3


def test_503_retry_after_is_honoured(fault_proxy: FaultProxy, app: str) -> None:
    fault_proxy.status(r"/manifests/1$", 503, headers={"Retry-After": "3"})
    sleeps = Sleeps()
    client(sleeps).get_manifest(parse_reference(app))
    assert sleeps == [3.0]


def test_head_is_retried_too(fault_proxy: FaultProxy, app: str) -> None:
    fault_proxy.status(r"/manifests/1$", 504, method="HEAD", times=2)
    sleeps = Sleeps()
    assert client(sleeps).head_manifest(parse_reference(app)) == IMAGE.digest
    assert rules(fault_proxy, r"/manifests/1$", "HEAD") == ["status 504", "status 504", None]
    assert fault_proxy.seen(r"/manifests/1$", "GET") == []  # a HEAD is not a pull
    assert sleeps == [0.25, 0.5]


def test_404_is_not_retried(fault_proxy: FaultProxy, app: str) -> None:
    sleeps = Sleeps()
    with pytest.raises(NotFound):
        client(sleeps).get_manifest(parse_reference(app.replace(":1", ":2")))
    assert len(fault_proxy.seen(r"/manifests/2$")) == 1
    with pytest.raises(NotFound):
        client(sleeps).head_manifest(parse_reference(app.replace(":1", ":2")))
    assert len(fault_proxy.seen(r"/manifests/2$")) == 2
    assert sleeps == []


def test_other_4xx_is_not_retried(fault_proxy: FaultProxy, app: str) -> None:
    fault_proxy.status(r"/manifests/1$", 400, times=None, body=b'{"errors":[{"code":"X"}]}')
    with pytest.raises(RegistryError, match=r"answered 400 Bad Request for manifest of .*: X$"):
        client().get_manifest(parse_reference(app))
    assert len(fault_proxy.seen(r"/manifests/1$")) == 1


def test_a_hanging_server_is_an_error_in_bounded_time(fault_proxy: FaultProxy, app: str) -> None:
    fault_proxy.hang(r"/manifests/1$", seconds=30, times=None)
    sleeps = Sleeps()
    started = time.monotonic()
    with pytest.raises(RegistryError) as caught:
        client(sleeps, read_timeout=0.2, retries=2).get_manifest(parse_reference(app))
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert message.startswith(f"timed out talking to {fault_proxy.host}: ")
    assert message.endswith(" (tried 3 times)")
    assert rules(fault_proxy, r"/manifests/1$") == ["hang"] * 3
    assert sleeps == [0.25, 0.5]
    assert elapsed < 10  # three 0.2 s read timeouts, not the 30 s hang


# --- 429 ---------------------------------------------------------------------------------------


def test_429_waits_retry_after_then_succeeds(fault_proxy: FaultProxy, app: str) -> None:
    fault_proxy.rate_limit(r"/manifests/1$", retry_after=1)
    sleeps = Sleeps()
    assert client(sleeps).get_manifest(parse_reference(app)).body == IMAGE.manifest
    assert sleeps == [1.0]
    assert rules(fault_proxy, r"/manifests/1$") == ["status 429", None]


def test_429_and_503_with_real_sleeps(fault_proxy: FaultProxy, app: str) -> None:
    fault_proxy.rate_limit(r"/manifests/1$", retry_after=1)
    fault_proxy.unavailable(r"/blobs/", times=2)
    reg = RegistryClient(keychain=NOBODY, backoff_base=0.05)  # time.sleep, random jitter
    started = time.monotonic()
    assert reg.get_manifest(parse_reference(app)).body == IMAGE.manifest
    assert time.monotonic() - started >= 1.0
    assert reg.get_blob_bytes(parse_reference(app), IMAGE.config_digest, 1 << 20) == IMAGE.config
    assert rules(fault_proxy, r"/blobs/") == ["status 503", "status 503", None]


def test_429_with_a_long_retry_after_is_raised_with_when(fault_proxy: FaultProxy, app: str) -> None:
    fault_proxy.rate_limit(r"/manifests/1$", retry_after=21600)
    sleeps = Sleeps()
    with pytest.raises(RateLimited) as caught:
        client(sleeps).get_manifest(parse_reference(app))
    host = fault_proxy.host
    assert caught.value.retry_after == 21600.0
    assert str(caught.value) == (
        f"{host} rate limit reached (429) fetching manifest of {app}; try again in 6 h; log in "
        f"with `docker login {host}` or `podman login {host}` if the registry gives accounts a "
        "higher limit"
    )
    assert sleeps == []
    assert len(fault_proxy.seen(r"/manifests/1$")) == 1


def test_429_retry_after_as_an_http_date(fault_proxy: FaultProxy, app: str) -> None:
    later = formatdate(time.time() + 7200, usegmt=True)
    fault_proxy.status(r"/manifests/1$", 429, headers={"Retry-After": later})
    with pytest.raises(RateLimited, match=r"; try again in 2 h; "):
        client(max_retry_after=600).get_manifest(parse_reference(app))
    soon = formatdate(time.time() + 30, usegmt=True)  # whole seconds: 29 to 30 s from now
    fault_proxy.status(r"/manifests/1$", 429, headers={"Retry-After": soon})
    sleeps = Sleeps()
    client(sleeps).get_manifest(parse_reference(app))
    assert len(sleeps) == 1 and 28 < sleeps[0] <= 30


def test_docker_hub_429_says_per_ip_and_to_log_in(fault_proxy: FaultProxy, app: str) -> None:
    # Docker Hub's pull limit: no Retry-After, the quota headers at 0.
    headers = {name: value.format(remaining=0) for name, value in HUB_HEADERS}
    fault_proxy.status(r"/manifests/1$", 429, headers=headers, times=None)
    sleeps = Sleeps()
    reg = client(sleeps)
    with pytest.raises(RateLimited) as caught:
        reg.get_manifest(parse_reference(app))
    host = fault_proxy.host
    assert caught.value.retry_after is None
    assert str(caught.value) == (
        f"{host} rate limit reached (429) fetching manifest of {app}; the limit is 100 pulls "
        "per 6 h; try again later; Docker Hub counts anonymous pulls per IP address (everyone "
        f"behind the same NAT or CI runner shares them): log in with `docker login {host}` or "
        f"`podman login {host}` for a higher limit"
    )
    assert sleeps == []  # hours away: not waited for
    assert len(fault_proxy.seen(r"/manifests/1$")) == 1
    assert reg.rate_limit(host) == (0, 100, 21600)


def pass_with_quota(remaining: int) -> Callable[[Any, Callable[[], Upstream]], None]:
    """An action: the registry's answer with Docker Hub's quota headers added."""

    def action(handler: Any, fetch: Callable[[], Upstream]) -> None:
        upstream = fetch()
        extra = [(name, value.format(remaining=remaining)) for name, value in HUB_HEADERS]
        upstream.headers = [*upstream.headers, *extra]
        handler.send(upstream)

    return action


def test_low_quota_is_warned_once_and_reported(
    fault_proxy: FaultProxy, app: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="layerindex")
    reg = client()
    ref = parse_reference(app)
    host = fault_proxy.host
    assert reg.rate_limit(host) is None
    fault_proxy.add(r"/manifests/1$", pass_with_quota(50), times=1)
    reg.get_manifest(ref)
    assert reg.rate_limit(host) == (50, 100, 21600)
    assert caplog.records == []
    fault_proxy.add(r"/manifests/1$", pass_with_quota(7), times=None)
    reg.get_manifest(ref)
    reg.head_manifest(ref)
    reg.get_manifest(ref)
    assert reg.rate_limit(host) == (7, 100, 21600)
    assert reg.rate_limit("docker.io") is None
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            f"{host}: 7 of 100 pulls left per 6 h; Docker Hub counts anonymous pulls per IP "
            "address (everyone behind the same NAT or CI runner shares them): log in with "
            f"`docker login {host}` or `podman login {host}` for a higher limit",
        )
    ]


# --- blobs cut mid-stream -------------------------------------------------------------------------


def test_cut_mid_blob_resumes_with_range(fault_proxy: FaultProxy, app: str) -> None:
    fault_proxy.cut(r"/blobs/", after=1000, times=2)
    sleeps = Sleeps()
    assert read_blob(client(sleeps), app, BIG.digest) == BIG.blob
    seen = fault_proxy.seen(r"/blobs/")
    assert [(r.rule, r.headers.get("Range")) for r in seen] == [
        ("cut after 1000", None),
        ("cut after 1000", "bytes=1000-"),
        (None, "bytes=2000-"),
    ]
    assert sleeps == [0.25, 0.5]


def test_a_stalled_blob_read_times_out_and_resumes(fault_proxy: FaultProxy, app: str) -> None:
    fault_proxy.stall(r"/blobs/", after=3000, seconds=30)
    reg = client(read_timeout=0.3)
    assert read_blob(reg, app, BIG.digest) == BIG.blob
    assert [r.headers.get("Range") for r in fault_proxy.seen(r"/blobs/")] == [None, "bytes=3000-"]


def test_leaving_a_stalled_download_ends_the_read_another_thread_is_in(
    fault_proxy: FaultProxy, app: str
) -> None:
    # A walk's feeding thread reads the blob while the caller leaves (an error, Ctrl-C): the
    # buffered stream's close waited for that read, which returns only at the read timeout.
    fault_proxy.stall(r"/blobs/", after=3000, seconds=30)
    outcome: list[BaseException] = []
    started = time.monotonic()
    with client().open_blob(parse_reference(app), BIG.digest) as stream:

        def read_all() -> None:
            try:
                while stream.read(1000):
                    pass
            except BaseException as exc:
                outcome.append(exc)

        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        time.sleep(0.5)  # the reader is in its read
    reader.join(5)
    assert time.monotonic() - started < 5
    assert not reader.is_alive()
    assert [str(e) for e in outcome] == [
        f"blob {BIG.digest} of {app} from {fault_proxy.host}: download abandoned"
    ]
    assert len(fault_proxy.seen(r"/blobs/")) == 1  # not resumed


def test_a_resume_must_start_where_it_stopped(fault_proxy: FaultProxy, app: str) -> None:
    fault_proxy.cut(r"/blobs/", after=1000)
    total = len(BIG.blob)
    fault_proxy.respond(
        r"/blobs/",
        status=206,
        body=BIG.blob[:100],
        headers={"Content-Range": f"bytes 0-99/{total}"},
        times=1,
    )
    with pytest.raises(RegistryError) as caught:
        read_blob(client(), app, BIG.digest)
    assert str(caught.value) == (
        f"blob {BIG.digest} of {app} from {fault_proxy.host}: asked to resume at byte 1000, "
        f"the server sent 'bytes 0-99/{total}'"
    )


def test_a_failed_resume_says_so(fault_proxy: FaultProxy, app: str) -> None:
    fault_proxy.cut(r"/blobs/", after=1000)
    fault_proxy.status(r"/blobs/", 404, times=1, body=b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
    with pytest.raises(RegistryError) as caught:
        read_blob(client(), app, BIG.digest)
    repo = app.removesuffix(":1")
    assert str(caught.value) == (
        f"blob {BIG.digest} of {app} from {fault_proxy.host}: connection lost after 1000 bytes; "
        f"resuming failed: BLOB_UNKNOWN: blob {BIG.digest} not found in {repo}"
    )


@pytest.fixture
def blob_proxy(blob_server: BlobServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of the hub's blob host (the CDN), for cuts there."""
    proxy = FaultProxy(cast(RegistryServer, blob_server))  # it only needs ``host``
    yield proxy
    proxy.stop()


def test_cut_at_the_cdn_which_ignores_range(
    hub_registry: HubRegistry,
    hub_fault_proxy: FaultProxy,
    token_server: TokenServer,
    blob_server: BlobServer,
    blob_proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub_registry.push("test/app", "1", IMAGE)
    token_server.reset()
    blob_server.ranges = False  # a 200 with the whole blob to a Range request

    def via_blob_proxy(handler: Any, fetch: Callable[[], Upstream]) -> None:
        upstream = fetch()  # the registry's 307 to the blob host, sent through blob_proxy
        upstream.headers = [
            (name, value.replace(blob_server.url, blob_proxy.url))
            for name, value in upstream.headers
        ]
        handler.send(upstream)

    hub_fault_proxy.add(r"/blobs/", via_blob_proxy, method="GET", times=None, name="redirect")
    now = [0.0]

    def cut_and_let_the_token_expire(handler: Any, fetch: Callable[[], Upstream]) -> None:
        now[0] += 3600
        handler.send(fetch(), body_limit=1000)
        handler.close_connection = True

    blob_proxy.add(r"/data$", cut_and_let_the_token_expire, times=1, name="cut")
    caplog.set_level(logging.DEBUG, logger="layerindex")
    reg = client(clock=lambda: now[0])
    ref = f"{hub_fault_proxy.host}/test/app:1"
    assert read_blob(reg, ref, BIG.digest) == BIG.blob
    # Asked the registry again: a fresh token (the old one expired), a fresh redirect.
    assert token_server.count == 2
    registry_side = hub_fault_proxy.seen(r"/blobs/")
    assert [(r.headers.get("Range"), r.headers["Authorization"][:7]) for r in registry_side] == [
        (None, "Bearer "),
        ("bytes=1000-", "Bearer "),
    ]
    assert registry_side[0].headers["Authorization"] != registry_side[1].headers["Authorization"]
    # The CDN never saw Authorization, and answered the Range request with the whole blob.
    cdn_side = blob_proxy.seen(r"/data$")
    assert [(r.rule, r.headers.get("Range"), "Authorization" in r.headers) for r in cdn_side] == [
        ("cut", None, False),
        (None, "bytes=1000-", False),
    ]
    assert [(r.status, r.headers.get("Range")) for r in blob_server.requests] == [
        (200, None),
        (200, "bytes=1000-"),
    ]
    assert "connection lost after 1000 bytes" in caplog.text
    assert "Bearer" not in caplog.text and "eyJ" not in caplog.text
