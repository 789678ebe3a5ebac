"""Image references as Docker users write them: ``alpine``, ``ghcr.io/org/app:1.2``, ``a@sha256:…``.

The grammar is distribution/reference's (and go-containerregistry ``pkg/name``'s): the first
``/``-separated component names a registry only if it looks like a host (has a ``.`` or a ``:``, or
is ``localhost``); otherwise the image is on Docker Hub, where one-component names live under
``library/``. Everything is checked here, before any network call.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from layerindex.errors import InvalidReference

DOCKER_HUB = "docker.io"
# Docker Hub's Registry API lives on another host than the name users write.
DOCKER_HUB_API_HOST = "registry-1.docker.io"
# Names users and config files give Docker Hub; all normalise to DOCKER_HUB.
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io"})
DEFAULT_TAG = "latest"

# One repository path component: lowercase alphanumerics joined by ".", "_", "__" or any run of "-".
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"\w[\w.-]{0,127}", re.ASCII)
# A DNS label: alphanumerics and inner hyphens (upper case allowed, as distribution does).
_DOMAIN_LABEL = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?")
_PORT = re.compile(r"[0-9]+")
_REPOSITORY_MAX = 255  # distribution's NameTotalLengthMax
# Digest algorithms registries use, with the length of their lowercase hex encoding.
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"[0-9a-f]+")


def digest_problem(digest: str) -> str | None:
    """Why ``digest`` is not a well-formed ``sha256:<64 hex>`` / ``sha512:<128 hex>``, or None."""
    algorithm, sep, encoded = digest.partition(":")
    if not sep:
        return f"digest {digest!r} has no algorithm (expected sha256:<64 hex digits>)"
    expected = DIGEST_HEX_LENGTHS.get(algorithm)
    if expected is None:
        return f"digest algorithm {algorithm!r} is not supported (use sha256 or sha512)"
    if _HEX.fullmatch(encoded) is None:
        return f"digest {digest!r} must be {algorithm}: followed by lowercase hex digits"
    if len(encoded) != expected:
        return (
            f"digest {digest!r} must have {expected} hex digits after {algorithm}: "
            f"(it has {len(encoded)})"
        )
    return None


def is_tag(text: str) -> bool:
    """``text`` is a tag name: 1-128 of ``[A-Za-z0-9_.-]``, not starting with "." or "-"."""
    return _TAG.fullmatch(text) is not None


def _registry_problem(registry: str) -> str | None:
    """Why ``registry`` is not ``host[:port]`` (a DNS name, IPv4 or bracketed IPv6), or None."""
    if registry.startswith("["):
        address, bracket, rest = registry[1:].partition("]")
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            return f"registry {registry!r} is not a valid bracketed IPv6 address"
        if not bracket:
            return f"registry {registry!r} is missing its closing ']'"
        if rest and (not rest.startswith(":") or _bad_port(rest[1:])):
            return f"registry {registry!r} has an invalid port (ports are 1-65535)"
        return None
    host, colon, port = registry.partition(":")
    if colon and _bad_port(port):
        return f"registry {registry!r} has an invalid port {port!r} (ports are 1-65535)"
    if not all(_DOMAIN_LABEL.fullmatch(label) for label in host.split(".")):
        return f"registry {registry!r} is not a valid host name"
    return None


def _bad_port(port: str) -> bool:
    """True unless ``port`` is a TCP port number, 1 to 65535."""
    return len(port) > 5 or _PORT.fullmatch(port) is None or not 0 < int(port) < 65536


def _looks_like_registry(component: str) -> bool:
    # distribution's rule: otherwise "team/app" would be ambiguous with a host named "team".
    return "." in component or ":" in component or component == "localhost"


@dataclass(frozen=True)
class Reference:
    """A parsed image reference. ``registry`` is as users write it ("docker.io", "ghcr.io")."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        """The host[:port] whose ``/v2/`` API serves this image."""
        return DOCKER_HUB_API_HOST if self.registry == DOCKER_HUB else self.registry

    @property
    def manifest_ref(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        if self.digest is not None:
            return self.digest
        return self.tag if self.tag is not None else DEFAULT_TAG

    @property
    def repo_key(self) -> str:
        """``registry/repository``, e.g. "docker.io/library/alpine"."""
        return f"{self.registry}/{self.repository}"

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag is not None else "") + (
            f"@{self.digest}" if self.digest is not None else ""
        )

    def __str__(self) -> str:
        """The canonical full form: "docker.io/library/alpine:3.20"."""
        return self.repo_key + self._suffix()

    def familiar(self) -> str:
        """The short form a Docker user writes: "alpine:3.20", "raesene/x", "ghcr.io/o/a:1"."""
        if self.registry == DOCKER_HUB:
            name = self.repository
            namespace, _, rest = name.partition("/")
            if namespace == "library" and "/" not in rest:
                name = rest
        else:
            name = self.repo_key
        return name + self._suffix()

    def with_digest(self, digest: str) -> Reference:
        """The same image pinned to ``digest`` (the tag, if any, is kept for display)."""
        problem = digest_problem(digest)
        if problem is not None:
            raise InvalidReference(f"invalid reference {self.familiar()}@{digest}: {problem}")
        return replace(self, digest=digest)


def parse_reference(text: str, default_tag: str | None = DEFAULT_TAG) -> Reference:
    """Parse ``[registry/]repository[:tag][@digest]``; InvalidReference says what is wrong.
    Without a tag or digest the tag is ``default_tag`` (None: a repository, every tag)."""

    def bad(problem: str) -> InvalidReference:
        return InvalidReference(f"invalid reference {text!r}: {problem}")

    if not text:
        raise bad("it is empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise bad("it contains whitespace")
    if "://" in text:
        raise bad("drop the URL scheme; write it like ghcr.io/org/app:1.2")

    name, at, digest = text.partition("@")
    if at:
        problem = digest_problem(digest)
        if problem is not None:
            raise bad(problem)
    tag: str | None = None
    last_colon = name.rfind(":")
    if last_colon > name.rfind("/"):  # a colon before the last "/" is a registry port
        name, tag = name[:last_colon], name[last_colon + 1 :]
        if not is_tag(tag):
            raise bad(
                f"tag {tag!r} must be 1-128 letters, digits, '_', '.' or '-', "
                "not starting with '.' or '-'"
            )

    first, slash, remainder = name.partition("/")
    if slash and _looks_like_registry(first):
        registry, repository = first, remainder
        problem = _registry_problem(registry)
        if problem is not None:
            raise bad(problem)
        if registry in DOCKER_HUB_ALIASES:
            registry = DOCKER_HUB
    else:
        registry, repository = DOCKER_HUB, name
    if not repository:
        raise bad("the repository name is missing")
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"  # Docker Hub's official images
    for component in repository.split("/"):
        if _COMPONENT.fullmatch(component) is not None:
            continue
        if not component:
            raise bad("the repository name has an empty path component")
        if _COMPONENT.fullmatch(component.lower()) is not None:
            raise bad(f"repository name must be lowercase ({component!r})")
        raise bad(
            f"repository path component {component!r} may only contain lowercase letters, "
            "digits and single separators ('.', '_', '__' or '-') between them"
        )
    if len(repository) > _REPOSITORY_MAX:
        raise bad(f"repository name is longer than {_REPOSITORY_MAX} characters")
    if tag is None and not at:
        tag = default_tag
    return Reference(registry, repository, tag, digest if at else None)
