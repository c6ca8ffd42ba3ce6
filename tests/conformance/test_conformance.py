"""The conformance suite: pybuild builds every case of testdata/conformance and must produce what Docker's BuildKit
produced (the stored expected.json: files changed over the base image, config, history; or the failure).

The busybox base is imported once per session into a store of its own; each case gets a fresh copy of that store
(so no step cache carries over between cases, as the reference built every case with ``--no-cache``), builds to an
OCI image layout, and is summarised by the same code that summarised the reference's image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, CLIResult, require_root, run_pybuild
from rootless import EPOCH, SUBIDS_USER, Runtime, give, home_for, readable_copy, run_as, user

from conformance.cases import (
    CASES_DIR,
    Case,
    CaseError,
    Difference,
    all_cases,
    apply_differences,
    load_case,
    load_differences,
)
from conformance.tree import ImageData, Tree, flatten, read_oci_layout, summarize

CASES = all_cases()
DIFFERENCES = load_differences()
BASE_REF = "docker.io/library/busybox:latest"
#: The acceptance criterion: at least this many cases.
MINIMUM_CASES = 60
SUCCESS_KEYS = ["base", "tree", "deleted", "config", "history"]
ERROR_KEYS = ["error", "exit_code", "contains"]


@dataclass
class Base:
    store: Path
    image: ImageData = field(repr=False)
    tree: Tree = field(repr=False)


@pytest.fixture(scope="session")
def base(busybox_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> Base:
    """The busybox image as ``pybuild import`` makes it (no config, like ``docker import``), imported once."""
    require_root()
    store = tmp_path_factory.mktemp("conformance-base") / "store"
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "--root", str(store), "import", "-q", str(busybox_tar), "-t", "busybox"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYBUILD_ROOT": str(store), "SOURCE_DATE_EPOCH": EPOCH},
    )
    assert proc.returncode == 0, f"pybuild import failed:\n{proc.stderr}"
    image = read_oci_layout(store, BASE_REF)
    return Base(store, image, flatten(image.layers))


def load_expected(case: Case) -> dict[str, Any]:
    """The case's expected.json as pybuild must reproduce it: with the deliberate differences listed for the case
    applied."""
    if not case.expected_path.exists():
        pytest.fail(f"{case.name}: no expected.json; run testdata/conformance/regen.py {case.name}")
    expected = json.loads(case.expected_path.read_text())
    fails = expected.get("error") is True
    keys = ERROR_KEYS if fails else SUCCESS_KEYS
    assert list(expected) == keys, f"{case.name}: expected.json has keys {list(expected)}, not {keys}"
    assert case.expects_error == fails, f"{case.name}: case.json and expected.json disagree on whether it fails"
    return apply_differences(expected, [d for d in DIFFERENCES if d.case == case.name])


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def describe_difference(expected: dict[str, Any], actual: dict[str, Any]) -> str:
    """A readable account of how ``actual`` differs from ``expected``, section by section."""
    lines: list[str] = []
    if expected["base"] != actual["base"]:
        lines.append(f"base: expected {expected['base']}, got {actual['base']} (is the base layer reused as is?)")
    want = {r["path"]: r for r in expected["tree"]}
    got = {r["path"]: r for r in actual["tree"]}
    for path in sorted(want.keys() | got.keys()):
        if path not in got:
            lines.append(f"tree: missing   {_json(want[path])}")
        elif path not in want:
            lines.append(f"tree: unexpected {_json(got[path])}")
        elif want[path] != got[path]:
            fields = sorted(k for k in want[path].keys() | got[path].keys() if want[path].get(k) != got[path].get(k))
            detail = ", ".join(f"{k}: {want[path].get(k)!r} -> {got[path].get(k)!r}" for k in fields)
            lines.append(f"tree: differs  {path}: {detail}")
    for path in sorted(set(expected["deleted"]) - set(actual["deleted"])):
        lines.append(f"deleted: {path} should be gone but is still there (or its parent is not a directory)")
    for path in sorted(set(actual["deleted"]) - set(expected["deleted"])):
        lines.append(f"deleted: {path} was deleted but should not be")
    for key in sorted(expected["config"].keys() | actual["config"].keys()):
        if expected["config"].get(key) != actual["config"].get(key):
            lines.append(
                f"config {key}: expected {_json(expected['config'].get(key))}, got {_json(actual['config'].get(key))}"
            )
    if expected["history"] != actual["history"]:
        lines.append("history (expected, then got):")
        lines += [f"  - {_json(h)}" for h in expected["history"]]
        lines += [f"  + {_json(h)}" for h in actual["history"]]
    return "\n".join(lines)


@pytest.mark.root
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case(case: Case, base: Base, store_root: Path, tmp_path: Path) -> None:
    require_root()
    expected = load_expected(case)
    shutil.copytree(base.store, store_root)
    context, dockerfile = case.prepare(tmp_path / "work")
    out = tmp_path / "image"
    result = run_pybuild(*build_args(case, context, dockerfile, out), env={"SOURCE_DATE_EPOCH": EPOCH})
    if judge(case, expected, result, out, base):
        ROOT_DIGESTS[case.name] = image_digest(out)


#: Cases an ordinary user cannot build, whatever the builder: the kernel refuses the user namespace what they do
#: (case -> what the failed build must say). Listed in testdata/conformance/README.md.
ROOTLESS_LIMITS = {
    # No user namespace may make a device node (CAP_MKNOD counts only in the host's): rootless BuildKit, podman
    # and buildah fail the same RUN.
    "run-mknod": "mknod: /opt/dev/null: Operation not permitted",
}

#: The image each case built as root in this session (with SOURCE_DATE_EPOCH), for the rootless run to match.
ROOT_DIGESTS: dict[str, str] = {}


@pytest.fixture(scope="session")
def rootless_base(busybox_tar: Path, rootless_runtime: Runtime, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox image imported by the ordinary user with subordinate ids into a store of its own."""
    who = user(SUBIDS_USER)
    top = tmp_path_factory.mktemp("conformance-rootless-base")
    store = home_for(who, top)
    tarball = readable_copy(busybox_tar, top)
    imported = run_as(who, rootless_runtime, store, "import", "-q", str(tarball), "busybox")
    assert imported.returncode == 0, f"pybuild import as {who.pw_name} failed:\n{imported.stderr}"
    return store


@pytest.mark.root
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case_rootless(
    case: Case, base: Base, rootless_base: Path, rootless_runtime: Runtime, tmp_path: Path, store_root: Path
) -> None:
    """The suite a second time, built by an ordinary user with subordinate ids: the same result as the reference,
    and the same image, digest for digest, as the root build."""
    who = user(SUBIDS_USER)
    expected = load_expected(case)
    store = home_for(who, tmp_path)
    subprocess.run(["cp", "-a", str(rootless_base), str(store)], check=True)
    work = tmp_path / "work"
    context, dockerfile = case.prepare(work)
    if not dockerfile.is_relative_to(context):  # the case's own Dockerfile, in a checkout the user may not reach
        dockerfile = Path(shutil.copy2(dockerfile, work / dockerfile.name))
    # The user's own context, but for the files the case gives other owners on purpose.
    give(work, who, keep=tuple(context / path for path in case.options.get("owners", {})))
    out = store.parent / "image"
    result = CLIResult(run_as(who, rootless_runtime, store, *build_args(case, context, dockerfile, out)))
    if case.name in ROOTLESS_LIMITS:
        assert result.code == 1, result
        assert ROOTLESS_LIMITS[case.name] in result.err, result
        assert f"{dockerfile}:" in result.err.strip().splitlines()[-1], result
        return
    if judge(case, expected, result, out, base):
        root = root_digest(case, expected, base, context, dockerfile, tmp_path, store_root)
        assert image_digest(out) == root, f"{case.name}: the rootless build made another image"


@pytest.mark.root
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case_copy_snapshots(case: Case, base: Base, store_root: Path, tmp_path: Path) -> None:
    """The suite with the copy snapshotter (RUN in a plain copy of its image, compared afterwards; where a user
    namespace cannot mount overlayfs): the same result, and the same image as over overlayfs."""
    require_root()
    expected = load_expected(case)
    shutil.copytree(base.store, store_root)
    context, dockerfile = case.prepare(tmp_path / "work")
    out = tmp_path / "image"
    env = {"SOURCE_DATE_EPOCH": EPOCH, "PYBUILD_SNAPSHOTTER": "copy"}
    if judge(case, expected, run_pybuild(*build_args(case, context, dockerfile, out), env=env), out, base):
        root = root_digest(case, expected, base, context, dockerfile, tmp_path, store_root)
        assert image_digest(out) == root, f"{case.name}: the copy snapshotter made another image than overlayfs"


def root_digest(
    case: Case, expected: dict[str, Any], base: Base, context: Path, dockerfile: Path, tmp_path: Path, store: Path
) -> str:
    """The image ``test_case`` built for ``case`` in this session, or (this test alone) one built now, in a new
    store at ``store``."""
    if case.name not in ROOT_DIGESTS:
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(base.store, store)
        out = tmp_path / "root-image"
        built = run_pybuild(*build_args(case, context, dockerfile, out), env={"SOURCE_DATE_EPOCH": EPOCH})
        assert judge(case, expected, built, out, base)
        ROOT_DIGESTS[case.name] = image_digest(out)
    return ROOT_DIGESTS[case.name]


def build_args(case: Case, context: Path, dockerfile: Path, out: Path) -> list[str]:
    output = f"type=oci,dest={out},tar=false"
    return ["build", "-f", str(dockerfile), "--output", output, *case.build_options(), str(context)]


def image_digest(layout: Path) -> str:
    """The digest of the one image in the OCI layout ``layout``."""
    (manifest,) = json.loads((layout / "index.json").read_text())["manifests"]
    return str(manifest["digest"])


def judge(case: Case, expected: dict[str, Any], result: CLIResult, out: Path, base: Base) -> bool:
    """Fail the test unless ``result`` is what the reference did: True when it built an image (at ``out``)."""
    if case.pending:
        # Not built yet, and refused in the open: the expectation waits for the issue that adds the feature.
        if result.code != 1 or "not supported yet" not in result.err:
            pytest.fail(
                f"{case.name} is pending ({case.pending}) but pybuild did not refuse it with 'not supported yet': "
                f"{result}; if the feature has landed, remove 'pending' from its case.json",
                pytrace=False,
            )
        return False
    if expected.get("error"):
        if result.code != expected["exit_code"]:
            pytest.fail(
                f"{case.name}: expected exit code {expected['exit_code']}, got {result.code}: {result}", pytrace=False
            )
        message = result.err + result.out
        for text in expected["contains"]:
            if text not in message:
                pytest.fail(f"{case.name}: the error does not mention {text!r}:\n{message[-2000:]}", pytrace=False)
        return False
    if result.code != 0:
        pytest.fail(f"{case.name}: the build failed ({result.code}):\n{result.err[-3000:]}", pytrace=False)
    actual = summarize(read_oci_layout(out), base.image, base.tree)
    if actual != expected:
        deliberate = ", ".join(sorted({d.id for d in DIFFERENCES if d.case == case.name}))
        note = f" (after the deliberate differences {deliberate})" if deliberate else ""
        pytest.fail(
            f"{case.name} differs from the reference{note}:\n{describe_difference(expected, actual)}", pytrace=False
        )
    return True


def test_the_suite_is_complete() -> None:
    """Enough cases, each with its expectation, and no expectation without its case."""
    built = [case for case in CASES if not case.pending]
    assert len(built) >= MINIMUM_CASES, f"only {len(built)} conformance cases are built (pending ones do not count)"
    names = {case.name for case in CASES}
    orphans = sorted(p.parent.name for p in CASES_DIR.glob("*/expected.json") if p.parent.name not in names)
    assert not orphans, f"expected.json without a case: {orphans}"
    missing = sorted(case.name for case in CASES if not case.expected_path.exists())
    assert not missing, f"cases without expected.json (run testdata/conformance/regen.py): {missing}"
    errors = sum(1 for case in CASES if case.expects_error)
    assert 0 < errors < len(CASES) // 4, f"{errors} failing-build cases"
    for case in CASES:
        expected = load_expected(case)
        if not expected.get("error"):
            paths = [r["path"] for r in expected["tree"]]
            assert paths == sorted(paths) and len(set(paths)) == len(paths), f"{case.name}: tree not sorted/unique"


def test_every_deliberate_difference_is_current_and_documented() -> None:
    """Each difference names a case, still matches what the reference said, and is listed in the README."""
    readme = (CASES_DIR / "README.md").read_text()
    names = {case.name for case in CASES}
    for difference in DIFFERENCES:
        assert difference.case in names, f"difference {difference.id!r} names an unknown case {difference.case!r}"
        assert difference.reason.strip(), f"difference {difference.id!r} gives no reason"
        assert f"`{difference.id}`" in readme, f"difference {difference.id!r} is not listed in the suite's README"
    for case in CASES:
        load_expected(case)  # raises if a difference no longer matches the reference's expected.json


def test_apply_differences() -> None:
    expected = {
        "base": "busybox",
        "tree": [{"path": "/a", "type": "dir"}, {"path": "/c", "type": "dir"}],
        "deleted": [],
        "config": {"Cmd": ["sh"], "ArgsEscaped": True},
        "history": [{"created_by": "ARG A", "empty_layer": True}],
    }

    def diff(at: list, reference: Any, pybuild: Any) -> Difference:
        return Difference("id", "why", "case", tuple(at), reference, pybuild)

    changed = apply_differences(
        expected,
        [
            diff(["history", 0, "created_by"], "ARG A", "ARG A=1"),
            diff(["config", "ArgsEscaped"], True, None),
            diff(["config", "User"], None, "app"),
            diff(["tree", "/b"], None, {"path": "/b", "type": "file"}),
            diff(["tree", "/c"], {"path": "/c", "type": "dir"}, None),
        ],
    )
    assert changed == {
        "base": "busybox",
        "tree": [{"path": "/a", "type": "dir"}, {"path": "/b", "type": "file"}],
        "deleted": [],
        "config": {"Cmd": ["sh"], "User": "app"},
        "history": [{"created_by": "ARG A=1", "empty_layer": True}],
    }
    assert expected["config"]["ArgsEscaped"] is True, "the stored expectation is not modified"
    with pytest.raises(CaseError, match="expects the reference to say"):
        apply_differences(expected, [diff(["history", 0, "created_by"], "ARG B", "ARG B=1")])


def test_prepared_context_has_normalised_modes(tmp_path: Path) -> None:
    case = load_case(CASES_DIR / "copy-modes")
    context, dockerfile = case.prepare(tmp_path)
    assert dockerfile == CASES_DIR / "copy-modes" / "Dockerfile"
    modes = {p.relative_to(context).as_posix(): oct(p.stat().st_mode & 0o7777) for p in context.rglob("*")}
    assert modes == {
        "group.txt": "0o664",
        "private.txt": "0o600",
        "readonly.txt": "0o444",
        "script.sh": "0o755",
        "secret-dir": "0o700",
        "secret-dir/inside.txt": "0o644",
    }
    assert case.build_options() == []
    assert load_case(CASES_DIR / "build-arg-override").build_options()[:2] == ["--build-arg", "VERSION=2.5"]
