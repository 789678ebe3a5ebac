"""HTTP for the registry client: one session per thread, redirects by hand, safe logging.

``Authorization`` is sent only to the origin (scheme, host, port) of the first URL: a redirect to
another host (a CDN, S3) goes without it -- S3 answers 400 to two auth mechanisms and a token must
not leak (ggcr ``transport/bearer.go`` does the same). Logged URLs lose their query strings, where
CDN signatures live.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import io
import ipaddress
import json
import logging
import re
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, cast
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from layerindex.errors import DigestMismatch, NetworkError, RegistryError, redact
from layerindex.registry.reachability import Reachability
from layerindex.registry.retry import is_permanent

log = logging.getLogger("layerindex")

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_ADDRESS_IN_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>:?\s*")
# urllib3 names its connection in messages: "HTTPConnectionPool(host='h', port=1): ..."
_CONNECTION_NAME = re.compile(r"HTTPS?Connection(?:Pool)?\([^()]*\):?\s*")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


Origin = tuple[str, str, int]  # (scheme, lower-case host, port): where a credential may go


def origin_of(url: str) -> Origin:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # a port out of range: an origin no credential goes to
        port = -1
    port = port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def host_of(url: str) -> str:
    """``url``'s host[:port] without the user info a redirect may carry (``user:pw@host``)."""
    return urlsplit(url).netloc.rpartition("@")[2]


def loggable_url(url: str) -> str:
    """``url`` without user info, query or fragment: redirect URLs carry signatures there."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{host_of(url)}{parts.path}"


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 and ::1 (with or without a port): plain HTTP, as Docker allows."""
    name = host.lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _keep_headers(request: requests.PreparedRequest) -> requests.PreparedRequest:
    # Passed as ``auth`` so requests never adds ~/.netrc credentials over our Authorization.
    return request


def _socket_error(exc: BaseException) -> OSError | None:
    """The operating system's error under urllib3's and requests' wrappers, if any."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.strerror:
            return cause
        inner = cause.args[0] if cause.args else None
        if isinstance(inner, urllib3.exceptions.MaxRetryError) and inner.reason is not None:
            cause = inner.reason
        else:
            cause = cause.__cause__ or cause.__context__
    return None


def describe(exc: BaseException) -> str:
    """A connection error in words, without URLs (they may carry signed query strings) and
    without Python's names for things: "connection refused", "name or service not known"."""
    root = _socket_error(exc)
    if isinstance(root, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({root.verify_message})"
    if root is not None and root.strerror:
        words = root.strerror[:1].lower() + root.strerror[1:]
        return f"host name not found ({words})" if isinstance(root, socket.gaierror) else words
    reason: object = exc
    inner = exc.args[0] if exc.args else None
    if isinstance(inner, urllib3.exceptions.MaxRetryError) and inner.reason is not None:
        reason = inner.reason
    if isinstance(exc, urllib3.exceptions.ProtocolError) and len(exc.args) == 2:
        # ('Connection broken: IncompleteRead(…)', IncompleteRead(…)): say it once.
        reason = exc.args[0]
        if isinstance(exc.args[1], http.client.IncompleteRead) and exc.args[1].expected:
            return f"the server closed the connection {exc.args[1].expected} bytes before the end"
    text = _CONNECTION_NAME.sub("", _ADDRESS_IN_REPR.sub("", str(reason)))
    return redact(re.sub(r"\s*\(Caused by .*\)$", "", text).strip()) or type(exc).__name__


def retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def server_message(body: bytes) -> str | None:
    """The first message of a registry error body ``{"errors": [{"code", "message"}]}``,
    redacted: it is shown and stored."""
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    errors = document.get("errors") if isinstance(document, Mapping) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
        message = errors[0].get("message") or errors[0].get("code")
        return redact(str(message)) if message else None
    return None


Reopen = Callable[[int, int], requests.Response]
"""``reopen(offset, resume)``: the blob asked for again from byte ``offset`` (``Range``), for the
``resume``-th time (1, 2, ...); a 2xx answer, or it raises."""


class BlobStream(io.RawIOBase):
    """The compressed bytes of a blob, as stored: no Content-Encoding decoding.

    A connection lost mid-body (reset, cut, a read timing out) is resumed, invisibly to the
    reader, by ``reopen`` at the byte count handed out so far: a 206 must start exactly there
    (``Content-Range``); a 200 (Range ignored, which the spec allows) has its first ``count``
    bytes read and dropped. At most ``max_resumes`` times; then a RegistryError naming the host
    and how far it got. The reader still hashes every byte, so a bad splice cannot go unnoticed.

    No deadline for the whole blob (2 GB on a slow link is fine), but progress: fewer than
    ``progress`` = (bytes, seconds) in a window is a stall, resumed as a cut is (a server
    dribbling a byte a minute passes every read timeout). And never more than ``declared``
    bytes (the manifest's size): a longer body is a DigestMismatch at the first byte too many.
    """

    def __init__(
        self,
        response: requests.Response,
        where: str,
        *,
        reopen: Reopen | None = None,
        max_resumes: int = 0,
        declared: int | None = None,
        progress: tuple[int, float] = (0, 0.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._response = response
        self._raw = response.raw
        self._where = where
        self._reopen = reopen
        self._max_resumes = max_resumes
        self._skip = 0  # bytes of a 200 answer to a Range request still to drop
        self.size = _length(response)  # the whole blob's, when the server said
        self.declared = declared
        self.bytes_read = 0
        self.resumes = 0
        self._ended = False  # read to the end: the connection goes back to the pool
        self._abandoned = False
        self._progress = progress
        self._clock = clock
        self._window = (clock(), 0)  # (start, bytes_read then) of the progress window
        self._check_size()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while True:
            if self._abandoned:
                raise RegistryError(f"{self._where}: download abandoned")
            try:
                while self._skip:
                    dropped = self._read(min(self._skip, _CHUNK))
                    if not dropped:
                        raise RegistryError(
                            f"{self._where}: the server restarted the blob (Range ignored) "
                            f"and it ended before byte {self.bytes_read}"
                        )
                    self._skip -= len(dropped)
                chunk = self._read(self._wanted(len(view)))
                self._check_progress(len(chunk))
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if not self._abandoned:
                    self._resume(exc)
                continue
            if self.declared is not None and self.bytes_read + len(chunk) > self.declared:
                raise DigestMismatch(
                    f"{self._where}: the registry sent more than the {self.declared} bytes "
                    "the manifest declares"
                )
            self._ended = not chunk and len(view) > 0
            view[: len(chunk)] = chunk
            self.bytes_read += len(chunk)
            return len(chunk)

    def _wanted(self, room: int) -> int:
        # One byte past the declared size is enough to know the body is too long.
        if self.declared is None or room == 0:
            return room
        return max(1, min(room, self.declared - self.bytes_read + 1))

    def _check_size(self) -> None:
        # Shorter is left to the reader, whose digest check (or decompressor) says what broke.
        if self.size is not None and self.declared is not None and self.size > self.declared:
            raise DigestMismatch(
                f"{self._where}: the registry announces {self.size} bytes, more than the "
                f"{self.declared} the manifest declares"
            )

    def _check_progress(self, arrived: int) -> None:
        """A TimeoutError (taken as a cut) when the window closes on too few bytes."""
        least, seconds = self._progress
        start, then = self._window
        now = self._clock()
        if not seconds or now - start < seconds:
            return
        got = self.bytes_read + arrived - then
        if got < least:
            raise TimeoutError(f"stalled: {got} bytes in {seconds:g} s, fewer than {least}")
        self._window = (now, self.bytes_read + arrived)

    def _read(self, size: int) -> bytes:
        # read1 hands over what has arrived: a read that then times out loses nothing.
        # (an older urllib3 without read1: a timeout drops that read's partial bytes.)
        read1 = getattr(self._raw, "read1", None)
        if read1 is not None:
            return bytes(read1(size, decode_content=False))
        return bytes(self._raw.read(size, decode_content=False))

    def _resume(self, exc: BaseException) -> None:
        lost = f"connection lost after {self.bytes_read} bytes"
        if self._reopen is None or self.resumes >= self._max_resumes:
            resumed = f" (resumed {self.resumes} times)" if self.resumes else ""
            raise RegistryError(f"{self._where}: {lost}{resumed}: {describe(exc)}") from None
        self.resumes += 1
        log.info(
            "%s: %s (%s); resuming, %d of %d",
            self._where,
            lost,
            describe(exc),
            self.resumes,
            self._max_resumes,
        )
        self._response.close()
        try:
            response = self._reopen(self.bytes_read, self.resumes)
        except RegistryError as error:
            raise RegistryError(f"{self._where}: {lost}; resuming failed: {error}") from None
        self._response, self._raw = response, response.raw
        if self._abandoned:  # while the new request was made
            response.close()
            return
        self._check_resumed(response)

    def _check_resumed(self, response: requests.Response) -> None:
        status = response.status_code
        self._window = (self._clock(), self.bytes_read)
        if status == 200:  # Range ignored: the whole blob again
            if self.size is None:
                self.size = _length(response)
                self._check_size()
            self._skip = self.bytes_read
            return
        if status != 206:
            raise RegistryError(
                f"{self._where}: resuming at byte {self.bytes_read}, the server answered {status}"
            )
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        first = int(match.group(1)) if match else None
        total = int(match.group(3)) if match and match.group(3) != "*" else None
        if first != self.bytes_read or (None not in (total, self.size) and total != self.size):
            said = response.headers.get("Content-Range", "no Content-Range")
            raise RegistryError(
                f"{self._where}: asked to resume at byte {self.bytes_read}, the server sent "
                f"{said!r}"
            )

    def abandon(self) -> None:
        """Leaving before the end (an error, Ctrl-C): end a read that another thread may be
        blocked in now, without a resume. A download that stalls returns from a read only at
        the read timeout (60 s); and a buffered reader's close waits for its read to return.
        Needs urllib3 2.3's ``shutdown``; with an older one the read ends at its timeout."""
        if self._ended or self.closed:
            return
        self._abandoned = True
        shutdown = getattr(self._raw, "shutdown", None)
        if shutdown is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                shutdown()

    def close(self) -> None:
        if not self.closed:
            self._response.close()
        super().close()


class BlobReader(io.BufferedReader):
    """A blob download, buffered; ``abandon()`` ends a read another thread is blocked in."""

    def abandon(self) -> None:
        cast(BlobStream, self.raw).abandon()


def _length(response: requests.Response) -> int | None:
    length = response.headers.get("Content-Length", "")
    return int(length) if response.status_code == 200 and length.isdigit() else None


_header_watch = threading.local()  # .seconds: the deadline for the answer's status and headers


class _TooSlow(ConnectionAbortedError):
    """The answer's headers did not arrive by the deadline: the socket was shut down."""


def _watched(connection: Any, getresponse: Callable[[], Any]) -> Any:
    """``getresponse()`` (status line and headers), the socket shut down at the deadline: a
    read timeout bounds one read, and a server sending a header byte a second never hits it."""
    seconds = getattr(_header_watch, "seconds", None)
    sock = connection.sock
    if seconds is None or sock is None:
        return getresponse()
    fired = threading.Event()

    def cut() -> None:
        fired.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    too_slow = _TooSlow(errno.ETIMEDOUT, f"no answer within {seconds:g} s")
    try:
        response = getresponse()
    except Exception:
        if fired.is_set():
            raise too_slow from None
        raise
    finally:
        timer.cancel()
    if fired.is_set():  # the headers ended where the shutdown cut them
        response.close()
        raise too_slow
    return response


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    def getresponse(self) -> Any:
        return _watched(self, super().getresponse)


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def getresponse(self) -> Any:
        return _watched(self, super().getresponse)


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """Connections whose answer's headers have a deadline (``_watched``)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }


class Transport:
    """requests with our rules; thread-safe (a Session per thread). The answer to each
    request must have arrived, headers and all, within the read timeout (``_watched``)."""

    def __init__(
        self,
        *,
        timeout: tuple[float, float],
        user_agent: str,
        reachability: Reachability | None = None,
    ) -> None:
        self.timeout = timeout
        self.user_agent = user_agent
        self.reachability = reachability  # hosts given up are not asked, a redirect's either
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = self.user_agent
            for scheme in ("http://", "https://"):
                session.mount(scheme, _WatchedAdapter())
            self._local.session = session
        return session

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        authorization: str | None = None,
        data: Mapping[str, str] | None = None,
        stream: bool = False,
        origin: Origin | None = None,
    ) -> requests.Response:
        """One HTTP exchange, redirects followed by hand. ``authorization`` goes only to
        ``origin`` (by default ``url``'s), never to a host a redirect (or a URL the server
        named, such as a tag list's ``Link``) leads to."""
        allowed = origin or origin_of(url)
        for _hop in range(MAX_REDIRECTS + 1):
            hop_headers = dict(headers or {})
            if authorization is not None and origin_of(url) == allowed:
                hop_headers["Authorization"] = authorization
            host = host_of(url)
            if self.reachability is not None:
                self.reachability.check(host)
            _header_watch.seconds = self.timeout[1]
            try:
                response = self._session().request(
                    method,
                    url,
                    headers=hop_headers,
                    data=data,
                    stream=stream,
                    allow_redirects=False,
                    timeout=self.timeout,
                    auth=_keep_headers,
                )
            except requests.Timeout as exc:
                message = f"timed out talking to {host}: {describe(exc)}"
                raise NetworkError(message, host=host) from None
            except requests.RequestException as exc:
                if isinstance(_socket_error(exc), _TooSlow):
                    message = f"timed out talking to {host}: {describe(exc)}"
                    raise NetworkError(message, host=host) from None
                message = f"cannot connect to {host}: {describe(exc)}"
                permanent = is_permanent(_socket_error(exc))
                raise NetworkError(message, host=host, permanent=permanent) from None
            log.debug(
                "%s %s -> %d (%s bytes)",
                method,
                loggable_url(url),
                response.status_code,
                response.headers.get("Content-Length", "?"),
            )
            if self.reachability is not None:
                self.reachability.answered(host)
            location = response.headers.get("Location")
            if response.status_code not in _REDIRECTS or not location:
                return response
            response.close()
            url = urljoin(url, location)
            if response.status_code == 303 or (
                response.status_code in (301, 302) and method == "POST"
            ):
                method, data = "GET", None
        raise RegistryError(f"too many redirects (more than {MAX_REDIRECTS}) from {host}")


def read_body(
    response: requests.Response,
    limit: int,
    what: str,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
) -> bytes:
    """The body as sent (no Content-Encoding decoding), at most ``limit`` bytes, whole within
    ``deadline`` seconds (a read timeout bounds one read only: a server sending a byte a second
    would pass it for ever). A connection lost mid-body is a NetworkError, worth asking again;
    too big or too slow is a RegistryError."""
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        raise RegistryError(f"{what} is {int(length)} bytes, more than the {limit} allowed")
    chunks: list[bytes] = []
    total = 0
    give_up = clock() + deadline
    read1 = getattr(response.raw, "read1", None)  # what has arrived, not a full chunk
    read = read1 if read1 is not None else response.raw.read
    try:
        while chunk := read(_CHUNK, decode_content=False):
            total += len(chunk)
            if total > limit:
                raise RegistryError(f"{what} is more than the {limit} bytes allowed")
            chunks.append(chunk)
            if clock() > give_up:
                raise RegistryError(
                    f"{what} did not arrive within {deadline:g} s ({total} bytes received)"
                )
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise NetworkError(f"{what}: connection lost: {describe(exc)}") from None
    return b"".join(chunks)


def is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return True


def decompress(body: bytes, limit: int, what: str) -> bytes:
    """Undo a gzip/deflate transport encoding, at most ``limit`` bytes out."""
    try:
        decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
        out = decoder.decompress(body, limit + 1)
    except zlib.error:
        return body
    if len(out) > limit:
        raise RegistryError(f"{what} is more than the {limit} bytes allowed")
    return out
