"""Manifest parsing, platform choice, foreign layers and image configs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from images import DOCKER_LIST, OCI_INDEX, make_image, make_index, make_layer, sha256

from layerindex.errors import (
    ImageConfigError,
    RegistryError,
    UnsupportedManifest,
    UsageError,
)
from layerindex.registry.manifest import (
    DOCKER_FOREIGN_LAYER,
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    Descriptor,
    FetchedManifest,
    HistoryEntry,
    ImageIndex,
    ImageManifest,
    is_foreign,
    parse_config,
    parse_manifest,
    select_platforms,
)
from layerindex.registry.platforms import Platform

LAYER = make_layer({"/usr/bin/kubectl": b"kubectl"})


def fetched(
    body: bytes | dict[str, Any], media_type: str, source: str = "app:1"
) -> FetchedManifest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return FetchedManifest(raw, media_type, sha256(raw), source)


@pytest.mark.parametrize("style", ["oci", "docker"])
def test_image_manifest(style: Any) -> None:
    image = make_image([LAYER], style=style)
    parsed = parse_manifest(fetched(image.manifest, image.manifest_media_type))
    assert isinstance(parsed, ImageManifest)
    assert parsed.media_type == (OCI_MANIFEST if style == "oci" else DOCKER_MANIFEST)
    assert parsed.digest == image.digest
    assert parsed.raw == image.manifest
    assert parsed.source == "app:1"
    assert parsed.config.digest == image.config_digest
    assert parsed.config.size == len(image.config)
    assert parsed.layers == (Descriptor(LAYER.media_type, LAYER.digest, LAYER.size),)


def test_content_type_generic_uses_body_media_type_or_shape() -> None:
    image = make_image([LAYER])
    for generic in (
        "application/json",
        "application/octet-stream",
        "application/json; charset=utf-8",
    ):
        parsed = parse_manifest(fetched(image.manifest, generic))
        assert isinstance(parsed, ImageManifest) and parsed.media_type == OCI_MANIFEST
    document = json.loads(image.manifest)
    del document["mediaType"]
    assert isinstance(parse_manifest(fetched(document, "")), ImageManifest)
    index = json.loads(make_index([image]).manifest)
    del index["mediaType"]
    assert isinstance(parse_manifest(fetched(index, "application/json")), ImageIndex)


def test_content_type_and_media_type_disagree() -> None:
    image = make_image([LAYER])
    with pytest.raises(RegistryError) as caught:
        parse_manifest(fetched(image.manifest, DOCKER_MANIFEST))
    assert str(caught.value) == (
        f"app:1: the registry served Content-Type {DOCKER_MANIFEST} but the manifest says "
        f"mediaType {OCI_MANIFEST}; refusing an ambiguous manifest"
    )


SCHEMA1_MESSAGE = (
    "app:1 is a Docker image manifest schema 1, which is deprecated and not supported; "
    "re-push the image with a current docker or buildah to convert it"
)


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/json",
    ],
)
def test_schema1_refused(media_type: str) -> None:
    body = {"schemaVersion": 1, "name": "app", "tag": "1", "fsLayers": [], "history": []}
    with pytest.raises(UnsupportedManifest) as caught:
        parse_manifest(fetched(body, media_type))
    assert str(caught.value) == SCHEMA1_MESSAGE


@pytest.mark.parametrize(
    ("body", "media_type", "error", "message"),
    [
        (b"<html>", "application/json", RegistryError, "app:1: the manifest is not JSON"),
        (b"[]", "application/json", RegistryError, "app:1: malformed manifest: not a JSON object"),
        ({"schemaVersion": 2, "mediaType": "application/vnd.example+json"}, "", UnsupportedManifest,
         "app:1: unsupported manifest media type application/vnd.example+json"),
        ({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
          "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json",
                     "digest": "sha256:" + "0" * 64, "size": 2}},
         OCI_MANIFEST, UnsupportedManifest,
         "app:1 is an OCI artifact (application/vnd.cncf.helm.config.v1+json), "
         "not a container image"),
        ({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
          "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                     "digest": "sha256:abc", "size": 2}},
         OCI_MANIFEST, RegistryError,
         "app:1: malformed manifest: config has a bad digest (digest 'sha256:abc' must have 64 "
         "hex digits after sha256: (it has 3))"),
        ({"schemaVersion": 2, "mediaType": OCI_INDEX}, OCI_INDEX, RegistryError,
         "app:1: malformed manifest: an index without a manifests list"),
        ({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
          "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                     "digest": "sha256:" + "0" * 64, "size": 2},
          "layers": [{"mediaType": "x", "digest": "sha256:" + "1" * 64}]},
         OCI_MANIFEST, RegistryError, "app:1: malformed manifest: layers[0] has no valid size"),
    ],
)  # fmt: skip
def test_bad_manifests(
    body: bytes | dict[str, Any], media_type: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as caught:
        parse_manifest(fetched(body, media_type))
    assert type(caught.value) is error
    assert str(caught.value) == message


def platform_index(*platforms: str, style: Any = "oci") -> ImageIndex:
    images = [make_image([LAYER], platform=p) for p in platforms]
    index = make_index(images, style=style)
    parsed = parse_manifest(fetched(index.manifest, index.media_type))
    assert isinstance(parsed, ImageIndex)
    return parsed


def test_index_descriptors_keep_platforms() -> None:
    index = platform_index("linux/amd64", "linux/arm64/v8", style="docker")
    assert index.media_type == DOCKER_LIST
    assert [d.platform for d in index.manifests] == [
        Platform("linux", "amd64"),
        Platform("linux", "arm64", "v8"),
    ]


@pytest.mark.parametrize(
    ("available", "spec", "chosen"),
    [
        (["linux/amd64", "linux/arm64/v8"], "linux/amd64", ["linux/amd64"]),
        # arm64 means v8 both ways
        (["linux/amd64", "linux/arm64/v8"], "linux/arm64", ["linux/arm64/v8"]),
        (["linux/amd64", "linux/arm64"], "linux/arm64/v8", ["linux/arm64"]),
        # arm means v7
        (["linux/arm/v6", "linux/arm/v7"], "linux/arm", ["linux/arm/v7"]),
        (["linux/arm/v6", "linux/arm"], "linux/arm/v7", ["linux/arm"]),
        (["linux/arm/v6", "linux/arm/v7"], "linux/arm/v6", ["linux/arm/v6"]),
        # aliases
        (["linux/amd64"], "linux/x86_64", ["linux/amd64"]),
        (["linux/arm64"], "linux/aarch64", ["linux/arm64"]),
        (["linux/amd64", "linux/arm64", "linux/s390x"], "linux/s390x,linux/amd64",
         ["linux/s390x", "linux/amd64"]),
        (["linux/amd64", "linux/arm64", "unknown/unknown"], "all", ["linux/amd64", "linux/arm64"]),
    ],
)  # fmt: skip
def test_select_platforms(available: list[str], spec: str, chosen: list[str]) -> None:
    index = platform_index(*available)
    assert [str(d.platform) for d in select_platforms(index, spec)] == chosen


def test_select_skips_attestations_and_reports_what_is_there() -> None:
    image = make_image([LAYER])
    attestation = {
        "mediaType": OCI_MANIFEST,
        "digest": "sha256:" + "e" * 64,
        "size": 100,
        "annotations": {
            "vnd.docker.reference.digest": image.digest,
            "vnd.docker.reference.type": "attestation-manifest",
        },
        "platform": {"architecture": "unknown", "os": "unknown"},
    }
    body = {"schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [image.descriptor(), attestation]}  # fmt: skip
    index = parse_manifest(fetched(body, OCI_INDEX, source="alpine:3.20"))
    assert isinstance(index, ImageIndex)
    assert [d.digest for d in select_platforms(index, "all")] == [image.digest]
    assert [d.digest for d in select_platforms(index)] == [image.digest]
    with pytest.raises(UnsupportedManifest) as caught:
        select_platforms(index, "linux/s390x")
    assert str(caught.value) == "alpine:3.20 has no linux/s390x image; available: linux/amd64"
    with pytest.raises(UsageError) as bad:
        select_platforms(index, "linux")
    assert str(bad.value) == (
        "invalid platform 'linux': expected os/arch[/variant], e.g. linux/amd64 or "
        "linux/arm64/v8, or 'all'"
    )


def test_is_foreign() -> None:
    digest = "sha256:" + "f" * 64
    assert is_foreign(Descriptor(LAYER.media_type, digest, 1)) is None
    foreign = Descriptor(DOCKER_FOREIGN_LAYER, digest, 1, urls=("https://mcr.microsoft.com/x",))
    assert is_foreign(foreign) == (
        f"foreign layer ({DOCKER_FOREIGN_LAYER}) is not distributed by the registry"
    )
    kind = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    assert is_foreign(Descriptor(kind, digest, 1)) == f"non-distributable layer ({kind})"
    # urls alone do not make a layer foreign (image-spec: SHOULD NOT be used to determine)
    assert is_foreign(Descriptor(LAYER.media_type, digest, 1, urls=("https://x",))) is None


def test_parse_config() -> None:
    from images import History

    image = make_image(
        [LAYER],
        platform="linux/arm64/v8",
        history=[History("ENV A=1", empty_layer=True), "COPY kubectl /usr/bin/"],
        labels={"org.opencontainers.image.source": "https://example.com"},
        env=["A=1"],
        entrypoint=["/usr/bin/kubectl"],
        cmd=["version"],
    )
    manifest = parse_manifest(fetched(image.manifest, image.manifest_media_type))
    assert isinstance(manifest, ImageManifest)
    config = parse_config(image.config, manifest, where="app:1")
    assert config.platform == "linux/arm64/v8"
    assert (config.os, config.architecture, config.variant) == ("linux", "arm64", "v8")
    assert config.created == "2023-11-14T22:13:20Z"
    assert config.diff_ids == (LAYER.diff_id,)
    assert config.history == (
        HistoryEntry("2023-11-14T22:13:20Z", "ENV A=1", True),
        HistoryEntry("2023-11-14T22:13:20Z", "COPY kubectl /usr/bin/", False),
    )
    assert config.labels == {"org.opencontainers.image.source": "https://example.com"}
    assert config.env == ("A=1",)
    assert config.entrypoint == ("/usr/bin/kubectl",)
    assert config.cmd == ("version",)


def test_bad_configs() -> None:
    image = make_image([LAYER, make_layer({"/b": b"b"})])
    manifest = parse_manifest(fetched(image.manifest, image.manifest_media_type))
    assert isinstance(manifest, ImageManifest)
    where = f"app:1: config {image.config_digest}"
    cases = [
        (b"<html>", f"{where} is not JSON"),
        (b"{}", f"{where} has no rootfs.diff_ids list"),
        (json.dumps({"rootfs": {"diff_ids": ["sha256:1"]}}).encode(),
         f"{where}: bad diff_id: digest 'sha256:1' must have 64 hex digits after sha256: "
         "(it has 1)"),
        (json.dumps({"rootfs": {"diff_ids": [LAYER.diff_id]}}).encode(),
         f"{where} lists 1 diff_ids but the manifest has 2 layers"),
    ]  # fmt: skip
    for body, message in cases:
        with pytest.raises(ImageConfigError) as caught:
            parse_config(body, manifest, where="app:1")
        assert str(caught.value) == message
