"""``builder.layerview``: crafted layer member lists in, the exact A/C/D changes and the exact waste out; and the
reading of real layer blobs (uncompressed, gzip, zstd; missing, corrupt) from a content store."""

from __future__ import annotations

import io

import pytest

from builder.cache import CacheEntry, CacheIndex
from builder.commit import store_image
from builder.errors import BuildError, ImageNotFound
from builder.layerview import (
    LayerSource,
    Member,
    Target,
    analyse,
    browse,
    find_target,
    members,
    normalise,
    read_layer,
    whiteout_target,
)
from builder.root import Store
from oci import mediatypes as mt
from oci.compression import Compression
from oci.config import History, ImageConfig
from oci.descriptor import Descriptor, Platform
from oci.digest import Digest
from oci.errors import OCIError
from oci.layer import LayerItem, write_layer
from oci.tarformat import EntryType, TarEntry


def d(path: str) -> Member:
    return Member(path, "dir")


def f(path: str, size: int) -> Member:
    return Member(path, "file", size)


def link(path: str, target: str) -> Member:
    return Member(path, "symlink", link=target)


def hard(path: str, target: str) -> Member:
    return Member(path, "hardlink", link=target)


def wh(path: str) -> Member:
    parent, _, name = path.rpartition("/")
    return Member(f"{parent}/.wh.{name}", "file")


def opq(directory: str) -> Member:
    return Member(f"{directory.rstrip('/')}/.wh..wh..opq", "file")


def table(changes: object) -> dict[str, tuple[str, str, int]]:
    return {c.path: (c.kind, c.type, c.size) for c in changes}  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------ waste


def test_the_brief_example_wastes_the_deleted_file_and_the_overwritten_copy() -> None:
    result = analyse(
        [
            [f("/big", 100_000), f("/small", 300)],
            [wh("/big")],
            [f("/small", 5000)],
        ]
    )
    first, second, third = result.layers
    assert table(first.changes) == {"/big": ("A", "file", 100_000), "/small": ("A", "file", 300)}
    assert table(second.changes) == {"/big": ("D", "file", 100_000)}
    assert table(third.changes) == {"/small": ("C", "file", 5000)}
    assert [layer.size for layer in result.layers] == [100_300, 0, 5000]
    assert [layer.files for layer in result.layers] == [2, 0, 1]
    assert result.size == 105_300
    assert result.wasted == 100_300
    assert result.efficiency == pytest.approx(5000 / 105_300)
    assert [(w.path, w.count, w.wasted) for w in result.inefficient] == [("/big", 2, 100_000), ("/small", 2, 300)]


def test_a_file_changed_twice_wastes_both_earlier_copies() -> None:
    result = analyse([[d("/etc"), f("/etc/app.conf", 10)], [f("/etc/app.conf", 20)], [f("/etc/app.conf", 30)]])
    assert [table(layer.changes)["/etc/app.conf"] for layer in result.layers] == [
        ("A", "file", 10),
        ("C", "file", 20),
        ("C", "file", 30),
    ]
    assert (result.size, result.wasted) == (60, 30)
    assert result.efficiency == pytest.approx(0.5)
    assert [(w.path, w.count, w.wasted) for w in result.inefficient] == [("/etc/app.conf", 3, 30)]


def test_an_opaque_directory_deletes_everything_lower_layers_had_under_it() -> None:
    base = [d("/opt"), f("/opt/a", 10), d("/opt/sub"), f("/opt/sub/b", 20), f("/keep", 1)]
    top = [opq("/opt"), d("/opt"), f("/opt/a", 7), f("/opt/c", 5)]
    result = analyse([base, top])
    assert table(result.layers[1].changes) == {
        "/opt": ("C", "dir", 0),
        "/opt/a": ("C", "file", 7),  # it existed below, even though the opaque marker hid it first
        "/opt/c": ("A", "file", 5),
        "/opt/sub": ("D", "dir", 0),
        "/opt/sub/b": ("D", "file", 20),
    }
    assert (result.size, result.wasted) == (43, 30)
    assert [(w.path, w.wasted) for w in result.inefficient] == [("/opt/sub/b", 20), ("/opt/a", 10)]


def test_a_whiteout_of_a_directory_deletes_it_and_all_below() -> None:
    base = [d("/d"), f("/d/x", 100), d("/d/y"), f("/d/y/z", 50), link("/d/l", "x")]
    result = analyse([base, [wh("/d")]])
    assert table(result.layers[1].changes) == {
        "/d": ("D", "dir", 0),
        "/d/x": ("D", "file", 100),
        "/d/y": ("D", "dir", 0),
        "/d/y/z": ("D", "file", 50),
        "/d/l": ("D", "symlink", 0),
    }
    assert (result.size, result.wasted, result.efficiency) == (150, 150, 0.0)


def test_a_whiteout_and_an_opaque_marker_of_the_root_and_of_nothing() -> None:
    result = analyse([[f("/a", 1), d("/b"), f("/b/c", 2)], [wh("/never"), opq("/")]])
    assert table(result.layers[1].changes) == {
        "/never": ("D", "whiteout", 0),
        "/a": ("D", "file", 1),
        "/b": ("D", "dir", 0),
        "/b/c": ("D", "file", 2),
    }
    assert result.wasted == 3


def test_hardlinks_share_one_copy_wasted_only_when_no_path_shows_it() -> None:
    base = [d("/bin"), f("/bin/busybox", 1000), hard("/bin/sh", "/bin/busybox")]
    result = analyse([base, [wh("/bin/busybox")]])
    assert table(result.layers[0].changes)["/bin/sh"] == ("A", "hardlink", 0)
    assert result.layers[0].changes[-1].link == "/bin/busybox"
    assert table(result.layers[1].changes) == {"/bin/busybox": ("D", "file", 1000)}
    assert (result.size, result.wasted) == (1000, 0)  # /bin/sh still shows the bytes

    result = analyse([base, [wh("/bin/busybox")], [wh("/bin/sh")]])
    assert table(result.layers[2].changes) == {"/bin/sh": ("D", "hardlink", 0)}
    assert result.wasted == 1000
    assert [(w.path, w.count, w.wasted) for w in result.inefficient] == [("/bin/busybox", 2, 1000)]

    # Overwriting the file a hardlink shares leaves the link showing the old copy.
    result = analyse([base, [f("/bin/busybox", 10)]])
    assert (result.size, result.wasted) == (1010, 0)


def test_symlinks_store_nothing_and_can_be_replaced_by_files() -> None:
    result = analyse([[link("/bin/sh", "busybox")], [f("/bin/sh", 5)], [link("/bin/sh", "dash")]])
    assert table(result.layers[0].changes) == {"/bin/sh": ("A", "symlink", 0)}
    assert result.layers[0].changes[0].link == "busybox"
    assert table(result.layers[1].changes) == {"/bin/sh": ("C", "file", 5)}
    assert table(result.layers[2].changes) == {"/bin/sh": ("C", "symlink", 0)}
    assert (result.size, result.wasted) == (5, 5)
    assert [layer.files for layer in result.layers] == [1, 1, 1]


def test_a_file_replacing_a_directory_deletes_what_was_in_it_and_a_file_in_the_way_becomes_a_directory() -> None:
    result = analyse([[d("/x"), f("/x/f", 10), f("/y", 4)], [f("/x", 3), f("/y/z", 1)]])
    assert table(result.layers[1].changes) == {
        "/x": ("C", "file", 3),
        "/x/f": ("D", "file", 10),
        "/y": ("C", "dir", 0),  # implied by /y/z
        "/y/z": ("A", "file", 1),
    }
    assert result.wasted == 14


def test_a_path_written_twice_in_one_layer_is_one_change_and_the_first_copy_is_waste() -> None:
    result = analyse([[f("/a", 10), f("/a", 20)]])
    assert table(result.layers[0].changes) == {"/a": ("A", "file", 20)}
    assert (result.size, result.wasted) == (30, 10)
    assert [(w.path, w.count, w.wasted) for w in result.inefficient] == [("/a", 1, 10)]


def test_whiteout_then_rewrite_in_one_layer_is_a_change() -> None:
    result = analyse([[d("/d"), f("/d/a", 5)], [wh("/d"), d("/d"), f("/d/b", 1)]])
    assert table(result.layers[1].changes) == {
        "/d": ("C", "dir", 0),
        "/d/a": ("D", "file", 5),
        "/d/b": ("A", "file", 1),
    }
    # Whiteouts apply to lower layers only, wherever they sit in the archive.
    late = analyse([[d("/d"), f("/d/a", 5)], [d("/d"), f("/d/b", 1), wh("/d")]])
    assert (
        late.layers[1].changes
        == analyse([[d("/d"), f("/d/a", 5)], [wh("/d"), d("/d"), f("/d/b", 1)]]).layers[1].changes
    )


def test_implied_parent_directories_are_created_silently() -> None:
    result = analyse([[f("/usr/share/doc/x", 2)], [f("/usr/share/doc/x", 3)]])
    assert table(result.layers[0].changes) == {"/usr/share/doc/x": ("A", "file", 2)}
    assert table(result.layers[1].changes) == {"/usr/share/doc/x": ("C", "file", 3)}


def test_a_layer_that_could_not_be_read_is_reported_and_left_out() -> None:
    result = analyse([[f("/a", 1)], "layer sha256:00 is not in the store", [f("/a", 2), f("/b", 3)]])
    assert result.layers[1].error == "layer sha256:00 is not in the store"
    assert result.layers[1].changes == () and result.layers[1].size == 0
    assert table(result.layers[2].changes) == {"/a": ("C", "file", 2), "/b": ("A", "file", 3)}
    assert (result.size, result.wasted) == (6, 1)


def test_no_file_bytes_is_full_efficiency() -> None:
    result = analyse([[d("/empty")], []])
    assert (result.size, result.wasted, result.efficiency, result.inefficient) == (0, 0, 1.0, ())
    assert analyse([]).efficiency == 1.0


# ------------------------------------------------------------------------------------------------ members


def test_paths_are_normalised_and_aufs_bookkeeping_is_skipped() -> None:
    raw = [
        ("./", EntryType.DIR, 0, ""),
        ("./etc/", EntryType.DIR, 0, ""),
        ("etc//x", EntryType.FILE, 3, ""),
        ("./a/../b", EntryType.FILE, 1, ""),
        ("../../escape", EntryType.FILE, 1, ""),
        ("hl", EntryType.HARDLINK, 0, "./etc/x"),
        ("sl", EntryType.SYMLINK, 0, "../etc/x"),
        ("dev/null", EntryType.CHAR, 0, ""),
        (".wh..wh.plnk/123.456", EntryType.FILE, 9, ""),
        (".wh..wh.aufs", EntryType.FILE, 0, ""),
        ("opt/.wh..wh..opq", EntryType.FILE, 0, ""),
        ("opt/.wh.old", EntryType.FILE, 0, ""),
    ]
    assert members(raw) == [
        Member("/etc", "dir"),
        Member("/etc/x", "file", 3),
        Member("/b", "file", 1),
        Member("/escape", "file", 1),
        Member("/hl", "hardlink", 0, "/etc/x"),
        Member("/sl", "symlink", 0, "../etc/x"),
        Member("/dev/null", "char"),
        Member("/opt/.wh..wh..opq", "file"),
        Member("/opt/.wh.old", "file"),
    ]
    assert normalise("a/./b//c/") == "/a/b/c"
    assert whiteout_target("/opt/.wh..wh..opq") == ("/opt", True)
    assert whiteout_target("/.wh..wh..opq") == ("/", True)
    assert whiteout_target("/etc/.wh.old") == ("/etc/old", False)
    assert whiteout_target("/etc/old") is None


# ---------------------------------------------------------------------------------------------- reading


def item(entry: TarEntry, data: bytes = b"") -> LayerItem:
    return LayerItem(entry, (lambda: io.BytesIO(data)) if entry.type is EntryType.FILE else None)


def put_layer(store: Store, items: list[LayerItem], compression: Compression) -> LayerSource:
    with store.layout.store.writer() as blob:
        info = write_layer(items, blob, compression)
        digest = blob.commit()
        size = blob.size
    return LayerSource(Descriptor(compression.layer_media_type, digest, size), info.diff_id, f"layer {compression}")


@pytest.mark.parametrize("compression", list(Compression), ids=lambda c: c.value)
def test_read_layer_reads_headers_of_any_compression(store: Store, compression: Compression) -> None:
    source = put_layer(
        store,
        [
            item(TarEntry("etc/", EntryType.DIR, mode=0o755)),
            item(TarEntry("etc/app.conf", EntryType.FILE, size=1200), b"x" * 1200),
            item(TarEntry("etc/link", EntryType.SYMLINK, linkname="app.conf")),
            item(TarEntry("etc/hard", EntryType.HARDLINK, linkname="etc/app.conf")),
            item(TarEntry("etc/.wh.old", EntryType.FILE)),
        ],
        compression,
    )
    assert read_layer(store.layout.store, source.descriptor) == [
        Member("/etc", "dir"),
        Member("/etc/app.conf", "file", 1200),
        Member("/etc/link", "symlink", 0, "app.conf"),
        Member("/etc/hard", "hardlink", 0, "/etc/app.conf"),
        Member("/etc/.wh.old", "file"),
    ]


def test_browse_reports_a_missing_and_a_corrupt_layer(store: Store) -> None:
    blobs = store.layout.store
    one = put_layer(store, [item(TarEntry("a", EntryType.FILE, size=4), b"aaaa")], Compression.NONE)
    gone = put_layer(store, [item(TarEntry("a", EntryType.FILE, size=2), b"bb")], Compression.GZIP)
    bad = put_layer(store, [item(TarEntry("b", EntryType.FILE, size=2), b"cc")], Compression.NONE)
    blobs.delete(gone.descriptor.digest)
    path = blobs.path(bad.descriptor.digest)
    path.chmod(0o644)
    raw = bytearray(path.read_bytes())
    raw[600] ^= 1  # a content byte: the headers still parse, the digest does not match
    path.write_bytes(bytes(raw))
    with pytest.raises(OCIError):
        read_layer(blobs, bad.descriptor)
    seen = browse(blobs, Target("crafted", (one, gone, bad)))
    errors = [layer.error for layer in seen.analysis.layers]
    assert errors[0] == ""
    assert errors[1] == f"layer {gone.descriptor.digest} is not in the store"
    assert errors[2].startswith(f"layer {bad.descriptor.digest} cannot be read: ")
    assert (seen.analysis.size, seen.analysis.wasted) == (4, 0)
    assert seen.layer_json(2, changes=True) | {"digest": None} == {
        "index": 2,
        "digest": None,
        "diff_id": str(gone.diff_id),
        "size": None,
        "blob_size": gone.descriptor.size,
        "created_by": "layer Compression.GZIP",
        "comment": "",
        "error": errors[1],
        "changes": [],
    }
    assert len(browse(blobs, Target("crafted", (one, gone, bad)), upto=1).analysis.layers) == 1


def test_a_whiteout_of_a_directory_deletes_everything_the_lower_layers_had_under_it(store: Store) -> None:
    names = [f"usr/share/pkg{i // 100}/file{i}" for i in range(3_000)]
    dirs = sorted({name.rsplit("/", 1)[0] for name in names})
    base = [item(TarEntry("usr/", EntryType.DIR)), item(TarEntry("usr/share/", EntryType.DIR))]
    base += [item(TarEntry(name + "/", EntryType.DIR)) for name in dirs]
    base += [item(TarEntry(name, EntryType.FILE, size=10), b"0123456789") for name in names]
    first = put_layer(store, base, Compression.GZIP)
    second = put_layer(store, [item(TarEntry("usr/share/.wh.pkg7", EntryType.FILE))], Compression.NONE)
    analysis = browse(store.layout.store, Target("big", (first, second))).analysis
    assert analysis.layers[0].files == 3_000 and analysis.size == 30_000
    assert analysis.layers[1].count("D") == 101 and analysis.wasted == 1000


def test_media_type_is_not_trusted_compression_is_sniffed(store: Store) -> None:
    source = put_layer(store, [item(TarEntry("a", EntryType.FILE, size=1), b"a")], Compression.ZSTD)
    wrong = Descriptor(mt.OCI_LAYER, source.descriptor.digest, source.descriptor.size)
    assert read_layer(store.layout.store, wrong) == [Member("/a", "file", 1)]


# ---------------------------------------------------------------------------------------------- targets


def record(index: CacheIndex, key: str, layer: LayerSource | None, parents: tuple[LayerSource, ...], step: str) -> None:
    entry = CacheEntry(
        key=Digest.parse(key),
        record={"v": 1, "op": "run", "step": step},
        layer=layer.descriptor if layer is not None else None,
        diff_id=layer.diff_id if layer is not None else None,
        history=f"RUN /bin/sh -c {step} # buildkit",
        step=f"RUN {step}",
        stage="stage-0",
        line=2,
        dockerfile="/ctx/Dockerfile",
        parents=tuple((p.descriptor, p.diff_id) for p in parents),  # type: ignore[misc]
    )
    build = index.start_build("/ctx/Dockerfile")
    index.put(entry, None, build)
    index.finish_build(build, [])


def test_find_target_names_images_and_cache_entries_and_refuses_what_is_ambiguous(store: Store) -> None:
    base = put_layer(store, [item(TarEntry("a", EntryType.FILE, size=1), b"a")], Compression.NONE)
    mid = put_layer(store, [item(TarEntry("b", EntryType.FILE, size=1), b"b")], Compression.NONE)
    top = put_layer(store, [item(TarEntry("c", EntryType.FILE, size=1), b"c")], Compression.NONE)
    history = (
        History(created_by="ADD base.tar /", comment="the base"),
        History(created_by="ENV A=1", empty_layer=True),
    )
    config = ImageConfig("amd64", "linux", diff_ids=(base.diff_id,), history=history)  # type: ignore[arg-type]
    image = store_image(store.layout, config, [base.descriptor])
    store.layout.tag("docker.io/library/base:latest", image.descriptor)
    platform = Platform("linux", "amd64")

    with pytest.raises(ImageNotFound, match="^no image or cache entry matches abc$"):
        find_target(store, "abc", platform)  # no cache database yet: only images are looked at

    prefix = image.id.encoded[:4]
    apart = prefix + ("1" if image.id.encoded[4] == "0" else "0")  # the key's first 5 digits: the image's are not
    index = CacheIndex(store.root)
    try:
        record(index, f"sha256:{apart}{'0' * 59}", mid, (base,), "make")  # shares the image ID's first 4 digits
        record(index, f"sha256:{'f' * 63}e", top, (base, mid), "make install")
        record(index, f"sha256:{'f' * 63}d", None, (base, mid, top), "true")
    finally:
        index.close()

    found = find_target(store, "base", platform)
    assert found.title == f"base (image {image.id.encoded[:12]})" and found.entry is None
    assert [(s.descriptor, s.created_by, s.comment) for s in found.sources] == [
        (base.descriptor, "ADD base.tar /", "the base")
    ]

    chain = find_target(store, "f" * 63 + "e", platform)
    assert chain.title == f"cache entry {'f' * 12}: RUN make install"
    assert [(s.descriptor, s.created_by) for s in chain.sources] == [
        (base.descriptor, "ADD base.tar /"),  # named by the image that has it
        (mid.descriptor, "RUN /bin/sh -c make # buildkit"),  # named by the cache entry that made it
        (top.descriptor, "RUN /bin/sh -c make install # buildkit"),
    ]
    empty = find_target(store, "sha256:" + "f" * 63 + "d", platform)
    assert empty.title.endswith("RUN true (it changed no file: no layer of its own)")
    assert [s.descriptor for s in empty.sources] == [base.descriptor, mid.descriptor, top.descriptor]

    with pytest.raises(BuildError, match=f"^{prefix} is ambiguous: it names image .* and cache entry {apart}0000"):
        find_target(store, prefix, platform)
    assert [s.descriptor for s in find_target(store, apart, platform).sources] == [base.descriptor, mid.descriptor]
    with pytest.raises(ImageNotFound, match="^ffff is ambiguous: it matches 2 cache entries$"):
        find_target(store, "ffff", platform)
    with pytest.raises(ImageNotFound, match="^no such image: nothing$"):
        find_target(store, "nothing", platform)
