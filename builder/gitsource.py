"""ADD of a git repository: the ref resolved to a commit (``git ls-remote``), then that commit checked out.

Everything goes through the ``git`` command, run so that neither the repository nor the machine's git
configuration can make it run anything: a private HOME, no system or global configuration
(``GIT_CONFIG_NOSYSTEM``, ``GIT_CONFIG_GLOBAL=/dev/null``), ``core.hooksPath=/dev/null`` and ``core.fsmonitor``
off, no prompts, and an allow-list of transports (``protocol.allow=never``; https, http, ssh and git always;
``file`` only when the source itself is a ``file://`` URL, and never for submodules, so a hostile
``.gitmodules`` cannot point a clone at the host's own repositories). A fetched repository brings only objects
and refs, never configuration or hooks, and the checkout is made in a repository pybuild created (no template,
so no hook files either).

As BuildKit's git source does (source/git/source.go): the remote's default branch when no ref is given; a ref
is looked up with ``ls-remote`` (a branch before a tag), a full commit hash is taken as it is; the commit is
fetched shallow (depth 1; the whole history from a server that cannot serve a shallow fetch, such as a "dumb"
HTTP one) into a scratch repository and checked out (files 0644, executables 0755, directories 0755); submodules
are checked out too, shallow and recursively, unless the URL says ``submodules=false``; the ``.git`` directory is
kept only with ``--keep-git-dir`` (and without a subdirectory), holding the fetched ref, a detached HEAD and
``origin``. Every entry's mtime is the commit's time (BuildKit's ``git.mtime=commit`` policy), so the same commit
always gives the same files, whenever and wherever it is checked out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError
from builder.frontend.gitref import GitRef, Picked, check_checksum, is_commit_sha, pick_ref

__all__ = ["Checkout", "GitError", "Resolved", "checkout", "resolve"]

# Passed through to git (proxies, the SSH agent, TLS trust); nothing else of the caller's environment is.
_PASSED = (
    "PATH",
    "SSH_AUTH_SOCK",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
)
_SAFE = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.symlinks=true",
    "protocol.allow=never",
    "protocol.https.allow=always",
    "protocol.http.allow=always",
    "protocol.ssh.allow=always",
    "protocol.git.allow=always",
    "fetch.recurseSubmodules=false",
    "submodule.recurse=false",
    "advice.detachedHead=false",
    "init.defaultBranch=master",
    "gc.auto=0",
)


class GitError(BuildError):
    """A git source that cannot be resolved or checked out (``output``: what git said)."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


@dataclass(frozen=True)
class Resolved:
    """What a git source's ref names now: the key of the step, and what to fetch."""

    sha: str  # the object the ref names (an annotated tag's tag object)
    commit: str  # the commit checked out
    ref: str = ""  # the full ref it was found under; "" when the source named a commit

    @property
    def key(self) -> str:
        """The object the step's key holds (BuildKit's: the tag's commit, unless the .git directory is kept)."""
        return self.commit


@dataclass(frozen=True)
class Checkout:
    root: Path  # the work tree (with .git when kept)
    commit: str
    time: int  # the commit's time: every entry's mtime


class _Git:
    """The git command, confined as the module docstring says, for one source."""

    def __init__(self, source: GitRef, scratch: Path) -> None:
        self.source = source
        self.scratch = scratch
        home = scratch / "home"
        home.mkdir(mode=0o700, exist_ok=True)
        env = {name: os.environ[name] for name in _PASSED if name in os.environ}
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env.update(
            HOME=str(home),
            XDG_CONFIG_HOME=str(home),
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL="/dev/null",
            GIT_TERMINAL_PROMPT="0",
            GIT_SSH_COMMAND="ssh -o BatchMode=yes",
            LC_ALL="C",
        )
        self.env = env

    def run(self, *args: str, cwd: Path | None = None, remote: bool = True, what: str = "") -> str:
        """``git ARGS``; ``remote``: the command may reach the source (``file://`` is allowed then, if it is one)."""
        options: list[str] = []
        for setting in _SAFE:
            options += ["-c", setting]
        if remote and self.source.scheme == "file":
            options += ["-c", "protocol.file.allow=always"]
        else:
            options += ["-c", "protocol.file.allow=never"]
        try:
            proc = subprocess.run(
                ["git", *options, *args],
                cwd=cwd or self.scratch,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                umask=0o022,
            )
        except FileNotFoundError:
            raise GitError("ADD of a git repository needs the git command, which is not installed") from None
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            detail = lines[-1].strip() if lines else f"exit status {proc.returncode}"
            detail = detail.replace(self.source.remote, self.source.shown)
            raise GitError(f"{self.source.shown}: {what or 'git ' + args[0]} failed: {detail}", proc.stderr)
        return proc.stdout

    def fetch(self, git_dir: Path, refspec: str) -> None:
        """A shallow fetch, or a whole one from a server that cannot serve a shallow fetch (dumb HTTP)."""
        base = ["--git-dir", str(git_dir), "fetch", "--quiet", "--no-tags", "--no-recurse-submodules", "-u"]
        try:
            self.run(*base, "--depth=1", self.source.remote, refspec, what="fetch")
        except GitError as err:
            if "shallow" not in err.output:
                raise
            self.run(*base, self.source.remote, refspec, what="fetch")


def resolve(source: GitRef, scratch: Path) -> Resolved:
    """The commit ``source`` names now (no network for a full commit hash)."""
    check_checksum(source.checksum)
    if is_commit_sha(source.ref):
        if source.checksum and not source.ref.startswith(source.checksum):
            raise GitError(f"expected checksum to match {source.checksum}, got {source.ref}")
        return Resolved(source.ref, source.ref)
    git = _Git(source, scratch)
    ref = source.ref
    if not ref:
        listing = git.run("ls-remote", "--symref", source.remote, "HEAD", what="ls-remote")
        heads = [line.split()[1] for line in listing.splitlines() if line.startswith("ref: ")]
        if not heads:
            raise GitError(f"could not find default branch for repository: {source.shown}")
        ref = heads[0]
    listing = git.run("ls-remote", source.remote, ref, ref + "^{}", what="ls-remote")
    try:
        picked: Picked = pick_ref(ref, listing.splitlines(), source.checksum)
    except BuildError as err:
        raise GitError(f"{source.shown}: {err.message}") from None
    return Resolved(picked.sha, picked.commit or picked.sha, picked.ref)


def checkout(source: GitRef, resolved: Resolved, scratch: Path, *, keep_git_dir: bool) -> Checkout:
    """Fetch and check out ``resolved`` under ``scratch``; ``keep_git_dir`` keeps ``.git`` in the tree."""
    git = _Git(source, scratch)
    tree = scratch / "tree"
    tree.mkdir()
    tree.chmod(0o755)
    keep = keep_git_dir and not source.subdir  # as BuildKit: a subdirectory never brings .git along
    if keep:
        git_dir = tree / ".git"
        git.run("init", "--quiet", "--template=", str(tree), remote=False)
    else:
        git_dir = scratch / "repo.git"
        git.run("init", "--quiet", "--bare", "--template=", str(git_dir), remote=False)
    local = resolved.ref if keep and resolved.ref else "refs/pybuild/fetched"
    if resolved.ref:
        git.fetch(git_dir, f"+{resolved.ref}:{local}")
        fetched = git.run("--git-dir", str(git_dir), "rev-parse", "--verify", local, remote=False).strip()
        if fetched != resolved.sha:  # the ref moved since it was resolved: fetch what the key says
            git.fetch(git_dir, resolved.sha)
    else:
        git.fetch(git_dir, resolved.sha)
    _verify(git, git_dir, resolved)
    at = ["--git-dir", str(git_dir), "--work-tree", str(tree)]
    if keep:
        git.run(*at, "checkout", "--quiet", "--detach", resolved.commit, cwd=tree, remote=False, what="checkout")
    else:
        git.run(*at, "checkout", "--quiet", "-f", resolved.commit, "--", ".", cwd=tree, remote=False, what="checkout")
    if source.submodules is not False and (tree / ".gitmodules").is_file():
        _submodules(git, at, tree)
    if keep:
        git.run(*at, "remote", "add", "origin", source.shown, remote=False)
        git.run(*at, "reflog", "expire", "--all", "--expire=now", remote=False)
        (git_dir / "FETCH_HEAD").unlink(missing_ok=True)
        # The index git wrote holds each file's inode and ctime, which differ on every checkout: an index read
        # from the commit holds none (git compares the files by content once, the first time it looks).
        (git_dir / "index").unlink(missing_ok=True)
        git.run(*at, "read-tree", resolved.commit, remote=False)
    else:
        _drop_gitlinks(tree)
    when = git.run("--git-dir", str(git_dir), "show", "-s", "--format=%ct", resolved.commit, remote=False)
    time = int(when.strip() or 0)
    _date(tree, time)
    return Checkout(tree, resolved.commit, time)


def _verify(git: _Git, git_dir: Path, resolved: Resolved) -> None:
    """The fetched object is the one the key names (a server cannot hand over another commit under that name)."""
    try:
        kind = git.run("--git-dir", str(git_dir), "cat-file", "-t", resolved.sha, remote=False).strip()
        commit = git.run("--git-dir", str(git_dir), "rev-parse", "--verify", resolved.sha + "^{commit}", remote=False)
    except GitError:
        raise GitError(f"{git.source.shown}: the fetch did not bring {resolved.sha}") from None
    if kind not in ("commit", "tag") or commit.strip() != resolved.commit:
        raise GitError(f"{git.source.shown}: {resolved.sha} is not the commit {resolved.commit}")


def _submodules(git: _Git, at: list[str], tree: Path) -> None:
    """``git submodule update --init --recursive``, shallow where the server allows; never over ``file://``."""
    base = [*at, "submodule", "--quiet", "update", "--init", "--recursive"]
    try:
        git.run(*base, "--depth=1", cwd=tree, remote=False, what="submodule update")
    except GitError as err:
        if "shallow" not in err.output:
            raise
        git.run(*base, cwd=tree, remote=False, what="submodule update")


def _drop_gitlinks(tree: Path) -> None:
    """Without ``--keep-git-dir`` no ``.git`` stays: a submodule's is a pointer into the scratch repository.
    (Git never checks out a path named ``.git``, so every one here is git's own.)"""
    for directory, dirs, files in os.walk(tree):
        if ".git" in dirs:
            dirs.remove(".git")
            shutil.rmtree(os.path.join(directory, ".git"))
        if ".git" in files:
            os.unlink(os.path.join(directory, ".git"))


def _date(tree: Path, when: int) -> None:
    """Every entry's mtime (and atime) is the commit's time; symlinks' own, never their targets'."""
    for directory, dirs, files in os.walk(tree, topdown=False):
        for name in [*files, *dirs]:
            os.utime(os.path.join(directory, name), (when, when), follow_symlinks=False)
    os.utime(tree, (when, when))
