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
"""

from oci.descriptor import Descriptor, Platform
from oci.digest import Digest
from oci.errors import OCIError
from oci.reference import Reference

__all__ = ["Descriptor", "Digest", "OCIError", "Platform", "Reference"]
