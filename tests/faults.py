"""Faults a real registry will not produce on demand, from a reverse proxy on loopback.

``FaultProxy`` forwards every request to an upstream ``RegistryServer`` (keeping the client's
``Host`` header, so upload and redirect locations the registry builds point back at the proxy)
unless a rule matches: rules match the request path (without query) by regex, and the method if
given, and fire ``times`` times (None: for ever), the first matching live rule winning.
Every request is recorded with all its headers.
"""

from __future__ import annotations

import http.client
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, cast
from urllib.parse import urlsplit

from loopback import OwnedHTTPServer
from registry_server import RegistryServer
from requests.structures import CaseInsensitiveDict

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}

HTML_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>Bad Gateway</h1><p>The proxy could not reach the registry.</p></body></html>\n"
)


@dataclass
class Upstream:
    """The registry's answer, which an action may pass on, alter or cut."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


Action = Callable[["_ProxyHandler", Callable[[], Upstream]], None]


@dataclass
class Rule:
    path: re.Pattern[str]
    method: str | None
    action: Action
    times: int | None
    name: str
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        live = self.times is None or self.hits < self.times
        wanted = self.method is None or self.method == method
        return live and wanted and self.path.search(path) is not None


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # with the query
    headers: CaseInsensitiveDict[str]
    rule: str | None  # the name of the rule that answered, None when passed through


@dataclass
class FaultProxy:
    upstream: RegistryServer
    rules: list[Rule] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._release = threading.Event()  # set to end hanging requests
        self._http = _ProxyHTTPServer(("127.0.0.1", 0), _ProxyHandler, self)
        port = self._http.server_address[1]
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._release.set()
        self._http.shutdown()
        self._http.server_close()

    def reset(self) -> None:
        """Drop rules and records and end any hanging request (between tests)."""
        self._release.set()
        with self._lock:
            self.rules.clear()
            self.requests.clear()
        self._release = threading.Event()

    def push(self, repo: str, tag: str | None, image: Any) -> str:
        """Push straight to the upstream registry (same storage); returns the digest."""
        return self.upstream.push(repo, tag, image)

    # --- rules ---

    def add(
        self,
        path: str,
        action: Action,
        *,
        method: str | None = None,
        times: int | None = 1,
        name: str = "custom",
    ) -> Rule:
        rule = Rule(re.compile(path), method, action, times, name)
        with self._lock:
            self.rules.append(rule)
        return rule

    def status(
        self,
        path: str,
        status: int,
        *,
        times: int | None = 1,
        method: str | None = None,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Rule:
        """Answer ``status`` ``times`` times, then pass through."""
        action = _respond(status, body, headers or {})
        return self.add(path, action, method=method, times=times, name=f"status {status}")

    def rate_limit(
        self, path: str, *, retry_after: int = 1, times: int = 1, method: str | None = None
    ) -> Rule:
        """429 with ``Retry-After: retry_after`` and a registry-style error body."""
        body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"rate limit exceeded"}]}'
        headers = {"Retry-After": str(retry_after), "Content-Type": "application/json"}
        return self.status(path, 429, times=times, method=method, headers=headers, body=body)

    def unavailable(self, path: str, *, times: int = 1, method: str | None = None) -> Rule:
        return self.status(path, 503, times=times, method=method, body=b"service unavailable")

    def respond(
        self,
        path: str,
        *,
        body: bytes,
        headers: dict[str, str],
        status: int = 200,
        times: int | None = None,
        method: str | None = None,
    ) -> Rule:
        """A custom answer, e.g. a schema 1 manifest (the real registry refuses to store one)."""
        action = _respond(status, body, headers)
        return self.add(path, action, method=method, times=times, name="respond")

    def html_page(self, path: str, *, times: int | None = None, method: str | None = None) -> Rule:
        """200 with ``Content-Type: text/html``: a captive portal or a CDN error page."""
        headers = {"Content-Type": "text/html; charset=utf-8"}
        return self.respond(path, body=HTML_ERROR_PAGE, headers=headers, times=times, method=method)

    def cut(self, path: str, *, after: int, times: int = 1, method: str | None = "GET") -> Rule:
        """Send the full headers, ``after`` bytes of the body, then close the connection."""
        return self.add(path, _cut(after), method=method, times=times, name=f"cut after {after}")

    def corrupt(self, path: str, *, times: int | None = None, method: str | None = "GET") -> Rule:
        """Pass the answer on with every body byte flipped (same length, other digest)."""
        return self.add(path, _corrupt, method=method, times=times, name="corrupt")

    def stall(
        self, path: str, *, after: int, seconds: float = 30, times: int = 1, method: str = "GET"
    ) -> Rule:
        """Send the headers and ``after`` body bytes, then nothing for ``seconds`` (or until
        ``reset``): a download stuck in the middle of a layer."""

        def action(handler: _ProxyHandler, fetch: Callable[[], Upstream]) -> None:
            handler.send(fetch(), body_limit=after)
            handler.wfile.flush()
            self._release.wait(seconds)
            handler.close_connection = True

        return self.add(path, action, method=method, times=times, name=f"stall after {after}")

    def dribble(
        self,
        path: str,
        *,
        every: float,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        times: int | None = 1,
        method: str = "GET",
    ) -> Rule:
        """Send the headers, then the body (``body``, else the registry's) one byte every
        ``every`` seconds: each read returns in time, the whole never does. Ends early when the
        client hangs up or at ``reset``."""

        def action(handler: _ProxyHandler, fetch: Callable[[], Upstream]) -> None:
            upstream = (
                fetch() if body is None else Upstream(200, list((headers or {}).items()), body)
            )
            handler.send(upstream, body_limit=0)
            for i in range(len(upstream.body)):
                if self._release.wait(every):
                    break
                try:
                    handler.wfile.write(upstream.body[i : i + 1])
                    handler.wfile.flush()
                except OSError:
                    break
            handler.close_connection = True

        return self.add(path, action, method=method, times=times, name=f"dribble every {every}")

    def cut_first(self, path: str, *, after: int, method: str = "GET") -> Rule:
        """Cut (as ``cut``) the first request for each path matching, pass the rest through."""
        cut = _cut(after)
        done: set[str] = set()

        def action(handler: _ProxyHandler, fetch: Callable[[], Upstream]) -> None:
            target = urlsplit(handler.path).path
            if target in done:
                handler.send(fetch())
            else:
                done.add(target)
                cut(handler, fetch)

        return self.add(path, action, method=method, times=None, name=f"cut first after {after}")

    def hang(
        self,
        path: str,
        *,
        seconds: float = 30,
        times: int | None = 1,
        method: str | None = None,
    ) -> Rule:
        """Say nothing for ``seconds`` (or until ``reset``), then close the connection."""
        return self.add(path, self._hang(seconds), method=method, times=times, name="hang")

    def _hang(self, seconds: float) -> Action:
        def action(handler: _ProxyHandler, fetch: Callable[[], Upstream]) -> None:
            self._release.wait(seconds)
            handler.close_connection = True

        return action

    def match(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.hits += 1
                    return rule
        return None

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def seen(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests whose path (without query) matches the regex ``path``."""
        with self._lock:
            return [
                r
                for r in self.requests
                if re.search(path, urlsplit(r.path).path) and method in (None, r.method)
            ]


# --- actions -------------------------------------------------------------------------------


def _respond(status: int, body: bytes, headers: dict[str, str]) -> Action:
    def action(handler: _ProxyHandler, fetch: Callable[[], Upstream]) -> None:
        handler.send(Upstream(status, list(headers.items()), body))

    return action


def _cut(after: int) -> Action:
    def action(handler: _ProxyHandler, fetch: Callable[[], Upstream]) -> None:
        handler.send(fetch(), body_limit=after)
        handler.close_connection = True

    return action


def _corrupt(handler: _ProxyHandler, fetch: Callable[[], Upstream]) -> None:
    upstream = fetch()
    upstream.body = bytes(b ^ 0xFF for b in upstream.body)
    handler.send(upstream)


# --- the HTTP side ---------------------------------------------------------------------------


class _ProxyHTTPServer(OwnedHTTPServer):
    owner: FaultProxy


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        owner = cast(_ProxyHTTPServer, self.server).owner
        headers: CaseInsensitiveDict[str] = CaseInsensitiveDict(self.headers.items())
        body = self._read_body()
        rule = owner.match(self.command, urlsplit(self.path).path)
        owner.record(RecordedRequest(self.command, self.path, headers, rule.name if rule else None))

        def fetch() -> Upstream:
            return self._forward(owner.upstream.host, body)

        if rule is None:
            self.send(fetch())
        else:
            rule.action(self, fetch)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _forward(self, upstream: str, body: bytes) -> Upstream:
        host, port = upstream.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            connection.putrequest(
                self.command, self.path, skip_host=True, skip_accept_encoding=True
            )
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    connection.putheader(name, value)
            if body or self.command in ("POST", "PUT", "PATCH"):
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body or None)
            response = connection.getresponse()
            data = response.read()
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            return Upstream(response.status, headers, data)
        finally:
            connection.close()

    def send(self, upstream: Upstream, body_limit: int | None = None) -> None:
        self.send_response(upstream.status)
        has_length = False
        for name, value in upstream.headers:
            if name.lower() == "content-length":
                if self.command != "HEAD":
                    continue  # set below from the body we hold
                has_length = True
            self.send_header(name, value)
        if self.command != "HEAD" or not has_length:
            length = len(upstream.body) if self.command != "HEAD" else 0
            self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(upstream.body[:body_limit])
        self.wfile.flush()


def interrupt_when_stalled(
    proxy: FaultProxy,
    stalled: str,
    command: list[str],
    sig: signal.Signals = signal.SIGINT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``layerindex COMMAND…``, send it ``sig`` (Ctrl-C) once the stalled blob's read has
    begun; it must end within 5 s (the read would return only at its 60 s timeout)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "layerindex", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while not proxy.seen(f"/blobs/{stalled}") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1)  # the stalled read has begun
        process.send_signal(sig)
        interrupted = time.monotonic()
        out, err = process.communicate(timeout=70)
        assert time.monotonic() - interrupted < 5, err
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)
