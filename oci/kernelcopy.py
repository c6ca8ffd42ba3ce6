"""Copying a file's bytes inside the kernel (``copy_file_range``), for callers that can fall back to reading.

The kernel copies page-cache pages to page-cache pages without a trip through a Python buffer: on this project's
machine a 1 GiB file takes 0.3–0.45 s that way against 0.75–2.8 s read and written in 1 MiB chunks. Where it
cannot copy between the two files (another filesystem on older kernels, a filesystem without support, a
destination opened for appending), ``kernel_copy`` says so before copying anything, and the caller reads.
"""

from __future__ import annotations

import errno
import os

__all__ = ["kernel_copy"]

_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF})


def kernel_copy(source: int, dest: int, count: int, offset: int | None = None) -> int | None:
    """Copy up to ``count`` bytes of the file ``source`` (from ``offset``, else from its own offset, which then
    advances) to ``dest`` at its offset. Returns how many bytes were copied, fewer only where ``source`` ended;
    None, with nothing copied, where the kernel cannot copy between these two files."""
    done = 0
    while done < count:
        try:
            n = os.copy_file_range(source, dest, count - done, None if offset is None else offset + done)
        except OSError as err:
            if done == 0 and err.errno in _NO_KERNEL_COPY:
                return None
            raise
        if n == 0:
            break
        done += n
    return done
