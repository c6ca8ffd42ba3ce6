"""OCI image primitives: digests, descriptors, manifests, configs, layers, the content store and image layouts.

This package knows nothing of Dockerfiles or of pybuild's CLI. Modules are layered; a module imports only from
the levels below it (tests/test_import_rules.py holds the table):

    L0  errors, frozen, mediatypes      pure values and constants
    L1  digest, canonical               pure
    L2  descriptor, reference           pure
    L3  manifest, config                pure
    L4  compression, tarformat          streams
    L5  layer                           writing layers (reads the filesystem)
    L6  apply                           applying layers (writes the filesystem, confined)
    L7  store, image                    blobs on disk; image views
    L8  layout, docker_archive          the OCI image layout; docker save tarballs, both ways

The names below are loaded when first used, not when the package is: importing ``oci.errors`` (as every error
handler does) must not cost the digest, descriptor and reference modules.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from oci.descriptor import Descriptor, Platform
    from oci.digest import Digest
    from oci.errors import OCIError
    from oci.reference import Reference

__all__ = ["Descriptor", "Digest", "OCIError", "Platform", "Reference"]

_HOMES = {
    "Descriptor": "oci.descriptor",
    "Digest": "oci.digest",
    "OCIError": "oci.errors",
    "Platform": "oci.descriptor",
    "Reference": "oci.reference",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
