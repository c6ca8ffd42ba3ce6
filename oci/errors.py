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
    pass
