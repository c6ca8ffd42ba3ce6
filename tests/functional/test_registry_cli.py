"""pybuild against a real registry (Debian's docker-registry on 127.0.0.1): pull, push, login, TLS, tokens, and
skopeo cross-checking both directions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import require_tool, run_pybuild, write_context
from fakeregistry import FakeRegistry, Fault
from registryserver import RegistryServer, run_registry

SKOPEO_PLAIN = ("--tls-verify=false",)


def _skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("skopeo"), *args], capture_output=True, text=True, timeout=120)


def _inspect(ref: str, *extra: str) -> dict[str, object]:
    proc = _skopeo("inspect", *SKOPEO_PLAIN, *extra, f"docker://{ref}")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _ok(*args: str, **kwargs: object) -> str:
    result = run_pybuild(*args, **kwargs)  # type: ignore[arg-type]
    assert result.code == 0, result
    return result.out


def _digest_of(name: str, root: Path | None = None) -> str:
    args = ("--root", str(root)) if root else ()
    return json.loads(_ok(*args, "inspect", name))[0]["Digest"]


def test_push_then_skopeo_inspects_and_copies(registry: RegistryServer, busybox: str, tmp_path: Path) -> None:
    out = _ok("push", "busybox", f"{registry.host}/tools/busybox:1")
    assert out.startswith("1: digest: sha256:")
    pushed = out.split()[2]
    info = _inspect(f"{registry.host}/tools/busybox:1")
    assert info["Digest"] == pushed and info["Architecture"] and info["Os"] == "linux"
    copy = _skopeo("copy", "--src-tls-verify=false", f"docker://{registry.host}/tools/busybox:1", f"oci:{tmp_path}/c:1")
    assert copy.returncode == 0, copy.stderr  # skopeo verified every blob on the way
    # Pushed again under another repository of the same registry, the layers are mounted, not uploaded.
    second = run_pybuild("push", "--progress", "plain", "busybox", f"{registry.host}/other/busybox:2")
    assert second.code == 0 and "mounted from tools/busybox" in second.err and "uploading" not in second.err, second
    assert _inspect(f"{registry.host}/other/busybox:2")["Digest"] == pushed


def test_a_second_push_uploads_nothing_and_chunks_work(registry: RegistryServer, busybox: str) -> None:
    first = run_pybuild("push", "--progress", "plain", "--chunk-size", "64KB", "busybox", f"{registry.host}/b:1")
    assert first.code == 0 and "uploading" in first.err, first
    again = run_pybuild("push", "--progress", "plain", "busybox", f"{registry.host}/b:1")
    assert again.code == 0 and "uploading" not in again.err and "already in b" in again.err, again
    mounted = run_pybuild("push", "--progress", "plain", "busybox", f"{registry.host}/c:1")
    assert mounted.code == 0 and "mounted from b" in mounted.err and "uploading" not in mounted.err, mounted


def test_skopeo_pushes_pybuild_pulls_and_builds_from_it(
    registry: RegistryServer, busybox: str, tmp_path: Path, store_root: Path
) -> None:
    _ok("push", "busybox", f"{registry.host}/seed:1")
    layout = tmp_path / "layout"
    copy = _skopeo("copy", "--src-tls-verify=false", f"docker://{registry.host}/seed:1", f"oci:{layout}:x")
    assert copy.returncode == 0, copy.stderr
    push = _skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:x", f"docker://{registry.host}/from-skopeo:7")
    assert push.returncode == 0, push.stderr
    skopeo_digest = _inspect(f"{registry.host}/from-skopeo:7")["Digest"]
    other = tmp_path / "other-store"
    out = _ok("--root", str(other), "pull", f"{registry.host}/from-skopeo:7")
    assert f"Digest: {skopeo_digest}" in out and "Downloaded newer image" in out
    assert "Image is up to date" in _ok("--root", str(other), "pull", f"{registry.host}/from-skopeo:7")
    # An empty store builds FROM it: the base is pulled on the way.
    empty = tmp_path / "empty-store"
    context = write_context(tmp_path / "ctx", f"FROM {registry.host}/from-skopeo:7\nRUN echo built > /built\n")
    result = run_pybuild(
        "--root", str(empty), "build", "--progress", "plain", "-t", f"{registry.host}/app:1", "--push", str(context)
    )
    assert result.code == 0, result
    assert "pulling layer" in result.err and "#2 DONE" in result.err
    app = _inspect(f"{registry.host}/app:1")
    assert f"1: digest: {app['Digest']} " in result.err  # the digest the push reported is what the registry has
    assert _digest_of(f"{registry.host}/app:1", empty)  # and the store names the image too
    assert len(app["Layers"]) == 2  # type: ignore[arg-type]


def test_from_a_digest_pulls_that_manifest_and_pull_refreshes_tags(
    registry: RegistryServer, busybox: str, tmp_path: Path
) -> None:
    base = f"{registry.host}/base"
    first = _ok("push", "busybox", f"{base}:v").split()[2]
    # A second, different image under the same tag.
    changed = write_context(tmp_path / "changed", "FROM busybox\nRUN echo two > /two\n")
    _ok("build", "-q", "-t", f"{base}:v", "--push", str(changed))
    second = _inspect(f"{base}:v")["Digest"]
    assert second != first
    store = tmp_path / "store2"
    pinned = write_context(tmp_path / "pinned", f"FROM {base}@{first}\nRUN test ! -e /two\n")
    _ok("--root", str(store), "build", "-q", str(pinned))
    by_tag = write_context(tmp_path / "tag", f"FROM {base}:v\nRUN test -e /two\n")
    _ok("--root", str(store), "build", "-q", str(by_tag))
    # The registry moves the tag back; without --pull the store's image is used, with --pull the registry's.
    _ok("push", "busybox", f"{base}:v")
    _ok("--root", str(store), "build", "-q", str(by_tag))
    refreshed = run_pybuild("--root", str(store), "build", "--pull", "-q", str(by_tag))
    assert refreshed.code == 1 and '"/bin/sh -c test -e /two" did not complete successfully' in refreshed.err


def test_login_push_and_logout_with_basic_auth(registry_basic: RegistryServer, busybox: str, isolate: Path) -> None:
    host = registry_basic.host
    denied = run_pybuild("push", "busybox", f"{host}/app:1")
    assert denied.code == 1 and "HTTP 401" in denied.err and "pybuild login" in denied.err, denied
    wrong = run_pybuild("login", "-u", "tester", "--password-stdin", host, input="nope\n")
    assert wrong.code == 1 and "401" in wrong.err, wrong
    assert not (isolate / ".docker" / "config.json").exists()
    assert "Login Succeeded" in _ok("login", "-u", "tester", "--password-stdin", host, input="s3cret\n")
    config = json.loads((isolate / ".docker" / "config.json").read_text())
    assert host in config["auths"]
    _ok("push", "busybox", f"{host}/app:1")
    # skopeo reads the credentials pybuild saved (Docker's config.json).
    assert _inspect(f"{host}/app:1", "--authfile", str(isolate / ".docker" / "config.json"))["Digest"]
    assert "Removing login credentials" in _ok("logout", host)
    assert run_pybuild("pull", f"{host}/app:1").code == 1


def test_token_auth_push_and_pull(registry_token: RegistryServer, busybox: str, tmp_path: Path) -> None:
    host = registry_token.host
    _ok("login", "-u", "tester", "--password-stdin", host, input="s3cret\n")
    _ok("push", "busybox", f"{host}/team/app:1")
    _ok("--root", str(tmp_path / "b"), "pull", f"{host}/team/app:1")
    scopes = {scope for request in registry_token.token_server.requests for scope in request.scopes}  # type: ignore[union-attr]
    assert "repository:team/app:pull,push" in scopes and "repository:team/app:pull" in scopes
    assert all(r.has_authorization for r in registry_token.token_server.requests)  # type: ignore[union-attr]


def test_tls_needs_the_registrys_ca_in_certs_d(registry_tls: RegistryServer, busybox: str, isolate: Path) -> None:
    host = registry_tls.host
    untrusted = run_pybuild("push", "busybox", f"{host}/app:1")
    assert untrusted.code == 1 and "TLS certificate not trusted" in untrusted.err, untrusted
    certs = isolate / ".docker" / "certs.d" / host
    certs.mkdir(parents=True)
    shutil.copy(registry_tls.ca_path, certs / "ca.crt")  # type: ignore[arg-type]
    _ok("push", "busybox", f"{host}/app:1")
    assert _inspect(f"{host}/app:1", "--cert-dir", str(certs))["Digest"]


def test_tls_client_certificates_come_from_certs_d(busybox: str, isolate: Path, tmp_path: Path) -> None:
    require_tool("docker-registry")
    with run_registry(tmp_path, tls=True, client_certs=True) as server:
        certs = isolate / ".docker" / "certs.d" / server.host
        certs.mkdir(parents=True)
        shutil.copy(server.ca_path, certs / "ca.crt")  # type: ignore[arg-type]
        refused = run_pybuild("push", "busybox", f"{server.host}/app:1")
        assert refused.code == 1, refused
        shutil.copy(server.client_cert, certs / "client.cert")  # type: ignore[arg-type]
        shutil.copy(server.client_key, certs / "client.key")  # type: ignore[arg-type]
        _ok("push", "busybox", f"{server.host}/app:1")


def test_an_unreachable_registry_is_one_line_with_the_dockerfile_line(tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", "# base\nFROM 127.0.0.1:9/nothing:1\n")
    result = run_pybuild("build", "--progress", "plain", str(context))
    assert result.code == 1
    last = result.err.strip().splitlines()[-1]
    assert last.startswith("pybuild: ") and "Dockerfile:2: 127.0.0.1:9/nothing:1: " in last
    assert "connection refused" in last


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert "PYBUILD_ROOT" in os.environ


def _stored_blobs_verify(root: Path) -> int:
    """Every blob in the store hashes to its name; returns how many there are."""
    import hashlib

    count = 0
    for path in (root / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
        count += 1
    return count


def test_a_misbehaving_registry_ends_in_one_clear_line_and_a_sound_store(
    fake_registry: FakeRegistry, busybox: str, store_root: Path, tmp_path: Path
) -> None:
    host = fake_registry.host
    _ok("push", "busybox", f"{host}/app:1")
    layer = next(iter(d for d in fake_registry.blobs["app"] if len(fake_registry.blobs["app"][d]) > 10_000))
    other = tmp_path / "other"
    fake_registry.faults.append(Fault("GET", rf"/v2/app/blobs/{layer}", "corrupt", times=None))
    result = run_pybuild("--root", str(other), "pull", f"{host}/app:1")
    errors = [line for line in result.err.splitlines() if line.startswith("pybuild:")]
    assert result.code == 1 and len(errors) == 1 and errors == result.err.strip().splitlines()[-1:], result
    assert f"{host}/app@{layer}" in result.err and "content has digest" in result.err
    assert not (other / "blobs" / "sha256" / layer.split(":")[1]).exists()
    _stored_blobs_verify(other)
    assert "app" not in _ok("--root", str(other), "images")
    # 500s, then success: the pull goes through.
    fake_registry.faults[:] = [Fault("GET", r"/v2/app/.*", "status", status=500, times=2)]
    assert "Downloaded newer image" in _ok("--root", str(other), "pull", f"{host}/app:1")
    assert _stored_blobs_verify(other) >= 3
