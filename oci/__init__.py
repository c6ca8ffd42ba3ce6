"""OCI image primitives: digests, descriptors, manifests, configs, layers, the content store and image layouts.

This package knows nothing of Dockerfiles or of pybuild's CLI. Modules are layered; a module imports only from
the levels below it (tests/test_import_rules.py holds the table):

    L0  errors, frozen, mediatypes, digest, canonical      pure
    L1  descriptor, reference                              pure
    L2  manifest, config                                   pure
    L3  compression, tarformat, layer, apply               streams and the filesystem
    L4  store, image
    L5  layout
"""

from oci.descriptor import Descriptor, Platform
from oci.digest import Digest
from oci.errors import OCIError
from oci.reference import Reference

__all__ = ["Descriptor", "Digest", "OCIError", "Platform", "Reference"]
