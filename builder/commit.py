"""Committing images: a config and its layers become a stored manifest, as new immutable values.

Timestamps come from ``SOURCE_DATE_EPOCH`` when it is set, so the same inputs give the same digests.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from builder.errors import UsageError
from oci import mediatypes as mt
from oci.config import ImageConfig
from oci.descriptor import Descriptor
from oci.image import Image
from oci.layout import ImageLayout
from oci.manifest import Manifest

__all__ = ["rfc3339", "source_date_epoch", "store_image"]


def source_date_epoch(environ: Mapping[str, str]) -> int | None:
    text = environ.get("SOURCE_DATE_EPOCH", "")
    if not text:
        return None
    if not text.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH must be a number of seconds, not {text!r}")
    return int(text)


def rfc3339(epoch: float | None = None) -> str:
    """``epoch`` (default: now) as RFC 3339 UTC, to the second."""
    moment = datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def store_image(layout: ImageLayout, config: ImageConfig, layers: Sequence[Descriptor]) -> Image:
    """Store ``config`` and a manifest over ``layers`` (whose blobs are already stored); return the image."""
    if len(layers) != len(config.diff_ids):
        raise ValueError(f"{len(layers)} layers but {len(config.diff_ids)} diff_ids")
    raw_config = config.encode()
    config_digest = layout.store.put_bytes(raw_config)
    manifest = Manifest(
        config=Descriptor(mt.OCI_CONFIG, config_digest, len(raw_config)),
        layers=tuple(layers),
    )
    raw_manifest = manifest.encode()
    manifest_digest = layout.store.put_bytes(raw_manifest)
    return Image(layout.store, Descriptor(mt.OCI_MANIFEST, manifest_digest, len(raw_manifest)))
