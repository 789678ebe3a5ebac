"""A real registry (Debian's ``docker-registry``, CNCF distribution 2.8) on a free loopback port.

Flavours (``conftest.py`` starts each once per session, when a test first asks for it):

- ``start_plain`` -- anonymous;
- ``start_hub`` -- like Docker Hub: token auth (``token_server.TokenServer``) and blob GETs
  redirected (307) by the ``redirect`` storage middleware to a ``BlobServer`` on another host
  name (127.0.0.2, else ``localhost``), which refuses requests carrying ``Authorization`` the
  way S3 does;
- ``start_basic`` -- ``htpasswd`` (bcrypt) Basic auth.

The config is JSON, which the registry's YAML loader reads as it is.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, cast
from urllib.parse import urljoin, urlsplit

import pytest
import requests
from images import Image, Index
from loopback import OwnedHTTPServer
from requests.structures import CaseInsensitiveDict
from token_server import PUSH_PASSWORD, PUSH_USERNAME, TokenServer

BINARY = os.environ.get("LAYERINDEX_TEST_REGISTRY", "/usr/bin/docker-registry")
RUNNING: list[RegistryServer] = []  # every started server, for log dumps on test failure


def require_binary() -> None:
    """Under CI=true a missing registry fails the run; elsewhere the test skips."""
    if os.access(BINARY, os.X_OK):
        return
    reason = f"registry binary {BINARY} not found (apt-get install docker-registry)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true: registry tests must run", pytrace=False)
    pytest.skip(reason)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def second_loopback_host() -> str:
    """A host name other than 127.0.0.1 that still reaches this machine."""
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.2", 0))
        return "127.0.0.2"
    except OSError:
        return "localhost"


class RegistryServer:
    """One ``docker-registry serve`` process; ``push`` authenticates itself where needed."""

    def __init__(
        self,
        workdir: Path,
        *,
        auth: dict[str, Any] | None = None,
        middleware: dict[str, Any] | None = None,
        push_credentials: tuple[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.storage = workdir / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "registry.log"
        self._auth, self._middleware = auth, middleware
        self._push_credentials = push_credentials
        self._process: subprocess.Popen[bytes] | None = None
        self.host = self.url = ""
        self._pusher = requests.Session()
        self._tokens: dict[str, str] = {}

    # --- process ---

    def config(self, port: int) -> dict[str, Any]:
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        }
        if self._auth:
            config["auth"] = self._auth
        if self._middleware:
            config["middleware"] = self._middleware
        return config

    def start(self) -> None:
        for _attempt in range(3):  # another process may take the free port before we bind it
            port = free_port()
            config_path = self.workdir / "config.yml"
            config_path.write_text(json.dumps(self.config(port), indent=2))
            with self.log_path.open("ab") as log:
                self._process = subprocess.Popen(
                    [BINARY, "serve", str(config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            self.host, self.url = f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"
            if self._wait_ready():
                RUNNING.append(self)
                return
            self.stop()
        raise RuntimeError(f"registry did not start; log:\n{self.log_tail()}")

    def _wait_ready(self, timeout: float = 15) -> bool:
        deadline = time.monotonic() + timeout
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                if requests.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401):
                    return True
            except requests.ConnectionError:
                pass
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self in RUNNING:
            RUNNING.remove(self)
        self._pusher.close()

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_tail(self, since: int = 0, limit: int = 20000) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(max(since, self.log_size() - limit))
            return log.read().decode(errors="replace")

    # --- the push helper ---

    def _request(self, method: str, url: str, repo: str, **kwargs: Any) -> requests.Response:
        """A request with push rights: answers a Bearer or Basic challenge once."""
        headers = dict(kwargs.pop("headers", {}))
        if repo in self._tokens:
            headers["Authorization"] = self._tokens[repo]
        response = self._pusher.request(method, url, headers=headers, timeout=30, **kwargs)
        if response.status_code != 401 or self._push_credentials is None:
            return response
        challenge = response.headers.get("WWW-Authenticate", "")
        if challenge.lower().startswith("bearer"):
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            token = requests.get(
                params["realm"],
                params={"service": params["service"], "scope": f"repository:{repo}:pull,push"},
                auth=self._push_credentials,
                timeout=30,
            )
            token.raise_for_status()
            self._tokens[repo] = f"Bearer {token.json()['token']}"
        else:
            user_password = ":".join(self._push_credentials).encode()
            self._tokens[repo] = f"Basic {base64.b64encode(user_password).decode()}"
        headers["Authorization"] = self._tokens[repo]
        return self._pusher.request(method, url, headers=headers, timeout=30, **kwargs)

    def has_blob(self, repo: str, digest: str) -> bool:
        url = f"{self.url}/v2/{repo}/blobs/{digest}"
        status = self._request("HEAD", url, repo, allow_redirects=False).status_code
        return status in (200, 307)

    def push_blob(self, repo: str, data: bytes, digest: str) -> None:
        """Monolithic upload (POST then PUT ?digest=), skipped when the blob is there already."""
        if self.has_blob(repo, digest):
            return
        started = self._request("POST", f"{self.url}/v2/{repo}/blobs/uploads/", repo)
        assert started.status_code == 202, (started.status_code, started.text)
        location = urljoin(self.url, started.headers["Location"])
        done = self._request(
            "PUT",
            location,
            repo,
            params={"digest": digest},
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert done.status_code == 201, (done.status_code, done.text)

    def push_raw_manifest(
        self, repo: str, ref: str, body: bytes, media_type: str
    ) -> requests.Response:
        """PUT any bytes as a manifest; the response is returned unchecked.

        This registry refuses schema 1 (400 MANIFEST_INVALID): serve those via the fault proxy."""
        url = f"{self.url}/v2/{repo}/manifests/{ref}"
        return self._request("PUT", url, repo, data=body, headers={"Content-Type": media_type})

    def push(self, repo: str, tag: str | None, image: Image | Index) -> str:
        """Push blobs, then child manifests, then the manifest under ``tag`` (or its digest).
        Returns the manifest digest."""
        children = image.images if isinstance(image, Index) else ()
        for child in children:
            self.push(repo, None, child)
        if isinstance(image, Image):
            for layer in image.layers:
                self.push_blob(repo, layer.blob, layer.digest)
            self.push_blob(repo, image.config, image.config_digest)
            media_type = image.manifest_media_type
        else:
            media_type = image.media_type
        response = self.push_raw_manifest(repo, tag or image.digest, image.manifest, media_type)
        assert response.status_code == 201, (response.status_code, response.text)
        assert response.headers["Docker-Content-Digest"] == image.digest
        return image.digest


# --- the blob host behind redirects --------------------------------------------------------


@dataclass(frozen=True)
class BlobRequest:
    method: str
    path: str
    headers: CaseInsensitiveDict[str]
    status: int


class BlobServer:
    """Serves the registry's storage files at the paths the redirect middleware emits
    (``/docker/registry/v2/blobs/sha256/ab/<hex>/data``: distribution 2.8 keeps only the scheme
    and host of ``baseurl``). Like S3 it answers 400 to any request with ``Authorization``.
    Single ``Range`` requests get 206 unless ``ranges`` is False (then 200, whole body)."""

    def __init__(self, storage: Path, host: str) -> None:
        self.storage = storage.resolve()
        self.ranges = True
        self.requests: list[BlobRequest] = []
        self.bytes_served = 0
        self._lock = threading.Lock()
        self._http = _BlobHTTPServer((host, 0), _BlobHandler, self)
        port = self._http.server_address[1]
        self.host = f"{host}:{port}"
        self.url = f"http://{self.host}"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_served = 0
        self.ranges = True

    def record(self, request: BlobRequest, sent: int) -> None:
        with self._lock:
            self.requests.append(request)
            self.bytes_served += sent

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()


class _BlobHTTPServer(OwnedHTTPServer):
    owner: BlobServer


S3_AUTH_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InvalidArgument</Code><Message>Only '
    b"one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query "
    b"string parameter or the Authorization header should be specified</Message></Error>"
)


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` as an inclusive (first, last); None if the
    header is not one satisfiable range."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":
        return max(size - int(last), 0), size - 1
    end = min(int(last), size - 1) if last else size - 1
    return (int(first), end) if int(first) <= end else None


class _BlobHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        owner = cast(_BlobHTTPServer, self.server).owner
        headers: CaseInsensitiveDict[str] = CaseInsensitiveDict(self.headers.items())
        status, body, extra = self._answer(owner, headers)
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        sent = len(body) if self.command != "HEAD" else 0
        # recorded before the body goes out, so a client that has it sees the counts
        owner.record(BlobRequest(self.command, self.path, headers, status), sent)
        self.wfile.write(body[:sent])

    def _answer(
        self, owner: BlobServer, headers: CaseInsensitiveDict[str]
    ) -> tuple[int, bytes, dict[str, str]]:
        if "Authorization" in headers:
            return 400, S3_AUTH_ERROR, {"Content-Type": "application/xml"}
        path = (owner.storage / urlsplit(self.path).path.lstrip("/")).resolve()
        if not path.is_relative_to(owner.storage) or not path.is_file():
            return 404, b"not found", {"Content-Type": "text/plain"}
        data = path.read_bytes()
        extra = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if "Range" not in headers or not owner.ranges:
            return 200, data, extra
        span = parse_range(headers["Range"], len(data))
        if span is None:
            return 416, b"", {"Content-Range": f"bytes */{len(data)}"}
        first, last = span
        extra["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        return 206, data[first : last + 1], extra


# --- flavours ----------------------------------------------------------------------------


class HubRegistry(RegistryServer):
    """Token auth plus blob redirects to ``blob_server`` on another host name."""

    token_server: TokenServer
    blob_server: BlobServer

    def stop(self) -> None:
        super().stop()
        self.token_server.stop()
        self.blob_server.stop()


class BasicRegistry(RegistryServer):
    username: str
    password: str


def start_plain(workdir: Path) -> RegistryServer:
    require_binary()
    server = RegistryServer(workdir)
    server.start()
    return server


def start_hub(workdir: Path) -> HubRegistry:
    require_binary()
    token_server = TokenServer()
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    blob_server = BlobServer(storage, second_loopback_host())
    cert = workdir / "token-cert.pem"
    cert.write_bytes(token_server.signer.cert_pem)
    auth = {
        "token": {
            "realm": token_server.realm,
            "service": token_server.service,
            "issuer": token_server.issuer,
            "rootcertbundle": str(cert),
        }
    }
    redirect = {"name": "redirect", "options": {"baseurl": blob_server.url}}
    server = HubRegistry(
        workdir,
        auth=auth,
        middleware={"storage": [redirect]},
        push_credentials=(PUSH_USERNAME, PUSH_PASSWORD),
    )
    server.token_server, server.blob_server = token_server, blob_server
    try:
        server.start()
    except BaseException:
        token_server.stop()
        blob_server.stop()
        raise
    return server


def start_basic(workdir: Path, username: str = "basic-user") -> BasicRegistry:
    require_binary()
    import bcrypt  # the test extra's; imported here so other flavours run without it

    password = secrets.token_urlsafe(12)
    htpasswd = workdir / "htpasswd"
    workdir.mkdir(parents=True, exist_ok=True)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{username}:{hashed}\n")
    auth = {"htpasswd": {"realm": "layerindex-basic", "path": str(htpasswd)}}
    server = BasicRegistry(workdir, auth=auth, push_credentials=(username, password))
    server.username, server.password = username, password
    server.start()
    return server
