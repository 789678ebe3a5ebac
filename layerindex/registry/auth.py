"""Registry auth pieces without HTTP: ``WWW-Authenticate`` challenges, token answers, a token cache.

The flow (distribution docs/spec/auth/token.md): a 401 from ``/v2/`` carries
``Bearer realm="…",service="…",scope="repository:name:pull"``; the client gets a token from the
realm and sends it as ``Authorization: Bearer …`` until it expires (60 s when unspecified).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TOKEN_LIFETIME = 60.0  # seconds, when the token answer has no expires_in (token.md)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge; ``scheme`` lower case ("bearer", "basic")."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def scopes(self) -> tuple[str, ...]:
        scope = self.params.get("scope", "")
        return tuple(scope.split(" ")) if scope else ()


def _quoted(header: str, start: int) -> tuple[str, int]:
    """The quoted-string starting at ``header[start] == '"'`` and the index after it."""
    out: list[str] = []
    i = start + 1
    while i < len(header):
        char = header[i]
        if char == "\\" and i + 1 < len(header):
            out.append(header[i + 1])
            i += 2
        elif char == '"':
            return "".join(out), i + 1
        else:
            out.append(char)
            i += 1
    return "".join(out), i  # unterminated: take the rest


def parse_challenges(header: str) -> list[Challenge]:
    """Parse ``WWW-Authenticate``; quoted values may hold commas: scope="repository:a:pull,push"."""
    challenges: list[tuple[str, dict[str, str]]] = []
    i = 0
    while i < len(header):
        if header[i] in " \t,":
            i += 1
            continue
        match = _TOKEN.match(header, i)
        if match is None:
            i += 1  # skip a stray character rather than fail on a sloppy server
            continue
        name, i = match.group(), match.end()
        j = i
        while j < len(header) and header[j] in " \t":
            j += 1
        if j < len(header) and header[j] == "=" and challenges:
            j += 1
            while j < len(header) and header[j] in " \t":
                j += 1
            if j < len(header) and header[j] == '"':
                value, i = _quoted(header, j)
            else:
                value_match = _TOKEN.match(header, j)
                value, i = (value_match.group(), value_match.end()) if value_match else ("", j)
            challenges[-1][1][name.lower()] = value
        else:
            challenges.append((name.lower(), {}))
    return [Challenge(scheme, params) for scheme, params in challenges]


def choose_challenge(challenges: list[Challenge]) -> Challenge | None:
    """Bearer if offered (a token can be anonymous), else Basic, else None."""
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float  # on the cache's clock


def parse_token_answer(body: bytes, now: float) -> Token | None:
    """``{"token": …}`` or ``{"access_token": …}`` with ``expires_in``; None if unusable.

    Expiry counts from when we got it, not ``issued_at``: a server clock ahead or behind ours
    would otherwise keep a dead token or refetch on every request; a 401 refreshes anyway."""
    try:
        answer: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(answer, Mapping):
        return None
    value = answer.get("token") or answer.get("access_token")
    if not isinstance(value, str) or not value:
        return None
    lifetime = answer.get("expires_in")
    if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    margin = min(30.0, lifetime / 10)  # renew a little early so a request never races expiry
    return Token(value, now + float(lifetime) - margin)


TokenKey = tuple[str, str, str, tuple[str, ...]]  # (registry host, realm, service, scopes)


class TokenCache:
    """Bearer tokens per (registry, realm, service, scopes), shared by worker threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._tokens: dict[TokenKey, Token] = {}
        self._lock = threading.Lock()

    def get(self, key: TokenKey) -> str | None:
        with self._lock:
            token = self._tokens.get(key)
            if token is None:
                return None
            if token.expires_at <= self.clock():
                del self._tokens[key]
                return None
            return token.value

    def put(self, key: TokenKey, token: Token) -> None:
        with self._lock:
            self._tokens[key] = token
