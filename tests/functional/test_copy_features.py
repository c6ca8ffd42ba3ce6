"""COPY/ADD --exclude, COPY --parents, --link, ADD of a git repository and ADD --unpack, through real builds.

Each test builds realistic Dockerfiles on the busybox base and reads the result back: the image's layers (read
straight from the store, whose layers are uncompressed tars), and the plain progress (``#N CACHED`` for a hit,
``#N cache miss: REASON`` for the first miss of a stage). Git sources are local repositories the tests make with
``git init`` and name by ``file://`` URLs.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CLIResult, HTTPFiles, require_tool, run_pybuild, step_states, write_context

# ------------------------------------------------------------------------------------------------ helpers


@dataclass
class Built:
    result: CLIResult
    steps: dict[str, str]  # step as shown -> "CACHED", "DONE" or "miss: REASON"

    def __getitem__(self, prefix: str) -> str:
        found = [state for title, state in self.steps.items() if title.startswith(prefix)]
        assert len(found) == 1, f"{prefix!r} is not one step of {list(self.steps)}"
        return found[0]


def build(ctx: Path, *args: str, env: dict[str, str] | None = None, ok: bool = True) -> Built:
    result = run_pybuild("build", "--progress", "plain", *args, str(ctx), env=env)
    if ok:
        assert result.code == 0, result
    return Built(result, step_states(result.err))


def image(name: str) -> dict:
    result = run_pybuild("inspect", name)
    assert result.code == 0, result
    return json.loads(result.out)[0]


def layer_entries(digest: str) -> dict[str, tarfile.TarInfo]:
    """A stored layer's entries by path (directories without their trailing slash)."""
    blob = Path(os.environ["PYBUILD_ROOT"]) / "blobs" / "sha256" / digest.split(":", 1)[1]
    with tarfile.open(blob) as tar:
        return {m.name.rstrip("/"): m for m in tar.getmembers()}


def layer_text(digest: str, path: str) -> str:
    blob = Path(os.environ["PYBUILD_ROOT"]) / "blobs" / "sha256" / digest.split(":", 1)[1]
    with tarfile.open(blob) as tar:
        f = tar.extractfile(path)
        assert f is not None, path
        return f.read().decode()


def last_layer(name: str) -> str:
    return image(name)["Layers"][-1]["Digest"]


def files_of(digest: str) -> set[str]:
    return {path for path, m in layer_entries(digest).items() if not m.isdir()}


# ------------------------------------------------------------------------------------------------ --exclude


EXCLUDE = """\
FROM busybox
COPY --exclude=*_test.py --exclude=**/*.md src/ /app/
COPY --exclude=*.txt hom* /homes/
COPY --exclude=docs --exclude=!docs/keep.md . /all/
"""

EXCLUDE_FILES = {
    "src/main.py": "print('main')\n",
    "src/main_test.py": "test 1\n",
    "src/lib/util.py": "util\n",
    "src/lib/util_test.py": "nested test: *_test.py does not reach below the first level\n",
    "src/lib/README.md": "readme\n",
    "home.txt": "text\n",
    "homework.py": "work\n",
    "docs/keep.md": "kept\n",
    "docs/drop.md": "dropped\n",
}


def test_exclude_leaves_out_what_the_patterns_match(tmp_path: Path, busybox: str) -> None:
    ctx = write_context(tmp_path / "ctx", EXCLUDE, EXCLUDE_FILES)
    build(ctx, "-t", "app")
    layers = [layer["Digest"] for layer in image("app")["Layers"][-3:]]
    # Patterns are .dockerignore's, relative to the source: "*" stays within one level, "**" crosses them.
    assert files_of(layers[0]) == {"app/main.py", "app/lib/util.py", "app/lib/util_test.py"}
    # A wildcard match that is a file is itself left out when a pattern names it (the Dockerfile reference's
    # example; moby/buildkit#5489 is BuildKit's bug there).
    assert files_of(layers[1]) == {"homes/homework.py"}
    # An exception brings one file of an excluded directory back, with that directory as its parent.
    everything = layer_entries(layers[2])
    assert "all/docs/keep.md" in everything and "all/docs/drop.md" not in everything
    assert everything["all/docs"].isdir()
    assert "all/src/main_test.py" in everything  # --exclude patterns belong to their own instruction


def test_an_excluded_file_changing_does_not_miss(tmp_path: Path, busybox: str) -> None:
    ctx = write_context(tmp_path / "ctx", EXCLUDE, EXCLUDE_FILES)
    build(ctx)
    (ctx / "src/main_test.py").write_text("test 2\n")
    (ctx / "src/lib/README.md").write_text("new readme\n")
    again = build(ctx)
    assert again["COPY --exclude=*_test.py"] == "CACHED"
    assert again["COPY --exclude=*.txt"] == "CACHED"
    assert again["COPY --exclude=docs"].startswith("miss: ")  # the third copies main_test.py
    (ctx / "src/main.py").write_text("print('changed')\n")
    changed = build(ctx)
    assert "main.py changed" in changed["COPY --exclude=*_test.py"]


# ------------------------------------------------------------------------------------------------ --parents

PARENTS = """\
FROM busybox
COPY --parents ./x/y/file.txt /dst/
COPY --parents packages/*/package.json /app/
COPY --parents ./base/./rel/deep.txt /pivot/
COPY --parents **/*.cfg /cfgs/
"""


def test_parents_keeps_the_source_directories(tmp_path: Path, busybox: str) -> None:
    files = {
        "x/y/file.txt": "f",
        "x/other.txt": "o",
        "packages/a/package.json": "{}",
        "packages/a/index.js": "a",
        "packages/b/package.json": "{}",
        "base/rel/deep.txt": "d",
        "one.cfg": "1",
        "conf/two.cfg": "2",
        "conf/skip.txt": "s",
    }
    ctx = write_context(tmp_path / "ctx", PARENTS, files)
    os.chmod(ctx / "x/y", 0o700)
    build(ctx, "-t", "app")
    layers = [layer["Digest"] for layer in image("app")["Layers"][-4:]]
    first = layer_entries(layers[0])
    assert files_of(layers[0]) == {"dst/x/y/file.txt"}
    assert first["dst/x/y"].mode == 0o700  # the parents are the source's directories, not made up ones
    assert files_of(layers[1]) == {"app/packages/a/package.json", "app/packages/b/package.json"}
    assert files_of(layers[2]) == {"pivot/rel/deep.txt"}  # what is before /./ is left out
    assert files_of(layers[3]) == {"cfgs/one.cfg", "cfgs/conf/two.cfg"}
    # A path without wildcards must exist.
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY --parents ./x/missing.txt /dst/\n")
    failed = build(ctx, ok=False)
    assert failed.result.code == 1 and '"/x/missing.txt": not found' in failed.result.err


def test_parents_cache_follows_only_the_matched_files(tmp_path: Path, busybox: str) -> None:
    files = {"packages/a/package.json": "{}", "packages/a/index.js": "1"}
    ctx = write_context(tmp_path / "ctx", "FROM busybox\nCOPY --parents packages/*/package.json /app/\n", files)
    build(ctx)
    (ctx / "packages/a/index.js").write_text("2")
    assert build(ctx)["COPY"] == "CACHED"
    (ctx / "packages/a/package.json").write_text('{"v": 2}')
    assert build(ctx)["COPY"].startswith("miss: ")


# ------------------------------------------------------------------------------------------------ --link

BASE = """\
FROM busybox
COPY version.txt /etc/version
RUN ln -s /srv /opt
"""

APP = """\
FROM base
COPY app.txt /opt/plain/
COPY --link app.txt /opt/app/
COPY --link --chown=1000:1000 app.txt /home/user/
"""


def test_link_layer_is_reused_when_the_base_changes(tmp_path: Path, busybox: str) -> None:
    base = write_context(tmp_path / "base", BASE, {"version.txt": "1"})
    app = write_context(tmp_path / "app", APP, {"app.txt": "the app"})
    build(base, "-t", "base")
    first = build(app, "-t", "app")
    assert all(state.startswith(("miss", "DONE")) for state in first.steps.values()), first.steps
    before = image("app")["Layers"]

    # The linked layer is made on an empty tree: /opt is a directory in it (the base's symlink is not
    # followed), every directory of the destination is there, root's (or --chown's), 0755.
    plain = layer_entries(before[-3]["Digest"])
    assert "srv/plain/app.txt" in plain  # a plain COPY follows the base's /opt -> /srv
    linked = layer_entries(before[-2]["Digest"])
    assert sorted(linked) == ["opt", "opt/app", "opt/app/app.txt"]
    assert all(linked[d].isdir() and linked[d].mode == 0o755 and linked[d].uid == 0 for d in ("opt", "opt/app"))
    owned = layer_entries(before[-1]["Digest"])
    assert {(m.uid, m.gid) for m in owned.values()} == {(1000, 1000)}

    (base / "version.txt").write_text("2")
    build(base, "-t", "base")
    rebuilt = build(app, "-t", "app")
    assert rebuilt["COPY app.txt"].startswith("miss: parent changed")  # a plain COPY is keyed by its parent
    assert rebuilt["COPY --link app.txt"] == "CACHED"  # linked, after a miss: still a hit
    assert rebuilt["COPY --link --chown"] == "CACHED"
    after = image("app")["Layers"]
    assert after[-2]["Digest"] == before[-2]["Digest"]  # the same linked layers, on the new base's layers
    assert after[-1]["Digest"] == before[-1]["Digest"]
    assert after[:-3] != before[:-3]
    assert layer_text(after[-5]["Digest"], "etc/version") == "2"  # under the RUN layer

    # Nothing changed: everything hits, and the step after a linked one depends on the state under it.
    assert all(state == "CACHED" for state in build(app, "-t", "app").steps.values())


def test_a_step_after_a_link_step_misses_when_the_base_changes(tmp_path: Path, busybox: str) -> None:
    base = write_context(tmp_path / "base", "FROM busybox\nCOPY version.txt /etc/version\n", {"version.txt": "1"})
    app = write_context(
        tmp_path / "app", "FROM base\nCOPY --link a.txt /a/\nCOPY b.txt /b/\n", {"a.txt": "a", "b.txt": "b"}
    )
    build(base, "-t", "base")
    build(app)
    (base / "version.txt").write_text("2")
    build(base, "-t", "base")
    again = build(app)
    assert again["COPY --link"] == "CACHED"
    assert again["COPY b.txt"] == "miss: parent changed: the layers under the previous (--link) step changed"


def test_link_refuses_a_chown_by_name(tmp_path: Path, busybox: str) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM busybox\nCOPY --link --chown=nobody a.txt /a/\n", {"a.txt": "a"})
    failed = build(ctx, ok=False)
    assert failed.result.code == 1
    assert "Dockerfile:2: COPY --link --chown=nobody: --link needs a numeric user and group" in failed.result.err


# ------------------------------------------------------------------------------------------------ ADD from git


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    full = {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        **(env or {}),
    }
    # The test's own git runs no hook and no fsmonitor the hostile repository configures.
    safe = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"]
    out = subprocess.run(["git", *safe, "-C", str(repo), *args], capture_output=True, text=True, env=full, check=True)
    return out.stdout.strip()


def commit(repo: Path, message: str, when: int) -> str:
    git(repo, "add", "-A")
    stamp = {"GIT_AUTHOR_DATE": f"@{when} +0000", "GIT_COMMITTER_DATE": f"@{when} +0000"}
    git(repo, "commit", "-q", "-m", message, env=stamp)
    return git(repo, "rev-parse", "HEAD")


@dataclass
class Repo:
    path: Path
    url: str
    v1: str  # main's first commit, tagged v1 (annotated)
    v2: str  # main's head
    dev: str  # the dev branch's head


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    require_tool("git")
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "app.txt").write_text("version 1\n")
    (path / "run.sh").write_text("#!/bin/sh\necho run\n")
    (path / "run.sh").chmod(0o755)
    (path / "docs").mkdir()
    (path / "docs/guide.md").write_text("guide 1\n")
    os.symlink("/etc/shadow", path / "escape")  # a symlink out of the repository stays a symlink
    v1 = commit(path, "one", 1_600_000_000)
    git(path, "tag", "-a", "v1", "-m", "release 1")
    (path / "app.txt").write_text("version 2\n")
    v2 = commit(path, "two", 1_600_000_100)
    git(path, "checkout", "-q", "-b", "dev")
    (path / "docs/guide.md").write_text("guide on dev\n")
    dev = commit(path, "dev", 1_600_000_200)
    git(path, "checkout", "-q", "main")
    return Repo(path, f"file://{path}", v1, v2, dev)


def test_add_git_at_a_tag_a_branch_a_commit_and_a_subdirectory(tmp_path: Path, busybox: str, repo: Repo) -> None:
    dockerfile = f"""\
FROM busybox
ADD {repo.url}#v1 /tagged
ADD {repo.url}#dev:docs /docs
ADD --keep-git-dir {repo.url}#{repo.v2} /full
ADD --checksum={repo.v2} {repo.url}#main /checked/
ADD {repo.url} /default
"""
    ctx = write_context(tmp_path / "ctx", dockerfile)
    build(ctx, "-t", "app")
    layers = [layer["Digest"] for layer in image("app")["Layers"][-5:]]
    tagged = layer_entries(layers[0])
    assert layer_text(layers[0], "tagged/app.txt") == "version 1\n"
    assert ".git" not in {Path(p).name for p in tagged}
    assert tagged["tagged/run.sh"].mode == 0o755 and tagged["tagged/app.txt"].mode == 0o644
    assert tagged["tagged/escape"].issym() and tagged["tagged/escape"].linkname == "/etc/shadow"
    assert {m.mtime for m in tagged.values()} == {1_600_000_000}  # the commit's time, whenever checked out
    assert {(m.uid, m.gid) for m in tagged.values()} == {(0, 0)}
    assert files_of(layers[1]) == {"docs/guide.md"} and layer_text(layers[1], "docs/guide.md") == "guide on dev\n"
    full = layer_entries(layers[2])
    assert "full/.git/HEAD" in full and layer_text(layers[2], "full/.git/HEAD").strip() == repo.v2
    assert layer_text(layers[2], "full/app.txt") == "version 2\n"
    assert layer_text(layers[3], "checked/app.txt") == "version 2\n"
    assert layer_text(layers[4], "default/app.txt") == "version 2\n"  # the default branch


def test_add_git_checksum_must_match(tmp_path: Path, busybox: str, repo: Repo) -> None:
    ctx = write_context(tmp_path / "ctx", f"FROM busybox\nADD --checksum={repo.v1} {repo.url}#main /src\n")
    failed = build(ctx, ok=False)
    assert failed.result.code == 1
    assert f"expected checksum to match {repo.v1}, got {repo.v2}" in failed.result.err
    # An annotated tag matches by its commit too, and a prefix is enough.
    (ctx / "Dockerfile").write_text(f"FROM busybox\nADD --checksum={repo.v1[:12]} {repo.url}#v1 /src\n")
    build(ctx)


def test_add_git_is_keyed_by_the_commit_the_ref_names(tmp_path: Path, busybox: str, repo: Repo) -> None:
    ctx = write_context(tmp_path / "ctx", f"FROM busybox\nADD {repo.url}#main /src\nADD {repo.url}#v1 /tag\n")
    build(ctx)
    assert all(state == "CACHED" for state in build(ctx).steps.values())
    (repo.path / "app.txt").write_text("version 3\n")
    v3 = commit(repo.path, "three", 1_600_000_300)
    again = build(ctx, "-t", "app")
    assert again[f"ADD {repo.url}#main"] == f"miss: {repo.url} now at {v3} (was {repo.v2})"
    assert again[f"ADD {repo.url}#v1"] == "DONE"  # after the first miss of a stage, every step runs
    assert layer_text(image("app")["Layers"][-2]["Digest"], "src/app.txt") == "version 3\n"


def test_add_git_is_reproducible_under_source_date_epoch(tmp_path: Path, busybox: str, repo: Repo) -> None:
    ctx = write_context(tmp_path / "ctx", f"FROM busybox\nADD {repo.url}#v1 /src\nADD --keep-git-dir {repo.url} /k\n")
    env = {"SOURCE_DATE_EPOCH": "1650000000"}
    first = build(ctx, "-q", "--no-cache", "-t", "one", env=env)
    second = build(ctx, "-q", "--no-cache", "-t", "two", env=env)
    assert first.result.out.strip() == second.result.out.strip()
    assert image("one")["Digest"] == image("two")["Digest"]
    tree = layer_entries(image("one")["Layers"][-2]["Digest"])
    assert {m.mtime for m in tree.values()} == {1_600_000_000}  # earlier than the epoch: kept


def test_a_hostile_repository_runs_nothing_and_reads_nothing_outside(tmp_path: Path, busybox: str, repo: Repo) -> None:
    sentinel = tmp_path / "sentinel"
    hook = f"#!/bin/sh\ntouch {sentinel}\n"
    hooks = repo.path / ".git/hooks"
    hooks.mkdir(exist_ok=True)
    for name in ("post-checkout", "post-merge", "pre-upload-pack", "post-update", "reference-transaction"):
        (hooks / name).write_text(hook)
        (hooks / name).chmod(0o755)
    # Configuration in the served repository that would run a command if anything honoured it.
    git(repo.path, "config", "core.fsmonitor", f"touch {sentinel}")
    git(repo.path, "config", "uploadpack.packObjectsHook", f"touch {sentinel};")
    git(repo.path, "config", "core.hooksPath", str(hooks))
    # A subdirectory that is a symlink to / resolves inside the checkout, never to the host's root.
    os.symlink("/", repo.path / "root")
    (repo.path / ".gitattributes").write_text("*.txt filter=evil\n")
    commit(repo.path, "hostile", 1_600_000_400)
    # A submodule pointing at a repository of the host: the file transport is refused for submodules.
    secret = tmp_path / "secret"
    secret.mkdir()
    git(secret, "init", "-q", "-b", "main")
    (secret / "secret.txt").write_text("host secret\n")
    commit(secret, "secret", 1_600_000_500)
    ctx = write_context(tmp_path / "ctx", f"FROM busybox\nADD {repo.url}#main:root /src\n")
    build(ctx, "-t", "app")
    assert not sentinel.exists()
    tree = layer_entries(image("app")["Layers"][-1]["Digest"])
    assert "src/app.txt" in tree and "src/etc" not in tree and "src/root" in tree and tree["src/root"].issym()

    git(repo.path, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(secret), "vendored")
    commit(repo.path, "submodule", 1_600_000_600)
    failed = build(ctx, ok=False)
    assert failed.result.code == 1 and "submodule" in failed.result.err
    assert not sentinel.exists()
    # With submodules=false, the submodule is left out (its directory stays empty).
    (ctx / "Dockerfile").write_text(f"FROM busybox\nADD {repo.url}?submodules=false#main /src\n")
    build(ctx, "-t", "app")
    tree = layer_entries(image("app")["Layers"][-1]["Digest"])
    assert tree["src/vendored"].isdir() and not any(p.startswith("src/vendored/") for p in tree)
    blobs = Path(os.environ["PYBUILD_ROOT"]) / "blobs" / "sha256"
    assert not any(b"host secret" in blob.read_bytes() for blob in blobs.iterdir())


def test_add_git_submodules_are_checked_out(tmp_path: Path, busybox: str, repo: Repo, http_files: HTTPFiles) -> None:
    sub = http_files.root / "lib.git"
    sub.mkdir()
    git(sub, "init", "-q", "-b", "main")
    (sub / "lib.txt").write_text("library\n")
    commit(sub, "lib", 1_600_000_700)
    git(sub, "update-server-info")  # served by a "dumb" HTTP server, which cannot serve a shallow fetch
    url = f"{http_files.url}/lib.git/.git"
    git(repo.path, "-c", "protocol.http.allow=always", "submodule", "add", "-q", url, "vendored/lib")
    commit(repo.path, "with a submodule", 1_600_000_800)
    ctx = write_context(tmp_path / "ctx", f"FROM busybox\nADD {repo.url}#main /src\n")
    build(ctx, "-t", "app")
    digest = image("app")["Layers"][-1]["Digest"]
    assert layer_text(digest, "src/vendored/lib/lib.txt") == "library\n"
    assert not any(Path(p).name == ".git" for p in layer_entries(digest))


# ------------------------------------------------------------------------------------------------ ADD --unpack


def _archive() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = b"from the archive\n"
        info = tarfile.TarInfo("pkg/readme.txt")
        info.size, info.mtime, info.mode = len(data), 1_600_000_000, 0o644
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def test_add_unpack(tmp_path: Path, busybox: str, http_files: HTTPFiles) -> None:
    (http_files.root / "pkg.tar.gz").write_bytes(_archive())
    url = f"{http_files.url}/pkg.tar.gz"
    dockerfile = f"""\
FROM busybox
ADD --unpack=true {url} /remote-unpacked/
ADD {url} /remote-kept/
ADD local.tar.gz /local-unpacked/
ADD --unpack=false local.tar.gz /local-kept/
"""
    ctx = write_context(tmp_path / "ctx", dockerfile)
    (ctx / "local.tar.gz").write_bytes(_archive())
    build(ctx, "-t", "app")
    layers = [layer["Digest"] for layer in image("app")["Layers"][-4:]]
    assert files_of(layers[0]) == {"remote-unpacked/pkg/readme.txt"}
    assert files_of(layers[1]) == {"remote-kept/pkg.tar.gz"}
    assert files_of(layers[2]) == {"local-unpacked/pkg/readme.txt"}
    assert files_of(layers[3]) == {"local-kept/local.tar.gz"}
