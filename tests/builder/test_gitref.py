"""ADD's git sources as BuildKit's front end reads them, and which object an ls-remote listing names (pure)."""

from __future__ import annotations

import pytest

from builder.errors import DockerfileError
from builder.frontend.gitref import GitRef, check_checksum, is_git_source, parse_git_ref, pick_ref, redact

A = "a" * 40
B = "b" * 40
C = "c" * 40


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("https://github.com/moby/buildkit.git", GitRef("https://github.com/moby/buildkit.git", "https")),
        (
            "https://github.com/moby/buildkit.git#v0.10.1",
            GitRef("https://github.com/moby/buildkit.git", "https", "v0.10.1"),
        ),
        ("https://host/r.git#main:docs/sub", GitRef("https://host/r.git", "https", "main", "docs/sub")),
        ("https://host/r.git#:docs", GitRef("https://host/r.git", "https", "", "docs")),
        ("git@github.com:foo/bar.git#v1", GitRef("git@github.com:foo/bar.git", "ssh", "v1")),
        ("ssh://git@host/r", GitRef("ssh://git@host/r", "ssh")),
        ("git://host/r#dev", GitRef("git://host/r", "git", "dev")),
        ("file:///srv/repo#dev:sub", GitRef("file:///srv/repo", "file", "dev", "sub")),
        ("https://host/r.git##ref=v1,subdir=x", GitRef("https://host/r.git", "https", "v1", "x")),
        ("https://host/r.git##commit=" + A, GitRef("https://host/r.git", "https", A)),
        (
            "https://host/r.git?ref=main&subdir=d&keep-git-dir=1&submodules=false",
            GitRef("https://host/r.git", "https", "main", "d", keep_git_dir=True, submodules=False),
        ),
        ("https://host/r.git?branch=dev", GitRef("https://host/r.git", "https", "refs/heads/dev")),
        ("https://host/r.git?tag=v1", GitRef("https://host/r.git", "https", "refs/tags/v1")),
        ("https://host/r.git?checksum=" + A, GitRef("https://host/r.git", "https", A, checksum=A)),
    ],
)
def test_git_sources(source: str, expected: GitRef) -> None:
    assert parse_git_ref(source) == expected
    assert is_git_source(source)


@pytest.mark.parametrize(
    "source",
    [
        "https://host/app.tar.gz",
        "http://host/r.git.bak",
        "./repo.git",
        "../r.git",
        "src/app.py",
        "C:/x",
        "ftp://h/r.git",
    ],
)
def test_what_is_not_a_git_source(source: str) -> None:
    assert parse_git_ref(source) is None
    assert not is_git_source(source)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("https://host/r.git?tag=v1&branch=x", "branch conflicts with tag"),
        ("https://host/r.git?ref=a&ref=b", "query 'ref' has multiple values"),
        ("https://host/r.git#main?ref=dev", ""),  # the query is part of the fragment there: no conflict
        ("https://host/r.git?nope=1", "unexpected query 'nope'"),
        ("https://host/r.git?keep-git-dir=maybe", "invalid keep-git-dir value"),
        ("https://host/r.git##ref", "invalid field 'ref' must be a key=value pair"),
        ("https://host/r.git#main:x?subdir=y", ""),
    ],
)
def test_bad_queries_and_fragments(source: str, message: str) -> None:
    if not message:
        assert parse_git_ref(source) is not None
        return
    with pytest.raises(DockerfileError, match=message):
        parse_git_ref(source)
    assert is_git_source(source)  # still a git source: the build says what is wrong with it


def test_credentials_are_redacted() -> None:
    assert redact("https://user:token@host/r.git#main") == "https://user:xxxxx@host/r.git#main"
    assert redact("https://host/r.git") == "https://host/r.git"
    assert redact("git@host:r.git") == "git@host:r.git"
    assert parse_git_ref("https://u:secret@host/r.git").shown == "https://u:xxxxx@host/r.git"  # type: ignore[union-attr]


LISTING = [
    f"{A}\trefs/heads/main",
    f"{B}\trefs/tags/main",
    f"{B}\trefs/tags/v1",
    f"{C}\trefs/tags/v1^{{}}",
]


def test_pick_prefers_a_branch_then_a_tag_and_dereferences_annotated_tags() -> None:
    main = pick_ref("main", LISTING)
    assert (main.sha, main.ref, main.commit) == (A, "refs/heads/main", "")
    tag = pick_ref("v1", LISTING)
    assert (tag.sha, tag.ref, tag.commit) == (B, "refs/tags/v1", C)
    exact = pick_ref("refs/tags/main", LISTING)
    assert (exact.sha, exact.commit) == (B, "")
    with pytest.raises(DockerfileError, match="repository does not contain ref nope"):
        pick_ref("nope", LISTING)


def test_pick_checks_the_checksum_against_the_object_or_the_tagged_commit() -> None:
    assert pick_ref("v1", LISTING, checksum="bbbb").sha == B
    assert pick_ref("v1", LISTING, checksum="cccc").commit == C
    with pytest.raises(DockerfileError, match=f"expected checksum to match dddd, got {B} or {C}"):
        pick_ref("v1", LISTING, checksum="dddd")
    with pytest.raises(DockerfileError, match="expected hex commit hash"):
        check_checksum("sha256:abc")
