"""A fake Distribution (Registry HTTP API v2) server in this process, for tests of how a client meets faults.

``FakeRegistry`` keeps blobs and manifests in memory, per repository, and answers the parts of the API a push and a
pull use: ``/v2/``, manifests (HEAD, GET, PUT), blobs (HEAD, GET with ``Range``), uploads (POST with mount or
digest, PATCH, GET status, PUT, DELETE) and tag lists. ``BlobStore`` is a second server that answers GET of any path
registered with ``put``, addressed as ``localhost`` so a redirect to it crosses to another host name.

Both record every request in ``requests`` and obey ``faults``, rules the test appends::

    registry.faults.append(Fault("GET", r"/v2/.+/blobs/sha256:.*", "status", status=500, times=2))

A fault matches on the method (``"*"`` for any) and on the path without the query (``re.fullmatch``); the first
rule that matches and still has ``times`` left (``None`` means forever) applies, and counts down. Actions:

- ``status``: answer ``status`` with a Distribution error body (``code``, by default one that fits the status),
  with ``Retry-After: retry_after`` if given;
- ``truncate``: the real headers, full Content-Length, half the body, then the connection closes;
- ``corrupt``: the real headers and a body of the right length whose every byte differs;
- ``redirect``: 307 to ``location`` (a URL, or a function of the ``Request`` returning one);
- ``drop``: close the connection without answering;
- ``stall``: wait ``seconds``, then answer as usual.

``headers`` adds response headers to any action. The attributes (``faults``, ``require_basic``, ``require_bearer``,
...) are read at each request, so a test may change them while the server runs.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import http.server
import json
import re
import secrets
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

from requests.structures import CaseInsensitiveDict

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACTIONS = ("status", "truncate", "corrupt", "redirect", "drop", "stall")
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")

# The error code a `status` fault sends when the rule names none.
DEFAULT_CODES = {
    400: "BLOB_UPLOAD_INVALID",
    401: "UNAUTHORIZED",
    403: "DENIED",
    404: "NAME_UNKNOWN",
    416: "BLOB_UPLOAD_INVALID",
    429: "TOOMANYREQUESTS",
}


@dataclass
class Request:
    """One request as received. ``headers`` is case-insensitive; ``fault`` is the action applied, if any."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: CaseInsensitiveDict[str]
    body: bytes
    fault: str | None = None

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Fault:
    """A rule: requests matching ``method`` and ``path`` get ``action`` instead of (or before) the usual answer."""

    method: str
    path: str
    action: str
    status: int = 500
    times: int | None = 1
    code: str | None = None
    retry_after: int | str | None = None
    location: str | Callable[[Request], str] | None = None
    seconds: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    hits: int = 0  # how many requests it has applied to

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}; one of {', '.join(ACTIONS)}")
        if self.action == "redirect" and self.location is None:
            raise ValueError("a redirect fault needs a location")

    def redirect_to(self, request: Request) -> str:
        assert self.location is not None
        return self.location if isinstance(self.location, str) else self.location(request)

    def matches(self, request: Request) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return self.method in ("*", request.method) and re.fullmatch(self.path, request.path) is not None


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def error(
    status: int, code: str, message: str, detail: object = None, headers: dict[str, str] | None = None
) -> Response:
    """A Distribution error response: ``{"errors": [{"code", "message", "detail"}]}``."""
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": detail}]}).encode()
    return Response(status, {"Content-Type": "application/json", **(headers or {})}, body)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _digest_of(data: bytes, algorithm: str) -> str | None:
    if algorithm not in ("sha256", "sha512"):
        return None
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class FakeServer:
    """What both fakes share: a threaded server on 127.0.0.1, the request log, faults, start and stop."""

    host_name = "127.0.0.1"  # how clients are told to address it
    response_headers: dict[str, str] = {}  # sent with every answer

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.lock = threading.RLock()
        self._stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), self._handler_class())
        self.port = self._httpd.server_address[1]
        self.host = f"{self.host_name}:{self.port}"
        self.url = f"http://{self.host}"
        # A short poll: stop() waits up to one interval.
        threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True).start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()  # wakes stalled requests
        self._httpd.shutdown()
        self._httpd.server_close()

    def requests_to(self, path_pattern: str, method: str = "*") -> list[Request]:
        """The recorded requests whose path matches ``path_pattern`` (``re.fullmatch``)."""
        with self.lock:
            return [
                r for r in self.requests if method in ("*", r.method) and re.fullmatch(path_pattern, r.path) is not None
            ]

    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    def _take_fault(self, request: Request) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(request):
                    fault.hits += 1
                    request.fault = fault.action
                    return fault
        return None

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so truncation and drops hit a reused connection too

            def _serve(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                request = Request(
                    method=self.command,
                    path=url.path,
                    query=urllib.parse.parse_qs(url.query, keep_blank_values=True),
                    headers=CaseInsensitiveDict(dict(self.headers.items())),
                    body=self._read_body(),
                )
                with server.lock:
                    server.requests.append(request)
                fault = server._take_fault(request)
                if fault is not None and fault.action == "drop":
                    self.close_connection = True
                    return
                if fault is not None and fault.action == "stall":
                    server._stopping.wait(fault.seconds)
                if fault is not None and fault.action == "status":
                    code = fault.code or DEFAULT_CODES.get(fault.status, "UNKNOWN")
                    response = error(fault.status, code, f"injected fault: {fault.status}")
                elif fault is not None and fault.action == "redirect":
                    response = Response(307, {"Location": fault.redirect_to(request)})
                else:
                    with server.lock:
                        response = server.handle(request)
                if fault is not None:
                    if fault.retry_after is not None:
                        response.headers["Retry-After"] = str(fault.retry_after)
                    response.headers.update(fault.headers)
                self._send(response, fault.action if fault else None)

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _send(self, response: Response, action: str | None) -> None:
                body = response.body
                self.send_response(response.status)
                headers = {**server.response_headers, **response.headers}
                headers.setdefault("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command == "HEAD":
                    return
                if action == "truncate":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if action == "corrupt":
                    body = bytes(b ^ 0xFF for b in body)
                self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def _content_range(request: Request, size: int) -> tuple[int, int] | None | str:
    """The ``Range: bytes=N-`` or ``bytes=N-M`` of a blob GET: (first, last), None without one, "bad" if invalid."""
    value = request.headers.get("Range")
    if value is None:
        return None
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", value.strip())
    if match is None:
        return "bad"
    first = int(match[1])
    last = min(int(match[2]), size - 1) if match[2] else size - 1
    if first >= size or last < first:
        return "bad"
    return first, last


def blob_response(request: Request, data: bytes, headers: dict[str, str]) -> Response:
    """200 with ``data``, or 206 with the part a ``Range`` header asks for."""
    wanted = _content_range(request, len(data))
    if wanted == "bad":
        return error(
            416, "BLOB_UNKNOWN", "requested range not satisfiable", headers={"Content-Range": f"*/{len(data)}"}
        )
    if wanted is None:
        return Response(200, headers, data)
    first, last = wanted  # type: ignore[misc]
    headers = {**headers, "Content-Range": f"bytes {first}-{last}/{len(data)}"}
    return Response(206, headers, data[first : last + 1])


@dataclass
class Manifest:
    raw: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha256(self.raw)


@dataclass
class Upload:
    repo: str
    data: bytearray = field(default_factory=bytearray)

    @property
    def range(self) -> str:
        return f"0-{max(len(self.data) - 1, 0)}"


NAME = r"(?P<name>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
DIGEST = r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+"
# Tried in order: an upload's path would also match "blob".
ROUTES = {
    "base": r"/v2/?",
    "token": r"/token",
    "manifest": rf"/v2/{NAME}/manifests/(?P<ref>[^/]+)",
    "uploads": rf"/v2/{NAME}/blobs/uploads/?",
    "upload": rf"/v2/{NAME}/blobs/uploads/(?P<uuid>[^/]+)",
    "blob": rf"/v2/{NAME}/blobs/(?P<digest>{DIGEST})",
    "tags": rf"/v2/{NAME}/tags/list",
}


class FakeRegistry(FakeServer):
    """An in-memory registry. Repositories appear when something is pushed to them.

    ``require_basic=(user, password)``: the API answers 401 (``WWW-Authenticate: Basic realm="fake"``) to requests
    without those credentials. ``require_bearer=(realm, service)``: the API wants a bearer token this fake issued
    with the right scope, and challenges with ``Bearer realm=..,service=..,scope="repository:NAME:pull"`` (``pull,push``
    for writes); a realm of None means this server's own ``/token``, which issues tokens to anyone, or, with
    ``token_credentials=(user, password)``, only to requests with those basic credentials. Tokens live in
    ``tokens`` (token -> {(repository, action)}); two fakes may share the table to use one as the other's realm.
    ``absolute_locations`` makes Location headers full URLs; ``upload_state`` adds a ``_state`` query to upload
    locations and refuses a PATCH or PUT that does not carry it back, as distribution does.
    """

    response_headers = {"Docker-Distribution-Api-Version": "registry/2.0"}

    def __init__(
        self,
        *,
        require_basic: tuple[str, str] | None = None,
        require_bearer: tuple[str | None, str] | None = None,
        token_credentials: tuple[str, str] | None = None,
        absolute_locations: bool = False,
        upload_state: bool = False,
        check_references: bool = True,
    ) -> None:
        self.blobs: dict[str, dict[str, bytes]] = {}  # repository -> digest -> bytes
        self.manifests: dict[str, dict[str, Manifest]] = {}  # repository -> digest -> manifest
        self.tags: dict[str, dict[str, str]] = {}  # repository -> tag -> digest
        self.uploads: dict[str, Upload] = {}  # uuid -> upload in progress
        self.tokens: dict[str, set[tuple[str, str]]] = {}
        self.require_basic = require_basic
        self.require_bearer = require_bearer
        self.token_credentials = token_credentials
        self.identity_token = ""  # a refresh token the token endpoint accepts by POST
        self.absolute_locations = absolute_locations
        self.upload_state = upload_state
        self.check_references = check_references  # refuse a manifest whose blobs or children are not here
        super().__init__()

    # ------------------------------------------------------------------------------------ content, for tests

    def put_blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        with self.lock:
            self.blobs.setdefault(repo, {})[digest] = bytes(data)
        return digest

    def put_manifest(self, repo: str, ref: str, raw: bytes, media_type: str = OCI_MANIFEST) -> str:
        """Store a manifest under its digest and, if ``ref`` is a tag, tag it; no checks. Returns the digest."""
        manifest = Manifest(bytes(raw), media_type)
        with self.lock:
            self.manifests.setdefault(repo, {})[manifest.digest] = manifest
            if ":" not in ref:
                self.tags.setdefault(repo, {})[ref] = manifest.digest
        return manifest.digest

    def get_manifest(self, repo: str, ref: str) -> Manifest | None:
        with self.lock:
            digest = ref if ":" in ref else self.tags.get(repo, {}).get(ref)
            return self.manifests.get(repo, {}).get(digest or "")

    def redirect_blobs_to(self, store: BlobStore, *, times: int | None = None) -> Fault:
        """A fault sending blob GETs to ``store``, which is given the blob under the same path first."""

        def location(request: Request) -> str:
            match = re.fullmatch(ROUTES["blob"], request.path)
            data = self.blobs.get(match["name"], {}).get(match["digest"], b"") if match else b""
            return store.put(request.path, data)

        fault = Fault("GET", rf"/v2/.+/blobs/{DIGEST}", "redirect", times=times, location=location)
        self.faults.append(fault)
        return fault

    # ------------------------------------------------------------------------------------ the API

    def handle(self, request: Request) -> Response:
        found = next(((r, m) for r, p in ROUTES.items() if (m := re.fullmatch(p, request.path))), None)
        if found is None:
            return Response(404, {"Content-Type": "text/plain"}, b"404 page not found\n")
        route, match = found
        if route == "token":
            return self._token(request)
        denied = self._check_auth(request, match.groupdict().get("name"))
        if denied is not None:
            return denied
        handler = getattr(self, f"_{route}_{request.method.lower()}", None)
        if handler is None:
            return error(405, "UNSUPPORTED", f"{request.method} is not supported here")
        return handler(request, **match.groupdict())

    def _location(self, path: str) -> str:
        return self.url + path if self.absolute_locations else path

    def _check_auth(self, request: Request, name: str | None) -> Response | None:
        authorization = request.headers.get("Authorization", "")
        if self.require_basic is not None:
            user, password = self.require_basic
            if authorization != "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode():
                return error(
                    401, "UNAUTHORIZED", "authentication required", headers={"WWW-Authenticate": 'Basic realm="fake"'}
                )
        if self.require_bearer is not None:
            realm, service = self.require_bearer
            actions = ["pull", "push"] if request.method in WRITE_METHODS else ["pull"]
            granted = (
                self.tokens.get(authorization.removeprefix("Bearer ")) if authorization.startswith("Bearer ") else None
            )
            if granted is not None and (name is None or all((name, a) in granted for a in actions)):
                return None
            challenge = f'Bearer realm="{realm or self.url + "/token"}",service="{service}"'
            if name is not None:
                challenge += f',scope="repository:{name}:{",".join(actions)}"'
            return error(401, "UNAUTHORIZED", "authentication required", headers={"WWW-Authenticate": challenge})
        return None

    def _token(self, request: Request) -> Response:
        if request.method == "POST":  # OAuth2: an identity (refresh) token in a form body, as docker login stores
            form = urllib.parse.parse_qs(request.body.decode())
            refresh = (form.get("refresh_token") or [""])[0]
            if form.get("grant_type") != ["refresh_token"] or not self.identity_token or refresh != self.identity_token:
                return error(401, "UNAUTHORIZED", "bad refresh token")
            request = dataclasses.replace(request, query={**request.query, **form})
        elif request.method != "GET":
            return error(405, "UNSUPPORTED", "the token endpoint answers GET and POST only")
        elif self.token_credentials is not None:
            user, password = self.token_credentials
            expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if request.headers.get("Authorization") != expected:
                return error(
                    401, "UNAUTHORIZED", "bad credentials", headers={"WWW-Authenticate": 'Basic realm="fake-token"'}
                )
        granted = set()
        for scope in request.query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository":
                granted |= {(name, action) for action in actions.split(",")}
        token = "fake-" + secrets.token_hex(16)
        self.tokens[token] = granted
        issued_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"token": token, "access_token": token, "expires_in": 300, "issued_at": issued_at}
        return Response(200, {"Content-Type": "application/json"}, json.dumps(body).encode())

    def _base_get(self, request: Request) -> Response:
        return Response(200, {"Content-Type": "application/json"}, b"{}")

    _base_head = _base_get

    # manifests

    def _manifest_get(self, request: Request, name: str, ref: str) -> Response:
        manifest = self.get_manifest(name, ref)
        if manifest is None:
            return error(404, "MANIFEST_UNKNOWN", "manifest unknown", {"Tag" if ":" not in ref else "Digest": ref})
        headers = {"Content-Type": manifest.media_type, "Docker-Content-Digest": manifest.digest}
        return Response(200, headers, manifest.raw)

    _manifest_head = _manifest_get

    def _manifest_put(self, request: Request, name: str, ref: str) -> Response:
        manifest = Manifest(request.body, request.headers.get("Content-Type", "application/octet-stream"))
        if ":" in ref and ref != manifest.digest:
            return error(400, "DIGEST_INVALID", "provided digest did not match uploaded content", {"digest": ref})
        if self.check_references:
            missing = self._missing_references(name, manifest)
            if missing is not None:
                return missing
        self.put_manifest(name, ref, manifest.raw, manifest.media_type)
        headers = {
            "Location": self._location(f"/v2/{name}/manifests/{manifest.digest}"),
            "Docker-Content-Digest": manifest.digest,
        }
        return Response(201, headers)

    def _manifest_delete(self, request: Request, name: str, ref: str) -> Response:
        if ":" not in ref:
            return error(400, "UNSUPPORTED", "delete by digest")
        if self.manifests.get(name, {}).pop(ref, None) is None:
            return error(404, "MANIFEST_UNKNOWN", "manifest unknown", {"Digest": ref})
        for tag, digest in list(self.tags.get(name, {}).items()):
            if digest == ref:
                del self.tags[name][tag]
        return Response(202)

    def _missing_references(self, name: str, manifest: Manifest) -> Response | None:
        try:
            document = json.loads(manifest.raw)
        except ValueError:
            return error(400, "MANIFEST_INVALID", "manifest invalid", {"reason": "not JSON"})
        blobs = [document["config"]] if isinstance(document.get("config"), dict) else []
        blobs += document.get("layers") or []
        for descriptor in blobs:
            if descriptor.get("digest") not in self.blobs.get(name, {}):
                return error(400, "MANIFEST_BLOB_UNKNOWN", "blob unknown to registry", descriptor.get("digest"))
        for descriptor in document.get("manifests") or []:
            if descriptor.get("digest") not in self.manifests.get(name, {}):
                return error(400, "MANIFEST_UNKNOWN", "manifest unknown", {"Digest": descriptor.get("digest")})
        return None

    # blobs

    def _blob_get(self, request: Request, name: str, digest: str) -> Response:
        data = self.blobs.get(name, {}).get(digest)
        if data is None:
            return error(404, "BLOB_UNKNOWN", "blob unknown to registry", digest)
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
        headers["Accept-Ranges"] = "bytes"
        return blob_response(request, data, headers)

    _blob_head = _blob_get

    def _blob_delete(self, request: Request, name: str, digest: str) -> Response:
        if self.blobs.get(name, {}).pop(digest, None) is None:
            return error(404, "BLOB_UNKNOWN", "blob unknown to registry", digest)
        return Response(202)

    # uploads

    def _blob_created(self, name: str, digest: str) -> Response:
        headers = {"Location": self._location(f"/v2/{name}/blobs/{digest}"), "Docker-Content-Digest": digest}
        return Response(201, headers)

    def _upload_started(self, name: str, uuid: str) -> Response:
        upload = self.uploads[uuid]
        headers = {
            "Location": self._upload_location(name, uuid),
            "Range": upload.range,
            "Docker-Upload-UUID": uuid,
        }
        return Response(202, headers)

    def _upload_location(self, name: str, uuid: str) -> str:
        path = f"/v2/{name}/blobs/uploads/{uuid}"
        if self.upload_state:
            path += f"?_state={self._state(uuid)}"
        return self._location(path)

    def _state(self, uuid: str) -> str:
        # Changes with every byte appended, like distribution's signed state.
        return hashlib.sha256(f"{uuid}:{len(self.uploads[uuid].data)}".encode()).hexdigest()[:16]

    def _uploads_post(self, request: Request, name: str) -> Response:
        source, mount = request.param("from"), request.param("mount")
        if mount is not None and source is not None and mount in self.blobs.get(source, {}):
            self.blobs.setdefault(name, {})[mount] = self.blobs[source][mount]
            return self._blob_created(name, mount)
        digest = request.param("digest")
        if digest is not None:
            return self._finish(name, digest, request.body)
        uuid = secrets.token_hex(16)
        self.uploads[uuid] = Upload(name)
        return self._upload_started(name, uuid)

    def _find_upload(self, request: Request, name: str, uuid: str) -> Upload | Response:
        upload = self.uploads.get(uuid)
        if upload is None or upload.repo != name:
            return error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", uuid)
        if self.upload_state and request.param("_state") != self._state(uuid):
            return error(400, "BLOB_UPLOAD_INVALID", "blob upload invalid", "missing or stale _state")
        return upload

    def _upload_get(self, request: Request, name: str, uuid: str) -> Response:
        upload = self._find_upload(request, name, uuid)
        if isinstance(upload, Response):
            return upload
        response = self._upload_started(name, uuid)
        response.status = 204
        return response

    def _upload_patch(self, request: Request, name: str, uuid: str) -> Response:
        upload = self._find_upload(request, name, uuid)
        if isinstance(upload, Response):
            return upload
        content_range = request.headers.get("Content-Range")
        if content_range is not None:
            match = re.fullmatch(r"(?:bytes[ =])?(\d+)-(\d+)", content_range.strip())
            if (
                match is None
                or int(match[1]) != len(upload.data)
                or int(match[2]) - int(match[1]) + 1 != len(request.body)
            ):
                return error(
                    416,
                    "BLOB_UPLOAD_INVALID",
                    "content range does not continue the upload",
                    {"Content-Range": content_range, "size": len(upload.data)},
                    headers={"Range": upload.range, "Location": self._upload_location(name, uuid)},
                )
        upload.data += request.body
        return self._upload_started(name, uuid)

    def _upload_put(self, request: Request, name: str, uuid: str) -> Response:
        upload = self._find_upload(request, name, uuid)
        if isinstance(upload, Response):
            return upload
        digest = request.param("digest")
        if digest is None:
            return error(400, "DIGEST_INVALID", "digest parameter is missing")
        response = self._finish(name, digest, bytes(upload.data) + request.body)
        if response.status == 201:
            del self.uploads[uuid]
        return response

    def _upload_delete(self, request: Request, name: str, uuid: str) -> Response:
        upload = self._find_upload(request, name, uuid)
        if isinstance(upload, Response):
            return upload
        del self.uploads[uuid]
        return Response(204)

    def _finish(self, name: str, digest: str, data: bytes) -> Response:
        algorithm, _, _ = digest.partition(":")
        if _digest_of(data, algorithm) != digest:
            actual = _digest_of(data, algorithm) or sha256(data)
            return error(400, "DIGEST_INVALID", "provided digest did not match uploaded content", {"actual": actual})
        self.blobs.setdefault(name, {})[digest] = data
        return self._blob_created(name, digest)

    # tags

    def _tags_get(self, request: Request, name: str) -> Response:
        if name not in self.tags and name not in self.manifests:
            return error(404, "NAME_UNKNOWN", "repository name not known to registry", {"name": name})
        tags = sorted(self.tags.get(name, {}))
        last, count = request.param("last"), request.param("n")
        if last is not None:
            tags = [t for t in tags if t > last]
        headers = {"Content-Type": "application/json"}
        if count is not None and len(tags) > int(count):
            tags = tags[: int(count)]
            headers["Link"] = f'</v2/{name}/tags/list?n={count}&last={tags[-1]}>; rel="next"'
        return Response(200, headers, json.dumps({"name": name, "tags": tags}).encode())


class BlobStore(FakeServer):
    """A plain storage host (as S3 behind a registry's redirect): GET or HEAD of a path registered with ``put``.

    It is addressed as ``localhost:PORT``, so a client that was sent here from ``127.0.0.1:PORT`` has changed host
    name and must not bring the registry's Authorization header.
    """

    host_name = "localhost"

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}  # path -> (data, content type)
        super().__init__()

    def put(self, path: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Serve ``data`` at ``path`` (leading slash added if missing); returns its URL."""
        path = "/" + path.lstrip("/")
        with self.lock:
            self.files[path] = (bytes(data), content_type)
        return self.url + path

    def handle(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, {"Content-Type": "text/plain"}, b"method not allowed\n")
        found = self.files.get(request.path)
        if found is None:
            return Response(404, {"Content-Type": "text/plain"}, b"not found\n")
        data, content_type = found
        return blob_response(request, data, {"Content-Type": content_type, "Accept-Ranges": "bytes"})
