"""The registry fixtures themselves: each docker-registry flavour answers as a client will expect, skopeo can push to
and read from one, and the fake registry stores, fails and records as its tests will rely on."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import requests
from conftest import require_tool
from fakeregistry import OCI_MANIFEST, BlobStore, FakeRegistry, Fault, sha256
from registryserver import RegistryServer, parse_scope, run_registry

# ------------------------------------------------------------------------------------------------ docker-registry


def test_plain_registry_answers_v2(registry: RegistryServer) -> None:
    response = requests.get(f"{registry.url}/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert registry.url == f"http://{registry.host}" and registry.host.startswith("127.0.0.1:")
    assert registry.username is None and registry.ca_path is None and registry.token_server is None
    assert registry.storage.is_dir()


def test_basic_registry_wants_the_credentials(registry_basic: RegistryServer) -> None:
    url = f"{registry_basic.url}/v2/"
    anonymous = requests.get(url)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic ")
    assert anonymous.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert requests.get(url, auth=(registry_basic.username, "wrong")).status_code == 401
    assert requests.get(url, auth=(registry_basic.username, registry_basic.password)).status_code == 200


def test_tls_registry_is_verified_with_the_test_ca(registry_tls: RegistryServer) -> None:
    assert registry_tls.url.startswith("https://127.0.0.1:") and registry_tls.ca_path is not None
    assert requests.get(f"{registry_tls.url}/v2/", verify=registry_tls.ca_path).status_code == 200
    assert requests.get(f"https://localhost:{registry_tls.host.split(':')[1]}/v2/", verify=registry_tls.ca_path).ok
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{registry_tls.url}/v2/")


def test_tls_registry_can_demand_a_client_certificate(tmp_path: Path) -> None:
    require_tool("docker-registry")
    with run_registry(tmp_path, tls=True, client_certs=True) as server:
        assert server.client_cert is not None and server.client_key is not None
        cert = (str(server.client_cert), str(server.client_key))
        assert requests.get(f"{server.url}/v2/", verify=server.ca_path, cert=cert).status_code == 200
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{server.url}/v2/", verify=server.ca_path)


def _challenge(header: str) -> dict[str, str]:
    scheme, _, params = header.partition(" ")
    assert scheme == "Bearer"
    return dict((k, v.strip('"')) for k, v in (p.split("=", 1) for p in params.split(",")))


def test_token_registry_accepts_the_token_servers_jwts(registry_token: RegistryServer) -> None:
    tokens = registry_token.token_server
    assert tokens is not None
    anonymous = requests.get(f"{registry_token.url}/v2/")
    assert anonymous.status_code == 401
    challenge = _challenge(anonymous.headers["WWW-Authenticate"])
    assert challenge == {"realm": tokens.realm, "service": "pybuild-test-registry"}

    params = {"service": challenge["service"], "scope": "repository:x:pull,push"}
    assert requests.get(challenge["realm"], params=params).status_code == 401, "the realm wants the credentials"
    answer = requests.get(challenge["realm"], params=params, auth=(registry_token.username, registry_token.password))
    assert answer.status_code == 200
    body = answer.json()
    assert body["token"] == body["access_token"] and body["expires_in"] == 300 and body["issued_at"]
    assert [(r.path, r.scopes, r.has_authorization) for r in tokens.requests] == [
        ("/token", ["repository:x:pull,push"], False),
        ("/token", ["repository:x:pull,push"], True),
    ]

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {body['token']}"
    assert session.get(f"{registry_token.url}/v2/").status_code == 200
    data = b"a tiny blob"
    start = session.post(f"{registry_token.url}/v2/x/blobs/uploads/")
    assert start.status_code == 202, start.text
    location = requests.compat.urljoin(registry_token.url, start.headers["Location"])
    done = session.put(location, params={"digest": sha256(data)}, data=data)
    assert done.status_code == 201, done.text
    assert session.get(f"{registry_token.url}/v2/x/blobs/{sha256(data)}").content == data
    assert session.get(f"{registry_token.url}/v2/other/tags/list").status_code == 401, "the token names x only"


def test_token_scopes_become_access_entries() -> None:
    assert parse_scope("repository:library/busybox:pull,push") == {
        "type": "repository",
        "name": "library/busybox",
        "actions": ["pull", "push"],
    }
    assert parse_scope("repository:a:b:pull")["name"] == "a:b"


def _oci_layout(root: Path) -> Path:
    """A minimal valid OCI layout, tagged 1: an empty tar layer (gzip), a config and a manifest."""

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "blobs" / "sha256" / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    tar = bytes(1024)  # two zero blocks: an empty archive
    layer = blob(gzip.compress(tar, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]}}
    config_descriptor = blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_descriptor, "layers": [layer]}
    descriptor = blob(json.dumps(manifest).encode(), OCI_MANIFEST)
    descriptor["annotations"] = {"org.opencontainers.image.ref.name": "1"}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return root


def test_skopeo_pushes_to_and_reads_from_the_registry(registry: RegistryServer, tmp_path: Path) -> None:
    skopeo = require_tool("skopeo")
    layout = _oci_layout(tmp_path / "layout")
    target = f"docker://{registry.host}/x:1"
    subprocess.run(
        [skopeo, "--insecure-policy", "copy", "--dest-tls-verify=false", f"oci:{layout}:1", target],
        capture_output=True,
        text=True,
        check=True,
    )
    inspect = subprocess.run(
        [skopeo, "inspect", "--tls-verify=false", target], capture_output=True, text=True, check=True
    )
    assert json.loads(inspect.stdout)["RepoTags"] == ["1"]
    assert requests.get(f"{registry.url}/v2/x/tags/list").json() == {"name": "x", "tags": ["1"]}


# ------------------------------------------------------------------------------------------------ the fake


def _push_blob(base: str, repo: str, data: bytes, chunk: int = 4) -> requests.Response:
    """A chunked upload: POST, PATCH per chunk with Content-Range, PUT with the digest."""
    start = requests.post(f"{base}/v2/{repo}/blobs/uploads/")
    assert start.status_code == 202 and start.headers["Range"] == "0-0" and start.headers["Docker-Upload-UUID"]
    location = start.headers["Location"]
    for offset in range(0, len(data), chunk):
        part = data[offset : offset + chunk]
        headers = {"Content-Range": f"{offset}-{offset + len(part) - 1}", "Content-Type": "application/octet-stream"}
        patched = requests.patch(base + location, data=part, headers=headers)
        assert patched.status_code == 202 and patched.headers["Range"] == f"0-{offset + len(part) - 1}"
        location = patched.headers["Location"]
    return requests.put(base + location, params={"digest": sha256(data)})


def test_fake_registry_round_trips_a_manifest(fake_registry: FakeRegistry) -> None:
    base = fake_registry.url
    config, layer = b'{"os":"linux"}', b"layer bytes, eleven plus"
    assert requests.get(f"{base}/v2/").status_code == 200
    assert _push_blob(base, "a/b", layer).status_code == 201
    single = requests.post(f"{base}/v2/a/b/blobs/uploads/", params={"digest": sha256(config)}, data=config)
    assert single.status_code == 201 and single.headers["Docker-Content-Digest"] == sha256(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config), "size": 14},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(layer), "size": 24}],
        }
    ).encode()
    put = requests.put(f"{base}/v2/a/b/manifests/v1", data=manifest, headers={"Content-Type": OCI_MANIFEST})
    assert put.status_code == 201
    assert put.headers["Docker-Content-Digest"] == sha256(manifest)
    assert put.headers["Location"] == f"/v2/a/b/manifests/{sha256(manifest)}"

    for ref in ("v1", sha256(manifest)):
        got = requests.get(f"{base}/v2/a/b/manifests/{ref}")
        assert (got.status_code, got.content, got.headers["Content-Type"]) == (200, manifest, OCI_MANIFEST)
        head = requests.head(f"{base}/v2/a/b/manifests/{ref}")
        assert head.headers["Content-Length"] == str(len(manifest))
        assert head.headers["Docker-Content-Digest"] == sha256(manifest)
    assert requests.get(f"{base}/v2/a/b/blobs/{sha256(layer)}").content == layer
    ranged = requests.get(f"{base}/v2/a/b/blobs/{sha256(layer)}", headers={"Range": "bytes=6-"})
    assert (ranged.status_code, ranged.content) == (206, layer[6:])
    assert requests.get(f"{base}/v2/a/b/tags/list").json() == {"name": "a/b", "tags": ["v1"]}
    assert fake_registry.get_manifest("a/b", "v1").raw == manifest  # type: ignore[union-attr]


def test_fake_registry_refuses_what_distribution_refuses(fake_registry: FakeRegistry) -> None:
    base = fake_registry.url

    def code(response: requests.Response) -> tuple[int, str]:
        return response.status_code, response.json()["errors"][0]["code"]

    assert code(requests.get(f"{base}/v2/x/manifests/nope")) == (404, "MANIFEST_UNKNOWN")
    assert code(requests.get(f"{base}/v2/x/blobs/{sha256(b'')}")) == (404, "BLOB_UNKNOWN")
    assert code(requests.get(f"{base}/v2/x/tags/list")) == (404, "NAME_UNKNOWN")
    start = requests.post(f"{base}/v2/x/blobs/uploads/")
    location = base + start.headers["Location"]
    skipped = requests.patch(location, data=b"abc", headers={"Content-Range": "5-7"})
    assert code(skipped) == (416, "BLOB_UPLOAD_INVALID")
    assert requests.patch(location, data=b"abc", headers={"Content-Range": "0-2"}).status_code == 202
    assert requests.get(location).status_code == 204 and requests.get(location).headers["Range"] == "0-2"
    assert code(requests.put(location, params={"digest": sha256(b"abd")})) == (400, "DIGEST_INVALID")
    dangling = json.dumps({"schemaVersion": 2, "config": {"digest": sha256(b"?")}, "layers": []})
    assert code(requests.put(f"{base}/v2/x/manifests/1", data=dangling)) == (400, "MANIFEST_BLOB_UNKNOWN")


def test_fake_registry_mounts_blobs_it_has(fake_registry: FakeRegistry) -> None:
    digest = fake_registry.put_blob("src", b"shared")
    mounted = requests.post(f"{fake_registry.url}/v2/dst/blobs/uploads/", params={"mount": digest, "from": "src"})
    assert mounted.status_code == 201 and mounted.headers["Location"] == f"/v2/dst/blobs/{digest}"
    missing = requests.post(f"{fake_registry.url}/v2/dst/blobs/uploads/", params={"mount": digest, "from": "none"})
    assert missing.status_code == 202, "an unknown mount starts an ordinary upload"


def test_status_fault_answers_a_distribution_error_the_given_number_of_times(fake_registry: FakeRegistry) -> None:
    digest = fake_registry.put_blob("x", b"blob")
    fault = Fault("GET", r"/v2/.+/blobs/sha256:.*", "status", status=429, times=2, retry_after=3)
    fake_registry.faults.append(fault)
    url = f"{fake_registry.url}/v2/x/blobs/{digest}"
    for _ in range(2):
        refused = requests.get(url)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "3"
        assert refused.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert requests.get(url).content == b"blob"
    assert fault.hits == 2
    assert [r.fault for r in fake_registry.requests] == ["status", "status", None]


def test_truncate_fault_closes_the_connection_mid_body(fake_registry: FakeRegistry) -> None:
    digest = fake_registry.put_blob("x", bytes(range(200)))
    fake_registry.faults.append(Fault("GET", r"/v2/x/blobs/.*", "truncate"))
    with requests.get(f"{fake_registry.url}/v2/x/blobs/{digest}", stream=True) as response:
        assert response.headers["Content-Length"] == "200"
        received = bytearray()
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            for chunk in response.iter_content(1):  # byte by byte: a larger read would lose the partial end
                received += chunk
    assert bytes(received) == bytes(range(100))


def test_corrupt_fault_keeps_the_length_and_changes_every_byte(fake_registry: FakeRegistry) -> None:
    data = b"the real content"
    digest = fake_registry.put_blob("x", data)
    fake_registry.faults.append(Fault("GET", r"/v2/x/blobs/.*", "corrupt"))
    body = requests.get(f"{fake_registry.url}/v2/x/blobs/{digest}").content
    assert len(body) == len(data) and all(a != b for a, b in zip(body, data, strict=True))
    assert sha256(body) != digest


def test_redirect_fault_sends_the_client_to_another_host(fake_registry: FakeRegistry, blob_host: BlobStore) -> None:
    assert blob_host.host.startswith("localhost:")
    digest = fake_registry.put_blob("x", b"stored elsewhere")
    fake_registry.require_basic = ("u", "p")
    fake_registry.redirect_blobs_to(blob_host)
    response = requests.get(f"{fake_registry.url}/v2/x/blobs/{digest}", auth=("u", "p"))
    assert response.content == b"stored elsewhere"
    assert [r.status_code for r in response.history] == [307]
    assert response.history[0].headers["Location"] == f"{blob_host.url}/v2/x/blobs/{digest}"
    assert fake_registry.requests[0].headers["authorization"].startswith("Basic ")
    (fetched,) = blob_host.requests
    assert "Authorization" not in fetched.headers, "requests drops credentials when the host name changes"


def test_drop_fault_closes_without_an_answer(fake_registry: FakeRegistry) -> None:
    fake_registry.faults.append(Fault("*", r"/v2/", "drop"))
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{fake_registry.url}/v2/")
    assert requests.get(f"{fake_registry.url}/v2/").status_code == 200


def test_stall_fault_delays_the_answer(fake_registry: FakeRegistry) -> None:
    fake_registry.faults.append(Fault("GET", r"/v2/", "stall", seconds=0.5))
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{fake_registry.url}/v2/", timeout=0.1)


def test_fake_registry_challenges_for_a_bearer_token_it_issues(fake_registry: FakeRegistry) -> None:
    fake_registry.require_bearer = (None, "fake-service")
    fake_registry.token_credentials = ("u", "p")
    refused = requests.put(f"{fake_registry.url}/v2/x/manifests/1", data=b"{}")
    assert refused.status_code == 401
    realm = f"{fake_registry.url}/token"
    assert refused.headers["WWW-Authenticate"] == (
        f'Bearer realm="{realm}",service="fake-service",scope="repository:x:pull,push"'
    )
    params = {"service": "fake-service", "scope": "repository:x:pull"}
    assert requests.get(realm, params=params).status_code == 401
    token = requests.get(realm, params=params, auth=("u", "p")).json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{fake_registry.url}/v2/x/tags/list", headers=bearer).status_code == 404, "pull is granted"
    assert requests.post(f"{fake_registry.url}/v2/x/blobs/uploads/", headers=bearer).status_code == 401, "push is not"


def test_fake_registry_logs_every_request(fake_registry: FakeRegistry) -> None:
    requests.get(f"{fake_registry.url}/v2/x/tags/list", params={"n": "2"}, headers={"X-Probe": "1"})
    requests.post(f"{fake_registry.url}/v2/x/blobs/uploads/", data=b"ignored")
    first, second = fake_registry.requests
    assert (first.method, first.path, first.query, first.headers["x-probe"]) == (
        "GET",
        "/v2/x/tags/list",
        {"n": ["2"]},
        "1",
    )
    assert (second.method, second.body) == ("POST", b"ignored")
    assert fake_registry.requests_to(r"/v2/.*/uploads/", "POST") == [second]


def test_fake_registry_can_hand_out_locations_as_distribution_does() -> None:
    with FakeRegistry(absolute_locations=True, upload_state=True) as server:
        start = requests.post(f"{server.url}/v2/x/blobs/uploads/")
        assert start.headers["Location"].startswith(f"{server.url}/v2/x/blobs/uploads/")
        assert "?_state=" in start.headers["Location"]
        streamed = requests.patch(start.headers["Location"], data=iter([b"ab", b"cd"]))  # chunked transfer coding
        assert streamed.status_code == 202 and streamed.headers["Range"] == "0-3"
        stale = requests.put(start.headers["Location"], params={"digest": sha256(b"abcd")})
        assert stale.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID", "the _state changes with the upload"
        done = requests.put(streamed.headers["Location"], params={"digest": sha256(b"abcd")})
        assert done.status_code == 201 and server.blobs["x"] == {sha256(b"abcd"): b"abcd"}
