"""The one JSON encoding pybuild writes for manifests, indexes, configs and cache records, and a strict reader.

Writing: keys sorted, no insignificant whitespace, UTF-8. The bytes this returns are the bytes that get
digested and stored, so a document is never re-encoded between hashing and writing.

Reading: a document with a repeated key is refused, since two readers could disagree about which one counts.
"""

from __future__ import annotations

import json
from typing import Any

from oci.errors import InvalidDocument

__all__ = ["MAX_DOCUMENT_SIZE", "canonical_json", "load_json_object"]

#: Manifests, indexes and configs larger than this are refused (buildah uses 4 MiB too).
MAX_DOCUMENT_SIZE = 4 * 1024 * 1024


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidDocument(f"repeated key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise InvalidDocument(f"{name} is not JSON")


def load_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """Parse ``raw`` as a JSON object; anything else raises ``InvalidDocument`` naming ``what``."""
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except InvalidDocument as err:
        raise InvalidDocument(f"{what}: {err}") from None
    except (ValueError, RecursionError) as err:  # bad UTF-8 or JSON, or an integer too long to convert
        raise InvalidDocument(f"{what} is not valid JSON: {str(err)[:200]}") from None
    if not isinstance(value, dict):
        raise InvalidDocument(f"{what} is not a JSON object")
    try:
        # A "\ud800" escape decodes to a lone surrogate, which no UTF-8 document can carry on.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidDocument(f"{what} has a string that is not valid Unicode") from None
    return value
