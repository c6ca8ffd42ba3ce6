"""Big files copied by the kernel: into a layer blob, and from a trusted layer blob into a tree.

Each fast path must give exactly the bytes (and the digest) of the ordinary path, fall back to it where the kernel
cannot copy, and refuse what the ordinary path refuses."""

from __future__ import annotations

import errno
import hashlib
import io
import os
from pathlib import Path

import pytest

from oci import apply as applying
from oci import kernelcopy
from oci import store as storing
from oci.apply import apply_layer
from oci.compression import Compression
from oci.digest import Digest
from oci.errors import DigestMismatch, LayerError
from oci.kernelcopy import kernel_copy
from oci.layer import LayerItem, write_layer
from oci.store import ContentStore
from oci.tarformat import EntryType, TarEntry

MIB = 1 << 20


def _content(size: int, seed: int) -> bytes:
    out = bytearray()
    block = hashlib.sha256(bytes([seed])).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:size])


@pytest.fixture
def blobs(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "blobs", tmp_path / "ingest")


def _files(tmp_path: Path) -> dict[str, bytes]:
    """Sizes around the 1 MiB threshold and block boundaries, and small files between the big ones."""
    contents = {
        "a-small": b"hello\n",
        "b-big": _content(3 * MIB + 17, 1),
        "c-small": b"x" * 700,
        "d-exact": _content(MIB, 2),
        "e-odd": _content(MIB + 511, 3),
        "f-empty": b"",
    }
    src = tmp_path / "src"
    src.mkdir()
    for name, data in contents.items():
        (src / name).write_bytes(data)
    return contents


def _items(tmp_path: Path, contents: dict[str, bytes], opener: str = "raw") -> list[LayerItem]:
    items = []
    for name, data in contents.items():
        path = tmp_path / "src" / name
        entry = TarEntry(name, EntryType.FILE, mode=0o644, size=len(data), mtime=1)

        def open_file(path: Path = path) -> io.IOBase:
            if opener == "raw":
                return open(path, "rb", buffering=0)
            if opener == "buffered":
                return open(path, "rb")
            return io.BytesIO(path.read_bytes())

        items.append(LayerItem(entry, open_file))  # type: ignore[arg-type]
    return items


def _reference(items: list[LayerItem]) -> bytes:
    out = io.BytesIO()
    write_layer(items, out, Compression.NONE)  # a sink without copy_file: the ordinary path
    return out.getvalue()


def _stored(blobs: ContentStore, items: list[LayerItem]) -> tuple[Digest, Digest, bytes]:
    with blobs.writer() as blob:
        info = write_layer(items, blob, Compression.NONE)
        digest = blob.commit()
    return digest, info.diff_id, blobs.path(digest).read_bytes()


@pytest.mark.parametrize("opener", ["raw", "buffered", "memory"])
def test_a_layer_written_with_kernel_copies_is_byte_for_byte_the_ordinary_one(
    tmp_path: Path, blobs: ContentStore, opener: str
) -> None:
    contents = _files(tmp_path)
    items = _items(tmp_path, contents, opener)
    expected = _reference(items)
    digest, diff_id, written = _stored(blobs, items)
    assert written == expected
    assert digest == diff_id == Digest.of_bytes(expected)


def test_the_kernel_copy_is_used_for_big_plain_files(tmp_path: Path, blobs: ContentStore, monkeypatch) -> None:
    contents = _files(tmp_path)
    calls: list[int] = []
    real = storing.kernel_copy

    def counting(source: int, dest: int, count: int, offset: int | None = None) -> int | None:
        calls.append(count)
        return real(source, dest, count, offset)

    monkeypatch.setattr(storing, "kernel_copy", counting)
    _stored(blobs, _items(tmp_path, contents))
    assert sorted(calls) == sorted(len(v) for v in contents.values() if len(v) >= MIB)


def test_where_the_kernel_cannot_copy_the_layer_is_written_the_ordinary_way(
    tmp_path: Path, blobs: ContentStore, monkeypatch
) -> None:
    contents = _files(tmp_path)
    items = _items(tmp_path, contents)

    def refuse(source: int, dest: int, count: int, offset: int | None = None) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(kernelcopy.os, "copy_file_range", refuse)
    _, _, written = _stored(blobs, items)
    assert written == _reference(items)


def test_the_digest_is_of_what_was_written_not_of_a_source_that_changes_later(
    tmp_path: Path, blobs: ContentStore
) -> None:
    contents = _files(tmp_path)
    digest, _, _ = _stored(blobs, _items(tmp_path, contents))
    (tmp_path / "src" / "b-big").write_bytes(b"changed")
    blobs.verify(digest)  # the blob still matches its name


def test_a_big_file_that_shrank_is_refused(tmp_path: Path, blobs: ContentStore) -> None:
    contents = _files(tmp_path)
    items = _items(tmp_path, {"b-big": contents["b-big"]})
    (tmp_path / "src" / "b-big").write_bytes(contents["b-big"][: 2 * MIB])  # the entry still says 3 MiB + 17
    with pytest.raises(LayerError, match="shrank"), blobs.writer() as blob:
        write_layer(items, blob, Compression.NONE)
    assert list((tmp_path / "ingest").iterdir()) == []


def test_copy_file_refuses_to_pass_the_expected_size(tmp_path: Path, blobs: ContentStore) -> None:
    src = tmp_path / "f"
    src.write_bytes(_content(2 * MIB, 4))
    with blobs.writer(size=MIB) as blob, open(src, "rb", buffering=0) as f:
        assert blob.copy_file(f.fileno(), 2 * MIB) is None
        assert blob.size == 0 and f.tell() == 0


def test_kernel_copy_copies_from_an_offset_and_stops_at_the_end(tmp_path: Path) -> None:
    data = _content(3 * MIB, 5)
    (tmp_path / "src").write_bytes(data)
    with open(tmp_path / "src", "rb", buffering=0) as src, open(tmp_path / "dst", "wb", buffering=0) as dst:
        assert kernel_copy(src.fileno(), dst.fileno(), 10, offset=5) == 10
        assert src.tell() == 0  # an explicit offset leaves the source's own offset alone
        assert kernel_copy(src.fileno(), dst.fileno(), 4 * MIB, offset=MIB) == 2 * MIB
    assert (tmp_path / "dst").read_bytes() == data[5:15] + data[MIB:]


def test_kernel_copy_says_none_only_before_copying_anything(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "src").write_bytes(b"abc")

    def refuse(*args: object) -> int:
        raise OSError(errno.ENOSYS, "no")

    monkeypatch.setattr(kernelcopy.os, "copy_file_range", refuse)
    with open(tmp_path / "src", "rb", buffering=0) as src, open(tmp_path / "dst", "wb", buffering=0) as dst:
        assert kernel_copy(src.fileno(), dst.fileno(), 3) is None

    def broken(*args: object) -> int:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(kernelcopy.os, "copy_file_range", broken)
    with open(tmp_path / "src", "rb", buffering=0) as src, open(tmp_path / "dst", "wb", buffering=0) as dst:
        with pytest.raises(OSError, match="I/O error"):
            kernel_copy(src.fileno(), dst.fileno(), 3)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


@pytest.mark.parametrize("kernel", [True, False])
def test_a_trusted_layer_file_extracts_to_the_same_tree(
    tmp_path: Path, blobs: ContentStore, monkeypatch, kernel: bool
) -> None:
    contents = _files(tmp_path)
    digest, diff_id, _ = _stored(blobs, _items(tmp_path, contents))
    if not kernel:
        monkeypatch.setattr(applying, "kernel_copy", lambda *args: None)
    target = tmp_path / "trusted"
    target.mkdir()
    with blobs.open(digest, verify=False) as stream:
        result = apply_layer(stream, target, expected_diff_id=diff_id, trusted=True)
    assert _tree(target) == contents
    assert result.diff_id == diff_id and result.size == blobs.size(digest)
    for name, data in contents.items():
        assert (target / name).stat().st_size == len(data)
        assert (target / name).stat().st_mtime == 1


def test_a_trusted_layer_is_not_hashed_again_but_a_compressed_one_still_is(tmp_path: Path, blobs: ContentStore) -> None:
    contents = _files(tmp_path)
    digest, diff_id, data = _stored(blobs, _items(tmp_path, contents))
    wrong = Digest.of_bytes(b"not this layer")
    target = tmp_path / "plain"
    target.mkdir()
    with blobs.open(digest, verify=False) as stream:
        # The caller vouches for these bytes: a plain file is taken as the diff_id it is given.
        assert apply_layer(stream, target, expected_diff_id=wrong, trusted=True).diff_id == wrong
    # In memory (not a plain file), nothing is skipped: the diff_id is checked.
    other = tmp_path / "memory"
    other.mkdir()
    with pytest.raises(DigestMismatch):
        apply_layer(io.BytesIO(data), other, expected_diff_id=wrong, trusted=True)


def test_the_blob_store_opens_a_blob_unverified_only_when_asked(tmp_path: Path, blobs: ContentStore) -> None:
    digest, _ = blobs.put(io.BytesIO(b"content"))
    os.chmod(blobs.path(digest), 0o644)
    blobs.path(digest).write_bytes(b"CONTENT")
    with blobs.open(digest, verify=False) as stream:
        assert stream.read() == b"CONTENT"
    with pytest.raises(DigestMismatch), blobs.open(digest) as stream:
        stream.read()
