"""The raw stage (``parse_dockerfile``) reads lines, directives and heredocs as BuildKit's parser does.

Each case is named after the Dockerfile-reference rule it checks ("Parser directives", "Here-Documents", line
continuation, comments) or after the BuildKit test it re-expresses (frontend/dockerfile/parser/parser_test.go,
parser_heredoc_test.go). The reference for heredocs is the heredoc-aware parser.go of BuildKit commit
3e6e08dcd620f69d73d5181ecb0687e7b5167649; newer BuildKit also accepts blanks between ``<<`` and the delimiter
(``RUN << EOF``), which is not tested here.
"""

from __future__ import annotations

import pytest

from builder.errors import DockerfileError
from builder.frontend.dockerfile import MAX_LINE_BYTES, Directives, Heredoc, parse_dockerfile

P = pytest.param


def summary(text: str | bytes) -> list[tuple[str, str, int, int]]:
    """Keyword, arguments and 1-based first/last line of each instruction."""
    return [(i.keyword, i.rest, i.start_line, i.end_line) for i in parse_dockerfile(text).instructions]


def failure(text: str | bytes, path: str = "Dockerfile") -> DockerfileError:
    with pytest.raises(DockerfileError) as caught:
        parse_dockerfile(text, path)
    return caught.value


# --- line structure: continuation, comments, whitespace, line endings ----------------------------------------------

LINES = [
    P("RUN a\\\nb\n", [("RUN", "ab", 1, 2)], id="continuation-joins-lines-without-a-separator"),
    P("RUN a \\\n    b\n", [("RUN", "a     b", 1, 2)], id="continuation-keeps-the-next-lines-indentation"),
    P("RUN a \\ \t\n b\n", [("RUN", "a  b", 1, 2)], id="continuation-allows-blanks-after-the-escape"),
    P("RUN a \\\n\\\n b\n", [("RUN", "a  b", 1, 3)], id="continuation-escape-alone-on-a-line"),
    P("RUN \\\n a\n", [("RUN", "a", 1, 2)], id="continuation-right-after-the-keyword"),
    P(
        "RUN a \\\n  b \\\n  c\n",
        [("RUN", "a   b   c", 1, 3)],
        id="continuation-over-several-lines",
    ),
    P("# escape=`\nRUN a `\n b\n", [("RUN", "a  b", 2, 3)], id="continuation-with-backtick-escape"),
    P(
        "# escape=`\nRUN dir c:\\\nRUN b\n",
        [("RUN", "dir c:\\", 2, 2), ("RUN", "b", 3, 3)],
        id="escape-backtick-makes-trailing-backslash-literal",
    ),
    P("RUN a \\\n# c\n  # d\n b\n", [("RUN", "a  b", 1, 4)], id="comment-lines-inside-continuation-are-skipped"),
    P("RUN a # not a comment\n", [("RUN", "a # not a comment", 1, 1)], id="hash-after-arguments-is-not-a-comment"),
    P("RUN a \\\n  b # c \\\n  d\n", [("RUN", "a   b # c   d", 1, 3)], id="hash-inside-continued-line-is-text"),
    P("RUN a \\\n\nRUN b\n", [("RUN", "a RUN b", 1, 3)], id="blank-line-inside-continuation-does-not-end-it"),
    P("RUN a \\\n   \t\n b\n", [("RUN", "a  b", 1, 3)], id="whitespace-only-line-inside-continuation-is-skipped"),
    P(
        "RUN something \\\n\n    following \\\n\n    more\n",
        [("RUN", "something     following     more", 1, 5)],
        id="empty-continuation-lines-buildkit-warning-case",
    ),
    P("FROM a\nRUN b \\", [("FROM", "a", 1, 1), ("RUN", "b", 2, 2)], id="continuation-at-end-of-file"),
    P("RUN b \\\n", [("RUN", "b", 1, 1)], id="continuation-at-end-of-file-after-newline"),
    P("RUN a \\\n# c\n", [("RUN", "a", 1, 2)], id="continuation-into-a-final-comment"),
    P("RUN a \\\n\n", [("RUN", "a", 1, 2)], id="continuation-into-a-final-blank-line"),
    P(
        "FROM a\r\nRUN b \\\r\n c\r\n",
        [("FROM", "a", 1, 1), ("RUN", "b  c", 2, 3)],
        id="crlf-line-endings",
    ),
    P("RUN a\\\r\n b\r\n", [("RUN", "a b", 1, 2)], id="crlf-continuation-escape-before-cr"),
    P("RUN a\rRUN b\n", [("RUN", "a\rRUN b", 1, 1)], id="lone-cr-does-not-end-a-line"),
    P("\ufeffFROM a\n", [("FROM", "a", 1, 1)], id="utf8-bom-is-removed"),
    P("RUN a\n\ufeffRUN b\n", [("RUN", "a", 1, 1), ("\ufeffRUN", "b", 2, 2)], id="utf8-bom-only-removed-on-line-one"),
    P("   FROM a\n\tRUN b\n", [("FROM", "a", 1, 1), ("RUN", "b", 2, 2)], id="leading-whitespace-before-keyword"),
    P("from a\nRun b\n", [("FROM", "a", 1, 1), ("RUN", "b", 2, 2)], id="keywords-are-case-insensitive"),
    P("FROM\ta\n", [("FROM", "a", 1, 1)], id="tab-separates-keyword-and-arguments"),
    P("RUN \t a  \t\n", [("RUN", "a", 1, 1)], id="arguments-are-trimmed"),
    P("RUN\n", [("RUN", "", 1, 1)], id="instruction-without-arguments"),
    P(
        "\n# comment\n\nFROM a\n\n  # indented comment\nRUN b\n",
        [("FROM", "a", 4, 4), ("RUN", "b", 7, 7)],
        id="blank-lines-and-comments-are-skipped",
    ),
    P(
        "FROM a\n\n\nRUN b \\\n c \\\n d\n\n# x\nRUN <<EOF\n1\n2\nEOF\nCMD z\n",
        [("FROM", "a", 1, 1), ("RUN", "b  c  d", 4, 6), ("RUN", "<<EOF", 9, 12), ("CMD", "z", 13, 13)],
        id="line-numbers-after-multi-line-constructs",
    ),
    P("RUN a\u2028b\n", [("RUN", "a\u2028b", 1, 1)], id="unicode-line-separator-is-not-a-newline"),
]


@pytest.mark.parametrize(("text", "expected"), LINES)
def test_lines(text: str, expected: list[tuple[str, str, int, int]]) -> None:
    assert summary(text) == expected


# BuildKit's continuation regex is ``([^\\])\\[ \t]*$|^\\[ \t]*$``: an escape token preceded by another escape token
# does not continue the line (parser.go, setEscapeToken). "RUN echo C:\\" therefore ends where it is written.
DOUBLE_ESCAPE = [
    P(
        "RUN echo a\\\\\nRUN b\n",
        [("RUN", "echo a\\\\", 1, 1), ("RUN", "b", 2, 2)],
        id="double-backslash-at-end-is-not-a-continuation",
    ),
    P(
        "# escape=`\nRUN echo a``\nRUN b\n",
        [("RUN", "echo a``", 2, 2), ("RUN", "b", 3, 3)],
        id="double-backtick-at-end-is-not-a-continuation",
    ),
]


@pytest.mark.parametrize(("text", "expected"), DOUBLE_ESCAPE)
def test_escaped_escape_does_not_continue(text: str, expected: list[tuple[str, str, int, int]]) -> None:
    assert summary(text) == expected


EMPTY_CONTINUATION = [
    P("RUN a \\\n   \t\n b\n", True, id="empty-continuation-whitespace-only-line-is-flagged"),
    P("RUN a \\\n\n b\n", True, id="empty-continuation-blank-line-is-flagged"),
    P("RUN a \\\n# c\n b\n", False, id="empty-continuation-comment-line-is-not-flagged"),
    P("RUN a \\\n b\n", False, id="empty-continuation-plain-continuation-is-not-flagged"),
    P("RUN a\n\nRUN b\n", False, id="empty-continuation-blank-line-between-instructions-is-not-flagged"),
]


@pytest.mark.parametrize(("text", "flagged"), EMPTY_CONTINUATION)
def test_empty_continuation(text: str, flagged: bool) -> None:
    assert bool(parse_dockerfile(text).instructions[0].empty_continuation) is flagged


# --- flags and the original text ---------------------------------------------------------------------------------

FLAGS = [
    P("COPY --from=a --chown=1:2 x y\n", ("--from=a", "--chown=1:2"), "x y", id="flags-are-split-from-arguments"),
    P('COPY --from="a b" x y\n', ("--from=a b",), "x y", id="flag-value-quotes-are-removed"),
    P("RUN --mount=type=bind,source=a\\ b  x\n", ("--mount=type=bind,source=a b",), "x", id="flag-backslash-escapes"),
    P("RUN --x='' y\n", ("--x=",), "y", id="flag-with-empty-quoted-value"),
    P("RUN -- --mount=x y\n", (), "--mount=x y", id="double-dash-ends-flags"),
    P('RUN --foo "x"\n', ("--foo",), '"x"', id="space-separated-word-is-not-a-flag-value"),
    P("RUN \\\n  --network=none \\\n  echo\n", ("--network=none",), "echo", id="flags-on-continuation-lines"),
    P("RUN echo --not-a-flag\n", (), "echo --not-a-flag", id="flags-only-before-arguments"),
]


@pytest.mark.parametrize(("text", "flags", "rest"), FLAGS)
def test_flags(text: str, flags: tuple[str, ...], rest: str) -> None:
    (instruction,) = parse_dockerfile(text).instructions
    assert (instruction.flags, instruction.rest) == (flags, rest)


ORIGINALS = [
    P("RUN a \\\n    b\n", "RUN a     b", id="original-is-the-joined-line"),
    P("  run a\n", "run a", id="original-keeps-keyword-case"),
    P("RUN <<EOF\nbody\nEOF\n", "RUN <<EOF", id="original-excludes-heredoc-body"),
]


@pytest.mark.parametrize(("text", "original"), ORIGINALS)
def test_original(text: str, original: str) -> None:
    (instruction,) = parse_dockerfile(text).instructions
    assert instruction.original == original


# --- parser directives ----------------------------------------------------------------------------------------------

DIRECTIVES = [
    P("# escape=`\nRUN a\n", Directives(escape="`"), 2, id="directive-escape-backtick"),
    P("# escape=\\\nRUN a\n", Directives(escape="\\"), 2, id="directive-escape-backslash"),
    P(
        "# syntax=docker/dockerfile:1\nRUN a\n",
        Directives(syntax="docker/dockerfile:1", syntax_line=1),
        2,
        id="directive-syntax",
    ),
    P("# check=skip=all\nRUN a\n", Directives(check="skip=all"), 2, id="directive-check"),
    P(
        "# syntax=docker/dockerfile:1\n# escape=`\n# check=error=true\nRUN a\n",
        Directives(escape="`", syntax="docker/dockerfile:1", check="error=true", syntax_line=1),
        4,
        id="directive-all-three",
    ),
    P("# ESCAPE = `\nRUN a\n", Directives(escape="`"), 2, id="directive-names-are-case-insensitive"),
    P("#escape=`\nRUN a\n", Directives(escape="`"), 2, id="directive-without-space-after-hash"),
    P("  # escape=`  \nRUN a\n", Directives(escape="`"), 2, id="directive-surrounding-whitespace-ignored"),
    P("# Syntax = foo bar  \nRUN a\n", Directives(syntax="foo bar", syntax_line=1), 2, id="directive-value-is-trimmed"),
    P("\ufeff# escape=`\nRUN a\n", Directives(escape="`"), 2, id="directive-after-utf8-bom"),
    P("FROM x\n# escape=`\nRUN a\n", Directives(), 1, id="directive-after-instruction-is-a-comment"),
    P("\n# escape=`\nRUN a\n", Directives(), 3, id="directive-after-blank-line-is-a-comment"),
    P("# hello\n# escape=`\nRUN a\n", Directives(), 3, id="directive-after-comment-is-a-comment"),
    P("#\n# escape=`\nRUN a\n", Directives(), 3, id="directive-after-bare-hash-is-a-comment"),
    P("# foo=bar\n# escape=`\nRUN a\n", Directives(), 3, id="directive-after-unknown-directive-is-a-comment"),
    P("# escape=\nRUN a\n", Directives(), 2, id="directive-needs-a-value"),
    P("# syntax=x\n\n# escape=`\nRUN a\n", Directives(syntax="x", syntax_line=1), 4, id="blank-line-ends-directives"),
]


@pytest.mark.parametrize(("text", "directives", "first_line"), DIRECTIVES)
def test_directives(text: str, directives: Directives, first_line: int) -> None:
    ast = parse_dockerfile(text)
    assert ast.directives == directives
    assert ast.instructions[0].start_line == first_line


DIRECTIVE_EFFECTS = [
    P("# escape=`\nRUN a `\n b\n", [("RUN", "a  b", 2, 3)], id="escape-directive-sets-continuation-token"),
    P(
        "# hello\n# escape=`\nRUN a `\nRUN b\n",
        [("RUN", "a `", 3, 3), ("RUN", "b", 4, 4)],
        id="ignored-escape-directive-keeps-backslash",
    ),
    P("# escape=\nRUN a \\\n b\n", [("RUN", "a  b", 2, 3)], id="empty-escape-directive-keeps-backslash"),
]


@pytest.mark.parametrize(("text", "expected"), DIRECTIVE_EFFECTS)
def test_directive_effects(text: str, expected: list[tuple[str, str, int, int]]) -> None:
    assert summary(text) == expected


# --- heredocs -------------------------------------------------------------------------------------------------------


def doc(name: str, content: str, expand: bool = True, chomp: bool = False, fd: int = 0) -> Heredoc:
    return Heredoc(name=name, content=content, expand=expand, chomp=chomp, fd=fd)


HEREDOCS = [
    P("RUN <<EOF\nhello\nEOF\n", (doc("EOF", "hello\n"),), (1, 3), id="heredoc-body-up-to-terminator"),
    P("RUN <<EMPTY\nEMPTY\n", (doc("EMPTY", ""),), (1, 2), id="heredoc-empty-body"),
    P("RUN <<EOF\n\nEOF\n", (doc("EOF", "\n"),), (1, 3), id="heredoc-blank-line-body"),
    P("RUN 3<<EOF cat\nx\nEOF\n", (doc("EOF", "x\n", fd=3),), (1, 3), id="heredoc-file-descriptor-prefix"),
    P("RUN <<EOF\nhello\nEOF", (doc("EOF", "hello\n"),), (1, 3), id="heredoc-terminator-at-end-of-file"),
    P(
        "RUN <<-EOF\n\thello\n\tEOF\n",
        (doc("EOF", "\thello\n", chomp=True),),
        (1, 3),
        id="heredoc-chomp-terminator-may-be-tab-indented",
    ),
    P(
        "RUN <<-EOF\n\t\tindented\n\t  mixed\n\t\tEOF\n",
        (doc("EOF", "\t\tindented\n\t  mixed\n", chomp=True),),
        (1, 4),
        id="heredoc-chomp-content-is-kept-as-written",
    ),
    P(
        "RUN <<-EOF\n  EOF\nEOF\n",
        (doc("EOF", "  EOF\n", chomp=True),),
        (1, 3),
        id="heredoc-chomp-strips-only-tabs-from-terminator",
    ),
    P(
        "RUN <<EOF\n\tEOF\nEOF\n",
        (doc("EOF", "\tEOF\n"),),
        (1, 3),
        id="heredoc-without-chomp-indented-terminator-is-body",
    ),
    P("RUN <<EOF\nEOF \nEOF\n", (doc("EOF", "EOF \n"),), (1, 3), id="heredoc-terminator-must-match-exactly"),
    P("RUN <<EOF\neof\nEOF\n", (doc("EOF", "eof\n"),), (1, 3), id="heredoc-terminator-is-case-sensitive"),
    P("RUN <<'EOF'\n$x\nEOF\n", (doc("EOF", "$x\n", expand=False),), (1, 3), id="heredoc-single-quoted-no-expand"),
    P('RUN <<"EOF"\n$x\nEOF\n', (doc("EOF", "$x\n", expand=False),), (1, 3), id="heredoc-double-quoted-no-expand"),
    P(
        'COPY <<E"O"F /x\n$x\nEOF\n',
        (doc("EOF", "$x\n", expand=False),),
        (1, 3),
        id="heredoc-partially-quoted-no-expand",
    ),
    P("RUN <<eo'f'\nx\neof\n", (doc("eof", "x\n", expand=False),), (1, 3), id="heredoc-quoted-suffix-no-expand"),
    P("RUN <<eo\\'f\nx\neo'f\n", (doc("eo'f", "x\n"),), (1, 3), id="heredoc-escaped-quote-still-expands"),
    P(
        "RUN <<'e'o\\'f\nx\neo'f\n",
        (doc("eo'f", "x\n", expand=False),),
        (1, 3),
        id="heredoc-quoted-and-escaped-no-expand",
    ),
    P(
        "RUN <<'one two'\nx\none two\n",
        (doc("one two", "x\n", expand=False),),
        (1, 3),
        id="heredoc-quoted-name-with-space",
    ),
    P("RUN <<$EOF\n$EOF\n", (doc("$EOF", ""),), (1, 2), id="heredoc-dollar-name-is-literal"),
    P(
        "RUN <<-'EOF'\n\tx $y\n\tEOF\n",
        (doc("EOF", "\tx $y\n", expand=False, chomp=True),),
        (1, 3),
        id="heredoc-chomp-and-quoted",
    ),
    P(
        "RUN <<A <<B\na\nA\nb\nB\n",
        (doc("A", "a\n"), doc("B", "b\n")),
        (1, 5),
        id="heredoc-several-bodies-in-order",
    ),
    P(
        "COPY <<X <<Y /dest\nY\nX\nX\nY\n",
        (doc("X", "Y\n"), doc("Y", "X\n")),
        (1, 5),
        id="heredoc-terminator-of-the-later-body-is-text-in-the-earlier",
    ),
    P(
        "RUN echo <<EOF && cat <<EOF2\n1\nEOF\n2\nEOF2\n",
        (doc("EOF", "1\n"), doc("EOF2", "2\n")),
        (1, 5),
        id="heredoc-several-in-a-shell-command",
    ),
    P(
        "RUN <<EOF <<'EOF2' cat\none\nEOF\ntwo $x\nEOF2\n",
        (doc("EOF", "one\n"), doc("EOF2", "two $x\n", expand=False)),
        (1, 5),
        id="heredoc-quoting-is-per-heredoc",
    ),
    P("COPY <<EOF /x\nhi\nEOF\n", (doc("EOF", "hi\n"),), (1, 3), id="heredoc-in-copy"),
    P("ADD <<EOF /x\nhi\nEOF\n", (doc("EOF", "hi\n"),), (1, 3), id="heredoc-in-add"),
    P("ONBUILD RUN <<EOF\nbody\nEOF\n", (doc("EOF", "body\n"),), (1, 3), id="heredoc-in-onbuild-run"),
    P("onbuild copy <<EOF /x\nhi\nEOF\n", (doc("EOF", "hi\n"),), (1, 3), id="heredoc-in-lowercase-onbuild-copy"),
    P(
        "RUN --mount=type=cache,target=/foo <<MOUNT\necho hello\nMOUNT\n",
        (doc("MOUNT", "echo hello\n"),),
        (1, 3),
        id="heredoc-after-flags",
    ),
    P("RUN <<COMPLEX python3\nprint(1)\nCOMPLEX\n", (doc("COMPLEX", "print(1)\n"),), (1, 3), id="heredoc-then-command"),
    P("RUN cat <<EOF >/out\nhello\nEOF\n", (doc("EOF", "hello\n"),), (1, 3), id="heredoc-with-redirection-after"),
    P(
        "RUN <<EOF\nFROM x\n# internal comment\nEOF\n",
        (doc("EOF", "FROM x\n# internal comment\n"),),
        (1, 4),
        id="heredoc-body-lines-look-like-instructions-and-comments",
    ),
    P("RUN <<EOF\nhi \\\nEOF\n", (doc("EOF", "hi \\\n"),), (1, 3), id="heredoc-body-line-ending-with-backslash"),
    P("RUN <<EOF\r\nx\r\nEOF\r\n", (doc("EOF", "x\r\n"),), (1, 3), id="heredoc-crlf-body-keeps-line-endings"),
    P("RUN a \\\n  <<EOF\nbody\nEOF\n", (doc("EOF", "body\n"),), (1, 4), id="heredoc-opened-on-a-continued-line"),
    P("run <<eof\nbody\neof\n", (doc("eof", "body\n"),), (1, 3), id="heredoc-lowercase-name"),
    P(
        "COPY <<EOF /quotes\n\"foo\"\n'bar'\nEOF\n",
        (doc("EOF", "\"foo\"\n'bar'\n"),),
        (1, 4),
        id="heredoc-quotes-in-body",
    ),
]


@pytest.mark.parametrize(("text", "heredocs", "lines"), HEREDOCS)
def test_heredocs(text: str, heredocs: tuple[Heredoc, ...], lines: tuple[int, int]) -> None:
    (instruction,) = parse_dockerfile(text).instructions
    assert instruction.heredocs == heredocs
    assert (instruction.start_line, instruction.end_line) == lines


NOT_HEREDOCS = [
    P('RUN ["<<EOF"]\nRUN y\n', [("RUN", '["<<EOF"]', 1, 1), ("RUN", "y", 2, 2)], id="heredoc-not-in-exec-form"),
    P(
        'COPY ["<<EOF", "/x"]\nRUN y\n',
        [("COPY", '["<<EOF", "/x"]', 1, 1), ("RUN", "y", 2, 2)],
        id="heredoc-not-in-json-copy",
    ),
    P(
        'ONBUILD RUN ["<<EOF"]\nRUN x\n',
        [("ONBUILD", 'RUN ["<<EOF"]', 1, 1), ("RUN", "x", 2, 2)],
        id="heredoc-not-in-onbuild-exec-form",
    ),
    P("ENV X=<<EOF\nRUN x\n", [("ENV", "X=<<EOF", 1, 1), ("RUN", "x", 2, 2)], id="heredoc-not-in-env"),
    P(
        "USER <<INVALID\nINVALID\n",
        [("USER", "<<INVALID", 1, 1), ("INVALID", "", 2, 2)],
        id="heredoc-not-in-user",
    ),
    P(
        "ONBUILD ENV A=<<EOF\nRUN x\n",
        [("ONBUILD", "ENV A=<<EOF", 1, 1), ("RUN", "x", 2, 2)],
        id="heredoc-not-in-onbuild-env",
    ),
    P('RUN "<<NOHEREDOC"\nRUN x\n', [("RUN", '"<<NOHEREDOC"', 1, 1), ("RUN", "x", 2, 2)], id="heredoc-quoted-word"),
    P("RUN cat <<\nRUN x\n", [("RUN", "cat <<", 1, 1), ("RUN", "x", 2, 2)], id="heredoc-needs-a-name"),
    P("RUN cat <<<EOF\nRUN x\n", [("RUN", "cat <<<EOF", 1, 1), ("RUN", "x", 2, 2)], id="here-string-is-not-heredoc"),
    P("RUN a<<EOF\nRUN x\n", [("RUN", "a<<EOF", 1, 1), ("RUN", "x", 2, 2)], id="heredoc-must-start-a-word"),
]


@pytest.mark.parametrize(("text", "expected"), NOT_HEREDOCS)
def test_not_heredocs(text: str, expected: list[tuple[str, str, int, int]]) -> None:
    assert summary(text) == expected
    assert all(not i.heredocs for i in parse_dockerfile(text).instructions)


HEREDOC_NEIGHBOURS = [
    P("RUN <<EOF\nhello\nEOF\nRUN b\n", [("RUN", "<<EOF", 1, 3), ("RUN", "b", 4, 4)], id="instruction-after-heredoc"),
    P(
        "RUN <<EOF\nx\nEOF\n\n\n# c\nRUN y\n",
        [("RUN", "<<EOF", 1, 3), ("RUN", "y", 7, 7)],
        id="instruction-after-heredoc-and-comments",
    ),
    P(
        "RUN <<EOF\nhi \\\nEOF\nRUN b\n",
        [("RUN", "<<EOF", 1, 3), ("RUN", "b", 4, 4)],
        id="backslash-in-body-does-not-swallow-next-instruction",
    ),
    P(
        "FROM x\nRUN <<EOF \\\n  && echo\nbody\nEOF\nCMD z\n",
        [("FROM", "x", 1, 1), ("RUN", "<<EOF   && echo", 2, 5), ("CMD", "z", 6, 6)],
        id="heredoc-body-starts-after-continued-line",
    ),
]


@pytest.mark.parametrize(("text", "expected"), HEREDOC_NEIGHBOURS)
def test_heredoc_neighbours(text: str, expected: list[tuple[str, str, int, int]]) -> None:
    assert summary(text) == expected


TEXTS = [
    P(doc("EOF", "\tbaz\n\t\tquux\n  sp\n", chomp=True), "baz\nquux\n  sp\n", id="heredoc-chomp-strips-leading-tabs"),
    P(doc("EOF", "a\tb\n", chomp=True), "a\tb\n", id="heredoc-chomp-keeps-inner-tabs"),
    P(doc("EOF", "\tbaz\n", chomp=False), "\tbaz\n", id="heredoc-without-chomp-keeps-tabs"),
]


@pytest.mark.parametrize(("heredoc", "text"), TEXTS)
def test_heredoc_text(heredoc: Heredoc, text: str) -> None:
    assert heredoc.text == text


def test_heredoc_chomp_text_from_parsed_file() -> None:
    (instruction,) = parse_dockerfile("COPY <<-EOF /x\n\tline one\n\t\tline two\n\tEOF\n").instructions
    assert instruction.heredocs[0].text == "line one\nline two\n"


# --- errors ---------------------------------------------------------------------------------------------------------

ERRORS = [
    P("", "Dockerfile:1: file with no instructions", id="empty-file-has-no-instructions"),
    P("# only a comment\n\n", "Dockerfile:2: file with no instructions", id="comments-only-file-has-no-instructions"),
    P("   \n\t\n", "Dockerfile:2: file with no instructions", id="whitespace-only-file-has-no-instructions"),
    P("# syntax=x\n", "Dockerfile:1: file with no instructions", id="directives-only-file-has-no-instructions"),
    P(
        "# escape=`\n# escape=`\nRUN a\n",
        "Dockerfile:2: only one escape parser directive can be used",
        id="directive-escape-twice",
    ),
    P(
        "# syntax=a\n# syntax=b\nRUN a\n",
        "Dockerfile:2: only one syntax parser directive can be used",
        id="directive-syntax-twice",
    ),
    P(
        "# check=a\n# CHECK=b\nRUN a\n",
        "Dockerfile:2: only one check parser directive can be used",
        id="directive-duplicate-found-case-insensitively",
    ),
    P(
        "# escape=x\nRUN a\n",
        "Dockerfile:1: invalid escape token 'x' does not match ` or \\",
        id="directive-invalid-escape-token",
    ),
    P(
        "# syntax=a\n# escape=``\nRUN a\n",
        "Dockerfile:2: invalid escape token '``' does not match ` or \\",
        id="directive-escape-token-is-one-character",
    ),
    P("FROM a\nRUN <<EOF\nbody\n", "Dockerfile:2: unterminated heredoc", id="heredoc-unterminated-at-instruction-line"),
    P("RUN <<A <<B\na\nA\n", "Dockerfile:1: unterminated heredoc", id="heredoc-second-body-unterminated"),
    P("RUN <<-EOF\n  EOF\n", "Dockerfile:1: unterminated heredoc", id="heredoc-chomp-does-not-strip-spaces"),
    P("FROM a\nRUN a\0b\n", "Dockerfile:2: a NUL byte is not allowed in a Dockerfile", id="nul-byte-is-an-error"),
    P(b"FROM a\nRUN \xff\n", "Dockerfile:2: the Dockerfile is not valid UTF-8", id="invalid-utf8-is-an-error"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_errors(text: str | bytes, message: str) -> None:
    assert str(failure(text)) == message


def test_error_carries_the_given_path() -> None:
    err = failure("FROM a\nRUN <<EOF\n", path="sub/Dockerfile.dev")
    assert (err.path, err.line, str(err)) == ("sub/Dockerfile.dev", 2, "sub/Dockerfile.dev:2: unterminated heredoc")


# --- line length (BuildKit reads with bufio.Scanner, whose token limit is 64 KiB including the newline) -------------

# Each file starts with an instruction: BuildKit checks "file with no instructions" before the scanner's error.
LONG_LINES = [
    P("RUN " + "a" * (MAX_LINE_BYTES - 4) + "\n", True, id="line-of-65535-bytes-is-accepted"),
    P("RUN " + "a" * (MAX_LINE_BYTES - 5) + "\r\n", True, id="line-of-65535-bytes-with-crlf-is-accepted"),
    P("RUN " + "a" * (MAX_LINE_BYTES - 3) + "\n", False, id="line-of-65536-bytes-is-refused"),
    P("RUN a \\\n" + "a" * (MAX_LINE_BYTES + 1) + "\n", False, id="long-continuation-line-is-refused"),
    P("RUN " + "a" * (MAX_LINE_BYTES - 4), True, id="last-line-of-65535-bytes-without-newline-is-accepted"),
    # The scanner's buffer fills with no newline in it before the reader reports the end: ErrTooLong.
    P("RUN " + "a" * (MAX_LINE_BYTES - 3), False, id="last-line-of-65536-bytes-without-newline-is-refused"),
]


@pytest.mark.parametrize(("line", "accepted"), LONG_LINES)
def test_line_length_limit(line: str, accepted: bool) -> None:
    text = "FROM a\n" + line
    if accepted:
        assert len(parse_dockerfile(text).instructions) == 2
    else:
        assert failure(text).message == "dockerfile line greater than max allowed size of 65535"


def test_long_heredoc_body_line_is_refused() -> None:
    # BuildKit's heredoc loop stops at the scanner error and reports "unterminated heredoc"; either way it is refused.
    failure("FROM a\nRUN <<EOF\n" + "a" * (MAX_LINE_BYTES + 1) + "\nEOF\n")


# --- what BuildKit's parser does not look at -----------------------------------------------------------------------

# heredocsFromLine lexes the whole line only to find "<<" words and ignores the lexer's errors
# (``words, _ := shlex.ProcessWords(line, ...)``): shell syntax the Dockerfile lexer cannot read is the shell's
# business, not a Dockerfile error.
SHELL_SYNTAX = [
    P("RUN echo ${#HOME}\n", "echo ${#HOME}", id="run-posix-string-length-is-not-a-dockerfile-error"),
    P("RUN echo ${NAME,,}\n", "echo ${NAME,,}", id="run-bash-case-modification-is-not-a-dockerfile-error"),
    P("RUN echo it's\n", "echo it's", id="run-unbalanced-quote-is-not-a-dockerfile-error"),
]


@pytest.mark.parametrize(("text", "rest"), SHELL_SYNTAX)
def test_shell_syntax_is_left_to_the_shell(text: str, rest: str) -> None:
    (instruction,) = parse_dockerfile(text).instructions
    assert (instruction.rest, instruction.heredocs) == (rest, ())


def test_onbuild_trigger_separated_by_tab_still_reads_heredoc() -> None:
    # BuildKit re-parses the ONBUILD trigger with splitCommand, which splits on any whitespace.
    (instruction,) = parse_dockerfile("ONBUILD RUN\t<<EOF\nbody\nEOF\n").instructions
    assert instruction.heredocs == (doc("EOF", "body\n"),)
    assert instruction.end_line == 3
