"""Fuzzing the Dockerfile front end: whatever the bytes, the only exception is the project's own ``DockerfileError``.

Inputs go through what ``pybuild build`` does before it touches anything: parse the bytes, check the file, plan
it with no base image configs known (and plan every stage, as ``--check`` does). The shell lexer is fuzzed on
its own with every option and arbitrary environments, and so is the ``.dockerignore`` parser and matcher.
Regressions found by fuzzing are pinned with ``@example``.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from builder.context import parse_ignore, parse_patterns
from builder.errors import ContextError, DockerfileError
from builder.frontend.dockerfile import parse_dockerfile
from builder.frontend.shell import Lexer
from builder.plan import PlanOptions, check_dockerfile, plan_build
from oci.descriptor import Platform
from oci.frozen import FrozenMap

HUGE = "9" * 5000  # more digits than int() converts (Python's limit is 4300)
ZEROS = "0" * 5000
KEYWORDS = [
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
    "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "from", "run", "Copy", "COPPY", "ONBUILD RUN",
    "ONBUILD COPY", "ONBUILD ONBUILD", "HEALTHCHECK CMD", "HEALTHCHECK NONE", "#", "# escape=`", "# escape=\\",
    "# syntax=docker/dockerfile:1", "# check=skip=all;error=true", "",
]  # fmt: skip
FLAGS = [
    "--from=", "--from=0", "--from=a", "--from=$X", "--chown=", "--chown=1:2", "--chmod=", "--chmod=755",
    "--chmod=u+x", "--link", "--link=false", "--parents", "--exclude=*.md", "--checksum=sha256:", "--keep-git-dir",
    "--platform=", "--platform=linux/arm64/v8", "--platform=$BUILDPLATFORM", "--network=none", "--network=",
    "--security=insecure", "--mount=", "--mount=type=cache,target=/c,sharing=locked,id=x,uid=1,mode=0700",
    "--mount=type=bind,from=a,source=/s,target=/t,rw", "--mount=type=secret,id=s,env=S,required",
    "--mount=type=ssh", "--mount=type=tmpfs,target=/t,size=1m", "--mount=from=${S},target=/x", "--interval=1s",
    "--timeout=", "--retries=3", "--start-period=0", "--start-interval=5ms", "--", "--=", "--x", "-", "--retries=",
    "--interval=", "--mount=type=cache,target=/c,uid=", "--mount=type=tmpfs,target=/t,size=",
    "--mount=type=cache,target=/c,mode=", "--mount=type=bind,", "--mount=type=secret,id=",
]  # fmt: skip
TOKENS = [
    "a", "b", "scratch", "alpine:3.20", "AS", "as", "stage", "/x", "./y", "*", "?", "[", "]", "{", "}", "(", ")",
    '"', "'", "`", "\\", "\\\n", "`\n", "$", "$A", "${A}", "${", "${A:-x}", "${A:+x}", "${A:?}", "${A?e}", "${A#*}",
    "${A##a*}", "${A%b}", "${A%%*}", "${A/a/b}", "${A//a}", "${#A}", "${A:1}", "${}", "$$", "$1", "=", "A=1",
    "=x", "A", ",", ":", "#", "&&", "|", ";", " ", "\t", "\r", "\n", "\v", "\x0c", "\x00", "\u00a0", "\ufeff",
    "\u2028", "é", "日本", "<<EOF", "<<-EOF", '<<"EOF"', "<<'E F'", "3<<X", "<<", "EOF", "\tEOF", "X", "[]", '["a"]',
    '["a", 1]', '["a"', "[1e400]", "[null]", "{}", "http://h/x", "https://h/r.git#v1", "git@h:r.git", "80/tcp",
    "80-90/udp", "1s", "SIGKILL", "RTMIN+3", "0", "-1", "+1", "1.2.3", "1_0", "0x1", "1e400", "99999999999999999999",
    HUGE, ZEROS + "1", "¹", "٣", "uid=", "size=", "mode=", "--retries=", "--interval=",
]  # fmt: skip


@st.composite
def dockerfiles(draw: st.DrawFn) -> bytes:
    """Dockerfile-shaped bytes: lines of keyword, flags and tokens, some heredoc bodies, some broken bytes."""
    lines = []
    if draw(st.booleans()):
        lines.append("FROM scratch" + draw(st.sampled_from(["", " AS a", " AS b", " AS 1x"])))
    for _ in range(draw(st.integers(0, 8))):
        keyword = draw(st.sampled_from(KEYWORDS))
        flags = [
            flag + (draw(st.sampled_from(TOKENS)) if flag.endswith(("=", ",")) and draw(st.booleans()) else "")
            for flag in draw(st.lists(st.sampled_from(FLAGS), max_size=3))
        ]
        words = draw(st.lists(st.sampled_from(TOKENS) | st.text(max_size=6), max_size=8))
        joiner = draw(st.sampled_from([" ", "", "  "]))
        lines.append(" ".join([keyword, *flags]) + " " + joiner.join(words))
    text = "\n".join(lines) + draw(st.sampled_from(["", "\n", "\\\n", "\r\n"]))
    data = text.encode("utf-8", "surrogatepass")
    for _ in range(draw(st.integers(0, 2))):  # a stray byte: invalid UTF-8, NUL, a lone continuation byte
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\x00", b"\x80", b"\xc3", b"\xed\xa0\x80"])) + data[at:]
    return data


OPTIONS = [
    PlanOptions(build_platform=Platform("linux", "amd64")),
    PlanOptions(
        build_args=FrozenMap({"A": "x", "S": "a", "HTTP_PROXY": "p"}),
        target="a",
        platform=Platform("linux", "arm64", "v8"),
        contexts=frozenset({"b"}),
        labels=FrozenMap({"l": "v"}),
        all_stages=True,
    ),
]


def front_end(data: bytes, options: PlanOptions) -> None:
    """What the CLI does with a Dockerfile before any side effect, and the plan it then makes."""
    try:
        ast = parse_dockerfile(data, "Dockerfile")
        check_dockerfile(ast, options)
        plan = plan_build(ast, options)
    except DockerfileError as err:
        # Every error names its line, except --target's, which BuildKit gives none either.
        assert err.message and (err.line > 0 or err.message.startswith("target stage")), repr(str(err))
        return
    plan.to_json()  # the plan printed by --print-plan


@given(st.binary(max_size=400), st.sampled_from(OPTIONS))
@example(b"FROM scratch\nRUN []\n", OPTIONS[0])
@example(b"\xef\xbb\xbf", OPTIONS[0])
def test_arbitrary_bytes(data: bytes, options: PlanOptions) -> None:
    front_end(data, options)


@given(st.text(max_size=300), st.sampled_from(OPTIONS))
def test_arbitrary_text(text: str, options: PlanOptions) -> None:
    front_end(text.encode("utf-8", "surrogatepass"), options)


@given(dockerfiles(), st.sampled_from(OPTIONS))
@example(b"FROM scratch\nCOPY --from=${ /x /y\n", OPTIONS[0])
@example(f"FROM scratch\nCOPY --from={HUGE} /x /y\n".encode(), OPTIONS[0])
@example(f"FROM scratch\nSTOPSIGNAL {HUGE}\n".encode(), OPTIONS[1])
@example(b"FROM scratch\nCOPY --from=a\\ /x /y\n", OPTIONS[0])
def test_dockerfile_shaped(data: bytes, options: PlanOptions) -> None:
    front_end(data, options)


# Crashes fuzzing found (an exception other than DockerfileError), each with what BuildKit says instead; None: the
# Dockerfile is accepted. Non-ASCII digits are digits to str.isdigit and int(), never to Go's strconv.
FOUND = [
    (f"STOPSIGNAL {HUGE}", "invalid signal: " + HUGE),
    ("STOPSIGNAL ¹", "invalid signal: ¹"),
    ("STOPSIGNAL ٣", "invalid signal: ٣"),
    ("STOPSIGNAL +5", None),
    (f"HEALTHCHECK --retries={HUGE} CMD x", f'strconv.ParseInt: parsing "{HUGE}": value out of range'),
    (f"HEALTHCHECK --interval={HUGE}s CMD x", f'time: invalid duration "{HUGE}s"'),
    (f"HEALTHCHECK --interval=1.{HUGE}s CMD x", None),
    ("COPY --from=" + "9" * 30 + " /a /b", None),  # beyond what Atoi reads: an image's name, as in BuildKit
    ("COPY --from=¹ /a /b", 'failed to parse stage name "¹": invalid reference format'),
    ("COPY --from=-1 /a /b", "invalid stage index -1"),
    (f"RUN --mount=type=cache,target=/x,uid={HUGE} true", f"invalid value {HUGE} for uid"),
    (f"RUN --mount=type=tmpfs,target=/x,size={HUGE} true", f"invalid value for size: {HUGE}"),
    ("RUN --mount=type=tmpfs,target=/x,size=1.2.3 true", "invalid value for size: 1.2.3"),
    ("RUN --mount=type=tmpfs,target=/x,size=٣ true", "invalid value for size: ٣"),
    # Past an int64, Go's conversion wraps around to a negative size; pybuild refuses it instead.
    ("RUN --mount=type=tmpfs,target=/x,size=99999999p true", "invalid value for size: 99999999p"),
    # Leading zeros count towards int()'s limit too; Go reads these numbers as the small ones they are.
    (f"STOPSIGNAL {ZEROS}9", None),
    (f"HEALTHCHECK --retries={ZEROS}3 CMD x", None),
    (f"HEALTHCHECK --interval={ZEROS}1s CMD x", None),
    (f"RUN --mount=type=cache,target=/x,uid={ZEROS}1 true", None),
    (f"EXPOSE {ZEROS}80", None),
]


@pytest.mark.parametrize(("line", "error"), FOUND, ids=[line[:40] for line, _ in FOUND])
def test_found_by_fuzzing(line: str, error: str | None) -> None:
    ast = parse_dockerfile(f"FROM scratch\n{line}\n")
    if error is None:
        plan_build(ast, OPTIONS[0])
        return
    with pytest.raises(DockerfileError) as caught:
        plan_build(ast, OPTIONS[0])
    assert str(caught.value) == f"Dockerfile:2: {error}"


NAMES = st.sampled_from(["A", "B", "a", "_", "A1", "1", "@", "#", "?", "PATH", "é"])


@given(
    word=st.lists(st.sampled_from(TOKENS) | st.text(max_size=4), max_size=12).map("".join),
    env=st.dictionaries(NAMES, st.sampled_from(TOKENS) | st.text(max_size=8), max_size=4),
    escape=st.sampled_from(["\\", "`"]),
    raw_quotes=st.booleans(),
    raw_escapes=st.booleans(),
    skip_process_quotes=st.booleans(),
    skip_unset=st.booleans(),
)
def test_shell_lexer(
    word: str,
    env: dict[str, str],
    escape: str,
    raw_quotes: bool,
    raw_escapes: bool,
    skip_process_quotes: bool,
    skip_unset: bool,
) -> None:
    lexer = Lexer(escape, raw_quotes, raw_escapes, skip_process_quotes, skip_unset)
    try:
        result = lexer.expand(word, env)
    except DockerfileError:
        return
    assert isinstance(result.value, str)
    assert all(isinstance(w, str) and w for w in result.words)


PATTERN_TOKENS = ["a", "b", "/", "*", "**", "?", "[", "]", "[a-z]", "[^a]", "[!", "\\", "!", ".", "..", " ", "#", "\r"]
PATHS = st.lists(st.sampled_from(["a", "b", ".", "..", "x.md", "a b", "*", "[", "\\"]), min_size=1, max_size=4)


@given(
    data=st.lists(st.lists(st.sampled_from(PATTERN_TOKENS), max_size=6).map("".join), max_size=6).map(
        lambda lines: "\n".join(lines).encode()
    )
    | st.binary(max_size=200),
    paths=st.lists(PATHS.map("/".join), max_size=5),
)
@example(data=b"[", paths=["a"])
def test_dockerignore(data: bytes, paths: list[str]) -> None:
    try:
        rules = parse_ignore(data)
    except ContextError as err:
        assert str(err).startswith(".dockerignore:"), err
        return
    for path in paths:
        try:
            decision = rules.decide(path, is_dir=path.endswith("a"))
        except ValueError as err:
            assert "outside the build context" in str(err), err
            continue
        assert isinstance(decision.included, bool)


@given(st.lists(st.text(max_size=10), max_size=4))
def test_copy_patterns(patterns: list[str]) -> None:
    try:
        rules = parse_patterns(patterns, "COPY --exclude")
    except ContextError:
        return
    rules.decide("a/b.md")
