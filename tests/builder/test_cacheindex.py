"""The cache index opened by several processes at once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from builder.cache import CacheIndex


def _open(root: str) -> str:
    try:
        CacheIndex(Path(root)).entries()
    except Exception as err:  # the answer is compared, so the test names what failed
        return f"{type(err).__name__}: {err}"
    return "ok"


def test_processes_opening_a_new_index_at_once_all_open_it(tmp_path: Path) -> None:
    """SQLite refuses at once, without waiting, the loser of a race to switch a new database to WAL; two builds
    started together on a new store must both still open its index."""
    roots = []
    for n in range(40):
        root = tmp_path / str(n)
        root.mkdir()
        roots.append(str(root))
    with multiprocessing.get_context("fork").Pool(6) as pool:
        answers = [pool.map(_open, [root] * 6) for root in roots]
    failed = [answer for round_ in answers for answer in round_ if answer != "ok"]
    assert failed == []
