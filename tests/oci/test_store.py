"""The content store: verified atomic writes, verifying reads; a kill or a full disk leaves nothing partial."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, require_root

from oci.digest import Digest
from oci.errors import BlobNotFound, DigestMismatch, SizeMismatch, StoreFull
from oci.store import ContentStore


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "blobs", tmp_path / "ingest")


def _temps(store: ContentStore) -> list[str]:
    return sorted(os.listdir(store.ingest_dir)) if store.ingest_dir.exists() else []


def test_put_names_the_blob_after_its_content(store: ContentStore) -> None:
    digest, size = store.put(io.BytesIO(b"hello"))
    assert digest == Digest.of_bytes(b"hello")
    assert size == 5
    assert store.path(digest).read_bytes() == b"hello"
    assert store.path(digest) == store.blobs_dir / "sha256" / digest.encoded
    assert _temps(store) == []


def test_a_wrong_expected_digest_publishes_nothing(store: ContentStore) -> None:
    wrong = Digest.of_bytes(b"something else")
    with pytest.raises(DigestMismatch):
        store.put(io.BytesIO(b"hello"), expected=wrong)
    assert list(store) == []
    assert _temps(store) == []


@pytest.mark.parametrize("size", [4, 6])
def test_a_wrong_expected_size_publishes_nothing(store: ContentStore, size: int) -> None:
    with pytest.raises(SizeMismatch):
        store.put(io.BytesIO(b"hello"), expected=Digest.of_bytes(b"hello"), size=size)
    assert list(store) == []
    assert _temps(store) == []


def test_writing_the_same_blob_twice_is_harmless(store: ContentStore) -> None:
    first = store.put(io.BytesIO(b"same"))
    second = store.put(io.BytesIO(b"same"))
    assert first == second
    assert list(store) == [first[0]]


def test_put_bytes_repairs_a_damaged_copy(store: ContentStore) -> None:
    digest = store.put_bytes(b"document")
    os.chmod(store.path(digest), 0o644)
    store.path(digest).write_bytes(b"tampered")
    assert store.put_bytes(b"document") == digest
    assert store.read(digest) == b"document"


def test_reads_verify_content(store: ContentStore) -> None:
    digest = store.put_bytes(b"original content")
    store.path(digest).write_bytes(b"changed content!")  # same size, different bytes
    with pytest.raises(DigestMismatch):
        store.read(digest)
    with pytest.raises(DigestMismatch):
        store.verify(digest)


def test_reads_check_the_expected_size(store: ContentStore) -> None:
    digest = store.put_bytes(b"0123456789")
    with pytest.raises(SizeMismatch):
        store.open(digest, size=9)
    store.path(digest).write_bytes(b"01234")
    with pytest.raises(SizeMismatch):
        store.open(digest, size=10)


def test_a_missing_blob_is_reported_as_such(store: ContentStore) -> None:
    missing = Digest.of_bytes(b"never stored")
    with pytest.raises(BlobNotFound):
        store.open(missing)
    with pytest.raises(BlobNotFound):
        store.size(missing)
    assert not store.has(missing)


def test_read_refuses_a_blob_over_the_limit(store: ContentStore) -> None:
    digest = store.put_bytes(b"x" * 100)
    with pytest.raises(SizeMismatch):
        store.read(digest, max_size=99)


def test_iteration_lists_only_valid_blob_names(store: ContentStore) -> None:
    digest = store.put_bytes(b"a")
    (store.blobs_dir / "sha256" / "not-a-digest").write_bytes(b"")
    assert list(store) == [digest]
    store.delete(digest)
    store.delete(digest)  # deleting twice is fine
    assert list(store) == []


def test_an_aborted_writer_leaves_nothing(store: ContentStore) -> None:
    with pytest.raises(RuntimeError):
        with store.writer() as writer:
            writer.write(b"partial")
            raise RuntimeError("the producer failed")
    assert _temps(store) == []
    assert list(store) == []


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from oci.store import ContentStore
    store = ContentStore(Path(sys.argv[1]) / "blobs", Path(sys.argv[1]) / "ingest")
    writer = store.writer()
    writer.write(b"x" * 1_000_000)
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_a_killed_writer_leaves_only_a_temporary_file_that_sweep_removes(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, cwd=REPO, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    store = ContentStore(tmp_path / "blobs", tmp_path / "ingest")
    assert store.sweep() == 0, "a live writer's file must not be swept"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(store) == []
    assert len(_temps(store)) == 1
    assert store.sweep() == 1
    assert _temps(store) == []
    store.put_bytes(b"the store still works")


def test_a_full_disk_is_a_clear_error_and_leaves_no_partial_blob(tmp_path: Path) -> None:
    require_root()
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        store = ContentStore(small / "blobs", small / "ingest")
        with pytest.raises(StoreFull, match="no space left"):
            store.put(io.BytesIO(os.urandom(2_000_000)))
        assert list(store) == []
        assert _temps(store) == []
        digest = store.put_bytes(b"space is back")
        assert store.read(digest) == b"space is back"
    finally:
        subprocess.run(["umount", str(small)], check=True)
