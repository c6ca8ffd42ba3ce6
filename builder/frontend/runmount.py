"""``RUN --mount=...`` specifications: parsed and checked as BuildKit does.

A mount is one CSV record (read as Go's encoding/csv reads it) of ``key=value`` fields plus the bare words
``ro``, ``rw`` and ``required``. Fields are taken in the order written, as BuildKit takes them, so ``required``
before ``type=secret`` is refused there too. The syntax is checked when the Dockerfile is parsed
(``check_mount_syntax``); values may hold variables, so the full check runs on each value after expansion when
the plan reaches the step (``parse_mount``). ``from`` never expands: BuildKit refuses a variable there
("define alias stage instead").
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from builder.errors import DockerfileError
from builder.frontend.gostyle import go_quote, with_suggestion

__all__ = ["MOUNT_TYPES", "MountSpec", "check_mount_syntax", "parse_mount"]

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
_SHARING = ("shared", "private", "locked")
_KEYS = (
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "ro",
    "rw",
    "readwrite",
    "destination",
    "env",
    "size",
)
_BARE = ("readonly", "ro", "readwrite", "rw", "required")
# go-units RAMInBytes (Go's \d is ASCII); compiled (by re, once) when a tmpfs mount gives a size
_SIZE = r"^([0-9]+(?:\.[0-9]+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$"
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


def _csv_error(column: int, problem: str) -> DockerfileError:
    return DockerfileError(f"failed to parse csv mounts: parse error on line 1, column {column}: {problem}")


def _csv_record(value: str) -> list[str]:
    """One record, as Go's csv.Reader reads it (a quote inside an unquoted field is an error)."""
    if value == "":
        raise DockerfileError("failed to parse csv mounts: EOF")
    fields_: list[str] = []
    i, n = 0, len(value)
    while True:
        if i < n and value[i] == '"':
            i += 1
            text: list[str] = []
            while True:
                if i >= n:
                    raise _csv_error(n + 1, 'extraneous or missing " in quoted-field')
                if value[i] == '"':
                    if i + 1 < n and value[i + 1] == '"':
                        text.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                text.append(value[i])
                i += 1
            if i < n and value[i] != ",":
                raise _csv_error(i + 1, 'extraneous or missing " in quoted-field')
            fields_.append("".join(text))
        else:
            end = value.find(",", i)
            end = n if end < 0 else end
            field = value[i:end]
            quote = field.find('"')
            if quote >= 0:
                raise _csv_error(i + quote + 1, 'bare " in non-quoted-field')
            fields_.append(field)
            i = end
        if i >= n:
            return fields_
        i += 1  # the comma


def check_mount_syntax(value: str) -> None:
    """What can be checked before expansion: CSV, ``key=value`` shape, known keys, no variable in ``from``."""
    for field in _csv_record(value):
        key, eq, rest = field.partition("=")
        key = key.lower()
        if not eq:
            if key not in _BARE:
                raise DockerfileError(f"invalid field '{field}' must be a key=value pair")
            continue
        if key not in _KEYS:
            raise DockerfileError(with_suggestion(f"unexpected key '{key}' in '{field}'", key, _KEYS))
        if key == "from" and _VARIABLE.search(rest):
            raise DockerfileError(f"'{key}' doesn't support variable expansion, define alias stage instead")


def _bool(key: str, value: str) -> bool:
    # Go's strconv.ParseBool
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise DockerfileError(f"invalid value for {key}: {value}")


def _uint(key: str, value: str, base: int) -> int:
    digits = "01234567" if base == 8 else "0123456789"
    # strconv.ParseUint(value, base, 32); int() refuses more than 4300 digits, leading zeros included
    significant = value.lstrip("0") or "0"
    if not value or any(c not in digits for c in value) or len(significant) > 11 or int(significant, base) >= 2**32:
        raise DockerfileError(f"invalid value {value} for {key}")
    return int(significant, base)


def _size(value: str) -> int:
    match = re.match(_SIZE, value)
    invalid = DockerfileError(f"invalid value for size: {value}")
    if match is None:
        raise invalid
    try:
        size = float(match.group(1))  # strconv.ParseFloat: "1.2.3" matches the pattern but is no number
    except ValueError:
        raise invalid from None
    size *= _SIZE_UNITS[(match.group(2) or "").lower()]
    if not size < 2**63:
        raise invalid  # ParseFloat's range error, or more than the int64 it becomes can hold
    return int(size)


def parse_mount(value: str, expand: Callable[[str], str] = str) -> MountSpec:
    """A fully checked mount; ``expand`` is applied to each field's value (never to ``from``)."""
    check_mount_syntax(value)
    spec = MountSpec()
    readonly_set = False
    for field in _csv_record(value):
        key, eq, rest = field.partition("=")
        key = key.lower()
        if not eq:
            if key in ("readonly", "ro"):
                spec, readonly_set = replace(spec, readonly=True), True
            elif key in ("readwrite", "rw"):
                spec, readonly_set = replace(spec, readonly=False), True
            elif spec.type in ("secret", "ssh"):  # "required"
                spec = replace(spec, required=True)
            else:
                raise DockerfileError(f"unexpected key 'required' for mount type '{spec.type}'")
            continue
        if key != "from":
            rest = expand(rest)
        if key == "type":
            kind = rest.lower()
            if kind not in MOUNT_TYPES:
                raise DockerfileError(with_suggestion(f"unsupported mount type {go_quote(rest)}", rest, MOUNT_TYPES))
            spec = replace(spec, type=kind)
        elif key == "from":
            spec = replace(spec, from_=rest)
        elif key in ("source", "src"):
            spec = replace(spec, source=rest)
        elif key in ("target", "dst", "destination"):
            spec = replace(spec, target=rest)
        elif key in ("readonly", "ro"):
            spec, readonly_set = replace(spec, readonly=_bool(key, rest)), True
        elif key in ("readwrite", "rw"):
            spec, readonly_set = replace(spec, readonly=not _bool(key, rest)), True
        elif key == "required":
            if spec.type not in ("secret", "ssh"):
                raise DockerfileError(f"unexpected key '{key}' for mount type '{spec.type}'")
            spec = replace(spec, required=_bool(key, rest))
        elif key == "id":
            spec = replace(spec, id=rest)
        elif key == "sharing":
            if rest.lower() not in _SHARING:
                raise DockerfileError(with_suggestion(f"unsupported sharing value {go_quote(rest)}", rest, _SHARING))
            spec = replace(spec, sharing=rest.lower())
        elif key == "mode":
            spec = replace(spec, mode=_uint("mode", rest, 8))
        elif key == "uid":
            spec = replace(spec, uid=_uint("uid", rest, 10))
        elif key == "gid":
            spec = replace(spec, gid=_uint("gid", rest, 10))
        elif key == "env":
            if spec.type != "secret":
                raise DockerfileError(f"unexpected key '{key}' for mount type '{spec.type}'")
            spec = replace(spec, env=rest)
        elif key == "size":
            if spec.type != "tmpfs":
                raise DockerfileError(f"unexpected key '{key}' for mount type '{spec.type}'")
            spec = replace(spec, size=_size(rest))
    if not readonly_set:
        spec = replace(spec, readonly=spec.type not in ("cache", "tmpfs"))
    return _check(spec)


def _check(spec: MountSpec) -> MountSpec:
    kind = spec.type
    file_info = kind in ("secret", "ssh", "cache")
    for name, value in (("mode", spec.mode), ("uid", spec.uid), ("gid", spec.gid)):
        if value is not None and not file_info:
            raise DockerfileError(f"{name} not allowed for {go_quote(kind)} type mounts")
    if spec.sharing and kind != "cache":
        raise DockerfileError(f"invalid cache sharing set for {kind} mount")
    if kind in ("bind", "cache", "tmpfs") and not spec.target:
        raise DockerfileError(f"mount type {go_quote(kind)} needs a target")
    if kind == "secret":
        if spec.from_:
            raise DockerfileError("secret mount should not have a from")
        if not (spec.id or spec.source or spec.target or spec.env):
            raise DockerfileError("invalid secret mount. one of id, target or env is required")
        if spec.source and spec.id:
            raise DockerfileError("both source and id can't be set")
        secret_id = spec.id or spec.source or posixpath.basename(spec.target)
        target = spec.target or ("" if spec.env else f"/run/secrets/{secret_id}")
        return replace(spec, id=secret_id, source="", target=target)
    if kind == "ssh":
        return replace(spec, id=spec.id or "default")
    return spec
