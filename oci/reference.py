"""Image references (``registry/repository[:tag][@digest]``), normalised as Docker does.

``busybox`` is ``docker.io/library/busybox:latest``; ``user/app`` is ``docker.io/user/app:latest``; a first
component with a ``.`` or ``:`` in it, or ``localhost``, names a registry. The grammar is distribution's
reference grammar; a repository must be lowercase.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from oci.digest import Digest
from oci.errors import InvalidDigest, InvalidReference

__all__ = ["DOCKER_HUB", "Reference"]

DOCKER_HUB = "docker.io"
_LEGACY_HUB = "index.docker.io"  # the only host Docker rewrites to docker.io
_NAME_MAX = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_IMAGE_ID = re.compile(r"[a-f0-9]{64}")


@dataclass(frozen=True, slots=True)
class Reference:
    registry: str
    repository: str
    tag: str = ""
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str, *, default_tag: str = "latest") -> Reference:
        """Parse and normalise a reference. A reference with neither tag nor digest gets ``default_tag``."""
        if not isinstance(text, str) or not text:
            raise InvalidReference("empty image reference")
        if _IMAGE_ID.fullmatch(text):
            raise InvalidReference(f"invalid repository name {text!r}: cannot be a 64-character hexadecimal string")
        rest = text
        digest: Digest | None = None
        if "@" in rest:
            rest, _, digest_text = rest.partition("@")
            try:
                digest = Digest.parse(digest_text)
            except InvalidDigest as err:
                raise InvalidReference(f"invalid reference {text!r}: {err}") from None
        tag = ""
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG.fullmatch(tag):
                raise InvalidReference(f"invalid tag {tag!r} in reference {text!r}")
        registry, repository = _split_registry(rest, text)
        if not tag and digest is None:
            tag = default_tag
        return cls(registry, repository, tag, digest)

    @property
    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def familiar(self) -> str:
        """The name as ``docker images`` shows it: ``busybox`` rather than ``docker.io/library/busybox``."""
        if self.registry != DOCKER_HUB:
            return self.name
        if self.repository.startswith("library/") and self.repository.count("/") == 1:
            return self.repository[len("library/") :]
        return self.repository

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag, None)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def _split_registry(name: str, text: str) -> tuple[str, str]:
    first, sep, remainder = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry, repository = first, remainder
        if not _DOMAIN.fullmatch(registry):
            raise InvalidReference(f"invalid registry {registry!r} in reference {text!r}")
    else:
        registry, repository = DOCKER_HUB, name
    if registry == _LEGACY_HUB:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not repository:
        raise InvalidReference(f"invalid reference {text!r}: missing repository")
    components = repository.split("/")
    for component in components:
        if not _COMPONENT.fullmatch(component):
            if component.lower() != component and _COMPONENT.fullmatch(component.lower()):
                raise InvalidReference(f"invalid reference {text!r}: repository name must be lowercase")
            raise InvalidReference(f"invalid reference format {text!r}")
    if len(registry) + 1 + len(repository) > _NAME_MAX:
        raise InvalidReference(f"invalid reference {text!r}: name longer than {_NAME_MAX} characters")
    return registry, repository
