"""Real registries on 127.0.0.1 for integration tests: Debian's docker-registry (distribution 2.8) in four flavours.

``run_registry(tmp_path)`` starts ``docker-registry serve`` on a free loopback port with its own storage and waits
until ``GET /v2/`` answers. The flavours:

- plain HTTP, no auth (the default);
- ``auth="basic"``: an htpasswd file (bcrypt, made by ``htpasswd -B``; distribution accepts nothing else). Distribution
  2.8 serves basic auth over plain HTTP too; its documentation asks for TLS but the code does not enforce it;
- ``tls=True``: a certificate signed by a CA made here (``ca_path``); ``client_certs=True`` also demands a client
  certificate signed by that CA (``client_cert``/``client_key``);
- ``auth="token"``: distribution's token access controller, with a ``TokenServer`` in this process as its realm.

Tokens are JWTs signed ES256 by a self-signed P-256 certificate that is both the registry's ``rootcertbundle`` and
the ``x5c`` of every token. Distribution 2.8 checks the signature against that chain, ``iss``, ``aud`` (a string:
a list fails to decode), ``exp`` and ``nbf`` (with a minute's leeway) and, per request, the ``access`` list.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.server
import ipaddress
import json
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

READY_TIMEOUT = 10.0
TOKEN_SERVICE = "pybuild-test-registry"
TOKEN_ISSUER = "pybuild-test-issuer"
TOKEN_LIFETIME = 300


class RegistryStartError(RuntimeError):
    """docker-registry exited or did not answer ``/v2/`` in time; the message ends with its log."""


# ------------------------------------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as objects and as PEM files."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificate(
    directory: Path,
    stem: str,
    common_name: str,
    *,
    issuer: KeyPair | None = None,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> KeyPair:
    """A P-256 key and a certificate for it, signed by ``issuer`` (self-signed without one); written as
    ``directory/stem.crt`` and ``directory/stem.key``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = _name(common_name)
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(signer_key, hashes.SHA256())
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return KeyPair(cert, key, cert_path, key_path)


# ------------------------------------------------------------------------------------------------ token server


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt(claims: dict[str, object], signer: KeyPair) -> str:
    """A compact JWS, ES256, with the signer's certificate as ``x5c``. ES256 signatures are r||s, not DER."""
    header = {
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [base64.b64encode(signer.cert.public_bytes(serialization.Encoding.DER)).decode()],
    }
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(signer.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def parse_scope(scope: str) -> dict[str, object]:
    """``repository:NAME:pull,push`` -> an ``access`` entry. The name may hold colons (``type:name:actions``)."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return {"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]}


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None  # the Authorization header as sent, or None

    @property
    def has_authorization(self) -> bool:
        return self.authorization is not None

    @property
    def scopes(self) -> list[str]:
        return self.query.get("scope", [])


# Decides what a token grants: (type, name, requested actions) -> granted actions. The default grants everything.
Grant = Callable[[str, str, list[str]], list[str]]


class TokenServer:
    """A token realm on 127.0.0.1: ``GET /token?service=..&scope=..`` -> a JWT distribution accepts.

    With ``username`` set, a request without those basic credentials gets 401. ``requests`` lists every request
    received; ``grant`` may be replaced to refuse actions.
    """

    def __init__(
        self,
        directory: Path,
        *,
        service: str = TOKEN_SERVICE,
        issuer: str = TOKEN_ISSUER,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.service = service
        self.issuer = issuer
        self.username = username
        self.password = password
        self.signer = make_certificate(directory, "token-signer", "pybuild test token signer")
        self.requests: list[TokenRequest] = []
        self.grant: Grant = lambda kind, name, actions: actions
        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self._httpd.server_address[1]}"
        self.url = f"http://{self.host}"
        self.realm = f"{self.url}/token"
        # A short poll: stop() waits up to one interval.
        threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True).start()

    @property
    def rootcertbundle(self) -> Path:
        return self.signer.cert_path

    def issue(self, scopes: list[str], subject: str = "") -> str:
        """A token for these scopes, as the endpoint would issue it (``grant`` applies)."""
        now = int(time.time())
        access = []
        for scope in scopes:
            entry = parse_scope(scope)
            entry["actions"] = self.grant(entry["type"], entry["name"], entry["actions"])  # type: ignore[arg-type]
            access.append(entry)
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + TOKEN_LIFETIME,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        return sign_jwt(claims, self.signer)

    def _authorized(self, header: str | None) -> tuple[bool, str]:
        if self.username is None:
            return True, ""
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return header == f"Basic {expected}", self.username

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
                authorization = self.headers.get("Authorization")
                with server._lock:
                    server.requests.append(TokenRequest("GET", url.path, query, authorization))
                if url.path != "/token":
                    return self._send(404, {"error": "not found"})
                ok, subject = server._authorized(authorization)
                if not ok:
                    return self._send(401, {"error": "unauthorized"}, {"WWW-Authenticate": 'Basic realm="token"'})
                token = server.issue(query.get("scope", []), subject)
                issued_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                body = {"token": token, "access_token": token, "expires_in": TOKEN_LIFETIME, "issued_at": issued_at}
                self._send(200, body)

            def do_POST(self) -> None:
                # OAuth2 (POST) is not offered; clients must fall back to GET, as distribution's docs allow.
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                url = urllib.parse.urlsplit(self.path)
                with server._lock:
                    server.requests.append(
                        TokenRequest(
                            "POST", url.path, urllib.parse.parse_qs(url.query), self.headers.get("Authorization")
                        )
                    )
                self._send(404, {"error": "POST is not supported here"})

            def _send(self, status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# ------------------------------------------------------------------------------------------------ the registry


@dataclass(eq=False)
class RegistryServer:
    """A running docker-registry. ``host`` is ``127.0.0.1:PORT``; ``url`` is ``http://`` or ``https://`` + host."""

    host: str
    url: str
    storage: Path
    log_path: Path
    config_path: Path
    auth: str | None = None  # None, "basic" or "token"
    username: str | None = None
    password: str | None = None
    ca_path: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    token_server: TokenServer | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.token_server is not None:
            self.token_server.stop()

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except FileNotFoundError:
            return ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _htpasswd(path: Path, username: str, password: str) -> None:
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        raise RegistryStartError("htpasswd (apache2-utils) is not installed")
    # -B: bcrypt, the only hash distribution accepts; -C 4: the cheapest cost, to keep start-up fast.
    line = subprocess.run(
        [htpasswd, "-Bbn", "-C", "4", username, password], capture_output=True, text=True, check=True
    ).stdout
    path.write_text(line.strip() + "\n")


def _config(
    root: Path,
    port: int,
    *,
    auth: str | None,
    tls: KeyPair | None,
    client_ca: Path | None,
    htpasswd: Path | None,
    token_server: TokenServer | None,
) -> dict[str, object]:
    http_section: dict[str, object] = {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)}
    if tls is not None:
        tls_section: dict[str, object] = {"certificate": str(tls.cert_path), "key": str(tls.key_path)}
        if client_ca is not None:
            tls_section["clientcas"] = [str(client_ca)]
        http_section["tls"] = tls_section
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "storage")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http_section,
        "health": {"storagedriver": {"enabled": False}},
    }
    if auth == "basic":
        config["auth"] = {"htpasswd": {"realm": "pybuild-test", "path": str(htpasswd)}}
    elif auth == "token":
        assert token_server is not None
        config["auth"] = {
            "token": {
                "realm": token_server.realm,
                "service": token_server.service,
                "issuer": token_server.issuer,
                "rootcertbundle": str(token_server.rootcertbundle),
            }
        }
    return config


def _wait_ready(server: RegistryServer, process: subprocess.Popen[bytes]) -> None:
    verify: bool | str = str(server.ca_path) if server.ca_path else True
    cert = (str(server.client_cert), str(server.client_key)) if server.client_cert else None
    deadline = time.monotonic() + READY_TIMEOUT
    with requests.Session() as session:
        while True:
            if process.poll() is not None:
                raise RegistryStartError(
                    f"docker-registry exited with {process.returncode}; its log:\n{server.log_tail()}"
                )
            try:
                status = session.get(f"{server.url}/v2/", verify=verify, cert=cert, timeout=1).status_code
            except requests.RequestException:
                status = None
            if status in (200, 401):
                return
            if time.monotonic() > deadline:
                raise RegistryStartError(
                    f"docker-registry did not answer GET /v2/ with 200 or 401 in {READY_TIMEOUT} s "
                    f"(last: {status}); its log:\n{server.log_tail()}"
                )
            time.sleep(0.02)


def start_registry(
    directory: Path,
    *,
    auth: str | None = None,
    tls: bool = False,
    client_certs: bool = False,
    username: str | None = "tester",
    password: str | None = "s3cret",
) -> RegistryServer:
    """Start docker-registry with its files under ``directory`` (created); the caller must ``stop()`` it.

    ``username``/``password`` are the basic credentials (``auth="basic"``) or the ones the token server demands
    (``auth="token"``; ``username=None`` makes it issue tokens to anyone). Without auth they are ignored.
    """
    if auth not in (None, "basic", "token"):
        raise ValueError(f"auth must be None, 'basic' or 'token', not {auth!r}")
    if client_certs and not tls:
        raise ValueError("client_certs needs tls=True")
    if auth == "basic" and (username is None or password is None):
        raise ValueError("basic auth needs a username and a password")
    binary = shutil.which("docker-registry")
    if binary is None:
        raise RegistryStartError("docker-registry is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "storage").mkdir(exist_ok=True)

    server_cert = ca = client = None
    if tls:
        ca = make_certificate(directory, "ca", "pybuild test CA", ca=True)
        sans: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        server_cert = make_certificate(
            directory, "server", "localhost", issuer=ca, usage=ExtendedKeyUsageOID.SERVER_AUTH, sans=sans
        )
        if client_certs:
            client = make_certificate(
                directory, "client", "pybuild test client", issuer=ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH
            )
    htpasswd = None
    if auth == "basic":
        htpasswd = directory / "htpasswd"
        _htpasswd(htpasswd, username, password)  # type: ignore[arg-type]
    token_server = None
    if auth == "token":
        token_server = TokenServer(directory, username=username, password=password)
    if auth is None:
        username = password = None

    try:
        for _attempt in range(3):  # another process may take the free port between our probe and the bind
            port = _free_port()
            config = _config(
                directory,
                port,
                auth=auth,
                tls=server_cert,
                client_ca=ca.cert_path if client_certs and ca else None,
                htpasswd=htpasswd,
                token_server=token_server,
            )
            config_path = directory / "config.yml"
            config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
            log_path = directory / "registry.log"
            host = f"127.0.0.1:{port}"
            server = RegistryServer(
                host=host,
                url=f"{'https' if tls else 'http'}://{host}",
                storage=directory / "storage",
                log_path=log_path,
                config_path=config_path,
                auth=auth,
                username=username,
                password=password,
                ca_path=ca.cert_path if ca else None,
                client_cert=client.cert_path if client else None,
                client_key=client.key_path if client else None,
                token_server=token_server,
            )
            with log_path.open("wb") as log:
                server.process = subprocess.Popen(
                    [binary, "serve", str(config_path)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            try:
                _wait_ready(server, server.process)
                return server
            except RegistryStartError:
                server.process.kill()
                server.process.wait()
                if "address already in use" not in server.log_tail():
                    raise
        raise RegistryStartError(f"docker-registry found no free port; its log:\n{server.log_tail()}")
    except BaseException:
        if token_server is not None:
            token_server.stop()
        raise


@contextlib.contextmanager
def run_registry(
    tmp_path: Path,
    *,
    auth: str | None = None,
    tls: bool = False,
    client_certs: bool = False,
    username: str | None = "tester",
    password: str | None = "s3cret",
) -> Iterator[RegistryServer]:
    """``start_registry`` under ``tmp_path/registry-N``, stopped on exit."""
    index = 0
    while (tmp_path / f"registry-{index}").exists():
        index += 1
    server = start_registry(
        tmp_path / f"registry-{index}",
        auth=auth,
        tls=tls,
        client_certs=client_certs,
        username=username,
        password=password,
    )
    try:
        yield server
    finally:
        server.stop()
