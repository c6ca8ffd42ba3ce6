"""Rootless: an ordinary user's pybuild runs inside a user namespace of its own, where it is root.

``plan`` decides the mapping, as podman and buildah do: with the user's subordinate ranges (``/etc/subuid`` and
``/etc/subgid``, applied by the setuid ``newuidmap``/``newgidmap`` of Debian's ``uidmap``), id 0 inside is the
user and ids 1..N are the first subordinate range, so a file a step creates as uid 1000 is uid 1000 in the layer
whatever it is on the host. Without them, only id 0 is mapped (the user): a step that needs another id fails,
naming it.

``enter`` moves the running process itself into the new user and mount namespaces: a helper forked first stays
outside and writes the maps (``newuidmap`` must run outside the namespace it maps), so pybuild keeps its pid,
its signals and its exit code, and imports nothing twice. Only a process with one thread may enter.

``current_mode`` says what the running process is: root on the host, rootless with subordinate ids or with one
id, or an ordinary user without a namespace (where none can be made: ``unavailable`` then says why, and the verbs
that need no privilege still work).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from builder.errors import BuildError

__all__ = [
    "ROOT",
    "SINGLE",
    "SUBIDS",
    "UNPRIVILEGED",
    "IdMap",
    "Mapping",
    "NoUserNamespace",
    "current_mode",
    "enter",
    "id_maps",
    "needs_namespace",
    "plan",
    "subordinate_ranges",
    "unavailable",
]

ROOT = "root"
SUBIDS = "rootless with subordinate ids"
SINGLE = "rootless with one id"
UNPRIVILEGED = "an ordinary user, without a user namespace"

#: Why this process could not enter a user namespace ("" if it did, or did not try).
unavailable = ""

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_FULL_RANGE = 4294967295


@dataclass(frozen=True)
class IdMap:
    """``count`` ids from ``inside`` in the namespace are ``outside`` on the host."""

    inside: int
    outside: int
    count: int

    def line(self) -> str:
        return f"{self.inside} {self.outside} {self.count}"


@dataclass(frozen=True)
class Mapping:
    mode: str
    uids: tuple[IdMap, ...]
    gids: tuple[IdMap, ...]
    why_single: str = ""  # why subordinate ids are not used ("" when they are)


def subordinate_ranges(text: str, user: str, uid: int) -> list[tuple[int, int]]:
    """The ``(start, count)`` ranges ``/etc/subuid``-style ``text`` gives ``user`` (by name or by uid), in order."""
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3 or parts[0] not in (user, str(uid)):
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if start >= 0 and count > 0:
            found.append((start, count))
    return found


def plan(
    uid: int,
    gid: int,
    user: str,
    subuid_text: str | None,
    subgid_text: str | None,
    tools: Sequence[str | None],
) -> Mapping:
    """The mapping for ``user`` (``uid``/``gid``): subordinate ids when the user has both ranges and both tools are
    installed (``tools``: the paths of newuidmap and newgidmap, None if absent), else the one id."""
    uids = subordinate_ranges(subuid_text or "", user, uid)
    gids = subordinate_ranges(subgid_text or "", user, uid)
    if not uids or not gids:
        missing = [f"/etc/{name}" for name, got in (("subuid", uids), ("subgid", gids)) if not got]
        verb = "has" if len(missing) == 1 else "have"
        why = f"{' and '.join(missing)} {verb} no range for {user}"
    elif None in tools:
        why = "newuidmap and newgidmap are not installed (Debian package uidmap)"
    else:
        why = ""
    if why:
        return Mapping(SINGLE, (IdMap(0, uid, 1),), (IdMap(0, gid, 1),), why)
    return Mapping(
        SUBIDS,
        (IdMap(0, uid, 1), *(_ranges(uids))),
        (IdMap(0, gid, 1), *(_ranges(gids))),
    )


def _ranges(ranges: list[tuple[int, int]]) -> list[IdMap]:
    """The subordinate ranges one after another from id 1 up (newuidmap takes at most 340 lines)."""
    maps, inside = [], 1
    for start, count in ranges[:339]:
        maps.append(IdMap(inside, start, count))
        inside += count
    return maps


def plan_for_me() -> Mapping:
    """The mapping for the user running pybuild (the one outside, if this process is in a namespace already),
    from this machine's files and tools."""
    uid, gid = _outside(os.getuid(), "uid"), _outside(os.getgid(), "gid")
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return plan(
        uid,
        gid,
        user,
        _read("/etc/subuid"),
        _read("/etc/subgid"),
        (shutil.which("newuidmap"), shutil.which("newgidmap")),
    )


def _outside(inside: int, kind: str) -> int:
    """The host id that the ``kind`` id ``inside`` is, by this process's map (itself in the host's namespace)."""
    from builder import linux

    for start, outside, count in linux.id_ranges(kind):
        if start <= inside < start + count:
            return outside + inside - start
    return inside


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def id_maps() -> str:
    """This process's uid map, its ``inside outside count`` ranges joined by ``; ``."""
    from builder import linux

    return "; ".join(f"{start} {outside} {count}" for start, outside, count in linux.id_ranges())


def current_mode(ranges: tuple[tuple[int, int, int], ...] | None = None, euid: int | None = None) -> str:
    """What the running process is (or one with the uid map ``ranges`` and ``euid``): ``ROOT`` (in the host's
    namespace, as root), ``UNPRIVILEGED`` (there, as another user), ``SUBIDS`` or ``SINGLE``."""
    from builder import linux

    found = linux.id_ranges() if ranges is None else ranges
    if found == ((0, 0, _FULL_RANGE),):
        return ROOT if (os.geteuid() if euid is None else euid) == 0 else UNPRIVILEGED
    if len(found) == 1 and found[0][2] == 1:
        return SINGLE
    return SUBIDS


def enter(mapping: Mapping) -> None:
    """Move this process into a new user namespace (and mount namespace) mapped by ``mapping``; afterwards it is
    uid 0 and gid 0 there, with every capability over what the namespace owns."""
    if mapping.mode == SINGLE:
        _unshare()
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", mapping.uids[0].line())
        _write("/proc/self/gid_map", mapping.gids[0].line())
        _entered()
        return
    parent = os.getpid()
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe()
    helper = os.fork()
    if helper == 0:  # pragma: no cover - the helper's own process
        os.close(go_w)
        os.close(err_r)
        status = 1
        try:
            if os.read(go_r, 1) == b"1":
                status = _write_maps(parent, mapping, err_w)
        finally:
            os._exit(status)
    os.close(go_r)
    os.close(err_w)
    try:
        _unshare()
        os.write(go_w, b"1")
    finally:
        os.close(go_w)
        with os.fdopen(err_r, "rb") as f:
            message = f.read().decode("utf-8", "replace").strip()
        _, status = os.waitpid(helper, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise BuildError(
            f"cannot map the subordinate ids: {message or 'newuidmap failed'}",
            hint="check /etc/subuid and /etc/subgid, or remove the user's ranges to build with one id",
        )
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    _entered()


def _entered() -> None:
    from builder import linux

    linux.id_ranges.cache_clear()  # read before, as the host's maps


def _write_maps(pid: int, mapping: Mapping, err: int) -> int:  # pragma: no cover - runs in the helper
    for tool, maps in (("newuidmap", mapping.uids), ("newgidmap", mapping.gids)):
        args = [tool, str(pid)]
        for m in maps:
            args += [str(m.inside), str(m.outside), str(m.count)]
        done = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if done.returncode != 0:
            os.write(err, done.stderr or f"{tool} exited with {done.returncode}".encode())
            return 1
    return 0


def needs_namespace(what: str, otherwise: str = "") -> str:
    """The message for ``what``, which needs root or a user namespace, here where none could be made."""
    why = unavailable or otherwise
    return f"{what} needs root or a user namespace" + (f" ({why})" if why else "")


class NoUserNamespace(BuildError):
    """The kernel would not make a user namespace here (disabled, or inside a container that forbids it)."""


def _unshare() -> None:
    from builder import linux

    try:
        linux.unshare(_CLONE_NEWUSER | _CLONE_NEWNS)
    except OSError as err:
        raise NoUserNamespace(
            f"cannot create a user namespace: {err.strerror}",
            hint="check that user namespaces are enabled (sysctl user.max_user_namespaces)",
        ) from None


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(text)
