"""The registry client against an in-process fake registry: pulls, pushes, auth, redirects, and every fault.

Whatever a misbehaving server does, the outcome is a clear ``RegistryError`` or a successful retry, and the content
store never holds a blob whose bytes do not match its digest.
"""

from __future__ import annotations

import gzip
import io
import json
import random
from pathlib import Path

import pytest
from fakeregistry import BlobStore, FakeRegistry, Fault

from oci import mediatypes as mt
from oci.auth import Credential
from oci.descriptor import Descriptor, Platform
from oci.digest import Digest
from oci.reference import Reference
from oci.registry import RegistryClient, RegistryError, RegistryOptions, is_loopback
from oci.store import ContentStore
from oci.transfer import pull_image, push_image, resolve_image

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64")


def _client(credentials: Credential | None = None, **options: object) -> tuple[RegistryClient, list[float]]:
    slept: list[float] = []
    settings = RegistryOptions(**{"backoff": 0.01, "read_timeout": 5.0, **options})  # type: ignore[arg-type]
    return RegistryClient(None, lambda registry: credentials, settings, sleep=slept.append), slept


def _store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "blobs", tmp_path / "ingest")


def _descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": str(Digest.of_bytes(data)), "size": len(data)}


class Published:
    """An image put straight into the fake: its layer, config and manifest bytes."""

    def __init__(
        self,
        fake: FakeRegistry,
        repo: str,
        tag: str,
        *,
        content: bytes = b"hello",
        arch: str = "amd64",
        docker: bool = False,
    ) -> None:
        manifest_type, config_type, layer_type = (
            (mt.DOCKER_MANIFEST, mt.DOCKER_CONFIG, mt.DOCKER_LAYER)
            if docker
            else (mt.OCI_MANIFEST, mt.OCI_CONFIG, mt.OCI_LAYER_GZIP)
        )
        plain = _tar_of(content)
        self.layer = gzip.compress(plain, mtime=0)
        self.config = json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [str(Digest.of_bytes(plain))]},
            }
        ).encode()
        self.manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": manifest_type,
                "config": _descriptor(config_type, self.config),
                "layers": [_descriptor(layer_type, self.layer)],
            }
        ).encode()
        fake.put_blob(repo, self.layer)
        fake.put_blob(repo, self.config)
        self.digest = Digest.parse(fake.put_manifest(repo, tag, self.manifest, manifest_type))

    @property
    def blobs(self) -> list[Digest]:
        return [Digest.of_bytes(self.config), Digest.of_bytes(self.layer)]


def _tar_of(content: bytes) -> bytes:
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("file")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def _ref(fake: FakeRegistry, name: str) -> Reference:
    return Reference.parse(f"{fake.host}/{name}")


# --------------------------------------------------------------------------------------------------- pulling


def test_pull_by_tag_stores_verified_blobs_and_the_manifest(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    image = Published(fake_registry, "app", "1")
    store = _store(tmp_path)
    client, _ = _client()
    pulled = pull_image(client, _ref(fake_registry, "app:1"), store, AMD64)
    assert pulled.manifest.digest == image.digest and pulled.downloaded == len(image.layer) + len(image.config)
    assert all(store.has(d) for d in image.blobs) and store.read(image.digest) == image.manifest
    # A second pull finds everything stored and downloads nothing.
    assert pull_image(client, _ref(fake_registry, "app:1"), store, AMD64).downloaded == 0


def test_docker_schema_2_images_pull_as_they_are(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    image = Published(fake_registry, "docker", "1", docker=True)
    store = _store(tmp_path)
    client, _ = _client()
    pulled = pull_image(client, _ref(fake_registry, "docker:1"), store, AMD64)
    assert pulled.manifest == Descriptor(mt.DOCKER_MANIFEST, image.digest, len(image.manifest))
    assert store.read(image.digest) == image.manifest  # byte for byte: its digest is the registry's


def test_an_index_is_narrowed_to_the_platform_asked_for(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    amd = Published(fake_registry, "multi", "amd", content=b"amd", arch="amd64")
    arm = Published(fake_registry, "multi", "arm", content=b"arm", arch="arm64")
    for media_type, child in ((mt.OCI_INDEX, mt.OCI_MANIFEST), (mt.DOCKER_MANIFEST_LIST, mt.OCI_MANIFEST)):
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": media_type,
                "manifests": [
                    {**_descriptor(child, amd.manifest), "platform": {"os": "linux", "architecture": "amd64"}},
                    {**_descriptor(child, arm.manifest), "platform": {"os": "linux", "architecture": "arm64"}},
                ],
            }
        ).encode()
        index_digest = fake_registry.put_manifest("multi", "latest", index, media_type)
        client, _ = _client()
        resolved = resolve_image(client, _ref(fake_registry, "multi"), ARM64)
        assert str(resolved.named.digest) == index_digest and resolved.manifest.digest == arm.digest
        # Pinned by the index's digest, the same choice; the store gets the arm64 blobs only.
        store = _store(tmp_path / media_type.rsplit(".", 2)[-2])
        pulled = pull_image(client, _ref(fake_registry, f"multi@{index_digest}"), store, ARM64)
        assert pulled.manifest.digest == arm.digest
        assert all(store.has(d) for d in arm.blobs) and not any(store.has(d) for d in amd.blobs)
    with pytest.raises(RegistryError, match="no image for platform linux/s390x"):
        resolve_image(client, _ref(fake_registry, "multi"), Platform("linux", "s390x"))


def test_a_by_digest_pull_answered_with_another_document_is_refused(fake_registry: FakeRegistry) -> None:
    image = Published(fake_registry, "app", "1")
    other = Published(fake_registry, "app", "2", content=b"other")
    fake_registry.manifests["app"][str(image.digest)] = fake_registry.manifests["app"][str(other.digest)]
    client, _ = _client()
    with pytest.raises(RegistryError, match=f"app@{image.digest}: .*digest is {other.digest}"):
        client.get_manifest(_ref(fake_registry, f"app@{image.digest}"))


def test_a_corrupt_blob_is_retried_and_never_stored(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    image = Published(fake_registry, "app", "1")
    store = _store(tmp_path)
    layer = rf"/v2/app/blobs/{Digest.of_bytes(image.layer)}"
    fake_registry.faults.append(Fault("GET", layer, "corrupt", times=None))
    client, slept = _client(retries=2)
    with pytest.raises(RegistryError) as caught:
        pull_image(client, _ref(fake_registry, "app:1"), store, AMD64)
    message = str(caught.value)
    assert f"{fake_registry.host}/app@{Digest.of_bytes(image.layer)}" in message and "content has digest" in message
    assert "after 3 attempts" in message and len(slept) == 2
    assert not store.has(Digest.of_bytes(image.layer)) and not store.has(image.digest)  # no manifest without blobs
    assert not any((tmp_path / "ingest").iterdir())  # no half-written temp file either
    # Once the server behaves, the same store pulls fine.
    fake_registry.faults.clear()
    pull_image(client, _ref(fake_registry, "app:1"), store, AMD64)
    store.verify(Digest.of_bytes(image.layer))


@pytest.mark.parametrize("action", ["truncate", "drop"])
def test_a_cut_download_is_tried_again(fake_registry: FakeRegistry, tmp_path: Path, action: str) -> None:
    image = Published(fake_registry, "app", "1", content=b"x" * 200_000)
    fake_registry.faults.append(Fault("GET", r"/v2/app/blobs/.*", action, times=1))
    store = _store(tmp_path)
    client, slept = _client()
    pull_image(client, _ref(fake_registry, "app:1"), store, AMD64)
    assert all(store.has(d) for d in image.blobs) and len(slept) == 1


def test_server_errors_then_success_are_retried_with_backoff(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    Published(fake_registry, "app", "1")
    fake_registry.faults.append(Fault("GET", r"/v2/app/manifests/1", "status", status=500, times=2))
    fake_registry.faults.append(Fault("GET", r"/v2/app/blobs/.*", "status", status=429, times=1, retry_after=3))
    fake_registry.faults.append(Fault("GET", r"/v2/app/blobs/.*", "status", status=503, times=1))
    client, slept = _client()
    pull_image(client, _ref(fake_registry, "app:1"), _store(tmp_path), AMD64)
    assert slept == [0.01, 0.02, 3.0, 0.02]  # doubling backoff per request; Retry-After honoured


def test_errors_name_registry_repository_reference_method_status_and_code(fake_registry: FakeRegistry) -> None:
    client, _ = _client()
    with pytest.raises(RegistryError) as caught:
        client.get_manifest(_ref(fake_registry, "nothing:here"))
    err = caught.value
    assert (err.registry, err.repository, err.reference, err.method, err.status) == (
        fake_registry.host,
        "nothing",
        "here",
        "GET",
        404,
    )
    assert err.codes == ("MANIFEST_UNKNOWN",)
    assert str(err).startswith(f"{fake_registry.host}/nothing:here: GET http://{fake_registry.host}/v2/nothing/")
    assert "HTTP 404 MANIFEST_UNKNOWN" in str(err)
    fake_registry.faults.append(Fault("GET", r"/v2/app/manifests/1", "status", status=500, times=None))
    with pytest.raises(RegistryError, match="HTTP 500 UNKNOWN"):
        client.get_manifest(_ref(fake_registry, "app:1"))


def test_a_stalled_answer_times_out_and_is_retried(fake_registry: FakeRegistry) -> None:
    Published(fake_registry, "app", "1")
    fake_registry.faults.append(Fault("GET", r"/v2/app/manifests/1", "stall", seconds=1.5, times=1))
    client, slept = _client(read_timeout=0.5)
    client.get_manifest(_ref(fake_registry, "app:1"))
    assert len(slept) == 1


def test_documents_over_the_size_cap_are_refused(fake_registry: FakeRegistry) -> None:
    fake_registry.put_manifest("big", "1", b'{"schemaVersion": 2, "layers": [], "x": "' + b"a" * (5 << 20) + b'"}')
    client, _ = _client()
    with pytest.raises(RegistryError, match="larger than the 4194304-byte limit"):
        client.get_manifest(_ref(fake_registry, "big:1"))


# --------------------------------------------------------------------------------------------------- auth


def test_basic_credentials_are_sent_and_never_follow_a_redirect_to_another_host(
    tmp_path: Path, blob_host: BlobStore
) -> None:
    with FakeRegistry(require_basic=("ci", "pw")) as fake:
        image = Published(fake, "app", "1")
        fake.redirect_blobs_to(blob_host)
        client, _ = _client(Credential("ci", "pw"))
        store = _store(tmp_path)
        pull_image(client, _ref(fake, "app:1"), store, AMD64)
        assert all(store.has(d) for d in image.blobs)
        assert blob_host.requests and not any("Authorization" in r.headers for r in blob_host.requests)
        assert all("Authorization" in r.headers for r in fake.requests if r.path != "/v2/")
        # Wrong credentials: one clear error naming the registry.
        bad, _ = _client(Credential("ci", "wrong"))
        with pytest.raises(RegistryError, match=r"app:1: GET .* HTTP 401 UNAUTHORIZED"):
            bad.get_manifest(_ref(fake, "app:1"))
        anonymous, _ = _client()
        with pytest.raises(RegistryError, match="no credentials: use 'pybuild login'"):
            anonymous.get_manifest(_ref(fake, "app:1"))


def test_bearer_tokens_are_asked_for_with_pull_and_push_scopes(tmp_path: Path) -> None:
    with FakeRegistry(require_bearer=(None, "fake-service"), token_credentials=("ci", "pw")) as fake:
        image = Published(fake, "app", "1")
        client, _ = _client(Credential("ci", "pw"))
        store = _store(tmp_path)
        pull_image(client, _ref(fake, "app:1"), store, AMD64)
        push_image(
            client,
            _ref(fake, "copy:1"),
            Descriptor(mt.OCI_MANIFEST, image.digest, len(image.manifest)),
            image.manifest,
            lambda d: open(store.path(d.digest), "rb"),
            sources={d: ["app"] for d in image.blobs},
        )
        scopes = [r.query.get("scope", []) for r in fake.requests if r.path == "/token"]
        assert ["repository:app:pull"] in scopes
        assert any("repository:copy:pull,push" in s and "repository:app:pull" in s for s in scopes)  # mount
        assert all(r.param("service") == "fake-service" for r in fake.requests if r.path == "/token")
        # Tokens are reused while they last: far fewer token requests than API requests.
        assert len(scopes) <= 3 < len([r for r in fake.requests if r.path.startswith("/v2/")])
        assert fake.get_manifest("copy", "1") is not None


def test_anonymous_bearer_tokens_work_without_credentials(tmp_path: Path) -> None:
    with FakeRegistry(require_bearer=(None, "anon")) as fake:
        Published(fake, "app", "1")
        client, _ = _client()
        pull_image(client, _ref(fake, "app:1"), _store(tmp_path), AMD64)
        assert all("Authorization" not in r.headers for r in fake.requests if r.path == "/token")


def test_an_identity_token_is_exchanged_by_post(tmp_path: Path) -> None:
    with FakeRegistry(require_bearer=(None, "oauth"), token_credentials=("nobody", "x")) as fake:
        fake.identity_token = "refresh-123"
        Published(fake, "app", "1")
        client, _ = _client(Credential(identity_token="refresh-123"))
        pull_image(client, _ref(fake, "app:1"), _store(tmp_path), AMD64)
        posts = [r for r in fake.requests if r.path == "/token"]
        assert posts and all(r.method == "POST" and b"refresh_token=refresh-123" in r.body for r in posts)
        wrong, _ = _client(Credential(identity_token="stale"))
        with pytest.raises(RegistryError, match="token server .*: the credentials were refused"):
            wrong.get_manifest(_ref(fake, "app:1"))


# --------------------------------------------------------------------------------------------------- pushing


def _push(fake: FakeRegistry, store: ContentStore, image: Published, name: str, **options: object) -> RegistryClient:
    client, _ = _client(**options)
    push_image(
        client,
        _ref(fake, name),
        Descriptor(mt.OCI_MANIFEST, image.digest, len(image.manifest)),
        image.manifest,
        lambda d: open(store.path(d.digest), "rb"),
    )
    return client


def _pulled(tmp_path: Path, fake: FakeRegistry, image: Published) -> ContentStore:
    store = _store(tmp_path / "source")
    client, _ = _client()
    pull_image(client, _ref(fake, "src:1"), store, AMD64)
    return store


def test_a_push_skips_blobs_the_registry_has_and_puts_the_manifest_last(
    fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    image = Published(fake_registry, "src", "1")
    store = _pulled(tmp_path, fake_registry, image)
    fake_registry.requests.clear()
    _push(fake_registry, store, image, "dst:1")
    writes = [r for r in fake_registry.requests if r.method in ("POST", "PATCH", "PUT")]
    assert writes[-1].method == "PUT" and "/manifests/1" in writes[-1].path
    assert fake_registry.blobs["dst"] == {str(d): fake_registry.blobs["src"][str(d)] for d in image.blobs}
    fake_registry.requests.clear()
    _push(fake_registry, store, image, "dst:2")
    assert not fake_registry.requests_to(r".*/blobs/uploads/.*")  # HEAD found both blobs
    assert fake_registry.get_manifest("dst", "2").raw == image.manifest  # type: ignore[union-attr]


def test_a_chunked_upload_resumes_after_a_failed_chunk(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    image = Published(fake_registry, "src", "1", content=random.Random(1).randbytes(40_000))
    store = _pulled(tmp_path, fake_registry, image)
    fake_registry.upload_state = True
    fake_registry.faults.append(Fault("PATCH", r"/v2/dst/blobs/uploads/.*", "status", status=500, times=1))
    fake_registry.faults.append(Fault("PATCH", r"/v2/dst/blobs/uploads/.*", "drop", times=1))
    fake_registry.requests.clear()
    _push(fake_registry, store, image, "dst:1", chunk_size=4096)
    patches = fake_registry.requests_to(r"/v2/dst/blobs/uploads/.*", "PATCH")
    assert len(patches) > len(image.layer) // 4096 + 1  # every chunk, plus the two that failed
    assert len(fake_registry.requests_to(r"/v2/dst/blobs/uploads/.*", "GET")) == 2  # asked where it stood
    assert fake_registry.blobs["dst"][str(Digest.of_bytes(image.layer))] == image.layer


def test_a_blob_in_a_sibling_repository_is_mounted(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    image = Published(fake_registry, "src", "1")
    store = _pulled(tmp_path, fake_registry, image)
    fake_registry.requests.clear()
    client, _ = _client()
    push_image(
        client,
        _ref(fake_registry, "dst:1"),
        Descriptor(mt.OCI_MANIFEST, image.digest, len(image.manifest)),
        image.manifest,
        lambda d: open(store.path(d.digest), "rb"),
        sources={d: ["src"] for d in image.blobs},
    )
    mounts = [r for r in fake_registry.requests if r.method == "POST" and r.param("mount")]
    assert {r.param("from") for r in mounts} == {"src"} and len(mounts) == 2
    assert not fake_registry.requests_to(r".*/blobs/uploads/.+", "PUT")  # nothing uploaded


def test_a_rejected_upload_says_what_the_registry_said(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    image = Published(fake_registry, "src", "1")
    store = _pulled(tmp_path, fake_registry, image)
    fake_registry.faults.append(
        Fault("PUT", r"/v2/dst/blobs/uploads/.*", "status", status=400, code="DIGEST_INVALID", times=None)
    )
    with pytest.raises(RegistryError, match=r"dst@sha256:.*PUT .* HTTP 400 DIGEST_INVALID"):
        _push(fake_registry, store, image, "dst:1")
    assert fake_registry.get_manifest("dst", "1") is None  # the manifest never went up


# --------------------------------------------------------------------------------------------------- schemes


class _Refusing:
    """A stand-in session: records each URL and fails as a plain-HTTP server answering a TLS hello would."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.trust_env = True

    def get(self, url: str, **kwargs: object) -> object:
        import requests

        self.urls.append(url)
        raise requests.exceptions.SSLError("[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1000)")

    def mount(self, prefix: str, adapter: object) -> None:
        pass


def test_plain_http_only_for_loopback_and_insecure_registries() -> None:
    assert is_loopback("localhost:5000") and is_loopback("127.0.0.1") and is_loopback("[::1]:5000")
    assert not is_loopback("registry.example.com") and not is_loopback("10.0.0.1:5000")
    session = _Refusing()
    client = RegistryClient(session, options=RegistryOptions(retries=0))  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="only for loopback hosts and --insecure-registry"):
        client.get_manifest(Reference.parse("registry.example.com/app:1"))
    assert session.urls == ["https://registry.example.com/v2/"]
    session = _Refusing()
    options = RegistryOptions(retries=0, insecure=frozenset({"registry.example.com"}))
    client = RegistryClient(session, options=options)  # type: ignore[arg-type]
    with pytest.raises(RegistryError):
        client.get_manifest(Reference.parse("registry.example.com/app:1"))
    assert session.urls == ["https://registry.example.com/v2/", "http://registry.example.com/v2/"]
