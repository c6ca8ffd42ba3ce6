"""The Dockerfile word lexer: quotes, escapes and ``$VAR``/``${VAR...}`` expansion, as BuildKit does them.

This is BuildKit's ``frontend/dockerfile/shell`` lexer in Python, kept behaviour-for-behaviour: one word in, its
expansion (``value``, BuildKit's ProcessWord), the same text split into fields (``words``, ProcessWords) and the
names that were looked up (for the UndefinedVar check) out. It is pure: no I/O, no globals that change.

Where BuildKit sets no limit, pybuild sets three, far beyond any real Dockerfile, so that a hostile one fails with
a ``DockerfileError`` instead of exhausting the stack, memory or time:

- ``${...}`` nests at most ``MAX_NESTING`` levels deep;
- a word expands to at most ``MAX_WORD_CHARS`` characters, or to the length of the word or of the longest value it
  can read when that is more: long values pass through, but ``${A//x/$A$A}`` cannot double its way to gigabytes;
- a pattern's width times the length of the value it is matched against is bounded.

Shell patterns (``#``, ``%``, ``/``) are matched by a small automaton rather than ``re``. It finds exactly the match
Go's leftmost-first regexp finds, in linear time as Go does; a backtracking regex takes time growing as the value's
length to the power of the number of ``*`` (``${A##*a*a*b}`` on a 10 KiB value runs for minutes).
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from builder.errors import DockerfileError
from builder.frontend.gostyle import go_quote

__all__ = ["MAX_NESTING", "MAX_WORD_CHARS", "Expansion", "Lexer"]

MAX_NESTING = 64
MAX_WORD_CHARS = 1 << 20
# Pattern states times value characters a match may take (a few seconds at worst); only absurd inputs reach it.
_MAX_MATCH_WORK = 1 << 34

# What Go's unicode.IsSpace accepts; Python's str.isspace also takes \x1c-\x1f, which Go does not split on.
_SPACES = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
_SPACE_RUN = re.compile(f"[{re.escape(_SPACES)}]+")
_SPECIAL_PARAMS = "@*#?-$!0"
_BOM = "\ufeff"
# Go's string(rune) of the scanner's EOF, which is what BuildKit prints for a modifier or escape that is missing.
_EOF_TEXT = "\ufffd"


@dataclass(frozen=True)
class Expansion:
    """One word, expanded. ``matched``/``unmatched``: the variable names looked up that were / were not set."""

    value: str
    words: tuple[str, ...]
    matched: frozenset[str]
    unmatched: frozenset[str]


@dataclass(frozen=True)
class Lexer:
    """BuildKit's ``shell.Lex``. ``escape`` is the Dockerfile's escape token: a backslash, or a backtick.

    ``raw_quotes`` keeps quote characters in the output, ``raw_escapes`` keeps escape characters,
    ``skip_process_quotes`` treats quotes as ordinary characters, and ``skip_unset`` leaves a reference to an unset
    variable as it was written (``$V``, ``${V}``, ``${V:-word}``), which heredoc delimiter detection needs.
    """

    escape: str = "\\"
    raw_quotes: bool = False
    raw_escapes: bool = False
    skip_process_quotes: bool = False
    skip_unset: bool = False

    def __post_init__(self) -> None:
        if len(self.escape) != 1:
            raise ValueError(f"escape token must be one character, not {self.escape!r}")

    def expand(self, word: str, env: Mapping[str, str]) -> Expansion:
        """Expand ``word`` with ``env``; raise ``DockerfileError`` for a word BuildKit would refuse."""
        # Go's text/scanner drops a byte-order mark that starts its input.
        text = word[1:] if word.startswith(_BOM) else word
        if _specials(self.escape, self.skip_process_quotes, None).search(text) is None:
            return Expansion(text, tuple(_split(text)), frozenset(), frozenset())
        limit = max(MAX_WORD_CHARS, len(text), max(map(len, env.values()), default=0))
        scan = _Scan(self, text, env, limit)
        try:
            value, words = scan.run()
        except _LexError as err:
            raise DockerfileError(f"failed to process {go_quote(word)}: {err}") from None
        return Expansion(value, words, frozenset(scan.matched), frozenset(scan.unmatched))

    def expand_word(self, word: str, env: Mapping[str, str]) -> str:
        """BuildKit's ProcessWord: the expanded word as one string."""
        return self.expand(word, env).value

    def expand_words(self, word: str, env: Mapping[str, str]) -> list[str]:
        """BuildKit's ProcessWords: the expanded word split into fields."""
        return list(self.expand(word, env).words)


class _LexError(Exception):
    """A word BuildKit refuses; the message is BuildKit's."""


class _LimitError(_LexError):
    """A word past pybuild's own bounds. Never reworded as a missing brace, unlike other errors met at the end."""


@functools.lru_cache(maxsize=32)
def _specials(escape: str, skip_quotes: bool, stop: str | None) -> re.Pattern[str]:
    """The characters that end a run of ordinary text."""
    chars = {"$", escape}
    if not skip_quotes:
        chars |= {"'", '"'}
    if stop is not None:
        chars.add(stop)
    return re.compile("[" + "".join(re.escape(c) for c in sorted(chars)) + "]")


def _split(text: str) -> list[str]:
    return [part for part in _SPACE_RUN.split(text) if part]


class _Words:
    """BuildKit's wordsStruct: text from ``$`` and plain characters splits on spaces, quoted and escaped text not."""

    __slots__ = ("done", "current")

    def __init__(self) -> None:
        self.done: list[str] = []
        self.current: list[str] = []

    def raw(self, text: str) -> None:
        self.current.append(text)

    def split(self, text: str) -> None:
        first, *rest = _SPACE_RUN.split(text)
        self.current.append(first)
        for part in rest:
            self._push()
            self.current.append(part)

    def _push(self) -> None:
        word = "".join(self.current)
        if word:
            self.done.append(word)
        self.current = []

    def finish(self) -> tuple[str, ...]:
        self._push()
        return tuple(self.done)


class _Scan:
    """One pass over one word; the position moves forward only, as Go's text/scanner does."""

    def __init__(self, lexer: Lexer, text: str, env: Mapping[str, str], limit: int) -> None:
        self.text = text
        self.pos = 0
        self.env = env
        self.escape = lexer.escape
        self.quotes = not lexer.skip_process_quotes
        self.raw_quotes = lexer.raw_quotes
        self.raw_escapes = lexer.raw_escapes
        self.skip_unset = lexer.skip_unset
        self.limit = limit
        self.depth = 0
        self.matched: set[str] = set()
        self.unmatched: set[str] = set()

    def run(self) -> tuple[str, tuple[str, ...]]:
        words = _Words()
        value = self._until(None, self.raw_escapes, words)
        return value, words.finish()

    def _grown(self, size: int) -> int:
        if size > self.limit:
            raise _LimitError(f"expansion is longer than {self.limit} characters")
        return size

    def _until(self, stop: str | None, raw_escapes: bool, words: _Words | None) -> str:
        """Read up to ``stop`` (consumed) or, with no stop, to the end; BuildKit's processStopOn."""
        text, end = self.text, len(self.text)
        specials = _specials(self.escape, not self.quotes, stop)
        out: list[str] = []
        size = 0
        while self.pos < end:
            found = specials.search(text, self.pos)
            if found is None or found.start() > self.pos:
                plain = text[self.pos : found.start() if found else end]
                self.pos += len(plain)
                out.append(plain)
                size = self._grown(size + len(plain))
                if words is not None:
                    words.split(plain)
                continue
            ch = text[self.pos]
            if ch == stop:
                self.pos += 1
                return "".join(out)
            if ch == "$":
                piece = self._dollar()
                if words is not None:
                    words.split(piece)
            elif ch in "'\"" and self.quotes:
                piece = self._single_quoted() if ch == "'" else self._double_quoted(raw_escapes)
                if words is not None:
                    words.raw(piece)
            else:  # the escape token: the next character is taken as it is; at the very end, it is dropped
                self.pos += 1
                if raw_escapes:
                    out.append(ch)
                    size += 1
                    if words is not None:
                        words.raw(ch)
                if self.pos >= end:
                    break
                piece = text[self.pos]
                self.pos += 1
                if words is not None:
                    words.raw(piece)
            out.append(piece)
            size = self._grown(size + len(piece))
        if stop is not None:
            raise _LexError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(out)

    def _nested(self, stop: str, raw_escapes: bool, missing: str) -> str:
        """A word inside ``${...}``; running out of input, for whatever reason, is reported as ``missing``."""
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise _LimitError(f"variable substitution too deeply nested (more than {MAX_NESTING} levels)")
            return self._until(stop, raw_escapes, None)
        except _LimitError:
            raise
        except _LexError:
            if self.pos >= len(self.text):
                raise _LexError(missing) from None
            raise
        finally:
            self.depth -= 1

    def _single_quoted(self) -> str:
        start = self.pos + 1
        close = self.text.find("'", start)
        if close < 0:
            self.pos = len(self.text)
            raise _LexError("unexpected end of statement while looking for matching single-quote")
        self.pos = close + 1
        inner = self.text[start:close]
        return f"'{inner}'" if self.raw_quotes else inner

    def _double_quoted(self, raw_escapes: bool) -> str:
        text, end, escape = self.text, len(self.text), self.escape
        self.pos += 1
        out = ['"'] if self.raw_quotes else []
        size = len(out)
        while True:
            if self.pos >= end:
                raise _LexError("unexpected end of statement while looking for matching double-quote")
            ch = text[self.pos]
            if ch == '"':
                self.pos += 1
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if ch == "$":
                piece = self._dollar()
            else:
                self.pos += 1
                piece = ch
                if ch == escape:
                    if raw_escapes:
                        out.append(ch)
                        size += 1
                    if self.pos >= end:
                        continue
                    # Only these can be escaped here; before anything else the escape is itself kept.
                    if text[self.pos] in ('"', "$", escape):
                        piece = text[self.pos]
                        self.pos += 1
            out.append(piece)
            size = self._grown(size + len(piece))

    def _name(self) -> str:
        """A name, a run of digits (positional), or one special parameter character; maybe empty."""
        text, end, start = self.text, len(self.text), self.pos
        if start >= end:
            return ""
        first = text[start]
        if first.isdecimal():
            while self.pos < end and text[self.pos].isdecimal():
                self.pos += 1
        elif first in _SPECIAL_PARAMS:
            self.pos += 1
        else:
            while self.pos < end and (text[self.pos].isalpha() or text[self.pos].isdecimal() or text[self.pos] == "_"):
                self.pos += 1
        return text[start : self.pos]

    def _lookup(self, name: str) -> str | None:
        if name in self.env:
            self.matched.add(name)
            return self.env[name]
        self.unmatched.add(name)
        return None

    def _next(self) -> str | None:
        if self.pos >= len(self.text):
            return None
        ch = self.text[self.pos]
        self.pos += 1
        return ch

    def _dollar(self) -> str:
        text, end = self.text, len(self.text)
        self.pos += 1
        if self.pos >= end or text[self.pos] != "{":
            name = self._name()
            if not name:
                return "$"
            value = self._lookup(name)
            if value is None:
                return f"${name}" if self.skip_unset else ""
            return value

        self.pos += 1
        if self.pos >= end:
            raise _LexError("syntax error: missing '}'")
        if text[self.pos] in "{}:":
            raise _LexError("syntax error: bad substitution")
        name = self._name()
        ch = self._next()
        if ch == "}":
            value = self._lookup(name)
            if value is None:
                return f"${{{name}}}" if self.skip_unset else ""
            return value
        if ch == "/":
            return self._replace(name)
        if ch is None or ch not in ":+-?#%":
            raise _LexError(f"unsupported modifier ({ch or _EOF_TEXT}) in substitution")

        modifier = ch
        null_is_unset = ch == ":"
        if null_is_unset:
            ch = self._next()
            modifier += ch or _EOF_TEXT
        word = self._nested("}", ch in ("#", "%"), "syntax error: missing '}'")
        value = self._lookup(name)
        if value is None and self.skip_unset:
            return f"${{{name}{modifier}{word}}}"
        unset = value is None or (null_is_unset and value == "")
        if ch == "-":
            return word if value is None or unset else value
        if ch == "+":
            return "" if unset else word
        if ch == "?":
            if value is None:
                raise _LexError(f"{name}: {word or 'is not allowed to be unset'}")
            if unset:
                raise _LexError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if ch in ("#", "%"):
            longest = word.startswith(ch)
            if longest:
                word = word[1:]
            if ch == "%":
                # The shortest or longest suffix is the prefix of the reversed value, as BuildKit finds it.
                return _trim_prefix(_reverse_pattern(word), (value or "")[::-1], longest)[::-1]
            return _trim_prefix(word, value or "", longest)
        raise _LexError(f"unsupported modifier ({modifier}) in substitution")

    def _replace(self, name: str) -> str:
        replace_all = self.pos < len(self.text) and self.text[self.pos] == "/"
        if replace_all:
            self.pos += 1
        pattern = self._nested("/", True, "syntax error: missing '/' in ${}")
        replacement = self._nested("}", True, "syntax error: missing '}'")
        value = self._lookup(name)
        if value is None:
            if self.skip_unset:
                return f"${{{name}/{pattern}/{replacement}}}"
            value = ""
        search = _compile(pattern).searcher(value)
        if not replace_all:
            found = search(0)
            if found is None:
                return value
            self._grown(len(value) + len(replacement))
            return value[: found[0]] + replacement + value[found[1] :]
        return self._replace_all(search, value, _Template(replacement))

    def _replace_all(self, search: Callable[[int], tuple[int, int] | None], value: str, template: _Template) -> str:
        """Go's Regexp.ReplaceAllString: an empty match right after a match is skipped, ``$0`` is the match."""
        out: list[str] = []
        size = 0
        last_end = 0
        pos = 0
        while pos <= len(value):
            found = search(pos)
            if found is None:
                break
            start, stop = found
            out.append(value[last_end:start])
            size += start - last_end
            if stop > last_end or start == 0:
                piece = template.render(value[start:stop])
                out.append(piece)
                size += len(piece)
            self._grown(size)
            last_end = stop
            pos = pos + 1 if stop == pos else stop
        out.append(value[last_end:])
        self._grown(size + len(value) - last_end)
        return "".join(out)


class _Template:
    """A replacement as Go's Regexp.Expand reads it, for a pattern with no groups: ``$0``/``${0}`` is the match,
    ``$$`` is ``$``, any other well-formed reference is empty, and a malformed one is kept as written."""

    __slots__ = ("parts",)

    def __init__(self, template: str) -> None:
        self.parts: list[str | None] = []  # None stands for the match
        literal: list[str] = []
        i = 0
        while True:
            dollar = template.find("$", i)
            if dollar < 0:
                literal.append(template[i:])
                break
            literal.append(template[i:dollar])
            i = dollar + 1
            if template.startswith("$", i):
                literal.append("$")
                i += 1
                continue
            ref = _template_ref(template, i)
            if ref is None:
                literal.append("$")
                continue
            is_match, i = ref
            if is_match:
                self.parts.append("".join(literal))
                self.parts.append(None)
                literal = []
        self.parts.append("".join(literal))

    def render(self, match: str) -> str:
        return "".join(match if part is None else part for part in self.parts)


def _template_ref(template: str, i: int) -> tuple[bool, int] | None:
    """The reference after a ``$`` at ``i``: (whether it names the whole match, where it ends), or None if malformed."""
    brace = template.startswith("{", i)
    start = i + 1 if brace else i
    stop = start
    while stop < len(template) and (template[stop].isalpha() or template[stop].isdecimal() or template[stop] == "_"):
        stop += 1
    if stop == start:
        return None
    name = template[start:stop]
    if brace:
        if not template.startswith("}", stop):
            return None
        stop += 1
    # Go reads the name as a group number only if it is all ASCII digits with no leading zero; group 0 is the match.
    return name == "0", stop


# Pattern tokens: a one-character string is that literal character.
_STAR = 0
_ANY = 1


def _reverse_pattern(pattern: str) -> str:
    """The pattern backwards with each backslash pair kept in order: ``a\\*c`` becomes ``c\\*a``."""
    units: list[str] = []
    i = 0
    while i < len(pattern):
        step = 2 if pattern[i] == "\\" and i + 1 < len(pattern) else 1
        units.append(pattern[i : i + step])
        i += step
    return "".join(reversed(units))


def _trim_prefix(pattern: str, value: str, longest: bool) -> str:
    """BuildKit's trimPrefix: drop the shortest or the longest prefix that matches."""
    cut = _pick(_compile(pattern).ends(value, 0), longest)
    return value if cut is None else value[cut:]


def _pick(ends: Iterator[int], last: bool) -> int | None:
    """The first of ``ends``, or the last; None if there are none."""
    picked = None
    for end in ends:
        picked = end
        if not last:
            break
    return picked


def _compile(pattern: str) -> _Glob:
    """Read a shell pattern as BuildKit's convertShellPatternToRegex does; its errors are BuildKit's."""
    try:
        return _Glob(_tokens(pattern))
    except _LexError as err:
        raise _LexError(f"invalid pattern ({pattern}) in substitution: {err}") from None


def _tokens(pattern: str) -> list[str | int]:
    # A fresh Go scanner reads the pattern, so a leading byte-order mark is dropped here too.
    text = pattern[1:] if pattern.startswith(_BOM) else pattern
    if not any(wildcard in text for wildcard in "*?\\"):
        return list(text)
    tokens: list[str | int] = []
    i = 0
    while i < len(text):
        ch = text[i]
        i += 1
        if ch == "*":
            tokens.append(_STAR)
        elif ch == "?":
            tokens.append(_ANY)
        elif ch == "\\":
            if i < len(text) and text[i] in "}/":
                continue  # the escape kept ${...} open; it is not part of the pattern
            escaped = text[i] if i < len(text) else _EOF_TEXT
            i += 1
            if escaped not in ("*", "?", "\\"):
                raise _LexError(f"invalid escape '\\{escaped}'")
            tokens.append(escaped)
        else:
            tokens.append(ch)
    return tokens


def _bits(positions: Iterable[int], width: int) -> int:
    """The number with these bits set, built in one pass (or-ing shifted ones is quadratic in ``width``)."""
    data = bytearray(width // 8 + 1)
    for position in positions:
        data[position >> 3] |= 1 << (position & 7)
    return int.from_bytes(data, "little")


class _Glob:
    """A compiled shell pattern: ``?`` is one character and ``*`` any run, neither matching a newline (Go's ``.``).

    It is a bit-parallel automaton: state j (bit j) means "the first j non-star tokens matched"; a ``*`` after
    token j is a loop on state j. Leftmost-first matching (Go's, with ``*`` as ``.*`` or ``.*?``) of such a pattern
    always picks the leftmost start and then the longest end (greedy) or the shortest end (lazy), so those are
    what this computes, in time linear in the value.
    """

    def __init__(self, tokens: list[str | int]) -> None:
        self.tokens = tokens
        # With no wildcard the pattern is a plain string, and str.find/startswith do the work.
        self.literal: str | None = "".join(tokens) if all(isinstance(t, str) for t in tokens) else None  # type: ignore[arg-type]
        self._positions: dict[str, list[int]] = {}
        self._masks: dict[str, int] = {}
        loops: list[int] = []
        anys: list[int] = []
        count = 0
        if self.literal is None:
            for token in tokens:
                if token == _STAR:
                    loops.append(count)
                    continue
                count += 1
                if token == _ANY:
                    anys.append(count)
                else:
                    self._positions.setdefault(token, []).append(count)  # type: ignore[arg-type]
        self.states = count + 1
        self.accept = 1 << count
        self.loops = _bits(loops, self.states)
        self.any = _bits(anys, self.states)

    def _step(self, state: int, ch: str) -> int:
        mask = self._masks.get(ch)
        if mask is None:
            mask = _bits(self._positions.get(ch, ()), self.states) | (self.any if ch != "\n" else 0)
            self._masks[ch] = mask
        moved = (state << 1) & mask
        return moved | (state & self.loops) if ch != "\n" else moved

    def _check_work(self, value: str) -> None:
        # Each character costs a few operations on a number as wide as the pattern: bound the product.
        if self.states * len(value) > _MAX_MATCH_WORK:
            raise _LimitError(
                f"pattern of {len(self.tokens)} characters is too long to match against {len(value)} characters"
            )

    def ends(self, value: str, start: int) -> Iterator[int]:
        """Every end of a match that starts at ``start``, in increasing order."""
        if self.literal is not None:
            if value.startswith(self.literal, start):
                yield start + len(self.literal)
            return
        self._check_work(value)
        state = 1
        if state & self.accept:
            yield start
        for i in range(start, len(value)):
            state = self._step(state, value[i])
            if not state:
                return
            if state & self.accept:
                yield i + 1

    def searcher(self, value: str) -> Callable[[int], tuple[int, int] | None]:
        """A function giving the leftmost match in ``value`` that starts at or after a position, with its longest
        end (the ``/`` forms always use Go's greedy ``.*``)."""
        if self.literal is not None:
            literal = self.literal

            def find_literal(pos: int) -> tuple[int, int] | None:
                start = value.find(literal, pos)
                return None if start < 0 else (start, start + len(literal))

            return find_literal

        starts = self._match_starts(value)

        def find(pos: int) -> tuple[int, int] | None:
            i = bisect.bisect_left(starts, pos)
            if i == len(starts):
                return None
            start = starts[i]
            if not self.loops:  # no star: every match has the same length
                return start, start + self.states - 1
            return start, _pick(self.ends(value, start), True) or start

        return find

    def _match_starts(self, value: str) -> list[int]:
        """Every position where some match starts: the reversed pattern run unanchored over the reversed value."""
        self._check_work(value)
        backwards = _Glob(self.tokens[::-1])
        found = [len(value)] if backwards.accept == 1 else []
        state = 1
        for k, ch in enumerate(reversed(value), 1):
            state = backwards._step(state, ch) | 1
            if state & backwards.accept:
                found.append(len(value) - k)
        found.reverse()
        return found
