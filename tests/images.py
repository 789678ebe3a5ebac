"""Build layers, images and indexes in code (like ggcr's ``random.Layer``), byte for byte stable.

Every tar header has a fixed mtime, uid/gid 0 (unless given) and no user names; gzip is written
with mtime 0 and zstd at a fixed level, so the same call gives the same digests on every machine.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import zstandard

Compression = Literal["gzip", "zstd", "none"]
Style = Literal["oci", "docker"]

MTIME = 1700000000
CREATED = "2023-11-14T22:13:20Z"  # MTIME as RFC 3339

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = {
    "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "zstd": "application/vnd.docker.image.rootfs.diff.tar.zstd",  # what BuildKit writes
    "none": "application/vnd.docker.image.rootfs.diff.tar",
}
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- tar members -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TarMember:
    """One tar entry; ``path`` is relative ("usr/bin/x"), ``make_tar`` adds the prefix."""

    path: str
    type: bytes
    data: bytes = b""
    mode: int = 0o644
    mtime: int = MTIME
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    uid: int = 0
    gid: int = 0


def _relative(path: str | bytes) -> str:
    # bytes names that are not UTF-8 survive as surrogates and are written back as the same bytes
    text = path.decode("utf-8", "surrogateescape") if isinstance(path, bytes) else path
    return text.lstrip("/")


def _split(path: str | bytes) -> tuple[str, str]:
    relative = _relative(path).rstrip("/")
    parent, _, name = relative.rpartition("/")
    return (parent + "/" if parent else ""), name


def file(
    path: str | bytes,
    data: bytes = b"",
    mode: int = 0o644,
    mtime: int = MTIME,
    *,
    uid: int = 0,
    gid: int = 0,
) -> TarMember:
    return TarMember(_relative(path), tarfile.REGTYPE, data, mode, mtime, uid=uid, gid=gid)


def directory(path: str | bytes, mode: int = 0o755, mtime: int = MTIME) -> TarMember:
    return TarMember(_relative(path), tarfile.DIRTYPE, mode=mode, mtime=mtime)


def symlink(path: str | bytes, target: str) -> TarMember:
    return TarMember(_relative(path), tarfile.SYMTYPE, mode=0o777, linkname=target)


def hardlink(path: str | bytes, target: str) -> TarMember:
    """``target`` is another member's path in the same archive (written with the same prefix)."""
    return TarMember(_relative(path), tarfile.LNKTYPE, linkname=_relative(target))


def whiteout(path: str | bytes) -> TarMember:
    """``<dir>/.wh.<name>``: deletes ``<dir>/<name>`` from lower layers (a regular empty file)."""
    parent, name = _split(path)
    return TarMember(f"{parent}.wh.{name}", tarfile.REGTYPE, mode=0o600)


def opaque(dirpath: str | bytes) -> TarMember:
    """``<dir>/.wh..wh..opq``: hides everything lower layers put under ``<dir>``."""
    relative = _relative(dirpath).rstrip("/")
    return TarMember(f"{relative}/.wh..wh..opq" if relative else ".wh..wh..opq", tarfile.REGTYPE)


def fifo(path: str | bytes) -> TarMember:
    return TarMember(_relative(path), tarfile.FIFOTYPE)


def chardev(path: str | bytes, major: int, minor: int) -> TarMember:
    return TarMember(_relative(path), tarfile.CHRTYPE, devmajor=major, devminor=minor)


def make_tar(members: Sequence[TarMember], *, prefix: str = "./") -> bytes:
    """A PAX tar; names are ``prefix + path`` ("./usr/bin/x" like docker, "usr/bin/x" like
    BuildKit with ``prefix=""``). Hard link targets get the same prefix."""
    out = io.BytesIO()
    with tarfile.open(
        fileobj=out, mode="w", format=tarfile.PAX_FORMAT, errors="surrogateescape"
    ) as tar:
        for member in members:
            info = tarfile.TarInfo(prefix + member.path)
            info.type = member.type
            info.mode = member.mode
            info.mtime = member.mtime
            info.uid, info.gid = member.uid, member.gid
            info.uname = info.gname = ""
            info.devmajor, info.devminor = member.devmajor, member.devminor
            if member.type == tarfile.LNKTYPE:
                info.linkname = prefix + member.linkname
            else:
                info.linkname = member.linkname
            info.size = len(member.data)
            tar.addfile(info, io.BytesIO(member.data) if member.data else None)
    return out.getvalue()


# --- layers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    blob: bytes  # the compressed bytes a registry stores
    digest: str  # sha256 of blob: the manifest's layer digest
    diff_id: str  # sha256 of tar: the config's rootfs.diff_ids entry
    media_type: str
    compression: Compression
    tar: bytes

    @property
    def size(self) -> int:
        return len(self.blob)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def compress(tar: bytes, compression: Compression) -> bytes:
    if compression == "gzip":
        return gzip.compress(tar, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(tar)
    return tar


def make_layer(
    members: Sequence[TarMember] | Mapping[str, bytes],
    compression: Compression = "gzip",
    *,
    style: Style = "oci",
    prefix: str = "./",
    media_type: str | None = None,
) -> Layer:
    """A layer from tar members, or from ``{"/usr/bin/kubectl": b"..."}`` (regular files only).

    ``media_type`` overrides the usual type for the compression, to build layers that lie."""
    if isinstance(members, Mapping):
        members = [file(path, data) for path, data in members.items()]
    tar = make_tar(members, prefix=prefix)
    blob = compress(tar, compression)
    if media_type is None:
        media_type = (OCI_LAYER if style == "oci" else DOCKER_LAYER)[compression]
    return Layer(blob, sha256(blob), sha256(tar), media_type, compression, tar)


# --- images --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    """A config history entry; ``empty_layer`` ones (ENV, CMD, ...) have no layer."""

    created_by: str
    empty_layer: bool = False


@dataclass(frozen=True)
class Image:
    manifest: bytes
    manifest_media_type: str
    digest: str  # sha256 of manifest
    config: bytes
    config_digest: str
    layers: tuple[Layer, ...]
    platform: str  # "linux/arm64/v8"

    def descriptor(self) -> dict[str, Any]:
        descriptor: dict[str, Any] = {
            "mediaType": self.manifest_media_type,
            "digest": self.digest,
            "size": len(self.manifest),
        }
        os_name, architecture, *variant = self.platform.split("/")
        platform = {"architecture": architecture, "os": os_name}
        if variant:
            platform["variant"] = variant[0]
        descriptor["platform"] = platform
        return descriptor


def _history(
    history: Sequence[str | History] | None, layers: Sequence[Layer]
) -> list[dict[str, Any]]:
    if history is None:
        history = [f"layerindex test layer {i}" for i in range(len(layers))]
    entries = [h if isinstance(h, History) else History(h) for h in history]
    with_layers = sum(1 for h in entries if not h.empty_layer)
    if with_layers != len(layers):
        raise ValueError(f"{with_layers} non-empty history entries for {len(layers)} layers")
    out: list[dict[str, Any]] = []
    for entry in entries:
        item: dict[str, Any] = {"created": CREATED, "created_by": entry.created_by}
        if entry.empty_layer:
            item["empty_layer"] = True
        out.append(item)
    return out


def make_image(
    layers: Sequence[Layer],
    *,
    platform: str = "linux/amd64",
    style: Style = "oci",
    history: Sequence[str | History] | None = None,
    labels: Mapping[str, str] | None = None,
    env: Sequence[str] | None = None,
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
) -> Image:
    os_name, architecture, *variant = platform.split("/")
    container_config: dict[str, Any] = {
        "Env": list(env) if env is not None else ["PATH=/usr/local/sbin:/usr/local/bin:/usr/bin"]
    }
    if entrypoint is not None:
        container_config["Entrypoint"] = list(entrypoint)
    if cmd is not None:
        container_config["Cmd"] = list(cmd)
    if labels is not None:
        container_config["Labels"] = dict(labels)
    config_json: dict[str, Any] = {"architecture": architecture, "os": os_name}
    if variant:
        config_json["variant"] = variant[0]
    config_json |= {
        "created": CREATED,
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": _history(history, layers),
    }
    config = json.dumps(config_json, indent=2).encode()
    media_type = OCI_MANIFEST if style == "oci" else DOCKER_MANIFEST
    manifest_json = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": OCI_CONFIG if style == "oci" else DOCKER_CONFIG,
            "digest": sha256(config),
            "size": len(config),
        },
        "layers": [layer.descriptor() for layer in layers],
    }
    manifest = json.dumps(manifest_json, indent=3).encode()
    return Image(
        manifest, media_type, sha256(manifest), config, sha256(config), tuple(layers), platform
    )


@dataclass(frozen=True)
class Index:
    manifest: bytes
    media_type: str
    digest: str
    images: tuple[Image, ...]


def make_index(images: Sequence[Image], *, style: Style = "oci") -> Index:
    """An OCI image index or a Docker manifest list, a platform object for each image."""
    media_type = OCI_INDEX if style == "oci" else DOCKER_LIST
    body = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [image.descriptor() for image in images],
    }
    manifest = json.dumps(body, indent=3).encode()
    return Index(manifest, media_type, sha256(manifest), tuple(images))
