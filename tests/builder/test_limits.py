"""``builder.limits``: the default bounds on a layer, the user's settings, and the hint an exceeded bound gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.limits import DEFAULT_LIMITS, layer_limits, limit_hint
from builder.root import open_store
from oci.apply import ApplyLimits
from oci.errors import LimitExceeded, UnsafeEntry, size_text


def test_the_defaults_are_far_above_a_real_layer_and_far_below_a_full_disk() -> None:
    assert DEFAULT_LIMITS.max_bytes == 32 << 30
    assert DEFAULT_LIMITS.max_entries == 10_000_000
    assert layer_limits() == DEFAULT_LIMITS
    # The path bounds stay the applier's own.
    assert (DEFAULT_LIMITS.max_path_bytes, DEFAULT_LIMITS.max_depth) == (ApplyLimits().max_path_bytes, 1024)


def test_settings_replace_the_defaults_and_zero_lifts_a_bound() -> None:
    assert layer_limits(1 << 20, 500) == ApplyLimits(max_bytes=1 << 20, max_entries=500)
    assert layer_limits(0, 0) == ApplyLimits(max_bytes=None, max_entries=None)
    assert layer_limits(1 << 20) == ApplyLimits(max_bytes=1 << 20, max_entries=10_000_000)
    with pytest.raises(ValueError, match="negative"):
        layer_limits(-1)


def test_a_store_carries_its_limits(tmp_path: Path) -> None:
    assert open_store(tmp_path / "a").limits == DEFAULT_LIMITS
    assert open_store(tmp_path / "b", layer_limits(0, 0)).limits.max_bytes is None


def test_the_hint_names_the_option_that_raises_the_bound() -> None:
    assert limit_hint(LimitExceeded.too_large("layer", 1 << 20)) == "raise it with --max-layer-size"
    assert limit_hint(LimitExceeded.too_many_entries("layer", 10)) == "raise it with --max-layer-entries"
    assert limit_hint(LimitExceeded("'x'...: deeper than 1024 directories", "depth")) == ""
    assert limit_hint(UnsafeEntry("x")) == ""


@pytest.mark.parametrize(
    ("size", "text"),
    [(1 << 20, "1 MiB"), (32 << 30, "32 GiB"), (16 << 10, "16 KiB"), (2 << 40, "2 TiB"), (1_000_000, "1000000-byte")],
)
def test_limits_are_named_in_binary_units_when_they_are_whole(size: int, text: str) -> None:
    assert size_text(size) == text
    assert str(LimitExceeded.too_large("archive", size)) == f"archive expands to more than the {text} limit"
