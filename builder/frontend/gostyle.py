"""Go's formatting, so pybuild's messages and history strings read exactly as BuildKit's.

``go_quote`` is strconv.Quote (what ``%q`` prints for a string), ``go_quote_rune`` is what ``%q`` prints for an
integer (a quoted rune), ``suggest`` is BuildKit's util/suggest (Levenshtein distance below 3, matching the
case of what was typed), ``parse_duration`` is time.ParseDuration with its error messages, ``parse_int`` is
strconv.ParseInt in base 10 (ASCII digits only, unlike ``int``), and ``path_match`` is path/filepath.Match (COPY's
wildcards).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from builder.errors import DockerfileError

__all__ = [
    "go_quote",
    "go_quote_rune",
    "has_wildcards",
    "levenshtein",
    "parse_duration",
    "parse_int",
    "path_match",
    "suggest",
    "with_suggestion",
]

_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v", "\\": "\\\\"}


def _printable(ch: str) -> bool:
    """Go's unicode.IsPrint: letters, marks, numbers, punctuation, symbols and the ASCII space."""
    if " " <= ch <= "~":  # ASCII's printable characters, the space among them: no Unicode table needed
        return True
    import unicodedata  # here, not at the top: loading its tables costs a millisecond a build need not pay

    return unicodedata.category(ch)[0] in "LMNPS"


def _escape(ch: str, quote: str) -> str:
    if ch == quote:
        return "\\" + ch
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if _printable(ch):
        return ch
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def go_quote(text: str) -> str:
    return '"' + "".join(_escape(ch, '"') for ch in text) + '"'


def go_quote_rune(value: int) -> str:
    """``%q`` of an integer: a single-quoted rune ('\\x03' for 3, '\\n' for 10, 'A' for 65)."""
    if not 0 <= value <= 0x10FFFF or 0xD800 <= value <= 0xDFFF:
        return "'\\ufffd'"
    return "'" + _escape(chr(value), "'") + "'"


def levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _match_case(option: str, typed: str) -> str:
    if typed == typed.lower():
        return option.lower()
    if typed == typed.upper():
        return option.upper()
    return option


def suggest(value: str, options: Iterable[str], case_sensitive: bool = True) -> str | None:
    """The closest option within 2 edits, or None; an exact match means there is nothing to suggest."""
    typed = value
    if not case_sensitive:
        value = value.lower()
    match = None
    best = 3
    for option in options:
        candidate = option if case_sensitive else option.lower()
        if candidate == value:
            return None
        distance = levenshtein(value, candidate)
        if distance < best:
            match = candidate if case_sensitive else _match_case(candidate, typed)
            best = distance
    return match


def with_suggestion(message: str, value: str, options: Iterable[str], case_sensitive: bool = True) -> str:
    close = suggest(value, options, case_sensitive)
    return f"{message} (did you mean {close}?)" if close else message


_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5
    "μs": 1_000,  # U+03BC
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_MAX_INT64 = (1 << 63) - 1


def parse_int(text: str, bits: int = 64) -> int:
    """strconv.ParseInt(text, 10, bits): an optional sign and ASCII digits. Raises ``ValueError`` with Go's reason,
    "invalid syntax" or "value out of range" (checked before ``int``, which refuses over 4300 digits)."""
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError("invalid syntax")
    digits = text.lstrip("+-").lstrip("0") or "0"  # int() refuses more than 4300 digits, leading zeros included
    if len(digits) > 20:
        raise ValueError("value out of range")
    value = -int(digits) if text.startswith("-") else int(digits)
    if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
        raise ValueError("value out of range")
    return value


def parse_duration(text: str) -> int:
    """Go's time.ParseDuration, in nanoseconds."""
    original = text
    invalid = DockerfileError(f"time: invalid duration {go_quote(original)}")
    negative = False
    if text[:1] in ("-", "+"):
        negative = text[0] == "-"
        text = text[1:]
    if text == "0":
        return 0
    if text == "":
        raise invalid
    total = 0
    while text:
        i = 0
        while i < len(text) and text[i].isascii() and text[i].isdigit():
            i += 1
        whole = text[:i]
        text = text[i:]
        fraction = ""
        if text.startswith("."):
            text = text[1:]
            j = 0
            while j < len(text) and text[j].isascii() and text[j].isdigit():
                j += 1
            fraction = text[:j]
            text = text[j:]
        if not whole and not fraction:
            raise invalid
        j = 0
        while j < len(text) and text[j] != "." and not (text[j].isascii() and text[j].isdigit()):
            j += 1
        unit = text[:j]
        text = text[j:]
        if not unit:
            raise DockerfileError(f"time: missing unit in duration {go_quote(original)}")
        if unit not in _UNITS:
            raise DockerfileError(f"time: unknown unit {go_quote(unit)} in duration {go_quote(original)}")
        scale = _UNITS[unit]
        whole = whole.lstrip("0")  # int() refuses more than 4300 digits, leading zeros included
        if len(whole) > 19:
            raise invalid  # Go's leadingInt overflows
        value = int(whole or "0") * scale
        fraction = fraction[:19]  # Go's leadingFraction ignores the digits past what an int64 holds
        if fraction:
            value += int(fraction) * scale // 10 ** len(fraction)
        total += value
        if total > _MAX_INT64 + (1 if negative else 0):
            raise invalid
    return -total if negative else total


# ------------------------------------------------------------------------------------------- filepath.Match


def has_wildcards(name: str) -> bool:
    """fsutil's containsWildcards: an unescaped ``*``, ``?`` or ``[``."""
    i = 0
    while i < len(name):
        if name[i] == "\\":
            i += 2
            continue
        if name[i] in "*?[":
            return True
        i += 1
    return False


@lru_cache(maxsize=256)
def _match_regex(pattern: str) -> re.Pattern[str] | None:
    """``pattern`` as a regular expression, or None when Go would report ErrBadPattern."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            i += 1
            if i >= n:
                return None
            out.append(re.escape(pattern[i]))
        elif ch == "[":
            i += 1
            negate = i < n and pattern[i] == "^"
            if negate:
                i += 1
            ranges = []
            first = True
            while True:
                if i >= n:
                    return None
                if pattern[i] == "]" and not first:
                    break
                first = False
                lo, i = _class_char(pattern, i)
                if lo is None:
                    return None
                hi = lo
                if i < n and pattern[i] == "-":
                    hi, i = _class_char(pattern, i + 1)
                    if hi is None or hi < lo:
                        return None
                ranges.append(f"{re.escape(lo)}-{re.escape(hi)}")
            body = "".join(ranges)
            # Go's classes never match the separator, negated or not.
            out.append(f"(?!/)[^{body}]" if negate else f"(?!/)[{body}]")
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _class_char(pattern: str, i: int) -> tuple[str | None, int]:
    if i >= len(pattern) or pattern[i] in "-]":
        return None, i
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            return None, i
    return pattern[i], i + 1


def path_match(pattern: str, name: str) -> bool:
    """Go's filepath.Match on Linux: ``*`` and ``?`` never match ``/``; a malformed pattern matches nothing."""
    regex = _match_regex(pattern)
    return regex is not None and regex.fullmatch(name) is not None
