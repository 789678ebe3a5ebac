"""Manifests and indexes: media types, parsing, platform choice, foreign layers, image configs.

Only v2 formats are read: OCI image manifest/index and Docker v2 schema 2 manifest/list. Docker
schema 1 is recognised so it can be refused with a clear message (ggcr's ``ErrSchema1``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from layerindex.errors import ImageConfigError, RegistryError
from layerindex.errors import UnsupportedManifest as UnsupportedManifest
from layerindex.reference import digest_problem
from layerindex.registry.platforms import Platform, parse_platform

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
# Deprecated by image-spec but still to be expected in old images (layer.md "Non-Distributable").
OCI_NONDISTRIBUTABLE_LAYERS = frozenset(
    {
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
# The Accept header: without the list/index types a registry may convert to schema 1 and pick
# linux/amd64 for us (manifest-v2-2.md); schema 1 is listed so we can recognise and refuse it.
ACCEPT_MANIFESTS = (
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1_SIGNED,
    DOCKER_SCHEMA1,
)
# Content-Types that say nothing about the manifest kind; the body's mediaType decides.
_GENERIC_CONTENT_TYPES = frozenset(
    {"", "application/json", "application/octet-stream", "text/plain"}
)
# BuildKit stores provenance/SBOM attestations as index entries with this annotation.
ATTESTATION_ANNOTATION = "vnd.docker.reference.type"

_SCHEMA1_MESSAGE = (
    "{where} is a Docker image manifest schema 1, which is deprecated and not supported; "
    "re-push the image with a current docker or buildah to convert it"
)


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest as the registry served it: exact bytes, Content-Type and digest.

    ``source`` names the image in messages ("alpine:3.20")."""

    body: bytes
    media_type: str
    digest: str
    source: str = ""


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None


@dataclass(frozen=True)
class ImageManifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str
    digest: str
    raw: bytes = b""
    source: str = ""


@dataclass(frozen=True)
class ImageIndex:
    manifests: tuple[Descriptor, ...]
    media_type: str = OCI_INDEX
    digest: str = ""
    raw: bytes = b""
    source: str = ""


def _malformed(where: str, problem: str) -> RegistryError:
    return RegistryError(f"{where}: malformed manifest: {problem}")


def _descriptor(value: Any, where: str, what: str) -> Descriptor:
    if not isinstance(value, Mapping):
        raise _malformed(where, f"{what} is not an object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise _malformed(where, f"{what} has no mediaType")
    if not isinstance(digest, str) or (problem := digest_problem(digest)) is not None:
        raise _malformed(where, f"{what} has a bad digest ({problem or 'missing'})")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _malformed(where, f"{what} has no valid size")
    urls = value.get("urls") or ()
    annotations = value.get("annotations") or {}
    if not isinstance(urls, list | tuple) or not all(isinstance(u, str) for u in urls):
        raise _malformed(where, f"{what} has invalid urls")
    if not isinstance(annotations, Mapping):
        raise _malformed(where, f"{what} has invalid annotations")
    platform = None
    raw_platform = value.get("platform")
    if isinstance(raw_platform, Mapping):
        os_name, architecture = raw_platform.get("os"), raw_platform.get("architecture")
        if not isinstance(os_name, str) or not isinstance(architecture, str):
            raise _malformed(where, f"{what} has a platform without os/architecture")
        variant, os_version = raw_platform.get("variant"), raw_platform.get("os.version")
        platform = Platform(
            os_name,
            architecture,
            variant if isinstance(variant, str) and variant else None,
            os_version if isinstance(os_version, str) and os_version else None,
        )
    return Descriptor(
        media_type,
        digest,
        size,
        tuple(urls),
        {str(k): str(v) for k, v in annotations.items()},
        platform,
    )


def _kind(fetched: FetchedManifest, document: Mapping[str, Any], where: str) -> str:
    """The manifest's media type: Content-Type and body ``mediaType`` must agree (spec.md)."""
    content_type = fetched.media_type.split(";", 1)[0].strip().lower()
    body_type = document.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise _malformed(where, "mediaType is not a string")
    if document.get("schemaVersion") == 1 or content_type in SCHEMA1_TYPES:
        raise UnsupportedManifest(_SCHEMA1_MESSAGE.format(where=where))
    if content_type in _GENERIC_CONTENT_TYPES:
        if body_type:
            return body_type
        # OCI lets mediaType be absent; the shape tells an index from a manifest.
        return OCI_INDEX if "manifests" in document else OCI_MANIFEST
    if body_type and body_type != content_type:
        raise RegistryError(
            f"{where}: the registry served Content-Type {content_type} but the manifest says "
            f"mediaType {body_type}; refusing an ambiguous manifest"
        )
    return content_type


def parse_manifest(fetched: FetchedManifest) -> ImageManifest | ImageIndex:
    """Parse a fetched manifest; refuse schema 1, unknown types and non-image artifacts."""
    where = fetched.source or fetched.digest
    try:
        document = json.loads(fetched.body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RegistryError(f"{where}: the manifest is not JSON") from None
    if not isinstance(document, Mapping):
        raise _malformed(where, "not a JSON object")
    kind = _kind(fetched, document, where)
    if kind in INDEX_TYPES:
        entries = document.get("manifests")
        if not isinstance(entries, list):
            raise _malformed(where, "an index without a manifests list")
        return ImageIndex(
            tuple(_descriptor(e, where, f"manifests[{i}]") for i, e in enumerate(entries)),
            kind,
            fetched.digest,
            fetched.body,
            fetched.source,
        )
    if kind in MANIFEST_TYPES:
        config = _descriptor(document.get("config"), where, "config")
        if config.media_type not in CONFIG_TYPES:
            raise UnsupportedManifest(
                f"{where} is an OCI artifact ({config.media_type}), not a container image"
            )
        layers = document.get("layers")
        if not isinstance(layers, list):
            raise _malformed(where, "no layers list")
        return ImageManifest(
            config,
            tuple(_descriptor(layer, where, f"layers[{i}]") for i, layer in enumerate(layers)),
            kind,
            fetched.digest,
            fetched.body,
            fetched.source,
        )
    raise UnsupportedManifest(f"{where}: unsupported manifest media type {kind}")


def _is_attestation(descriptor: Descriptor) -> bool:
    return ATTESTATION_ANNOTATION in descriptor.annotations or (
        descriptor.platform is not None and descriptor.platform.unknown
    )


def select_platforms(index: ImageIndex, spec: str = "linux/amd64") -> list[Descriptor]:
    """The index entries to index for ``spec``: "all", or comma-separated "os/arch[/variant]"
    (the first matching entry for each). Attestation manifests are never images to index."""
    images = [d for d in index.manifests if not _is_attestation(d)]
    if spec.strip() == "all":
        if not images:
            raise UnsupportedManifest(f"{index.source or index.digest}: the index lists no images")
        return images
    wanted = [parse_platform(part) for part in spec.split(",")]
    chosen: list[Descriptor] = []
    for platform in wanted:
        match = next((d for d in images if d.platform and d.platform.matches(platform)), None)
        if match is None:
            available = ", ".join(str(d.platform) for d in images if d.platform) or "none"
            raise UnsupportedManifest(
                f"{index.source or index.digest} has no {platform} image; available: {available}"
            )
        if match not in chosen:
            chosen.append(match)
    return chosen


def is_foreign(descriptor: Descriptor) -> str | None:
    """Why a layer is not to be fetched (its blob may not be in the registry), or None."""
    if descriptor.media_type == DOCKER_FOREIGN_LAYER:
        return f"foreign layer ({descriptor.media_type}) is not distributed by the registry"
    if descriptor.media_type in OCI_NONDISTRIBUTABLE_LAYERS:
        return f"non-distributable layer ({descriptor.media_type})"
    return None


@dataclass(frozen=True)
class HistoryEntry:
    created: str | None
    created_by: str | None
    empty_layer: bool


@dataclass(frozen=True)
class ImageConfig:
    os: str
    architecture: str
    variant: str | None
    created: str | None
    diff_ids: tuple[str, ...]
    history: tuple[HistoryEntry, ...]
    labels: Mapping[str, str]
    env: tuple[str, ...]
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None

    @property
    def platform(self) -> str:
        """ "linux/amd64", "linux/arm64/v8"."""
        return str(Platform(self.os, self.architecture, self.variant))


def _strings(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def parse_config(body: bytes, image: ImageManifest, *, where: str = "") -> ImageConfig:
    """Parse an image config blob; its diff_ids must pair one to one with the manifest's layers."""
    where = f"{where or image.source or image.digest}: config {image.config.digest}"
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ImageConfigError(f"{where} is not JSON") from None
    if not isinstance(document, Mapping):
        raise ImageConfigError(f"{where} is not a JSON object")
    rootfs = document.get("rootfs")
    diff_ids = _strings(rootfs.get("diff_ids")) if isinstance(rootfs, Mapping) else None
    if diff_ids is None:
        raise ImageConfigError(f"{where} has no rootfs.diff_ids list")
    for diff_id in diff_ids:
        if (problem := digest_problem(diff_id)) is not None:
            raise ImageConfigError(f"{where}: bad diff_id: {problem}")
    if len(diff_ids) != len(image.layers):
        raise ImageConfigError(
            f"{where} lists {len(diff_ids)} diff_ids but the manifest has "
            f"{len(image.layers)} layers"
        )
    history = tuple(
        HistoryEntry(
            h.get("created") if isinstance(h.get("created"), str) else None,
            h.get("created_by") if isinstance(h.get("created_by"), str) else None,
            h.get("empty_layer") is True,
        )
        for h in document.get("history") or ()
        if isinstance(h, Mapping)
    )
    container = document.get("config")
    if not isinstance(container, Mapping):
        container = {}
    labels = container.get("Labels")
    variant, created = document.get("variant"), document.get("created")
    return ImageConfig(
        os=str(document.get("os") or "unknown"),
        architecture=str(document.get("architecture") or "unknown"),
        variant=variant if isinstance(variant, str) and variant else None,
        created=created if isinstance(created, str) else None,
        diff_ids=diff_ids,
        history=history,
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {},
        env=_strings(container.get("Env")) or (),
        entrypoint=_strings(container.get("Entrypoint")),
        cmd=_strings(container.get("Cmd")),
    )
