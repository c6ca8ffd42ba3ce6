"""Rootless builds: the pybuild command run by an ordinary user, with subordinate ids and with one id (the users
and how they run pybuild: tests/rootless.py)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_pybuild, write_context
from rootless import EPOCH, SINGLE_USER, SUBIDS_USER, Runtime, home_for, readable_copy, run_as, user

# A user and files with another owner, made by RUN and by COPY --chown; a file the user makes as uid 1000.
DOCKERFILE = """\
FROM busybox
RUN echo "app:x:1000:1000::/home/app:/bin/sh" >> /etc/passwd && echo "app:x:1000:" >> /etc/group \\
 && mkdir -p /data /home/app && touch /data/x && chown app:app /data/x /home/app && echo hi > /data/y && rm -f /bin/true
USER app
RUN touch /home/app/mine && id > /home/app/id.txt
COPY --chown=1000:1000 note.txt /home/app/
"""


def _root_build(busybox_tar: Path, context: Path, tmp_path: Path) -> str:
    env = {"PYBUILD_ROOT": str(tmp_path / "root-store"), "SOURCE_DATE_EPOCH": EPOCH}
    for args in (["import", "-q", str(busybox_tar), "busybox"], ["build", "-q", "-t", "app", str(context)]):
        done = run_pybuild(*args, env=env)
        assert done.code == 0, done.err
    return done.out.strip()


def test_a_build_with_subordinate_ids_gives_the_root_build_s_image(
    tmp_path: Path, busybox_tar: Path, rootless_runtime: Runtime
) -> None:
    who = user(SUBIDS_USER)
    context = write_context(tmp_path / "shared" / "ctx", DOCKERFILE, {"note.txt": "note\n"})
    tarball = readable_copy(busybox_tar, tmp_path)
    store = home_for(who, tmp_path)
    assert run_as(who, rootless_runtime, store, "import", "-q", str(tarball), "busybox").returncode == 0
    built = run_as(who, rootless_runtime, store, "build", "-q", "--progress", "plain", "-t", "app", str(context))
    assert built.returncode == 0, built.stderr
    # Same layers, same owners, same digests: uid 1000 in the build is uid 1000 in the layer.
    assert built.stdout.strip() == _root_build(busybox_tar, context, tmp_path)
    # On the host, the user's files are the user's and the rest are in the subordinate range.
    owners = {p.stat().st_uid for p in (store / "snapshots").rglob("*") if p.name in ("x", "mine", "y")}
    assert owners == {who.pw_uid, 300000 + 999}

    info = run_as(who, rootless_runtime, store, "info", "--format", "json")
    assert info.returncode == 0, info.stderr
    found = json.loads(info.stdout)
    assert found["mode"]["name"] == "rootless with subordinate ids"
    assert found["mode"]["idMaps"] == f"0 {who.pw_uid} 1; 1 300000 65536"
    assert found["host"]["root"] is False
    assert found["features"]["overlay in a user namespace"] == "yes"
    assert found["features"]["RUN"] == "yes"
    assert found["features"]["snapshots"] == "overlay"


def test_the_copy_snapshotter_gives_the_same_image_rootless(
    tmp_path: Path, busybox_tar: Path, rootless_runtime: Runtime
) -> None:
    """Where the kernel mounts no overlayfs in a user namespace, RUN works in a copy of its image (forced here with
    PYBUILD_SNAPSHOTTER, as this kernel does mount one): the layers are the ones overlayfs gives."""
    who = user(SUBIDS_USER)
    context = write_context(tmp_path / "shared" / "ctx", DOCKERFILE, {"note.txt": "note\n"})
    tarball = readable_copy(busybox_tar, tmp_path)
    store = home_for(who, tmp_path)
    copy = {"PYBUILD_SNAPSHOTTER": "copy"}
    assert run_as(who, rootless_runtime, store, "import", "-q", str(tarball), "busybox").returncode == 0
    built = run_as(who, rootless_runtime, store, "build", "-q", "-t", "app", str(context), env=copy)
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == _root_build(busybox_tar, context, tmp_path)
    info = json.loads(run_as(who, rootless_runtime, store, "info", "--format", "json", env=copy).stdout)
    assert info["features"]["snapshots"] == "copy (PYBUILD_SNAPSHOTTER)"


def test_with_one_id_a_build_runs_until_a_step_needs_another_id(
    tmp_path: Path, busybox_tar: Path, rootless_runtime: Runtime
) -> None:
    who = user(SINGLE_USER)
    tarball = readable_copy(busybox_tar, tmp_path)
    store = home_for(who, tmp_path)
    assert run_as(who, rootless_runtime, store, "import", "-q", str(tarball), "busybox").returncode == 0
    plain = write_context(tmp_path / "shared" / "plain", "FROM busybox\nRUN echo hi > /hi && cat /hi\n")
    built = run_as(who, rootless_runtime, store, "build", "-q", "-t", "plain", str(plain))
    assert built.returncode == 0, built.stderr

    owned = write_context(tmp_path / "shared" / "owned", "FROM busybox\nRUN touch /x && chown 1000 /x\n")
    failed = run_as(who, rootless_runtime, store, "build", "-q", "--progress", "plain", "-t", "owned", str(owned))
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pybuild: {owned}/Dockerfile:2: ")
    assert "rootless with one id: only id 0 exists here" in last and "/etc/subuid" in last

    other = write_context(tmp_path / "shared" / "user", "FROM busybox\nUSER 1000\nRUN id\n")
    failed = run_as(who, rootless_runtime, store, "build", "--progress", "plain", "-t", "user", str(other))
    assert failed.returncode == 1
    assert "user 1000:0 does not exist in this rootless build" in failed.stderr

    info = json.loads(run_as(who, rootless_runtime, store, "info", "--format", "json").stdout)
    assert info["mode"] == {
        "name": "rootless with one id",
        "idMaps": f"0 {who.pw_uid} 1",
        "whySingle": f"/etc/subuid and /etc/subgid have no range for {SINGLE_USER}",
    }


def test_a_base_image_with_device_nodes_builds_rootless_and_keeps_them(
    tmp_path: Path, busybox_tar: Path, rootless_runtime: Runtime
) -> None:
    """No user namespace may make a device node: the rootless snapshot leaves the base's nodes out (RUN has its
    own /dev), and the image still holds them, the same image a root build makes."""
    who = user(SUBIDS_USER)
    env = {"PYBUILD_ROOT": str(tmp_path / "root-store"), "SOURCE_DATE_EPOCH": EPOCH}
    assert run_pybuild("import", "-q", str(busybox_tar), "busybox", env=env).code == 0
    nodes = write_context(tmp_path / "nodes", "FROM busybox\nRUN mkdir -p /opt/dev && mknod /opt/dev/null c 1 3\n")
    base = tmp_path / "shared" / "base"
    made = run_pybuild("build", "-q", "--output", f"type=oci,dest={base},tar=false", str(nodes), env=env)
    assert made.code == 0, made.err
    tarball = readable_copy(busybox_tar, tmp_path)  # opens up tmp_path/shared, and the base layout in it
    context = write_context(tmp_path / "shared" / "ctx", "FROM base\nRUN ls /opt > /listing\n")
    store = home_for(who, tmp_path)
    assert run_as(who, rootless_runtime, store, "import", "-q", str(tarball), "busybox").returncode == 0
    argv = ["build", "-q", "--build-context", f"base=oci-layout://{base}", "-t", "app", str(context)]
    built = run_as(who, rootless_runtime, store, *argv)
    assert built.returncode == 0, built.stderr
    as_root = run_pybuild(*argv, env=env)
    assert as_root.code == 0, as_root.err
    assert built.stdout.strip() == as_root.out.strip()
    listing = run_as(who, rootless_runtime, store, "run", "--rm", "app", "ls", "-A", "/opt/dev")
    assert (listing.returncode, listing.stdout) == (0, ""), listing.stderr  # where root's RUN sees "null"


def test_an_owner_beyond_the_user_s_ranges_is_named(
    tmp_path: Path, busybox_tar: Path, rootless_runtime: Runtime
) -> None:
    """pybuild-rootless maps ids 0 to 65536: a base image's file owned by 70000 cannot be unpacked, and the error
    says which owner and where the ranges are."""
    who = user(SUBIDS_USER)
    env = {"PYBUILD_ROOT": str(tmp_path / "root-store"), "SOURCE_DATE_EPOCH": EPOCH}
    assert run_pybuild("import", "-q", str(busybox_tar), "busybox", env=env).code == 0
    owned = write_context(tmp_path / "owned", "FROM busybox\nRUN touch /big && chown 70000:70001 /big\n")
    base = tmp_path / "shared" / "base"
    assert run_pybuild("build", "-q", "--output", f"type=oci,dest={base},tar=false", str(owned), env=env).code == 0
    readable_copy(busybox_tar, tmp_path)  # opens up tmp_path/shared, and the base layout in it
    context = write_context(tmp_path / "shared" / "ctx", "FROM base\nRUN true\n")
    store = home_for(who, tmp_path)
    argv = ["build", "-q", "--build-context", f"base=oci-layout://{base}", str(context)]
    failed = run_as(who, rootless_runtime, store, *argv)
    assert failed.returncode == 1
    assert failed.stderr.startswith(f"pybuild: {context}/Dockerfile:2: layer sha256:"), failed.stderr
    assert "big: owner 70000:70001 is not mapped in this user namespace" in failed.stderr
    assert "/etc/subuid and /etc/subgid" in failed.stderr
