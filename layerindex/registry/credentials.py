"""Registry credentials where users keep them; looked up per registry, never logged or stored.

Sources, first hit wins (each a Docker ``config.json``-shaped document):

1. ``$REGISTRY_AUTH_FILE`` (podman/skopeo/buildah's override)
2. ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``
3. ``$XDG_RUNTIME_DIR/containers/auth.json``
4. ``~/.config/containers/auth.json``

Within a document: ``credHelpers[host]``, then ``credsStore``, then the inline ``auths`` entry
(docker's order; the inline entry is a fallback for a store that has nothing). ``auths`` keys may
be hosts or URLs (Docker Hub's is ``https://index.docker.io/v1/``); podman also keys by
``host/namespace``, and the longest prefix of the repository wins.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from layerindex.errors import redact
from layerindex.reference import DOCKER_HUB, DOCKER_HUB_ALIASES, DOCKER_HUB_API_HOST

log = logging.getLogger("layerindex")

# Docker Hub's key in config files and the server URL its credential helpers expect.
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
_HUB_HOSTS = frozenset({*DOCKER_HUB_ALIASES, DOCKER_HUB_API_HOST})
HELPER_TIMEOUT = 60.0  # seconds; a helper may wait on a keyring unlock prompt
_IDENTITY_TOKEN_USERNAME = "<token>"  # helper protocol: Secret is an identity (refresh) token


class Credentials(NamedTuple):
    username: str | None
    password: str | None
    identity_token: str | None = None

    def __repr__(self) -> str:
        # Secrets never reach a log line or a traceback through repr().
        password = "'***'" if self.password else repr(self.password)
        token = "'***'" if self.identity_token else repr(self.identity_token)
        return (
            f"Credentials(username={self.username!r}, password={password}, identity_token={token})"
        )


def _is_hub(registry: str) -> bool:
    return registry.lower() in _HUB_HOSTS


def _registry_keys(registry: str) -> frozenset[str]:
    """The host keys a registry may be filed under."""
    return _HUB_HOSTS if _is_hub(registry) else frozenset({registry.lower()})


def _split_key(key: str) -> tuple[str, str]:
    """A config key as (host, namespace path): "https://index.docker.io/v1/" → ("index.docker.io",
    ""), "quay.io/team" → ("quay.io", "team"). URL keys carry an API version path, not a namespace.
    """
    if "://" in key:
        rest = key.split("://", 1)[1]
        return rest.split("/", 1)[0].lower(), ""
    host, _, path = key.partition("/")
    return host.lower(), path.strip("/")


def _lookup(mapping: Mapping[str, Any], registry: str, repository: str) -> Any | None:
    """The value whose key names ``registry`` (and the longest prefix of ``repository``)."""
    hosts = _registry_keys(registry)
    best: tuple[int, Any] | None = None
    for key, value in mapping.items():
        host, namespace = _split_key(key)
        if host not in hosts:
            continue
        if namespace and repository != namespace and not repository.startswith(namespace + "/"):
            continue
        rank = len(namespace) if namespace else -1
        if best is None or rank > best[0]:
            best = (rank, value)
    return None if best is None else best[1]


def _server_url(registry: str) -> str:
    """What a credential helper is asked for: Docker Hub's v1 URL, else the host as written."""
    return DOCKER_HUB_CONFIG_KEY if _is_hub(registry) else registry


def _from_auth_entry(entry: Any, where: str) -> Credentials | None:
    if not isinstance(entry, Mapping):
        return None
    username = entry.get("username") or None
    password = entry.get("password") or None
    identity_token = entry.get("identitytoken") or None
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            log.warning("%s: an 'auth' value is not base64 of user:password; ignored", where)
            decoded = ""
        user, colon, secret = decoded.partition(":")
        if colon:
            username, password = user or None, secret or None
        elif decoded:
            log.warning("%s: an 'auth' value has no ':' between user and password; ignored", where)
    if username is None and password is None and identity_token is None:
        return None
    return Credentials(username, password, identity_token)


def run_credential_helper(name: str, server_url: str) -> Credentials | None:
    """``docker-credential-NAME get`` with ``server_url`` on stdin (docker-credential-helpers).

    "credentials not found" and a missing helper both mean no credentials (the latter warns)."""
    program = f"docker-credential-{name}"
    try:
        result = subprocess.run(
            [program, "get"],
            input=server_url,
            capture_output=True,
            text=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        log.warning(
            "credential helper %s is not on PATH; no credentials for %s", program, server_url
        )
        return None
    except subprocess.TimeoutExpired:
        log.warning("credential helper %s timed out for %s", program, server_url)
        return None
    if result.returncode != 0:
        # The helper's own words, first line only; but a stdout that is a JSON document may be
        # an answer (with its Secret) from a helper that then failed: never echoed.
        stdout = "" if result.stdout.lstrip().startswith(("{", "[")) else result.stdout
        said = (stdout + result.stderr).strip()
        if "credentials not found" not in said.lower():
            first_line = said.splitlines()[0] if said else f"exit status {result.returncode}"
            log.warning(
                "credential helper %s failed for %s: %s", program, server_url, redact(first_line)
            )
        return None
    try:
        answer = json.loads(result.stdout)
    except json.JSONDecodeError:
        log.warning("credential helper %s printed something that is not JSON", program)
        return None
    if not isinstance(answer, Mapping):
        return None
    username = answer.get("Username") or None
    secret = answer.get("Secret") or None
    if secret is None:
        return None
    if username == _IDENTITY_TOKEN_USERNAME:
        return Credentials(None, None, secret)
    return Credentials(username, secret, None)


class Keychain:
    """Credentials from config documents: paths (read on each lookup) or already-loaded dicts."""

    def __init__(self, sources: Iterable[Path | Mapping[str, Any]] = ()) -> None:
        self.sources: tuple[Path | Mapping[str, Any], ...] = tuple(sources)
        self._helper_answers: dict[tuple[str, str], Credentials | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Keychain:
        env = os.environ if environ is None else environ
        home = Path(env.get("HOME") or Path.home())
        paths: list[Path] = []
        if env.get("REGISTRY_AUTH_FILE"):
            paths.append(Path(env["REGISTRY_AUTH_FILE"]))
        docker_dir = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else home / ".docker"
        paths.append(docker_dir / "config.json")
        if env.get("XDG_RUNTIME_DIR"):
            paths.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
        paths.append(home / ".config" / "containers" / "auth.json")
        return cls(paths)

    def resolve(self, registry: str, repository: str) -> Credentials | None:
        """Credentials for ``registry`` ("docker.io", "ghcr.io", "localhost:5000") and
        ``repository`` ("library/alpine"), or None to go anonymous."""
        for source in self.sources:
            document = self._load(source)
            if document is None:
                continue
            found = self._from_document(document, registry, repository, str(source))
            if found is not None:
                return found
        return None

    def _load(self, source: Path | Mapping[str, Any]) -> Mapping[str, Any] | None:
        if not isinstance(source, Path):
            return source
        try:
            text = source.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read credentials file %s: %s", source, exc.strerror)
            return None
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            log.warning(
                "credentials file %s is not valid JSON (line %d); ignored", source, exc.lineno
            )
            return None
        return document if isinstance(document, Mapping) else None

    def _helper(self, name: str, registry: str) -> Credentials | None:
        key = (name, _server_url(registry))
        with self._lock:
            if key in self._helper_answers:
                return self._helper_answers[key]
        answer = run_credential_helper(*key)
        with self._lock:
            self._helper_answers[key] = answer
        return answer

    def _from_document(
        self, document: Mapping[str, Any], registry: str, repository: str, where: str
    ) -> Credentials | None:
        helpers = document.get("credHelpers")
        if isinstance(helpers, Mapping):
            helper = _lookup(helpers, registry, repository)
            if isinstance(helper, str) and helper:
                return self._helper(helper, registry)
        store = document.get("credsStore")
        if isinstance(store, str) and store:
            found = self._helper(store, registry)
            if found is not None:
                return found
        auths = document.get("auths")
        if isinstance(auths, Mapping):
            return _from_auth_entry(_lookup(auths, registry, repository), where)
        return None


class StaticKeychain(Keychain):
    """Credentials given in code, per registry host, then ``fallback`` for every other
    registry (the CLI has no credential options: it reads the environment's config files and
    helpers, ``default_keychain``)."""

    def __init__(
        self, credentials: Mapping[str, Credentials], fallback: Keychain | None = None
    ) -> None:
        super().__init__()
        self._by_host = {
            (DOCKER_HUB if _is_hub(host) else host.lower()): creds
            for host, creds in credentials.items()
        }
        self.fallback = fallback

    def resolve(self, registry: str, repository: str) -> Credentials | None:
        host = DOCKER_HUB if _is_hub(registry) else registry.lower()
        if host in self._by_host:
            return self._by_host[host]
        return self.fallback.resolve(registry, repository) if self.fallback else None


def default_keychain() -> Keychain:
    """The keychain the CLI uses: the environment's config files and helpers."""
    return Keychain.from_environment()
