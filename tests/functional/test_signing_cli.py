"""Signing against a real registry (Debian's docker-registry on 127.0.0.1), cross-checked with skopeo and openssl.

The acceptance test pushes with ``--sign-key`` and copies with skopeo under a policy that demands a ``sigstoreSigned``
signature by pybuild's public key. Debian 12's skopeo is built with sigstore verification patched out (every
``sigstoreSigned`` requirement fails with "Debian-local change: sigstore disabled"), so the policy checks run
``skopeo-sigstore``: Debian 13's skopeo in a chroot, which ``.ci/install-sigstore-skopeo`` installs.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import subprocess
from pathlib import Path

import requests
from conftest import CLIResult, require_tool, run_pybuild
from registryserver import RegistryServer

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
ANNOTATION = "dev.cosignproject.cosign/signature"
NO_SIGNATURE = "A signature was required, but no signature exists"
PASSWORD = {"PYBUILD_KEY_PASSWORD": "other password"}


def _ok(*args: str, env: dict[str, str] | None = None) -> str:
    result = run_pybuild(*args, env=env)
    assert result.code == 0, result
    return result.out


def _fails(*args: str, env: dict[str, str] | None = None) -> CLIResult:
    result = run_pybuild(*args, env=env)
    assert result.code == 1, result
    assert len(result.err.strip().splitlines()) == 1, result
    return result


def _skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("skopeo"), *args], capture_output=True, text=True, timeout=120)


def _sigstore_skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    """skopeo that verifies sigstore signatures: Debian 12's has it patched out, so CI installs Debian 13's
    (``.ci/install-sigstore-skopeo`` puts ``skopeo-sigstore`` on the PATH)."""
    return subprocess.run([require_tool("skopeo-sigstore"), *args], capture_output=True, text=True, timeout=120)


class Skopeo:
    """skopeo with a policy demanding pybuild.pub's signature for REPO, and sigstore attachments on for the host."""

    def __init__(self, tmp: Path, host: str, repository: str, public_key: Path) -> None:
        self.tmp = tmp
        self.policy = tmp / "policy.json"
        requirement = {
            "type": "sigstoreSigned",
            "keyPath": str(public_key),
            "signedIdentity": {"type": "matchRepository"},
        }
        policy = {
            "default": [{"type": "reject"}],
            "transports": {
                "docker": {f"{host}/{repository}": [requirement]},
                "oci": {"": [{"type": "insecureAcceptAnything"}]},
                "dir": {"": [{"type": "insecureAcceptAnything"}]},
            },
        }
        self.policy.write_text(json.dumps(policy))
        self.registries_d = tmp / "registries.d"
        self.registries_d.mkdir(exist_ok=True)
        (self.registries_d / "test.yaml").write_text(f"docker:\n  {host}:\n    use-sigstore-attachments: true\n")
        self.copies = 0

    def copy(self, ref: str, *, insecure_policy: bool = False) -> tuple[subprocess.CompletedProcess[str], Path]:
        """``skopeo copy docker://REF dir:...`` under the policy (or none); the directory it copied into."""
        self.copies += 1
        dest = self.tmp / f"copy{self.copies}"
        policy = ("--insecure-policy",) if insecure_policy else ("--policy", str(self.policy))
        proc = _sigstore_skopeo(
            *policy, "--registries.d", str(self.registries_d), "copy", "--src-tls-verify=false", f"docker://{ref}",
            f"dir:{dest}",
        )  # fmt: skip
        return proc, dest


def _keys(tmp: Path) -> tuple[Path, Path]:
    """pybuild.key (unencrypted) and other.key (encrypted with PASSWORD), made by the CLI."""
    _ok("key", "generate", "--output", str(tmp / "pybuild"))
    _ok("key", "generate", "--output", str(tmp / "other"), env=PASSWORD)
    return tmp / "pybuild", tmp / "other"


def _sigstore_signatures(directory: Path) -> list[dict[str, object]]:
    """The sigstore signatures skopeo wrote into a dir: copy (containers/image's "\\0sigstore-json\\n" + JSON)."""
    found = []
    for path in sorted(directory.glob("signature-*")):
        blob = path.read_bytes()
        header, _, body = blob.partition(b"\n")
        assert header == b"\x00sigstore-json", blob[:40]
        found.append(json.loads(body))
    return found


def _openssl_verifies(tmp: Path, public_key: Path, payload: bytes, signature_b64: str) -> bool:
    (tmp / "payload").write_bytes(payload)
    (tmp / "signature.der").write_bytes(base64.b64decode(signature_b64))
    command = [require_tool("openssl"), "dgst", "-sha256", "-verify", str(public_key)]
    command += ["-signature", str(tmp / "signature.der"), str(tmp / "payload")]
    proc = subprocess.run(command, capture_output=True, text=True)
    return proc.returncode == 0 and "Verified OK" in proc.stdout


def _signature_manifest(registry: RegistryServer, repository: str, digest: str) -> dict[str, object]:
    tag = digest.replace(":", "-") + ".sig"
    response = requests.get(
        f"{registry.url}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
    return response.json()


def _oci_layout(root: Path, content: bytes) -> Path:
    """An OCI layout tagged 1 holding a one-file image, so skopeo can push an image pybuild never saw."""
    import io
    import tarfile

    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        archive.addfile(info, io.BytesIO(content))
    raw_layer = tar.getvalue()

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "blobs" / "sha256" / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    layer = blob(gzip.compress(raw_layer, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")
    diff_id = "sha256:" + hashlib.sha256(raw_layer).hexdigest()
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    config_descriptor = blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_descriptor,
        "layers": [layer],
    }
    descriptor = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    descriptor["annotations"] = {"org.opencontainers.image.ref.name": "1"}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return root


def _skopeo_push(layout: Path, ref: str) -> str:
    proc = _skopeo("--insecure-policy", "copy", "--dest-tls-verify=false", f"oci:{layout}:1", f"docker://{ref}")
    assert proc.returncode == 0, proc.stderr
    inspect = _skopeo("inspect", "--tls-verify=false", f"docker://{ref}")
    assert inspect.returncode == 0, inspect.stderr
    return json.loads(inspect.stdout)["Digest"]


# ------------------------------------------------------------------------------------------------ keys


def test_key_generate_writes_a_pair_and_never_overwrites(tmp_path: Path) -> None:
    made = run_pybuild("key", "generate", "--output", str(tmp_path / "release"))
    assert made.code == 0, made
    assert made.out.splitlines() == [
        f"Private key written to {tmp_path}/release.key",
        f"Public key written to {tmp_path}/release.pub",
    ]
    assert "is not encrypted (set PYBUILD_KEY_PASSWORD" in made.err
    assert (tmp_path / "release.key").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert (tmp_path / "release.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    before = (tmp_path / "release.key").read_bytes()
    again = _fails("key", "generate", "--output", str(tmp_path / "release"))
    assert "release.key already exists; not overwriting a key" in again.err
    assert (tmp_path / "release.key").read_bytes() == before

    encrypted = run_pybuild("key", "generate", "--output", str(tmp_path / "locked"), env=PASSWORD)
    assert encrypted.code == 0 and "not encrypted" not in encrypted.err, encrypted
    assert (tmp_path / "locked.key").read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert run_pybuild("key").code == 2
    help_text = _ok("key", "generate", "--help")
    assert "PKCS#8 PEM (not cosign's encrypted key format)" in help_text


# ------------------------------------------------------------------------------------------------ the acceptance test


def test_push_sign_key_is_accepted_by_a_sigstore_policy(
    registry: RegistryServer, busybox: str, busybox_tar: Path, tmp_path: Path
) -> None:
    key, other = _keys(tmp_path)
    repository = "signed/app"
    ref = f"{registry.host}/{repository}:1"
    skopeo = Skopeo(tmp_path, registry.host, repository, key.with_suffix(".pub"))

    # A key that cannot be used fails the push before anything is pushed.
    assert "is encrypted" in _fails("push", "--sign-key", f"{other}.key", "busybox", ref).err
    assert requests.get(f"{registry.url}/v2/{repository}/tags/list").status_code == 404

    out = _ok("push", "--sign-key", f"{key}.key", "busybox", ref)
    digest = out.split()[2]
    assert f"Signed {registry.host}/{repository}@{digest}:" in out and "holds 1 signature(s)" in out
    verified = _ok("verify", "--key", f"{key}.pub", ref)
    assert verified.startswith(f"Verified {registry.host}/{repository}@{digest}: 1 of 1 signatures match")
    sig = _signature_manifest(registry, repository, digest)
    assert sig["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"  # type: ignore[index]
    assert [layer["mediaType"] for layer in sig["layers"]] == [SIMPLE_SIGNING]  # type: ignore[union-attr]

    accepted, _ = skopeo.copy(ref)
    assert accepted.returncode == 0, accepted.stderr

    # The same tag now names a changed image that nobody signed.
    changed = run_pybuild("import", "-q", "--change", "ENV CHANGED=1", str(busybox_tar), "changed")
    assert changed.code == 0, changed
    new_digest = _ok("push", "changed", ref).split()[2]
    assert new_digest != digest
    refused, _ = skopeo.copy(ref)
    assert refused.returncode != 0 and NO_SIGNATURE in refused.stderr, refused.stderr
    unsigned = _fails("verify", "--key", f"{key}.pub", ref)
    assert f"@{new_digest}: no signature" in unsigned.err

    # Signed, but by another key.
    signed_by_other = _ok("sign", "--key", f"{other}.key", ref, env=PASSWORD)
    assert f"@{new_digest}:" in signed_by_other and "holds 1 signature(s)" in signed_by_other
    wrong_key, _ = skopeo.copy(ref)
    assert wrong_key.returncode != 0 and "cryptographic signature verification failed" in wrong_key.stderr, wrong_key
    mismatch = _fails("verify", "--key", f"{key}.pub", ref)
    assert f"@{new_digest}: signature does not match the key" in mismatch.err
    _ok("verify", "--key", f"{other}.pub", ref)

    # Signing it with pybuild.key too adds a signature and keeps the other one.
    both = _ok("sign", "--key", f"{key}.key", ref)
    assert "holds 2 signature(s)" in both
    assert _ok("verify", "--key", f"{other}.pub", ref).split(": ", 1)[1].startswith("1 of 2 signatures")
    accepted_again, _ = skopeo.copy(ref)
    assert accepted_again.returncode == 0, accepted_again.stderr


# ------------------------------------------------------------------------------------------------ interoperation


def test_skopeo_reads_pybuild_signatures_and_openssl_verifies_them(registry: RegistryServer, tmp_path: Path) -> None:
    key, _ = _keys(tmp_path)
    ref = f"{registry.host}/from/skopeo:1"
    digest = _skopeo_push(_oci_layout(tmp_path / "layout", b"hello\n"), ref)

    signed = _ok("sign", "--key", f"{key}.key", ref)
    assert signed.startswith(f"Signed {registry.host}/from/skopeo@{digest}: ")
    assert "already signed by this key" in _ok("sign", "--key", f"{key}.key", f"{registry.host}/from/skopeo@{digest}")
    assert len(_signature_manifest(registry, "from/skopeo", digest)["layers"]) == 1  # type: ignore[arg-type]

    skopeo = Skopeo(tmp_path, registry.host, "from/skopeo", key.with_suffix(".pub"))
    copied, directory = skopeo.copy(ref, insecure_policy=True)
    assert copied.returncode == 0, copied.stderr
    (signature,) = _sigstore_signatures(directory)
    assert signature["mimeType"] == SIMPLE_SIGNING
    payload = base64.b64decode(signature["payload"])  # type: ignore[arg-type]
    assert json.loads(payload) == {
        "critical": {
            "identity": {"docker-reference": f"{registry.host}/from/skopeo"},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": None,
    }
    annotations = signature["annotations"]
    assert list(annotations) == [ANNOTATION]  # type: ignore[arg-type]
    assert _openssl_verifies(tmp_path, key.with_suffix(".pub"), payload, annotations[ANNOTATION])  # type: ignore[index]
    assert not _openssl_verifies(tmp_path, key.with_suffix(".pub"), payload + b" ", annotations[ANNOTATION])  # type: ignore[index]

    policy_copy, _ = skopeo.copy(ref)
    assert policy_copy.returncode == 0, policy_copy.stderr


def test_pybuild_reads_signatures_skopeo_copied(registry: RegistryServer, tmp_path: Path) -> None:
    """skopeo copies a signed image to another repository and writes the .sig manifest there itself (containers/image's
    own config and layer shape): pybuild reads it, finds the key's signature names the first repository, and adds its
    own next to skopeo's."""
    key, _ = _keys(tmp_path)
    source, dest = f"{registry.host}/first/app:1", f"{registry.host}/second/app:1"
    digest = _skopeo_push(_oci_layout(tmp_path / "layout", b"copied\n"), source)
    _ok("sign", "--key", f"{key}.key", source)
    skopeo = Skopeo(tmp_path, registry.host, "first/app", key.with_suffix(".pub"))
    copy = _skopeo(
        "--insecure-policy", "--registries.d", str(skopeo.registries_d), "copy", "--src-tls-verify=false",
        "--dest-tls-verify=false", f"docker://{source}", f"docker://{dest}",
    )  # fmt: skip
    assert copy.returncode == 0, copy.stderr
    written = _signature_manifest(registry, "second/app", digest)
    assert [layer["mediaType"] for layer in written["layers"]] == [SIMPLE_SIGNING]  # type: ignore[union-attr]

    elsewhere = _fails("verify", "--key", f"{key}.pub", dest)
    assert f"signed for {registry.host}/first/app, not {registry.host}/second/app" in elsewhere.err
    assert "holds 2 signature(s)" in _ok("sign", "--key", f"{key}.key", dest)
    after = _signature_manifest(registry, "second/app", digest)
    assert after["layers"][0] == written["layers"][0]  # type: ignore[index]
    assert _ok("verify", "--key", f"{key}.pub", dest).split(": ", 1)[1].startswith("1 of 2 signatures")
    as_json = json.loads(_ok("verify", "--key", f"{key}.pub", "--format", "json", dest))
    assert [p["critical"]["identity"]["docker-reference"] for p in as_json] == [f"{registry.host}/second/app"]


# ------------------------------------------------------------------------------------------------ errors


def test_signing_errors_are_one_line(registry: RegistryServer, tmp_path: Path) -> None:
    key, other = _keys(tmp_path)
    ref = f"{registry.host}/errors/app:1"
    _skopeo_push(_oci_layout(tmp_path / "layout", b"errors\n"), ref)
    locked = _fails("sign", "--key", f"{other}.key", ref)
    assert f"{other}.key is encrypted (set PYBUILD_KEY_PASSWORD to its password)" in locked.err
    wrong = _fails("sign", "--key", f"{other}.key", ref, env={"PYBUILD_KEY_PASSWORD": "nope"})
    assert "wrong password" in wrong.err
    assert "is a public key" in _fails("sign", "--key", f"{key}.pub", ref).err
    assert "no signature" in _fails("verify", "--key", f"{key}.pub", ref).err
    missing = _fails("verify", "--key", f"{key}.pub", f"{registry.host}/errors/none:1")
    assert "404" in missing.err
    assert run_pybuild("verify", ref).code == 2, "--key is required"
