"""``pybuild build --print-plan``, ``--check`` and ``context ls`` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import CLIResult, require_root, run_pybuild

DOCKERFILE = """\
# syntax=docker/dockerfile:1
ARG VERSION=1.0
FROM busybox AS build
ARG VERSION
WORKDIR /src
COPY . .
RUN echo building $VERSION > /version

FROM scratch
COPY --from=build /version /version
CMD ["/bin/true"]
"""


def project(tmp_path: Path, dockerfile: str = DOCKERFILE, name: str = "Dockerfile") -> Path:
    (tmp_path / "app").mkdir(exist_ok=True)
    (tmp_path / "app" / name).write_text(dockerfile)
    (tmp_path / "app" / "main.py").write_text("print('hi')\n")
    return tmp_path / "app"


def last_error(result: CLIResult) -> str:
    lines = result.err.strip().splitlines()
    assert lines and "Traceback" not in result.err, result
    return lines[-1]


def test_print_plan_is_the_default_verb_and_prints_json(tmp_path: Path) -> None:
    context = project(tmp_path)
    result = run_pybuild("--print-plan", "--build-arg", "VERSION=2.0", str(context))
    assert result.code == 0, result
    plan = json.loads(result.out)
    assert [s["name"] for s in plan["stages"]] == ["build", "stage-1"]
    run = plan["stages"][0]["steps"][-1]
    assert run["instruction"] == "RUN"
    assert run["history"] == "RUN |1 VERSION=2.0 /bin/sh -c echo building $VERSION > /version # buildkit"
    assert run["line"] == 7
    assert plan["stages"][1]["steps"][0]["source"] == {"kind": "stage", "ref": "build", "stage": 0}


def test_dockerfile_from_stdin(tmp_path: Path) -> None:
    result = run_pybuild("build", "--print-plan", "-", input="FROM scratch\nENV A=1\n")
    assert result.code == 0, result
    assert json.loads(result.out)["stages"][0]["config"]["config"]["Env"][-1] == "A=1"


def test_dockerfile_elsewhere_is_named_as_given(tmp_path: Path) -> None:
    context = project(tmp_path)
    other = tmp_path / "docker"
    other.mkdir()
    (other / "app.Dockerfile").write_text("FROM scratch\nCOPY\n")
    result = run_pybuild("build", "--print-plan", "-f", str(other / "app.Dockerfile"), str(context))
    assert result.code == 1
    assert last_error(result) == (
        f"pybuild: {other / 'app.Dockerfile'}:2: COPY requires at least two arguments, but only one was provided. "
        "Destination could not be determined"
    )


def test_dockerfile_errors_are_one_line_with_the_location(tmp_path: Path) -> None:
    context = project(tmp_path, "FROM scratch\nRUN true\nCOPPY a b\n")
    result = run_pybuild("--print-plan", str(context))
    assert result.code == 1
    assert last_error(result) == f"pybuild: {context / 'Dockerfile'}:3: unknown instruction: COPPY (did you mean COPY?)"


def test_warnings_go_to_stderr_and_unused_build_args_are_named(tmp_path: Path) -> None:
    context = project(tmp_path, "FROM scratch\nCMD run\n")
    result = run_pybuild("--print-plan", "--build-arg", "NOPE=1", str(context))
    assert result.code == 0, result
    assert "JSONArgsRecommended" in result.err
    assert "not consumed: [NOPE]" in result.err
    json.loads(result.out)


def test_build_arg_without_value_comes_from_the_environment(tmp_path: Path) -> None:
    context = project(tmp_path, "FROM scratch\nARG TOKEN_NAME\nENV X=$TOKEN_NAME\n")
    result = run_pybuild("--print-plan", "--build-arg", "TOKEN_NAME", str(context), env={"TOKEN_NAME": "from-env"})
    plan = json.loads(result.out)
    assert plan["stages"][0]["config"]["config"]["Env"][-1] == "X=from-env"


def test_check_exits_1_on_warnings_and_0_when_clean(tmp_path: Path) -> None:
    context = project(tmp_path, "FROM scratch AS Build\nCMD run\n")
    result = run_pybuild("build", "--check", str(context))
    assert result.code == 1
    assert f"{context / 'Dockerfile'}:1: StageNameCasing: Stage name 'Build' should be lowercase" in result.out
    assert "Check complete, 2 warnings found." in result.err
    clean = project(tmp_path, 'FROM scratch\nCMD ["run"]\n', name="Clean.Dockerfile")
    ok = run_pybuild("build", "--check", "-f", str(clean / "Clean.Dockerfile"), str(clean))
    assert ok.code == 0, ok
    assert "no warnings found" in ok.err


def test_check_json_lines(tmp_path: Path) -> None:
    context = project(tmp_path, "FROM scratch\nMAINTAINER me\n")
    result = run_pybuild("build", "--check", "--format", "json", str(context))
    (record,) = [json.loads(line) for line in result.out.splitlines()]
    assert record["rule"] == "MaintainerDeprecated" and record["line"] == 2


def test_check_directive_error_true_fails_the_plan(tmp_path: Path) -> None:
    context = project(tmp_path, "# check=error=true\nFROM scratch\nCMD run\n")
    result = run_pybuild("--print-plan", str(context))
    assert result.code == 1
    assert "error=true" in last_error(result)


def test_a_missing_base_image_is_named_with_its_line(tmp_path: Path) -> None:
    context = project(tmp_path)
    result = run_pybuild("-t", "app", "--progress", "plain", str(context))
    assert result.code == 1
    error = last_error(result)
    assert error.startswith("pybuild: ") and "Dockerfile:3: docker.io/library/busybox:latest: GET https://" in error
    assert "cannot resolve registry-1.docker.io" in error  # the test machine reaches no Docker Hub


def test_a_typo_in_a_command_is_not_a_build(tmp_path: Path) -> None:
    result = run_pybuild("imagse")
    assert result.code == 2 and "did you mean 'images'" in last_error(result)


def test_missing_context_and_dockerfile(tmp_path: Path) -> None:
    assert 'path "/nope" not found' in last_error(run_pybuild("--print-plan", "/nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_pybuild("--print-plan", str(empty))
    assert result.code == 1 and "no such file" in last_error(result)
    (empty / "Dockerfile").write_text("\n\n")
    assert "cannot be empty" in last_error(run_pybuild("--print-plan", str(empty)))


def test_plan_uses_the_base_config_in_the_store(tmp_path: Path, busybox_tar: Path) -> None:
    require_root()
    imported = run_pybuild("import", str(busybox_tar), "-t", "busybox", "--change", "ENV HOME=/home/bb")
    assert imported.code == 0, imported
    context = project(tmp_path, "FROM busybox\nWORKDIR $HOME/app\n")
    plan = json.loads(run_pybuild("--print-plan", str(context)).out)
    stage = plan["stages"][0]
    assert stage["base"]["config_known"] is True
    assert stage["steps"][0]["args"] == {"path": "/home/bb/app"}


# --------------------------------------------------------------------------------------------- context ls


def test_context_ls_lists_what_is_sent(tmp_path: Path) -> None:
    context = project(tmp_path)
    (context / "node_modules" / "x").mkdir(parents=True)
    (context / "node_modules" / "x" / "index.js").write_text("")
    (context / ".dockerignore").write_text("# deps\nnode_modules\n*.log\n")
    (context / "debug.log").write_text("")
    result = run_pybuild("context", "ls", str(context))
    assert result.code == 0, result
    paths = [line.split()[0] for line in result.out.splitlines()[1:]]
    assert "main.py" in paths
    assert not any(p.startswith("node_modules") or p.endswith(".log") for p in paths)


def test_context_ls_why_names_the_rule(tmp_path: Path) -> None:
    context = project(tmp_path)
    (context / ".dockerignore").write_text("# deps\nnode_modules\n*.log\n")
    (context / "debug.log").write_text("")
    result = run_pybuild("context", "ls", "--why", "--format", "json", str(context))
    rows = {r["Path"]: r for r in map(json.loads, result.out.splitlines())}
    assert rows["debug.log"]["Included"] is False
    assert rows["debug.log"]["Rule"].endswith(".dockerignore:3: *.log")
    assert rows["main.py"]["Included"] is True


def test_context_ls_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    context = project(tmp_path)
    (context / ".dockerignore").write_text("main.py\n")
    (context / "build.Dockerfile").write_text("FROM scratch\n")
    (context / "build.Dockerfile.dockerignore").write_text("*.txt\n")
    result = run_pybuild("context", "ls", "-f", str(context / "build.Dockerfile"), str(context))
    assert "main.py" in result.out
    assert "build.Dockerfile.dockerignore" in result.err


def test_context_without_subcommand_is_usage(tmp_path: Path) -> None:
    result = run_pybuild("context")
    assert result.code == 2


def test_syntax_directive_is_noted_not_fetched(tmp_path: Path) -> None:
    context = project(tmp_path)  # its Dockerfile starts with "# syntax=docker/dockerfile:1"
    result = run_pybuild("--print-plan", str(context))
    assert result.code == 0
    assert f"NOTE: {context / 'Dockerfile'}:1: syntax=docker/dockerfile:1 is noted and not fetched" in result.err
    assert "NOTE" not in run_pybuild("--print-plan", "-q", str(context)).err
