"""RUN --mount: what each mount of a step reads, what it adds to the step's cache key, and the ``MountPoint``s it
becomes for one run, with the secrets, SSH agents and cache directories it holds while the step runs.

The plan has already parsed and expanded every ``--mount`` (``frontend.runmount.MountSpec``) and resolved each
``from=`` to a ``Source``. Here, as BuildKit does:

- ``type=bind`` reads the build context (the default), a stage, an image or a named context. ``source`` is resolved
  inside that tree, its symlinks kept inside it (``copy.resolve``, as COPY resolves its sources), and the sandbox
  walks the result again without following anything out of it. It is read-only unless ``rw``, and an ``rw`` bind
  writes to a throwaway overlay upper directory, never to the tree. The bound content is part of the step's key
  (``key_inputs``): the checksum of the context path (``checksum.checksum_source``, through the stat cache), or a
  stage's or an image's layer digests, as COPY --from keys them. A context seen through ``.dockerignore`` hides what
  it excludes: those paths are whited out in an overlay over the context directory.
- ``type=tmpfs``: a fresh tmpfs (``size``).
- ``type=secret``: a ``--secret`` as a read-only file (``/run/secrets/ID`` unless ``target``; mode 0400 and owner
  0:0 unless ``mode``/``uid``/``gid``) and/or a variable (``env``). Only the id is in the key; a secret not given
  skips the mount unless ``required``. Its bytes go to the sandbox through a pipe and into a tmpfs of the
  container's own mount namespace: never into a file of the store, a layer, the history, a cache record or a log
  (``Redactor`` replaces any value that appears in a step's output or error with ``****``).
- ``type=ssh``: a ``--ssh`` agent socket, forwarded through a socket of pybuild's own (so that ``uid``, ``gid`` and
  ``mode``, default 0600, apply without touching the agent's), at ``/run/buildkit/ssh_agent.N`` unless ``target``;
  ``SSH_AUTH_SOCK`` names the first one unless the environment sets it. Not there and not ``required``: skipped.
- ``type=cache``: a directory of the store's cache mounts (``builder.cachemounts``), ``id`` defaulting to the
  target, seeded from ``from``/``source`` when new. Its content enters no layer and no key.

Relative targets are relative to the working directory; mounts are made parents first (sorted by target, as
BuildKit sorts them). ``check_run`` refuses what cannot run: ``--security=insecure`` without ``--allow
security.insecure``, and cache mounts while the cache-mount store is missing.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.checksum import Checksums, StatCache, checksum_source
from builder.copy import ContextTree, CopyError, ImageTree, SourceTree, check_inside, resolve
from builder.errors import BuildError, UsageError
from builder.frontend import instructions as ins
from builder.frontend.runmount import MountSpec
from builder.plan import Source, Step
from builder.snapshot import RootView

# A cached RUN needs only the key of its mounts: the executor's types come with the first run (``prepared``).
if TYPE_CHECKING:
    from builder.executor import MountPoint

__all__ = [
    "ENTITLEMENTS",
    "BindRoot",
    "Prepared",
    "Redactor",
    "Secrets",
    "check_run",
    "key_inputs",
    "mount_target",
    "parse_allow",
    "parse_secret",
    "parse_ssh",
    "prepared",
    "read_agents",
    "read_secrets",
]

ENTITLEMENTS = ("network.host", "security.insecure")
MAX_SECRET_SIZE = 500 * 1024  # BuildKit's limit
SECRET_MODE = 0o400
SSH_MODE = 0o600
CACHE_MODE = 0o755
REDACTED = b"****"
MIN_REDACTED = 4  # shorter values are not redacted: they would blank ordinary output (and are no real secret)
MIN_REDACTED_LINE = 8  # each line of a multi-line secret (a key file) is redacted on its own from this length


# ---------------------------------------------------------------------------------------------- the CLI


class Secrets:
    """The values of ``--secret``, by id. Its repr names the ids only, so no traceback or log shows a value."""

    def __init__(self, values: Mapping[str, bytes] | None = None) -> None:
        self._values = dict(values or {})

    def get(self, secret_id: str) -> bytes | None:
        return self._values.get(secret_id)

    def values(self) -> list[bytes]:
        return list(self._values.values())

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Secrets({sorted(self._values)})"


def _csv_fields(text: str, option: str) -> list[str]:
    import csv  # here, not at the top: only a build with --secret or --ssh needs it

    try:
        rows = list(csv.reader([text]))
    except csv.Error as err:
        raise UsageError(f"{option} {text!r}: {err}") from None
    return rows[0] if rows else []


def parse_secret(text: str, environ: Mapping[str, str]) -> tuple[str, bytes | None]:
    """``--secret id=ID[,src=FILE|,env=VAR][,type=file|env]``, as buildx reads it: the id and the value (None for a
    variable that is not set: the secret is then missing, as in BuildKit). ``id=ID`` alone is the variable ID if set,
    else the file ID."""
    secret_id = path = env = kind = ""
    for item in _csv_fields(text, "--secret"):
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"--secret {text!r}: invalid field {item!r}: expected KEY=VALUE")
        key = key.strip().lower()
        if key == "type":
            if value not in ("file", "env"):
                raise UsageError(f"--secret {text!r}: unsupported secret type {value!r} (expected file or env)")
            kind = value
        elif key == "id":
            secret_id = value
        elif key in ("src", "source"):
            path = value
        elif key == "env":
            env = value
        else:
            raise UsageError(f"--secret {text!r}: unexpected key {key!r} (expected id, src, env or type)")
    if kind == "env" and not env:
        env, path = path, ""
    if not secret_id:
        raise UsageError(f"--secret {text!r}: the secret needs an id", hint="e.g. --secret id=token,src=token.txt")
    if not path and not env:
        if secret_id in environ:
            env = secret_id
        else:
            path = secret_id
    if not path:
        value = environ.get(env)
        return secret_id, None if value is None else os.fsencode(value)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRET_SIZE + 1)
    except OSError as err:
        raise UsageError(f"--secret {text!r}: cannot read {path}: {err.strerror or err}") from None
    if len(data) > MAX_SECRET_SIZE:
        raise UsageError(f"--secret {text!r}: secret {secret_id} is larger than {MAX_SECRET_SIZE // 1024} KiB")
    return secret_id, data


def read_secrets(texts: Iterable[str], environ: Mapping[str, str]) -> Secrets:
    """Every ``--secret`` (a later one with the same id wins); a variable that is not set gives no secret."""
    values = {}
    for text in texts:
        secret_id, value = parse_secret(text, environ)
        if value is None:
            values.pop(secret_id, None)
        else:
            values[secret_id] = value
    return Secrets(values)


def read_agents(texts: Iterable[str], environ: Mapping[str, str]) -> dict[str, str]:
    """Every ``--ssh``: agent sockets by id."""
    return dict(parse_ssh(text, environ) for text in texts)


def parse_ssh(text: str, environ: Mapping[str, str]) -> tuple[str, str]:
    """``--ssh default|ID[=SOCKET]``: the id and the agent socket (``$SSH_AUTH_SOCK`` when none is given)."""
    fields = _csv_fields(text, "--ssh")
    if not fields or not fields[0]:
        raise UsageError("--ssh needs an id: default, or ID=SOCKET")
    ssh_id, eq, first = fields[0].partition("=")
    paths = ([first] if eq else []) + fields[1:]
    if not paths:
        socket_path = environ.get("SSH_AUTH_SOCK", "")
        if not socket_path:
            raise UsageError(
                f"--ssh {text}: SSH_AUTH_SOCK is not set",
                hint=f"start an agent, or name its socket: --ssh {ssh_id}=PATH",
            )
        paths = [socket_path]
    if len(paths) != 1:
        raise UsageError(f"--ssh {text}: give one agent socket (key files are not supported yet)")
    try:
        is_socket = stat.S_ISSOCK(os.stat(paths[0]).st_mode)
    except OSError as err:
        raise UsageError(f"--ssh {text}: {paths[0]}: {err.strerror or err}") from None
    if not is_socket:
        raise UsageError(
            f"--ssh {text}: {paths[0]} is not an agent socket",
            hint="key files are not supported yet: load the key into an agent with ssh-add and pass its socket",
        )
    return ssh_id, os.path.abspath(paths[0])


def parse_allow(items: Iterable[str]) -> frozenset[str]:
    """``--allow network.host,security.insecure`` (repeatable, comma-separated, as buildx takes it)."""
    allowed = set()
    for item in items:
        for name in item.split(","):
            name = name.strip()
            if name not in ENTITLEMENTS:
                raise UsageError(f"--allow {name!r}: unknown entitlement (expected {' or '.join(ENTITLEMENTS)})")
            allowed.add(name)
    return frozenset(allowed)


# ------------------------------------------------------------------------------------- checks and targets


def check_run(step: Step, *, allow: frozenset[str]) -> None:
    """Refuse what this RUN may not do, before its key is computed."""
    instruction = step.instruction
    assert isinstance(instruction, ins.Run)
    if instruction.security == "insecure" and "security.insecure" not in allow:
        raise BuildError(
            "RUN --security=insecure is not allowed",
            hint="build with --allow security.insecure to run it with every capability",
        )
    ids = [m.id or m.target for m in step.mounts if m.type == "cache" and m.sharing != "shared" and m.sharing]
    if len(ids) != len(set(ids)):  # the second would wait for the first, which waits for the RUN
        raise BuildError("two cache mounts with one id and sharing=locked or private in one RUN would wait forever")


def mount_target(spec: MountSpec, workdir: str, ssh_index: int = 0) -> str:
    """Where a mount goes: absolute and clean, a relative target taken from the working directory (BuildKit)."""
    target = spec.target
    if spec.type == "ssh" and not target:
        target = f"/run/buildkit/ssh_agent.{ssh_index}"
    if not target:
        return ""
    full = posixpath.normpath(posixpath.join("/", workdir or "/", target))
    full = "/" + full.lstrip("/")
    if full == "/":
        raise BuildError(f"invalid mount target {target!r}: cannot mount over the root")
    return full


def _planned(step: Step) -> list[tuple[MountSpec, Source | None]]:
    sources = list(step.mount_sources) + [None] * (len(step.mounts) - len(step.mount_sources))
    return list(zip(step.mounts, sources, strict=True))


# ------------------------------------------------------------------------------------- bind mount sources


@dataclass(frozen=True)
class BindRoot:
    """The tree a bind (or a cache mount's ``from``) reads: a context directory, or a stage's or image's layers."""

    origin: Mapping[str, str]  # {"context": "." or NAME}, {"stage": NAME} or {"image": REF}: for the key
    context: ContextTree | None = None  # a directory, seen through its ignore rules
    stats: StatCache | None = None  # the context's stat cache
    layers: tuple[str, ...] = ()  # a stage or an image: its diff_ids, its content for the key
    snapshots: Callable[[], Sequence[Path]] | None = None  # a stage or an image: its snapshot directories, top first
    _view: list[RootView] = field(default_factory=list, compare=False, repr=False)

    def lowers(self) -> tuple[Path, ...]:
        if self.context is not None:
            return (Path(os.fsdecode(self.context.root)),)
        assert self.snapshots is not None
        return tuple(self.snapshots())

    def tree(self) -> SourceTree:
        if self.context is not None:
            return self.context
        if not self._view:
            self._view.append(RootView(list(self.lowers())))
        return ImageTree(self._view[0])


Roots = Callable[[Source | None], BindRoot]


def _described(path: str) -> str:
    return "/" + path.strip("/")


def key_inputs(step: Step, roots: Roots, *, epoch: int | None) -> tuple[list[dict[str, Any]], list[Checksums | None]]:
    """What the bind mounts of ``step`` add to its key record, in the order written, and per bind the checksums
    that explain a miss (None for a stage or an image, whose layers are the key)."""
    records: list[dict[str, Any]] = []
    sums: list[Checksums | None] = []
    for spec, source in _planned(step):
        if spec.type != "bind":
            continue
        target = mount_target(spec, step.workdir)
        root = roots(source)
        if root.context is None:
            records.append({"target": target, **root.origin, "layers": list(root.layers), "path": spec.source})
            sums.append(None)
            continue
        try:
            check_inside(root.context, spec.source)
        except CopyError as err:
            raise BuildError(f"bind mount {target}: {err.message}") from None
        try:
            checksums = checksum_source(root.context, spec.source, stats=root.stats, epoch=epoch)
        except CopyError as err:
            raise BuildError(f"bind mount {target}: source {err.message}") from None
        records.append({"target": target, **root.origin, "path": spec.source, "matches": checksums.matches})
        sums.append(checksums)
    return records, sums


def _resolved(root: BindRoot, path: str, target: str) -> tuple[str, os.stat_result]:
    tree = root.tree()
    try:
        check_inside(tree, path)
        rel = resolve(tree, path)
    except CopyError as err:
        raise BuildError(f"bind mount {target}: {err.message}") from None
    st = tree.lstat(rel)
    if st is None:
        raise BuildError(f'bind mount {target}: source "{_described(path)}": not found')
    return rel, st


def _whiteouts(tree: ContextTree, rel: str, into: Path) -> bool:
    """Whiteouts in ``into`` for what ``.dockerignore`` hides under ``rel``, so that an overlay of ``into`` over the
    context shows what BuildKit's context transfer would have sent; whether there was anything to hide."""
    if tree.rules is None:
        return False
    found = False
    pending = [rel]
    while pending:
        current = pending.pop()
        try:
            names = sorted(os.listdir(tree.real_path(current)))
        except (NotADirectoryError, FileNotFoundError):
            continue
        for raw in names:
            name = os.fsdecode(raw)
            child = f"{current}/{name}" if current else name
            st = tree.lstat(child)
            if st is None:
                os.mknod(_mirrored(tree, current, into) / name, stat.S_IFCHR | 0o000, 0)
                found = True
            elif stat.S_ISDIR(st.st_mode):
                pending.append(child)
    return found


def _mirrored(tree: ContextTree, rel: str, into: Path) -> Path:
    """Directory ``rel`` in ``into``, made with the mode, owner and times of the context's own (in the overlay, the
    top layer's directory is the one seen)."""
    path, done = into, ""
    for part in ["", *(p for p in rel.split("/") if p)]:
        done = f"{done}/{part}" if done else part
        path = path / part if part else path
        if path.exists():
            continue
        path.mkdir(mode=0o700, parents=True)
        st = os.lstat(tree.real_path(done))
        _set_metadata(path, st, owners=True)
    return path


def _bind(spec: MountSpec, root: BindRoot, target: str, scratch: Path) -> MountPoint:
    from builder.executor import MountPoint

    rel, _ = _resolved(root, spec.source, target)
    lowers = root.lowers()
    if root.context is not None and _whiteouts(root.context, rel, scratch / "hidden"):
        lowers = (scratch / "hidden", *lowers)
    return MountPoint(
        "bind",
        target,
        source=rel,
        readonly=spec.readonly,
        lowers=tuple(os.fspath(p) for p in lowers),
        copy_on_write=not spec.readonly,
    )


# --------------------------------------------------------------------------------------------- cache mounts


def _copy_tree(tree: SourceTree, rel: str, into: Path) -> None:
    """Copy the contents of directory ``rel`` of ``tree`` into the empty directory ``into`` (a new cache mount's
    seed): entries as they are, symlinks as symlinks, owners kept when the tree keeps them. ``into`` is new and
    ours, so nothing created here can be a symlink planted on the way."""
    pending = [(rel, into)]
    directories: list[tuple[Path, os.stat_result]] = []
    while pending:
        source, dest = pending.pop()
        for name in tree.listdir(source):
            child = f"{source}/{name}" if source else name
            st = tree.lstat(child)
            if st is None:
                continue
            path = dest / name
            if stat.S_ISDIR(st.st_mode):
                path.mkdir(mode=0o700)
                pending.append((child, path))
                directories.append((path, st))
                continue
            if stat.S_ISREG(st.st_mode):
                with tree.open(child) as f_in:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                    with os.fdopen(fd, "wb") as f_out:
                        shutil.copyfileobj(f_in, f_out, 1 << 20)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(tree.readlink(child), path)
            else:
                continue  # devices, fifos and sockets are not worth seeding a cache with
            _set_metadata(path, st, tree.keeps_owners)
    for path, st in reversed(directories):
        _set_metadata(path, st, tree.keeps_owners)


def _set_metadata(path: Path, st: os.stat_result, owners: bool) -> None:
    os.lchown(path, st.st_uid if owners else 0, st.st_gid if owners else 0)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)


def _cache(
    spec: MountSpec, source: Source | None, target: str, roots: Roots, caches: Any, stack: contextlib.ExitStack
) -> MountPoint:
    from builder.executor import MountPoint

    seed: Callable[[Path], None] | None = None
    if spec.from_:
        root = roots(source)
        rel, st = _resolved(root, spec.source, target)
        if not stat.S_ISDIR(st.st_mode):
            raise BuildError(f"cache mount {target}: source {_described(spec.source)} is not a directory")

        def seed(directory: Path) -> None:
            _copy_tree(root.tree(), rel, directory)

    directory = stack.enter_context(
        caches.open(
            spec.id or target,
            sharing=spec.sharing or "shared",
            uid=spec.uid or 0,
            gid=spec.gid or 0,
            mode=CACHE_MODE if spec.mode is None else spec.mode,
            seed=seed,
        )
    )
    # Without from=, source= is a path inside the cache directory (resolved there by the sandbox, symlinks and all).
    inside = "" if spec.from_ else spec.source
    return MountPoint("bind", target, source=inside, readonly=spec.readonly, lowers=(os.fspath(directory),))


# ------------------------------------------------------------------------------------------------ ssh agents


class _AgentProxy:
    """A socket of pybuild's own that forwards each connection to an SSH agent, so the container's socket can have
    the owner and mode the mount asks for (BuildKit forwards agents through its session the same way)."""

    def __init__(self, path: Path, agent: str, uid: int, gid: int, mode: int) -> None:
        import socket  # here, not at the top: only a build with --ssh needs it

        self.path = path
        self.agent = agent
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(os.fspath(path))
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        self.listener.listen(16)
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._serve, name=f"ssh-agent {path.name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import selectors
        import socket

        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        selector.register(self._wake_read, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}

        def drop(conn: socket.socket) -> None:
            for end in (conn, peers.get(conn)):
                if end is not None and end in peers:
                    selector.unregister(end)
                    peers.pop(end, None)
                    end.close()

        try:
            while True:
                for key, _ in selector.select():
                    if key.fileobj == self._wake_read:
                        return
                    if key.fileobj is self.listener:
                        client, _ = self.listener.accept()
                        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        try:
                            upstream.connect(self.agent)
                        except OSError:
                            client.close()
                            upstream.close()
                            continue
                        peers[client], peers[upstream] = upstream, client
                        selector.register(client, selectors.EVENT_READ)
                        selector.register(upstream, selectors.EVENT_READ)
                        continue
                    conn = key.fileobj
                    assert isinstance(conn, socket.socket)
                    try:
                        data = conn.recv(1 << 16)
                        if data:
                            peers[conn].sendall(data)
                    except OSError:
                        data = b""
                    if not data:
                        drop(conn)
        finally:
            for conn in list(peers):
                conn.close()
            selector.close()

    def close(self) -> None:
        os.write(self._wake_write, b"x")
        self._thread.join()
        for fd in (self._wake_read, self._wake_write):
            os.close(fd)
        self.listener.close()


# ------------------------------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class Prepared:
    mounts: tuple[MountPoint, ...]  # in the order to make them, parents first
    env: tuple[str, ...] = ()  # "K=V" added to the command's environment (SSH_AUTH_SOCK)
    secret_env: tuple[str, ...] = field(default=(), repr=False)  # secrets as variables: never written anywhere


def _target_order(mount: MountPoint) -> list[str]:
    return [p for p in mount.target.split("/") if p]


@contextlib.contextmanager
def prepared(
    step: Step,
    *,
    roots: Roots,
    scratch: Path,
    env: Sequence[str] = (),
    secrets: Secrets | None = None,
    agents: Mapping[str, str] | None = None,
    caches: Any = None,
) -> Iterator[Prepared]:
    """The mounts of one run of ``step``, held (cache directories locked, agent sockets forwarded) until the
    ``with`` ends. ``scratch`` is a private directory of the step's, removed by the caller afterwards."""
    from builder.executor import MountPoint

    secrets = secrets if secrets is not None else Secrets()
    agents = agents or {}
    points: list[MountPoint] = []
    secret_env: list[str] = []
    ssh_targets: list[str] = []
    with contextlib.ExitStack() as stack:
        for number, (spec, source) in enumerate(_planned(step)):
            kind = spec.type
            if kind == "bind":
                target = mount_target(spec, step.workdir)
                points.append(_bind(spec, roots(source), target, scratch / f"bind-{number}"))
            elif kind == "tmpfs":
                points.append(MountPoint("tmpfs", mount_target(spec, step.workdir), size=spec.size))
            elif kind == "cache":
                target = mount_target(spec, step.workdir)
                points.append(_cache(spec, source, target, roots, caches, stack))
            elif kind == "secret":
                value = secrets.get(spec.id)
                if value is None:
                    if spec.required:
                        raise BuildError(
                            f"secret {spec.id} is required but was not given",
                            hint=f"pass it with --secret id={spec.id},src=FILE or --secret id={spec.id},env=VARIABLE",
                        )
                    continue
                target = mount_target(spec, step.workdir)
                if target:
                    mode = SECRET_MODE if spec.mode is None else spec.mode
                    uid, gid = spec.uid or 0, spec.gid or 0
                    points.append(MountPoint("file", target, readonly=True, mode=mode, uid=uid, gid=gid, data=value))
                if spec.env:
                    if b"\0" in value:
                        raise BuildError(f"secret {spec.id} holds a NUL byte: it cannot be the variable {spec.env}")
                    secret_env.append(f"{spec.env}={os.fsdecode(value)}")
            elif kind == "ssh":
                agent = agents.get(spec.id)
                if agent is None:
                    if spec.required:
                        raise BuildError(
                            f"no SSH agent {spec.id!r} was given", hint=f"pass one with --ssh {spec.id}[=SOCKET]"
                        )
                    continue
                target = mount_target(spec, step.workdir, len(ssh_targets))
                # A short private directory: a unix socket's path is limited to 107 bytes, the store's may be long.
                sockets = Path(tempfile.mkdtemp(prefix="pybuild-ssh-"))
                stack.callback(shutil.rmtree, sockets, True)
                mode = SSH_MODE if spec.mode is None else spec.mode
                proxy = _AgentProxy(sockets / "agent.sock", agent, spec.uid or 0, spec.gid or 0, mode)
                stack.callback(proxy.close)
                points.append(MountPoint("bind", target, source=os.fspath(proxy.path), readonly=True))
                ssh_targets.append(target)
        extra = []
        if ssh_targets and not any(e.split("=", 1)[0] == "SSH_AUTH_SOCK" for e in env):
            extra.append(f"SSH_AUTH_SOCK={ssh_targets[0]}")
        points.sort(key=_target_order)  # parents before what they hold; stable for equal targets
        yield Prepared(tuple(points), tuple(extra), tuple(secret_env))


# ------------------------------------------------------------------------------------------------ redaction


class Redactor:
    """Replaces every secret value in a step's output and errors with ``****`` (BuildKit does not; we do).

    A value is matched as given, without its surrounding whitespace (a file's final newline), and, for a
    multi-line secret such as a key file, line by line. Output is redacted as it streams: bytes that might be the
    start of a value split across two reads are held back until the next read (or the end) decides."""

    def __init__(self, values: Iterable[bytes]) -> None:
        patterns: set[bytes] = set()
        for value in values:
            for candidate in (value, value.strip()):
                if len(candidate) >= MIN_REDACTED:
                    patterns.add(candidate)
            for line in value.splitlines():
                if len(line.strip()) >= MIN_REDACTED_LINE:
                    patterns.add(line.strip())
        self.patterns = sorted(patterns, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def redact(self, data: bytes) -> bytes:
        for pattern in self.patterns:
            if pattern in data:
                data = data.replace(pattern, REDACTED)
        return data

    def text(self, text: str) -> str:
        if not self.patterns:
            return text
        return os.fsdecode(self.redact(os.fsencode(text)))

    def held(self, data: bytes) -> int:
        """How many bytes at the end of ``data`` could begin a value (and so wait for more)."""
        longest = 0
        for pattern in self.patterns:
            start = max(0, len(data) - len(pattern) + 1)
            first = pattern[:1]
            position = data.find(first, start)
            while position >= 0:
                tail = len(data) - position
                if tail <= longest:
                    break
                if pattern.startswith(data[position:]):
                    longest = tail
                    break
                position = data.find(first, position + 1)
        return longest

    def stream(self, sink: Callable[[bytes], None]) -> RedactedStream:
        return RedactedStream(self, sink)


class RedactedStream:
    """``sink`` behind a ``Redactor``; call ``close`` at the end of the output to pass on what is held back."""

    def __init__(self, redactor: Redactor, sink: Callable[[bytes], None]) -> None:
        self.redactor = redactor
        self.sink = sink
        self.pending = b""

    def __call__(self, chunk: bytes) -> None:
        if not self.redactor:
            self.sink(chunk)
            return
        data = self.redactor.redact(self.pending + chunk)
        keep = self.redactor.held(data)
        self.pending = data[len(data) - keep :] if keep else b""
        if len(data) > keep:
            self.sink(data[: len(data) - keep])

    def close(self) -> None:
        if self.pending:
            data, self.pending = self.redactor.redact(self.pending), b""
            self.sink(data)
