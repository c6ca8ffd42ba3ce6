"""``RUN --mount=...`` specifications: parsed and checked as BuildKit does.

A mount is a CSV list of ``key=value`` fields (plus the bare words ``ro``, ``rw`` and ``required``). The syntax
is checked when the Dockerfile is parsed (``check_mount_syntax``); values may hold variables, so the full check
runs on the expanded text when the plan reaches the step (``parse_mount``). ``from`` never expands: BuildKit
refuses a variable there ("define alias stage instead").
"""

from __future__ import annotations

import csv
import difflib
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass

from builder.errors import DockerfileError

__all__ = ["MOUNT_TYPES", "MountSpec", "check_mount_syntax", "parse_mount"]

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
_SHARING = ("shared", "private", "locked")
_KEYS = (
    "type",
    "from",
    "source",
    "src",
    "target",
    "dst",
    "destination",
    "readonly",
    "ro",
    "readwrite",
    "rw",
    "id",
    "sharing",
    "required",
    "mode",
    "uid",
    "gid",
    "env",
    "size",
)
_BARE = ("readonly", "ro", "readwrite", "rw", "required")
_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([kmgtp]?)(i?b?)$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
_VARIABLE = re.compile(r"\$.")


@dataclass(frozen=True, slots=True)
class MountSpec:
    type: str = "bind"
    target: str = ""
    source: str = ""
    from_: str = ""
    readonly: bool = True
    id: str = ""
    sharing: str = ""
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    required: bool = False
    env: str = ""
    size: int = 0


def _fields(value: str) -> list[str]:
    try:
        rows = list(csv.reader([value], strict=True))
    except csv.Error as err:
        raise DockerfileError(f"failed to parse csv mounts: {err}") from None
    return rows[0] if rows else []


def check_mount_syntax(value: str) -> None:
    """What can be checked before expansion: CSV, ``key=value`` shape, known keys, no variable in ``from``."""
    for field in _fields(value):
        key, eq, rest = field.partition("=")
        key = key.lower()
        if not eq:
            if key not in _BARE:
                raise DockerfileError(f"invalid field '{field}' must be a key=value pair")
            continue
        if key not in _KEYS:
            close = difflib.get_close_matches(key, _KEYS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise DockerfileError(f"unexpected key '{key}' in '{field}'{hint}")
        if key == "from" and _VARIABLE.search(rest):
            raise DockerfileError("'from' doesn't support variable expansion, define alias stage instead")


def _bool(key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "t", "true"):
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise DockerfileError(f"invalid value for {key}: {value}")


def _uint(key: str, value: str, base: int) -> int:
    try:
        number = int(value, base)
    except ValueError:
        raise DockerfileError(f"invalid value {value} for {key}") from None
    if number < 0 or number >= 2**32:
        raise DockerfileError(f"invalid value {value} for {key}")
    return number


def _size(value: str) -> int:
    match = _SIZE.match(value.strip())
    if match is None:
        raise DockerfileError(f"invalid size {value!r} for tmpfs mount")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_mount(value: str, expand: Callable[[str], str] = str) -> MountSpec:
    """A fully checked mount; ``expand`` is applied to each field's value (never to ``from``)."""
    check_mount_syntax(value)
    fields = []
    for field in _fields(value):
        key, eq, rest = field.partition("=")
        fields.append(f"{key}={expand(rest)}" if eq and key.lower() != "from" else field)
    kind = "bind"
    for field in fields:
        key, eq, rest = field.partition("=")
        if eq and key.lower() == "type":
            kind = rest.lower()
            if kind not in MOUNT_TYPES:
                close = difflib.get_close_matches(kind, MOUNT_TYPES, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise DockerfileError(f"unsupported mount type {rest!r}{hint}")
    values: dict[str, object] = {"type": kind}
    readonly_set = False
    for field in fields:
        key, eq, rest = field.partition("=")
        key = key.lower()
        if key == "type":
            continue
        if key in ("readonly", "ro"):
            values["readonly"] = _bool(key, rest) if eq else True
            readonly_set = True
        elif key in ("readwrite", "rw"):
            values["readonly"] = not (_bool(key, rest) if eq else True)
            readonly_set = True
        elif key == "required":
            if kind not in ("secret", "ssh"):
                raise DockerfileError(f"unexpected key 'required' for mount type '{kind}'")
            values["required"] = _bool(key, rest) if eq else True
        elif key == "from":
            values["from_"] = rest
        elif key in ("source", "src"):
            values["source"] = rest
        elif key in ("target", "dst", "destination"):
            values["target"] = rest
        elif key == "id":
            values["id"] = rest
        elif key == "sharing":
            if rest.lower() not in _SHARING:
                raise DockerfileError(f"unsupported sharing value {rest!r}")
            values["sharing"] = rest.lower()
        elif key == "mode":
            values["mode"] = _uint("mode", rest, 8)
        elif key == "uid":
            values["uid"] = _uint("uid", rest, 10)
        elif key == "gid":
            values["gid"] = _uint("gid", rest, 10)
        elif key == "env":
            if kind != "secret":
                raise DockerfileError(f"unexpected key 'env' for mount type '{kind}'")
            values["env"] = rest
        elif key == "size":
            if kind != "tmpfs":
                raise DockerfileError(f"unexpected key 'size' for mount type '{kind}'")
            values["size"] = _size(rest)
    if not readonly_set:
        values["readonly"] = kind not in ("cache", "tmpfs")
    spec = MountSpec(**values)  # type: ignore[arg-type]
    return _check(spec)


def _check(spec: MountSpec) -> MountSpec:
    kind = spec.type
    file_info = kind in ("secret", "ssh", "cache")
    for name, value in (("mode", spec.mode), ("uid", spec.uid), ("gid", spec.gid)):
        if value is not None and not file_info:
            raise DockerfileError(f"{name} not allowed for {kind!r} type mounts")
    if spec.sharing and kind != "cache":
        raise DockerfileError(f"invalid cache sharing set for {kind} mount")
    if kind in ("bind", "cache", "tmpfs") and not spec.target:
        raise DockerfileError(f"mount type {kind!r} needs a target")
    if kind == "secret":
        if spec.from_:
            raise DockerfileError("secret mount should not have a from")
        if not (spec.id or spec.target or spec.env):
            raise DockerfileError("invalid secret mount. one of id, target or env is required")
        if spec.source and spec.id:
            raise DockerfileError("both source and id can't be set")
        secret_id = spec.id or spec.source or posixpath.basename(spec.target)
        target = spec.target or ("" if spec.env else f"/run/secrets/{secret_id}")
        return MountSpec(**{**_as_dict(spec), "id": secret_id, "source": "", "target": target})
    if kind == "ssh":
        return MountSpec(**{**_as_dict(spec), "id": spec.id or "default"})
    return spec


def _as_dict(spec: MountSpec) -> dict[str, object]:
    return {name: getattr(spec, name) for name in MountSpec.__slots__}  # type: ignore[attr-defined]
