"""A Docker token server (distribution ``docs/spec/auth/token.md``) on loopback, for tests.

``GET /token?service=...&scope=repository:NAME:pull,push`` with optional Basic credentials answers
``{"token", "access_token", "expires_in", "issued_at"}``. Tokens are real RS256 JWTs with an
``x5c`` header holding a self-signed certificate, which the registry trusts as its
``rootcertbundle`` and verifies. Who gets what:

- anonymous: ``pull`` on every repository except ``private/...`` (there: a token without access,
  so the registry answers 401 ``insufficient_scope``, as Docker Hub does);
- ``USERNAME``/``PASSWORD``: ``pull`` everywhere, ``private/...`` included;
- ``PUSH_USERNAME``/``PUSH_PASSWORD`` (the push helper): ``pull`` and ``push`` everywhere;
- wrong credentials: 401.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from loopback import OwnedHTTPServer

SERVICE = "registry.layerindex.test"
ISSUER = "token.layerindex.test"
USERNAME, PASSWORD = "reader", "reader-secret"
PUSH_USERNAME, PUSH_PASSWORD = "pusher", "pusher-secret"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenSigner:
    """An RSA key and a self-signed certificate; signs RS256 JWTs carrying the cert in ``x5c``."""

    def __init__(self, common_name: str = ISSUER) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def sign(self, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
        """``header`` replaces the default ``{"typ", "alg": "RS256", "x5c"}``."""
        if header is None:
            der = self.cert.public_bytes(serialization.Encoding.DER)
            header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = ".".join(
            b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"

    def token(
        self,
        access: list[dict[str, Any]],
        *,
        subject: str = "",
        audience: str = SERVICE,
        issuer: str = ISSUER,
        expires_in: int = 300,
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": issuer,
            "sub": subject,
            "aud": audience,
            "exp": now + expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        return self.sign(claims)


@dataclass(frozen=True)
class TokenRequest:
    service: str | None
    scopes: tuple[str, ...]
    username: str | None  # None: anonymous (or unreadable credentials)
    status: int


def parse_scope(scope: str) -> tuple[str, str, list[str]]:
    """``repository:library/alpine:pull,push`` -> (type, name, actions); names hold no colon
    except a registry port, so split from both ends."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return kind, name, [a for a in actions.split(",") if a]


class TokenServer:
    """The HTTP token endpoint; ``realm`` is ``{url}/token``. Thread-safe request records."""

    def __init__(self, host: str = "127.0.0.1", service: str = SERVICE) -> None:
        self.signer = TokenSigner()
        self.service = service
        self.issuer = ISSUER
        self.users = {USERNAME: PASSWORD, PUSH_USERNAME: PUSH_PASSWORD}
        self.username, self.password = USERNAME, PASSWORD
        self.expires_in: int | None = 300  # None: omit the field (clients must assume 60 s)
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._http = _TokenHTTPServer((host, 0), _TokenHandler, self)
        bound_host, port = self._http.server_address[:2]
        self.host = f"{bound_host!s}:{port}"
        self.url = f"http://{self.host}"
        self.realm = f"{self.url}/token"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
        self.expires_in = 300

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def granted(self, username: str | None, scope: str) -> dict[str, Any] | None:
        kind, name, actions = parse_scope(scope)
        if kind != "repository":
            return None
        if username == PUSH_USERNAME:
            allowed = {"pull", "push", "delete", "*"}
        elif username is not None or not name.startswith("private/"):
            allowed = {"pull"}
        else:
            allowed = set()
        return {"type": kind, "name": name, "actions": [a for a in actions if a in allowed]}

    def issue(self, username: str | None, service: str, scopes: list[str]) -> dict[str, Any]:
        access = [grant for scope in scopes if (grant := self.granted(username, scope))]
        expires_in = self.expires_in if self.expires_in is not None else 60
        token = self.signer.token(
            access, subject=username or "", audience=service, expires_in=expires_in
        )
        body: dict[str, Any] = {"token": token, "access_token": token}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        body["issued_at"] = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
        return body

    def record(self, request: TokenRequest) -> None:
        with self._lock:
            self.requests.append(request)


class _TokenHTTPServer(OwnedHTTPServer):
    owner: TokenServer


class _TokenHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        owner = cast(_TokenHTTPServer, self.server).owner
        url = urlsplit(self.path)
        if url.path != "/token":
            self._answer(404, {"details": "not found"})
            return
        query = parse_qs(url.query)
        service = query.get("service", [None])[0]
        scopes = [s for value in query.get("scope", []) for s in value.split(" ") if s]
        valid, username = self._credentials(owner)
        if not valid:
            owner.record(TokenRequest(service, tuple(scopes), username, 401))
            self._answer(401, {"details": "incorrect username or password"})
            return
        owner.record(TokenRequest(service, tuple(scopes), username, 200))
        self._answer(200, owner.issue(username, service or owner.service, scopes))

    def _credentials(self, owner: TokenServer) -> tuple[bool, str | None]:
        """(valid, username): (True, None) when anonymous, (False, name) for a wrong password."""
        header = self.headers.get("Authorization")
        if header is None:
            return True, None
        scheme, _, encoded = header.partition(" ")
        try:
            username, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return False, None
        return scheme.lower() == "basic" and owner.users.get(username) == password, username
