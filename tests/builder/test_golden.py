"""The Dockerfile corpus: every plan matches its golden file, every broken Dockerfile fails with BuildKit's words.

``testdata/dockerfiles/<case>/`` holds a ``Dockerfile``, an optional ``options.json`` and ``plan.json``, the plan
as BuildKit would have it (read and checked by hand against the Dockerfile reference and BuildKit's
dockerfile2llb, not merely what pybuild printed once). ``testdata/dockerfiles-negative/<case>/`` holds a
``Dockerfile``, an optional ``options.json`` and ``expected_error.txt``: its first line is the exact error, the
lines after it (``# buildkit: ...``) say where BuildKit has the message, or that the message is pybuild's own.

Every case is planned for linux/amd64 on linux/amd64, as file "Dockerfile", with no base image configs known.
``options.json`` may set ``build_args`` ({name: value}), ``target``, ``platform`` ("os/arch[/variant]"),
``contexts`` ([names]) and ``labels`` ({name: value}).

``PYBUILD_UPDATE_GOLDEN=1`` rewrites ``plan.json`` and the first line of ``expected_error.txt`` from what
pybuild does now; read the diff before keeping it. With ``CI=true`` a test that rewrote anything still fails,
so CI cannot pass by regenerating.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_CI, TESTDATA

from builder.errors import DockerfileError
from builder.plan import BuildPlan, PlanOptions, plan_dockerfile
from oci.descriptor import Platform
from oci.frozen import FrozenMap

POSITIVE = TESTDATA / "dockerfiles"
NEGATIVE = TESTDATA / "dockerfiles-negative"
CONFORMANCE = TESTDATA / "conformance"  # built and checked by tests/conformance, failing cases included
PLATFORM = Platform("linux", "amd64")
UPDATE = os.environ.get("PYBUILD_UPDATE_GOLDEN") == "1"
OPTION_KEYS = {"build_args", "target", "platform", "contexts", "labels"}


def cases(root: Path) -> list[Any]:
    if not root.is_dir():
        return []
    return [pytest.param(d, id=d.name) for d in sorted(root.iterdir()) if d.is_dir()]


def dockerfiles_outside_negative() -> list[Any]:
    found = []
    for path in sorted(TESTDATA.rglob("*")):
        name = path.name
        if not path.is_file() or NEGATIVE in path.parents or CONFORMANCE in path.parents:
            continue
        if name == "Dockerfile" or name.startswith("Dockerfile.") or name.lower().endswith(".dockerfile"):
            found.append(pytest.param(path, id=str(path.relative_to(TESTDATA))))
    return found


def options_for(case: Path) -> PlanOptions:
    """The fixed options, merged with the case's ``options.json``."""
    raw: dict[str, Any] = {}
    path = case / "options.json"
    if path.is_file():
        raw = json.loads(path.read_text())
        unknown = set(raw) - OPTION_KEYS
        assert not unknown, f"{path}: unknown keys {sorted(unknown)}"
    platform = Platform.parse(raw["platform"]) if "platform" in raw else PLATFORM
    return PlanOptions(
        build_args=FrozenMap(raw.get("build_args", {})),
        target=raw.get("target", ""),
        platform=platform,
        build_platform=PLATFORM,
        contexts=frozenset(raw.get("contexts", ())),
        labels=FrozenMap(raw.get("labels", {})),
    )


def plan(case: Path) -> BuildPlan:
    return plan_dockerfile((case / "Dockerfile").read_bytes(), options_for(case), "Dockerfile")


def render(built: BuildPlan) -> str:
    return json.dumps(built.to_json(), indent=2, sort_keys=True) + "\n"


def rewrite(path: Path, text: str) -> None:
    """Update mode: write the new golden text; under CI, fail even so."""
    path.write_text(text)
    if IN_CI:
        pytest.fail(f"rewrote {path} (CI=true: regenerating golden files is never a pass)")


@pytest.mark.parametrize("case", cases(POSITIVE))
def test_plan_matches_golden(case: Path) -> None:
    actual = render(plan(case))
    golden = case / "plan.json"
    expected = golden.read_text() if golden.is_file() else None
    if actual == expected:
        return
    if UPDATE:
        rewrite(golden, actual)
        return
    assert expected is not None, f"{golden} is missing (PYBUILD_UPDATE_GOLDEN=1 writes it; then review it)"
    assert actual == expected


@pytest.mark.parametrize("case", cases(NEGATIVE))
def test_error_matches_expected(case: Path) -> None:
    expected_file = case / "expected_error.txt"
    lines = expected_file.read_text().splitlines()
    assert lines and lines[0], f"{expected_file}: the first line must be the error"
    with pytest.raises(DockerfileError) as caught:
        plan(case)
    actual = str(caught.value)
    if actual == lines[0]:
        return
    if UPDATE:
        rewrite(expected_file, "\n".join([actual, *lines[1:]]) + "\n")
        return
    assert actual == lines[0]


@pytest.mark.parametrize("dockerfile", dockerfiles_outside_negative())
def test_every_dockerfile_plans(dockerfile: Path) -> None:
    plan_dockerfile(dockerfile.read_bytes(), options_for(dockerfile.parent), "Dockerfile")


def test_corpus_is_not_empty() -> None:
    assert len(cases(POSITIVE)) >= 15
    assert len(cases(NEGATIVE)) >= 40
