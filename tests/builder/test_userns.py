"""builder.userns: which mapping a user gets, and what the running process is (entering is tested end to end in
tests/functional/test_rootless.py)."""

from __future__ import annotations

import errno
import os

import pytest
from conftest import run_pybuild_here

from builder import userns
from builder.userns import IdMap

SUBUID = """\
# comment
alice:100000:65536
1001:200000:1000
bob:300000:65536
alice:500000:10
broken:line
carol:x:10
dave:-5:10
"""
TOOLS = ("/usr/bin/newuidmap", "/usr/bin/newgidmap")


def test_subordinate_ranges_match_the_name_or_the_uid_in_file_order() -> None:
    assert userns.subordinate_ranges(SUBUID, "alice", 1001) == [(100000, 65536), (200000, 1000), (500000, 10)]
    assert userns.subordinate_ranges(SUBUID, "bob", 1002) == [(300000, 65536)]
    assert userns.subordinate_ranges(SUBUID, "carol", 1003) == []  # malformed lines are ignored
    assert userns.subordinate_ranges(SUBUID, "dave", 1004) == []
    assert userns.subordinate_ranges("", "alice", 1001) == []


def test_with_ranges_and_tools_id_0_is_the_user_and_the_ranges_follow_from_1() -> None:
    mapping = userns.plan(1001, 1001, "alice", SUBUID, SUBUID, TOOLS)
    assert mapping.mode == userns.SUBIDS and mapping.why_single == ""
    assert mapping.uids == (
        IdMap(0, 1001, 1),
        IdMap(1, 100000, 65536),
        IdMap(65537, 200000, 1000),
        IdMap(66537, 500000, 10),
    )
    assert mapping.gids == mapping.uids
    assert [m.line() for m in mapping.uids[:2]] == ["0 1001 1", "1 100000 65536"]


def test_without_ranges_or_tools_only_the_user_is_mapped_and_info_says_why() -> None:
    none = userns.plan(1005, 1005, "erin", SUBUID, SUBUID, TOOLS)
    assert none.mode == userns.SINGLE
    assert none.uids == (IdMap(0, 1005, 1),) and none.gids == (IdMap(0, 1005, 1),)
    assert none.why_single == "/etc/subuid and /etc/subgid have no range for erin"
    half = userns.plan(1002, 1002, "bob", SUBUID, None, TOOLS)
    assert half.mode == userns.SINGLE and half.why_single == "/etc/subgid has no range for bob"
    tools = userns.plan(1002, 1002, "bob", SUBUID, SUBUID, ("/usr/bin/newuidmap", None))
    assert tools.mode == userns.SINGLE and "uidmap" in tools.why_single


def test_the_running_process_mode_comes_from_its_uid_map() -> None:
    assert userns.current_mode(((0, 0, 4294967295),), euid=0) == userns.ROOT
    assert userns.current_mode(((0, 1001, 1),)) == userns.SINGLE
    assert userns.current_mode(((0, 1001, 1), (1, 100000, 65536))) == userns.SUBIDS


def test_where_no_namespace_can_be_made_the_verbs_that_need_none_still_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from builder import linux

    def refuse(flags: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(linux, "unshare", refuse)
    monkeypatch.setattr(userns, "unavailable", "")
    with pytest.raises(userns.NoUserNamespace, match="cannot create a user namespace: Operation not permitted"):
        userns.enter(userns.plan(1000, 1000, "erin", "", "", TOOLS))
    # The command line then carries on without one (an ordinary user listing images), and says why where it matters.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = run_pybuild_here("images", "--format", "json")
    assert result.code == 0, result.err
    assert userns.unavailable == "cannot create a user namespace: Operation not permitted"
