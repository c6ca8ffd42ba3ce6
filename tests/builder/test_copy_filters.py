"""--exclude and --parents: what the copier writes, and the checksums that key it, on a real tree (no image)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.checksum import checksum_source
from builder.copy import (
    ContextTree,
    CopyError,
    CopyOptions,
    CopySource,
    chown_ids,
    copy_items,
    select,
    split_parents,
)
from builder.snapshot import RootView

FILES = {
    "src/main.py": "main",
    "src/main_test.py": "test",
    "src/lib/util.py": "util",
    "src/lib/util_test.py": "nested test",
    "docs/keep.md": "keep",
    "docs/drop.md": "drop",
    "home.txt": "home",
    "homework.py": "work",
}


@pytest.fixture
def tree(tmp_path: Path) -> ContextTree:
    for path, text in FILES.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    return ContextTree(tmp_path)


def _copied(tree: ContextTree, dest: str, *sources: CopySource) -> dict[str, str]:
    items = copy_items(list(sources), dest, RootView([]), CopyOptions(now=0))
    return {item.entry.path: item.entry.type.name.lower() for item in items}


def test_split_parents_takes_the_pivot_or_the_root() -> None:
    assert split_parents("./x/y/file") == ("", "x/y/file")
    assert split_parents("base/./rel/f") == ("base", "rel/f")
    assert split_parents("a/../b/*.json") == ("", "b/*.json")


def test_exclude_patterns_are_relative_to_each_match(tree: ContextTree) -> None:
    copied = _copied(tree, "/app/", CopySource(tree, "src", excludes=("*_test.py",)))
    assert copied == {
        "app": "dir",
        "app/main.py": "file",
        "app/lib": "dir",
        "app/lib/util.py": "file",
        "app/lib/util_test.py": "file",
    }
    deep = _copied(tree, "/app/", CopySource(tree, "src", excludes=("**/*_test.py",)))
    assert "app/lib/util_test.py" not in deep and "app/main_test.py" not in deep


def test_exclude_drops_a_wildcard_match_that_is_a_file(tree: ContextTree) -> None:
    assert _copied(tree, "/h/", CopySource(tree, "hom*", excludes=("*.txt",))) == {"h": "dir", "h/homework.py": "file"}
    # A literal source is copied whatever the patterns say (BuildKit matches them below the source only).
    assert "h/home.txt" in _copied(tree, "/h/", CopySource(tree, "home.txt", excludes=("*.txt",)))


def test_an_exception_brings_back_a_file_and_its_directory(tree: ContextTree) -> None:
    copied = _copied(tree, "/all/", CopySource(tree, ".", excludes=("docs", "!docs/keep.md")))
    assert copied["all/docs"] == "dir" and "all/docs/keep.md" in copied and "all/docs/drop.md" not in copied


def test_parents_keeps_directories_and_matches_wildcards(tree: ContextTree) -> None:
    assert _copied(tree, "/d/", CopySource(tree, "./src/lib/util.py", parents=True)) == {
        "d": "dir",
        "d/src": "dir",
        "d/src/lib": "dir",
        "d/src/lib/util.py": "file",
    }
    assert set(_copied(tree, "/d/", CopySource(tree, "src/./lib/*_test.py", parents=True))) == {
        "d",
        "d/lib",
        "d/lib/util_test.py",
    }
    everywhere = _copied(tree, "/d/", CopySource(tree, "**/*.md", parents=True))
    assert {p for p, kind in everywhere.items() if kind == "file"} == {"d/docs/keep.md", "d/docs/drop.md"}
    with pytest.raises(CopyError, match='"/src/nope.py": not found'):
        select(CopySource(tree, "src/nope.py", parents=True))


def test_excluded_files_are_not_in_the_checksum(tree: ContextTree, tmp_path: Path) -> None:
    first = checksum_source(tree, "src", excludes=("*_test.py",)).matches
    (tmp_path / "src/main_test.py").write_text("changed")
    assert checksum_source(tree, "src", excludes=("*_test.py",)).matches == first
    assert checksum_source(tree, "src").matches != first
    (tmp_path / "src/main.py").write_text("changed")
    assert checksum_source(tree, "src", excludes=("*_test.py",)).matches != first


def test_parents_checksum_follows_only_the_matched_files(tree: ContextTree, tmp_path: Path) -> None:
    first = checksum_source(tree, "src/lib/*.py", parents=True).matches
    (tmp_path / "docs/keep.md").write_text("changed")
    assert checksum_source(tree, "src/lib/*.py", parents=True).matches == first
    os.chmod(tmp_path / "src/lib", 0o700)  # a parent directory the layer holds
    assert checksum_source(tree, "src/lib/*.py", parents=True).matches != first


def test_chown_ids_without_a_lookup() -> None:
    assert chown_ids("1000") == (1000, 1000)
    assert chown_ids("1000:50") == (1000, 50)
    assert chown_ids("root") == (0, 0)
    assert chown_ids("root:100") == (0, 100)
    assert chown_ids("app") is None and chown_ids("1000:staff") is None
