"""Reference parsing: the distribution/reference grammar with Docker Hub's defaults."""

from __future__ import annotations

import pytest

from layerindex.errors import InvalidReference
from layerindex.reference import Reference, parse_reference

D = "sha256:" + "ab" * 32
D512 = "sha512:" + "cd" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest", "canonical", "familiar"),
    [
        # a bare name is an official image on Docker Hub, tag latest
        ("alpine", "docker.io", "library/alpine", "latest", None,
         "docker.io/library/alpine:latest", "alpine:latest"),
        ("alpine:3.20", "docker.io", "library/alpine", "3.20", None,
         "docker.io/library/alpine:3.20", "alpine:3.20"),
        # a first component without ".", ":" or "localhost" is a Docker Hub namespace
        ("raesene/alpine-containertools", "docker.io", "raesene/alpine-containertools",
         "latest", None, "docker.io/raesene/alpine-containertools:latest",
         "raesene/alpine-containertools:latest"),
        ("docker.io/alpine", "docker.io", "library/alpine", "latest", None,
         "docker.io/library/alpine:latest", "alpine:latest"),
        ("index.docker.io/library/alpine:3", "docker.io", "library/alpine", "3", None,
         "docker.io/library/alpine:3", "alpine:3"),
        # library/ is only dropped from a one-component familiar name
        ("docker.io/library/a/b", "docker.io", "library/a/b", "latest", None,
         "docker.io/library/a/b:latest", "library/a/b:latest"),
        ("ghcr.io/org/app:1.2", "ghcr.io", "org/app", "1.2", None,
         "ghcr.io/org/app:1.2", "ghcr.io/org/app:1.2"),
        (f"localhost:5000/team/app@{D}", "localhost:5000", "team/app", None, D,
         f"localhost:5000/team/app@{D}", f"localhost:5000/team/app@{D}"),
        ("localhost/app", "localhost", "app", "latest", None,
         "localhost/app:latest", "localhost/app:latest"),
        ("127.0.0.1:5000/x", "127.0.0.1:5000", "x", "latest", None,
         "127.0.0.1:5000/x:latest", "127.0.0.1:5000/x:latest"),
        ("[::1]:5000/x:v1", "[::1]:5000", "x", "v1", None,
         "[::1]:5000/x:v1", "[::1]:5000/x:v1"),
        (f"app:1.2@{D}", "docker.io", "library/app", "1.2", D,
         f"docker.io/library/app:1.2@{D}", f"app:1.2@{D}"),
        (f"quay.io/a/b@{D512}", "quay.io", "a/b", None, D512,
         f"quay.io/a/b@{D512}", f"quay.io/a/b@{D512}"),
        # separators: ".", "_", "__" and runs of "-" between alphanumerics
        ("ns/a.b_c__d---e", "docker.io", "ns/a.b_c__d---e", "latest", None,
         "docker.io/ns/a.b_c__d---e:latest", "ns/a.b_c__d---e:latest"),
        # "localhost:5000" alone is the image "localhost" with tag 5000, as Docker reads it
        ("localhost:5000", "docker.io", "library/localhost", "5000", None,
         "docker.io/library/localhost:5000", "localhost:5000"),
        ("Example.COM:443/app:Tag_1", "Example.COM:443", "app", "Tag_1", None,
         "Example.COM:443/app:Tag_1", "Example.COM:443/app:Tag_1"),
    ],
)  # fmt: skip
def test_good_references(
    text: str,
    registry: str,
    repository: str,
    tag: str | None,
    digest: str | None,
    canonical: str,
    familiar: str,
) -> None:
    ref = parse_reference(text)
    assert ref == Reference(registry, repository, tag, digest)
    assert str(ref) == canonical
    assert ref.familiar() == familiar
    assert parse_reference(canonical) == ref  # the canonical form reads back as itself


def test_api_host_manifest_ref_repo_key_and_with_digest() -> None:
    hub = parse_reference("alpine:3.20")
    assert hub.api_host == "registry-1.docker.io"
    assert hub.repo_key == "docker.io/library/alpine"
    assert hub.manifest_ref == "3.20"
    pinned = hub.with_digest(D)
    assert pinned == Reference("docker.io", "library/alpine", "3.20", D)
    assert pinned.manifest_ref == D  # the digest wins over the tag
    assert parse_reference("ghcr.io/o/a").api_host == "ghcr.io"
    with pytest.raises(InvalidReference) as caught:
        hub.with_digest("sha256:abc")
    assert str(caught.value) == (
        "invalid reference alpine:3.20@sha256:abc: digest 'sha256:abc' must have 64 hex digits "
        "after sha256: (it has 3)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "it is empty"),
        ("alpine ", "it contains whitespace"),
        ("https://ghcr.io/o/a", "drop the URL scheme; write it like ghcr.io/org/app:1.2"),
        ("Alpine", "repository name must be lowercase ('Alpine')"),
        ("ghcr.io/Org/app", "repository name must be lowercase ('Org')"),
        ("alpine@sha256:abc",
         "digest 'sha256:abc' must have 64 hex digits after sha256: (it has 3)"),
        (f"alpine@{D.upper()}",
         "digest algorithm 'SHA256' is not supported (use sha256 or sha512)"),
        ("alpine@md5:" + "a" * 32,
         "digest algorithm 'md5' is not supported (use sha256 or sha512)"),
        ("alpine@sha256:" + "A" * 64,
         f"digest 'sha256:{'A' * 64}' must be sha256: followed by lowercase hex digits"),
        ("alpine@" + "a" * 64,
         f"digest '{'a' * 64}' has no algorithm (expected sha256:<64 hex digits>)"),
        ("alpine:.bad", "tag '.bad' must be 1-128 letters, digits, '_', '.' or '-', not starting "
         "with '.' or '-'"),
        ("alpine:" + "t" * 129,
         f"tag '{'t' * 129}' must be 1-128 letters, digits, '_', '.' or '-', "
         "not starting with '.' or '-'"),
        ("alpine:", "tag '' must be 1-128 letters, digits, '_', '.' or '-', not starting with "
         "'.' or '-'"),
        ("a//b", "the repository name has an empty path component"),
        ("ghcr.io/", "the repository name is missing"),
        ("a-/b", "repository path component 'a-' may only contain lowercase letters, digits and "
         "single separators ('.', '_', '__' or '-') between them"),
        ("a___b", "repository path component 'a___b' may only contain lowercase letters, digits "
         "and single separators ('.', '_', '__' or '-') between them"),
        ("host:port/app", "registry 'host:port' has an invalid port 'port' (ports are 1-65535)"),
        ("127.0.0.1:99999/x",
         "registry '127.0.0.1:99999' has an invalid port '99999' (ports are 1-65535)"),
        ("h.io:0/x", "registry 'h.io:0' has an invalid port '0' (ports are 1-65535)"),
        ("h.io:" + "9" * 5000 + "/x",
         f"registry 'h.io:{'9' * 5000}' has an invalid port '{'9' * 5000}' (ports are 1-65535)"),
        ("[::1]:65536/x", "registry '[::1]:65536' has an invalid port (ports are 1-65535)"),
        ("-bad.io/app", "registry '-bad.io' is not a valid host name"),
        ("[::1/app", "registry '[::1' is missing its closing ']'"),
        ("[zz::1]:5000/app", "registry '[zz::1]:5000' is not a valid bracketed IPv6 address"),
        ("a/" + "b" * 300, "repository name is longer than 255 characters"),
    ],
)  # fmt: skip
def test_bad_references(text: str, message: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        parse_reference(text)
    assert str(caught.value) == f"invalid reference {text!r}: {message}"


def test_a_repository_without_a_tag_can_stay_without_one() -> None:
    # `layerindex tags alpine`: every tag of the repository, not "latest"'s.
    assert parse_reference("alpine", default_tag=None) == Reference("docker.io", "library/alpine")
    assert parse_reference("alpine:3.20", default_tag=None).tag == "3.20"
    assert parse_reference("localhost:5000/app", default_tag=None).tag is None
