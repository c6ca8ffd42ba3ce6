"""Image signatures in the cosign layout: the payload's exact bytes, signing and verifying, the signature manifest,
key files, and sign/verify against the in-process fake registry (the real registry and skopeo are in
tests/functional/test_signing_cli.py)."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from fakeregistry import FakeRegistry, sha256

from builder.remote import RegistrySettings, Remote
from builder.root import open_store
from builder.signing import (
    SigningError,
    generate_key,
    key_password,
    load_private_key,
    load_public_key,
    sign,
    verify,
)
from oci import mediatypes as mt
from oci.descriptor import Descriptor
from oci.digest import Digest
from oci.frozen import FrozenMap
from oci.manifest import parse_manifest
from oci.reference import Reference
from oci.sigstore import (
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING,
    InvalidSignature,
    KeyMismatch,
    NoSignature,
    Payload,
    SignedDigestMismatch,
    SignedIdentityMismatch,
    parse_payload,
    parse_signature_manifest,
    sign_payload,
    signature_layer,
    signature_layers,
    signature_manifest,
    signature_tag,
    verify_payload,
    verify_signature,
)

DIGEST = Digest.parse("sha256:" + "ab" * 32)
OTHER_DIGEST = Digest.parse("sha256:" + "cd" * 32)
REPO = Reference("registry.example.com", "team/app")


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def other_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# ------------------------------------------------------------------------------------------------ the payload


def test_the_payload_is_cosigns_bytes() -> None:
    assert Payload("registry.example.com/team/app", DIGEST).encode() == (
        b'{"critical":{"identity":{"docker-reference":"registry.example.com/team/app"},'
        b'"image":{"docker-manifest-digest":"sha256:' + b"ab" * 32 + b'"},'
        b'"type":"cosign container image signature"},"optional":null}'
    )


def test_payloads_read_back_strictly() -> None:
    payload = Payload("registry.example.com/team/app", DIGEST)
    assert parse_payload(payload.encode()) == payload
    with_annotations = json.loads(payload.encode())
    with_annotations["optional"] = {"creator": "cosign", "sha": "abc"}  # cosign sign -a sha=abc
    parsed = parse_payload(json.dumps(with_annotations).encode())
    assert parsed.optional == {"creator": "cosign", "sha": "abc"} and parsed.manifest_digest == DIGEST

    def broken(change: dict[str, object]) -> bytes:
        data = json.loads(payload.encode())
        data["critical"].update(change)
        return json.dumps(data).encode()

    for raw in (
        broken({"type": "atomic container signature"}),
        broken({"extra": 1}),
        broken({"image": {"docker-manifest-digest": "sha256:short"}}),
        broken({"identity": {"docker-reference": "", "x": 1}}),
        b'{"critical": {}, "optional": null, "more": 1}',
        b'{"critical": 1, "critical": 2, "optional": null}',
        b"not json",
    ):
        with pytest.raises(InvalidSignature):
            parse_payload(raw)


# ------------------------------------------------------------------------------------------------ signatures


def test_a_signature_verifies_with_its_key_only(
    key: ec.EllipticCurvePrivateKey, other_key: ec.EllipticCurvePrivateKey
) -> None:
    payload = Payload(REPO.name, DIGEST).encode()
    signature = sign_payload(key, payload)
    der = base64.b64decode(signature, validate=True)
    assert der[0] == 0x30, "an ASN.1 DER SEQUENCE (r, s), as sigstore's ECDSA verifier reads it"
    assert verify_payload(key.public_key(), payload, signature)
    assert not verify_payload(other_key.public_key(), payload, signature)
    tampered = payload.replace(b"ab" * 32, b"cd" * 32)
    assert not verify_payload(key.public_key(), tampered, signature)
    assert not verify_payload(key.public_key(), payload + b" ", signature), "the exact bytes are signed"
    with pytest.raises(InvalidSignature, match="base64"):
        verify_payload(key.public_key(), payload, "not base64!")


def test_other_key_types_verify_as_sigstore_does() -> None:
    payload = Payload(REPO.name, DIGEST).encode()
    rsa_key = rsa.generate_private_key(65537, 2048)
    rsa_signature = base64.b64encode(rsa_key.sign(payload, padding.PKCS1v15(), hashes.SHA256()))
    assert verify_payload(rsa_key.public_key(), payload, rsa_signature.decode())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    assert verify_payload(ed_key.public_key(), payload, base64.b64encode(ed_key.sign(payload)).decode())


def _layer(
    key: ec.EllipticCurvePrivateKey, reference: str = REPO.name, digest: Digest = DIGEST
) -> tuple[Descriptor, bytes]:
    payload = Payload(reference, digest).encode()
    return signature_layer(payload, sign_payload(key, payload)), payload


def test_verify_signature_says_what_is_wrong(
    key: ec.EllipticCurvePrivateKey, other_key: ec.EllipticCurvePrivateKey
) -> None:
    public = key.public_key()
    layer, payload = _layer(key)
    assert verify_signature(public, layer, payload, digest=DIGEST, repository=REPO).manifest_digest == DIGEST
    tagged = REPO.with_tag("1.0")
    assert verify_signature(public, layer, payload, digest=DIGEST, repository=tagged), "a tag does not matter"

    with pytest.raises(KeyMismatch, match="signature does not match the key"):
        verify_signature(other_key.public_key(), layer, payload, digest=DIGEST, repository=REPO)
    with pytest.raises(SignedDigestMismatch, match=f"signed digest {DIGEST} but the image is {OTHER_DIGEST}"):
        verify_signature(public, layer, payload, digest=OTHER_DIGEST, repository=REPO)
    with pytest.raises(SignedIdentityMismatch, match="signed for registry.example.com/team/app, not"):
        verify_signature(public, layer, payload, digest=DIGEST, repository=Reference("registry.example.com", "x"))
    tampered = payload.replace(b"team/app", b"team/evil")
    with pytest.raises(InvalidSignature, match="does not match its digest"):
        verify_signature(public, layer, tampered, digest=DIGEST, repository=REPO)
    unsigned = Descriptor(SIMPLE_SIGNING, layer.digest, layer.size)
    with pytest.raises(InvalidSignature, match="no dev.cosignproject.cosign/signature annotation"):
        verify_signature(public, unsigned, payload, digest=DIGEST, repository=REPO)


def test_the_signed_identity_is_normalised_as_docker_does(key: ec.EllipticCurvePrivateKey) -> None:
    layer, payload = _layer(key, reference="index.docker.io/library/busybox")  # as cosign writes Hub names
    busybox = Reference.parse("busybox")
    assert verify_signature(key.public_key(), layer, payload, digest=DIGEST, repository=busybox)


# ------------------------------------------------------------------------------------------------ the manifest


def test_the_signature_manifest_has_cosigns_shape(key: ec.EllipticCurvePrivateKey) -> None:
    assert signature_tag(DIGEST) == "sha256-" + "ab" * 32 + ".sig"
    first, first_payload = _layer(key)
    second, _ = _layer(key, digest=DIGEST)
    manifest, config = signature_manifest([first, second])
    data = json.loads(manifest.encode())
    assert data["schemaVersion"] == 2 and data["mediaType"] == mt.OCI_MANIFEST
    assert data["config"] == {"mediaType": mt.OCI_CONFIG, "digest": sha256(config), "size": len(config)}
    assert [layer["mediaType"] for layer in data["layers"]] == [SIMPLE_SIGNING] * 2
    assert data["layers"][0] == {
        "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
        "digest": sha256(first_payload),
        "size": len(first_payload),
        "annotations": {"dev.cosignproject.cosign/signature": first.annotations[SIGNATURE_ANNOTATION]},
    }
    assert json.loads(config) == {
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}] * 2,
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [sha256(first_payload)] * 2},
    }
    parsed = parse_signature_manifest(manifest.encode(), mt.OCI_MANIFEST)
    assert signature_layers(parsed) == (first, second)
    with pytest.raises(InvalidSignature, match="not application/vnd.oci.image.manifest"):
        parse_signature_manifest(manifest.encode(), mt.DOCKER_MANIFEST)


def test_other_attachments_are_not_signatures(key: ec.EllipticCurvePrivateKey) -> None:
    layer, _ = _layer(key)
    other = Descriptor("application/vnd.dev.sigstore.bundle+json", DIGEST, 3, FrozenMap())
    manifest, _ = signature_manifest([other, layer])
    assert signature_layers(manifest) == (layer,)
    assert signature_layers(None) == ()


# ------------------------------------------------------------------------------------------------ key files


def test_generate_key_writes_pkcs8_and_spki(tmp_path: Path) -> None:
    files = generate_key(tmp_path / "pybuild", None)
    assert (files.private, files.public) == (tmp_path / "pybuild.key", tmp_path / "pybuild.pub")
    assert files.private.read_text().startswith("-----BEGIN PRIVATE KEY-----\n")
    assert files.public.read_text().startswith("-----BEGIN PUBLIC KEY-----\n")
    assert stat.S_IMODE(files.private.stat().st_mode) == 0o600
    private = load_private_key(files.private, None)
    public = load_public_key(files.public)
    assert isinstance(private.curve, ec.SECP256R1)
    payload = b"payload"
    assert verify_payload(public, payload, sign_payload(private, payload))


def test_an_encrypted_key_round_trips(tmp_path: Path) -> None:
    files = generate_key(tmp_path / "k", b"correct horse")
    assert files.private.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    private = load_private_key(files.private, b"correct horse")
    assert verify_payload(load_public_key(files.public), b"x", sign_payload(private, b"x"))
    with pytest.raises(SigningError, match="wrong password"):
        load_private_key(files.private, b"wrong")
    with pytest.raises(SigningError, match="is encrypted") as caught:
        load_private_key(files.private, None)
    assert "PYBUILD_KEY_PASSWORD" in caught.value.hint


def test_key_files_are_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "k.pub").write_text("keep me")
    with pytest.raises(SigningError, match="already exists"):
        generate_key(tmp_path / "k", None)
    assert not (tmp_path / "k.key").exists() and (tmp_path / "k.pub").read_text() == "keep me"


def test_keys_of_the_wrong_kind_are_refused(tmp_path: Path) -> None:
    files = generate_key(tmp_path / "k", None)
    with pytest.raises(SigningError, match="is a public key"):
        load_private_key(files.public, None)
    with pytest.raises(SigningError, match="is a private key"):
        load_public_key(files.private)
    cosign = tmp_path / "cosign.key"
    label = "ENCRYPTED SIGSTORE PRIVATE KEY"
    cosign.write_text(f"-----BEGIN {label}-----\neyJrZGYiOnt9fQ==\n-----END {label}-----\n")
    with pytest.raises(SigningError, match="cosign-encrypted key"):
        load_private_key(cosign, b"pw")
    p384 = tmp_path / "p384.key"
    p384.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(SigningError, match="not an ECDSA P-256 key"):
        load_private_key(p384, None)
    text = tmp_path / "text"
    text.write_text("hello")
    with pytest.raises(SigningError, match="not a PEM file"):
        load_public_key(text)


def test_the_password_comes_from_the_environment() -> None:
    assert key_password({}) is None and key_password({"PYBUILD_KEY_PASSWORD": ""}) is None
    assert key_password({"PYBUILD_KEY_PASSWORD": "pässword"}) == "pässword".encode()


# ------------------------------------------------------------------------------------------------ against a registry


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(open_store(tmp_path / "store"), RegistrySettings(retries=0), os.environ)


def _image(registry: FakeRegistry, repo: str, tag: str, content: bytes) -> Digest:
    """A small image in the fake: a config, one layer, a manifest tagged ``tag``."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    config_digest = registry.put_blob(repo, config.encode())
    layer_digest = registry.put_blob(repo, content)
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": mt.OCI_LAYER, "digest": layer_digest, "size": len(content)}],
    }
    return Digest.parse(registry.put_manifest(repo, tag, json.dumps(manifest).encode()))


def test_sign_and_verify_through_a_registry(
    fake_registry: FakeRegistry, remote: Remote, key: ec.EllipticCurvePrivateKey, other_key: ec.EllipticCurvePrivateKey
) -> None:
    digest = _image(fake_registry, "team/app", "1.0", b"layer one")
    ref = Reference(fake_registry.host, "team/app", "1.0")
    with pytest.raises(NoSignature, match=f"{ref.name}@{digest}: no signature"):
        verify(remote, ref, key.public_key())

    signed = sign(remote, ref, key)
    assert signed.added and signed.signatures == 1
    assert signed.image == Reference(ref.registry, ref.repository, "", digest)
    assert signed.signature == Reference(ref.registry, ref.repository, signature_tag(digest))
    stored = fake_registry.get_manifest("team/app", signature_tag(digest))
    assert stored is not None and stored.media_type == mt.OCI_MANIFEST and stored.digest == str(signed.manifest_digest)
    verified = verify(remote, ref, key.public_key())
    assert verified.image.digest == digest and verified.signatures == 1
    assert [p.docker_reference for p in verified.payloads] == [ref.name]

    again = sign(remote, ref, key)
    assert not again.added and again.manifest_digest == signed.manifest_digest, "one signature per key and digest"

    with pytest.raises(KeyMismatch, match="signature does not match the key"):
        verify(remote, ref, other_key.public_key())
    second = sign(remote, ref, other_key)
    assert second.added and second.signatures == 2
    sig_manifest = parse_manifest(fake_registry.get_manifest("team/app", signature_tag(digest)).raw)  # type: ignore[union-attr]
    assert sig_manifest.layers[0] == parse_manifest(stored.raw).layers[0], "the first signature is kept"
    assert verify(remote, ref, key.public_key()).signatures == 2
    assert verify(remote, ref, other_key.public_key()).payloads[0].manifest_digest == digest

    # The tag now names another image, which nobody signed.
    changed = _image(fake_registry, "team/app", "1.0", b"layer two")
    with pytest.raises(NoSignature, match=f"@{changed}: no signature"):
        verify(remote, ref, key.public_key())
    by_digest = Reference(ref.registry, ref.repository, "", digest)
    assert verify(remote, by_digest, key.public_key()).image.digest == digest


def test_a_signature_moved_to_another_digest_is_refused(
    fake_registry: FakeRegistry, remote: Remote, key: ec.EllipticCurvePrivateKey
) -> None:
    signed_digest = _image(fake_registry, "app", "signed", b"one")
    other_digest = _image(fake_registry, "app", "other", b"two")
    sign(remote, Reference(fake_registry.host, "app", "signed"), key)
    moved = fake_registry.get_manifest("app", signature_tag(signed_digest))
    assert moved is not None
    fake_registry.put_manifest("app", signature_tag(other_digest), moved.raw)
    with pytest.raises(SignedDigestMismatch, match=f"signed digest {signed_digest} but the image is {other_digest}"):
        verify(remote, Reference(fake_registry.host, "app", "other"), key.public_key())


def test_a_signature_for_another_repository_is_refused(
    fake_registry: FakeRegistry, remote: Remote, key: ec.EllipticCurvePrivateKey
) -> None:
    digest = _image(fake_registry, "a", "1", b"same")
    assert _image(fake_registry, "b", "1", b"same") == digest
    sign(remote, Reference(fake_registry.host, "a", "1"), key)
    moved = fake_registry.get_manifest("a", signature_tag(digest))
    assert moved is not None
    for blob, data in fake_registry.blobs["a"].items():
        fake_registry.blobs.setdefault("b", {})[blob] = data
    fake_registry.put_manifest("b", signature_tag(digest), moved.raw)
    with pytest.raises(SignedIdentityMismatch, match=f"signed for {fake_registry.host}/a, not {fake_registry.host}/b"):
        verify(remote, Reference(fake_registry.host, "b", "1"), key.public_key())
