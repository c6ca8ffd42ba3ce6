"""Image manifests and indexes (OCI, and Docker schema 2 for reading) as frozen values.

``parse_manifest``/``parse_index`` check untrusted bytes: schema version, types of every field, and the
manifest/index ambiguity of CVE-2021-41190 (a document carrying both ``layers`` and ``manifests``, or a
``mediaType`` that contradicts the type it was fetched as). ``encode()`` gives the canonical bytes to store.
The raw bytes a document was read from are what its digest covers; they are never re-encoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from oci import mediatypes as mt
from oci.canonical import MAX_DOCUMENT_SIZE, canonical_json, load_json_object
from oci.descriptor import Descriptor, string_map
from oci.errors import InvalidDocument, UnsupportedMediaType
from oci.frozen import FrozenMap

__all__ = ["Index", "Manifest", "parse_document", "parse_index", "parse_manifest"]


@dataclass(frozen=True, slots=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str = mt.OCI_MANIFEST
    annotations: FrozenMap[str, str] = field(default_factory=FrozenMap)
    subject: Descriptor | None = None
    artifact_type: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        if self.annotations:
            out["annotations"] = self.annotations.to_dict()
        if self.subject is not None:
            out["subject"] = self.subject.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    def encode(self) -> bytes:
        return canonical_json(self.to_json())


@dataclass(frozen=True, slots=True)
class Index:
    manifests: tuple[Descriptor, ...] = ()
    media_type: str = mt.OCI_INDEX
    annotations: FrozenMap[str, str] = field(default_factory=FrozenMap)
    subject: Descriptor | None = None
    artifact_type: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "manifests": [m.to_json() for m in self.manifests],
        }
        if self.annotations:
            out["annotations"] = self.annotations.to_dict()
        if self.subject is not None:
            out["subject"] = self.subject.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    def encode(self) -> bytes:
        return canonical_json(self.to_json())


def _load(raw: bytes, what: str) -> dict[str, Any]:
    if len(raw) > MAX_DOCUMENT_SIZE:
        raise InvalidDocument(f"{what} is larger than {MAX_DOCUMENT_SIZE} bytes")
    data = load_json_object(raw, what)
    if type(data.get("schemaVersion")) is not int or data.get("schemaVersion") != 2:
        raise InvalidDocument(f"{what}: unsupported schemaVersion {data.get('schemaVersion')!r}")
    return data


def _declared_type(data: dict[str, Any], expected: str | None, what: str) -> str | None:
    declared = data.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise InvalidDocument(f"{what}: mediaType must be a string")
    if declared and expected and declared != expected:
        raise InvalidDocument(f"{what}: mediaType {declared} does not match {expected}")
    return declared or expected


def parse_manifest(raw: bytes, media_type: str | None = None, what: str = "manifest") -> Manifest:
    """Parse an image manifest; ``media_type`` is the type it was fetched or described as, if known."""
    data = _load(raw, what)
    kind = _declared_type(data, media_type, what) or mt.OCI_MANIFEST
    if not mt.is_manifest(kind):
        raise UnsupportedMediaType(f"{what}: {kind} is not an image manifest")
    if "manifests" in data:
        raise InvalidDocument(f"{what}: has both 'layers' and 'manifests' (ambiguous document)")
    layers = data.get("layers")
    if not isinstance(layers, list):
        raise InvalidDocument(f"{what}: 'layers' must be an array")
    subject = data.get("subject")
    artifact_type = data.get("artifactType") or ""
    if not isinstance(artifact_type, str):
        raise InvalidDocument(f"{what}: artifactType must be a string")
    return Manifest(
        config=Descriptor.from_json(data.get("config"), f"{what} config"),
        layers=tuple(Descriptor.from_json(d, f"{what} layer {i}") for i, d in enumerate(layers)),
        media_type=kind,
        annotations=string_map(data.get("annotations"), f"{what} annotations"),
        subject=Descriptor.from_json(subject, f"{what} subject") if subject is not None else None,
        artifact_type=artifact_type,
    )


def parse_index(raw: bytes, media_type: str | None = None, what: str = "index") -> Index:
    data = _load(raw, what)
    kind = _declared_type(data, media_type, what) or mt.OCI_INDEX
    if not mt.is_index(kind):
        raise UnsupportedMediaType(f"{what}: {kind} is not an image index")
    if "layers" in data or "config" in data:
        raise InvalidDocument(f"{what}: has both 'manifests' and 'layers' or 'config' (ambiguous document)")
    manifests = data.get("manifests")
    if not isinstance(manifests, list):
        raise InvalidDocument(f"{what}: 'manifests' must be an array")
    subject = data.get("subject")
    artifact_type = data.get("artifactType") or ""
    if not isinstance(artifact_type, str):
        raise InvalidDocument(f"{what}: artifactType must be a string")
    return Index(
        manifests=tuple(Descriptor.from_json(d, f"{what} entry {i}") for i, d in enumerate(manifests)),
        media_type=kind,
        annotations=string_map(data.get("annotations"), f"{what} annotations"),
        subject=Descriptor.from_json(subject, f"{what} subject") if subject is not None else None,
        artifact_type=artifact_type,
    )


def parse_document(raw: bytes, media_type: str | None = None, what: str = "document") -> Manifest | Index:
    """Parse a manifest or an index, by its declared media type or, failing that, by its shape."""
    if media_type is None:
        data = _load(raw, what)
        declared = data.get("mediaType")
        if isinstance(declared, str) and declared:
            media_type = declared
        elif "manifests" in data and "layers" not in data:
            media_type = mt.OCI_INDEX
        elif "layers" in data and "manifests" not in data:
            media_type = mt.OCI_MANIFEST
        else:
            raise InvalidDocument(f"{what}: neither a manifest nor an index")
    if mt.is_index(media_type):
        return parse_index(raw, media_type, what)
    if mt.is_manifest(media_type):
        return parse_manifest(raw, media_type, what)
    raise UnsupportedMediaType(f"{what}: unsupported media type {media_type}")
