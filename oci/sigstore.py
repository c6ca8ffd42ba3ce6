"""Image signatures in the sigstore (cosign) layout: the simple-signing payload, its signature, and the manifest
that carries them, as cosign writes them and as containers/image (skopeo, podman) reads them.

For an image whose manifest digest is ``sha256:HEX`` in ``HOST/REPO``:

- the payload is ``{"critical":{"identity":{"docker-reference":"HOST/REPO"},"image":{"docker-manifest-digest":
  "sha256:HEX"},"type":"cosign container image signature"},"optional":null}`` (cosign's bytes: keys in this order,
  no whitespace); the signature is ECDSA P-256 with SHA-256 over those exact bytes, DER, then base64;
- the signature manifest is an OCI image manifest tagged ``sha256-HEX.sig`` in the same repository. Each layer is one
  signature: media type ``application/vnd.dev.cosign.simplesigning.v1+json``, the payload's digest and size, and the
  signature in the annotation ``dev.cosignproject.cosign/signature``. Its config (``application/vnd.oci.image.config.
  v1+json``) is the near-empty image config go-containerregistry writes for cosign, whose ``rootfs.diff_ids`` list the
  payloads. Signing again appends a layer, so every earlier signature stays valid.

Pure: bytes and key objects in, values out. Fetching, pushing and key files are ``builder.signing``'s.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature as _BadSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from oci import mediatypes as mt
from oci.canonical import canonical_json, load_json_object
from oci.descriptor import Descriptor
from oci.digest import Digest
from oci.errors import InvalidDigest, InvalidDocument, InvalidReference, VerificationError
from oci.frozen import FrozenMap
from oci.manifest import Manifest, parse_manifest
from oci.reference import Reference

__all__ = [
    "InvalidSignature",
    "KeyMismatch",
    "NoSignature",
    "Payload",
    "PublicKey",
    "SIGNATURE_ANNOTATION",
    "SIGNATURE_TYPE",
    "SIMPLE_SIGNING",
    "SignatureError",
    "SignedDigestMismatch",
    "SignedIdentityMismatch",
    "parse_payload",
    "parse_signature_manifest",
    "sign_payload",
    "signature_layer",
    "signature_layers",
    "signature_manifest",
    "signature_tag",
    "verify_payload",
    "verify_signature",
]

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
_ZERO_TIME = "0001-01-01T00:00:00Z"  # what Go writes for a zero time.Time, as cosign's configs carry

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


class SignatureError(VerificationError):
    """An image whose signatures do not verify. Subclasses say why, from the least to the most telling."""


class NoSignature(SignatureError):
    pass


class InvalidSignature(SignatureError):
    """A signature layer that is malformed: missing annotation, bad base64, payload not what the layer says."""


class KeyMismatch(SignatureError):
    pass


class SignedIdentityMismatch(SignatureError):
    pass


class SignedDigestMismatch(SignatureError):
    pass


@dataclass(frozen=True, slots=True)
class Payload:
    """What a signature says: this manifest digest is an image of this repository."""

    docker_reference: str
    manifest_digest: Digest
    optional: FrozenMap[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "critical": {
                "identity": {"docker-reference": self.docker_reference},
                "image": {"docker-manifest-digest": str(self.manifest_digest)},
                "type": SIGNATURE_TYPE,
            },
            "optional": self.optional.to_dict() if self.optional is not None else None,
        }

    def encode(self) -> bytes:
        """The bytes to sign: sorted keys give cosign's field order."""
        return canonical_json(self.to_json())


def _exact(value: Any, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidSignature(f"{what} is not an object")
    if set(value) != keys:
        raise InvalidSignature(f"{what} has fields {sorted(value)}, expected {sorted(keys)}")
    return value


def parse_payload(raw: bytes) -> Payload:
    """Read a payload as strictly as containers/image does: exactly the critical fields, nothing else in them."""
    try:
        data = load_json_object(raw, "signature payload")
    except InvalidDocument as err:
        raise InvalidSignature(str(err)) from None
    _exact(data, {"critical", "optional"}, "signature payload")
    critical = _exact(data["critical"], {"type", "image", "identity"}, "payload 'critical'")
    if critical["type"] != SIGNATURE_TYPE:
        raise InvalidSignature(f"unrecognised signature type {critical['type']!r}")
    image = _exact(critical["image"], {"docker-manifest-digest"}, "payload 'critical.image'")
    identity = _exact(critical["identity"], {"docker-reference"}, "payload 'critical.identity'")
    reference = identity["docker-reference"]
    if not isinstance(reference, str) or not reference:
        raise InvalidSignature("payload docker-reference must be a non-empty string")
    try:
        digest = Digest.parse(image["docker-manifest-digest"])
    except InvalidDigest as err:
        raise InvalidSignature(f"payload docker-manifest-digest: {err}") from None
    optional = data["optional"]
    if optional is not None and not isinstance(optional, dict):
        raise InvalidSignature("payload 'optional' must be an object or null")
    return Payload(reference, digest, FrozenMap(optional) if optional is not None else None)


# --- signatures


def sign_payload(key: ec.EllipticCurvePrivateKey, payload: bytes) -> str:
    """ECDSA with SHA-256 over ``payload``: the DER signature, base64 (the annotation's value)."""
    return base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode("ascii")


def verify_payload(key: PublicKey, payload: bytes, signature: str) -> bool:
    """Whether ``signature`` (base64) is ``key``'s over ``payload``, with SHA-256 as sigstore hard-codes it."""
    try:
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidSignature("the signature annotation is not base64") from None
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(raw, payload, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(raw, payload, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(raw, payload)
        else:
            raise InvalidSignature(f"unsupported public key type {type(key).__name__}")
    except _BadSignature:
        return False
    return True


def verify_signature(
    key: PublicKey, layer: Descriptor, payload: bytes, *, digest: Digest, repository: Reference
) -> Payload:
    """Check one signature layer and its payload bytes against ``key``, the image's manifest ``digest`` and its
    ``repository`` (the name must match; a tag is ignored, as skopeo's ``matchRepository`` does). Returns the
    payload, or raises the ``SignatureError`` that says what is wrong."""
    if layer.media_type != SIMPLE_SIGNING:
        raise InvalidSignature(f"layer {layer.digest.short} is {layer.media_type}, not a simple-signing payload")
    if len(payload) != layer.size or Digest.of_bytes(payload, layer.digest.algorithm) != layer.digest:
        raise InvalidSignature(f"payload {layer.digest.short} does not match its digest")
    signature = layer.annotations.get(SIGNATURE_ANNOTATION)
    if not signature:
        raise InvalidSignature(f"layer {layer.digest.short} has no {SIGNATURE_ANNOTATION} annotation")
    if not verify_payload(key, payload, signature):
        raise KeyMismatch("signature does not match the key")
    parsed = parse_payload(payload)
    if parsed.manifest_digest != digest:
        raise SignedDigestMismatch(f"signed digest {parsed.manifest_digest} but the image is {digest}")
    try:
        signed_name = Reference.parse(parsed.docker_reference).name
    except InvalidReference:
        signed_name = parsed.docker_reference
    if signed_name != repository.name:
        raise SignedIdentityMismatch(f"signed for {parsed.docker_reference}, not {repository.name}")
    return parsed


# --- the signature manifest


def signature_tag(digest: Digest) -> str:
    """The tag of an image's signature manifest: ``sha256-HEX.sig``."""
    return f"{digest.algorithm}-{digest.encoded}.sig"


def signature_layer(payload: bytes, signature: str) -> Descriptor:
    return Descriptor(
        SIMPLE_SIGNING, Digest.of_bytes(payload), len(payload), annotations=FrozenMap({SIGNATURE_ANNOTATION: signature})
    )


def signature_layers(manifest: Manifest | None) -> tuple[Descriptor, ...]:
    if manifest is None:
        return ()
    return tuple(layer for layer in manifest.layers if layer.media_type == SIMPLE_SIGNING)


def signature_manifest(layers: Sequence[Descriptor]) -> tuple[Manifest, bytes]:
    """The signature manifest holding ``layers``, and its config's bytes (the config must be pushed with it)."""
    config = canonical_json(
        {
            "architecture": "",
            "config": {},
            "created": _ZERO_TIME,
            "history": [{"created": _ZERO_TIME} for _ in layers],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [str(layer.digest) for layer in layers]},
        }
    )
    descriptor = Descriptor(mt.OCI_CONFIG, Digest.of_bytes(config), len(config))
    return Manifest(descriptor, tuple(layers), mt.OCI_MANIFEST), config


def parse_signature_manifest(raw: bytes, media_type: str) -> Manifest:
    """A fetched ``.sig`` manifest; containers/image reads only OCI image manifests there, and so do we."""
    if media_type != mt.OCI_MANIFEST:
        raise InvalidSignature(f"the signature manifest is {media_type}, not {mt.OCI_MANIFEST}")
    try:
        return parse_manifest(raw, media_type, "signature manifest")
    except InvalidDocument as err:
        raise InvalidSignature(str(err)) from None
