"""The content store: the only code that writes blobs.

A blob is streamed into a private temporary file in ``ingest/`` (on the same filesystem as ``blobs/``), hashed
and counted as it goes, checked against the digest and size the caller expected, fsynced and renamed into
``blobs/<alg>/<encoded>``; the directory is fsynced too. A reader therefore sees a whole, verified blob or
nothing, and a killed writer leaves only a temporary file that ``sweep`` removes. Writing a blob that already
exists is harmless (two writers of the same content both succeed). Reads verify: ``open`` returns a stream that
fails at end of file if the bytes on disk no longer match their name.

A big file's bytes can enter a blob without passing through Python (``BlobWriter.copy_file``): the kernel copies
them (``copy_file_range``) and the blob's own pages are then read back to be hashed, so the digest is always of
what was written, even if the source changes meanwhile.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from oci.digest import SHA256, Digest, Hasher, VerifyingReader
from oci.errors import (
    BlobNotFound,
    DigestMismatch,
    InvalidDigest,
    OCIError,
    SizeMismatch,
    StoreFull,
    VerificationError,
)
from oci.kernelcopy import kernel_copy

__all__ = ["BlobWriter", "ContentStore", "atomic_file", "fsync_dir", "pid_alive"]

_CHUNK = 1 << 20
_TEMP_SUFFIX = ".part"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobWriter:
    """A blob being written. Use as a context manager: leaving it without ``commit()`` discards the bytes."""

    def __init__(self, store: ContentStore, expected: Digest | None, expected_size: int | None) -> None:
        self._store = store
        self._expected = expected
        self._expected_size = expected_size
        self._hasher = Hasher(expected.algorithm if expected else SHA256)
        store.ingest_dir.mkdir(parents=True, exist_ok=True)
        fd, self._temp = _create_temp(store.ingest_dir)
        self._file = os.fdopen(fd, "wb", buffering=0)  # opened read-write: ``copy_file`` reads back what it copied
        self._done = False

    @property
    def size(self) -> int:
        return self._hasher.size

    @property
    def hasher(self) -> Hasher:
        """The running hash of the bytes written so far (``write_layer`` reuses it as an uncompressed layer's)."""
        return self._hasher

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        self._hasher.update(view)
        if self._expected_size is not None and self._hasher.size > self._expected_size:
            raise SizeMismatch(f"blob {self._expected}: more than the expected {self._expected_size} bytes")
        try:
            while view:
                written = self._file.write(view)
                view = view[written:]
        except OSError as err:
            raise _translate(err) from err
        return len(data)

    def copy_from(self, stream: BinaryIO) -> None:
        while chunk := stream.read(_CHUNK):
            self.write(chunk)

    def copy_file(self, source: int, count: int) -> int | None:
        """Append up to ``count`` bytes of the regular file ``source``, from its offset (which advances), copied by
        the kernel; then hash them from this blob's pages. Returns how many were copied (fewer only at the end of
        ``source``), or None, with nothing copied, where the kernel cannot copy between the two files."""
        if self._expected_size is not None and self._hasher.size + count > self._expected_size:
            return None  # ``write`` names the overflow
        start = self._hasher.size
        try:
            done = kernel_copy(source, self._file.fileno(), count)
        except OSError as err:
            raise _translate(err) from err
        if done is not None:
            self._hash_back(start, done)
        return done

    def _hash_back(self, offset: int, count: int) -> None:
        buf = memoryview(bytearray(min(count, _CHUNK) or 1))
        end = offset + count
        while offset < end:
            n = os.preadv(self._file.fileno(), [buf[: min(end - offset, len(buf))]], offset)
            if n == 0:
                raise OCIError(f"{self._temp}: shorter than the bytes just copied into it")
            self._hasher.update(buf[:n])
            offset += n

    def commit(self) -> Digest:
        """Verify, make durable and publish the blob; return its digest."""
        digest = self._hasher.digest()
        if self._expected_size is not None and self._hasher.size != self._expected_size:
            raise SizeMismatch(f"blob {self._expected}: expected {self._expected_size} bytes, got {self._hasher.size}")
        if self._expected is not None and digest != self._expected:
            raise DigestMismatch(f"blob {self._expected}: content has digest {digest}")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            target = self._store.path(digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(self._temp, 0o644)
            os.replace(self._temp, target)
            fsync_dir(target.parent)
        except OSError as err:
            raise _translate(err) from err
        self._done = True
        return digest

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._file.close()
        try:
            os.unlink(self._temp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


@contextmanager
def atomic_file(target: Path, temp_dir: Path | None = None, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A file that becomes ``target`` whole or not at all: written to a temporary file, fsynced, renamed over
    ``target``, and the directory fsynced; on any error the temporary file is removed and ``target`` untouched.

    The temporary file lives in ``temp_dir`` (same filesystem as ``target``; an ingest directory, whose sweep
    recognises ``<pid>-…`` names of dead writers), else beside ``target``, hidden.
    """
    name = f"{os.getpid()}-{os.urandom(6).hex()}-{target.name}{_TEMP_SUFFIX}"
    temp = temp_dir / name if temp_dir is not None else target.parent / f".{name}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def _create_temp(directory: Path) -> tuple[int, Path]:
    for _ in range(100):
        path = directory / f"{os.getpid()}-{os.urandom(8).hex()}{_TEMP_SUFFIX}"
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path
        except FileExistsError:
            continue
    raise OCIError(f"cannot create a temporary file in {directory}")


def _translate(err: OSError) -> OCIError | OSError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"no space left on device while writing a blob ({err.strerror})")
    return err


class ContentStore:
    """Blobs under ``blobs_dir``; temporary files under ``ingest_dir`` (same filesystem)."""

    def __init__(self, blobs_dir: Path, ingest_dir: Path) -> None:
        self.blobs_dir = Path(blobs_dir)
        self.ingest_dir = Path(ingest_dir)

    def path(self, digest: Digest) -> Path:
        # The Digest value guarantees a safe file name: lowercase hex only.
        return self.blobs_dir / digest.algorithm / digest.encoded

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: Digest) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None

    def writer(self, expected: Digest | None = None, size: int | None = None) -> BlobWriter:
        return BlobWriter(self, expected, size)

    def put(self, stream: BinaryIO, expected: Digest | None = None, size: int | None = None) -> tuple[Digest, int]:
        with self.writer(expected, size) as writer:
            writer.copy_from(stream)
            digest = writer.commit()
            return digest, writer.size

    def put_bytes(self, data: bytes, expected: Digest | None = None) -> Digest:
        digest = Digest.of_bytes(data)
        if expected is not None and expected != digest:
            raise DigestMismatch(f"blob {expected}: content has digest {digest}")
        if self.has(digest):
            try:
                self.verify(digest)
                return digest
            except VerificationError:
                pass  # a damaged copy: write it again
        with self.writer(digest, len(data)) as writer:
            writer.write(data)
            return writer.commit()

    def open(self, digest: Digest, size: int | None = None, *, verify: bool = True) -> BinaryIO:
        """A stream of the blob that raises ``DigestMismatch``/``SizeMismatch`` at the end if it is corrupt.

        ``verify=False`` gives the file itself (its size still checked), for a reader that checks the same bytes
        against the same digest on its own, such as ``apply_layer`` with an uncompressed layer's diff_id."""
        try:
            fd = os.open(self.path(digest), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found") from None
        raw = os.fdopen(fd, "rb", buffering=0)
        if size is not None and os.fstat(fd).st_size != size:
            actual = os.fstat(fd).st_size
            raw.close()
            raise SizeMismatch(f"blob {digest}: expected {size} bytes, found {actual}")
        if not verify:
            return raw  # type: ignore[return-value]
        return VerifyingReader(raw, digest, size, name=f"blob {digest}")  # type: ignore[return-value]

    def read(self, digest: Digest, max_size: int | None = None) -> bytes:
        """The whole blob, verified. ``max_size`` bounds what is read (for documents)."""
        if max_size is not None and self.size(digest) > max_size:
            raise SizeMismatch(f"blob {digest} is larger than {max_size} bytes")
        with self.open(digest) as stream:
            return stream.read()

    def verify(self, digest: Digest) -> None:
        with self.open(digest) as stream:
            while stream.read(_CHUNK):
                pass

    def delete(self, digest: Digest) -> None:
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            pass

    def __iter__(self) -> Iterator[Digest]:
        if not self.blobs_dir.is_dir():
            return
        for algorithm_dir in sorted(self.blobs_dir.iterdir()):
            if not algorithm_dir.is_dir():
                continue
            for blob in sorted(algorithm_dir.iterdir()):
                try:
                    yield Digest(algorithm_dir.name, blob.name)
                except InvalidDigest:
                    continue

    def sweep(self, older_than: float = 3600.0) -> int:
        """Remove temporary files left by writers that died; return how many. Live writers are spared by
        age (and by pid, when the pid in the name is still running)."""
        if not self.ingest_dir.is_dir():
            return 0
        removed = 0
        now = time.time()
        for temp in self.ingest_dir.iterdir():
            if not temp.name.endswith(_TEMP_SUFFIX):
                continue
            pid_text = temp.name.split("-", 1)[0]
            alive = pid_text.isdigit() and pid_alive(int(pid_text))
            try:
                old = now - temp.stat().st_mtime > older_than
            except FileNotFoundError:
                continue
            if not alive or old:
                try:
                    temp.unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (on this machine, in this pid namespace)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
