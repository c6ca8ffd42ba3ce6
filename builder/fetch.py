"""ADD's downloads: an http(s) URL fetched to a file, its checksum verified, dated by Last-Modified.

The only place in the builder that speaks HTTP (registries have their own client in ``oci/``). The file is
streamed to disk, never held in memory; BuildKit's rules give it its name (the URL path's last element, else
``__unnamed__``) and mode (0600, set by the caller).
"""

from __future__ import annotations

import hashlib
import posixpath
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from builder.errors import BuildError

if TYPE_CHECKING:
    import requests

__all__ = ["Downloaded", "FetchError", "download", "url_file_name"]

_CHUNK = 1 << 20


class FetchError(BuildError):
    """A download that failed or did not match its --checksum."""


@dataclass(frozen=True)
class Downloaded:
    path: Path
    name: str
    mtime: int


def url_file_name(url: str) -> str:
    """The name BuildKit gives a downloaded file: the URL path's last element, else ``__unnamed__``."""
    base = posixpath.basename(urllib.parse.urlsplit(url).path)
    return base if base not in ("", ".", "..", "/") else "__unnamed__"  # "..": a name that would climb out


def _checker(checksum: str) -> tuple[str, str] | None:
    if not checksum:
        return None
    algorithm, _, expected = checksum.partition(":")
    if algorithm not in ("sha256", "sha384", "sha512"):
        raise FetchError(f"unsupported digest algorithm {algorithm!r} in --checksum")
    return algorithm, expected.lower()


def download(
    url: str,
    into: Path,
    *,
    checksum: str = "",
    session: requests.Session | None = None,
    timeout: float = 60.0,
    progress: Callable[[int], None] | None = None,
) -> Downloaded:
    """Fetch ``url`` into the directory ``into``, verifying ``--checksum``; the file's mtime is Last-Modified."""
    check = _checker(checksum)
    hasher = hashlib.new(check[0]) if check else None
    import requests  # here, not at the top: importing it costs every command ~70 ms, and few builds fetch

    http = session or requests.Session()
    name = url_file_name(url)
    target = into / "download"
    try:
        with http.get(url, stream=True, timeout=timeout, allow_redirects=True) as response:
            if response.status_code >= 400:
                raise FetchError(f"ADD {url}: invalid response status {response.status_code}")
            total = 0
            with open(target, "wb") as f:
                for chunk in response.iter_content(_CHUNK):
                    f.write(chunk)
                    total += len(chunk)
                    if hasher is not None:
                        hasher.update(chunk)
                    if progress is not None:
                        progress(total)
            modified = response.headers.get("Last-Modified", "")
    except requests.RequestException as err:
        raise FetchError(f"ADD {url}: {err}") from None
    if check is not None and hasher is not None and hasher.hexdigest() != check[1]:
        raise FetchError(f"ADD {url}: digest mismatch: got {check[0]}:{hasher.hexdigest()}, --checksum says {checksum}")
    mtime = 0
    if modified:
        import email.utils  # here, not at the top: a build that downloads nothing does not pay for it

        try:
            mtime = int(email.utils.parsedate_to_datetime(modified).timestamp())
        except (TypeError, ValueError):
            mtime = 0
    return Downloaded(target, name, mtime)
