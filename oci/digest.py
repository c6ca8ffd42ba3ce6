"""Content digests: parsed once into a value, never passed around as bare strings.

``Digest`` is the validated ``<algorithm>:<hex>`` of the OCI spec. ``Hasher`` counts and hashes bytes as they
stream past; ``VerifyingReader`` wraps a stream and fails at end of file when its bytes do not match the digest
and size it was opened for. This module does no I/O of its own.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from typing import BinaryIO

from oci.errors import DigestMismatch, InvalidDigest, SizeMismatch

__all__ = ["Digest", "Hasher", "VerifyingReader", "SHA256"]

SHA256 = "sha256"

# The algorithms we can verify, with the exact form of their encoded part. Lowercase hex only: the spec
# registers sha256 and sha512 with ``[a-f0-9]{64}`` and ``[a-f0-9]{128}``.
_ENCODED = {
    "sha256": re.compile(r"[a-f0-9]{64}"),
    "sha512": re.compile(r"[a-f0-9]{128}"),
}
_GRAMMAR = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A validated content digest such as ``sha256:2c26…``."""

    algorithm: str
    encoded: str

    def __post_init__(self) -> None:
        pattern = _ENCODED.get(self.algorithm)
        if pattern is None:
            raise InvalidDigest(f"unsupported digest algorithm {self.algorithm!r}")
        if not isinstance(self.encoded, str) or not pattern.fullmatch(self.encoded):
            raise InvalidDigest(f"invalid {self.algorithm} digest {self.encoded!r}")

    @classmethod
    def parse(cls, text: str) -> Digest:
        if not isinstance(text, str):
            raise InvalidDigest(f"digest must be a string, not {type(text).__name__}")
        match = _GRAMMAR.fullmatch(text)
        if match is None:
            raise InvalidDigest(f"invalid digest {text[:100]!r}")
        return cls(match.group(1), match.group(2))

    @classmethod
    def of_bytes(cls, data: bytes, algorithm: str = SHA256) -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    @property
    def short(self) -> str:
        """The first 12 hex digits, as image IDs are shown."""
        return self.encoded[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"


class Hasher:
    """Hashes and counts bytes fed to it."""

    __slots__ = ("_hash", "_algorithm", "size")

    def __init__(self, algorithm: str = SHA256) -> None:
        if algorithm not in _ENCODED:
            raise InvalidDigest(f"unsupported digest algorithm {algorithm!r}")
        self._algorithm = algorithm
        self._hash = hashlib.new(algorithm)
        self.size = 0

    @property
    def algorithm(self) -> str:
        return self._algorithm

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)

    def digest(self) -> Digest:
        return Digest(self._algorithm, self._hash.hexdigest())


class VerifyingReader(io.RawIOBase):
    """A read-only stream that checks digest and size when its source is exhausted.

    Reading past the expected size, or reaching end of file with different bytes, raises
    ``SizeMismatch`` or ``DigestMismatch``. Closing it closes the source.
    """

    def __init__(self, source: BinaryIO, expected: Digest, size: int | None = None, name: str = "") -> None:
        super().__init__()
        self._source = source
        self._expected = expected
        self._size = size
        self._hasher = Hasher(expected.algorithm)
        self._name = name or str(expected)
        self._done = False
        self._error: Exception | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._error is not None:
            raise self._error
        if self._done:
            return 0
        view = memoryview(buffer).cast("B")
        n = self._source.readinto(view) if hasattr(self._source, "readinto") else _readinto(self._source, view)
        if n:
            self._hasher.update(view[:n])
            if self._size is not None and self._hasher.size > self._size:
                self._error = SizeMismatch(f"{self._name}: more than the expected {self._size} bytes")
                raise self._error
            return n
        self._done = True
        self._check()
        return 0

    def _check(self) -> None:
        if self._size is not None and self._hasher.size != self._size:
            self._error = SizeMismatch(f"{self._name}: expected {self._size} bytes, got {self._hasher.size}")
        elif (actual := self._hasher.digest()) != self._expected:
            self._error = DigestMismatch(f"{self._name}: content has digest {actual}")
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        try:
            self._source.close()
        finally:
            super().close()


def _readinto(source: BinaryIO, view: memoryview) -> int:
    data = source.read(len(view))
    view[: len(data)] = data
    return len(data)
