"""Every error layerindex raises on purpose.

    LayerIndexError                 base: the CLI catches it once and prints "Error: ..."
    ├── InvalidReference            a malformed image reference (before any network call)
    ├── RegistryError               the registry said no, or said something unusable
    │   ├── AuthError               401/403, or a token endpoint that refused us
    │   ├── NotFound                404: unknown repository, tag, manifest or blob
    │   ├── NetworkError            no answer: refused, reset or timed out (worth a retry)
    │   ├── RateLimited             429 (carries retry_after seconds when the server said)
    │   └── UnsupportedManifest     schema 1, an unknown media type, no matching platform
    ├── LayerFormatError            bytes that are not a readable (compressed) tar
    ├── ImageConfigError            an image config that is not JSON or does not fit its manifest
    ├── DigestMismatch              bytes whose sha256 is not the digest they were asked by
    ├── NoIndex                     nothing to read: no SQLite file, an empty database
    ├── SchemaOutOfDate             a database at an older Alembic revision
    ├── CrawlLocked                 another crawl holds the database
    └── UsageError                  bad query input: a malformed glob, regex, digest or option

    DatabaseError                   the database failed mid-command (disk full, connection ended)
    └── DuplicateRow                a unique constraint refused a row another writer made first

DatabaseError is not a LayerIndexError on purpose: what catches LayerIndexError goes on (a
crawl records one layer's failure and takes the next), while a failing database ends the
command. The CLI catches it as well, and says that nothing of an unfinished layer was kept.

Messages are for people: say what was wrong, where (image, layer, path) and what to do next.
Text from outside (a registry's error message, a URL it redirected to, a helper's output) goes
through ``redact`` before it is shown, logged or stored.
"""

from __future__ import annotations

import re

# scheme://user:password@ -- the user info of a URL, up to its last "@" before the path
_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#\s]*@")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def redact(text: str) -> str:
    """``text`` safe to show and to store: the user info of every URL in it is dropped
    (``http://alice:pw@host/x`` becomes ``http://***@host/x``) and control characters become
    ``\\xNN``, so a server's words can neither leak a password nor move the cursor, set the
    terminal's title or start a forged line."""
    text = _USERINFO.sub(r"\1***@", text)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class LayerIndexError(Exception):
    """Base of every error layerindex raises on purpose."""


class InvalidReference(LayerIndexError):
    """An image reference that cannot be parsed."""


class RegistryError(LayerIndexError):
    """A registry answered with an error or with something we cannot use."""


class AuthError(RegistryError):
    """Authentication failed or was required and no credentials were found."""


class NotFound(RegistryError):
    """The registry does not have the repository, tag, manifest or blob."""


class NetworkError(RegistryError):
    """No answer: the connection was refused, reset or timed out. Worth another try, unlike a
    registry that answered, unless ``permanent``: a host name that does not exist, a TLS
    certificate that fails verification. ``host``: the host[:port] that did not answer."""

    def __init__(self, message: str, *, host: str | None = None, permanent: bool = False) -> None:
        super().__init__(message)
        self.host = host
        self.permanent = permanent


class RateLimited(RegistryError):
    """The registry answered 429 Too Many Requests."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnsupportedManifest(RegistryError):
    """A manifest we refuse: Docker schema 1, an unknown media type, no matching platform."""


class LayerFormatError(LayerIndexError):
    """A layer whose bytes are not a readable gzip, zstd or plain tar stream."""


class ImageConfigError(LayerIndexError):
    """An image's config blob that is not a JSON object, has no usable ``rootfs.diff_ids``, or
    lists a different number of diff_ids than its manifest has layers."""


class DigestMismatch(LayerIndexError):
    """Bytes whose sha256 differs from the digest they were requested by."""


class NoIndex(LayerIndexError):
    """There is no index to read yet: no SQLite file, or a database without tables."""


class SchemaOutOfDate(LayerIndexError):
    """The database is at an older schema revision than this layerindex."""


class CrawlLocked(LayerIndexError):
    """Another crawl holds the database."""


class DatabaseError(Exception):
    """The database failed while a command ran: a disk full, a connection the server ended.
    ``said``: the first line of what the database said. Raised by the index package (the
    engines ``index.database.open_database`` makes) in place of the driver's errors."""

    def __init__(self, said: str) -> None:
        super().__init__(f"the database failed: {said}")
        self.said = said


class DuplicateRow(DatabaseError):
    """A unique constraint refused a row: another writer made it first."""


class UsageError(LayerIndexError):
    """Bad input to a query or command: malformed glob, regex, digest or option value."""
