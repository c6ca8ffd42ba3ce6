"""Raw instructions: the line structure of a Dockerfile, its parser directives, and heredoc bodies.

dockerfile-parse groups physical lines into instructions. It disagrees with BuildKit in a few places, so it is
given a line-for-line copy of the text in which those places are neutralised, and its line numbers stay true:

- parser directives (``# syntax=``, ``# escape=``, ``# check=``) are read here, by BuildKit's rules (only at the
  top, the first other line ends them, each at most once); dockerfile-parse knows only ``escape`` and ``syntax``,
  so directive lines become ``#`` and the escape directive, if any, is restated on the first line;
- a whitespace-only line inside a continuation ends the instruction for dockerfile-parse but is skipped by
  BuildKit (with a warning): such lines become ``#``, which both skip;
- an instruction continued at end of file is dropped by dockerfile-parse: a blank line is added to close it;
- a line ending in an escaped escape token (``\\``), or in the escape token and whitespace other than spaces
  and tabs, continues for dockerfile-parse but not for BuildKit: such lines are given a trailing ``#``;
- a UTF-8 byte-order mark is removed.

dockerfile-parse's answer is used for that grouping only; the text of each instruction is joined here from the
original lines, as BuildKit joins it.

Heredocs (``<<EOF``, ``<<-EOF``, ``<<"EOF"``, several per line) are this module's own: after an instruction
that may carry them (RUN, COPY, ADD, and ONBUILD of those, in shell form), the following lines up to each
terminator are its bodies, and whatever dockerfile-parse made of those lines is dropped.

Line numbers here are 1-based: dockerfile-parse's 0-based numbers are converted once, in ``parse_dockerfile``.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass

from dockerfile_parse import DockerfileParser

from builder.errors import DockerfileError
from builder.frontend.shell import Lexer

__all__ = [
    "MAX_LINE_BYTES",
    "Directives",
    "DockerfileAST",
    "Heredoc",
    "RawInstruction",
    "parse_dockerfile",
    "parse_heredoc_word",
    "split_flags",
]

#: BuildKit reads lines with Go's bufio.Scanner, whose token limit this is.
MAX_LINE_BYTES = 65535
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_KNOWN_DIRECTIVES = ("syntax", "escape", "check")
_HEREDOC_WORD = re.compile(r"^(\d*)<<(-?)([^<]*)$")
_HEREDOC_KEYWORDS = ("RUN", "COPY", "ADD")
_LINE_LEXER = Lexer(escape="\\", raw_quotes=True, raw_escapes=True, skip_unset=True)
_HEREDOC_LEXER = Lexer(escape="\\", skip_unset=True)
_HEREDOC_RAW_LEXER = Lexer(escape="\\", raw_quotes=True, skip_unset=True)


@dataclass(frozen=True, slots=True)
class Directives:
    escape: str = "\\"
    syntax: str = ""
    check: str = ""
    syntax_line: int = 0


@dataclass(frozen=True, slots=True)
class Heredoc:
    """A heredoc body. ``content`` is as written (each line with its newline); ``chomp`` is ``<<-``."""

    name: str
    content: str
    expand: bool
    chomp: bool = False
    fd: int = 0

    @property
    def text(self) -> str:
        """The body as the instruction sees it: leading tabs removed from each line for ``<<-``."""
        if not self.chomp:
            return self.content
        return re.sub(r"(?m)^\t+", "", self.content)


@dataclass(frozen=True, slots=True)
class RawInstruction:
    """One instruction: keyword (upper case), flags (``--name=value`` words), and the rest of the line."""

    keyword: str
    flags: tuple[str, ...]
    rest: str
    original: str
    start_line: int
    end_line: int
    heredocs: tuple[Heredoc, ...] = ()
    empty_continuation: int = 0  # the line BuildKit reports a blank continuation line at (0: none)

    def json_args(self) -> list[str] | None:
        """The arguments as a JSON array of strings (exec form), None if they are not one.

        Raises ``DockerfileError`` for a JSON array that holds something other than strings, as BuildKit does.
        """
        return parse_json_array(self.rest)


@dataclass(frozen=True, slots=True)
class DockerfileAST:
    path: str
    directives: Directives
    instructions: tuple[RawInstruction, ...]


def parse_json_array(text: str) -> list[str] | None:
    text = text.lstrip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text, parse_constant=_not_json, parse_float=_finite_float)
    except (ValueError, RecursionError):
        return None  # Go's decoder refuses NaN, Infinity and out-of-range numbers: then it is not JSON
    if not isinstance(value, list):
        return None
    if not all(isinstance(item, str) for item in value):
        raise DockerfileError("when using JSON array syntax, arrays must be comprised of strings only")
    return value


def _not_json(name: str) -> float:
    raise ValueError(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


def _lines(text: str) -> list[str]:
    """Physical lines, each with its own newline (the last may have none); only ``\\n`` separates lines."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _strip_newline(line: str) -> str:
    return line.rstrip("\r\n")


def _continues(line: str, escape: str) -> bool:
    """BuildKit's line-continuation test: the escape token last (spaces and tabs may follow), not escaped."""
    return _continuation(escape).search(_strip_newline(line)) is not None


def _continuation(escape: str) -> re.Pattern[str]:
    e = re.escape(escape)
    return re.compile(rf"([^{e}]){e}[ \t]*$|^{e}[ \t]*$")


def _is_comment(line: str) -> bool:
    return _strip_newline(line).lstrip().startswith("#")


def _join(lines: list[str], start: int, end: int, escape: str) -> str:
    """The logical line of an instruction on physical lines ``start..end``, joined as BuildKit joins it:
    comment and blank continuation lines skipped, each continuation token removed."""
    pattern = _continuation(escape)
    text = ""
    for index in range(start, end + 1):
        line = _strip_newline(lines[index])
        if index == start:
            line = line.lstrip()
        elif _is_comment(line) or not line.strip():
            continue
        text += pattern.sub(r"\1", line)
    return text


def _read_directives(lines: list[str], path: str) -> tuple[Directives, int]:
    """BuildKit's directive rules; returns the directives and how many lines at the top they take."""
    found: dict[str, tuple[str, int]] = {}
    count = 0
    for index, line in enumerate(lines):
        match = _DIRECTIVE.match(_strip_newline(line).lstrip())
        if match is None:
            break
        name = match.group(1).lower()
        if name not in _KNOWN_DIRECTIVES:
            break
        if name in found:
            raise DockerfileError(f"only one {name} parser directive can be used", path=path, line=index + 1)
        found[name] = (match.group(2), index + 1)
        count = index + 1
    escape = found.get("escape", ("\\", 0))
    if escape[0] not in ("\\", "`"):
        raise DockerfileError(f"invalid escape token '{escape[0]}' does not match ` or \\", path=path, line=escape[1])
    syntax = found.get("syntax", ("", 0))
    return Directives(escape[0], syntax[0], found.get("check", ("", 0))[0], syntax[1]), count


def _shadow(lines: list[str], directives: Directives, directive_lines: int) -> bytes:
    """The text dockerfile-parse sees: same number of lines, with BuildKit's differences neutralised."""
    shadow = []
    for index, line in enumerate(lines):
        if index < directive_lines or not line.strip():
            shadow.append("#\n")
            continue
        body = _strip_newline(line)
        if (
            not _is_comment(line)
            and body.rstrip().endswith(directives.escape)
            and not _continues(line, directives.escape)
        ):
            body += " #"  # dockerfile-parse would continue this line; BuildKit does not
        shadow.append(body + "\n")
    if directives.escape != "\\":
        shadow[0] = f"# escape={directives.escape}\n"
    shadow.append("\n")  # closes an instruction continued at end of file
    return "".join(shadow).encode("utf-8")


def parse_heredoc_word(word: str) -> Heredoc | None:
    """The heredoc a word such as ``<<EOF``, ``<<-'EOF'`` or ``3<<EOF`` opens (body not yet read), or None."""
    match = _HEREDOC_WORD.match(word)
    if match is None or not match.group(3):
        return None
    rest = match.group(3)
    words = _HEREDOC_LEXER.expand(rest, {}).words
    if len(words) != 1:
        return None
    raw_words = _HEREDOC_RAW_LEXER.expand(rest, {}).words
    if len(raw_words) != 1:
        raise DockerfileError(f"internal lexing of heredoc produced inconsistent results: {rest}")
    # If quotes disappear when they are processed, part of the delimiter was quoted: no expansion.
    quotes = words[0].count("'") + words[0].count('"')
    raw_quotes = raw_words[0].count("'") + raw_words[0].count('"')
    return Heredoc(
        name=words[0],
        content="",
        expand=quotes == raw_quotes,
        chomp=match.group(2) == "-",
        fd=int(match.group(1)) if match.group(1) else 0,
    )


def _heredoc_openers(keyword: str, rest: str, line: str) -> list[Heredoc]:
    target = keyword
    if keyword == "ONBUILD":
        parts = rest.split(None, 1)
        target = parts[0].upper() if parts else ""
        _, rest = _split_flags(parts[1] if len(parts) > 1 else "")
    try:
        if target not in _HEREDOC_KEYWORDS or parse_json_array(rest) is not None:
            return []
        words = _LINE_LEXER.expand(line, {}).words
    except DockerfileError:
        return []  # BuildKit ignores what its lexer cannot read here (``${#VAR}``, an odd quote): no heredoc
    openers = []
    for word in words:
        heredoc = parse_heredoc_word(word)
        if heredoc is not None:
            openers.append(heredoc)
    return openers


def split_flags(rest: str) -> tuple[tuple[str, ...], str]:
    """Leading ``--name[=value]`` words (quotes and backslashes processed) and the rest of the line."""
    return _split_flags(rest)


def _split_flags(line: str) -> tuple[tuple[str, ...], str]:
    words: list[str] = []
    pos, end = 0, len(line)
    while True:
        while pos < end and line[pos].isspace():
            pos += 1
        if pos >= end or not line.startswith("--", pos):
            return tuple(words), line[pos:].strip()
        word: list[str] = []
        quote = ""
        start = pos
        blank_ok = False
        while pos < end:
            ch = line[pos]
            if quote:
                if ch == quote:
                    quote = ""
                elif ch == "\\" and pos + 1 < end:
                    pos += 1
                    word.append(line[pos])
                elif ch != "\\":
                    word.append(ch)
            elif ch.isspace():
                break
            elif ch in "'\"":
                quote = ch
                blank_ok = True
            elif ch == "\\":
                if pos + 1 < end:
                    pos += 1
                    word.append(line[pos])
            else:
                word.append(ch)
            pos += 1
        text = "".join(word)
        if text == "--" and not blank_ok:
            return tuple(words), line[pos:].strip()
        if text or blank_ok:
            words.append(text)
        if pos == start:  # pragma: no cover - defensive: always progress
            pos += 1


def parse_dockerfile(data: bytes | str, path: str = "Dockerfile") -> DockerfileAST:
    """Parse a Dockerfile's bytes into raw instructions. Raises ``DockerfileError`` with ``path:line``."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise DockerfileError("the Dockerfile is not valid UTF-8", path=path, line=line) from None
    else:
        text = data
    text = text.removeprefix("\ufeff")
    lines = _lines(text)
    for index, line in enumerate(lines):
        if "\0" in line:
            raise DockerfileError("a NUL byte is not allowed in a Dockerfile", path=path, line=index + 1)
        if len(line.removesuffix("\n").encode("utf-8")) > MAX_LINE_BYTES:
            raise DockerfileError(
                f"dockerfile line greater than max allowed size of {MAX_LINE_BYTES}", path=path, line=index + 1
            )
    directives, directive_lines = _read_directives(lines, path)
    structure = DockerfileParser(fileobj=io.BytesIO(_shadow(lines, directives, directive_lines))).structure
    instructions: list[RawInstruction] = []
    consumed_until = -1  # 0-based index of the last line taken by a heredoc body
    for entry in structure:
        if entry["instruction"] == "COMMENT":
            continue
        start, end = entry["startline"], min(entry["endline"], len(lines) - 1)
        if start <= consumed_until:
            continue  # dockerfile-parse's reading of a heredoc body
        logical = _join(lines, start, end, directives.escape).strip()
        parts = re.split(r"[\t\v\f\r ]+", logical, maxsplit=1)
        keyword_as_written = parts[0]
        value = parts[1] if len(parts) > 1 else ""
        flags, rest = _split_flags(value)
        original = logical
        empty_continuation = end + 1 if any(not lines[i].strip() for i in range(start + 1, end + 1)) else 0
        keyword = keyword_as_written.upper()
        location_line = start + 1
        try:
            openers = _heredoc_openers(keyword, rest, original)
        except DockerfileError as err:
            raise err.located(path, location_line) from None
        heredocs = []
        cursor = end + 1
        for opener in openers:
            body: list[str] = []
            while cursor < len(lines):
                candidate = _strip_newline(lines[cursor])
                if opener.chomp:
                    candidate = candidate.lstrip("\t")
                cursor += 1
                if candidate == opener.name:
                    break
                body.append(lines[cursor - 1])
            else:
                raise DockerfileError("unterminated heredoc", path=path, line=location_line)
            heredocs.append(Heredoc(opener.name, "".join(body), opener.expand, opener.chomp, opener.fd))
        if heredocs:
            end = cursor - 1
            consumed_until = end
        instructions.append(
            RawInstruction(
                keyword=keyword,
                flags=flags,
                rest=rest,
                original=original,
                start_line=start + 1,
                end_line=end + 1,
                heredocs=tuple(heredocs),
                empty_continuation=empty_continuation,
            )
        )
    if not instructions:
        raise DockerfileError("file with no instructions", path=path, line=max(len(lines), 1))
    return DockerfileAST(path, directives, tuple(instructions))
