"""Sizes and durations as people type them on the command line: ``10GB``, ``512m``, ``2GiB``; ``24h``, ``7d``.

A module of its own, and a light one, so that parsing ``--max-layer-size`` or ``--filter until=24h`` imports no
more than ``re`` (``builder.cli`` declares them with every verb).
"""

from __future__ import annotations

import re

__all__ = ["parse_duration", "parse_size"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"(\d+(?:\.\d+)?) ?(?:([kKmMgGtT])([iI])?)?([bB])?")


def parse_duration(text: str) -> float:
    """A Go duration (``24h``, ``90m``, ``1h30m``, ``10s``, ``500ms``), or days (``7d``), in seconds."""
    if text == "0":
        return 0.0
    total, position = 0.0, 0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            break
        total += float(match[1]) * _DURATION_UNITS[match[2]]
        position = match.end()
    if not text or position < len(text):
        raise ValueError(f"invalid duration {text!r} (examples: 24h, 90m, 1h30m, 10s, 500ms, 7d)")
    return total


def parse_size(text: str) -> int:
    """Bytes from ``512MB``, ``10GB`` (decimal: kB, MB, GB, TB), ``1g``, ``100m``, ``2GiB``, ``1gb`` (binary, as
    Docker's RAMInBytes reads k, m, g, t with or without b or ib), or plain bytes."""
    match = _SIZE.fullmatch(text.strip())
    if match is None or not text.strip():
        raise ValueError(f"invalid size {text!r} (examples: 10GB, 512MB, 2GiB, 1g, 100m, 1048576)")
    number, letter, binary, byte = match.groups()
    multiplier = 1
    if letter is not None:
        power = "kmgt".index(letter.lower()) + 1
        decimal = byte == "B" and binary is None  # kB, MB, GB, TB as Docker prints them
        multiplier = (1000 if decimal else 1024) ** power
    return int(float(number) * multiplier)
