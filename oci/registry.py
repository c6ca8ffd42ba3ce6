"""A client for the Registry HTTP API v2 (OCI distribution), over one injected ``requests.Session``.

The only module that speaks HTTP to registries. One ``RegistryClient`` serves every registry a command touches and
keeps, per host, the scheme that worked, the challenge the registry sent and the tokens it granted.

What it promises:
- HTTPS by default, verified against the system CAs plus ``certs.d/HOST/*.crt`` (Docker's layout, with client
  certificates as ``*.cert`` + ``*.key``); plain HTTP only for loopback hosts and ``--insecure-registry`` hosts.
- Credentials are attached per request, and only when the request goes to the registry's own host: redirects are
  followed by hand, and a hop to another host (blob storage, a CDN) carries no Authorization header.
- Connection errors, timeouts, 429 and 5xx are retried with exponential backoff (``Retry-After`` honoured); every
  other failure is a ``RegistryError`` naming registry, repository, reference, method, status and error code.
- Documents are capped in size and verified against the digest asked for; blobs are streamed into whatever the
  caller writes them to (the content store verifies them).
"""

from __future__ import annotations

import ipaddress
import json
import re
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import requests
from requests.adapters import HTTPAdapter

from oci import mediatypes as mt
from oci.auth import (
    Challenge,
    Credential,
    Token,
    api_host,
    basic_header,
    parse_challenges,
    parse_token_response,
    repository_scope,
    token_params,
)
from oci.canonical import MAX_DOCUMENT_SIZE
from oci.descriptor import Descriptor
from oci.digest import Digest
from oci.errors import InvalidDocument, OCIError, VerificationError
from oci.manifest import parse_document
from oci.reference import Reference
from oci.store import ContentStore

__all__ = [
    "RegistryClient",
    "RegistryError",
    "RegistryOptions",
    "is_loopback",
    "MANIFEST_ACCEPT",
]

MANIFEST_ACCEPT = ", ".join((mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST_LIST, mt.DOCKER_MANIFEST))
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_CHUNK = 1 << 20


class RegistryError(OCIError):
    """A registry request that failed: what was asked, of whom, and what the registry said."""

    def __init__(
        self,
        message: str,
        *,
        registry: str = "",
        repository: str = "",
        reference: str = "",
        method: str = "",
        url: str = "",
        status: int | None = None,
        codes: tuple[str, ...] = (),
        retryable: bool = False,
    ) -> None:
        self.registry = registry
        self.repository = repository
        self.reference = reference
        self.method = method
        self.url = url
        self.status = status
        self.codes = codes
        self.retryable = retryable
        self.detail = message
        super().__init__(self._render())

    def _render(self) -> str:
        name = f"{self.registry}/{self.repository}" if self.repository else self.registry
        if self.reference:
            name += ("@" if self.reference.startswith("sha256:") else ":") + self.reference
        parts = [name] if name else []
        if self.method:
            parts.append(f"{self.method} {self.url}")
        if self.status is not None:
            parts.append(f"HTTP {self.status}" + (f" {' '.join(self.codes)}" if self.codes else ""))
        parts.append(self.detail)
        return ": ".join(parts)


class RegistryAuthError(RegistryError):
    """401 or 403: the credentials are missing, wrong, or do not grant the access asked for."""


class RegistryNotFound(RegistryError):
    """404: no such repository, manifest or blob."""


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    insecure: frozenset[str] = frozenset()  # hosts allowed plain HTTP and unverified TLS
    certs_dirs: tuple[Path, ...] = ()  # each holds HOST[:PORT]/ with *.crt, *.cert and *.key
    retries: int = 4
    backoff: float = 0.5  # the first delay; each retry doubles it, up to 8 s
    connect_timeout: float = 30.0
    read_timeout: float = 60.0  # with no byte received for this long, the request fails (and is retried)
    chunk_size: int = 0  # 0: upload blobs in one request
    user_agent: str = "pybuild"


def is_loopback(host: str) -> bool:
    name = urllib.parse.urlsplit(f"//{host}").hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass
class _Host:
    """What the client learned about one registry host."""

    scheme: str = ""
    challenge: Challenge | None = None
    tokens: dict[frozenset[str], tuple[Token, float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Target:
    """Who a request is about, for errors and scopes."""

    registry: str
    repository: str = ""
    reference: str = ""


class _TLSAdapter(HTTPAdapter):
    """An adapter whose connections use one SSL context: the system CAs plus a registry's own CA and client cert."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(self, request: Any, verify: Any, cert: Any = None) -> Any:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        for key in ("ca_certs", "ca_cert_dir", "cert_file", "key_file", "cert_reqs"):
            pool_kwargs.pop(key, None)
        pool_kwargs["ssl_context"] = self._context
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        return None  # the context already says what to trust


class RegistryClient:
    """Distribution API v2 calls, by reference. ``credentials(registry)`` supplies what config.json holds."""

    def __init__(
        self,
        session: requests.Session | None,
        credentials: Callable[[str], Credential | None] = lambda registry: None,
        options: RegistryOptions = RegistryOptions(),
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.session = session if session is not None else requests.Session()
        self.session.trust_env = False  # no netrc credentials re-added on redirects, no proxy surprises
        self.credentials = credentials
        self.options = options
        self._sleep = sleep
        self._hosts: dict[str, _Host] = {}
        self._credentials: dict[str, Credential | None] = {}
        self._mounted: set[str] = set()

    # --- manifests

    def get_manifest(self, ref: Reference) -> tuple[Descriptor, bytes]:
        """The manifest or index ``ref`` names, verified against its digest when ``ref`` carries one."""
        target = _Target(ref.registry, ref.repository, str(ref.digest) if ref.digest else ref.tag)
        path = f"manifests/{target.reference}"
        with self._request("GET", target, path, headers={"Accept": MANIFEST_ACCEPT}, stream=True) as response:
            raw = _read_capped(response, MAX_DOCUMENT_SIZE, target)
            declared = _content_type(response)
            header_digest = response.headers.get("Docker-Content-Digest", "")
        digest = Digest.of_bytes(raw)
        if ref.digest is not None and digest != ref.digest:
            raise RegistryError(f"the registry answered with a document whose digest is {digest}", **_named(target))
        if ref.digest is None and header_digest.startswith("sha256:") and header_digest != str(digest):
            raise RegistryError(
                f"the manifest's digest is {digest} but the registry says {header_digest}", **_named(target)
            )
        media_type = declared if (mt.is_manifest(declared) or mt.is_index(declared)) else None
        try:
            document = parse_document(raw, media_type, f"manifest {ref}")
        except InvalidDocument as err:
            raise RegistryError(str(err), **_named(target)) from None
        return Descriptor(document.media_type or media_type or mt.OCI_MANIFEST, digest, len(raw)), raw

    def put_manifest(self, ref: Reference, raw: bytes, media_type: str) -> Digest:
        reference = str(ref.digest) if ref.digest else ref.tag
        target = _Target(ref.registry, ref.repository, reference)
        with self._request(
            "PUT",
            target,
            f"manifests/{reference}",
            push=True,
            headers={"Content-Type": media_type},
            body=lambda: raw,
            expect=(200, 201, 202),
        ):
            pass
        return Digest.of_bytes(raw)

    # --- blobs

    def blob_exists(self, ref: Reference, digest: Digest) -> bool:
        target = _Target(ref.registry, ref.repository, str(digest))
        try:
            with self._request("HEAD", target, f"blobs/{digest}", push=True):
                return True
        except RegistryNotFound:
            return False

    @contextmanager
    def open_blob(self, ref: Reference, digest: Digest, offset: int = 0) -> Iterator[requests.Response]:
        """A streaming response with the blob's bytes (from ``offset`` when the registry honours ``Range``)."""
        target = _Target(ref.registry, ref.repository, str(digest))
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self._request("GET", target, f"blobs/{digest}", headers=headers, stream=True) as response:
            yield response

    def fetch_blob(self, ref: Reference, descriptor: Descriptor, store: ContentStore) -> None:
        """Stream a blob into ``store``, verified; a dropped, truncated or corrupted download is tried again."""
        target = _Target(ref.registry, ref.repository, str(descriptor.digest))
        failure = 0
        while True:
            try:
                with store.writer(descriptor.digest, descriptor.size) as writer:
                    with self.open_blob(ref, descriptor.digest) as response:
                        for chunk in response.iter_content(_CHUNK):
                            writer.write(chunk)
                    writer.commit()
                return
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
                problem = f"download interrupted: {_reason(err)}"
            except VerificationError as err:
                problem = str(err)
            except RegistryError as err:
                if not err.retryable:
                    raise
                problem = err.detail
            failure += 1
            if failure > self.options.retries:
                raise RegistryError(f"{problem} (after {failure} attempts)", method="GET", **_named(target))
            self._sleep(self._delay(failure, None))

    def mount_blob(self, ref: Reference, digest: Digest, source_repository: str) -> bool:
        """Ask the registry to link ``digest`` from another of its repositories; True if it did."""
        target = _Target(ref.registry, ref.repository, str(digest))
        query = {"mount": str(digest), "from": source_repository}
        extra = (repository_scope(source_repository, ["pull"]),)
        with self._request(
            "POST", target, "blobs/uploads/", push=True, query=query, expect=(201, 202), extra_scopes=extra
        ) as response:
            if response.status_code == 201:
                return True
            location = response.headers.get("Location", "")
        if location:  # the registry started an ordinary upload instead: cancel it, the caller uploads
            try:
                url = urllib.parse.urljoin(response.url, location)
                with self._request("DELETE", target, url, push=True, expect=(200, 202, 204, 404)):
                    pass
            except RegistryError:
                pass
        return False

    def upload_blob(
        self,
        ref: Reference,
        descriptor: Descriptor,
        opener: Callable[[], BinaryIO],
    ) -> None:
        """Upload a blob: in one PUT, or in ``chunk_size`` PATCHes that resume where the registry says it stopped."""
        target = _Target(ref.registry, ref.repository, str(descriptor.digest))
        with self._request("POST", target, "blobs/uploads/", push=True, expect=(202,)) as response:
            location = _location(response, target)
        chunk_size = self.options.chunk_size
        if chunk_size <= 0 or descriptor.size <= chunk_size:
            self._put_upload(target, location, descriptor, opener)
            return
        offset = 0
        failures = 0
        while offset < descriptor.size:
            length = min(chunk_size, descriptor.size - offset)
            try:
                location, offset = self._patch(target, location, opener, offset, length)
                failures = 0
            except RegistryError as err:
                failures += 1
                if not err.retryable or failures > self.options.retries:
                    raise
                self._sleep(self._delay(failures, None))
                location, offset = self._upload_status(target, location)
        self._put_upload(target, location, descriptor, None)

    def _patch(
        self, target: _Target, location: str, opener: Callable[[], BinaryIO], offset: int, length: int
    ) -> tuple[str, int]:
        def body() -> bytes:
            with opener() as stream:
                stream.seek(offset)
                return stream.read(length)

        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + length - 1}",
            "Content-Length": str(length),
        }
        with self._request(
            "PATCH", target, location, push=True, headers=headers, body=body, expect=(202,), attempts=1
        ) as response:
            return _location(response, target), _range_end(response, offset + length)

    def _upload_status(self, target: _Target, location: str) -> tuple[str, int]:
        """Where an interrupted chunked upload stands: the registry's ``Range`` says how many bytes it kept."""
        with self._request("GET", target, location, push=True, expect=(204,)) as response:
            return _location(response, target, default=location), _range_end(response, 0)

    def _put_upload(
        self, target: _Target, location: str, descriptor: Descriptor, opener: Callable[[], BinaryIO] | None
    ) -> None:
        url = _with_query(location, {"digest": str(descriptor.digest)})
        headers = {"Content-Type": "application/octet-stream"}
        body: Callable[[], Any] | None = None
        if opener is not None:
            headers["Content-Length"] = str(descriptor.size)
            body = opener
        else:
            headers["Content-Length"] = "0"
        with self._request("PUT", target, url, push=True, headers=headers, body=body, expect=(201, 204)):
            pass

    # --- login

    def check_login(self, registry: str, credential: Credential) -> None:
        """Authenticate against ``registry`` with ``credential`` (as ``docker login`` does), or raise."""
        self._credentials[registry] = credential
        host = self._host(_Target(registry))
        challenge = host.challenge
        if challenge is None:
            return  # the registry asks for nothing
        if challenge.scheme == "bearer":
            host.tokens.clear()
            self._token(_Target(registry), challenge, frozenset())
            return
        with self._request("GET", _Target(registry), "/v2/", expect=(200,)):
            pass

    # --- the request machinery

    @contextmanager
    def _request(
        self,
        method: str,
        target: _Target,
        path: str,
        *,
        push: bool = False,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        body: Callable[[], Any] | None = None,
        stream: bool = False,
        expect: tuple[int, ...] = (200,),
        extra_scopes: tuple[str, ...] = (),
        attempts: int | None = None,
    ) -> Iterator[requests.Response]:
        host_name = api_host(target.registry)
        host = self._host(target)
        base = f"{host.scheme}://{host_name}"
        if path.startswith(("http://", "https://")):
            url = path
        elif path.startswith("/"):
            url = base + path
        else:
            url = f"{base}/v2/{target.repository}/{path}"
        if query:
            url = _with_query(url, query)
        scopes = frozenset(
            ([repository_scope(target.repository, ["pull", "push"] if push else ["pull"])] if target.repository else [])
            + list(extra_scopes)
        )
        retries = self.options.retries if attempts is None else attempts - 1
        reauthorised = False
        while True:
            request_headers = {"User-Agent": self.options.user_agent, **(headers or {})}
            authorization = self._authorization(target, host, scopes)
            try:
                response = self._with_retries(
                    lambda h=request_headers, a=authorization: self._send(method, url, host_name, h, a, body, stream),
                    retries,
                )
            except (requests.ConnectionError, requests.Timeout) as err:
                raise RegistryError(
                    f"connection failed after {retries + 1} attempts: {_reason(err)}",
                    retryable=True,
                    method=method,
                    url=_redact(url),
                    **_named(target),
                ) from None
            if response.status_code == 401 and not reauthorised:
                challenge = next(iter(parse_challenges(response.headers.get("WWW-Authenticate", ""))), None)
                response.close()
                if challenge is not None and self._credentials_for(target.registry, challenge) is not None:
                    host.challenge = challenge
                    host.tokens.clear()
                    reauthorised = True
                    continue
                if challenge is not None and challenge.scheme == "bearer" and host.challenge is None:
                    host.challenge = challenge  # anonymous tokens still need asking for
                    reauthorised = True
                    continue
                raise self._error(response, method, url, target)
            if response.status_code not in expect:
                raise self._error(response, method, url, target)
            try:
                yield response
            finally:
                response.close()
            return

    def _send(
        self,
        method: str,
        url: str,
        registry_host: str,
        headers: dict[str, str],
        authorization: str | None,
        body: Callable[[], Any] | None,
        stream: bool,
    ) -> requests.Response:
        """One request, following redirects by hand: credentials go only to the registry's own host and scheme."""
        origin = urllib.parse.urlsplit(url)
        for _ in range(_MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme == "https":
                self._mount_tls(parts.netloc)  # a blob store or CDN we are sent to is verified the same way
            same_origin = parts.netloc == registry_host and (parts.scheme == origin.scheme or parts.scheme == "https")
            sent = dict(headers)
            if authorization and same_origin:
                sent["Authorization"] = authorization
            data = body() if body is not None else None
            try:
                response = self.session.request(
                    method,
                    url,
                    headers=sent,
                    data=data,
                    stream=stream or method == "HEAD",
                    allow_redirects=False,
                    timeout=(self.options.connect_timeout, self.options.read_timeout),
                    verify=parts.netloc not in self.options.insecure,
                )
            finally:
                if hasattr(data, "close"):
                    data.close()
            if response.status_code not in _REDIRECTS or method not in ("GET", "HEAD"):
                return response
            location = response.headers.get("Location", "")
            response.close()
            if not location:
                return response
            url = urllib.parse.urljoin(url, location)
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                raise requests.ConnectionError(f"redirect to an unsupported URL scheme: {_redact(url)}")
            headers = {k: v for k, v in headers.items() if k.lower() != "range" or same_origin}
        raise requests.ConnectionError(f"more than {_MAX_REDIRECTS} redirects")

    def _with_retries(
        self,
        send: Callable[[], requests.Response],
        retries: int,
        *,
        retry_error: Callable[[Exception], bool] = lambda err: True,
    ) -> requests.Response:
        """``send()``, again after a connection error or timeout (when ``retry_error`` says so) and after 408, 429
        and 5xx answers, with doubling backoff; the last answer is returned, the last error raised."""
        failure = 0
        while True:
            try:
                response = send()
            except (requests.ConnectionError, requests.Timeout) as err:
                failure += 1
                if failure > retries or not retry_error(err):
                    raise
                self._sleep(self._delay(failure, None))
                continue
            if response.status_code in _RETRY_STATUS and failure < retries:
                failure += 1
                retry_after = response.headers.get("Retry-After")
                response.close()
                self._sleep(self._delay(failure, retry_after))
                continue
            return response

    def _delay(self, failure: int, retry_after: str | None) -> float:
        if retry_after and retry_after.strip().isdigit():
            return min(float(retry_after), 30.0)
        return min(self.options.backoff * (2 ** (failure - 1)), 8.0)

    # --- hosts, schemes and TLS

    def _host(self, target: _Target) -> _Host:
        name = api_host(target.registry)
        host = self._hosts.get(name)
        if host is None:
            host = _Host()
            self._hosts[name] = host
            self._mount_tls(name)
            host.scheme, host.challenge = self._ping(target, name)
        return host

    def _ping(self, target: _Target, name: str) -> tuple[str, Challenge | None]:
        """``GET /v2/``: which scheme the registry speaks and which authentication it asks for."""
        plain_allowed = name in self.options.insecure or is_loopback(name)
        errors: list[str] = []
        for scheme in ("https", "http") if plain_allowed else ("https",):
            url = f"{scheme}://{name}/v2/"

            def send(url: str = url) -> requests.Response:
                return self.session.get(
                    url,
                    headers={"User-Agent": self.options.user_agent},
                    timeout=self._timeouts(),
                    allow_redirects=False,
                    verify=name not in self.options.insecure,
                )

            try:
                response = self._with_retries(send, self.options.retries, retry_error=_worth_retrying)
            except requests.exceptions.SSLError as err:
                if _certificate_problem(err) and name not in self.options.insecure:
                    raise RegistryError(
                        f"TLS certificate not trusted: {_reason(err)}", method="GET", url=url, **_named(target)
                    ) from None
                errors.append(_reason(err) if plain_allowed else f"{scheme}: {_reason(err)}")
                continue  # the server does not speak TLS: try plain HTTP where that is allowed
            except (requests.ConnectionError, requests.Timeout) as err:
                errors.append(f"{scheme}: {_reason(err)}" if plain_allowed else _reason(err))
                continue
            with response:
                if response.status_code == 401:
                    return scheme, next(iter(parse_challenges(response.headers.get("WWW-Authenticate", ""))), None)
                return scheme, None
        hint = ""
        if not plain_allowed and any("TLS" in e for e in errors):
            hint = " (plain HTTP is used only for loopback hosts and --insecure-registry)"
        raise RegistryError(
            f"cannot reach the registry: {'; '.join(errors)}{hint}",
            method="GET",
            url=f"https://{name}/v2/",
            retryable=True,
            **_named(target),
        )

    def _mount_tls(self, name: str) -> None:
        """Give ``https://NAME/`` its own adapter (the system CAs plus certs.d); once per host."""
        if name not in self._mounted:
            self.session.mount(f"https://{name}/", _TLSAdapter(self._tls_context(name)))
            self._mounted.add(name)

    def _tls_context(self, name: str) -> ssl.SSLContext:
        """The system CAs plus ``certs.d/NAME/``: ``*.crt`` are CAs, ``X.cert`` + ``X.key`` a client certificate.

        The system's CAs are OpenSSL's (``/etc/ssl/certs``, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``), not the copy of
        Mozilla's list that requests ships, so a CA the administrator installed is trusted here as by docker."""
        found = [d / name for d in self.options.certs_dirs if (d / name).is_dir()]
        context = ssl.create_default_context()
        if name in self.options.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        for directory in found:
            for path in sorted(directory.iterdir()):
                try:
                    if path.suffix == ".crt" and context.verify_mode != ssl.CERT_NONE:
                        context.load_verify_locations(cafile=str(path))
                    elif path.suffix == ".cert":
                        key = path.with_suffix(".key")
                        if not key.exists():
                            raise OCIError(f"{path}: client certificate without its key {key.name}")
                        context.load_cert_chain(str(path), str(key))
                except (ssl.SSLError, OSError) as err:
                    raise OCIError(f"{path}: {err}") from None
        return context

    # --- authentication

    def _credentials_for(self, registry: str, challenge: Challenge | None) -> Credential | None:
        if registry not in self._credentials:
            self._credentials[registry] = self.credentials(registry)
        return self._credentials[registry]

    def _authorization(self, target: _Target, host: _Host, scopes: frozenset[str]) -> str | None:
        challenge = host.challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            credential = self._credentials_for(target.registry, challenge)
            return basic_header(credential) if credential is not None and credential.username else None
        if challenge.scheme == "bearer":
            return "Bearer " + self._token(target, challenge, scopes)
        return None

    def _token(self, target: _Target, challenge: Challenge, scopes: frozenset[str]) -> str:
        host = self._hosts[api_host(target.registry)]
        now = time.monotonic()
        for granted, (token, expiry) in host.tokens.items():
            if scopes <= granted and expiry > now:
                return token.value
        realm = challenge.realm
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RegistryAuthError(f"the registry names an unusable token realm {realm!r}", **_named(target))
        if parts.scheme == "http" and not (is_loopback(parts.netloc) or parts.netloc in self.options.insecure):
            raise RegistryAuthError(f"the token realm {realm} is plain HTTP", **_named(target))
        credential = self._credentials_for(target.registry, challenge)
        params = token_params(challenge, sorted(scopes), credential)
        if parts.scheme == "https":
            self._mount_tls(parts.netloc)

        def send() -> requests.Response:
            if credential is not None and credential.identity_token:
                return self.session.post(realm, data=params, timeout=self._timeouts(), allow_redirects=False)
            auth = (credential.username, credential.password) if credential and credential.username else None
            return self.session.get(realm, params=params, auth=auth, timeout=self._timeouts(), allow_redirects=False)

        try:
            response = self._with_retries(send, self.options.retries)
        except (requests.ConnectionError, requests.Timeout) as err:
            raise RegistryAuthError(f"token server {realm}: {_reason(err)}", **_named(target)) from None
        with response:
            if response.status_code != 200:
                who = "the credentials were refused" if credential else "anonymous access was refused"
                raise RegistryAuthError(
                    f"token server {realm}: {who}",
                    method="GET",
                    url=_redact(realm),
                    status=response.status_code,
                    codes=_codes(response)[0],
                    **_named(target),
                )
            token = parse_token_response(response.content[: MAX_DOCUMENT_SIZE + 1])
        host.tokens[scopes] = (token, now + max(token.expires_in - 10, 1))
        return token.value

    def _timeouts(self) -> tuple[float, float]:
        return (self.options.connect_timeout, self.options.read_timeout)

    def _error(self, response: requests.Response, method: str, url: str, target: _Target) -> RegistryError:
        codes, message = _codes(response)
        status = response.status_code
        response.close()
        cls = RegistryAuthError if status in (401, 403) else RegistryNotFound if status == 404 else RegistryError
        if not message:
            message = {401: "unauthorized", 403: "access denied", 404: "not found"}.get(status, response.reason or "")
            if status == 401 and self._credentials_for(target.registry, None) is None:
                message += " (no credentials: use 'pybuild login')"
        return cls(
            message,
            method=method,
            url=_redact(url),
            status=status,
            codes=codes,
            retryable=status in _RETRY_STATUS,
            **_named(target),
        )


# --- helpers over responses and URLs


def _named(target: _Target) -> dict[str, str]:
    return {"registry": target.registry, "repository": target.repository, "reference": target.reference}


def _codes(response: requests.Response) -> tuple[tuple[str, ...], str]:
    """The distribution error codes and the first message of an error body."""
    try:
        raw = response.raw.read(64 * 1024, decode_content=True) if response.raw is not None else b""
    except Exception:  # noqa: BLE001 - an unreadable error body only loses detail
        raw = b""
    if not raw and response._content not in (False, None):  # type: ignore[attr-defined]
        raw = response._content or b""  # type: ignore[attr-defined]
    try:
        errors = json.loads(raw).get("errors") or []
    except (ValueError, AttributeError, UnicodeDecodeError):
        return (), ""
    codes = tuple(str(e.get("code")) for e in errors if isinstance(e, dict) and e.get("code"))
    message = next((str(e.get("message")) for e in errors if isinstance(e, dict) and e.get("message")), "")
    return codes, message


def _read_capped(response: requests.Response, cap: int, target: _Target) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise RegistryError(f"document of {declared} bytes is larger than the {cap}-byte limit", **_named(target))
    out = bytearray()
    try:
        for chunk in response.iter_content(_CHUNK):
            out += chunk
            if len(out) > cap:
                raise RegistryError(f"document larger than the {cap}-byte limit", **_named(target))
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
        raise RegistryError(
            f"connection lost while reading: {_reason(err)}", retryable=True, **_named(target)
        ) from None
    if declared and declared.isdigit() and int(declared) != len(out):
        raise RegistryError(f"truncated document: {len(out)} of {declared} bytes", retryable=True, **_named(target))
    return bytes(out)


def _content_type(response: requests.Response) -> str:
    return response.headers.get("Content-Type", "").split(";", 1)[0].strip()


def _location(response: requests.Response, target: _Target, default: str = "") -> str:
    location = response.headers.get("Location", "") or default
    if not location:
        raise RegistryError("the registry's upload answer has no Location", **_named(target))
    return urllib.parse.urljoin(response.url, location)


def _range_end(response: requests.Response, default: int) -> int:
    """The number of bytes an upload holds, from ``Range: 0-N`` (N inclusive).

    Distribution answers ``0-0`` for an empty upload as well as for a one-byte one; empty is the likelier (and a
    wrong guess only costs a 416 on the next chunk)."""
    value = response.headers.get("Range", "")
    _, _, end = value.partition("-")
    if end.strip().isdigit():
        return int(end) + 1 if int(end) > 0 else 0
    return default


def _with_query(url: str, query: dict[str, str]) -> str:
    parts = urllib.parse.urlsplit(url)
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + list(query.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(pairs)))


def _redact(url: str) -> str:
    """A URL fit for an error message: no user info, no query (upload states and signed URLs carry secrets)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _certificate_problem(err: Exception) -> bool:
    text = str(err)
    return "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text or "hostname" in text.lower()


def _worth_retrying(err: Exception) -> bool:
    """A TLS failure, an unknown host or a refused connection: asking the same way again will not help."""
    return not (isinstance(err, requests.exceptions.SSLError) or _unknown_host(err) or "Connection refused" in str(err))


def _unknown_host(err: Exception) -> bool:
    """A name that does not resolve: asking again will not help."""
    text = str(err)
    return "NameResolutionError" in text or "Name or service not known" in text or "No address associated" in text


def _reason(err: Exception) -> str:
    """What went wrong with a connection, in a few words (requests/urllib3 nest their reasons deeply)."""
    text = str(err)
    host = re.search(r"host='([^']+)'", text)
    where = host.group(1) if host else "the host"
    if _unknown_host(err):
        return f"cannot resolve {where}"
    if "Connection refused" in text:
        return f"connection refused by {where}"
    if isinstance(err, requests.Timeout) or "timed out" in text:
        return f"{where} did not answer in time"
    if ssl_reason := re.search(r"\[SSL: [A-Z_]+\] ([^(\"']+)", text):
        return "TLS: " + ssl_reason.group(1).strip().rstrip(".")
    if "Connection aborted" in text or "RemoteDisconnected" in text or "Connection reset" in text:
        return f"{where} closed the connection"
    if "IncompleteRead" in text or "incomplete" in text.lower():
        return "the connection closed before the whole body arrived"
    return text.splitlines()[0][:200] if text else type(err).__name__
