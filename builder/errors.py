"""The error tree of the builder; ``builder.cli`` alone turns these into messages and exit codes.

BuildError                  exit 1
├── ImageNotFound           a name that matches no image in the store
├── RootfsImportError       a rootfs that cannot be imported
└── UsageError              exit 2: the command line is wrong
"""

from __future__ import annotations

__all__ = ["BuildError", "ImageNotFound", "RootfsImportError", "UsageError"]


class BuildError(Exception):
    """Root of the builder's errors. ``hint`` is an optional second sentence for the user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class ImageNotFound(BuildError):
    pass


class RootfsImportError(BuildError):
    pass


class UsageError(BuildError):
    exit_code = 2
