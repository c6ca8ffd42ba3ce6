"""``--change`` instructions for ``pybuild import``: Dockerfile lines that edit an image's runtime config.

The set is ``docker import``'s: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, USER, VOLUME, WORKDIR, plus
STOPSIGNAL. Exec form (a JSON array) and shell form behave as in a Dockerfile, and quotes and backslashes are
removed as Dockerfile words are. Variable expansion (``$VAR``) is not done here yet; an instruction that would
expand one is refused rather than taken literally.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from dataclasses import replace

from builder.errors import UsageError
from oci.config import RuntimeConfig
from oci.frozen import FrozenMap

__all__ = ["SUPPORTED", "apply_changes"]

SUPPORTED = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR")
_EXPANDING = {"ENV", "EXPOSE", "LABEL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}
_DEFAULT_SHELL = ("/bin/sh", "-c")


def apply_changes(config: RuntimeConfig, changes: Sequence[str]) -> RuntimeConfig:
    for change in changes:
        config = _apply(config, change)
    return config


def _fail(change: str, message: str) -> UsageError:
    return UsageError(f"--change {change!r}: {message}")


def _apply(config: RuntimeConfig, change: str) -> RuntimeConfig:
    keyword, _, rest = change.strip().partition(" ")
    keyword = keyword.upper()
    rest = rest.strip()
    if keyword not in SUPPORTED:
        raise _fail(change, f"{keyword or 'an empty line'} is not supported (use one of {', '.join(SUPPORTED)})")
    if not rest:
        raise _fail(change, f"{keyword} needs an argument")
    if keyword in _EXPANDING and "$" in rest:
        raise _fail(change, "variable expansion is not supported in --change")
    if keyword in ("CMD", "ENTRYPOINT"):
        exec_form = _json_array(rest)
        argv = tuple(exec_form) if exec_form is not None else (*(config.shell or _DEFAULT_SHELL), rest)
        return replace(config, cmd=argv) if keyword == "CMD" else replace(config, entrypoint=argv, cmd=None)
    if keyword in ("ENV", "LABEL"):
        pairs = _pairs(rest, change, legacy=keyword == "ENV")
        if keyword == "LABEL":
            return replace(config, labels=FrozenMap({**config.labels, **dict(pairs)}))
        env = config.env_dict()
        env.update(pairs)
        return replace(config, env=tuple(f"{k}={v}" for k, v in env.items()))
    if keyword == "EXPOSE":
        ports = set(config.exposed_ports)
        for word in _words(rest, change):
            ports.update(_ports(word, change))
        return replace(config, exposed_ports=tuple(sorted(ports)))
    if keyword == "VOLUME":
        volumes = _json_array(rest)
        if volumes is None:
            volumes = _words(rest, change)
        if any(not v for v in volumes):
            raise _fail(change, "VOLUME paths must not be empty")
        return replace(config, volumes=tuple(sorted(set(config.volumes) | set(volumes))))
    if keyword == "WORKDIR":
        path = _unquote(rest, change)
        return replace(config, working_dir=posixpath.normpath(posixpath.join(config.working_dir or "/", path)))
    if keyword == "USER":
        return replace(config, user=_unquote(rest, change))
    if keyword == "STOPSIGNAL":
        return replace(config, stop_signal=_unquote(rest, change))
    # ONBUILD: stored as written, run by builds that use this image as a base.
    return replace(config, on_build=config.on_build + (rest,))


def _json_array(text: str) -> list[str] | None:
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _split(text: str, change: str) -> list[str]:
    """Split on unquoted whitespace, keeping quotes and escapes (Dockerfile ``parseWords``)."""
    words: list[str] = []
    current: list[str] = []
    quote = ""
    escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and quote != "'":
            current.append(ch)
            escaped = True
        elif quote:
            current.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            current.append(ch)
            quote = ch
        elif ch.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
    if quote:
        raise _fail(change, "unterminated quote")
    if current:
        words.append("".join(current))
    return words


def _unquote(word: str, change: str) -> str:
    """Remove quotes and escapes from one word, as the Dockerfile shell lexer does."""
    out: list[str] = []
    quote = ""
    chars = iter(word)
    for ch in chars:
        if quote == "'":
            if ch == "'":
                quote = ""
            else:
                out.append(ch)
        elif ch == "\\":
            nxt = next(chars, "")
            if quote == '"' and nxt not in ('"', "\\", "$", ""):
                out.append("\\")
            out.append(nxt)
        elif quote == '"':
            if ch == '"':
                quote = ""
            else:
                out.append(ch)
        elif ch in "'\"":
            quote = ch
        else:
            out.append(ch)
    if quote:
        raise _fail(change, "unterminated quote")
    return "".join(out)


def _words(text: str, change: str) -> list[str]:
    return [_unquote(w, change) for w in _split(text, change)]


def _pairs(text: str, change: str, *, legacy: bool) -> list[tuple[str, str]]:
    words = _split(text, change)
    if legacy and "=" not in words[0]:
        # ENV name value: the value is the rest of the line.
        name = words[0]
        value = text[len(name) :].strip()
        if not value:
            raise _fail(change, "ENV name needs a value")
        return [(name, _unquote(value, change))]
    pairs = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise _fail(change, f"{word!r} is not KEY=VALUE")
        pairs.append((_unquote(key, change), _unquote(value, change)))
    return pairs


def _ports(word: str, change: str) -> list[str]:
    spec, _, proto = word.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise _fail(change, f"invalid protocol {proto!r} in EXPOSE")
    low, dash, high = spec.partition("-")
    try:
        first = int(low)
        last = int(high) if dash else first
    except ValueError:
        raise _fail(change, f"invalid port {word!r} in EXPOSE") from None
    if not (0 < first <= last <= 65535):
        raise _fail(change, f"invalid port {word!r} in EXPOSE")
    return [f"{port}/{proto}" for port in range(first, last + 1)]
