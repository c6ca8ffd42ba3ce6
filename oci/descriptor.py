"""Descriptors and platforms: the frozen values that point at content and say what it runs on.

``from_json`` functions type-check every field of untrusted documents; ``to_json`` gives the dict that
``oci.canonical`` encodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from oci.digest import Digest
from oci.errors import InvalidDigest, InvalidDocument
from oci.frozen import FrozenMap

__all__ = ["Descriptor", "Platform", "REF_NAME", "string_map", "string_list"]

#: The annotation that names a tag in an image layout's index.json.
REF_NAME = "org.opencontainers.image.ref.name"

_COMPONENT = re.compile(r"^[A-Za-z0-9_-]+$")
_KNOWN_OS = frozenset(
    "aix android darwin dragonfly freebsd hurd illumos ios js linux nacl netbsd openbsd plan9 solaris windows "
    "zos".split()
)
_KNOWN_ARCH = frozenset(
    "386 amd64 amd64p32 arm armbe arm64 arm64be ppc64 ppc64le loong64 mips mipsle mips64 mips64le mips64p32 "
    "mips64p32le ppc riscv riscv64 s390 s390x sparc sparc64 wasm".split()
)
# containerd's normalizeArch: name -> (architecture, variant implied by the name)
_ARCH_ALIASES = {
    "i386": ("386", ""),
    "x86_64": ("amd64", ""),
    "x86-64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
}


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, default: Platform | None = None) -> Platform:
        """Parse a platform specifier as containerd does: ``os/arch[/variant]``, or a lone OS or architecture
        completed from ``default`` (the machine's platform). Names are normalised."""
        if "*" in text:
            raise ValueError(f'"{text}": wildcards not yet supported: invalid argument')
        parts = text.split("/")
        for part in parts:
            if not _COMPONENT.fullmatch(part):
                raise ValueError(
                    f'"{part}" is an invalid component of "{text}": platform specifier component must match '
                    f'"{_COMPONENT.pattern}": invalid argument'
                )
        parts = [part.lower() for part in parts]
        if len(parts) == 1:
            name = parts[0]
            if name in _KNOWN_OS and default is not None:
                return cls(name, default.architecture, default.variant).normalized()
            arch = _ARCH_ALIASES.get(name, (name, ""))[0]
            if arch in _KNOWN_ARCH and default is not None:
                return cls(default.os, name).normalized()
            raise ValueError(f'"{text}": unknown operating system or architecture: invalid argument')
        if len(parts) in (2, 3):
            return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "").normalized()
        raise ValueError(f'"{text}": cannot parse platform specifier: invalid argument')

    def normalized(self) -> Platform:
        arch, implied = _ARCH_ALIASES.get(self.architecture, (self.architecture, ""))
        variant = self.variant or implied
        if arch == "arm64" and variant in ("8", "v8", "v8.0"):
            variant = ""
        elif arch == "arm" and variant in ("", "7"):
            variant = "v7"
        elif arch == "arm" and variant in ("5", "6", "8"):
            variant = "v" + variant
        elif arch == "amd64" and variant == "v1":
            variant = ""
        return replace(self, architecture=arch, variant=variant)

    def matches(self, other: Platform) -> bool:
        """Whether an image for ``other`` satisfies a request for this platform."""
        mine, theirs = self.normalized(), other.normalized()
        return (mine.os, mine.architecture, mine.variant) == (theirs.os, theirs.architecture, theirs.variant)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @classmethod
    def from_json(cls, data: Any) -> Platform:
        if not isinstance(data, dict):
            raise InvalidDocument("platform is not an object")
        return cls(
            os=_str(data, "os", required=True),
            architecture=_str(data, "architecture", required=True),
            variant=_str(data, "variant"),
            os_version=_str(data, "os.version"),
            os_features=tuple(string_list(data.get("os.features"), "platform os.features")),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        return out


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    annotations: FrozenMap[str, str] = field(default_factory=FrozenMap)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise InvalidDocument(f"descriptor size must be a non-negative integer, not {self.size!r}")

    @property
    def ref_name(self) -> str | None:
        return self.annotations.get(REF_NAME)

    def with_annotations(self, **changes: str | None) -> Descriptor:
        """A copy with annotations set (or removed, for a value of None)."""
        data = self.annotations.to_dict()
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        return replace(self, annotations=FrozenMap(data))

    def with_ref_name(self, name: str | None) -> Descriptor:
        data = self.annotations.to_dict()
        if name is None:
            data.pop(REF_NAME, None)
        else:
            data[REF_NAME] = name
        return replace(self, annotations=FrozenMap(data))

    @classmethod
    def from_json(cls, data: Any, what: str = "descriptor") -> Descriptor:
        if not isinstance(data, dict):
            raise InvalidDocument(f"{what} is not an object")
        media_type = _str(data, "mediaType", required=True, what=what)
        digest_text = _str(data, "digest", required=True, what=what)
        try:
            digest = Digest.parse(digest_text)
        except InvalidDigest as err:
            raise InvalidDocument(f"{what}: {err}") from None
        size = data.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidDocument(f"{what}: size must be a non-negative integer")
        platform = data.get("platform")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations=string_map(data.get("annotations"), f"{what} annotations"),
            platform=Platform.from_json(platform) if platform is not None else None,
            urls=tuple(string_list(data.get("urls"), f"{what} urls")),
            artifact_type=_str(data, "artifactType", what=what),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.annotations:
            out["annotations"] = self.annotations.to_dict()
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.urls:
            out["urls"] = list(self.urls)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out


def _str(data: dict[str, Any], key: str, *, required: bool = False, what: str = "document") -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise InvalidDocument(f"{what}: missing {key!r}")
        return ""
    if not isinstance(value, str):
        raise InvalidDocument(f"{what}: {key!r} must be a string")
    return value


def string_map(value: Any, what: str) -> FrozenMap[str, str]:
    """Type-check a JSON object of strings (annotations, labels); null means empty."""
    if value is None:
        return FrozenMap()
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidDocument(f"{what} must be an object of strings")
    return FrozenMap(value)


def string_list(value: Any, what: str) -> list[str]:
    """Type-check a JSON array of strings; null means empty."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidDocument(f"{what} must be an array of strings")
    return list(value)
