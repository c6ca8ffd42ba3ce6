"""Registry authentication as pure data: challenges, scopes, tokens and Docker's config.json.

The registry client (``oci.registry``) does the HTTP; this module only decides what to send. A registry answers
an unauthenticated request with ``401`` and a ``WWW-Authenticate`` challenge: ``Basic realm=...`` (send the user's
password) or ``Bearer realm=URL,service=S,scope=...`` (ask the realm for a token covering the scopes, then send
the token). Credentials come from Docker's ``config.json``: an ``auths`` entry holds them inline (base64
``user:password``, or an ``identitytoken``), while ``credHelpers`` (per registry) and ``credsStore`` (the default)
name a ``docker-credential-NAME`` program that holds them instead.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from oci.errors import OCIError
from oci.frozen import FrozenMap
from oci.reference import DOCKER_HUB

__all__ = [
    "DOCKER_HUB_API",
    "DOCKER_HUB_CONFIG_KEY",
    "AuthConfigError",
    "Challenge",
    "Credential",
    "CredentialSource",
    "IDENTITY_TOKEN_USER",
    "Token",
    "api_host",
    "basic_header",
    "config_key",
    "credential_source",
    "helper_credential",
    "parse_challenges",
    "parse_token_response",
    "repository_scope",
    "token_params",
    "with_login",
    "without_login",
]

DOCKER_HUB_API = "registry-1.docker.io"  # docker.io is a name; this host serves its API
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"  # the key docker login writes for Docker Hub
IDENTITY_TOKEN_USER = "<token>"  # what credential helpers answer as Username for an identity token


class AuthConfigError(OCIError):
    """A config.json or token answer that cannot be used."""


@dataclass(frozen=True, slots=True)
class Credential:
    username: str = ""
    password: str = ""
    identity_token: str = ""  # an OAuth2 refresh token (docker login to some registries returns one)

    def __repr__(self) -> str:  # never let a secret reach a log or a traceback
        return f"Credential(username={self.username!r}, password={'***' if self.password else ''!r})"


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lowercase: "basic" or "bearer"
    params: FrozenMap[str, str]

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    expires_in: int

    def __repr__(self) -> str:
        return f"Token(expires_in={self.expires_in})"


def api_host(registry: str) -> str:
    """The host whose ``/v2/`` serves ``registry``'s API."""
    return DOCKER_HUB_API if registry == DOCKER_HUB else registry


def config_key(registry: str) -> str:
    """The key ``docker login`` uses in config.json for ``registry``."""
    return DOCKER_HUB_CONFIG_KEY if registry in (DOCKER_HUB, DOCKER_HUB_API, "index.docker.io") else registry


def _host_of_key(key: str) -> str:
    """A config.json key as a registry name: ``https://host/v1/`` and ``host`` are the same entry."""
    host = re.sub(r"^[a-z]+://", "", key).split("/", 1)[0]
    return DOCKER_HUB if host in ("index.docker.io", DOCKER_HUB_API) else host


def basic_header(credential: Credential) -> str:
    raw = f"{credential.username}:{credential.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def repository_scope(repository: str, actions: Iterable[str]) -> str:
    return f"repository:{repository}:{','.join(actions)}"


# RFC 7235: challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]; several challenges may share a header.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*(,|$)')
_SCHEME = re.compile(rf"\s*,?\s*({_TOKEN})(?:\s+|$)")


def parse_challenges(header: str) -> list[Challenge]:
    """The challenges of a ``WWW-Authenticate`` header, in order. Unparseable text ends the list."""
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        scheme = _SCHEME.match(header, pos)
        if scheme is None:
            break
        pos = scheme.end()
        params: dict[str, str] = {}
        while pos < len(header):
            param = _PARAM.match(header, pos)
            if param is None:
                break
            name, value = param.group(1).lower(), param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params.setdefault(name, value)
            pos = param.end()
        challenges.append(Challenge(scheme.group(1).lower(), FrozenMap(params)))
    return challenges


def token_params(challenge: Challenge, scopes: Iterable[str], credential: Credential | None) -> list[tuple[str, str]]:
    """The query (GET) or form (POST, with an identity token) a token request sends to the realm."""
    params: list[tuple[str, str]] = []
    if service := challenge.params.get("service"):
        params.append(("service", service))
    wanted = list(dict.fromkeys(scopes)) or [s for s in challenge.params.get("scope", "").split(" ") if s]
    params.extend(("scope", scope) for scope in wanted)
    if credential is not None and credential.identity_token:
        params += [("grant_type", "refresh_token"), ("refresh_token", credential.identity_token)]
        params.append(("client_id", "pybuild"))
    elif credential is not None and credential.username:
        params.append(("account", credential.username))
    return params


def parse_token_response(raw: bytes) -> Token:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise AuthConfigError("the token server's answer is not JSON") from None
    if not isinstance(data, dict):
        raise AuthConfigError("the token server's answer is not a JSON object")
    value = data.get("token") or data.get("access_token")
    if not isinstance(value, str) or not value:
        raise AuthConfigError("the token server's answer holds no token")
    expires = data.get("expires_in", 60)
    return Token(value, expires if isinstance(expires, int) and expires > 0 else 60)


# --- Docker's config.json


@dataclass(frozen=True, slots=True)
class CredentialSource:
    """Where config.json keeps a registry's credentials: inline, behind a helper program, or nowhere."""

    credential: Credential | None = None
    helper: str = ""  # NAME of docker-credential-NAME
    server_url: str = ""  # what to ask the helper for


def credential_source(config: Mapping[str, Any], registry: str) -> CredentialSource:
    """Docker's lookup order: ``credHelpers[registry]``, then ``credsStore``, then ``auths``."""
    key = config_key(registry)
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict):
        for name, helper in helpers.items():
            if _host_of_key(str(name)) == registry and isinstance(helper, str) and helper:
                return CredentialSource(helper=helper, server_url=key)
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        return CredentialSource(helper=store, server_url=key)
    auths = config.get("auths")
    if isinstance(auths, dict):
        for name, entry in auths.items():
            if _host_of_key(str(name)) == registry and isinstance(entry, dict):
                return CredentialSource(credential=_inline(entry, str(name)))
    return CredentialSource()


def _inline(entry: Mapping[str, Any], name: str) -> Credential | None:
    username, password = entry.get("username"), entry.get("password")
    token = entry.get("identitytoken")
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise AuthConfigError(f"config.json: auths[{name!r}].auth is not base64 of user:password") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise AuthConfigError(f"config.json: auths[{name!r}].auth is not user:password")
    if not isinstance(token, str):
        token = ""
    if not isinstance(username, str) or not isinstance(password, str):
        return Credential(identity_token=token) if token else None
    if not username and not token:
        return None
    return Credential(username, password, token)


def helper_credential(answer: Mapping[str, Any]) -> Credential | None:
    """A ``docker-credential-NAME get`` answer (``{"ServerURL", "Username", "Secret"}``) as a credential."""
    username, secret = answer.get("Username"), answer.get("Secret")
    if not isinstance(username, str) or not isinstance(secret, str) or not secret:
        return None
    if username == IDENTITY_TOKEN_USER:
        return Credential(identity_token=secret)
    return Credential(username, secret)


def with_login(config: Mapping[str, Any], registry: str, credential: Credential) -> dict[str, Any]:
    """config.json after ``docker login`` stored ``credential`` inline (no helper configured for it)."""
    out = dict(config)
    auths = dict(out.get("auths") or {})
    for name in [n for n in auths if _host_of_key(n) == registry]:
        del auths[name]
    raw = f"{credential.username}:{credential.password}".encode()
    auths[config_key(registry)] = {"auth": base64.b64encode(raw).decode("ascii")}
    out["auths"] = auths
    return out


def without_login(config: Mapping[str, Any], registry: str) -> tuple[dict[str, Any], bool]:
    """config.json after ``docker logout``, and whether it held an entry for ``registry``."""
    out = dict(config)
    auths = dict(out.get("auths") or {})
    names = [n for n in auths if _host_of_key(n) == registry]
    for name in names:
        del auths[name]
    if "auths" in out or auths:
        out["auths"] = auths
    return out, bool(names)
