"""Credentials from docker config.json, containers auth.json and credential helpers."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import pytest

from layerindex.registry.credentials import Credentials, Keychain, StaticKeychain


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write(path: Path, document: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


HELPER = """#!/bin/sh
# a docker-credential-helpers "get": server URL on stdin, JSON on stdout
read -r server
echo "$server" >> "$(dirname "$0")/asked"
case "$server" in
  https://index.docker.io/v1/) echo '{"ServerURL":"x","Username":"hubuser","Secret":"hubpass"}';;
  token.example) echo '{"ServerURL":"x","Username":"<token>","Secret":"refresh-me"}';;
  *) echo "credentials not found in native keychain"; exit 1;;
esac
"""


@pytest.fixture
def helper_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-test"
    helper.write_text(HELPER)
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return bin_dir


def test_repr_hides_secrets() -> None:
    creds = Credentials("alice", "s3cret", "tok3n")
    assert repr(creds) == "Credentials(username='alice', password='***', identity_token='***')"
    assert str(creds) == repr(creds)
    assert "s3cret" not in f"{creds}" and "tok3n" not in repr([creds])
    assert repr(Credentials("bob", None)) == (
        "Credentials(username='bob', password=None, identity_token=None)"
    )


def test_docker_config_auth_keys(tmp_path: Path) -> None:
    config = write(
        tmp_path / "config.json",
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64("hubuser:hub:pass")},
                "https://ghcr.io": {"username": "gh", "password": "ghpass"},
                "localhost:5000": {"auth": b64("local:pw")},
                "quay.io": {"identitytoken": "idtok"},
            }
        },
    )
    keychain = Keychain([config])
    # Docker Hub's key matches every name Docker Hub goes by; the password may hold ":"
    for name in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        assert keychain.resolve(name, "library/alpine") == Credentials("hubuser", "hub:pass", None)
    assert keychain.resolve("ghcr.io", "org/app") == Credentials("gh", "ghpass", None)
    assert keychain.resolve("localhost:5000", "x") == Credentials("local", "pw", None)
    assert keychain.resolve("localhost:5001", "x") is None
    assert keychain.resolve("quay.io", "a/b") == Credentials(None, None, "idtok")
    assert keychain.resolve("example.com", "a") is None


def test_podman_namespace_keys_longest_prefix_wins(tmp_path: Path) -> None:
    auth = write(
        tmp_path / "auth.json",
        {
            "auths": {
                "quay.io": {"auth": b64("host:1")},
                "quay.io/team": {"auth": b64("team:2")},
                "quay.io/team/app": {"auth": b64("app:3")},
            }
        },
    )
    keychain = Keychain([auth])
    assert keychain.resolve("quay.io", "team/app") == Credentials("app", "3", None)
    assert keychain.resolve("quay.io", "team/app/sub") == Credentials("app", "3", None)
    assert keychain.resolve("quay.io", "team/other") == Credentials("team", "2", None)
    assert keychain.resolve("quay.io", "teamx/app") == Credentials("host", "1", None)
    assert keychain.resolve("quay.io", "else") == Credentials("host", "1", None)


def test_sources_in_order_and_dicts(tmp_path: Path) -> None:
    first = write(tmp_path / "a.json", {"auths": {"ghcr.io": {"auth": b64("first:1")}}})
    second = {"auths": {"ghcr.io": {"auth": b64("second:2")}, "quay.io": {"auth": b64("q:3")}}}
    keychain = Keychain([tmp_path / "missing.json", first, second])
    assert keychain.resolve("ghcr.io", "o/a") == Credentials("first", "1", None)
    assert keychain.resolve("quay.io", "o/a") == Credentials("q", "3", None)


def test_from_environment_paths(tmp_path: Path) -> None:
    environ = {
        "HOME": str(tmp_path / "home"),
        "DOCKER_CONFIG": str(tmp_path / "docker"),
        "REGISTRY_AUTH_FILE": str(tmp_path / "override.json"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
    }
    assert Keychain.from_environment(environ).sources == (
        tmp_path / "override.json",
        tmp_path / "docker" / "config.json",
        tmp_path / "run" / "containers" / "auth.json",
        tmp_path / "home" / ".config" / "containers" / "auth.json",
    )
    write(tmp_path / "run/containers/auth.json", {"auths": {"r.io": {"auth": b64("xdg:1")}}})
    assert Keychain.from_environment(environ).resolve("r.io", "a") == Credentials("xdg", "1", None)
    assert Keychain.from_environment({"HOME": str(tmp_path / "home")}).sources == (
        tmp_path / "home" / ".docker" / "config.json",
        tmp_path / "home" / ".config" / "containers" / "auth.json",
    )


def test_bad_files_and_entries_warn_without_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    config = write(
        tmp_path / "config.json",
        {"auths": {"a.io": {"auth": "!!!notbase64"}, "b.io": {"auth": b64("nocolon")}}},
    )
    caplog.set_level(logging.WARNING, logger="layerindex")
    keychain = Keychain([broken, config])
    assert keychain.resolve("a.io", "x") is None
    assert keychain.resolve("b.io", "x") is None
    assert [r.getMessage() for r in caplog.records] == [
        f"credentials file {broken} is not valid JSON (line 1); ignored",
        f"{config}: an 'auth' value is not base64 of user:password; ignored",
        f"credentials file {broken} is not valid JSON (line 1); ignored",
        f"{config}: an 'auth' value has no ':' between user and password; ignored",
    ]
    assert "nocolon" not in caplog.text


def test_cred_helpers_and_store(helper_path: Path, tmp_path: Path) -> None:
    config = write(
        tmp_path / "config.json",
        {
            "credsStore": "test",
            "credHelpers": {"token.example": "test"},
            "auths": {
                "https://index.docker.io/v1/": {},
                "inline.example": {"auth": b64("inline:pw")},
            },
        },
    )
    keychain = Keychain([config])
    # Docker Hub is asked for by its v1 URL, as docker does
    assert keychain.resolve("docker.io", "library/alpine") == Credentials("hubuser", "hubpass")
    # a "<token>" username means the secret is an identity token
    assert keychain.resolve("token.example", "a") == Credentials(None, None, "refresh-me")
    # the store has nothing: the inline entry is the fallback
    assert keychain.resolve("inline.example", "a") == Credentials("inline", "pw", None)
    assert keychain.resolve("nothing.example", "a") is None
    # answers are cached per helper and server: each server asked once
    keychain.resolve("docker.io", "library/busybox")
    asked = (helper_path / "asked").read_text().splitlines()
    assert asked == ["https://index.docker.io/v1/", "token.example", "inline.example",
                     "nothing.example"]  # fmt: skip


def test_missing_helper_warns_and_means_no_credentials(
    helper_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write(tmp_path / "config.json", {"credHelpers": {"ghcr.io": "absent"}})
    caplog.set_level(logging.WARNING, logger="layerindex")
    assert Keychain([config]).resolve("ghcr.io", "o/a") is None
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "credential helper docker-credential-absent is not on PATH; "
         "no credentials for ghcr.io"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("script", "said"),
    [
        ("echo 'error getting credentials - keyring locked' >&2",
         "error getting credentials - keyring locked"),
        # an answer, Secret and all, then a failure: the answer is never echoed; escapes are
        ("echo '{\"ServerURL\": \"ghcr.io\", \"Username\": \"u\", \"Secret\": \"hunter2\"}'\n"
         "printf 'keyring \\033]0;locked\\007\\n' >&2",
         "keyring \\x1b]0;locked\\x07"),
    ],
)  # fmt: skip
def test_failing_helper_warns(
    helper_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, script: str, said: str
) -> None:
    broken = helper_path / "docker-credential-broken"
    broken.write_text(f"#!/bin/sh\n{script}\nexit 1\n")
    broken.chmod(0o755)
    config = write(tmp_path / "config.json", {"credsStore": "broken"})
    caplog.set_level(logging.WARNING, logger="layerindex")
    assert Keychain([config]).resolve("ghcr.io", "o/a") is None
    assert [r.getMessage() for r in caplog.records] == [
        f"credential helper docker-credential-broken failed for ghcr.io: {said}"
    ]


def test_static_keychain() -> None:
    fallback = Keychain([{"auths": {"quay.io": {"auth": b64("q:1")}}}])
    keychain = StaticKeychain(
        {"index.docker.io": Credentials("hub", "pw"), "GHCR.io": Credentials("gh", "pw2")},
        fallback=fallback,
    )
    assert keychain.resolve("docker.io", "library/alpine") == Credentials("hub", "pw")
    assert keychain.resolve("ghcr.io", "o/a") == Credentials("gh", "pw2")
    assert keychain.resolve("quay.io", "o/a") == Credentials("q", "1")
    assert StaticKeychain({}).resolve("quay.io", "o/a") is None
