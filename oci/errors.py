"""The error tree of the oci library.

Every failure the library reports is an ``OCIError``; callers turn them into exit codes in one place
(``builder.cli``). Messages are short, lowercase and carry the object they are about.

    OCIError
    ├── InvalidDigest            a digest string that is not <alg>:<encoded>
    ├── InvalidReference         an image reference that does not parse
    ├── InvalidDocument          a manifest, index or config that is malformed or ambiguous
    │   └── UnsupportedMediaType
    ├── VerificationError        bytes that do not match what describes them
    │   ├── DigestMismatch
    │   └── SizeMismatch
    ├── BlobNotFound
    ├── StoreFull                no space left while writing a blob
    ├── CompressionError         a stream that does not decompress
    ├── LayoutError              a directory that is not a usable OCI image layout
    └── LayerError               a layer tar that cannot be written or applied
        ├── InvalidArchive       malformed tar headers
        ├── UnsafeEntry          an entry that would touch something outside the root
        └── LimitExceeded        a layer larger than the configured bounds
"""

from __future__ import annotations

__all__ = [
    "BlobNotFound",
    "CompressionError",
    "DigestMismatch",
    "InvalidArchive",
    "InvalidDigest",
    "InvalidDocument",
    "InvalidReference",
    "LayerError",
    "LayoutError",
    "LimitExceeded",
    "OCIError",
    "SizeMismatch",
    "StoreFull",
    "UnsafeEntry",
    "UnsupportedMediaType",
    "VerificationError",
    "size_text",
]


class OCIError(Exception):
    """Root of every error raised by the oci library."""


class InvalidDigest(OCIError, ValueError):
    pass


class InvalidReference(OCIError, ValueError):
    pass


class InvalidDocument(OCIError, ValueError):
    pass


class UnsupportedMediaType(InvalidDocument):
    pass


class VerificationError(OCIError):
    pass


class DigestMismatch(VerificationError):
    pass


class SizeMismatch(VerificationError):
    pass


class BlobNotFound(OCIError):
    pass


class StoreFull(OCIError):
    pass


class CompressionError(OCIError):
    pass


class LayoutError(OCIError):
    pass


class LayerError(OCIError):
    pass


class InvalidArchive(LayerError):
    pass


class UnsafeEntry(LayerError):
    pass


class LimitExceeded(LayerError):
    """A bound of ``ApplyLimits`` was hit; ``bound`` says which: "bytes" (the expanded size), "entries", "path" or
    "depth", so that a caller can say how to raise it."""

    def __init__(self, message: str, bound: str = "") -> None:
        super().__init__(message)
        self.bound = bound

    @classmethod
    def too_large(cls, what: str, limit: int) -> LimitExceeded:
        return cls(f"{what} expands to more than the {size_text(limit)} limit", "bytes")

    @classmethod
    def too_many_entries(cls, what: str, limit: int) -> LimitExceeded:
        return cls(f"{what} has more than the {limit}-entry limit", "entries")


def size_text(size: int) -> str:
    """``1 MiB``, ``32 GiB``, ``1000000-byte``: a size as a limit is named."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size}-byte"
