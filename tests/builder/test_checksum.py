"""Checksums of COPY sources: what changes them, what does not, and the stat cache that spares re-reading."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from builder.checksum import RACY_NS, StatCache, StatRow, checksum_source
from builder.context import parse_ignore
from builder.copy import ContextTree, CopyError


def _tree(root: Path, files: dict[str, str], ignore: str = "") -> ContextTree:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return ContextTree(root, parse_ignore(ignore.encode()) if ignore else None)


def _kept(stats: StatCache) -> dict[bytes, StatRow]:
    """The rows a build keeps after ``stats``'s walk: what it knew, with what it learnt applied."""
    rows = dict(stats.rows)
    for path, row in (stats.changes() or {}).items():
        if row is None:
            rows.pop(path, None)
        else:
            rows[path] = row
    return rows


def _sum(tree: ContextTree, path: str, **kwargs) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    return checksum_source(tree, path, **kwargs).matches


def test_content_mode_names_and_links_change_it_and_mtimes_do_not(tmp_path: Path) -> None:
    tree = _tree(tmp_path, {"src/a.py": "1", "src/b.py": "2"})
    first = _sum(tree, "src")
    os.utime(tmp_path / "src/a.py", (1, 1))
    assert _sum(tree, "src") == first
    (tmp_path / "src/a.py").write_text("3")
    changed = _sum(tree, "src")
    assert changed != first
    os.chmod(tmp_path / "src/a.py", 0o700)
    assert _sum(tree, "src") != changed
    os.symlink("a.py", tmp_path / "src/link")
    linked = _sum(tree, "src")
    os.unlink(tmp_path / "src/link")
    os.symlink("b.py", tmp_path / "src/link")
    assert _sum(tree, "src") != linked


def test_mtimes_count_under_an_epoch_only_as_far_as_they_land_in_the_layer(tmp_path: Path) -> None:
    tree = _tree(tmp_path, {"a": "x"})
    os.utime(tmp_path / "a", (100, 100))
    old = _sum(tree, "a", epoch=1000)
    os.utime(tmp_path / "a", (200, 200))
    assert _sum(tree, "a", epoch=1000) != old  # both older than the epoch: they land as they are
    os.utime(tmp_path / "a", (5000, 5000))
    late = _sum(tree, "a", epoch=1000)
    os.utime(tmp_path / "a", (6000, 6000))
    assert _sum(tree, "a", epoch=1000) == late  # both clamped to the epoch


def test_ignored_files_are_not_in_it(tmp_path: Path) -> None:
    files = {"src/app.py": "1", "src/secret.env": "A=1"}
    first = _sum(_tree(tmp_path, files, "src/*.env\n"), "src")
    (tmp_path / "src/secret.env").write_text("A=2")
    assert _sum(_tree(tmp_path, {}, "src/*.env\n"), "src") == first


def test_wildcards_give_one_checksum_per_match_and_a_missing_path_is_the_copier_error(tmp_path: Path) -> None:
    tree = _tree(tmp_path, {"a.txt": "a", "b.txt": "b", "c.md": "c"})
    assert [m["path"] for m in _sum(tree, "*.txt")] == ["a.txt", "b.txt"]
    assert _sum(tree, "*.none") == []
    with pytest.raises(CopyError, match='"/missing": not found'):
        _sum(tree, "missing")


def test_hardlinks_within_an_instruction_are_part_of_it(tmp_path: Path) -> None:
    tree = _tree(tmp_path, {"d/a": "same", "d/b": "same"})
    apart = _sum(tree, "d")
    os.unlink(tmp_path / "d/b")
    os.link(tmp_path / "d/a", tmp_path / "d/b")
    assert _sum(tree, "d") != apart  # the copier writes b as a hardlink to a: another layer


def test_the_stat_cache_spares_reading_unchanged_files_and_notices_changes(tmp_path: Path) -> None:
    tree = _tree(tmp_path, {"d/a": "1", "d/b": "2"})
    later = time.time_ns() + 10 * RACY_NS  # as if the files were written long before this walk
    stats = StatCache(started_ns=later)
    first = _sum(tree, "d", stats=stats)
    assert stats.hashed == 3 and len(stats.updates) == 3  # d, d/a, d/b
    warm = StatCache(rows=_kept(stats), started_ns=later)
    assert _sum(tree, "d", stats=warm) == first and warm.hashed == 0 and warm.changes() is None
    (tmp_path / "d/a").write_text("9")  # same size, new content: the stat differs (mtime, ctime)
    again = StatCache(rows=_kept(stats), started_ns=later)
    assert _sum(tree, "d", stats=again) != first and again.hashed >= 1


def test_files_changed_just_before_the_walk_are_not_remembered(tmp_path: Path) -> None:
    tree = _tree(tmp_path, {"a": "1"})
    stats = StatCache()  # the walk starts now: the file is younger than RACY_NS
    _sum(tree, "a", stats=stats)
    assert stats.hashed == 1 and stats.updates == {}


def test_rows_of_files_that_are_gone_are_dropped_when_the_cache_is_rewritten(tmp_path: Path) -> None:
    tree = _tree(tmp_path, {"a": "1", "b": "2"})
    later = time.time_ns() + 10 * RACY_NS
    stats = StatCache(started_ns=later)
    _sum(tree, "a", stats=stats)
    _sum(tree, "b", stats=stats)
    rows = _kept(stats)
    (tmp_path / "b").unlink()
    (tmp_path / "c").write_text("3")
    next_time = StatCache(rows=rows, started_ns=later)
    _sum(tree, "c", stats=next_time)
    assert next_time.changes() == {os.fsencode(tmp_path / "b"): None, **next_time.updates}
    kept = _kept(next_time)
    assert {os.path.basename(p) for p in kept} == {b"a", b"c"}


def test_files_the_stat_cache_knows_get_the_same_lines_as_files_it_reads(tmp_path: Path) -> None:
    tree = _tree(tmp_path, {"d/a.js": "1", "d/sub/b.js": "22", "d/sub/deep/c": "333", "d/x": "4", "d/y": "5"})
    os.chmod(tmp_path / "d/x", 0o4755)
    os.chmod(tmp_path / "d/y", 0o600)
    os.link(tmp_path / "d/a.js", tmp_path / "d/sub/a-link.js")
    os.symlink("a.js", tmp_path / "d/to-a")
    (tmp_path / "d/empty").mkdir()
    read = checksum_source(tree, "d")
    later = time.time_ns() + 10 * RACY_NS
    first = StatCache(started_ns=later)
    checksum_source(tree, "d", stats=first)
    warm = StatCache(rows=_kept(first), started_ns=later)
    known = checksum_source(tree, "d", stats=warm)
    assert warm.hashed == 0
    assert known.lines == read.lines and known.matches == read.matches
