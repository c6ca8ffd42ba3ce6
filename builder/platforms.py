"""The platform this machine builds for by default."""

from __future__ import annotations

import os

from oci.descriptor import Platform

__all__ = ["host_platform"]


def host_platform() -> Platform:
    return Platform("linux", os.uname().machine).normalized()
