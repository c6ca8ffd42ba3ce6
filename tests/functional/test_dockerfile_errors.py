"""A broken Dockerfile, as a user meets it: ``pybuild build`` prints one line, ``PATH:LINE: message``, exits 1,
shows no traceback, and has touched nothing (no store is created: the whole file is checked first).

The messages are BuildKit's (checked against moby/buildkit's parser, instructions, dockerfile2llb and shell
packages; the same words as ``testdata/dockerfiles-negative`` where a case is there too), except the few marked
as pybuild's own. Every base here is ``scratch`` or a stage, so that no case can reach a registry; a separate test
shows that an image on a registry is not asked for before the file is checked.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, CLIResult, run_pybuild, run_pybuild_here, write_context


@dataclass(frozen=True)
class Case:
    dockerfile: str | bytes
    line: int  # 0: BuildKit gives the message no line, and neither does pybuild
    message: str
    args: tuple[str, ...] = ()


def _nested(depth: int) -> str:
    return "${a:-" * depth + "x" + "}" * depth


def _doubling(lines: int) -> str:
    out = ["FROM scratch", "ARG V0=" + "x" * 64]
    for i in range(1, lines + 1):
        out.append(f"ARG V{i}=" + f"$V{i - 1}" * 16)
    return "\n".join(out) + "\n"


JSON_STRINGS = "when using JSON array syntax, arrays must be comprised of strings only"
STAGE_NAME = "name can't start with a number or contain symbols"

CASES: dict[str, Case] = {
    # --- the file as a whole
    "empty-file": Case("", 0, "the Dockerfile cannot be empty"),
    "only-comments": Case("# syntax=docker/dockerfile:1\n# nothing yet\n", 2, "file with no instructions"),
    "invalid-utf8": Case(b'FROM scratch\nLABEL a="caf\xe9"\n', 2, "the Dockerfile is not valid UTF-8"),  # pybuild's
    "nul-byte": Case("FROM scratch\nRUN echo a\0b\n", 2, "a NUL byte is not allowed in a Dockerfile"),  # pybuild's
    "line-over-64k": Case(
        "FROM scratch\nLABEL a=" + "x" * 70_000 + "\n", 2, "dockerfile line greater than max allowed size of 65535"
    ),
    "instruction-before-from": Case("RUN true\nFROM scratch\n", 1, "no build stage in current context"),
    "no-stages": Case("ARG VERSION=1\n", 1, "dockerfile contains no stages to build"),
    # --- parser directives
    "directive-bad-escape": Case("# escape=@\nFROM scratch\n", 1, "invalid escape token '@' does not match ` or \\"),
    "directive-twice": Case(
        "# escape=`\n# escape=\\\nFROM scratch\n", 2, "only one escape parser directive can be used"
    ),
    # --- unknown instructions
    "unknown-instruction-upper": Case(
        "FROM scratch\nCOPPY . /app\n", 2, "unknown instruction: COPPY (did you mean COPY?)"
    ),
    "unknown-instruction-lower": Case(
        "from scratch\nworkdirr /app\n", 2, "unknown instruction: workdirr (did you mean workdir?)"
    ),
    "unknown-instruction-no-suggestion": Case("FROM scratch\nFROBNICATE x\n", 2, "unknown instruction: FROBNICATE"),
    "heredoc-after-cmd": Case("FROM scratch\nCMD <<EOF\necho hi\nEOF\n", 3, "unknown instruction: echo"),
    # --- heredocs
    "heredoc-unterminated-run": Case("FROM scratch\nRUN <<EOF\necho hi\n", 2, "unterminated heredoc"),
    "heredoc-as-destination": Case(
        "FROM scratch\nCOPY app.conf <<EOF\nx\nEOF\n", 2, "COPY cannot accept a heredoc as a destination"
    ),
    # --- arguments
    "from-no-arguments": Case("FROM\n", 1, "FROM requires either one or three arguments"),
    "workdir-no-arguments": Case("FROM scratch\nWORKDIR\n", 2, "WORKDIR requires exactly one argument"),
    "maintainer-no-arguments": Case("FROM scratch\nMAINTAINER\n", 2, "MAINTAINER requires exactly one argument"),
    "label-no-arguments": Case("FROM scratch\nLABEL\n", 2, "LABEL requires at least one argument"),
    "arg-no-arguments": Case("FROM scratch\nARG\n", 2, "ARG requires at least one argument"),
    "healthcheck-no-arguments": Case("FROM scratch\nHEALTHCHECK\n", 2, "HEALTHCHECK requires at least one argument"),
    "env-no-arguments": Case("FROM scratch\nENV\n", 2, "ENV requires at least one argument"),
    "copy-one-argument": Case(
        "FROM scratch\nCOPY target/app.jar\n",
        2,
        "COPY requires at least two arguments, but only one was provided. Destination could not be determined",
    ),
    "add-no-arguments": Case(
        "FROM scratch\nADD\n",
        2,
        "ADD requires at least two arguments, but only one was provided. Destination could not be determined",
    ),
    "shell-empty-json": Case("FROM scratch\nSHELL []\n", 2, "SHELL requires at least one argument"),
    "shell-not-json": Case("FROM scratch\nSHELL /bin/bash -c\n", 2, "SHELL requires the arguments to be in JSON form"),
    "run-empty-exec-form": Case("FROM scratch\nRUN []\n", 2, "arguments are required"),  # llb ExecOp.Validate
    "healthcheck-cmd-without-command": Case(
        "FROM scratch\nHEALTHCHECK CMD\n", 2, "Missing command after HEALTHCHECK CMD"
    ),
    "healthcheck-none-with-arguments": Case(
        "FROM scratch\nHEALTHCHECK NONE x\n", 2, "HEALTHCHECK NONE takes no arguments"
    ),
    # --- JSON forms that are errors (other invalid JSON is shell form: see the test below)
    "json-number": Case('FROM scratch\nCMD ["node", "server.js", 8080]\n', 2, JSON_STRINGS),
    "json-null": Case('FROM scratch\nENTRYPOINT ["a", null]\n', 2, JSON_STRINGS),
    "json-volume-empty-string": Case(
        'FROM scratch\nVOLUME ["/data", ""]\n', 2, "VOLUME specified can not be an empty string"
    ),
    # --- names and values
    "arg-blank-name": Case("FROM scratch\nARG =x\n", 2, "ARG names can not be blank"),
    "env-blank-name": Case("FROM scratch\nENV =x\n", 2, "ENV names can not be blank"),
    "label-blank-name": Case("FROM scratch\nLABEL =x\n", 2, "LABEL names can not be blank"),
    "env-without-value": Case("FROM scratch\nENV NODE_ENV\n", 2, "ENV must have two arguments"),
    "env-word-without-equals": Case(
        "FROM scratch\nENV A=1 PORT\n",
        2,
        'Syntax error - can\'t find = in "PORT". Must be of the form: name=value',
    ),
    "expose-not-a-port": Case("FROM scratch\nEXPOSE abc\n", 2, "invalid containerPort: abc"),
    "expose-unknown-protocol": Case(
        "FROM scratch\nEXPOSE 443/quic\n", 2, 'invalid port: "443/quic": invalid proto: quic'
    ),
    "stopsignal-unknown": Case("FROM scratch\nSTOPSIGNAL SIGFOO\n", 2, "invalid signal: SIGFOO"),
    "onbuild-onbuild": Case(
        "FROM scratch\nONBUILD ONBUILD RUN true\n", 2, "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"
    ),
    "onbuild-from": Case("FROM scratch\nONBUILD FROM scratch\n", 2, "FROM isn't allowed as an ONBUILD trigger"),
    "copy-url": Case("FROM scratch\nCOPY https://example.com/a.txt /a\n", 2, "source can't be a URL for COPY"),
    "add-checksum-local": Case(
        "FROM scratch\nADD --checksum=sha256:" + "0" * 64 + " a.tgz /a\n",
        2,
        "checksum can't be specified for non-HTTP(S) sources",
    ),
    # --- flags
    "flag-unknown": Case("FROM scratch\nCOPY --chmood=644 a /b\n", 2, "unknown flag: --chmood (did you mean chmod?)"),
    "flag-missing-value": Case("FROM scratch\nCOPY --from a /b\n", 2, "missing a value on flag: --from"),
    "flag-twice": Case("FROM scratch\nCOPY --chown=a --chown=b a /b\n", 2, "duplicate flag specified: --chown"),
    "flag-not-boolean": Case(
        "FROM scratch\nCOPY --link=yes a /b\n", 2, "expecting boolean value for flag --link, not: yes"
    ),
    "chmod-out-of-range": Case(
        "FROM scratch\nCOPY --chmod=10755 a /b\n",
        2,
        "invalid chmod parameter: '10755'. it should be octal string and between 0 and 07777",
    ),
    "run-network-unknown": Case("FROM scratch\nRUN --network=bridge true\n", 2, 'invalid network mode "bridge"'),
    "run-security-unknown": Case(
        "FROM scratch\nRUN --security=privileged true\n", 2, 'security "privileged" is not valid'
    ),
    "mount-unknown-type": Case(
        "FROM scratch\nRUN --mount=type=bnd,target=/src true\n", 2, 'unsupported mount type "bnd" (did you mean bind?)'
    ),
    "mount-unknown-key": Case(
        "FROM scratch\nRUN --mount=type=cache,target=/x,foo=bar true\n",
        2,
        "unexpected key 'foo' in 'foo=bar' (did you mean from?)",
    ),
    "mount-field-without-value": Case(
        "FROM scratch\nRUN --mount=type=cache,target=/x,nonsense true\n",
        2,
        "invalid field 'nonsense' must be a key=value pair",
    ),
    "mount-bad-boolean": Case(
        "FROM scratch\nRUN --mount=type=bind,target=/x,ro=maybe true\n", 2, "invalid value for ro: maybe"
    ),
    "mount-bad-uid": Case(
        "FROM scratch\nRUN --mount=type=cache,target=/x,uid=gopher true\n", 2, "invalid value gopher for uid"
    ),
    "mount-uid-on-bind": Case(
        "FROM scratch\nRUN --mount=type=bind,target=/x,uid=1 true\n", 2, 'uid not allowed for "bind" type mounts'
    ),
    "mount-sharing-unknown": Case(
        "FROM scratch\nRUN --mount=type=cache,target=/x,sharing=lockd true\n",
        2,
        'unsupported sharing value "lockd" (did you mean locked?)',
    ),
    "mount-secret-with-from": Case(
        "FROM scratch AS base\nFROM scratch\nRUN --mount=type=secret,id=npmrc,from=base true\n",
        3,
        "secret mount should not have a from",
    ),
    "mount-from-variable": Case(
        "FROM scratch\nARG S=a\nRUN --mount=from=$S,target=/x true\n",
        3,
        "'from' doesn't support variable expansion, define alias stage instead",
    ),
    "copy-from-variable": Case(
        "FROM scratch\nARG S=a\nCOPY --from=$S /x /y\n",
        3,
        "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope"
        " as a workaround",
    ),
    "platform-invalid": Case(
        "FROM --platform=linux/amd64! scratch\n",
        1,
        'failed to parse platform linux/amd64!: "amd64!" is an invalid component of "linux/amd64!": platform'
        ' specifier component must match "^[A-Za-z0-9_-]+$": invalid argument',
    ),
    "platform-empty": Case(
        "FROM --platform=$BULIDPLATFORM scratch\n",
        1,
        "empty platform value from expression $BULIDPLATFORM (did you mean BUILDPLATFORM?)",
    ),
    "healthcheck-duration-without-unit": Case(
        "FROM scratch\nHEALTHCHECK --interval=30 CMD true\n", 2, 'time: missing unit in duration "30"'
    ),
    "healthcheck-interval-too-short": Case(
        "FROM scratch\nHEALTHCHECK --interval=500us CMD true\n", 2, 'Interval "interval" cannot be less than 1ms'
    ),
    "healthcheck-negative-retries": Case(
        "FROM scratch\nHEALTHCHECK --retries=-1 CMD true\n", 2, "--retries cannot be negative (-1)"
    ),
    "healthcheck-retries-not-a-number": Case(
        "FROM scratch\nHEALTHCHECK --retries=abc CMD true\n", 2, 'strconv.ParseInt: parsing "abc": invalid syntax'
    ),
    "healthcheck-unknown-type": Case(
        "FROM scratch\nHEALTHCHECK CMDD true\n", 2, 'Unknown type "CMDD" in HEALTHCHECK (try CMD)'
    ),
    # --- stages
    "stage-name-invalid": Case(
        "FROM scratch AS 1st-build\n", 1, f'invalid name for build stage: "1st-build", {STAGE_NAME}'
    ),
    "stage-name-empty-quotes": Case('FROM scratch AS ""\n', 1, f'invalid name for build stage: "\\"\\"", {STAGE_NAME}'),
    "from-blank-after-expansion": Case("ARG BASE\nFROM ${BASE}\n", 2, "base name (${BASE}) should not be blank"),
    "from-invalid-reference": Case(
        "ARG TAG\nFROM ghcr.io/acme/tools:${TAG}\n",
        2,
        'failed to parse stage name "ghcr.io/acme/tools:": invalid reference format',
    ),
    "copy-from-invalid-reference": Case(
        "FROM scratch\nCOPY --from=a:b:c /x /y\n", 2, 'failed to parse stage name "a:b:c": invalid reference format'
    ),
    "copy-from-stage-index": Case("FROM scratch\nFROM scratch\nCOPY --from=5 /x /y\n", 3, "invalid stage index 5"),
    "copy-from-later-stage": Case(
        "FROM scratch AS build\nCOPY --from=assets /dist /srv\nFROM scratch AS assets\nFROM build\n",
        2,
        'cannot copy from stage "assets", it needs to be defined before current stage "build"',
    ),
    "cycle-copy-from-itself": Case(
        "FROM scratch AS assets\nCOPY --from=assets /srv /srv\n", 2, "circular dependency detected on stage: assets"
    ),
    "cycle-mount-from-itself": Case(
        "FROM scratch AS a\nRUN --mount=from=a,target=/x true\n", 2, "circular dependency detected on stage: a"
    ),
    "target-unknown": Case(
        "FROM scratch AS build\nFROM scratch AS release\n",
        0,
        'target stage "prod" could not be found',
        ("--target", "prod"),
    ),
    # --- variable expansion
    "expand-bad-substitution": Case(
        "FROM scratch\nWORKDIR /srv/${}/app\n", 2, 'failed to process "/srv/${}/app": syntax error: bad substitution'
    ),
    "expand-missing-brace": Case("FROM scratch\nENV A=${\n", 2, "failed to process \"${\": syntax error: missing '}'"),
    "expand-unsupported-modifier": Case(
        "FROM scratch\nENV A=${B!x}\n", 2, 'failed to process "${B!x}": unsupported modifier (!) in substitution'
    ),
    "expand-required-variable": Case(
        "FROM scratch\nARG RELEASE\nLABEL v=${RELEASE:?required}\n",
        3,
        'failed to process "${RELEASE:?required}": RELEASE: required',
    ),
    "expand-unterminated-double-quote": Case(
        'FROM scratch\nENV GREETING="hello world\n',
        2,
        'failed to process "\\"hello world": unexpected end of statement while looking for matching double-quote',
    ),
    "expand-invalid-pattern": Case(
        "FROM scratch\nARG A=abc\nENV B=${A#\\x}\n",
        3,
        "failed to process \"${A#\\\\x}\": invalid pattern (\\x) in substitution: invalid escape '\\x'",
    ),
    "expand-too-deep": Case(  # pybuild's own bound
        f"FROM scratch\nENV A={_nested(70)}\n",
        2,
        f'failed to process "{_nested(70)}": variable substitution too deeply nested (more than 64 levels)',
    ),
    "expand-too-long": Case(  # pybuild's own bound
        _doubling(4),
        6,
        f'failed to process "{"$V3" * 16}": expansion is longer than 1048576 characters',
    ),
    "workdir-expands-to-nothing": Case(
        "FROM scratch\nARG APP_DIR\nWORKDIR $APP_DIR\n", 3, "normalizing workdir: cannot normalize nothing"
    ),
}


def write_dockerfile(tmp_path: Path, dockerfile: str | bytes) -> Path:
    context = write_context(tmp_path / "context", "")
    path = context / "Dockerfile"
    if isinstance(dockerfile, bytes):
        path.write_bytes(dockerfile)
    else:
        path.write_text(dockerfile, encoding="utf-8")
    return context


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"" for p in sorted(root.rglob("*"))}


def assert_one_error_line(result: CLIResult, expected: str) -> None:
    assert "Traceback" not in result.err, result
    assert result.out == "", result
    assert result.err == expected + "\n", result
    assert result.code == 1, result


#: Cases also run as a real ``pybuild`` process: the exit status and the one line are the process's own.
SUBPROCESS = ("empty-file", "invalid-utf8", "nul-byte", "line-over-64k", "directive-twice")


@pytest.mark.parametrize(
    "case, process",
    [(case, False) for case in CASES.values()] + [(CASES[name], True) for name in SUBPROCESS],
    ids=list(CASES) + [f"{name}-process" for name in SUBPROCESS],
)
def test_a_broken_dockerfile_is_one_line_and_changes_nothing(
    tmp_path: Path, store_root: Path, case: Case, process: bool
) -> None:
    context = write_dockerfile(tmp_path, case.dockerfile)
    before = snapshot(tmp_path)
    args = ("build", *case.args, str(context))
    result = run_pybuild(*args) if process else run_pybuild_here(*args)
    where = f"{context / 'Dockerfile'}:{case.line}" if case.line else str(context / "Dockerfile")
    assert_one_error_line(result, f"pybuild: {where}: {case.message}")
    assert not store_root.exists(), "the store was opened before the Dockerfile was checked"
    assert snapshot(tmp_path) == before


def test_the_table_covers_enough_kinds() -> None:
    assert len(CASES) >= 45
    assert len({case.message for case in CASES.values()}) >= 45


def test_the_path_is_named_as_the_user_gave_it(tmp_path: Path, store_root: Path) -> None:
    context = write_dockerfile(tmp_path, "FROM scratch\nCOPPY . /app\n")
    relative = os.path.relpath(context / "Dockerfile", REPO)  # run_pybuild runs in the repository
    result = run_pybuild("build", "-f", relative, str(context))
    assert_one_error_line(result, f"pybuild: {relative}:2: unknown instruction: COPPY (did you mean COPY?)")
    piped = run_pybuild("build", "-", input="FROM scratch\nCOPPY . /app\n")
    assert_one_error_line(piped, "pybuild: Dockerfile:2: unknown instruction: COPPY (did you mean COPY?)")
    assert not store_root.exists()


def test_debug_adds_the_traceback(tmp_path: Path) -> None:
    context = write_dockerfile(tmp_path, "FROM scratch\nCOPPY . /app\n")
    result = run_pybuild("--debug", "build", str(context))
    assert result.code == 1
    assert "Traceback" in result.err and "DockerfileError" in result.err
    assert result.err.splitlines()[-1].endswith("Dockerfile:2: unknown instruction: COPPY (did you mean COPY?)")


@pytest.mark.parametrize(
    "rest",
    ['["a", "b"', '{"a": 1}', '["a"] trailing', "[1e400]", "[ 'single' ]"],
    ids=["unclosed", "object", "trailing", "out-of-range-number", "single-quotes"],
)
def test_invalid_json_is_shell_form_as_in_buildkit(tmp_path: Path, rest: str) -> None:
    """BuildKit's parseMaybeJSON: only a JSON array holding a non-string is an error; anything else that fails
    to decode is the shell form of the command."""
    context = write_dockerfile(tmp_path, f"FROM scratch\nCMD {rest}\n")
    result = run_pybuild("build", "--print-plan", str(context))
    assert result.code == 0, result
    assert json.loads(result.out)["stages"][-1]["config"]["config"]["Cmd"] == ["/bin/sh", "-c", rest]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_image_on_a_registry_is_not_asked_for_before_the_file_is_checked(tmp_path: Path, store_root: Path) -> None:
    port = closed_port()
    context = write_dockerfile(tmp_path, f"FROM 127.0.0.1:{port}/base:1\nRUN true\nCOPY --chmod=10755 a /b\n")
    result = run_pybuild("build", "-q", str(context))
    message = "invalid chmod parameter: '10755'. it should be octal string and between 0 and 07777"
    assert_one_error_line(result, f"pybuild: {context / 'Dockerfile'}:3: {message}")
    assert not store_root.exists()


def test_an_unreachable_registry_names_the_registry_and_the_image(tmp_path: Path) -> None:
    port = closed_port()
    context = write_dockerfile(tmp_path, f"FROM 127.0.0.1:{port}/team/base:1.0\nRUN true\n")
    result = run_pybuild("build", "-q", str(context))
    assert result.code == 1, result
    assert "Traceback" not in result.err, result
    lines = result.err.splitlines()
    assert len(lines) == 1, result
    assert lines[0].startswith(f"pybuild: {context / 'Dockerfile'}:1: 127.0.0.1:{port}/team/base:1.0: "), result
    assert "cannot reach the registry" in lines[0], result


def test_io_errors_name_what_failed(tmp_path: Path, store_root: Path) -> None:
    context = write_dockerfile(tmp_path, "FROM scratch\n")
    missing = tmp_path / "nope" / "Dockerfile"
    assert_one_error_line(
        run_pybuild("build", "-f", str(missing), str(context)),
        f"pybuild: {missing}: no such file (name the Dockerfile with -f)",
    )
    a_file = context / "Dockerfile"
    assert_one_error_line(
        run_pybuild("build", str(a_file)),
        f"pybuild: unable to prepare context: context must be a directory: {a_file}",
    )
    assert_one_error_line(
        run_pybuild("build", str(tmp_path / "absent")),
        f'pybuild: unable to prepare context: path "{tmp_path / "absent"}" not found',
    )
    directory = tmp_path / "dir-context"
    (directory / "Dockerfile").mkdir(parents=True)
    assert_one_error_line(
        run_pybuild("build", str(directory)),
        f"pybuild: {directory / 'Dockerfile'}: is a directory, not a Dockerfile",
    )
    assert not store_root.exists()
