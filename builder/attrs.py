"""buildx's option values made of comma-separated ``key=value`` attributes: ``--output``, ``--cache-to``,
``--cache-from``. Parsed as buildx parses them: a CSV record (so a value may be quoted to hold a comma), keys
lowercased, booleans as Go's ``strconv.ParseBool`` reads them. Wrong values are ``UsageError``s naming the flag.
"""

from __future__ import annotations

import csv
import difflib
from collections.abc import Iterable

from builder.errors import UsageError

__all__ = ["csv_fields", "go_bool", "key_values", "suggest"]


def csv_fields(text: str, flag: str) -> list[str]:
    """The CSV fields of ``text``."""
    try:
        return next(csv.reader([text], strict=True), [])
    except csv.Error as err:
        raise UsageError(f"{flag} {text!r}: {err}") from None


def key_values(fields: Iterable[str], flag: str) -> dict[str, str]:
    """``key=value`` fields as a dict, keys lowercased (a later key wins, as in buildx)."""
    attrs: dict[str, str] = {}
    for item in fields:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"{flag}: invalid value {item!r} (expected key=value)")
        attrs[key.strip().lower()] = value
    return attrs


def go_bool(where: str, key: str, value: str) -> bool:
    """Go's strconv.ParseBool, which buildx and BuildKit use; an empty value means true (``oci-mediatypes=``)."""
    if value in ("", "1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise UsageError(f"{where}: {key}={value!r} is not a boolean")


def suggest(word: str, options: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest of ``options``, or nothing."""
    close = difflib.get_close_matches(word, sorted(options), n=1)
    return f" (did you mean {close[0]}?)" if close else ""
