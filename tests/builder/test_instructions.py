"""The typed stage (``parse_instruction``, ``to_stages``) follows BuildKit's instructions package.

Each case is named after the Dockerfile-reference rule it checks or the BuildKit behaviour it re-expresses
(frontend/dockerfile/instructions/parse.go, bflag.go, commands_runmount.go, commands_runnetwork.go,
commands_runsecurity.go and their tests parse_test.go, parse_heredoc_test.go, bflag_test.go). Messages are BuildKit's,
with BuildKit v0.16+'s flag-message style ("unknown flag: --frm (did you mean from?)").
Durations follow Go's time.ParseDuration and retries strconv.ParseInt(value, 10, 32).
"""

from __future__ import annotations

from typing import Any

import pytest

from builder.errors import DockerfileError
from builder.frontend.dockerfile import Heredoc, parse_dockerfile
from builder.frontend.instructions import (
    Add,
    Arg,
    ArgPair,
    Cmd,
    CommandLine,
    Copy,
    Entrypoint,
    Env,
    Expose,
    From,
    Healthcheck,
    Instruction,
    KeyValue,
    Label,
    Maintainer,
    Onbuild,
    Run,
    Shell,
    StopSignal,
    User,
    Volume,
    Workdir,
    parse_instruction,
    to_stages,
)

P = pytest.param
SECOND = 1_000_000_000
MS = 1_000_000


def instruction(text: str, path: str = "Dockerfile") -> Instruction:
    """The typed value of the last instruction in ``text``."""
    ast = parse_dockerfile(text, path)
    return parse_instruction(ast.instructions[-1], ast.directives.escape, path)


def failure(text: str, path: str = "Dockerfile") -> DockerfileError:
    """The error parsing ``text`` raises, whichever stage finds it."""
    with pytest.raises(DockerfileError) as caught:
        ast = parse_dockerfile(text, path)
        for raw in ast.instructions:
            parse_instruction(raw, ast.directives.escape, path)
    return caught.value


def attributes(value: object, names: dict[str, Any]) -> dict[str, Any]:
    return {name: getattr(value, name) for name in names}


def shell(command: str) -> CommandLine:
    return CommandLine((command,), False)


def exec_form(*args: str) -> CommandLine:
    return CommandLine(args, True)


# --- accepted instructions --------------------------------------------------------------------------------------------

VALID = [
    # FROM
    P("FROM alpine:3.20", From, {"base": "alpine:3.20", "name": "", "platform": ""}, id="from-image-only"),
    P("FROM a AS Builder", From, {"base": "a", "name": "builder"}, id="from-stage-name-is-lowercased"),
    P("FROM a aS b", From, {"name": "b"}, id="from-as-keyword-is-case-insensitive"),
    P("FROM a AS b_c.d-e9", From, {"name": "b_c.d-e9"}, id="from-stage-name-may-hold-digits-dots-dashes"),
    P(
        "FROM --platform=linux/arm64 a AS b",
        From,
        {"base": "a", "name": "b", "platform": "linux/arm64"},
        id="from-platform-flag",
    ),
    P(
        "FROM --platform=$BUILDPLATFORM $BASE",
        From,
        {"base": "$BASE", "platform": "$BUILDPLATFORM"},
        id="from-keeps-variables-for-expansion",
    ),
    # RUN
    P("RUN echo  hi", Run, {"command": shell("echo  hi")}, id="run-shell-form-is-one-string"),
    P('RUN ["echo", "hi"]', Run, {"command": exec_form("echo", "hi")}, id="run-exec-form-is-a-json-array"),
    P('RUN [ "a" , "b" ]', Run, {"command": exec_form("a", "b")}, id="run-exec-form-allows-json-whitespace"),
    P("RUN [a]", Run, {"command": shell("[a]")}, id="run-invalid-json-is-shell-form"),
    P("RUN ['a']", Run, {"command": shell("['a']")}, id="run-single-quoted-array-is-shell-form"),
    P('RUN ["a"] b', Run, {"command": shell('["a"] b')}, id="run-json-with-trailing-text-is-shell-form"),
    # Go's encoding/json has no NaN: the array is not JSON, so the line is a shell command.
    P('RUN ["a", NaN]', Run, {"command": shell('["a", NaN]')}, id="run-json-is-strict-json"),
    P(
        "RUN <<EOF\nls /\nwhoami\nEOF",
        Run,
        {"command": shell("<<EOF"), "heredocs": (Heredoc("EOF", "ls /\nwhoami\n", True),)},
        id="run-heredoc-command-kept-and-body-attached",
    ),
    P(
        "RUN <<'EOF' | python\nprint(1)\nEOF",
        Run,
        {"command": shell("<<'EOF' | python"), "heredocs": (Heredoc("EOF", "print(1)\n", False),)},
        id="run-heredoc-piped-to-a-command",
    ),
    P(
        "RUN <<-EOF\n\techo test\nEOF",
        Run,
        {"heredocs": (Heredoc("EOF", "\techo test\n", True, True),)},
        id="run-chomped-heredoc-keeps-raw-body",
    ),
    P('RUN ["<<EOF"]', Run, {"command": exec_form("<<EOF"), "heredocs": ()}, id="run-exec-form-has-no-heredoc"),
    P("RUN x", Run, {"mounts": (), "network": "", "security": ""}, id="run-without-flags"),
    P(
        "RUN --mount=type=cache,target=/a --mount=type=tmpfs,target=/b x",
        Run,
        {"mounts": ("type=cache,target=/a", "type=tmpfs,target=/b"), "command": shell("x")},
        id="run-mount-is-repeatable",
    ),
    P("RUN --network=default x", Run, {"network": "default"}, id="run-network-default"),
    P("RUN --network=none x", Run, {"network": "none"}, id="run-network-none"),
    P("RUN --network=host x", Run, {"network": "host"}, id="run-network-host"),
    P("RUN --security=sandbox x", Run, {"security": "sandbox"}, id="run-security-sandbox"),
    P("RUN --security=insecure x", Run, {"security": "insecure"}, id="run-security-insecure"),
    P("RUN -- --mount=x y", Run, {"command": shell("--mount=x y"), "mounts": ()}, id="run-double-dash-ends-flags"),
    P(
        "RUN --mount='type=bind,\"target=/a,b\"' x",
        Run,
        {"mounts": ('type=bind,"target=/a,b"',)},
        id="run-mount-csv-quoted-field-may-hold-a-comma",
    ),
    P(
        "RUN --mount=type=secret,id=a,required,ro,rw,readonly,readwrite x",
        Run,
        {"mounts": ("type=secret,id=a,required,ro,rw,readonly,readwrite",)},
        id="run-mount-bare-ro-rw-required-are-fields",
    ),
    P("RUN --mount=Type=cache,Target=/x x", Run, {"mounts": ("Type=cache,Target=/x",)}, id="run-mount-keys-any-case"),
    P(
        "RUN --mount=type=bind,target=/x,src=$SRC x",
        Run,
        {"mounts": ("type=bind,target=/x,src=$SRC",)},
        id="run-mount-variables-allowed-outside-from",
    ),
    P(
        "RUN --mount=type=bind,target=/x,from=$ x",
        Run,
        {"mounts": ("type=bind,target=/x,from=$",)},
        id="run-mount-from-lone-dollar-is-not-a-variable",
    ),
    # CMD, ENTRYPOINT, SHELL
    P("CMD echo hi", Cmd, {"command": shell("echo hi")}, id="cmd-shell-form"),
    P('CMD ["a", "b"]', Cmd, {"command": exec_form("a", "b")}, id="cmd-exec-form"),
    P("CMD []", Cmd, {"command": exec_form()}, id="cmd-empty-json-array-is-allowed"),
    P("CMD", Cmd, {"command": CommandLine((), False)}, id="cmd-without-arguments-is-allowed"),
    P('ENTRYPOINT ["/bin/sh", "-c"]', Entrypoint, {"command": exec_form("/bin/sh", "-c")}, id="entrypoint-exec-form"),
    P("ENTRYPOINT exec top -b", Entrypoint, {"command": shell("exec top -b")}, id="entrypoint-shell-form"),
    P('SHELL ["powershell", "-command"]', Shell, {"shell": ("powershell", "-command")}, id="shell-json-form"),
    # ENV, LABEL
    P(
        "ENV A=1 B=\"x y\" C='$z'",
        Env,
        {"pairs": (KeyValue("A", "1"), KeyValue("B", '"x y"'), KeyValue("C", "'$z'"))},
        id="env-pairs-keep-quotes-for-the-expander",
    ),
    P("ENV A B C", Env, {"pairs": (KeyValue("A", "B C", legacy=True),)}, id="env-legacy-form-value-is-the-rest"),
    P('ENV A "x y"', Env, {"pairs": (KeyValue("A", '"x y"', legacy=True),)}, id="env-legacy-form-keeps-quotes"),
    P("ENV A=", Env, {"pairs": (KeyValue("A", ""),)}, id="env-empty-value"),
    P("ENV A\\ B=1", Env, {"pairs": (KeyValue("A\\ B", "1"),)}, id="env-escaped-space-stays-in-the-word"),
    P(
        "ENV A=1 \\\n    B=2",
        Env,
        {"pairs": (KeyValue("A", "1"), KeyValue("B", "2"))},
        id="env-pairs-across-continuation-lines",
    ),
    P(
        "# escape=`\nENV A=a` b C=c",
        Env,
        {"pairs": (KeyValue("A", "a` b"), KeyValue("C", "c"))},
        id="env-words-use-the-escape-directive",
    ),
    P(
        'LABEL "a b"="c d" e=f',
        Label,
        {"pairs": (KeyValue('"a b"', '"c d"'), KeyValue("e", "f"))},
        id="label-pairs-keep-quotes",
    ),
    P("LABEL a b c", Label, {"pairs": (KeyValue("a", "b c", legacy=True),)}, id="label-legacy-form"),
    # ARG
    P("ARG A", Arg, {"pairs": (ArgPair("A"),)}, id="arg-name-without-default"),
    P("ARG A=1", Arg, {"pairs": (ArgPair("A", "1"),)}, id="arg-with-default"),
    P("ARG A=", Arg, {"pairs": (ArgPair("A", ""),)}, id="arg-empty-default-is-not-unset"),
    P(
        "ARG A=1 B C=",
        Arg,
        {"pairs": (ArgPair("A", "1"), ArgPair("B"), ArgPair("C", ""))},
        id="arg-several-pairs",
    ),
    P('ARG A="x y"', Arg, {"pairs": (ArgPair("A", '"x y"'),)}, id="arg-default-keeps-quotes"),
    # EXPOSE, VOLUME
    P("EXPOSE 80 443/tcp 8080", Expose, {"ports": ("443/tcp", "80", "8080")}, id="expose-ports-sorted-as-strings"),
    P("EXPOSE 80  \t 90/udp", Expose, {"ports": ("80", "90/udp")}, id="expose-splits-on-any-whitespace"),
    P("VOLUME /a /b", Volume, {"paths": ("/a", "/b")}, id="volume-shell-form-splits-on-whitespace"),
    P('VOLUME ["/a", " /b "]', Volume, {"paths": ("/a", "/b")}, id="volume-json-form-entries-are-trimmed"),
    # one-argument instructions
    P("WORKDIR /a b", Workdir, {"path": "/a b"}, id="workdir-whole-rest-is-one-argument"),
    P("USER app:app", User, {"user": "app:app"}, id="user-name-and-group"),
    P("STOPSIGNAL SIGKILL", StopSignal, {"signal": "SIGKILL"}, id="stopsignal-signal-name"),
    P(
        "MAINTAINER Jane Doe <j@example.com>",
        Maintainer,
        {"maintainer": "Jane Doe <j@example.com>"},
        id="maintainer-whole-rest-is-one-argument",
    ),
    # HEALTHCHECK
    P("HEALTHCHECK NONE", Healthcheck, {"test": ("NONE",)}, id="healthcheck-none"),
    P("HEALTHCHECK none", Healthcheck, {"test": ("NONE",)}, id="healthcheck-none-is-case-insensitive"),
    P(
        "HEALTHCHECK CMD curl -f http://x/ || exit 1",
        Healthcheck,
        {"test": ("CMD-SHELL", "curl -f http://x/ || exit 1")},
        id="healthcheck-cmd-shell-form-becomes-cmd-shell",
    ),
    P('HEALTHCHECK CMD ["curl", "-f"]', Healthcheck, {"test": ("CMD", "curl", "-f")}, id="healthcheck-cmd-exec-form"),
    P("HEALTHCHECK cmd echo", Healthcheck, {"test": ("CMD-SHELL", "echo")}, id="healthcheck-type-is-case-insensitive"),
    # parseHealthConfig ends the type at the first unicode.IsSpace character.
    P("HEALTHCHECK CMD\techo hi", Healthcheck, {"test": ("CMD-SHELL", "echo hi")}, id="healthcheck-type-ends-at-a-tab"),
    P(
        "HEALTHCHECK CMD x",
        Healthcheck,
        {"interval": 0, "timeout": 0, "start_period": 0, "start_interval": 0, "retries": 0},
        id="healthcheck-defaults-are-zero",
    ),
    P(
        "HEALTHCHECK --interval=30s --timeout=1m30s --start-period=1.5s --start-interval=500ms --retries=3 CMD x",
        Healthcheck,
        {
            "interval": 30 * SECOND,
            "timeout": 90 * SECOND,
            "start_period": 1500 * MS,
            "start_interval": 500 * MS,
            "retries": 3,
        },
        id="healthcheck-accepts-all-its-flags",
    ),
    # ONBUILD
    P("ONBUILD RUN echo   hi", Onbuild, {"expression": "RUN echo   hi"}, id="onbuild-expression-is-the-trigger-text"),
    P("  onbuild   run echo hi", Onbuild, {"expression": "run echo hi"}, id="onbuild-keyword-removed-any-case"),
    P(
        "ONBUILD ADD --chown=1 a b",
        Onbuild,
        {"expression": "ADD --chown=1 a b"},
        id="onbuild-trigger-flags-belong-to-the-trigger",
    ),
    P(
        "ONBUILD RUN <<EOF\necho hi\nEOF",
        Onbuild,
        {"expression": "RUN <<EOF\necho hi\nEOF"},
        id="onbuild-expression-includes-heredoc-body-and-terminator",
    ),
    # COPY
    P("COPY a b c/", Copy, {"sources": ("a", "b"), "dest": "c/"}, id="copy-last-argument-is-the-destination"),
    P('COPY ["a b", "c/"]', Copy, {"sources": ("a b",), "dest": "c/"}, id="copy-json-form"),
    P(
        "COPY --from=build --chown=1:2 --chmod=644 --link=false --parents --exclude=*.md --exclude=*.txt a b",
        Copy,
        {
            "from_": "build",
            "chown": "1:2",
            "chmod": "644",
            "link": False,
            "parents": True,
            "excludes": ("*.md", "*.txt"),
        },
        id="copy-accepts-all-its-flags",
    ),
    P("COPY --link a b", Copy, {"link": True}, id="copy-bare-boolean-flag-is-true"),
    P("COPY --link=true a b", Copy, {"link": True}, id="copy-boolean-flag-true"),
    P("COPY --link=TRUE a b", Copy, {"link": True}, id="copy-boolean-flag-value-is-case-insensitive"),
    P("COPY --from= a b", Copy, {"from_": ""}, id="copy-string-flag-may-be-empty"),
    P(
        "COPY <<EOF /x\nhi\nEOF",
        Copy,
        {"sources": (), "dest": "/x", "heredocs": (Heredoc("EOF", "hi\n", True),)},
        id="copy-heredoc-source-is-an-inline-file",
    ),
    P(
        "COPY <<EOF foo.txt /bar\ninline\nEOF",
        Copy,
        {"sources": ("foo.txt",), "dest": "/bar", "heredocs": (Heredoc("EOF", "inline\n", True),)},
        id="copy-heredoc-and-path-sources",
    ),
    P(
        "COPY <<EOF1 <<EOF2 /bar\nfirst\nEOF1\nsecond\nEOF2",
        Copy,
        {"heredocs": (Heredoc("EOF1", "first\n", True), Heredoc("EOF2", "second\n", True))},
        id="copy-several-heredocs-in-order",
    ),
    P(
        "COPY <<'EOF' /bar\n$x\nEOF",
        Copy,
        {"heredocs": (Heredoc("EOF", "$x\n", False),)},
        id="copy-quoted-heredoc-is-not-expanded",
    ),
    # parseSourcesAndDest looks for heredoc words in the JSON form too; no body was read, so the file is empty.
    P(
        'COPY ["<<EOF", "/x"]',
        Copy,
        {"sources": (), "heredocs": (Heredoc("EOF", "", True),)},
        id="copy-json-heredoc-word-is-an-empty-inline-file",
    ),
    # ADD
    P(
        "ADD --chown=1:2 --chmod=755 --link --keep-git-dir --checksum=sha256:abc --unpack=false"
        " --exclude=a --exclude=b src dst",
        Add,
        {
            "chown": "1:2",
            "chmod": "755",
            "link": True,
            "keep_git_dir": True,
            "checksum": "sha256:abc",
            "unpack": False,
            "excludes": ("a", "b"),
            "sources": ("src",),
            "dest": "dst",
        },
        id="add-accepts-all-its-flags",
    ),
    P("ADD a b", Add, {"unpack": None, "keep_git_dir": False, "link": False}, id="add-unset-unpack-is-none"),
    P("ADD --unpack a b", Add, {"unpack": True}, id="add-bare-unpack-is-true"),
    P(
        "ADD <<EOF <<'B' /d/\n$a\nEOF\n$b\nB",
        Add,
        {"heredocs": (Heredoc("EOF", "$a\n", True), Heredoc("B", "$b\n", False))},
        id="add-heredocs",
    ),
]


@pytest.mark.parametrize(("text", "kind", "expected"), VALID)
def test_valid(text: str, kind: type[Instruction], expected: dict[str, Any]) -> None:
    value = instruction(text)
    assert type(value) is kind
    assert attributes(value, expected) == expected


# parseStopSignal, parseArg and the NONE branch of parseHealthcheck never call BFlags.Parse: BuildKit ignores flags
# there instead of refusing them.
FLAGS_IGNORED = [
    P("STOPSIGNAL --x=1 SIGKILL", StopSignal, {"signal": "SIGKILL"}, id="stopsignal-flags-are-ignored"),
    P("ARG --x=1 A", Arg, {"pairs": (ArgPair("A"),)}, id="arg-flags-are-ignored"),
    P("HEALTHCHECK --interval=5s NONE", Healthcheck, {"test": ("NONE",)}, id="healthcheck-none-flags-are-ignored"),
]


@pytest.mark.parametrize(("text", "kind", "expected"), FLAGS_IGNORED)
def test_flags_ignored(text: str, kind: type[Instruction], expected: dict[str, Any]) -> None:
    value = instruction(text)
    assert type(value) is kind
    assert attributes(value, expected) == expected


# --- refused instructions: BuildKit's messages, located at the instruction's first line -------------------------------

NO_DESTINATION = "requires at least two arguments, but only one was provided. Destination could not be determined"
NOT_STRINGS = "when using JSON array syntax, arrays must be comprised of strings only"
BAD_STAGE = "name can't start with a number or contain symbols"

ERRORS = [
    # FROM
    P("FROM", "FROM requires either one or three arguments", id="from-requires-an-argument"),
    P("FROM a b", "FROM requires either one or three arguments", id="from-two-arguments"),
    P("FROM a AS", "FROM requires either one or three arguments", id="from-as-without-name"),
    P("FROM a AS b c", "FROM requires either one or three arguments", id="from-four-arguments"),
    P("FROM a FOR b", "FROM requires either one or three arguments", id="from-three-arguments-need-as"),
    P("FROM a AS 1b", f'invalid name for build stage: "1b", {BAD_STAGE}', id="from-stage-name-starts-with-letter"),
    P("FROM --platform a", "missing a value on flag: --platform", id="from-platform-needs-a-value"),
    P("FROM --platfrom=x a", "unknown flag: --platfrom (did you mean platform?)", id="from-unknown-flag-suggestion"),
    # COPY, ADD
    P("COPY a", f"COPY {NO_DESTINATION}", id="copy-requires-source-and-dest"),
    P("COPY", f"COPY {NO_DESTINATION}", id="copy-without-arguments"),
    P('COPY ["a"]', f"COPY {NO_DESTINATION}", id="copy-json-form-requires-source-and-dest"),
    P("ADD a", f"ADD {NO_DESTINATION}", id="add-requires-source-and-dest"),
    P("COPY /foo <<EOF\nEOF", "COPY cannot accept a heredoc as a destination", id="copy-heredoc-destination"),
    P("ADD /foo <<EOF\nEOF", "ADD cannot accept a heredoc as a destination", id="add-heredoc-destination"),
    # JSON arrays
    P("RUN [1]", NOT_STRINGS, id="run-json-array-of-numbers"),
    P('COPY [1, "b"]', NOT_STRINGS, id="copy-json-array-with-a-number"),
    P('CMD ["a", null]', NOT_STRINGS, id="cmd-json-array-with-null"),
    P('ENTRYPOINT [["a"]]', NOT_STRINGS, id="entrypoint-nested-json-array"),
    P("VOLUME [true]", NOT_STRINGS, id="volume-json-array-of-booleans"),
    # SHELL
    P("SHELL sh -c", "SHELL requires the arguments to be in JSON form", id="shell-must-be-json"),
    P("SHELL []", "SHELL requires at least one argument", id="shell-empty-json-array"),
    P("SHELL", "SHELL requires at least one argument", id="shell-without-arguments"),
    # ENV, LABEL, ARG
    P("ENV", "ENV requires at least one argument", id="env-requires-an-argument"),
    P("ENV A", "ENV must have two arguments", id="env-legacy-form-needs-a-value"),
    P("ENV =1", "ENV names can not be blank", id="env-blank-name"),
    P(
        "ENV A=1 B",
        'Syntax error - can\'t find = in "B". Must be of the form: name=value',
        id="env-every-word-needs-equals",
    ),
    # Go's %q keeps printable non-ASCII characters as they are.
    P(
        "ENV A=1 é",
        'Syntax error - can\'t find = in "é". Must be of the form: name=value',
        id="env-missing-equals-word-quoted-like-go",
    ),
    P("LABEL", "LABEL requires at least one argument", id="label-requires-an-argument"),
    P("LABEL a", "LABEL must have two arguments", id="label-legacy-form-needs-a-value"),
    P("LABEL =x", "LABEL names can not be blank", id="label-blank-name"),
    P("ARG", "ARG requires at least one argument", id="arg-requires-an-argument"),
    P("ARG =1", "ARG names can not be blank", id="arg-blank-name"),
    # EXPOSE, VOLUME
    P("EXPOSE", "EXPOSE requires at least one argument", id="expose-requires-an-argument"),
    P("VOLUME", "VOLUME requires at least one argument", id="volume-requires-an-argument"),
    P("VOLUME []", "VOLUME requires at least one argument", id="volume-empty-json-array"),
    P('VOLUME [""]', "VOLUME specified can not be an empty string", id="volume-empty-string"),
    P('VOLUME ["/a", "  "]', "VOLUME specified can not be an empty string", id="volume-blank-string"),
    # exactly one argument
    P("WORKDIR", "WORKDIR requires exactly one argument", id="workdir-requires-exactly-one-argument"),
    P("USER", "USER requires exactly one argument", id="user-requires-exactly-one-argument"),
    P("STOPSIGNAL", "STOPSIGNAL requires exactly one argument", id="stopsignal-requires-exactly-one-argument"),
    P("MAINTAINER", "MAINTAINER requires exactly one argument", id="maintainer-requires-exactly-one-argument"),
    # HEALTHCHECK
    P("HEALTHCHECK", "HEALTHCHECK requires at least one argument", id="healthcheck-requires-an-argument"),
    P("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments", id="healthcheck-none-takes-no-arguments"),
    P("HEALTHCHECK CMD", "Missing command after HEALTHCHECK CMD", id="healthcheck-cmd-needs-a-command"),
    P("HEALTHCHECK CMD []", "Missing command after HEALTHCHECK CMD", id="healthcheck-cmd-empty-json-array"),
    P("HEALTHCHECK FOO x", 'Unknown type "FOO" in HEALTHCHECK (try CMD)', id="healthcheck-unknown-type"),
    P(
        "HEALTHCHECK CMD-SHELL echo",
        'Unknown type "CMD-SHELL" in HEALTHCHECK (try CMD)',
        id="healthcheck-cmd-shell-is-not-a-written-type",
    ),
    # ONBUILD
    P("ONBUILD", "ONBUILD requires at least one argument", id="onbuild-requires-an-argument"),
    P("ONBUILD ONBUILD RUN x", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed", id="onbuild-onbuild-refused"),
    P("ONBUILD FROM scratch", "FROM isn't allowed as an ONBUILD trigger", id="onbuild-from-refused"),
    P("ONBUILD maintainer me", "MAINTAINER isn't allowed as an ONBUILD trigger", id="onbuild-maintainer-refused"),
    # unknown instructions
    P("FOO bar", "unknown instruction: FOO (did you mean FROM?)", id="unknown-instruction"),
    P("foo bar", "unknown instruction: foo (did you mean from?)", id="unknown-instruction-keeps-its-case"),
    P("coppy a b", "unknown instruction: coppy (did you mean copy?)", id="unknown-instruction-suggestion"),
    # suggest.WrapError matches the suggestion's case to the word as written.
    P("COPPY a b", "unknown instruction: COPPY (did you mean COPY?)", id="unknown-instruction-suggestion-keeps-case"),
    # suggest.WrapError suggests only below a Levenshtein distance of 3 (HEALTH is 5 edits from HEALTHCHECK).
    P("HEALTH x", "unknown instruction: HEALTH", id="unknown-instruction-far-from-any-has-no-suggestion"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_errors(text: str, message: str) -> None:
    assert str(failure(text)) == f"Dockerfile:1: {message}"


FLAG_ERRORS = [
    # unknown flags
    P("COPY --frm=a x y", "unknown flag: --frm (did you mean from?)", id="unknown-flag-suggestion"),
    P("COPY --xyz=a x y", "unknown flag: --xyz", id="unknown-flag-without-suggestion"),
    P("ADD --from=a x y", "unknown flag: --from", id="add-has-no-from-flag"),
    P("RUN --mnt=type=bind x", "unknown flag: --mnt (did you mean mount?)", id="run-unknown-flag-suggestion"),
    P("HEALTHCHECK --intervl=1s CMD x", "unknown flag: --intervl (did you mean interval?)", id="healthcheck-flag-typo"),
    # suggest.WrapError: "keep-git" is 4 edits from "keep-git-dir", too far for a suggestion.
    P("ADD --keep-git x y", "unknown flag: --keep-git", id="unknown-flag-suggestion-needs-few-edits"),
    # values
    P("COPY --from x y", "missing a value on flag: --from", id="string-flag-needs-a-value"),
    P("RUN --mount x", "missing a value on flag: --mount", id="repeatable-flag-needs-a-value"),
    P("HEALTHCHECK --retries CMD x", "missing a value on flag: --retries", id="healthcheck-flag-needs-a-value"),
    P("COPY --link= x y", "missing a value on flag: --link", id="boolean-flag-with-empty-value"),
    P("COPY --link=yes x y", "expecting boolean value for flag --link, not: yes", id="boolean-flag-yes-is-not-boolean"),
    P(
        "ADD --keep-git-dir=1 x y",
        "expecting boolean value for flag --keep-git-dir, not: 1",
        id="boolean-flag-one-is-not-boolean",
    ),
    # repetition
    P("COPY --link --link x y", "duplicate flag specified: --link", id="boolean-flag-twice"),
    P("COPY --from=a --from=b x y", "duplicate flag specified: --from", id="string-flag-twice"),
    P("RUN --network=none --network=host x", "duplicate flag specified: --network", id="run-network-twice"),
    # instructions that take no flags
    P("ENV --x=1 A=1", "unknown flag: --x", id="env-takes-no-flags"),
    P("LABEL --x=1 a=b", "unknown flag: --x", id="label-takes-no-flags"),
    P("CMD --x=1 a", "unknown flag: --x", id="cmd-takes-no-flags"),
    P("ENTRYPOINT --x=1 a", "unknown flag: --x", id="entrypoint-takes-no-flags"),
    P('SHELL --x=1 ["sh"]', "unknown flag: --x", id="shell-takes-no-flags"),
    P("EXPOSE --x=1 80", "unknown flag: --x", id="expose-takes-no-flags"),
    P("VOLUME --x=1 /v", "unknown flag: --x", id="volume-takes-no-flags"),
    P("WORKDIR --x=1 /a", "unknown flag: --x", id="workdir-takes-no-flags"),
    P("USER --x=1 a", "unknown flag: --x", id="user-takes-no-flags"),
    P("MAINTAINER --boo joe@example.com", "unknown flag: --boo", id="maintainer-takes-no-flags"),
    P("ONBUILD --x=1 RUN a", "unknown flag: --x", id="onbuild-takes-no-flags"),
    # RUN --network and --security
    P("RUN --network=bridge x", 'invalid network mode "bridge"', id="run-network-unknown-mode"),
    P("RUN --security=foo x", 'security "foo" is not valid', id="run-security-unknown-mode"),
    # RUN --mount, as far as it can be checked before expansion
    P("RUN --mount=type=bind,foo,target=/x x", "invalid field 'foo' must be a key=value pair", id="mount-bare-word"),
    P(
        "RUN --mount=type=bind,tagret=/x x",
        "unexpected key 'tagret' in 'tagret=/x' (did you mean target?)",
        id="mount-unknown-key-suggestion",
    ),
    P(
        "RUN --mount=type=bind,Tagret=/x x",
        "unexpected key 'tagret' in 'Tagret=/x' (did you mean target?)",
        id="mount-unknown-key-lowercased-field-as-written",
    ),
    P("RUN --mount=type=bind,xyz=/x x", "unexpected key 'xyz' in 'xyz=/x'", id="mount-unknown-key-no-suggestion"),
    P(
        "RUN --mount=type=bind,target=/x,from=$STAGE x",
        "'from' doesn't support variable expansion, define alias stage instead",
        id="mount-from-with-variable-refused",
    ),
    P(
        "RUN --mount=type=bind,target=/x,from=${STAGE} x",
        "'from' doesn't support variable expansion, define alias stage instead",
        id="mount-from-with-braced-variable-refused",
    ),
    # encoding/csv's Read of an empty string returns io.EOF, wrapped by parseMount.
    P("RUN --mount= x", "failed to parse csv mounts: EOF", id="mount-empty-value-is-a-csv-error"),
]


@pytest.mark.parametrize(("text", "message"), FLAG_ERRORS)
def test_flag_errors(text: str, message: str) -> None:
    assert str(failure(text)) == f"Dockerfile:1: {message}"


CSV_ERRORS = [
    P("RUN --mount='type=bind,\"target=/a' x", id="mount-unterminated-csv-quote"),
    # encoding/csv (LazyQuotes off) refuses a quote inside an unquoted field: `bare " in non-quoted-field`.
    P('RUN --mount=type=bind,target=/a\\"b x', id="mount-bare-quote-in-unquoted-field"),
]


@pytest.mark.parametrize("text", CSV_ERRORS)
def test_mount_csv_errors(text: str) -> None:
    err = failure(text)
    assert err.line == 1
    assert err.message.startswith("failed to parse csv mounts: ")


# --- HEALTHCHECK durations (Go's time.ParseDuration, then BuildKit's 1ms minimum) and retries ------------------------

DURATIONS = [
    P("30s", 30 * SECOND, id="duration-seconds"),
    P("1m30s", 90 * SECOND, id="duration-minutes-and-seconds"),
    P("1.5s", 1500 * MS, id="duration-fraction"),
    P("500ms", 500 * MS, id="duration-milliseconds"),
    P("1ms", MS, id="duration-one-millisecond-is-the-minimum"),
    P("1000000ns", MS, id="duration-nanoseconds"),
    P("1000us", MS, id="duration-microseconds"),
    P("1000µs", MS, id="duration-micro-sign"),
    P("1.5h", 5400 * SECOND, id="duration-fractional-hours"),
    P(".5s", 500 * MS, id="duration-leading-dot"),
    P("1.s", SECOND, id="duration-trailing-dot"),
    P("+5s", 5 * SECOND, id="duration-plus-sign"),
    P("1h2m3s4ms5us6ns", 3_723_004_005_006, id="duration-every-unit"),
    P("0", 0, id="duration-bare-zero"),
    P("-0", 0, id="duration-signed-bare-zero"),
    P("0s", 0, id="duration-zero-with-unit"),
    P("", 0, id="duration-empty-is-unset"),
    P("2562047h", 2562047 * 3600 * SECOND, id="duration-largest-whole-hours"),
]


@pytest.mark.parametrize(("value", "nanoseconds"), DURATIONS)
def test_durations(value: str, nanoseconds: int) -> None:
    value_of = instruction(f"HEALTHCHECK --interval={value} CMD x")
    assert isinstance(value_of, Healthcheck)
    assert value_of.interval == nanoseconds


DURATION_FLAGS = [
    P("interval", "interval", id="duration-flag-interval"),
    P("timeout", "timeout", id="duration-flag-timeout"),
    P("start-period", "start_period", id="duration-flag-start-period"),
    P("start-interval", "start_interval", id="duration-flag-start-interval"),
]


@pytest.mark.parametrize(("flag", "field"), DURATION_FLAGS)
def test_duration_flags(flag: str, field: str) -> None:
    value = instruction(f"HEALTHCHECK --{flag}=1m30s CMD x")
    assert getattr(value, field) == 90 * SECOND
    assert str(failure(f"HEALTHCHECK --{flag}=1ns CMD x")) == f'Dockerfile:1: Interval "{flag}" cannot be less than 1ms'


DURATION_ERRORS = [
    P("5", 'time: missing unit in duration "5"', id="duration-missing-unit"),
    P("5x", 'time: unknown unit "x" in duration "5x"', id="duration-unknown-unit"),
    P("5S", 'time: unknown unit "S" in duration "5S"', id="duration-units-are-lowercase"),
    P("abc", 'time: invalid duration "abc"', id="duration-not-a-number"),
    P(".", 'time: invalid duration "."', id="duration-lone-dot"),
    P("-", 'time: invalid duration "-"', id="duration-lone-sign"),
    P("-1s", 'Interval "interval" cannot be less than 1ms', id="duration-negative-is-below-minimum"),
    P("999us", 'Interval "interval" cannot be less than 1ms', id="duration-below-one-millisecond"),
    P("2562048h", 'time: invalid duration "2562048h"', id="duration-overflowing-int64-is-invalid"),
]


@pytest.mark.parametrize(("value", "message"), DURATION_ERRORS)
def test_duration_errors(value: str, message: str) -> None:
    assert str(failure(f"HEALTHCHECK --interval={value} CMD x")) == f"Dockerfile:1: {message}"


RETRIES = [
    P("3", 3, id="retries-number"),
    P("+2", 2, id="retries-plus-sign"),
    P("0", 0, id="retries-zero-is-allowed"),
    P("", 0, id="retries-empty-is-unset"),
    P("2147483647", 2147483647, id="retries-largest-int32"),
]


@pytest.mark.parametrize(("value", "retries"), RETRIES)
def test_retries(value: str, retries: int) -> None:
    value_of = instruction(f"HEALTHCHECK --retries={value} CMD x")
    assert isinstance(value_of, Healthcheck)
    assert value_of.retries == retries


RETRY_ERRORS = [
    P("-1", "--retries cannot be negative (-1)", id="retries-negative"),
    P("x", 'strconv.ParseInt: parsing "x": invalid syntax', id="retries-not-a-number"),
    P("1.5", 'strconv.ParseInt: parsing "1.5": invalid syntax', id="retries-not-an-integer"),
    P("2147483648", 'strconv.ParseInt: parsing "2147483648": value out of range', id="retries-beyond-int32"),
]


@pytest.mark.parametrize(("value", "message"), RETRY_ERRORS)
def test_retry_errors(value: str, message: str) -> None:
    assert str(failure(f"HEALTHCHECK --retries={value} CMD x")) == f"Dockerfile:1: {message}"


# --- stages -----------------------------------------------------------------------------------------------------------


def test_stages_and_global_args() -> None:
    text = "ARG V=1\n# base\nFROM a:$V AS one\nRUN x\nENV A=1\n\nFROM one\nCOPY --from=one a b\n"
    stages, global_args = to_stages(parse_dockerfile(text))
    assert [(s.index, s.name, s.start.base, s.start.line) for s in stages] == [(0, "one", "a:$V", 3), (1, "", "one", 7)]
    assert [[type(i).__name__ for i in s.instructions] for s in stages] == [["Run", "Env"], ["Copy"]]
    assert [a.pairs for a in global_args] == [(ArgPair("V", "1"),)]


def test_arg_after_from_belongs_to_the_stage() -> None:
    stages, global_args = to_stages(parse_dockerfile("ARG A\nFROM x\nARG B\n"))
    assert [a.pairs for a in global_args] == [(ArgPair("A"),)]
    assert [i.pairs for i in stages[0].instructions if isinstance(i, Arg)] == [(ArgPair("B"),)]


STAGE_ERRORS = [
    P("RUN x\nFROM y\n", "Dockerfile:1: no build stage in current context", id="instruction-before-from"),
    P(
        "ARG a\n\n# c\nENV b=1\nFROM x\n",
        "Dockerfile:4: no build stage in current context",
        id="only-arg-may-precede-from",
    ),
    P("ARG a\n", "dockerfile contains no stages to build", id="no-from-at-all"),
]


@pytest.mark.parametrize(("text", "message"), STAGE_ERRORS)
def test_stage_errors(text: str, message: str) -> None:
    with pytest.raises(DockerfileError) as caught:
        to_stages(parse_dockerfile(text))
    assert message in str(caught.value)


# --- locations --------------------------------------------------------------------------------------------------------

LOCATIONS = [
    P(
        "FROM a\n\nRUN \\\n  --bad=1 x\n",
        "ctx/Dockerfile.dev:3: unknown flag: --bad",
        id="location-is-the-first-line-of-a-continued-instruction",
    ),
    P(
        "FROM a\nRUN <<EOF\nx\nEOF\nCOPY a\n",
        f"ctx/Dockerfile.dev:5: COPY {NO_DESTINATION}",
        id="location-after-a-heredoc",
    ),
    P(
        "# escape=`\nFROM a\nWORKDIR `\n\n",
        "ctx/Dockerfile.dev:3: WORKDIR requires exactly one argument",
        id="location-with-directives-and-backtick-continuation",
    ),
    P("FROM a\nBOGUS x\n", "ctx/Dockerfile.dev:2: unknown instruction: BOGUS", id="location-of-unknown-instruction"),
]


@pytest.mark.parametrize(("text", "rendered"), LOCATIONS)
def test_locations(text: str, rendered: str) -> None:
    with pytest.raises(DockerfileError) as caught:
        to_stages(parse_dockerfile(text, "ctx/Dockerfile.dev"))
    assert str(caught.value) == rendered


def test_parse_instruction_default_path() -> None:
    (raw,) = parse_dockerfile("COPY a").instructions
    with pytest.raises(DockerfileError) as caught:
        parse_instruction(raw)
    assert (caught.value.path, caught.value.line) == ("Dockerfile", 1)


def test_instruction_keeps_its_lines_and_spelling() -> None:
    value = instruction("FROM a\nrun <<EOF\nx\nEOF\n")
    assert isinstance(value, Run)
    assert (value.line, value.end_line, value.written_keyword, value.original) == (2, 4, "run", "run <<EOF")
