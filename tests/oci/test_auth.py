"""Registry authentication decisions, with no network: challenges, token requests, config.json lookups."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from oci.auth import (
    AuthConfigError,
    Challenge,
    Credential,
    api_host,
    basic_header,
    config_key,
    credential_source,
    parse_challenges,
    parse_token_response,
    repository_scope,
    token_params,
    with_login,
    without_login,
)
from oci.credentials import DockerConfig, docker_config_dir
from oci.frozen import FrozenMap


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('Basic realm="registry"', [("basic", {"realm": "registry"})]),
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"',
            [
                (
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/alpine:pull",
                    },
                )
            ],
        ),
        ('Bearer realm="a\\"b", service=plain', [("bearer", {"realm": 'a"b', "service": "plain"})]),
        (
            'Bearer realm="x",scope="repository:a:pull,push"',
            [("bearer", {"realm": "x", "scope": "repository:a:pull,push"})],
        ),
        ('Basic realm="one", Bearer realm="two"', [("basic", {"realm": "one"}), ("bearer", {"realm": "two"})]),
        ("Negotiate", [("negotiate", {})]),
        ("", []),
    ],
)
def test_challenges_parse_as_rfc_7235_says(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    assert [(c.scheme, dict(c.params)) for c in parse_challenges(header)] == expected


def test_token_requests_ask_for_every_scope_and_name_the_account() -> None:
    challenge = Challenge("bearer", FrozenMap({"realm": "https://t/token", "service": "reg", "scope": "x"}))
    scopes = [repository_scope("app", ["pull", "push"]), repository_scope("base", ["pull"])]
    params = token_params(challenge, scopes, Credential("ci", "pw"))
    assert params == [
        ("service", "reg"),
        ("scope", "repository:app:pull,push"),
        ("scope", "repository:base:pull"),
        ("account", "ci"),
    ]
    # With no scope of our own, the challenge's is used; anonymous requests name no account.
    assert token_params(challenge, [], None) == [("service", "reg"), ("scope", "x")]
    refresh = token_params(challenge, [], Credential(identity_token="refresh-me"))
    assert ("grant_type", "refresh_token") in refresh and ("refresh_token", "refresh-me") in refresh


def test_token_answers_accept_both_field_names_and_refuse_garbage() -> None:
    assert parse_token_response(b'{"token": "a", "expires_in": 300}').value == "a"
    assert parse_token_response(b'{"access_token": "b"}').expires_in == 60
    for bad in (b"not json", b"[]", b"{}", b'{"token": 3}'):
        with pytest.raises(AuthConfigError):
            parse_token_response(bad)


def test_secrets_never_show_in_reprs() -> None:
    assert "pw" not in repr(Credential("ci", "pw"))
    assert "secret" not in repr(parse_token_response(b'{"token": "secret"}'))
    assert basic_header(Credential("ci", "pw")) == "Basic " + base64.b64encode(b"ci:pw").decode()


def test_docker_hub_has_its_own_api_host_and_config_key() -> None:
    assert api_host("docker.io") == "registry-1.docker.io"
    assert api_host("127.0.0.1:5000") == "127.0.0.1:5000"
    assert config_key("docker.io") == "https://index.docker.io/v1/"
    assert config_key("ghcr.io") == "ghcr.io"


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_config_lookup_follows_dockers_order() -> None:
    config = {
        "auths": {
            "https://index.docker.io/v1/": {"auth": _auth("hub", "h")},
            "https://reg.example.com/v1/": {"auth": _auth("me", "p:with:colons")},
            "plain.example.com": {"username": "u", "password": "q"},
            "token.example.com": {"identitytoken": "tok"},
        },
        "credHelpers": {"helped.example.com": "secretservice"},
    }
    assert credential_source(config, "docker.io").credential == Credential("hub", "h")
    assert credential_source(config, "reg.example.com").credential == Credential("me", "p:with:colons")
    assert credential_source(config, "plain.example.com").credential == Credential("u", "q")
    assert credential_source(config, "token.example.com").credential == Credential(identity_token="tok")
    helped = credential_source(config, "helped.example.com")
    assert helped.helper == "secretservice" and helped.server_url == "helped.example.com"
    assert credential_source(config, "other.example.com").credential is None
    # credsStore covers every registry without a helper of its own, ahead of inline auths.
    stored = credential_source({**config, "credsStore": "pass"}, "reg.example.com")
    assert stored.helper == "pass" and stored.credential is None


def test_a_broken_auth_entry_is_an_error_naming_it() -> None:
    with pytest.raises(AuthConfigError, match="reg.example.com"):
        credential_source({"auths": {"reg.example.com": {"auth": "!!!"}}}, "reg.example.com")
    with pytest.raises(AuthConfigError, match="user:password"):
        credential_source({"auths": {"r": {"auth": base64.b64encode(b"nocolon").decode()}}}, "r")


def test_login_and_logout_edit_only_their_registry() -> None:
    config = {"auths": {"keep.example.com": {"auth": _auth("k", "k")}}, "psFormat": "table"}
    logged = with_login(config, "docker.io", Credential("hub", "pw"))
    assert logged["auths"]["https://index.docker.io/v1/"] == {"auth": _auth("hub", "pw")}
    assert logged["auths"]["keep.example.com"] and logged["psFormat"] == "table"
    out, had = without_login(logged, "docker.io")
    assert had and out == {**config, "auths": config["auths"]}
    assert without_login(out, "docker.io") == (out, False)


def test_docker_config_writes_privately_and_reads_back(tmp_path: Path) -> None:
    docker = DockerConfig(tmp_path / "docker")
    assert docker.lookup("127.0.0.1:5000") is None  # no file yet
    assert docker.store("127.0.0.1:5000", Credential("ci", "pw")) == str(docker.path)
    assert stat.S_IMODE(os.stat(docker.path).st_mode) == 0o600
    assert docker.lookup("127.0.0.1:5000") == Credential("ci", "pw")
    assert json.loads(docker.path.read_text())["auths"]["127.0.0.1:5000"]["auth"] == _auth("ci", "pw")
    assert docker.erase("127.0.0.1:5000") and docker.lookup("127.0.0.1:5000") is None
    assert not docker.erase("127.0.0.1:5000")
    docker.path.write_text("{not json")
    with pytest.raises(AuthConfigError, match="config.json: not valid JSON"):
        docker.lookup("x")


def test_credential_helpers_are_asked_over_their_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    vault = tmp_path / "vault.json"
    helper = bin_dir / "docker-credential-testvault"
    helper.write_text(
        f"""#!/bin/sh
# A credential helper speaking Docker's protocol, keeping one JSON file ({vault}).
missing() {{ echo "credentials not found in native keychain"; exit 1; }}
case "$1" in
  get) read url; if [ -f {vault} ]; then cat {vault}; else missing; fi ;;
  store) cat > {vault} ;;
  erase) read url; if [ -f {vault} ]; then rm {vault}; else missing; fi ;;
esac
"""
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    docker = DockerConfig(tmp_path / "docker")
    docker._save({"credsStore": "testvault"})
    assert docker.lookup("reg.example.com") is None
    assert docker.store("reg.example.com", Credential("ci", "pw")) == "docker-credential-testvault"
    assert json.loads(vault.read_text()) == {"ServerURL": "reg.example.com", "Username": "ci", "Secret": "pw"}
    assert "pw" not in docker.path.read_text()  # the file records the registry, the helper keeps the secret
    assert docker.lookup("reg.example.com") == Credential("ci", "pw")
    assert docker.erase("reg.example.com") and not vault.exists()
    docker._save({"credsStore": "missing"})
    with pytest.raises(AuthConfigError, match="docker-credential-missing, which is not installed"):
        docker.lookup("reg.example.com")


def test_the_config_directory_is_dockers(tmp_path: Path) -> None:
    assert docker_config_dir({"DOCKER_CONFIG": str(tmp_path)}) == tmp_path
    assert docker_config_dir({"HOME": "/home/u"}) == Path("/home/u/.docker")
