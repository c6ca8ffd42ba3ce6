"""Resource limits for RUN steps and ``pybuild run`` containers (``--memory``, ``--pids-limit``), through cgroups.

``Limits`` is the request (a value; parsed from docker's spellings by ``parse_memory`` and ``parse_pids``).
``step_cgroup`` makes, for one container, a fresh cgroup in every hierarchy that holds a limited controller — one
directory on a pure cgroup v2 machine, one per controller's hierarchy on a v1 or hybrid one — named
``pybuild-<engine pid>-<random>``. The sandbox writes its own pid into each ``cgroup.procs`` before it forks the
container's init, so the command and everything it starts are inside. When the container is done, whatever is
still in the cgroup is killed (``cgroup.kill`` on v2, SIGKILL over ``cgroup.procs`` until it is empty otherwise)
and the directories are removed. Nothing is created when no limit is set.

A step cgroup is made under pybuild's own cgroup in that hierarchy (nested, so that the limits of whatever runs
pybuild still apply), else at the root of the hierarchy's mount: on cgroup v2 a cgroup with processes cannot hand
controllers to children, so there pybuild's own cgroup is only usable when it is the root. ``sweep`` removes the
empty step cgroups of pybuild processes that are gone (an engine killed before it could clean up); it never kills
anything, since a cgroup at the root may belong to a pybuild in another PID namespace.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from builder.errors import BuildError
from oci.store import pid_alive

__all__ = [
    "MIN_MEMORY",
    "PREFIX",
    "SANDBOX_TASKS",
    "CgroupError",
    "Hierarchy",
    "Limits",
    "StepCgroup",
    "check_available",
    "format_size",
    "hierarchies",
    "parse_memory",
    "parse_pids",
    "step_cgroup",
    "sweep",
]

MIN_MEMORY = 6 * 1024 * 1024  # docker's minimum for --memory
PREFIX = "pybuild-"
_NAME = re.compile(r"pybuild-(\d+)-[0-9a-f]+")
_SIZE = re.compile(r"(\d+(?:\.\d+)?) ?([kmgtp])?i?b?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_CONTROLLERS = {"memory": "--memory", "pids": "--pids-limit"}
_V1_OPTIONS = frozenset({"rw", "ro", "none", "noprefix", "clone_children", "xattr", "cpuset_v2_mode", "favordynmods"})
#: The sandbox process and the container's init are in the cgroup too, but they are pybuild's, not the command's:
#: ``--pids-limit N`` leaves N to the command, as docker's does (its command is the container's first process).
SANDBOX_TASKS = 2
_DRAIN = 5.0  # seconds to wait for a killed cgroup's tasks to leave before giving up on removing it


class CgroupError(BuildError):
    """A limit was asked for that this machine's cgroups cannot enforce."""


# ----------------------------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class Limits:
    """What a container may use: ``memory`` in bytes (no swap beyond it), ``pids`` tasks at once; None: no limit."""

    memory: int | None = None
    pids: int | None = None

    def __bool__(self) -> bool:
        return self.memory is not None or self.pids is not None

    def controllers(self) -> tuple[str, ...]:
        return tuple(name for name, value in (("memory", self.memory), ("pids", self.pids)) if value is not None)


def parse_memory(text: str) -> int:
    """Docker's ``--memory``: a number of bytes with an optional binary unit (``64k``, ``512m``, ``1.5g``, ``1gb``),
    at least 6 MiB. Raises ValueError with docker's wording."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid size: {text!r}")
    size = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
    if size < MIN_MEMORY:
        raise ValueError("Minimum memory limit allowed is 6MB")
    return size


def parse_pids(text: str) -> int | None:
    """``--pids-limit N``: at most N tasks at once; 0 or -1 is no limit (as podman has it)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"invalid pids limit: {text!r} (expected a whole number; -1 or 0 for no limit)") from None
    if value < -1:
        raise ValueError(f"invalid pids limit: {text!r} (expected a whole number; -1 or 0 for no limit)")
    return value if value > 0 else None


def format_size(size: int) -> str:
    """A byte count as ``--memory`` would take it: the largest unit that divides it (``33554432`` -> ``32m``)."""
    for unit in "ptgmk":
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


# ---------------------------------------------------------------------------------------- the hierarchies


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy: where it is mounted, its version, the controllers bound to it (v1; a v2 mount's
    are read from its ``cgroup.controllers``), and this process's cgroup in it as a directory, if the mount shows it.
    """

    mount: str
    version: int
    controllers: frozenset[str] = frozenset()
    own: str | None = None

    def parents(self) -> list[str]:
        """Where step cgroups go, best first: under this process's cgroup, then the root of the mount."""
        return list(dict.fromkeys([p for p in (self.own, self.mount) if p is not None]))


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def hierarchies(mountinfo: str, proc_cgroup: str) -> list[Hierarchy]:
    """The cgroup hierarchies in ``mountinfo`` (``/proc/self/mountinfo``'s text), with this process's directory in
    each from ``proc_cgroup`` (``/proc/self/cgroup``'s). Pure: the caller reads the files."""
    own_v1: dict[frozenset[str], str] = {}
    own_v2: str | None = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            own_v2 = parts[2]
        else:
            own_v1[frozenset(c for c in parts[1].split(",") if c and "=" not in c)] = parts[2]
    found: list[Hierarchy] = []
    seen: set[tuple[int, frozenset[str]]] = set()
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if dash < 5 or len(fields) < dash + 4:
            continue
        fstype, options = fields[dash + 1], fields[dash + 3].split(",")
        if fstype not in ("cgroup", "cgroup2"):
            continue
        root, mount = _unescape(fields[3]), _unescape(fields[4])
        version = 2 if fstype == "cgroup2" else 1
        if version == 1:
            controllers = frozenset(o for o in options if o not in _V1_OPTIONS and "=" not in o)
            path = own_v1.get(controllers) if controllers else None
        else:
            controllers = frozenset()
            path = own_v2
        if (version, controllers) in seen:
            continue  # the same hierarchy mounted again (bound into a container, say): the first one serves
        seen.add((version, controllers))
        found.append(Hierarchy(mount, version, controllers, _inside(mount, root, path)))
    return found


def _inside(mount: str, root: str, path: str | None) -> str | None:
    """The directory of cgroup ``path`` under a mount of the hierarchy's ``root``, if the mount shows it."""
    if path is None or not path.startswith("/"):
        return None
    if root == "/":
        rel = path
    elif path == root or path.startswith(root + "/"):
        rel = path[len(root) :]
    else:
        return None
    return os.path.join(mount, rel.lstrip("/")).rstrip("/") or mount


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


def _v2_controllers(hierarchy: Hierarchy) -> frozenset[str]:
    try:
        return frozenset(_read(os.path.join(hierarchy.mount, "cgroup.controllers")).split())
    except OSError:
        return frozenset()


def _system() -> list[Hierarchy]:
    try:
        return hierarchies(_read("/proc/self/mountinfo"), _read("/proc/self/cgroup"))
    except OSError:
        return []


def _placement(limits: Limits, found: Sequence[Hierarchy]) -> dict[Hierarchy, list[str]]:
    """The hierarchy each limited controller lives in (v1 first: a controller bound to v1 is missing from v2)."""
    placed: dict[Hierarchy, list[str]] = {}
    for controller in limits.controllers():
        home = next((h for h in found if h.version == 1 and controller in h.controllers), None)
        if home is None:
            home = next((h for h in found if h.version == 2 and controller in _v2_controllers(h)), None)
        if home is None:
            option = _CONTROLLERS[controller]
            if not found:
                raise CgroupError(f"{option} needs cgroups, and no cgroup file system is mounted")
            raise CgroupError(f"{option} needs the cgroup {controller} controller, which this machine does not have")
        placed.setdefault(home, []).append(controller)
    return placed


def check_available(limits: Limits) -> None:
    """Raise ``CgroupError`` naming what is missing if ``limits`` cannot be enforced here (nothing is created):
    a controller the machine lacks, or a hierarchy where pybuild may not create a cgroup (rootless, without a
    delegated one)."""
    if not limits:
        return
    for home, controllers in _placement(limits, _system()).items():
        if not any(os.access(parent, os.W_OK) for parent in home.parents()):
            options = ", ".join(_CONTROLLERS[c] for c in controllers)
            raise CgroupError(
                f"{options} needs a cgroup pybuild may create, and {home.parents()[-1]} is not writable by it"
                " (rootless: the user needs a delegated cgroup)"
            )


# ------------------------------------------------------------------------------------------- a step's cgroup


@dataclass(frozen=True)
class _Made:
    path: str
    version: int
    controllers: tuple[str, ...]


def _enable(parent: str, controllers: Sequence[str]) -> None:
    """cgroup v2: let ``parent``'s children use ``controllers`` (its ``cgroup.subtree_control``)."""
    control = os.path.join(parent, "cgroup.subtree_control")
    enabled = set(_read(control).split())
    missing = [c for c in controllers if c not in enabled]
    if missing:
        _write(control, " ".join(f"+{c}" for c in missing))


def _create(hierarchy: Hierarchy, controllers: Sequence[str], name: str) -> str:
    last: OSError | None = None
    for parent in hierarchy.parents():
        try:
            if hierarchy.version == 2:
                _enable(parent, controllers)
            path = os.path.join(parent, name)
            os.mkdir(path, 0o755)
            return path
        except OSError as err:
            last = err
    where = hierarchy.parents()[-1]
    reason = last.strerror if last is not None and last.strerror else str(last)
    raise CgroupError(
        f"cannot create a cgroup for {', '.join(_CONTROLLERS[c] for c in controllers)} in {where}: {reason}"
    )


def _set_limits(made: _Made, limits: Limits) -> None:
    path = made.path
    settings: list[tuple[str, str, bool]] = []  # (file, value, required)
    if "memory" in made.controllers and limits.memory is not None:
        if made.version == 2:
            settings += [("memory.max", str(limits.memory), True), ("memory.swap.max", "0", False)]
        else:  # memsw is memory plus swap: equal to the limit, no swap (absent when swap accounting is off)
            settings += [
                ("memory.limit_in_bytes", str(limits.memory), True),
                ("memory.memsw.limit_in_bytes", str(limits.memory), False),
            ]
    if "pids" in made.controllers and limits.pids is not None:
        settings.append(("pids.max", str(limits.pids + SANDBOX_TASKS), True))
    for name, value, required in settings:
        target = os.path.join(path, name)
        if not required and not os.path.exists(target):
            continue
        try:
            _write(target, value)
        except OSError as err:
            raise CgroupError(f"cannot set {target} to {value}: {err.strerror or err}") from None


def _procs(path: str) -> list[int]:
    try:
        return [int(word) for word in _read(os.path.join(path, "cgroup.procs")).split()]
    except (OSError, ValueError):
        return []


def _kill_all(path: str, deadline: float) -> None:
    """Kill every process in the cgroup at ``path``: ``cgroup.kill`` where the kernel has it (v2, Linux 5.14),
    else SIGKILL to each process in ``cgroup.procs``, again, until it stays empty (a process forking meanwhile
    only adds one more to the next round)."""
    try:
        _write(os.path.join(path, "cgroup.kill"), "1")
    except OSError:
        pass
    while time.monotonic() < deadline:
        pids = _procs(path)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)


def _remove(path: str, deadline: float) -> None:
    """rmdir, again while the killed tasks drain out (EBUSY); a directory that never empties is left for
    ``sweep``."""
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.005)


class StepCgroup:
    """The cgroups of one container; a context manager: made on entry, emptied and removed on exit."""

    def __init__(self, limits: Limits, *, found: Sequence[Hierarchy] | None = None) -> None:
        self.limits = limits
        self._found = list(found) if found is not None else None
        self._made: list[_Made] = []

    @property
    def procs(self) -> tuple[str, ...]:
        """The ``cgroup.procs`` files the container's first process writes its pid into."""
        return tuple(os.path.join(m.path, "cgroup.procs") for m in self._made)

    def __enter__(self) -> StepCgroup:
        import secrets  # here, not at the top: only a RUN with --memory or --pids-limit gets a cgroup

        placed = _placement(self.limits, self._found if self._found is not None else _system())
        name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            for hierarchy, controllers in placed.items():
                made = _Made(_create(hierarchy, controllers, name), hierarchy.version, tuple(controllers))
                self._made.append(made)
                _set_limits(made, self.limits)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def oom_killed(self) -> bool:
        """Whether the OOM killer killed a process of this cgroup (for its memory limit)."""
        for made in self._made:
            if "memory" not in made.controllers:
                continue
            events = "memory.events" if made.version == 2 else "memory.oom_control"
            try:
                counts = dict(line.split()[:2] for line in _read(os.path.join(made.path, events)).splitlines() if line)
                if "oom_kill" in counts:
                    return int(counts["oom_kill"]) > 0
                if made.version == 1:  # before Linux 4.13 v1 counts no kills: the limit was hit, at least
                    return int(_read(os.path.join(made.path, "memory.failcnt")).strip() or 0) > 0
            except (OSError, ValueError):
                continue
        return False

    def close(self) -> None:
        deadline = time.monotonic() + _DRAIN
        for made in self._made:
            _kill_all(made.path, deadline)
        for made in self._made:
            _remove(made.path, deadline)
        self._made = []


@contextmanager
def step_cgroup(limits: Limits) -> Iterator[StepCgroup | None]:
    """A ``StepCgroup`` for ``limits``, or None (and nothing made) when there is no limit."""
    if not limits:
        yield None
        return
    with StepCgroup(limits) as cgroup:
        yield cgroup


def sweep(found: Sequence[Hierarchy] | None = None) -> list[str]:
    """Remove the empty step cgroups of pybuild processes that no longer exist; return their paths. Errors are
    ignored: what cannot be removed now is tried again next time."""
    removed: list[str] = []
    for hierarchy in found if found is not None else _system():
        if hierarchy.version == 1 and not hierarchy.controllers & _CONTROLLERS.keys():
            continue
        for parent in hierarchy.parents():
            try:
                names = os.listdir(parent)
            except OSError:
                continue
            for name in names:
                match = _NAME.fullmatch(name)
                if match is None or pid_alive(int(match.group(1))):
                    continue
                path = os.path.join(parent, name)
                try:
                    os.rmdir(path)  # fails unless it is empty: nothing in it is killed
                except OSError:
                    continue
                removed.append(path)
    return removed
