"""A build request: the user's options as one frozen value, and reading the Dockerfile it names.

Docker's rules: ``CONTEXT`` is a directory or ``-`` (a Dockerfile on standard input and no context); ``-f`` is
relative to the current directory and defaults to ``CONTEXT/Dockerfile`` (or ``CONTEXT/dockerfile``);
``-f -`` reads the Dockerfile from standard input. ``--build-arg NAME`` without a value takes it from the
environment, and is left out when the environment has none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from builder.errors import ContextError, DockerfileError, UsageError
from builder.platforms import host_platform
from oci.descriptor import Platform
from oci.frozen import FrozenMap

__all__ = [
    "BuildRequest",
    "parse_build_args",
    "parse_key_values",
    "parse_platform",
    "read_dockerfile",
    "resolve_paths",
]

#: Larger Dockerfiles are refused before parsing (BuildKit's gRPC limit is far below this).
MAX_DOCKERFILE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class BuildRequest:
    context: Path | None  # None: no context (CONTEXT is "-")
    dockerfile: Path | None  # None: standard input
    build_args: FrozenMap[str, str] = field(default_factory=FrozenMap)
    target: str = ""
    platform: Platform | None = None
    labels: FrozenMap[str, str] = field(default_factory=FrozenMap)
    contexts: FrozenMap[str, str] = field(default_factory=FrozenMap)
    tags: tuple[str, ...] = ()

    @property
    def dockerfile_label(self) -> str:
        """How errors name the Dockerfile: as the user gave it, else "Dockerfile"."""
        if self.dockerfile is None:
            return "Dockerfile"
        return str(self.dockerfile)


def parse_key_values(items: Sequence[str], option: str) -> FrozenMap[str, str]:
    """``K=V`` options (``--label``); a missing ``=`` or an empty key is a usage error."""
    result: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"{option} {item!r}: expected KEY=VALUE")
        result[key] = value
    return FrozenMap(result)


def parse_build_args(items: Sequence[str], environ: Mapping[str, str]) -> FrozenMap[str, str]:
    result: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key:
            raise UsageError(f"--build-arg {item!r}: expected NAME[=VALUE]")
        if eq:
            result[key] = value
        elif key in environ:
            result[key] = environ[key]
    return FrozenMap(result)


def resolve_paths(context: str, dockerfile: str | None) -> tuple[Path | None, Path | None]:
    """The context directory and the Dockerfile path for the CLI's CONTEXT and -f."""
    if context == "-":
        if dockerfile not in (None, "-"):
            raise UsageError("-f cannot be used when the Dockerfile comes from standard input (CONTEXT is -)")
        return None, None
    root = Path(context)
    if root.exists() and not root.is_dir():
        raise ContextError(f"unable to prepare context: context must be a directory: {context}")
    if not root.is_dir():
        raise ContextError(f'unable to prepare context: path "{context}" not found')
    if dockerfile == "-":
        return root, None
    if dockerfile is not None:
        return root, Path(dockerfile)
    for name in ("Dockerfile", "dockerfile"):
        candidate = root / name
        if candidate.exists():
            return root, candidate
    return root, root / "Dockerfile"


def read_dockerfile(request: BuildRequest, stdin: BinaryIO) -> bytes:
    if request.dockerfile is None:
        data = stdin.read(MAX_DOCKERFILE_BYTES + 1)
    else:
        try:
            with open(request.dockerfile, "rb") as f:
                data = f.read(MAX_DOCKERFILE_BYTES + 1)
        except FileNotFoundError:
            raise ContextError(
                f"{request.dockerfile_label}: no such file", hint="name the Dockerfile with -f"
            ) from None
        except IsADirectoryError:
            raise ContextError(f"{request.dockerfile_label}: is a directory, not a Dockerfile") from None
        except OSError as err:
            raise ContextError(f"{request.dockerfile_label}: {err.strerror}") from None
    if len(data) > MAX_DOCKERFILE_BYTES:
        raise ContextError(f"{request.dockerfile_label}: larger than {MAX_DOCKERFILE_BYTES} bytes")
    if not data.strip():
        raise DockerfileError("the Dockerfile cannot be empty", path=request.dockerfile_label)
    return data


def parse_platform(text: str | None) -> Platform | None:
    if not text:
        return None
    if "," in text:
        raise UsageError("building for several platforms at once is not supported yet (give one --platform)")
    try:
        return Platform.parse(text, default=host_platform())
    except ValueError as err:
        raise UsageError(str(err)) from None
