"""The build context: which ignore file applies, what its patterns say, and which paths a build may see.

Behaviour is Docker's with BuildKit, the default builder since Docker 23: the ignore file is read as
moby/patternmatcher's ``ignorefile.ReadAll`` reads it, patterns are compiled and matched as
``patternmatcher`` does, and the context is walked as BuildKit's file sender (tonistiigi/fsutil ``filter.go``)
walks it. Where those differ from the Docker documentation, the code is followed, because it decides which
files reach the builder:

* A pattern is not matched with Go's ``filepath.Match``. ``filepath.Match`` only checks the pattern's syntax;
  matching uses a regular expression that patternmatcher builds from the pattern. So ``[^a]`` also matches
  ``/``, a ``*`` or ``?`` inside ``[...]`` is expanded into the expression (``[*]`` does not match ``*``),
  ``\\d`` is a digit and ``[[:alpha:]]`` a letter (RE2 syntax), ``foo**`` matches ``foobar``, and a pattern
  that starts with ``**`` and has no other wildcard is a plain suffix test (``**foo`` matches ``xfoo``).
  ``[!a]`` is not a negation: Go's only negation is ``[^a]``.
* A path is excluded when the last pattern that matches it, or one of its parent directories, is not a
  ``!`` exception. BuildKit evaluates each directory level once and hands the results down, so a pattern
  that was skipped at the parent, because it could not have changed the parent's result, is later tested
  against the child's own path only: with ``x``, ``!x/y``, ``x`` the path ``x/y`` is sent.
* An excluded directory is not walked when no exception can bring back anything below it. BuildKit decides
  that only when every exception, less a trailing ``/*`` or ``/**``, is a literal path, by comparing it
  with the directory's path as a string; otherwise it walks every excluded directory. An excluded directory
  that holds an included path is sent too, as that path's parent.
* The Dockerfile and the ignore file are read by the builder itself. If the patterns exclude them, they are
  still used for the build, but ``COPY`` and ``ADD`` cannot see them.

The module has a pure half (parsing and deciding: bytes and strings in, frozen values out) and an I/O half
(choosing and reading the ignore file, walking the tree, listing it for ``pybuild context ls``). The walk
never follows a symlink below the context root and never opens anything but directories.
"""

from __future__ import annotations

import enum
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from builder.errors import ContextError, UsageError

__all__ = [
    "DEFAULT_IGNORE_FILE",
    "ContextEntry",
    "ContextListing",
    "ContextRow",
    "Decision",
    "IgnoreRules",
    "Kind",
    "Rule",
    "Status",
    "list_context",
    "load_ignore_rules",
    "parse_ignore",
    "parse_patterns",
    "select_ignore_file",
    "walk_context",
]

DEFAULT_IGNORE_FILE = ".dockerignore"
_DEFAULT_DOCKERFILE = "Dockerfile"
#: Go's bufio.Scanner refuses a line this long (its 64 KiB buffer holds no newline); Docker then fails.
_MAX_LINE = 64 * 1024
_UTF8_BOM = b"\xef\xbb\xbf"
#: What Go's strings.TrimSpace removes (unicode.IsSpace); Python's str.strip() also removes \x1c-\x1f.
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
#: Characters patternmatcher escapes when it turns a pattern into a regular expression.
_REGEX_LITERALS = ".+()|{}$"
#: fsutil treats an exception containing any of these as a glob that may match anywhere.
_GLOB_CHARS = "*[]?^\\"


# ---------------------------------------------------------------------------------------------------------------
# Pure: values


class Kind(enum.Enum):
    """What ``lstat`` says a context entry is."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"


class _Match(enum.Enum):
    # patternmatcher's match types: plain comparisons where the pattern allows, a regular expression otherwise.
    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    REGEX = "regex"


@dataclass(frozen=True, slots=True)
class _Matcher:
    type: _Match
    operand: str
    regex: re.Pattern[str] | None = None

    def __call__(self, path: str) -> bool:
        if self.type is _Match.EXACT:
            return path == self.operand
        if self.type is _Match.PREFIX:
            return path.startswith(self.operand)
        if self.type is _Match.SUFFIX:
            # "**/foo" also matches "foo" itself.
            return path.endswith(self.operand) or (self.operand[:1] == "/" and path == self.operand[1:])
        assert self.regex is not None
        return self.regex.match(path) is not None


@dataclass(frozen=True, slots=True)
class Rule:
    """One pattern line. ``text`` is the line as written (trimmed), ``pattern`` the cleaned glob without ``!``."""

    source: str
    line: int
    text: str
    pattern: str
    exception: bool
    matcher: _Matcher = field(repr=False, compare=False)

    def matches(self, path: str) -> bool:
        """Whether the pattern matches ``path`` itself (a clean, slash-separated path relative to the context)."""
        return self.matcher(path)

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.text}"


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a path is in the build context, and why.

    ``rule`` is the last pattern that matches the path or one of its parent directories and agrees with the
    outcome: an exception when the path is included, an exclusion when it is not (``None``: no pattern took
    part, so the path is included). ``prune`` is set on an excluded directory whose contents need not be
    walked because nothing below it can be included. ``pruned_at`` names an excluded ancestor that was not
    walked, so the path is never even looked at; ``rule`` is then the rule that excluded that ancestor.
    """

    included: bool
    rule: Rule | None = None
    prune: bool = False
    pruned_at: str | None = None


@dataclass(frozen=True, slots=True)
class _Step:
    # The result for one path, and the state handed down to its children. Bit i of a mask stands for rule i.
    excluded: bool
    matched: int  # what BuildKit hands down: rules that counted for this path, inherited ones included
    seen: int  # rules whose pattern matches this path or one of its parents
    rule: int  # index of the rule reported as the reason, -1 if none took part


_NOTHING = _Step(False, 0, 0, -1)


@dataclass(frozen=True)
class IgnoreRules:
    """The parsed patterns of one ignore file (``source``; empty when there is none), in file order."""

    rules: tuple[Rule, ...] = ()
    source: str = ""

    @cached_property
    def has_exceptions(self) -> bool:
        return any(rule.exception for rule in self.rules)

    @cached_property
    def _exception_dirs(self) -> tuple[str, ...] | None:
        # fsutil's pruning test: each exception less a trailing "/**" or "/*", plus "/". None when one of them
        # is still a glob, because then fsutil cannot tell what it might match and walks every excluded dir.
        dirs = []
        for rule in self.rules:
            if not rule.exception:
                continue
            literal = rule.pattern.removesuffix("/**").removesuffix("/*")
            if any(c in _GLOB_CHARS for c in literal):
                return None
            dirs.append(literal + "/")
        return tuple(dirs)

    def decide(self, path: str, is_dir: bool = False) -> Decision:
        """Whether ``path`` (relative to the context, ``/``-separated) is sent, as BuildKit's walk decides it."""
        path = _relative(path)
        if path == "." or not self.rules:
            return Decision(True)
        parts = path.split("/")
        parent: _Step | None = None
        prefix = ""
        for depth, part in enumerate(parts):
            prefix = f"{prefix}/{part}" if prefix else part
            step = self._step(prefix, parent)
            if depth < len(parts) - 1 and step.excluded and self._prunes(prefix):
                return Decision(False, self.rules[step.rule], pruned_at=prefix)
            parent = step
        return Decision(not step.excluded, self._rule(step), prune=is_dir and step.excluded and self._prunes(path))

    def _rule(self, step: _Step) -> Rule | None:
        return self.rules[step.rule] if step.rule >= 0 else None

    def _step(self, path: str, parent: _Step | None) -> _Step:
        """Match one path, given its parent directory's step (``None`` for a top-level path).

        The outcome is patternmatcher's ``MatchesUsingParentResults`` as BuildKit calls it: a rule the parent
        matched counts without looking; otherwise a rule that cannot change the result so far is skipped, and
        the others are tested against this path alone. Every rule is tested anyway, for the reason reported.
        """
        inherited = parent.matched if parent is not None else 0
        seen = parent.seen if parent is not None else 0
        excluded = False
        matched = 0
        for index, rule in enumerate(self.rules):
            bit = 1 << index
            hit = rule.matcher(path)
            if hit:
                seen |= bit
            if not inherited & bit and (rule.exception != excluded or not hit):
                continue
            matched |= bit
            excluded = not rule.exception
        reason = -1
        if matched:
            # Docker's "last match wins", read back: the last matching rule that agrees with the outcome.
            reason = next(
                i for i in reversed(range(len(self.rules))) if seen >> i & 1 and self.rules[i].exception != excluded
            )
        return _Step(excluded, matched, seen, reason)

    def _prunes(self, directory: str) -> bool:
        """Whether the walk may skip the contents of an excluded ``directory`` (fsutil's test, reproduced)."""
        if not self.has_exceptions:
            return True
        dirs = self._exception_dirs
        if dirs is None:
            return False
        prefix = directory + "/"
        return not any(candidate.startswith(prefix) for candidate in dirs)


@dataclass(frozen=True, slots=True)
class ContextEntry:
    """One path below the context root, as the walk found it. ``size`` is a regular file's length, else 0."""

    path: str
    kind: Kind
    size: int
    decision: Decision


class Status(enum.Enum):
    """How a listed path takes part in the build."""

    INCLUDED = "included"
    EXCLUDED = "excluded"
    #: Excluded, but sent anyway because a path below it is included (BuildKit sends the parents of what it sends).
    PARENT = "parent"
    #: Excluded, but read by the builder as the Dockerfile or the ignore file; COPY and ADD cannot see it.
    FRONTEND = "frontend"


@dataclass(frozen=True, slots=True)
class ContextRow:
    """A row of ``pybuild context ls``. ``included``: present in the context that COPY and ADD see."""

    path: str
    kind: Kind
    size: int
    included: bool
    status: Status
    rule: str  # "FILE:LINE: PATTERN" of the deciding rule, or ""
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "Path": self.path,
            "Kind": self.kind.value,
            "Size": self.size,
            "Included": self.included,
            "Status": self.status.value,
            "Rule": self.rule,
            "Reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class ContextListing:
    context_dir: Path
    dockerfile: Path | None  # the Dockerfile the builder would read; None when the default one does not exist
    ignore_file: Path | None  # the ignore file in force; None when there is none
    rules: IgnoreRules
    entries: tuple[ContextRow, ...]


# ---------------------------------------------------------------------------------------------------------------
# Pure: reading an ignore file


def parse_ignore(data: bytes, source: str = DEFAULT_IGNORE_FILE) -> IgnoreRules:
    """Parse an ignore file as BuildKit does; a bad line raises ``ContextError`` as ``SOURCE:LINE: message``.

    Lines end at ``\\n`` (a ``\\r`` before it is dropped) and a UTF-8 byte-order mark on the first line is
    dropped. A line whose first character is ``#`` is a comment; other lines are trimmed, an optional ``!``
    (and the spaces after it) marks an exception, and the rest is cleaned like Go's ``filepath.Clean`` with a
    leading ``/`` removed. Blank lines are skipped. Unlike Docker, which compiles a pattern only when a path
    first reaches it, every pattern is checked here, so a mistake is reported with its line at once.
    """
    rules = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if len(raw) >= _MAX_LINE:
            raise ContextError(f"{source}:{number}: line is too long (Docker reads lines of up to 64 KiB)")
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if number == 1:
            raw = raw.removeprefix(_UTF8_BOM)
        line = os.fsdecode(raw)
        if line.startswith("#"):
            continue
        text = line.strip(_GO_SPACE)
        if text:
            rules.extend(_rule(source, number, text, text, where=f"{source}:{number}"))
    return IgnoreRules(tuple(rules), source)


def parse_patterns(patterns: tuple[str, ...] | list[str], source: str) -> IgnoreRules:
    """Patterns given one by one (``COPY --exclude``, ``--parents``' include pattern), compiled and matched as
    BuildKit's copier matches them (patternmatcher, as for .dockerignore); ``source`` names them in errors."""
    rules = []
    for number, text in enumerate(patterns, start=1):
        rules.extend(_rule(source, number, text, text.strip(_GO_SPACE), where=source))
    return IgnoreRules(tuple(rules), source)


def _rule(source: str, number: int, text: str, trimmed: str, *, where: str) -> list[Rule]:
    """The rule of one pattern (none when it cleans to nothing); a bad one is a ``ContextError`` at ``where``."""
    try:
        exception, pattern = _clean_pattern(trimmed)
        if not pattern:
            return []
        matcher = _compile(pattern)
    except _BadPattern as e:
        raise ContextError(f"{where}: {e}") from None
    return [Rule(source, number, text, pattern, exception, matcher)]


class _BadPattern(Exception):
    pass


def _clean_pattern(text: str) -> tuple[bool, str]:
    # ignorefile.ReadAll: the part after "!" is trimmed and cleaned, and loses one leading "/".
    invert = text.startswith("!")
    pattern = text[1:].strip(_GO_SPACE) if invert else text
    if pattern:
        pattern = _go_clean(pattern)
        if len(pattern) > 1 and pattern.startswith("/"):
            pattern = pattern[1:]
    if invert:
        pattern = "!" + pattern
    # patternmatcher.New then trims and cleans the whole string again ("!/" becomes "!") before taking the "!".
    pattern = pattern.strip(_GO_SPACE)
    if not pattern:
        return False, ""
    pattern = _go_clean(pattern)
    exception = pattern.startswith("!")
    if exception:
        if len(pattern) == 1:
            raise _BadPattern('illegal exclusion pattern: "!"')
        pattern = pattern[1:]
    if not _go_match_syntax_ok(pattern):
        raise _BadPattern(f"syntax error in pattern {text!r}")
    return exception, pattern


def _go_clean(path: str) -> str:
    """Go's ``path.Clean``: ``posixpath.normpath`` differs on ``//a``, which Go cleans to ``/a``."""
    if not path:
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def _relative(path: str) -> str:
    cleaned = _go_clean(path).lstrip("/") or "."
    if cleaned == ".." or cleaned.startswith("../"):
        raise ValueError(f"{path!r} is outside the build context")
    return cleaned


# Go's filepath.Match(pattern, ".") is how patternmatcher checks syntax; it reports an error exactly when some
# chunk of the pattern (the text between runs of "*" outside [...]) is malformed, whatever the name.


def _go_match_syntax_ok(pattern: str) -> bool:
    rest = pattern
    while rest:
        rest = rest.lstrip("*")
        in_range = False
        i = 0
        while i < len(rest):
            c = rest[i]
            if c == "\\":
                if i + 1 < len(rest):
                    i += 1
            elif c == "[":
                in_range = True
            elif c == "]":
                in_range = False
            elif c == "*" and not in_range:
                break
            i += 1
        chunk, rest = rest[:i], rest[i:]
        if not _go_chunk_ok(chunk):
            return False
    return True


def _go_chunk_ok(chunk: str) -> bool:
    i, n = 0, len(chunk)
    while i < n:
        c = chunk[i]
        if c == "[":
            i += 1
            if i < n and chunk[i] == "^":
                i += 1
            ranges = 0
            while True:
                if i < n and chunk[i] == "]" and ranges > 0:
                    i += 1
                    break
                i = _go_class_char(chunk, i)
                if i < 0:
                    return False
                if chunk[i] == "-":
                    i = _go_class_char(chunk, i + 1)
                    if i < 0:
                        return False
                ranges += 1
        elif c == "\\":
            if i + 1 >= n:
                return False
            i += 2
        else:
            i += 1
    return True


def _go_class_char(chunk: str, i: int) -> int:
    # Go's getEsc: one (possibly escaped) character of a class, which must not end the chunk.
    n = len(chunk)
    if i >= n or chunk[i] in "-]":
        return -1
    if chunk[i] == "\\":
        i += 1
        if i >= n:
            return -1
    i += 1
    return i if i < n else -1


# ---------------------------------------------------------------------------------------------------------------
# Pure: compiling a pattern (patternmatcher's translation, then its RE2 expression read into Python's re)


def _compile(pattern: str) -> _Matcher:
    expr = ["^"]
    kind = _Match.EXACT
    i, n = 0, len(pattern)
    token = 0
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1
                if i >= n:
                    if kind is _Match.EXACT:
                        kind = _Match.PREFIX
                    else:
                        expr.append(".*")
                        kind = _Match.REGEX
                else:
                    expr.append("(.*/)?")
                    kind = _Match.REGEX
                if token == 0:
                    kind = _Match.SUFFIX
            else:
                expr.append("[^/]*")
                kind = _Match.REGEX
        elif c == "?":
            expr.append("[^/]")
            kind = _Match.REGEX
        elif c in _REGEX_LITERALS:
            expr.append("\\" + c)
        elif c == "\\":
            if i < n:
                expr.append("\\" + pattern[i])
                i += 1
                kind = _Match.REGEX
            else:
                expr.append("\\")
        elif c in "[]":
            expr.append(c)
            kind = _Match.REGEX
        else:
            expr.append(c)
        token += 1
    if kind is _Match.EXACT:
        return _Matcher(kind, pattern)
    if kind is _Match.PREFIX:
        return _Matcher(kind, pattern[:-2])
    if kind is _Match.SUFFIX:
        return _Matcher(kind, pattern[2:])
    expr.append("$")
    source = _re2_to_python("".join(expr))
    try:
        regex = re.compile(source, re.ASCII)
    except re.error as e:
        raise _BadPattern(f"syntax error in pattern {pattern!r}: {e}") from None
    return _Matcher(kind, pattern, regex)


_MAX_RUNE = 0x10FFFF
_Ranges = list[tuple[int, int]]


def _span(chars: str) -> _Ranges:
    # "a-z0-9_" style shorthand into code point ranges.
    out, i = [], 0
    while i < len(chars):
        if i + 2 < len(chars) and chars[i + 1] == "-":
            out.append((ord(chars[i]), ord(chars[i + 2])))
            i += 3
        else:
            out.append((ord(chars[i]), ord(chars[i])))
            i += 1
    return out


# RE2's Perl classes are ASCII-only; \s is [\t\n\f\r ] (no \v, unlike Python's).
_PERL: dict[str, _Ranges] = {
    "d": _span("0-9"),
    "s": _span("\t\n\f\r "),
    "w": _span("0-9A-Za-z_"),
}
_POSIX: dict[str, _Ranges] = {
    "alnum": _span("0-9A-Za-z"),
    "alpha": _span("A-Za-z"),
    "ascii": [(0, 0x7F)],
    "blank": _span("\t "),
    "cntrl": [(0, 0x1F), (0x7F, 0x7F)],
    "digit": _span("0-9"),
    "graph": [(0x21, 0x7E)],
    "lower": _span("a-z"),
    "print": [(0x20, 0x7E)],
    "punct": [(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
    "space": [(0x09, 0x0D), (0x20, 0x20)],
    "upper": _span("A-Z"),
    "word": _span("0-9A-Za-z_"),
    "xdigit": _span("0-9A-Fa-f"),
}


def _complement(ranges: _Ranges) -> _Ranges:
    out, low = [], 0
    for lo, hi in sorted(ranges):
        if lo > low:
            out.append((low, lo - 1))
        low = max(low, hi + 1)
    if low <= _MAX_RUNE:
        out.append((low, _MAX_RUNE))
    return out


def _emit_class(ranges: _Ranges) -> str:
    if not ranges:
        return f"[^\\U00000000-\\U{_MAX_RUNE:08x}]"  # matches nothing, and unlike (?!) may be repeated
    items = (f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges)
    return "[" + "".join(items) + "]"


def _re2_to_python(src: str) -> str:
    """Rewrite the RE2 expression patternmatcher built as a Python expression with the same meaning.

    Only what patternmatcher can produce needs handling: literals, backslash escapes, character classes, and
    its own ``(.*/)?``, ``[^/]``, ``*``, ``^`` and ``$``. RE2 errors become ``_BadPattern``, as Docker fails on
    them when it first matches a path. ``\\p{...}`` Unicode classes are refused rather than approximated.
    """
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c == "[":
            ranges, i = _re2_class(src, i)
            out.append(_emit_class(ranges))
        elif c == "\\":
            nxt = src[i + 1] if i + 1 < n else ""
            if nxt in ("A", "b", "B"):
                out.append("\\" + nxt)
                i += 2
            elif nxt == "z":
                out.append(r"\Z")
                i += 2
            elif nxt == "Q":
                end = src.find("\\E", i + 2)
                literal = src[i + 2 :] if end < 0 else src[i + 2 : end]
                out.append(re.escape(literal))
                i = n if end < 0 else end + 2
            elif nxt == "C":
                raise _BadPattern(r"invalid escape sequence: \C")
            elif nxt in ("p", "P"):
                raise _BadPattern(f"Unicode class \\{nxt} is not supported")
            elif nxt and nxt.lower() in _PERL:
                ranges = _PERL[nxt.lower()]
                out.append(_emit_class(_complement(ranges) if nxt.isupper() else ranges))
                i += 2
            else:
                rune, i = _re2_escape(src, i)
                out.append(_emit_class([(rune, rune)]))
        elif c == "$":
            out.append(r"\Z")  # RE2 without (?m): end of text only; Python's "$" also matches before a final "\n"
            i += 1
        elif c in "^.()*?":
            out.append(c)
            i += 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _re2_class(src: str, i: int) -> tuple[_Ranges, int]:
    # RE2's parseClass in Perl mode: "]" first is a literal, "-" anywhere is one, [:name:] and \d are sets.
    n = len(src)
    i += 1
    negate = i < n and src[i] == "^"
    if negate:
        i += 1
    ranges: _Ranges = []
    first = True
    while i >= n or src[i] != "]" or first:
        if i >= n:
            raise _BadPattern("missing closing ] in character class")
        first = False
        if src.startswith("[:", i) and n - i > 2:
            end = src.find(":]", i + 2)
            if end >= 0:
                name = src[i + 2 : end]
                group = _POSIX.get(name.removeprefix("^"))
                if group is None:
                    raise _BadPattern(f"invalid character class range [:{name}:]")
                ranges.extend(_complement(group) if name.startswith("^") else group)
                i = end + 2
                continue
        if src[i] == "\\" and i + 1 < n:
            nxt = src[i + 1]
            if nxt in ("p", "P"):
                raise _BadPattern(f"Unicode class \\{nxt} is not supported")
            if nxt.lower() in _PERL:
                group = _PERL[nxt.lower()]
                ranges.extend(_complement(group) if nxt.isupper() else group)
                i += 2
                continue
        lo, i = _re2_class_char(src, i)
        hi = lo
        if i + 1 < n and src[i] == "-" and src[i + 1] != "]":
            hi, i = _re2_class_char(src, i + 1)
            if hi < lo:
                raise _BadPattern(f"invalid character class range {chr(lo)}-{chr(hi)}")
        ranges.append((lo, hi))
    if negate:
        ranges = _complement(ranges)
    return ranges, i + 1


def _re2_class_char(src: str, i: int) -> tuple[int, int]:
    if i >= len(src):
        raise _BadPattern("missing closing ] in character class")
    if src[i] == "\\":
        return _re2_escape(src, i)
    return ord(src[i]), i + 1


def _re2_escape(src: str, i: int) -> tuple[int, int]:
    """RE2's parseEscape for one character; ``src[i]`` is the backslash."""
    n = len(src)
    if i + 1 >= n:
        raise _BadPattern("trailing backslash at end of expression")
    c = src[i + 1]
    i += 2
    if c.isascii() and not c.isalnum():
        return ord(c), i  # escaped punctuation is itself
    octal = "01234567"
    if c in octal and (c == "0" or (i < n and src[i] in octal)):
        value = int(c)
        for _ in range(2):
            if i < n and src[i] in octal:
                value = value * 8 + int(src[i])
                i += 1
        return value, i
    if c == "x":
        if i < n and src[i] == "{":
            end = src.find("}", i + 1)
            digits = src[i + 1 : end] if end > i + 1 else ""
            if digits and all(d in "0123456789abcdefABCDEF" for d in digits) and int(digits, 16) <= _MAX_RUNE:
                return int(digits, 16), end + 1
        elif i + 1 < n and all(d in "0123456789abcdefABCDEF" for d in src[i : i + 2]):
            return int(src[i : i + 2], 16), i + 2
    controls = {"a": 7, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11}
    if c in controls:
        return controls[c], i
    raise _BadPattern(f"invalid escape sequence: \\{c}")


# ---------------------------------------------------------------------------------------------------------------
# I/O: choosing and reading the ignore file


def select_ignore_file(context_dir: Path, dockerfile: Path | None = None, *, named: bool = False) -> Path | None:
    """The ignore file BuildKit would use, or ``None``.

    ``<Dockerfile>.dockerignore`` beside the Dockerfile (``build/app.Dockerfile.dockerignore`` for
    ``-f build/app.Dockerfile``; ``CONTEXT/Dockerfile.dockerignore`` without ``-f``) wins over
    ``CONTEXT/.dockerignore`` when it exists, even if empty. A symlink counts as existing. A ``named`` context
    (``--build-context NAME=DIR``) has only ``DIR/.dockerignore``, the one file BuildKit's dockerui reads there.
    """
    dockerfile = dockerfile if dockerfile is not None else context_dir / _DEFAULT_DOCKERFILE
    candidates = [context_dir / DEFAULT_IGNORE_FILE]
    if not named:
        candidates.insert(0, dockerfile.parent / (dockerfile.name + DEFAULT_IGNORE_FILE))
    for candidate in candidates:
        if os.path.lexists(candidate):
            return candidate
    return None


def load_ignore_rules(
    context_dir: Path, dockerfile: Path | None = None, *, named: bool = False
) -> tuple[Path | None, IgnoreRules]:
    """Select (see ``select_ignore_file``), read and parse the ignore file; ``(None, IgnoreRules())`` when there is
    none.

    The file may be a symlink that stays inside the directory the builder reads it from (the context, or the
    Dockerfile's directory). One that leaves it, dangles, or is not a regular file is a ``ContextError``:
    BuildKit silently builds without the file then (moby#42108), sending everything it was meant to keep out.
    """
    path = select_ignore_file(context_dir, dockerfile, named=named)
    if path is None:
        return None, IgnoreRules()
    display = _display(path, context_dir)
    root = os.path.realpath(path.parent)
    target = os.path.realpath(path)
    if os.path.commonpath([root, target]) != root:
        raise ContextError(
            f"{display} is a symlink to {target}, outside {path.parent}",
            hint="Docker would silently build without it; copy the file instead of linking it.",
        )
    try:
        st = os.stat(target)
        if not stat.S_ISREG(st.st_mode):
            raise ContextError(f"{display} is not a regular file")
        with open(target, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ContextError(f"cannot read {display}: {e.strerror or e}") from None
    return path, parse_ignore(data, display)


def _display(path: Path, context_dir: Path) -> str:
    inside = _inside(path, context_dir)
    return inside if inside is not None else str(path)


def _inside(path: Path, context_dir: Path) -> str | None:
    """``path`` relative to the context, ``/``-separated, if it lies in it (symlinks not resolved)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(context_dir))
    if rel == "." or rel == ".." or rel.startswith("../"):
        return None
    return Path(rel).as_posix()


# ---------------------------------------------------------------------------------------------------------------
# I/O: walking the context


def walk_context(root: Path, rules: IgnoreRules) -> Iterator[ContextEntry]:
    """Every path below ``root`` in tree order (names sorted bytewise, a directory before its contents).

    Kinds come from ``lstat``: a symlink is an entry and is never followed (only ``root`` itself may be one).
    An excluded directory is yielded and, when its decision says ``prune``, its contents are not. An
    unreadable directory is a ``ContextError`` unless it is excluded, which BuildKit tolerates too.
    """
    try:
        root_stat = os.stat(root)
    except OSError as e:
        raise ContextError(f"build context {root}: {e.strerror or e}") from None
    if not stat.S_ISDIR(root_stat.st_mode):
        raise ContextError(f"build context {root} is not a directory")
    base = os.fspath(root)
    try:
        top = _scan(base)
    except OSError as e:
        raise ContextError(f"cannot read build context {root}: {e.strerror or e}") from None

    # Iterative, so a deep tree cannot exhaust the recursion limit.
    frames: list[tuple[str, _Step | None, Iterator[tuple[str, Kind, int]]]] = [("", None, iter(top))]
    while frames:
        prefix, parent, children = frames[-1]
        item = next(children, None)
        if item is None:
            frames.pop()
            continue
        name, kind, size = item
        path = f"{prefix}/{name}" if prefix else name
        step = rules._step(path, parent) if rules.rules else _NOTHING
        prune = kind is Kind.DIR and step.excluded and rules._prunes(path)
        yield ContextEntry(path, kind, size, Decision(not step.excluded, rules._rule(step), prune=prune))
        if kind is not Kind.DIR or prune:
            continue
        try:
            entries = _scan(os.path.join(base, path))
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed while we walked
        except PermissionError as e:
            if step.excluded:
                continue
            raise ContextError(f"cannot read {path} in the build context: {e.strerror or e}") from None
        except OSError as e:
            raise ContextError(f"cannot read {path} in the build context: {e.strerror or e}") from None
        frames.append((path, step, iter(entries)))


def _scan(directory: str) -> list[tuple[str, Kind, int]]:
    found = []
    with os.scandir(directory) as it:
        for entry in it:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            found.append((entry.name, _kind(st.st_mode), st.st_size if stat.S_ISREG(st.st_mode) else 0))
    found.sort(key=lambda item: os.fsencode(item[0]))  # Go sorts names as bytes
    return found


def _kind(mode: int) -> Kind:
    if stat.S_ISREG(mode):
        return Kind.FILE
    if stat.S_ISDIR(mode):
        return Kind.DIR
    if stat.S_ISLNK(mode):
        return Kind.SYMLINK
    return Kind.OTHER


# ---------------------------------------------------------------------------------------------------------------
# I/O: the listing behind `pybuild context ls`


def list_context(context_dir: Path, dockerfile: Path | None = None, show_excluded: bool = False) -> ContextListing:
    """The rows of ``pybuild context ls``: what the build context holds and, for each path, why.

    ``dockerfile`` is ``-f`` as given (relative to the current directory, as Docker takes it); it must exist.
    Without it, ``CONTEXT/Dockerfile`` (or ``dockerfile``) is the Dockerfile if present. Rows come in tree
    order; excluded paths are listed only with ``show_excluded``, and the contents of a pruned directory never.
    """
    if dockerfile is not None and not os.path.lexists(dockerfile):
        raise UsageError(f"-f {dockerfile}: no such file")
    ignore_file, rules = load_ignore_rules(context_dir, dockerfile)
    used_dockerfile = dockerfile if dockerfile is not None else _default_dockerfile(context_dir)
    frontend = {
        rel
        for rel in (
            _inside(used_dockerfile, context_dir) if used_dockerfile is not None else None,
            _inside(ignore_file, context_dir) if ignore_file is not None else None,
        )
        if rel is not None
    }

    entries = list(walk_context(context_dir, rules))
    statuses = [_status(entry, frontend) for entry in entries]
    # An excluded directory with something included below it is sent as that path's parent.
    open_dirs: list[int] = []
    for index, entry in enumerate(entries):
        while open_dirs and not entry.path.startswith(entries[open_dirs[-1]].path + "/"):
            open_dirs.pop()
        if statuses[index] is Status.INCLUDED:
            for parent in open_dirs:
                statuses[parent] = Status.PARENT
            open_dirs.clear()
        elif entry.kind is Kind.DIR and not entry.decision.prune:
            open_dirs.append(index)

    rows = []
    for entry, status in zip(entries, statuses, strict=True):
        included = status in (Status.INCLUDED, Status.PARENT)
        if included or show_excluded:
            rule = entry.decision.rule
            rows.append(
                ContextRow(
                    entry.path, entry.kind, entry.size, included, status, str(rule or ""), _reason(entry, status)
                )
            )
    return ContextListing(context_dir, used_dockerfile, ignore_file, rules, tuple(rows))


def _default_dockerfile(context_dir: Path) -> Path | None:
    # BuildKit also accepts a lower-case "dockerfile" (moby/moby#10858).
    for name in (_DEFAULT_DOCKERFILE, _DEFAULT_DOCKERFILE.lower()):
        if os.path.lexists(context_dir / name):
            return context_dir / name
    return None


def _status(entry: ContextEntry, frontend: set[str]) -> Status:
    if entry.decision.included:
        return Status.INCLUDED
    if entry.path in frontend:
        return Status.FRONTEND
    return Status.EXCLUDED


def _reason(entry: ContextEntry, status: Status) -> str:
    rule = entry.decision.rule
    if rule is None:
        return "included: no pattern matches it"
    how = f"{rule}" if rule.matches(entry.path) else f"{rule} (which matches a parent directory)"
    if status is Status.INCLUDED:
        return f"included: re-included by {how}"
    if status is Status.PARENT:
        return f"excluded by {how}, but sent as the parent directory of an included path"
    if status is Status.FRONTEND:
        return f"excluded by {how}; the builder still reads it, but COPY and ADD cannot see it"
    if entry.decision.prune:
        return f"excluded by {how}; its contents are not walked, as no exception can re-include them"
    return f"excluded by {how}"
