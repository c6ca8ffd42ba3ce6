"""The copy snapshotter (PYBUILD_SNAPSHOTTER=copy): RUN in a plain copy of its image gives the layers overlayfs
gives, for the changes that are hard to tell apart without an overlay."""

from __future__ import annotations

from pathlib import Path

from conftest import require_root, run_pybuild, write_context

EPOCH = "1700000000"

# Each RUN makes one kind of change a comparison must get right; SOURCE_DATE_EPOCH makes the two builds comparable.
DOCKERFILE = """\
FROM busybox
RUN mkdir -p /d/keep /d/gone /r/sub /h && echo a > /d/keep/f && echo b > /d/gone/f && echo c > /r/sub/f \\
 && echo x > /h/one && ln /h/one /h/two && mkfifo /d/fifo && ln -s /d/keep /d/link && mkdir -p /opt/dev \\
 && mknod /opt/dev/null c 1 3 && chmod 4755 /d/keep/f
# a directory removed and made again (its inode may be reused): opaque, as overlayfs makes it
RUN rm -rf /r/sub && mkdir /r/sub && echo new > /r/sub/g
# writing through one name of a hardlink pair breaks the pair, as a copy-up does
RUN echo more >> /h/one
# a new hardlink to a file of the image
RUN ln /d/keep/f /d/keep/f2
# deletions, a file that replaces a directory, a directory that replaces a file, a changed symlink
RUN rm -rf /d/gone /d/fifo /r/sub && echo file > /r/sub && rm /h/two && mkdir /h/two && ln -sfn /r /d/link
# only a directory's mode and owner; only a file's mode; nothing at all
RUN chmod 700 /d/keep && chown 12:34 /d && chmod 600 /h/one
RUN cat /d/keep/f > /dev/null
# a rename inside the image, and the device node of an earlier layer, seen and removed
RUN mv /d/keep /d/moved && test -c /opt/dev/null && rm /opt/dev/null
"""


def _build(context: Path, out: Path, snapshotter: str) -> str:
    env = {"SOURCE_DATE_EPOCH": EPOCH, "PYBUILD_SNAPSHOTTER": snapshotter}
    result = run_pybuild(
        "build", "-q", "--no-cache", "--output", f"type=oci,dest={out},tar=false", str(context), env=env
    )
    assert result.code == 0, result.err
    return (out / "index.json").read_text()


def test_the_copy_snapshotter_gives_overlayfs_layers(tmp_path: Path, busybox: str) -> None:
    require_root()
    context = write_context(tmp_path / "c", DOCKERFILE)
    assert _build(context, tmp_path / "copy", "copy") == _build(context, tmp_path / "overlay", "overlay")


def test_run_works_in_a_plain_directory_with_the_copy_snapshotter(tmp_path: Path, busybox: str) -> None:
    """Not an overlay: the root of the step's mount table is the copy, bound onto itself."""
    context = write_context(tmp_path / "c", "FROM busybox\nRUN awk '$5 == \"/\" {print $9}' /proc/self/mountinfo\n")
    for snapshotter, want in (("copy", "ext4"), ("overlay", "overlay")):
        args = ("build", "--progress", "plain", "--no-cache", str(context))
        result = run_pybuild(*args, env={"PYBUILD_SNAPSHOTTER": snapshotter})
        assert result.code == 0, result.err
        assert (want == "overlay") == (" overlay\n" in result.err), result.err
