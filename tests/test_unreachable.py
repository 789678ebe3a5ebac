"""A registry that does not answer costs a crawl one registry's tries, not every image's.

No DNS query leaves the machine: its resolver is a server elsewhere (/etc/resolv.conf), so
names under ``.invalid`` (RFC 2606: they never resolve) are answered "no such name" by a
patched ``socket.getaddrinfo``, in process, as a resolver would; ``untrusted.invalid`` is
answered with 127.0.0.1, where a TLS server shows a certificate nobody trusts.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from click.testing import CliRunner, Result
from faults import FaultProxy
from images import make_image, make_layer
from loopback import SilentServer, refusing_host
from registry_server import RegistryServer
from sqlalchemy import create_engine, text
from token_server import TokenSigner

import layerindex.cli.main
from layerindex.cli.main import cli
from layerindex.errors import NetworkError
from layerindex.reference import parse_reference
from layerindex.registry.client import RegistryClient
from layerindex.registry.credentials import Keychain

GOOD = make_image([make_layer({"/bin/good": b"good"})])


class Minutes:
    """The registry client's clock: each try passes a minute (``tries``), as if it had waited
    out a one-minute timeout; its back-off waits pass no time, and take none."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, _seconds: float) -> None:
        pass


@pytest.fixture
def minutes() -> Minutes:
    return Minutes()


@pytest.fixture
def tries(monkeypatch: pytest.MonkeyPatch, minutes: Minutes) -> Counter[str]:
    """Every HTTP request the registry client sends (a redirect's too), by the host it is sent
    to; each takes a minute of ``minutes``."""
    counts: Counter[str] = Counter()
    real = requests.Session.request

    def counted(self: requests.Session, method: str, url: str, **kwargs: Any) -> Any:
        counts[urlsplit(url).netloc] += 1
        try:
            return real(self, method, url, **kwargs)
        finally:
            minutes.now += 60

    monkeypatch.setattr(requests.Session, "request", counted)
    return counts


@pytest.fixture
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host == "untrusted.invalid":
            return real("127.0.0.1", *args, **kwargs)
        if isinstance(host, str) and host.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def crawl(
    home: Path, monkeypatch: pytest.MonkeyPatch, no_dns: None, minutes: Minutes
) -> Callable[..., tuple[Result, list[dict[str, Any]]]]:
    """``layerindex crawl`` of the given lines, its client on the clock of ``minutes``, reads
    timing out after 0.5 s; returns the result and ``runs``."""
    monkeypatch.setenv("LAYERINDEX_DB", f"sqlite:///{home / 'index.db'}")
    real = layerindex.cli.main._client

    def client(insecure: tuple[str, ...], **options: Any) -> Any:
        return real(insecure, **options, read_timeout=0.5, clock=minutes.clock, sleep=minutes.sleep)

    monkeypatch.setattr(layerindex.cli.main, "_client", client)

    def invoke(*lines: str, extra: tuple[str, ...] = ()) -> tuple[Result, list[dict[str, Any]]]:
        image_list = home / "images.txt"
        image_list.write_text("\n".join(lines) + "\n")
        result = CliRunner().invoke(
            cli, ["crawl", "--images", str(image_list), "--jobs", "4", *extra]
        )
        runs = CliRunner().invoke(cli, ["runs", "--json"], catch_exceptions=False)
        return result, json.loads(runs.stdout)

    return invoke


def errors_of(result: Result) -> Counter[str]:
    return Counter(
        line.removeprefix("Error: ")
        for line in result.stderr.splitlines()
        if line.startswith("Error: ")
    )


def given_up(host: str, error: str, others: int) -> dict[str, int]:
    """The error lines for ``host``: its first image's ``error``, then ``others`` images that
    fail at once with the same message, the host given up."""
    again = f"; {host} is not asked again in this run, the next run tries it again"
    return {error: 1, error + again: others}


def targets(home: Path) -> dict[str, tuple[int, str | None]]:
    """Each crawled reference's failures in a row and last error."""
    engine = create_engine(f"sqlite:///{home / 'index.db'}")
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT reference, failures, last_error FROM targets"))
        found = {r.reference: (r.failures, r.last_error) for r in rows}
    engine.dispose()
    return found


@pytest.fixture
def refused() -> Iterator[str]:
    with refusing_host() as host:
        yield host


def test_a_refusing_registry_and_a_name_that_does_not_exist_are_tried_once_per_run(
    registry: RegistryServer,
    crawl: Callable[..., tuple[Result, list[dict[str, Any]]]],
    tries: Counter[str],
    refused: str,
    home: Path,
) -> None:
    registry.push("team/good", "1", GOOD)
    dead = "dead.invalid"
    lines = [f"{host}/team/{name}:1" for host in (refused, dead) for name in "abc"]
    result, (run, *_) = crawl(
        *lines, f"{registry.host}/team/good:1", extra=("--give-up-after", "1h")
    )
    assert result.exit_code == 1, result.output
    # Refused: five tries (a registry restarting refuses for a moment), once for the run; no
    # such name: one try. Every other image of theirs fails at once with the same message.
    assert (tries[refused], tries[dead]) == (5, 1)
    assert errors_of(result) == given_up(
        refused, f"cannot connect to {refused}: connection refused (tried 5 times)", 2
    ) | given_up(
        dead, f"cannot connect to {dead}: host name not found (name or service not known)", 2
    )
    assert result.stderr.splitlines()[-1].endswith(
        ": 7 images (0 unchanged, 6 failed), layers 1 indexed, 0 known, 0 skipped, 0 failed, "
        f"{len(GOOD.layers[0].blob)} B downloaded"
    )
    assert (run["status"], run["images"], run["images_failed"], len(run["errors"])) == (
        "failed",
        7,
        6,
        6,
    )
    # The images never tried do not grow their back-off: the next run tries them all again.
    failures = sorted(failures for failures, _error in targets(home).values())
    assert failures == [0, 0, 0, 0, 0, 1, 1]
    # And so does each run of a crawl that runs --every so often (one registry client).
    tries.clear()
    again, later_runs = crawl(
        *lines, extra=("--give-up-after", "1h", "--every", "1s", "--max-runs", "2")
    )
    assert again.exit_code == 0  # --every survives failed runs
    assert (tries[refused], tries[dead]) == (10, 2)
    # An image tried in two runs in a row waits out a back-off (which ones were tried is the
    # threads' draw): every run still accounts for the six images.
    for later in later_runs[:2]:
        assert later["images"] == later["images_failed"]
        assert later["images"] + later["images_deferred"] == 6


TWO_LAYERS = make_image([make_layer({"/bin/one": b"1"}), make_layer({"/bin/two": b"2"})])


def blob_attempts(home: Path) -> dict[str, int]:
    engine = create_engine(f"sqlite:///{home / 'index.db'}")
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT digest, attempts FROM layers")).all()
    engine.dispose()
    return {str(digest): int(count) for digest, count in rows}


def test_layers_not_tried_once_their_registry_is_given_up_keep_no_failure(
    fault_proxy: FaultProxy,
    crawl: Callable[..., tuple[Result, list[dict[str, Any]]]],
    home: Path,
) -> None:
    # The registry answers for the manifest and config, then hangs up on every blob request.
    fault_proxy.push("team/two", "1", TWO_LAYERS)
    for layer in TWO_LAYERS.layers:
        fault_proxy.hang(f"/blobs/{layer.digest}", seconds=0, times=None)
    result, _runs = crawl(
        f"{fault_proxy.host}/team/two:1", extra=("--give-up-after", "1h", "--jobs", "1")
    )
    assert result.exit_code == 1
    first, second = (layer.digest for layer in TWO_LAYERS.layers)
    assert len(fault_proxy.seen(f"/blobs/{first}")) == 5
    assert fault_proxy.seen(f"/blobs/{second}") == []
    # The layer whose download failed counts the failure; the one never asked for does not.
    assert blob_attempts(home) == {first: 1, second: 0}


def test_a_blob_host_that_does_not_answer_is_given_up_too(
    fault_proxy: FaultProxy,
    crawl: Callable[..., tuple[Result, list[dict[str, Any]]]],
    tries: Counter[str],
    refused: str,
    home: Path,
) -> None:
    # The registry redirects its blobs to a CDN that refuses connections.
    fault_proxy.push("team/two", "1", TWO_LAYERS)
    for layer in TWO_LAYERS.layers:
        location = {"Location": f"http://{refused}/cdn/{layer.digest}"}
        fault_proxy.respond(f"/blobs/{layer.digest}", status=307, body=b"", headers=location)
    result, _runs = crawl(
        f"{fault_proxy.host}/team/two:1", extra=("--give-up-after", "1h", "--jobs", "1")
    )
    assert result.exit_code == 1
    first, second = (layer.digest for layer in TWO_LAYERS.layers)
    # Five tries of the first layer (each redirected to the CDN); the second layer's redirect
    # is followed no further: its host was given up.
    assert tries[refused] == 5
    assert [len(fault_proxy.seen(f"/blobs/{d}")) for d in (first, second)] == [5, 1]
    assert blob_attempts(home) == {first: 1, second: 0}
    error = f"cannot connect to {refused}: connection refused (tried 5 times)"
    where = f"image {fault_proxy.host}/team/two:1 layer "
    assert set(errors_of(result)) == {
        f"{where}{first}: {error}",
        f"{where}{second}: {error}; {refused} is not asked again in this run, the next run tries "
        "it again",
    }


def test_a_registry_that_never_answers_is_given_up_after_give_up_after(
    crawl: Callable[..., tuple[Result, list[dict[str, Any]]]], tries: Counter[str]
) -> None:
    silent = SilentServer()
    try:
        lines = [f"{silent.host}/team/{name}:1" for name in "abcd"]
        result, (run, *_) = crawl(*lines, extra=("--give-up-after", "2m"))
    finally:
        silent.stop()
    assert result.exit_code == 1, result.output
    # Each try takes a minute of the fake clock: the second ends two minutes after the first
    # began, and the host is given up; the other three images are not tried.
    assert (tries[silent.host], len(silent.accepted)) == (2, 2)
    assert errors_of(result) == given_up(
        silent.host,
        f"timed out talking to {silent.host}: no answer within 0.5 s (tried 2 times, no answer "
        "for 2 min)",
        3,
    )
    assert (run["images"], run["images_failed"]) == (4, 4)


def test_a_certificate_that_fails_verification_is_not_tried_again(
    crawl: Callable[..., tuple[Result, list[dict[str, Any]]]],
    tries: Counter[str],
    tmp_path: Path,
) -> None:
    signer = TokenSigner("untrusted.invalid")  # self-signed: no one's trusted CA signed it
    (tmp_path / "cert.pem").write_bytes(signer.cert_pem)
    (tmp_path / "key.pem").write_bytes(signer.key_pem)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = SilentServer(tls)
    host = f"untrusted.invalid:{server.host.rpartition(':')[2]}"
    try:
        result, _runs = crawl(f"{host}/team/a:1", f"{host}/team/b:1")
    finally:
        server.stop()
    assert result.exit_code == 1, result.output
    assert (tries[host], len(server.accepted)) == (1, 1)
    error = (
        f"cannot connect to {host}: TLS certificate verification failed (self-signed certificate)"
    )
    assert errors_of(result) == given_up(host, error, 1)


def test_a_registry_that_never_answers_does_not_hold_up_the_others(
    registry: RegistryServer,
) -> None:
    registry.push("team/good", "1", GOOD)
    silent = SilentServer()
    client = RegistryClient(keychain=Keychain([]), read_timeout=600, retries=0)
    silent_ref = parse_reference(f"{silent.host}/team/a:1")

    def ask_silent() -> None:
        with contextlib.suppress(NetworkError):
            client.head_manifest(silent_ref)

    stuck = threading.Thread(target=ask_silent)
    stuck.start()
    try:
        while not silent.accepted:  # its first ping is in flight, holding its registry's lock
            time.sleep(0.01)
        good: list[str | None] = []
        asking = threading.Thread(
            target=lambda: good.append(
                client.head_manifest(parse_reference(f"{registry.host}/team/good:1"))
            )
        )
        asking.start()
        asking.join(timeout=60)  # only against a hang: it is answered in milliseconds
        assert not asking.is_alive(), "the good registry waited for the silent one's ping"
        assert good and good[0] is not None and good[0].startswith("sha256:")
    finally:
        silent.stop()
        stuck.join()
