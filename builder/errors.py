"""The error tree of the builder; ``builder.cli`` alone turns these into messages and exit codes.

    BuildError                  exit 1
    ├── DockerfileError         a problem in the Dockerfile; rendered "PATH:LINE: message"
    ├── ContextError            a build context that cannot be read as asked
    ├── ImageNotFound           a name that matches no image in the store
    ├── RootfsImportError       a rootfs that cannot be imported
    └── UsageError              exit 2: the command line is wrong

Front-end code raises ``DockerfileError(message)`` where it finds the problem, without knowing where it is; the
instruction parser, which knows, attaches the location once with ``located``.
"""

from __future__ import annotations

__all__ = ["BuildError", "ContextError", "DockerfileError", "ImageNotFound", "RootfsImportError", "UsageError"]


class BuildError(Exception):
    """Root of the builder's errors. ``hint`` is an optional second sentence for the user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class DockerfileError(BuildError):
    """A Dockerfile problem. ``line`` is 1-based; 0 means the location is not known (yet)."""

    def __init__(self, message: str, *, path: str = "", line: int = 0, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.path = path
        self.line = line

    def located(self, path: str, line: int) -> DockerfileError:
        """This error at ``path:line``, unless it already carries a location."""
        if self.line:
            return self
        return type(self)(self.message, path=path, line=line, hint=self.hint)

    def __str__(self) -> str:
        if self.line:
            return f"{self.path or 'Dockerfile'}:{self.line}: {self.message}"
        if self.path:
            return f"{self.path}: {self.message}"
        return self.message


class ContextError(BuildError):
    pass


class ImageNotFound(BuildError):
    pass


class RootfsImportError(BuildError):
    pass


class UsageError(BuildError):
    exit_code = 2
