"""Signing images in a registry, and verifying them, in the sigstore (cosign) layout that skopeo and podman verify.

``pybuild key generate`` writes a key pair; ``pybuild sign --key KEY NAME`` (or ``pybuild push --sign-key KEY``)
signs the manifest digest NAME names in its registry; ``pybuild verify --key KEY.pub NAME`` checks it.

The layout (``oci.sigstore`` has the details). An image ``HOST/REPO`` whose manifest digest is ``sha256:HEX`` is
signed by pushing, to the same repository, the OCI manifest tagged ``sha256-HEX.sig``: one layer per signature, each
the cosign simple-signing payload (media type ``application/vnd.dev.cosign.simplesigning.v1+json``) naming
``HOST/REPO`` and ``sha256:HEX``, with the base64 ECDSA P-256/SHA-256 signature of the payload's exact bytes in the
layer annotation ``dev.cosignproject.cosign/signature``. Signing again adds a layer and keeps the others, as
``cosign sign`` does; signing with a key that already signed this digest changes nothing. It is the layout
``cosign sign --key`` writes, so ``cosign verify --key pybuild.pub --insecure-ignore-tlog`` should read it too
(pybuild records no transparency-log entry; the tests have no cosign to check this with).

Keys. ``pybuild.key`` is the private key as PKCS#8 PEM, encrypted (AES-256-CBC, PBKDF2) with the password in
``$PYBUILD_KEY_PASSWORD`` when that is set; it is *not* cosign's ``ENCRYPTED SIGSTORE PRIVATE KEY`` format, which
pybuild does not read or write. ``pybuild.pub`` is the public key as SubjectPublicKeyInfo PEM, the form both
``cosign verify --key`` and the containers policy's ``keyPath`` take.

Verifying with skopeo or podman. A policy (``/etc/containers/policy.json``, or ``skopeo --policy FILE``) that
accepts images of HOST/REPO only when signed by the key::

    {"default": [{"type": "reject"}],
     "transports": {"docker": {"HOST/REPO": [{"type": "sigstoreSigned", "keyPath": "/path/to/pybuild.pub",
                                             "signedIdentity": {"type": "matchRepository"}}]}}}

``matchRepository`` matters: the payload names the repository without a tag, as cosign's do, so the default
``matchRepoDigestOrExact`` would refuse a pull by tag. containers/image reads sigstore signatures only where
registries.d says so: a file in ``/etc/containers/registries.d/`` (or ``skopeo --registries.d DIR``) with::

    docker:
      HOST:
        use-sigstore-attachments: true

Then ``skopeo copy docker://HOST/REPO:TAG ...`` and ``podman pull HOST/REPO:TAG`` succeed for a signed image and
fail for one that is unsigned, changed since signing, or signed by another key (tests/functional/test_signing_cli.py
shows all three). That takes builds with sigstore support: Debian 12's skopeo and podman have it patched out, and
refuse every ``sigstoreSigned`` requirement with "Debian-local change: sigstore disabled"; Debian 13's verify (CI
runs its skopeo in a chroot: .ci/install-sigstore-skopeo). ``pybuild verify`` checks signatures anywhere.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from builder.errors import BuildError
from builder.remote import Remote
from oci import mediatypes as mt
from oci.canonical import MAX_DOCUMENT_SIZE
from oci.descriptor import Descriptor
from oci.digest import Digest
from oci.manifest import Manifest
from oci.reference import Reference
from oci.registry import RegistryClient, RegistryNotFound
from oci.sigstore import (
    SIGNATURE_ANNOTATION,
    InvalidSignature,
    KeyMismatch,
    NoSignature,
    Payload,
    PublicKey,
    SignatureError,
    SignedDigestMismatch,
    SignedIdentityMismatch,
    parse_signature_manifest,
    sign_payload,
    signature_layer,
    signature_layers,
    signature_manifest,
    signature_tag,
    verify_payload,
    verify_signature,
)
from oci.transfer import push_blobs

__all__ = [
    "KeyFiles",
    "PASSWORD_ENV",
    "Signed",
    "SigningError",
    "Verified",
    "generate_key",
    "key_password",
    "load_private_key",
    "load_public_key",
    "sign",
    "verify",
]

PASSWORD_ENV = "PYBUILD_KEY_PASSWORD"

# The more telling failure wins when no signature verifies: a signature by the key for another digest says more than
# one by another key.
_RANK = (SignedDigestMismatch, SignedIdentityMismatch, KeyMismatch, InvalidSignature)


class SigningError(BuildError):
    """A key that cannot be written, read or used."""


@dataclass(frozen=True, slots=True)
class KeyFiles:
    private: Path
    public: Path


@dataclass(frozen=True, slots=True)
class Signed:
    image: Reference  # HOST/REPO@DIGEST
    signature: Reference  # HOST/REPO:sha256-HEX.sig
    manifest_digest: Digest  # of the signature manifest now under that tag
    signatures: int  # how many it holds
    added: bool  # False: this key had already signed this digest


@dataclass(frozen=True, slots=True)
class Verified:
    image: Reference  # HOST/REPO@DIGEST
    payloads: tuple[Payload, ...]  # the signatures the key verified
    signatures: int  # all the signatures the image has


# --- keys


def key_password(environ: Mapping[str, str]) -> bytes | None:
    """The private key's password, from ``$PYBUILD_KEY_PASSWORD``; unset or empty means none."""
    value = environ.get(PASSWORD_ENV, "")
    return value.encode("utf-8") if value else None


def generate_key(prefix: Path, password: bytes | None) -> KeyFiles:
    """Write PREFIX.key (PKCS#8 PEM, encrypted with ``password`` if given; mode 0600) and PREFIX.pub (SPKI PEM).

    Neither file may exist already: a key is never overwritten."""
    files = KeyFiles(prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub"))
    for path in (files.private, files.public):
        if path.exists() or path.is_symlink():
            raise SigningError(f"{path} already exists; not overwriting a key", hint="choose another --output")
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(files.private, private, 0o600)
    try:
        _write_new(files.public, public, 0o644)
    except BaseException:
        files.private.unlink(missing_ok=True)
        raise
    return files


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise SigningError(f"{path} already exists; not overwriting a key") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _read_pem(path: Path) -> bytes:
    data = path.read_bytes()
    if b"-----BEGIN" not in data:
        raise SigningError(f"{path} is not a PEM file")
    return data


def load_private_key(path: Path, password: bytes | None) -> ec.EllipticCurvePrivateKey:
    """An ECDSA P-256 private key from PEM (PKCS#8, encrypted or not, or SEC1 ``EC PRIVATE KEY``)."""
    data = _read_pem(path)
    if b"SIGSTORE PRIVATE KEY" in data or b"COSIGN PRIVATE KEY" in data:
        raise SigningError(
            f"{path} is a cosign-encrypted key, which pybuild does not read",
            hint="pybuild signs with PKCS#8 PEM keys: make one with 'pybuild key generate'",
        )
    if b"PUBLIC KEY" in data and b"PRIVATE KEY" not in data:
        raise SigningError(f"{path} is a public key; signing needs the private key (the .key file)")
    encrypted = b"ENCRYPTED PRIVATE KEY" in data or b"Proc-Type: 4,ENCRYPTED" in data
    if encrypted and password is None:
        raise SigningError(f"{path} is encrypted", hint=f"set {PASSWORD_ENV} to its password")
    try:
        key = serialization.load_pem_private_key(data, password if encrypted else None)
    except ValueError as err:
        if encrypted:
            raise SigningError(f"cannot decrypt {path}: wrong password (from {PASSWORD_ENV})") from None
        raise SigningError(f"{path}: not a private key pybuild can read ({err})") from None
    except TypeError as err:  # a password for an unencrypted key, or none for an encrypted one
        raise SigningError(f"{path}: {err}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SigningError(f"{path} is not an ECDSA P-256 key; pybuild signs with P-256, as cosign does")
    return key


def load_public_key(path: Path) -> PublicKey:
    """A public key from SubjectPublicKeyInfo PEM (``BEGIN PUBLIC KEY``): ECDSA, RSA or Ed25519."""
    data = _read_pem(path)
    if b"PRIVATE KEY" in data:
        raise SigningError(f"{path} is a private key; verifying takes the public key (the .pub file)")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as err:
        raise SigningError(f"{path}: not a public key pybuild can read ({err})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise SigningError(f"{path}: unsupported public key type {type(key).__name__}")
    return key


# --- the registry side


def _image_digest(client: RegistryClient, ref: Reference) -> Digest:
    """The manifest digest ``ref`` names in its registry (a digest reference is checked to exist)."""
    descriptor, _ = client.get_manifest(ref)
    return descriptor.digest


def _existing(client: RegistryClient, tag: Reference) -> tuple[Manifest, Digest] | None:
    """The signature manifest under ``tag`` and its digest, or None when there is none."""
    try:
        descriptor, raw = client.get_manifest(tag)
    except RegistryNotFound:
        return None
    return parse_signature_manifest(raw, descriptor.media_type), descriptor.digest


def _signed_by(manifest: Manifest, key: PublicKey, payload: bytes) -> bool:
    digest = Digest.of_bytes(payload)
    for layer in signature_layers(manifest):
        signature = layer.annotations.get(SIGNATURE_ANNOTATION, "")
        if layer.digest != digest or not signature:
            continue
        try:
            if verify_payload(key, payload, signature):
                return True
        except InvalidSignature:
            continue
    return False


def _read_payload(client: RegistryClient, repository: Reference, layer: Descriptor) -> bytes:
    """A payload blob, whole, refused when larger than its layer says (verify_signature checks the digest)."""
    if layer.size > MAX_DOCUMENT_SIZE:
        raise InvalidSignature(f"payload {layer.digest.short} is {layer.size} bytes, more than a payload can be")
    data = bytearray()
    with client.open_blob(repository, layer.digest) as response:
        for chunk in response.iter_content(65536):
            data += chunk
            if len(data) > layer.size:
                break
    return bytes(data)


def sign(
    remote: Remote,
    ref: Reference,
    key: ec.EllipticCurvePrivateKey,
    *,
    digest: Digest | None = None,
    on_status: Callable[[str], None] | None = None,
) -> Signed:
    """Sign the image ``ref`` names in its registry (or the manifest ``digest`` in ``ref``'s repository)."""
    say = on_status or (lambda text: None)
    client = remote.client
    repository = Reference(ref.registry, ref.repository)
    image_digest = digest or _image_digest(client, ref)
    image = Reference(ref.registry, ref.repository, "", image_digest)
    tag = Reference(ref.registry, ref.repository, signature_tag(image_digest))
    payload = Payload(repository.name, image_digest).encode()
    found = _existing(client, tag)
    if found and _signed_by(found[0], key.public_key(), payload):
        # As cosign's duplicate detector: this key's signature over these very bytes is already there.
        say(f"{image}: already signed by this key")
        return Signed(image, tag, found[1], len(found[0].layers), False)
    layer = signature_layer(payload, sign_payload(key, payload))
    manifest, config = signature_manifest((*(found[0].layers if found else ()), layer))
    blobs = {layer.digest: payload, manifest.config.digest: config}

    def open_blob(descriptor: Descriptor) -> BinaryIO:
        return io.BytesIO(blobs[descriptor.digest])

    say(f"signing {image}")
    push_blobs(client, repository, [layer, manifest.config], open_blob, on_status=say)
    raw = manifest.encode()
    manifest_digest = client.put_manifest(tag, raw, mt.OCI_MANIFEST)
    say(f"{tag.tag}: digest: {manifest_digest} ({len(manifest.layers)} signatures)")
    return Signed(image, tag, manifest_digest, len(manifest.layers), True)


def verify(
    remote: Remote, ref: Reference, key: PublicKey, *, on_status: Callable[[str], None] | None = None
) -> Verified:
    """Check that the image ``ref`` names carries a signature by ``key`` for its digest and repository.

    Raises ``NoSignature``, or, when no signature verifies, the most telling reason one did not: signed for another
    digest, signed for another repository, signed by another key, malformed."""
    say = on_status or (lambda text: None)
    client = remote.client
    repository = Reference(ref.registry, ref.repository)
    image_digest = _image_digest(client, ref)
    image = Reference(ref.registry, ref.repository, "", image_digest)
    tag = Reference(ref.registry, ref.repository, signature_tag(image_digest))
    try:
        found = _existing(client, tag)
        layers = signature_layers(found[0] if found else None)
    except SignatureError as err:
        raise type(err)(f"{image}: {err}") from None
    if not layers:
        where = f"{tag.tag} holds no signature" if found else f"nothing is tagged {tag.tag}"
        raise NoSignature(f"{image}: no signature ({where})")
    verified: list[Payload] = []
    failures: list[SignatureError] = []
    for layer in layers:
        say(f"checking signature {layer.digest.short}")
        try:
            payload = _read_payload(client, repository, layer)
            verified.append(verify_signature(key, layer, payload, digest=image_digest, repository=repository))
        except SignatureError as err:
            failures.append(err)
        except RegistryNotFound:
            failures.append(InvalidSignature(f"payload {layer.digest.short} is missing from the registry"))
    if verified:
        return Verified(image, tuple(verified), len(layers))
    worst = min(failures, key=lambda err: next((i for i, kind in enumerate(_RANK) if isinstance(err, kind)), 99))
    count = f" ({len(layers)} signatures checked)" if len(layers) > 1 else ""
    raise type(worst)(f"{image}: {worst}{count}")
