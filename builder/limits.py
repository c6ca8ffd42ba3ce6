"""How far one layer or archive may expand: the defaults, the user's settings, and what to say when one is hit.

Every place that unpacks something it did not write (a base image's layers into snapshots, ADD's archives,
``import``, ``load``, cache and cache-mount imports, ``export``, layer browsing) takes the store's ``ApplyLimits``
and checks them while the bytes stream in, so a decompression bomb costs at most the bound before it is refused.
The defaults are far above any real image's layer (the largest common ones are a few GiB) and stop a bomb long
before it fills a disk: 32 GiB of uncompressed tar and 10 million entries per layer. ``--max-layer-size`` and
``--max-layer-entries`` (or ``PYBUILD_MAX_LAYER_SIZE`` and ``PYBUILD_MAX_LAYER_ENTRIES``) change them; 0 lifts
a bound.
"""

from __future__ import annotations

from oci.apply import ApplyLimits
from oci.errors import LimitExceeded

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_LAYER_ENTRIES",
    "DEFAULT_MAX_LAYER_SIZE",
    "ENTRIES_ENV",
    "SIZE_ENV",
    "layer_limits",
    "limit_hint",
]

DEFAULT_MAX_LAYER_SIZE = 32 << 30
DEFAULT_MAX_LAYER_ENTRIES = 10_000_000
DEFAULT_LIMITS = ApplyLimits(max_bytes=DEFAULT_MAX_LAYER_SIZE, max_entries=DEFAULT_MAX_LAYER_ENTRIES)
SIZE_ENV = "PYBUILD_MAX_LAYER_SIZE"
ENTRIES_ENV = "PYBUILD_MAX_LAYER_ENTRIES"

_OPTIONS = {"bytes": "--max-layer-size", "entries": "--max-layer-entries"}


def layer_limits(max_size: int | None = None, max_entries: int | None = None) -> ApplyLimits:
    """The limits for the settings given (``None``: the default; 0: unbounded)."""
    size = DEFAULT_MAX_LAYER_SIZE if max_size is None else max_size
    entries = DEFAULT_MAX_LAYER_ENTRIES if max_entries is None else max_entries
    if size < 0 or entries < 0:
        raise ValueError("a layer limit cannot be negative")
    return ApplyLimits(max_bytes=size or None, max_entries=entries or None)


def limit_hint(err: BaseException) -> str:
    """How to raise the bound ``err`` hit, when it is one the user can set; else ""."""
    if isinstance(err, LimitExceeded) and err.bound in _OPTIONS:
        return f"raise it with {_OPTIONS[err.bound]}"
    return ""
