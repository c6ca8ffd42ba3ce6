"""Containment, end to end through the CLI (../shared/research/security.md items 1-4, 9, 10, 14).

Four kinds of crafted input, each built as a user builds:

1. base images whose layers carry ``..`` and absolute names, symlinked parents, hardlinks out, bad whiteouts,
   whiteouts and opaque markers through symlinks, a symlink named ``.`` and device nodes: put into the store as a
   pull would, then used by ``FROM`` (with a RUN), ``COPY --from``, ``--output type=local`` and ``pybuild
   export``;
2. build contexts with symlinks leading out of them, and COPY/ADD sources that climb out with ``..``;
3. ``ADD`` of local tar archives (plain and gzip) with the tricks of (1);
4. ``.dockerignore``'d files, which must reach no layer, no cache record, no log and no bind mount.

Each case is either refused with one clear line or neutralised inside the root. Whatever happens, a fixture used
by every test checks after each command that the sentinel trees outside the store (one in the test's directory,
one at ``/tmp/pybuild-sentinel-TOKEN``, which the hostile names aim at) are byte-, mode- and mtime-identical, that
no escaped name appeared, and that ``/proc/self/mountinfo`` holds nothing new (see tests/containment.py).

The refused archives are tests/oci/test_apply_hostile.py's own table, fed in here as layers and as ADD archives.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import CLIResult, HTTPFiles, require_root, run_pybuild_here, step_states, write_context
from containment import (
    HostWatch,
    assert_clean_names,
    files_holding,
    one_line_error,
    put_image,
    tar_file,
    tar_members,
)
from tartools import Member, archive, compress, directory, file, hardlink, symlink

from oci.compression import Compression
from oci.errors import UnsafeEntry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "oci"))
from test_apply_hostile import REFUSED  # noqa: E402  (the unit tests' table of hostile archives)

NEW = b"written by the hostile layer\n"

# ------------------------------------------------------------------------------------------------- the watch


@pytest.fixture(autouse=True)
def watch(tmp_path: Path, isolate: Path) -> Iterator[HostWatch]:
    """The host state every test in this module must leave as it found it, checked after each command too.

    Every test here needs root: RUN, ADD of a local archive and snapshots holding device nodes do."""
    require_root()
    token = secrets.token_hex(6)
    host = Path(f"/tmp/pybuild-sentinel-{token}")
    w = HostWatch(token=token, host=host, outside=tmp_path / "outside", home=isolate, tmp=tmp_path)
    w.seal()
    try:
        yield w
        w.check()
    finally:
        shutil.rmtree(host, ignore_errors=True)


def cli(w: HostWatch, *args: str) -> CLIResult:
    """The CLI (its ``main`` in this process: the same code, without a Python start-up for each of the hundreds of
    commands here), then the watch's checks."""
    result = run_pybuild_here(*args)
    w.check()
    return result


def build(w: HostWatch, ctx: Path, *args: str) -> CLIResult:
    return cli(w, "build", "--progress", "plain", *args, str(ctx))


def store(w: HostWatch) -> Path:
    return w.home / "store"


# ------------------------------------------------------------------------------------- 1. hostile base images

HONEST_LOWER = archive(directory("etc"), file("etc/hostname", b"evil\n"), directory("tmp"))


def _refused(item5: bool) -> list[object]:
    """The unit table's cases: items 1-4 of security.md (names, links, whiteouts) or item 5 (malformed tars)."""
    return [
        pytest.param(*p.values, id=p.id)  # type: ignore[attr-defined]
        for p in REFUSED
        if (p.values[1] is not UnsafeEntry) == item5  # type: ignore[attr-defined]
    ]


EXTRA_REFUSED = [
    pytest.param(lambda w: archive(file("../.wh.victim")), UnsafeEntry, "outside the root", id="whiteout-dotdot-path"),
    pytest.param(
        lambda w: archive(file(w.climb("victim"))), UnsafeEntry, "outside the root", id="dotdot-chain-to-host-sentinel"
    ),
    pytest.param(
        lambda w: archive(hardlink("h", w.climb("victim"))), UnsafeEntry, "outside the root", id="hardlink-dotdot-chain"
    ),
    pytest.param(
        lambda w: archive(symlink(".", "/"), file("victim", NEW)),
        UnsafeEntry,
        "cannot replace the root",
        id="dot-to-root",
    ),
    pytest.param(
        lambda w: archive(symlink("s", str(w.host)), hardlink("h", "s/secret")),
        UnsafeEntry,
        "does not exist in the root",
        id="hardlink-through-symlink-to-host-secret",
    ),
]

Build = Callable[[HostWatch], bytes]


def _error_fragments(match: str) -> list[str]:
    """The unit table's regex, as literal fragments an error line must hold."""
    return [part for part in match.replace("\\", "").split(".*") if part]


def _nothing_half_extracted(w: HostWatch) -> None:
    """No half-extracted snapshot or scratch tree is left for a later build to pick up."""
    snapshots = store(w) / "snapshots"
    assert not snapshots.exists() or all(not p.name.startswith(".") for p in snapshots.iterdir())
    assert not (store(w) / "tmp").exists() or os.listdir(store(w) / "tmp") == []


def _ways(cases: list[object], every_way: bool) -> list[object]:
    """The cases, each marked with whether it goes through every command that reads a layer or one build only."""
    return [pytest.param(*p.values, every_way, id=p.id) for p in cases]  # type: ignore[attr-defined]


@pytest.mark.parametrize("make, error, match, every_way", _ways(_refused(False), False) + _ways(EXTRA_REFUSED, True))
def test_a_hostile_base_image_is_refused(
    tmp_path: Path, watch: HostWatch, make: Build, error: type, match: str, every_way: bool
) -> None:
    # The layer is on top of an honest one. The snapshot of each layer is made when a step first needs it (the
    # RUN, the COPY --from); export applies every layer in turn onto one tree. The table's cases go through the
    # applier the same way whichever command reads the layer, so one build shows each is refused; the cases aimed
    # at the host's own files go every way.
    put_image(store(watch), "evil", [HONEST_LOWER, make(watch)])
    fragments = _error_fragments(match)
    run = build(watch, write_context(tmp_path / "run", "FROM evil\nRUN true\n"))
    one_line_error(run, "Dockerfile:2:", *fragments)
    if not every_way:
        _nothing_half_extracted(watch)
        return
    copied = build(watch, write_context(tmp_path / "copy", "FROM scratch\nCOPY --from=evil /etc /x\n"))
    one_line_error(copied, "Dockerfile:2:", *fragments)
    out = tmp_path / "evil.tar"
    one_line_error(cli(watch, "export", "-o", str(out), "evil"), *fragments)
    assert not out.exists()
    _nothing_half_extracted(watch)


@pytest.mark.parametrize("make, error, match", _refused(True))
def test_a_malformed_base_image_is_refused(
    tmp_path: Path, watch: HostWatch, make: Build, error: type, match: str
) -> None:
    # The tar reader is the same for every use of a layer: one build covers it.
    put_image(store(watch), "evil", [HONEST_LOWER, make(watch)])
    run = build(watch, write_context(tmp_path / "run", "FROM evil\nRUN true\n"))
    one_line_error(run, "Dockerfile:2:", *_error_fragments(match))
    _nothing_half_extracted(watch)


def _link(target: str) -> tuple[str, str]:
    return ("symlink", target)


def _node(kind: str, major: int = 0, minor: int = 0) -> tuple[str, int, int]:
    return (kind, major, minor)


class Neutral:
    """A hostile image that must build: its layers, and what the flattened tree then holds (path -> bytes, a
    ``_link`` or None for absent), relative to the root."""

    def __init__(self, layers: Callable[[HostWatch], list[bytes]], expect: Callable[[HostWatch], dict] | None = None):
        self.layers = layers
        self.expect = expect or (lambda w: {})


def _h(w: HostWatch, rel: str = "") -> str:
    """The host sentinel's path as a path inside the image."""
    return str(w.host).lstrip("/") + (f"/{rel}" if rel else "")


DEVICES = archive(
    Member(b"evil-zero", b"3", devmajor=1, devminor=5, mode=0o666),
    Member(b"evil-loop", b"4", devmajor=7, devminor=0, mode=0o666),
    Member(b"evil-fifo", b"6", mode=0o666),
)

NEUTRAL = {
    # --- names (item 1): absolute names are taken as relative to the root
    "absolute-name": Neutral(lambda w: [archive(file(f"{w.host}/{w.pwned}", NEW))], lambda w: {_h(w, w.pwned): NEW}),
    "absolute-name-of-the-victim": Neutral(
        lambda w: [archive(file(f"{w.host}/victim", NEW))], lambda w: {_h(w, "victim"): NEW}
    ),
    # --- a symlinked parent, then an entry below it (item 2), in the same layer
    "symlink-to-root-then-write": Neutral(
        lambda w: [archive(symlink("evil", "/"), file(f"evil/{_h(w, 'victim')}", NEW))],
        lambda w: {"evil": _link("/"), _h(w, "victim"): NEW},
    ),
    "climbing-symlink-then-write": Neutral(
        lambda w: [archive(symlink("evil", "../" * 12), file(f"evil/{_h(w, 'victim')}", NEW))],
        lambda w: {_h(w, "victim"): NEW},
    ),
    "symlink-to-the-sentinel-then-write": Neutral(
        lambda w: [
            archive(
                symlink("evil", str(w.host)),
                file("evil/victim", NEW, mode=0o4777),
                directory("evil/dir"),
                file("evil/dir/keep", NEW),
            )
        ],
        lambda w: {"evil": _link(str(w.host)), _h(w, "victim"): NEW, _h(w, "dir/keep"): NEW},
    ),
    "symlink-to-proc-self-root": Neutral(
        lambda w: [archive(symlink("evil", f"/proc/self/root{w.host}"), file("evil/victim", NEW))],
        lambda w: {f"proc/self/root/{_h(w, 'victim')}": NEW},
    ),
    "symlink-chain-leaving-and-reentering": Neutral(
        lambda w: [archive(symlink("a", "/"), symlink("b", "a/.."), file(f"b/{_h(w, 'victim')}", NEW))],
        lambda w: {_h(w, "victim"): NEW},
    ),
    # --- hardlinks (item 3) whose target is inside after all
    "hardlink-to-a-symlink-to-outside": Neutral(
        lambda w: [archive(symlink("s", f"{w.host}/victim"), hardlink("h", "s"))],
        lambda w: {"h": _link(f"{w.host}/victim")},
    ),
    "hardlink-to-an-absolute-name-inside": Neutral(
        lambda w: [archive(file(f"{w.host}/victim", NEW), hardlink("h", f"{w.host}/victim"))],
        lambda w: {"h": NEW, _h(w, "victim"): NEW},
    ),
    # --- whiteouts and opaque markers through a symlink (item 4)
    "whiteouts-through-a-symlink": Neutral(
        lambda w: [archive(symlink("evil", str(w.host)), file("evil/.wh.victim"), file("evil/dir/.wh.keep"))],
        lambda w: {"evil": _link(str(w.host))},
    ),
    "opaque-marker-through-a-symlink": Neutral(
        lambda w: [archive(symlink("evil", str(w.host)), file("evil/.wh..wh..opq"))],
        lambda w: {"evil": _link(str(w.host))},
    ),
    # --- device nodes: kept as nodes, never opened (the RUN below checks it cannot open them)
    "device-nodes": Neutral(
        lambda w: [DEVICES],
        lambda w: {"evil-zero": _node("char", 1, 5), "evil-loop": _node("block", 7, 0), "evil-fifo": _node("fifo")},
    ),
    # --- the same tricks split across layers: the link in one, the write through it in the next
    "lower-symlink-to-root-then-write": Neutral(
        lambda w: [archive(symlink("evil", "/")), archive(file(f"evil/{_h(w, 'victim')}", NEW))]
    ),
    "lower-symlink-to-the-sentinel-then-write": Neutral(
        lambda w: [archive(symlink("evil", str(w.host))), archive(file("evil/victim", NEW))]
    ),
    "lower-climbing-symlink-then-write": Neutral(
        lambda w: [archive(symlink("evil", "../" * 12)), archive(file(f"evil/{_h(w, 'victim')}", NEW))]
    ),
    "lower-symlink-then-whiteouts-through-it": Neutral(
        lambda w: [archive(symlink("evil", str(w.host))), archive(file("evil/.wh.victim"), file("evil/.wh.dir"))]
    ),
    "lower-symlink-then-opaque-marker-through-it": Neutral(
        lambda w: [archive(symlink("evil", str(w.host))), archive(file("evil/.wh..wh..opq"), file("evil/x", NEW))]
    ),
    "whiteout-of-a-lower-symlink-to-outside": Neutral(
        lambda w: [archive(symlink("evil", str(w.host))), archive(file(".wh.evil"))], lambda w: {"evil": None}
    ),
    "directory-replaces-a-lower-symlink": Neutral(
        lambda w: [
            archive(symlink("evil", str(w.host))),
            archive(Member(b"evil", b"5", mode=0o777), file("evil/victim", NEW)),
        ],
        lambda w: {"evil/victim": NEW},
    ),
    "file-replaces-a-lower-symlink-to-the-victim": Neutral(
        lambda w: [archive(symlink("evil", f"{w.host}/victim")), archive(file("evil", NEW, mode=0o4777))],
        lambda w: {"evil": NEW},
    ),
}

# A RUN on the hostile image: it must run, must not be able to open a device node the image carries, and writes
# through the image's links (inside the container, whatever they point at).
HOSTILE_RUN = """\
FROM evil
RUN for d in /evil-zero /evil-loop; do \\
      if [ -e "$d" ] && head -c1 "$d" > /dev/null 2>&1; then echo "opened $d"; exit 1; fi; \\
    done; \\
    for l in /evil /a /b; do echo {pwned} > "$l/{pwned}" 2> /dev/null; done; \\
    echo ran > /ran
COPY --from=evil / /copied/
"""


def _lookup(members: dict, name: str) -> object:
    """What ``name`` is in an exported tar: its member for a file (a hardlink read through), a ``_link``, a
    ``_node``, or None."""
    member = members.get(name)
    if member is None:
        return None
    if member.islnk():
        member = members[member.linkname]
    if member.issym():
        return _link(member.linkname)
    for kind in ("chr", "blk", "fifo"):
        if getattr(member, f"is{kind}")():
            kind = {"chr": "char", "blk": "block"}.get(kind, kind)
            return _node(kind, member.devmajor, member.devminor) if kind != "fifo" else _node(kind)
    return member


def _assert_holds(out: Path, name: str, wanted: object, prefix: str = "") -> None:
    """The exported tar ``out`` holds ``wanted`` at ``prefix + name`` (see ``Neutral``)."""
    members = tar_members(out)
    found = _lookup(members, prefix + name)
    if isinstance(wanted, bytes):
        assert found is not None and not isinstance(found, tuple), (name, found)
        assert tar_file(out, found.name) == wanted  # type: ignore[attr-defined]
    else:
        assert found == wanted, (name, found)


@pytest.mark.parametrize("case", list(NEUTRAL), ids=list(NEUTRAL))
def test_a_hostile_base_image_is_neutralised(tmp_path: Path, watch: HostWatch, busybox: str, case: str) -> None:
    neutral = NEUTRAL[case]
    put_image(store(watch), "evil", neutral.layers(watch), base="busybox")
    local = tmp_path / "local"
    watch.allowed.append(local)
    ctx = write_context(tmp_path / "ctx", HOSTILE_RUN.replace("{pwned}", watch.pwned))
    result = build(watch, ctx, "-t", "out", "--output", f"type=local,dest={local}")
    assert result.code == 0, result  # the RUN fails if it could open a device node
    # Again into the same directory, which now holds the image's links to outside: an export into a non-empty
    # directory applies the tree onto it (and must not write through them either).
    assert build(watch, ctx, "-t", "out", "--output", f"type=local,dest={local}").code == 0
    out = tmp_path / "out.tar"
    assert cli(watch, "export", "-o", str(out), "out").code == 0
    members = tar_members(out)
    assert_clean_names(members)
    assert "ran" in members and "copied/bin/busybox" in members
    for name, wanted in neutral.expect(watch).items():
        _assert_holds(out, name, wanted)
        if isinstance(wanted, bytes):
            assert (local / name).read_bytes() == wanted
    assert not files_holding(store(watch), watch.secret)
    assert not files_holding(local, watch.secret)


# --------------------------------------------------------------------------- 2. contexts with links leading out


def _linked_context(w: HostWatch, root: Path) -> Path:
    """A context whose links lead out of it every way: absolute, relative, climbing, to directories."""
    ctx = write_context(root, "FROM scratch\n", {"data/real.txt": "real\n"})
    links = {
        "abs-file": f"{w.host}/secret",
        "rel-file": "../outside/secret",
        "climb": "../" * 20 + "etc/passwd",
        "passwd": "/etc/passwd",
        "root": "/",
        "outdir": str(w.outside),
        "updir": "../outside",
        "data/up": "../../outside/secret",
        "data/abs": f"{w.outside}/secret",
    }
    for name, target in links.items():
        os.symlink(target, ctx / name)
    return ctx


LINKS_COPIED = """\
FROM scratch
COPY . /app/
COPY data /data/
COPY root/tm[p]/pybuild-sentinel-*/secre* outdir/secre* updir/* root/etc/pass* /globbed/
"""


def test_context_links_are_copied_as_links_and_never_followed_out(tmp_path: Path, watch: HostWatch) -> None:
    ctx = _linked_context(watch, tmp_path / "ctx")
    (ctx / "Dockerfile").write_text(LINKS_COPIED)
    out = tmp_path / "out.tar"
    result = build(watch, ctx, "--output", f"type=tar,dest={out}")
    assert result.code == 0, result
    members = tar_members(out)
    assert_clean_names(members)
    for name, target in {
        "app/abs-file": f"{watch.host}/secret",
        "app/rel-file": "../outside/secret",
        "app/climb": "../" * 20 + "etc/passwd",
        "app/passwd": "/etc/passwd",
        "app/root": "/",
        "app/outdir": str(watch.outside),
        "app/updir": "../outside",
        "app/data/up": "../../outside/secret",
        "data/up": "../../outside/secret",
        "data/abs": f"{watch.outside}/secret",
    }.items():
        assert members[name].issym() and members[name].linkname == target, members[name]
    assert tar_file(out, "data/real.txt") == b"real\n"
    assert not any(name.startswith("globbed") for name in members), "a glob went through a link out of the context"
    assert not files_holding(out, watch.secret) and not files_holding(store(watch), watch.secret)
    assert watch.secret.decode() not in result.out + result.err
    assert b"root:x:0:0" not in out.read_bytes()


def test_a_source_that_is_a_link_out_resolves_inside_the_context(tmp_path: Path, watch: HostWatch) -> None:
    # A COPY source that is itself a link is followed (BuildKit's FollowLinks; conformance copy-source-symlink),
    # but inside the context: the host's file is never read, the context's own file of that name is.
    ctx = _linked_context(watch, tmp_path / "missing")
    for source in ("abs-file", "rel-file", "climb", "passwd", "root/etc/passwd", "outdir/secret", "data/up"):
        (ctx / "Dockerfile").write_text(f"FROM scratch\nCOPY {source} /x\n")
        one_line_error(build(watch, ctx), "Dockerfile:2:", f'"/{source}": not found')
    decoys = {
        "etc/passwd": "decoy passwd\n",
        "outside/secret": "decoy outside\n",
        _h(watch, "secret"): "decoy host\n",
        f"{str(watch.outside).lstrip('/')}/secret": "decoy outdir\n",
    }
    ctx = _linked_context(watch, tmp_path / "decoyed")
    watch.allowed.append(ctx)  # it holds a tree named like the host sentinel
    write_context(ctx, "", decoys)
    (ctx / "Dockerfile").write_text(
        "FROM scratch\nCOPY root/etc/passwd /p1\nCOPY passwd /p2\nCOPY climb /p3\nCOPY rel-file /s1\n"
        "COPY data/up /s2\nCOPY abs-file /s3\nCOPY outdir/secret /s4\nCOPY data/abs /s5\n"
    )
    out = tmp_path / "out.tar"
    assert build(watch, ctx, "--output", f"type=tar,dest={out}").code == 0
    wanted = {
        "p1": "decoy passwd\n",
        "p2": "decoy passwd\n",
        "p3": "decoy passwd\n",
        "s1": "decoy outside\n",
        "s2": "decoy outside\n",
        "s3": "decoy host\n",
        "s4": "decoy outdir\n",
        "s5": "decoy outdir\n",
    }
    assert {name: tar_file(out, name).decode() for name in wanted} == wanted
    assert not files_holding(store(watch), watch.secret)


CLIMBING = [
    ("COPY ../outside/secret /x", "../outside/secret"),
    ("COPY sub/../../outside/secret /x", "sub/../../outside/secret"),
    ("COPY /../outside/secret /x", "/../outside/secret"),
    ("COPY ../* /x/", "../*"),
    ("COPY data/real.txt ../outside/secret /x/", "../outside/secret"),
    ("ADD ../outside/secret /x", "../outside/secret"),
    ("ADD ../outside/dir/ /x/", "../outside/dir/"),
]


def test_sources_that_climb_out_of_the_context_are_refused(tmp_path: Path, watch: HostWatch, busybox: str) -> None:
    # Docker's classic builder refuses these ("forbidden path outside the build context"); BuildKit cleans them
    # into the context (docker/docs#19500), which makes `COPY ../x` silently copy the context's own x.
    ctx = write_context(tmp_path / "ctx", "", {"data/real.txt": "real\n", "outside/secret": "the context's own\n"})
    ctx.joinpath("sub").mkdir()
    for line, shown in CLIMBING:
        (ctx / "Dockerfile").write_text(f"FROM scratch\n{line}\n")
        one_line_error(build(watch, ctx), "Dockerfile:2:", f"forbidden path outside the build context: {shown}")
    stage = "FROM busybox AS s\nRUN mkdir -p /d && echo in-stage > /d/f\nFROM busybox\n"
    for line, fragment in [
        ("COPY --from=s ../d/f /x", "forbidden path outside the root of the --from source: ../d/f"),
        ("COPY --from=s /d/../../etc/passwd /x", "forbidden path outside the root of the --from source"),
        ("RUN --mount=type=bind,source=../outside,target=/m true", "forbidden path outside the build context"),
        ("RUN --mount=from=s,source=/../d,target=/m true", "forbidden path outside the root of the --from source"),
    ]:
        (ctx / "Dockerfile").write_text(stage + line + "\n")
        one_line_error(build(watch, ctx), "Dockerfile:4:", fragment)
    # A path that goes down before it comes up, and stays inside, is fine.
    (ctx / "Dockerfile").write_text(
        "FROM busybox AS s\nRUN mkdir -p /d && echo in-stage > /d/f\nFROM scratch\n"
        "COPY sub/../data/real.txt /ok\nCOPY --from=s /d/../d/f /ok2\n"
    )
    out = tmp_path / "out.tar"
    assert build(watch, ctx, "--output", f"type=tar,dest={out}").code == 0
    assert tar_file(out, "ok") == b"real\n" and tar_file(out, "ok2") == b"in-stage\n"


# ------------------------------------------------------------------------------------ 3. ADD of hostile tars


# The cases of one layer (an archive has no lower layers).
_PLACEHOLDER = HostWatch("", Path("/nowhere"), Path("/nowhere"), Path("/nowhere"), Path("/nowhere"))
ADD_NEUTRAL = {name: case for name, case in NEUTRAL.items() if len(case.layers(_PLACEHOLDER)) == 1}

# Every case as a plain tar; these also gzipped (decompression is one step before the same extractor).
GZIPPED = {
    "dotdot-file",
    "symlink-dot",
    "hardlink-absolute-outside",
    "hardlink-through-symlinked-parent",
    "whiteout-dotdot",
    "whiteout-dotdot-path",
    "dotdot-chain-to-host-sentinel",
    "absolute-name",
    "symlink-to-root-then-write",
    "hardlink-to-an-absolute-name-inside",
    "device-nodes",
}


def _compressions(params: list) -> list:
    """Each param as a plain tar, and gzipped too when its id is in ``GZIPPED``."""
    out = []
    for p in params:
        values, id = (p.values, p.id) if hasattr(p, "values") else ((p,), p)
        out.append(pytest.param(Compression.NONE, *values, id=f"tar-{id}"))
        if id in GZIPPED:
            out.append(pytest.param(Compression.GZIP, *values, id=f"gzip-{id}"))
    return out


def _add(w: HostWatch, tmp_path: Path, data: bytes, kind: Compression) -> tuple[CLIResult, Path]:
    name = "evil.tar" if kind is Compression.NONE else "evil.tar.gz"
    ctx = write_context(tmp_path / "ctx", f"FROM scratch\nADD {name} /dst/\n")
    (ctx / name).write_bytes(compress(kind, data) if kind is not Compression.NONE else data)
    out = tmp_path / "out.tar"
    return build(w, ctx, "--output", f"type=tar,dest={out}"), out


@pytest.mark.parametrize("kind, make, error, match", _compressions(_refused(False) + EXTRA_REFUSED))
def test_add_of_a_hostile_archive_is_refused(
    tmp_path: Path, watch: HostWatch, kind: Compression, make: Build, error: type, match: str
) -> None:
    result, out = _add(watch, tmp_path, make(watch), kind)
    one_line_error(result, "Dockerfile:2:", "cannot extract the archive", *_error_fragments(match))
    assert not out.exists()
    _nothing_half_extracted(watch)


@pytest.mark.parametrize("make, error, match", _refused(True))
def test_add_of_a_malformed_archive_is_refused_or_copied_as_a_file(
    tmp_path: Path, watch: HostWatch, make: Build, error: type, match: str
) -> None:
    # Docker's isArchivePath: what does not start with a valid tar header is not an archive, and is copied as is.
    result, out = _add(watch, tmp_path, make(watch), Compression.NONE)
    if result.code == 0:
        assert sorted(tar_members(out)) == ["dst", "dst/evil.tar"]
    else:
        one_line_error(result, "Dockerfile:2:", "cannot extract the archive", *_error_fragments(match))


@pytest.mark.parametrize("kind, case", _compressions(list(ADD_NEUTRAL)))
def test_add_of_a_hostile_archive_is_neutralised(
    tmp_path: Path, watch: HostWatch, kind: Compression, case: str
) -> None:
    neutral = ADD_NEUTRAL[case]
    (layer,) = neutral.layers(watch)
    result, out = _add(watch, tmp_path, layer, kind)
    assert result.code == 0, result
    members = tar_members(out)
    assert_clean_names(members)
    assert all(name == "dst" or name.startswith("dst/") for name in members), sorted(members)
    for name, wanted in neutral.expect(watch).items():
        _assert_holds(out, name, wanted, prefix="dst/")


# --------------------------------------------------------------------------------------- 4. .dockerignore


IGNORED = """\
FROM busybox
COPY . /app/
RUN --mount=type=bind,target=/ctx set -e; \\
    test ! -e /ctx/secret.txt; test ! -e /ctx/private; test -z "$(find /ctx -name '*.key')"; \\
    ! grep -r ignored-secret /ctx; ! cat /ctx/link-to-secret; test -z "$(find /ctx/sub/link-to-deep/ -name '*.key')"; \\
    ls -laR /ctx; echo bound > /bound
RUN --mount=type=bind,source=sub,target=/sub set -e; test -z "$(find /sub -name '*.key')"; \\
    ! grep -r ignored-secret /sub; ls -laR /sub
COPY sub/deep/*.key sub/link-to-deep/*.key /keys/
"""


def test_dockerignored_files_reach_no_layer_record_log_or_mount(tmp_path: Path, watch: HostWatch, busybox: str) -> None:
    key_name = f"id-{watch.token}.key"
    contents = {name: f"ignored-secret-{name}-{watch.token}" for name in ("a", "b", "c")}
    ctx = write_context(
        tmp_path / "ctx",
        IGNORED,
        {
            ".dockerignore": "secret.txt\n**/*.key\nprivate/\n",
            "secret.txt": contents["a"],
            f"sub/deep/{key_name}": contents["b"],
            "private/data.txt": contents["c"],
            "public.txt": "public\n",
        },
    )
    watch.allowed.append(ctx)  # the key file's name holds the token
    os.symlink("secret.txt", ctx / "link-to-secret")
    os.symlink("/secret.txt", ctx / "abs-link-to-secret")
    os.symlink("deep", ctx / "sub" / "link-to-deep")
    exported_cache = tmp_path / "cache"
    result = build(watch, ctx, "-t", "ignored", "--cache-to", f"type=local,dest={exported_cache},mode=max")
    assert result.code == 0, result
    out = tmp_path / "out.tar"
    assert cli(watch, "export", "-o", str(out), "ignored").code == 0
    members = tar_members(out)
    app = {name[len("app/") :] for name in members if name.startswith("app/")}
    assert app == {
        ".dockerignore",
        "Dockerfile",
        "public.txt",
        "link-to-secret",
        "abs-link-to-secret",
        "sub",
        "sub/deep",
        "sub/link-to-deep",
    }
    assert members["app/link-to-secret"].linkname == "secret.txt"
    assert "bound" in members and "keys" not in members

    # Changing an ignored file changes nothing: it is not part of any key.
    (ctx / "secret.txt").write_text(contents["a"] + " changed")
    (ctx / "sub" / "deep" / key_name).write_text(contents["b"] + " changed")
    again = build(watch, ctx, "-t", "ignored")
    assert again.code == 0, again
    assert set(step_states(again.err).values()) == {"CACHED"}, step_states(again.err)

    # Asked for by name, directly or through a link, an ignored file is not there.
    for line, shown in [
        ("COPY secret.txt /", "/secret.txt"),
        ("COPY private/data.txt /", "/private/data.txt"),
        ("COPY private /p/", "/private"),
        ("COPY link-to-secret /x", "/link-to-secret"),
        ("COPY abs-link-to-secret /x", "/abs-link-to-secret"),
        ("RUN --mount=type=bind,source=secret.txt,target=/s true", "/secret.txt"),
    ]:
        (ctx / "Dockerfile").write_text(f"FROM busybox\n{line}\n")
        one_line_error(build(watch, ctx), "Dockerfile:2:", f'"{shown}": not found')

    needles = [value.encode() for value in contents.values()] + [key_name.encode()]
    logs = result.out + result.err + again.out + again.err
    leaked = [line for line in logs.splitlines() if any(n.decode() in line for n in needles)]
    assert not leaked, "an ignored file's content or name is in the log"
    assert not files_holding(store(watch), *needles), "an ignored file's content or name is in the store"
    assert not files_holding(exported_cache, *needles), "an ignored file's content or name is in the exported cache"
    listed = cli(watch, "cache", "ls", "--format", "json")
    assert listed.code == 0 and not [n for n in needles if n.decode() in listed.out]
    assert not files_holding(tmp_path, *needles[:3]) or _only_in_context(tmp_path, ctx, *needles[:3])
    names = [p for p in store(watch).rglob("*") if key_name in p.name]
    assert not names, names


def _only_in_context(tmp_path: Path, ctx: Path, *needles: bytes) -> bool:
    return all(Path(found).is_relative_to(ctx) for found in files_holding(tmp_path, *needles))


NAMED = """\
FROM scratch AS copied
COPY --from=assets . /a/
FROM assets AS based
FROM busybox
COPY --from=copied /a /a
COPY --from=based / /b/
RUN --mount=from=assets,target=/m set -e; test ! -e /m/secret.txt; test -e /m/public.txt; ! cat /m/link; echo ok > /ok
"""


def test_a_named_context_keeps_to_its_own_dockerignore(tmp_path: Path, watch: HostWatch, busybox: str) -> None:
    # BuildKit's dockerui loads a named local context through the .dockerignore in it (and only that file).
    secret = f"named-secret-{watch.token}"
    assets = write_context(
        tmp_path / "assets",
        "",
        {".dockerignore": "secret.txt\nDockerfile*\n", "secret.txt": secret, "public.txt": "public\n"},
    )
    os.symlink("secret.txt", assets / "link")
    ctx = write_context(tmp_path / "ctx", NAMED)
    result = build(watch, ctx, "--build-context", f"assets={assets}", "-t", "named")
    assert result.code == 0, result
    out = tmp_path / "out.tar"
    assert cli(watch, "export", "-o", str(out), "named").code == 0
    members = tar_members(out)
    for top in ("a", "b"):
        below = sorted(name for name in members if name.startswith(f"{top}/"))
        assert below == [f"{top}/.dockerignore", f"{top}/link", f"{top}/public.txt"], below
    assert "ok" in members
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY --from=assets secret.txt /x\n")
    failed = build(watch, ctx, "--build-context", f"assets={assets}")
    one_line_error(failed, "Dockerfile:2:", '"/secret.txt": not found')
    assert secret not in result.out + result.err + failed.err
    assert not files_holding(store(watch), secret.encode())


def test_a_url_named_dotdot_is_downloaded_unnamed(tmp_path: Path, watch: HostWatch, http_files: HTTPFiles) -> None:
    # The file's name is the URL path's last element; ".." would be a layer entry that names its parent.
    (http_files.root / "index.html").write_text("served\n")
    ctx = write_context(tmp_path / "ctx", f"FROM scratch\nADD {http_files.url}/.. /app/\n")
    out = tmp_path / "out.tar"
    assert build(watch, ctx, "--output", f"type=tar,dest={out}").code == 0
    assert sorted(tar_members(out)) == ["app", "app/__unnamed__"]
    assert tar_file(out, "app/__unnamed__") == b"served\n"
