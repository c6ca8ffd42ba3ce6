"""Cache records and keys (pure): stable digests, empty fields left out, and the explanations of a difference."""

from __future__ import annotations

from builder import cachekey
from builder.cachekey import differences, key_of, score
from builder.plan import PlanOptions, plan_dockerfile
from oci.descriptor import Platform
from oci.digest import Digest

PLATFORM = Platform("linux", "amd64")


def _steps(text: str, **build_args: str):  # type: ignore[no-untyped-def]
    plan = plan_dockerfile(text, PlanOptions(build_args=build_args))  # type: ignore[arg-type]
    return [step for stage in plan.stages for step in stage.steps]


def _run_record(text: str, **build_args: str) -> dict:
    step = next(s for s in _steps(text, **build_args) if s.instruction.keyword == "RUN")
    parent = cachekey.image_parent(Digest.of_bytes(b"base"))
    return cachekey.run_record(parent, step, platform=PLATFORM, network="default", hostname="h", epoch=None)


def test_the_key_is_the_digest_of_the_canonical_record() -> None:
    record = {"v": 1, "op": "run", "b": [1, "x"], "a": {"z": 1, "y": None}}
    assert key_of(record) == Digest.of_bytes(b'{"a":{"y":null,"z":1},"b":[1,"x"],"op":"run","v":1}')
    assert key_of(dict(reversed(list(record.items())))) == key_of(record)


def test_a_run_record_holds_what_can_change_the_result_and_leaves_out_empty_fields() -> None:
    record = _run_record("FROM scratch\nARG V=1\nENV A=b\nRUN make\n")
    assert record["v"] == cachekey.VERSION and record["op"] == "run"
    assert record["argv"] == ["/bin/sh", "-c", "make"]
    assert "A=b" in record["env"] and record["build_args"] == {"V": "1"}
    assert record["parent"] == {"image": str(Digest.of_bytes(b"base"))}
    assert "epoch" not in record and "script" not in record
    plain = _run_record("FROM scratch\nRUN make\n")
    assert "build_args" not in plain


def test_a_proxy_build_arg_is_not_in_the_key() -> None:
    text = "FROM scratch\nRUN make\n"
    assert key_of(_run_record(text)) == key_of(_run_record(text, HTTP_PROXY="http://proxy:3128"))
    assert key_of(_run_record(text)) == key_of(_run_record(text, UNDECLARED="1"))
    declared = "FROM scratch\nARG HTTP_PROXY\nRUN make\n"
    assert key_of(_run_record(declared)) != key_of(_run_record(declared, HTTP_PROXY="http://proxy:3128"))


def test_the_parent_holds_the_previous_key_and_its_layer() -> None:
    key = Digest.of_bytes(b"k")
    layer = Digest.of_bytes(b"l")
    assert cachekey.step_parent(key, layer) == {"step": str(key), "layer": str(layer)}
    assert cachekey.step_parent(key, None) == {"step": str(key), "layer": None}


def test_differences_name_each_changed_input() -> None:
    old = _run_record("FROM scratch\nARG V=1\nENV MODE=a\nUSER app\nRUN make\n")
    new = _run_record("FROM scratch\nARG V=1\nENV MODE=b\nUSER app\nRUN make\n", V="2")
    assert differences(new, old) == ["build arg V changed (1 -> 2)", "ENV MODE changed (a -> b)"]
    assert differences(old, old) == []
    other_user = _run_record("FROM scratch\nARG V=1\nENV MODE=a\nUSER root\nRUN make\n")
    assert differences(other_user, old) == ["USER changed (app -> root)"]
    edited = _run_record("FROM scratch\nARG V=1\nENV MODE=a\nUSER app\nRUN make all\n")
    assert differences(edited, old, old_about={"step": "RUN make"}) == ["instruction changed (was: RUN make)"]
    rebased = dict(old, parent=cachekey.image_parent(Digest.of_bytes(b"new base")))
    assert differences(rebased, old, new_about={"base": "docker.io/library/busybox:latest"}) == [
        f"parent changed: base image docker.io/library/busybox:latest now {Digest.of_bytes(b'new base')}"
    ]
    assert differences(dict(old, epoch=5), old) == ["SOURCE_DATE_EPOCH changed (unset -> 5)"]
    assert differences(dict(old, v=2), old) == ["the cache record format changed (version 1 -> 2)"]


def test_differences_of_copy_sources_name_files_and_cut_long_lists() -> None:
    def record(tree: str, matches: list[str]) -> dict:
        sources = [{"context": ".", "path": "src/*", "matches": [{"path": m, "tree": tree} for m in matches]}]
        return {"v": 1, "op": "copy", "parent": {"scratch": True}, "sources": sources}

    old_files = [{"src/a": {"": "1", "x.py": "1", "gone.py": "1"}}]
    new_files = [{"src/a": {"": "1", "x.py": "2", **{f"n{i}.py": "1" for i in range(7)}}}]
    reasons = differences(
        record("sha256:new", ["src/a"]), record("sha256:old", ["src/a"]), new_files=new_files, old_files=old_files
    )
    assert reasons == [
        "src/a/x.py changed",
        "src/a/n0.py, src/a/n1.py, src/a/n2.py, src/a/n3.py, src/a/n4.py and 2 more added",
        "src/a/gone.py removed",
    ]
    assert differences(record("t", ["src/a", "src/b"]), record("t", ["src/a"])) == ["src/b now matched"]
    assert differences(record("t2", ["src/a"]), record("t1", ["src/a"])) == ["src/a changed"]  # no file lists


def test_score_counts_differing_fields() -> None:
    old = {"v": 1, "a": 1, "b": 2}
    assert score(old, old) == 0
    assert score({"v": 1, "a": 2, "b": 2}, old) == 1
    assert score({"v": 1, "a": 2}, old) == 2


def test_a_linked_copy_has_no_parent_and_the_next_step_names_what_it_was_placed_on() -> None:
    step = next(s for s in _steps("FROM scratch\nCOPY --link a /a\n") if s.instruction.keyword == "COPY")
    on_a = cachekey.image_parent(Digest.of_bytes(b"base A"))
    on_b = cachekey.image_parent(Digest.of_bytes(b"base B"))
    linked_a = cachekey.copy_record(on_a, step, [], platform=PLATFORM, epoch=None, linked=True)
    linked_b = cachekey.copy_record(on_b, step, [], platform=PLATFORM, epoch=None, linked=True)
    assert linked_a["parent"] == {"linked": True} and key_of(linked_a) == key_of(linked_b)
    key, layer = key_of(linked_a), Digest.of_bytes(b"layer")
    after_a, after_b = cachekey.linked_parent(key, layer, on_a), cachekey.linked_parent(key, layer, on_b)
    assert after_a != after_b and after_a["below"] == str(key_of(on_a))
    next_a = {"v": 1, "op": "copy", "parent": after_a}
    next_b = {"v": 1, "op": "copy", "parent": after_b}
    assert differences(next_b, next_a) == ["parent changed: the layers under the previous (--link) step changed"]
