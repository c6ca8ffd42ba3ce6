"""The word lexer behaves as BuildKit's ``frontend/dockerfile/shell``: each case is named after the Dockerfile
reference rule ("Environment replacement") or the BuildKit test (lex_test.go, envVarTest, wordsTest) it checks."""

from __future__ import annotations

import dataclasses
import random
import re
import time

import pytest

from builder.errors import DockerfileError
from builder.frontend import shell
from builder.frontend.shell import MAX_NESTING, MAX_WORD_CHARS, Expansion, Lexer

# envVarTest's environment, plus values for the pattern forms.
ENV = {
    "PWD": "/home",
    "SHELL": "bash",
    "KOREAN": "한국어",
    "NULL": "",
    "FILE": "archive.tar.gz",
    "DIR": "/usr/local/bin",
    "MULTI": "one\ntwo",
    "GLOB": "*.",
    "ZERO": "$0",
    "BS": "a\\",
}
P = pytest.param
EOF_RUNE = "\ufffd"  # what Go prints for a character missing at the end


def value(word: str, env: dict[str, str] | None = None, **options: object) -> str:
    return Lexer(**options).expand(word, ENV if env is None else env).value  # type: ignore[arg-type]


def error(word: str, env: dict[str, str] | None = None, **options: object) -> str:
    with pytest.raises(DockerfileError) as caught:
        Lexer(**options).expand(word, ENV if env is None else env)  # type: ignore[arg-type]
    return str(caught.value)


# --- values -------------------------------------------------------------------------------------------------------

VALUES = [
    # $V and ${V}
    P("hello", "hello", id="plain-word"),
    P("he$PWD", "he/home", id="dollar-name"),
    P("he${PWD}xx", "he/homexx", id="dollar-braces"),
    P("he${hi}xx", "hexx", id="unset-is-empty"),
    P("he$hi", "he", id="unset-dollar-name-is-empty"),
    P("$PWD.x", "/home.x", id="name-ends-at-non-name-char"),
    P("he$pwd.", "he.", id="names-are-case-sensitive"),
    P("$.", "$.", id="dollar-before-non-name-char-stays"),
    P("he$.x", "he$.x", id="dollar-before-dot-stays"),
    P("a$", "a$", id="dollar-at-end-stays"),
    P("a $ b", "a $ b", id="dollar-before-space-stays"),
    P("$KOREAN", "한국어", id="unicode-value"),
    P("안녕$KOREAN", "안녕한국어", id="unicode-text-and-value"),
    P("$KOREAN한", "", id="unicode-letters-continue-a-name"),
    P("${aaa}}", "}", id="extra-closing-brace-is-text"),
    P("${PWD}${SHELL}", "/homebash", id="adjacent-references"),
    # positional parameters are names of digits, never set in a Dockerfile
    P("he$1x", "hex", id="positional-digit-unset"),
    P("$999aaa", "aaa", id="positional-all-digits-are-the-name"),
    P("${999:-bbb}aaa", "bbbaaa", id="positional-default"),
    P("$001aaa", "aaa", id="positional-leading-zeros"),
    P("${001:+bbb}aaa", "aaa", id="positional-alternate"),
    P("$@@@", "@@", id="special-param-is-one-char"),
    # ${V:-word} and ${V-word}
    P("${PWD:-x}", "/home", id="default-if-unset-or-empty-set"),
    P("${NULL:-x}", "x", id="default-if-unset-or-empty-empty"),
    P("${XXX:-x}", "x", id="default-if-unset-or-empty-unset"),
    P("${PWD-x}", "/home", id="default-if-unset-set"),
    P("${NULL-x}", "", id="default-if-unset-empty"),
    P("${XXX-x}", "x", id="default-if-unset-unset"),
    P("he${XXX:-$PWD}xx", "he/homexx", id="default-word-expands"),
    P("he${XXX:-${PWD:-yyy}}xx", "he/homexx", id="default-nested-set"),
    P("he${XXX:-${YYY:-yyy}}xx", "heyyyxx", id="default-nested-unset"),
    P("${aaa:-bbb}}", "bbb}", id="default-then-extra-brace"),
    P("${aaa:-bbb {foo}", "bbb {foo", id="default-word-open-brace-is-text"),
    P(r"he${XXX:-\$PWD:}xx", "he$PWD:xx", id="default-word-escaped-dollar"),
    P(r"he${XXX:-\${PWD}z}xx", "he${PWDz}xx", id="default-word-escaped-dollar-brace"),
    P("${XXX:-'$PWD'}", "$PWD", id="default-word-single-quoted"),
    P('${XXX:-"a}b"}', "a}b", id="default-word-quoted-brace"),
    P("${XXX:-}", "", id="default-empty-word"),
    # ${V:+word} and ${V+word}
    P("${PWD:+x}", "x", id="alternate-if-set-and-not-empty-set"),
    P("${NULL:+x}", "", id="alternate-if-set-and-not-empty-empty"),
    P("${XXX:+x}", "", id="alternate-if-set-and-not-empty-unset"),
    P("${PWD+x}", "x", id="alternate-if-set-set"),
    P("${NULL+x}", "x", id="alternate-if-set-empty"),
    P("${XXX+x}", "", id="alternate-if-set-unset"),
    P("he${PWD:+${SHELL}}xx", "hebashxx", id="alternate-nested"),
    P("he${PWD:+${PWD}:}xx", "he/home:xx", id="alternate-word-with-colon"),
    # ${V:?msg} and ${V?msg} when they pass
    P("${PWD:?m}", "/home", id="required-set"),
    P("he${PWD?}", "he/home", id="required-if-unset-set"),
    P("he${NULL?}", "he", id="required-if-unset-empty-passes"),
    # ${V#p} ${V##p} ${V%p} ${V%%p}
    P("${FILE#*.}", "tar.gz", id="trim-shortest-prefix"),
    P("${FILE##*.}", "gz", id="trim-longest-prefix"),
    P("${FILE%.*}", "archive.tar", id="trim-shortest-suffix"),
    P("${FILE%%.*}", "archive", id="trim-longest-suffix"),
    P("${DIR##*/}", "bin", id="trim-longest-prefix-basename"),
    P("${DIR%/*}", "/usr/local", id="trim-shortest-suffix-dirname"),
    P("${FILE#x*}", "archive.tar.gz", id="trim-prefix-no-match"),
    P("${FILE%x}", "archive.tar.gz", id="trim-suffix-no-match"),
    P("${FILE#???}", "hive.tar.gz", id="trim-prefix-question-marks"),
    P("${FILE%??}", "archive.tar.", id="trim-suffix-question-marks"),
    P("${FILE#$GLOB}", "tar.gz", id="trim-pattern-from-variable-is-a-pattern"),
    P('${FILE#"*."}', "tar.gz", id="trim-quoted-pattern-is-still-a-pattern"),
    P("${FILE:#*.}", "tar.gz", id="trim-colon-before-hash-ignored"),
    P("${XXX#a}", "", id="trim-unset-is-empty"),
    P("${MULTI##*}", "\ntwo", id="trim-star-stops-at-newline"),
    P("${MULTI%%*}", "one\n", id="trim-suffix-star-stops-at-newline"),
    P("${KOREAN#한}", "국어", id="trim-unicode"),
    # ${V/p/r} and ${V//p/r}
    P("${FILE/a/A}", "Archive.tar.gz", id="replace-first"),
    P("${FILE//a/A}", "Archive.tAr.gz", id="replace-all"),
    P("${FILE/a*./X}", "Xgz", id="replace-star-is-greedy"),
    P("${FILE//?/x}", "x" * 14, id="replace-all-question-mark"),
    P("${FILE/zz/y}", "archive.tar.gz", id="replace-no-match"),
    P("${XXX/a/b}", "", id="replace-unset-is-empty"),
    P(r"${DIR//\//}", "usrlocalbin", id="replace-all-escaped-slash-with-nothing"),
    P(r"${DIR//\//\/}", r"\/usr\/local\/bin", id="replace-all-escaped-slash"),
    P(r"${DIR/\//-}", "-usr/local/bin", id="replace-first-escaped-slash"),
    P("${FILE//a/<$ZERO>}", "<a>rchive.t<a>r.gz", id="replace-all-replacement-is-a-go-template"),
    P("${FILE/a/<$ZERO>}", "<$0>rchive.tar.gz", id="replace-first-replacement-is-literal"),
    P("${SHELL//$NULL/-}", "-b-a-s-h-", id="replace-all-empty-pattern"),
    P("${SHELL//*/-}", "-", id="replace-all-empty-match-after-match-skipped"),
    P("${MULTI//*/x}", "x\nx", id="replace-all-star-stops-at-newline"),
    P("${KOREAN//국/-}", "한-어", id="replace-unicode"),
    # quotes
    P("he'll'o", "hello", id="quotes-concatenate"),
    P("'$PWD'", "$PWD", id="single-quotes-literal"),
    P(r"'\$PWD'", r"\$PWD", id="single-quotes-keep-backslash"),
    P(r"'hello\'", "hello\\", id="single-quotes-no-escape-inside"),
    P("'he${XX}'", "he${XX}", id="single-quotes-keep-braces"),
    P("'\"hello\"'", '"hello"', id="single-quotes-keep-double-quotes"),
    P('"he${PWD}"', "he/home", id="double-quotes-expand"),
    P("\"he'$PWD'\"", "he'/home'", id="double-quotes-keep-single-quotes"),
    P("\"''\"", "''", id="double-quotes-around-empty-single-quotes"),
    P(r'"he\$PWD"', "he$PWD", id="double-quotes-escape-dollar"),
    P(r'"he\\$PWD"', "he\\/home", id="double-quotes-escape-backslash"),
    P(r'"a\"b"', 'a"b', id="double-quotes-escape-quote"),
    P(r'"abc\tdef"', r"abc\tdef", id="double-quotes-keep-other-escapes"),
    P('"안녕\'하세요"', "안녕'하세요", id="double-quotes-unicode"),
    # the escape token outside quotes
    P(r"abc\tdef", "abctdef", id="escape-any-char"),
    P(r"he\'llo", "he'llo", id="escape-single-quote"),
    P(r"he\$PWD", "he$PWD", id="escape-dollar"),
    P(r"he\\$PWD", "he\\/home", id="escape-backslash"),
    P(r"\${}aaa", "${}aaa", id="escape-dollar-brace"),
    P("hello\\", "hello", id="escape-at-end-dropped"),
    P(r"hello\\", "hello\\", id="escaped-backslash-at-end"),
    P(r"hello\ there", "hello there", id="escape-space"),
    # Go's text/scanner
    P("\ufeff$PWD", "/home", id="byte-order-mark-at-start-dropped"),
    P("a\ufeff", "a\ufeff", id="byte-order-mark-elsewhere-kept"),
]


@pytest.mark.parametrize(("word", "expected"), VALUES)
def test_value(word: str, expected: str) -> None:
    assert value(word) == expected


SPECIAL_PARAMS = ["@", "*", "#", "?", "-", "$", "!", "0"]
SPECIAL_FORMS = [("${}", ""), ("$", ""), ("${:-bbb}", "bbb"), ("${:+bbb}", ""), ("${}aaa", "aaa")]


@pytest.mark.parametrize("param", SPECIAL_PARAMS, ids=lambda param: f"special-param-{param}")
@pytest.mark.parametrize(("form", "expected"), SPECIAL_FORMS, ids=["braces", "bare", "default", "alternate", "text"])
def test_special_parameters_are_never_set(param: str, form: str, expected: str) -> None:
    word = form.replace("{", "{" + param, 1) if "{" in form else form + param
    assert value(word) == expected


def test_special_parameter_is_looked_up_like_a_name() -> None:
    assert Lexer().expand("${#}-$?", {"#": "3", "?": "0"}) == Expansion("3-0", ("3-0",), frozenset("#?"), frozenset())


BACKTICK = [
    P("he`$PWD", "he$PWD", id="escape-backtick-dollar"),
    P(r"C:\dir\$PWD", r"C:\dir\/home", id="escape-backtick-backslash-is-text"),
    P('"a`"b"', 'a"b', id="escape-backtick-in-double-quotes"),
    P(r'"a\"', "a\\", id="escape-backtick-backslash-does-not-escape-quote"),
    P("hello`", "hello", id="escape-backtick-at-end-dropped"),
    P("a``b", "a`b", id="escape-backtick-escaped-backtick"),
    P("he`'llo", "he'llo", id="escape-backtick-single-quote"),
    P("${XXX:-`}}", "}", id="escape-backtick-brace-in-default"),
    P("${FILE#*`.}", "archive.tar.gz", id="escape-backtick-kept-in-pattern-as-text"),
]


@pytest.mark.parametrize(("word", "expected"), BACKTICK)
def test_escape_backtick(word: str, expected: str) -> None:
    assert value(word, escape="`") == expected


# --- errors -------------------------------------------------------------------------------------------------------

ERRORS = [
    P("${}", "syntax error: bad substitution", id="bad-substitution-empty"),
    P("he${}xx", "syntax error: bad substitution", id="bad-substitution-empty-in-text"),
    P("${:}", "syntax error: bad substitution", id="bad-substitution-colon"),
    P("${:-bbb}", "syntax error: bad substitution", id="bad-substitution-no-name-default"),
    P("${:+bbb}", "syntax error: bad substitution", id="bad-substitution-no-name-alternate"),
    P("${{aaa}", "syntax error: bad substitution", id="bad-substitution-double-brace"),
    P("${{aaa:-bbb}", "syntax error: bad substitution", id="bad-substitution-double-brace-default"),
    P("he${", "syntax error: missing '}'", id="missing-brace-after-open"),
    P("${aaa:-bbb", "syntax error: missing '}'", id="missing-brace-in-default"),
    P("${aaa:-bbb ${foo}", "syntax error: missing '}'", id="missing-brace-nested"),
    P("${aaa:", "syntax error: missing '}'", id="missing-brace-after-colon"),
    P("${XXX:-'abc}", "syntax error: missing '}'", id="missing-brace-unterminated-quote-inside"),
    P("${FOO/a/b", "syntax error: missing '}'", id="missing-brace-in-replace"),
    P("${FOO//ww}", "syntax error: missing '/' in ${}", id="missing-slash-in-replace"),
    P("${FOO//}", "syntax error: missing '/' in ${}", id="missing-slash-empty-replace"),
    P("he${PWD", f"unsupported modifier ({EOF_RUNE}) in substitution", id="unterminated-name-is-unsupported-modifier"),
    P("he${.}", "unsupported modifier (.) in substitution", id="unsupported-modifier-non-name"),
    P("he${XXX:YYY}", "unsupported modifier (:Y) in substitution", id="unsupported-modifier-colon-letter"),
    P("${FOO=aaa}", "unsupported modifier (=) in substitution", id="unsupported-modifier-assign-default"),
    P("he${PWD:=000}xx", "unsupported modifier (:=) in substitution", id="unsupported-modifier-assign-default-colon"),
    P("he${XXX?}", "XXX: is not allowed to be unset", id="required-if-unset-unset"),
    P("he${XXX:?}", "XXX: is not allowed to be unset", id="required-unset"),
    P("he${NULL:?}", "NULL: is not allowed to be empty", id="required-empty"),
    P("${XXX:?set XXX}", "XXX: set XXX", id="required-custom-message"),
    P("${NULL:?need it}", "NULL: need it", id="required-custom-message-empty"),
    P("${XXX?in $PWD}", "XXX: in /home", id="required-custom-message-expanded"),
    P("he'llo", "unexpected end of statement while looking for matching single-quote", id="unterminated-single"),
    P('"hello', "unexpected end of statement while looking for matching double-quote", id="unterminated-double"),
    P(r'"hello\"', "looking for matching double-quote", id="unterminated-double-escaped-quote"),
    P(r"he\\'llo", "looking for matching single-quote", id="unterminated-single-after-escaped-backslash"),
    P("안'녕하세요", "looking for matching single-quote", id="unterminated-single-unicode"),
    P(r"${FILE#\x}", r"invalid pattern (\x) in substitution: invalid escape '\x'", id="invalid-pattern-escape"),
    P(r"${FILE/\q/x}", r"invalid pattern (\q) in substitution: invalid escape '\q'", id="invalid-replace-pattern"),
    P(
        "${FILE#$BS}",
        f"invalid pattern (a\\) in substitution: invalid escape '\\{EOF_RUNE}'",
        id="pattern-ends-in-escape",
    ),
    P("${FILE%$BS}", r"invalid pattern (\a) in substitution: invalid escape '\a'", id="suffix-pattern-shown-reversed"),
]


@pytest.mark.parametrize(("word", "fragment"), ERRORS)
def test_error(word: str, fragment: str) -> None:
    assert fragment in error(word)


def test_error_names_the_word_as_go_quotes_it() -> None:
    assert error("tab\t${", {}) == "failed to process \"tab\\t${\": syntax error: missing '}'"
    assert error('"안녕\x7f', {}).startswith('failed to process "\\"안녕\\x7f": ')


def test_error_is_a_dockerfile_error_without_location() -> None:
    with pytest.raises(DockerfileError) as caught:
        Lexer().expand("${XXX:?}", {})
    assert caught.value.line == 0 and caught.value.path == ""


# --- words (ProcessWords) -----------------------------------------------------------------------------------------

WORDS = [
    P({}, "hello", ["hello"], id="words-one"),
    P({}, "hello there", ["hello", "there"], id="words-split-on-spaces"),
    P({}, "  a \t b\n", ["a", "b"], id="words-trimmed"),
    P({}, "hello${hi}bye", ["hellobye"], id="words-unset-joins"),
    P({"hi": "hi"}, "hello${hi}bye", ["hellohibye"], id="words-set-joins"),
    P({"space": "abc  def"}, "hello${space}bye", ["helloabc", "defbye"], id="words-expanded-value-splits"),
    P({"space": "abc  def"}, 'hello"${space}"bye', ["helloabc  defbye"], id="words-quoted-expansion-kept"),
    P({"space": "abc  def"}, 'hello "${space}"bye', ["hello", "abc  defbye"], id="words-quoted-expansion-after-space"),
    P({"leading": "  ab c"}, "hello${leading}def", ["hello", "ab", "cdef"], id="words-leading-spaces-split"),
    P({"leading": "  ab c"}, 'hello"${leading}" def', ["hello  ab c", "def"], id="words-leading-spaces-quoted"),
    P({"trailing": "ab c   "}, "hello${trailing}d", ["helloab", "c", "d"], id="words-trailing-spaces-split"),
    P({"trailing": "ab c   "}, 'hello"${trailing}"d', ["helloab c   d"], id="words-trailing-spaces-quoted"),
    P({"trailing": "ab c   "}, 'hel"lo${trailing}"', ["helloab c   "], id="words-quote-mid-word"),
    P({}, 'hello" there  "', ["hello there  "], id="words-quoted-spaces-kept"),
    P({}, r"hello\ there", ["hello there"], id="words-escaped-space-kept"),
    P({}, r"hello\" there", ['hello"', "there"], id="words-escaped-quote"),
    P({}, r'hello"\\there"', ["hello\\there"], id="words-double-quoted-escaped-backslash"),
    P({}, r"hello'\\there'", ["hello\\\\there"], id="words-single-quoted-backslashes"),
    P({}, "hello'$there'", ["hello$there"], id="words-single-quoted-dollar"),
    P({}, '""', [], id="words-empty-quotes-alone-yield-nothing"),
    P({}, "''", [], id="words-empty-single-quotes-alone-yield-nothing"),
    P({}, 'a ""', ["a"], id="words-empty-quotes-after-word-yield-nothing"),
    P({}, '"" a', ["a"], id="words-empty-quotes-before-word"),
    P({}, '"a b"c', ["a bc"], id="words-quoted-then-text-one-word"),
    P({}, "$XXX", [], id="words-empty-expansion-yields-nothing"),
    P({}, "'a b' 'c'", ["a b", "c"], id="words-single-quotes-keep-spaces"),
    P({}, '${XXX:-"a b"}', ["a", "b"], id="words-quotes-inside-braces-do-not-protect"),
    P({"V": "a\u3000b"}, "$V", ["a", "b"], id="words-unicode-space-splits"),
    P({"V": "a\x1fb"}, "$V", ["a\x1fb"], id="words-unit-separator-is-not-a-space-in-go"),
    P({}, "a\u2003b c", ["a", "b", "c"], id="words-plain-unicode-space-splits"),
    P({"K": "한국 어"}, "$K", ["한국", "어"], id="words-unicode-value-splits"),
]


@pytest.mark.parametrize(("env", "word", "expected"), WORDS)
def test_words(env: dict[str, str], word: str, expected: list[str]) -> None:
    assert Lexer().expand_words(word, env) == expected


# --- lex_test.go: TestProcessWithMatches ----------------------------------------------------------------------------

XY = {"FOO": "xxx", "BAR": ""}
MATCHES = [
    P("x", {"DUMMY": "dummy"}, "x", set(), set(), id="matches-no-reference"),
    P("x ${UNUSED}", {"DUMMY": "dummy"}, "x ", set(), {"UNUSED"}, id="matches-unset"),
    P("x ${FOO}", {"FOO": "y"}, "x y", {"FOO"}, set(), id="matches-set"),
    P("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", XY, "xxx  ccc", {"FOO", "BAR"}, {"BAZ"}, id="matches-default-if-unset"),
    P("${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}", XY, "xxx bbb ccc", {"FOO", "BAR"}, {"BAZ"}, id="matches-default"),
    P("${FOO:-}", XY, "xxx", {"FOO"}, set(), id="matches-default-empty-word-set"),
    P("${FOO:-}", {}, "", set(), {"FOO"}, id="matches-default-empty-word-unset"),
    P("${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}", XY, "aaa bbb ", {"FOO", "BAR"}, {"BAZ"}, id="matches-alternate-if-set"),
    P("${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}", XY, "aaa  ", {"FOO", "BAR"}, {"BAZ"}, id="matches-alternate"),
    P("${FOO?aaa}", XY, "xxx", {"FOO"}, set(), id="matches-required-if-unset-set"),
    P("${BAR?bbb}", XY, "", {"BAR"}, set(), id="matches-required-if-unset-empty"),
    P("${BAZ?ccc}", XY, None, None, None, id="matches-required-if-unset-unset"),
    P("${FOO:?aaa}", XY, "xxx", {"FOO"}, set(), id="matches-required-set"),
    P("${BAR:?bbb}", XY, None, None, None, id="matches-required-empty"),
    P("${BAZ:?ccc}", XY, None, None, None, id="matches-required-unset"),
    P("${BAZ:?}", XY, None, None, None, id="matches-required-unset-no-message"),
    P("${FOO=aaa}", XY, None, None, None, id="matches-assign-unsupported"),
    P("${FOO=:aaa}", XY, None, None, None, id="matches-assign-colon-unsupported"),
    P("${FOO=}", {}, None, None, None, id="matches-assign-empty-unsupported"),
    P(r"${FOO#()[]{\}^$.\*\?|\\}", {"FOO": "()[]{}^$.*?|\\x"}, "x", {"FOO"}, set(), id="matches-regex-chars-literal"),
    P(r"${FOO%%\**}", {"FOO": "xx**"}, "xx", {"FOO"}, set(), id="matches-trim-longest-suffix-escaped-star"),
    P("${FOO#*x*y}", {"FOO": "xxyy"}, "y", {"FOO"}, set(), id="matches-trim-shortest-prefix-two-stars"),
    P("${FOO#*}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set(), id="matches-trim-shortest-prefix-star-is-empty"),
    P("${FOO#$BAR}", {"FOO": "xxyy", "BAR": "x"}, "xyy", {"FOO", "BAR"}, set(), id="matches-trim-pattern-variable"),
    P("${FOO#$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy", {"FOO", "BAR"}, set(), id="matches-trim-empty-pattern-var"),
    P("${FOO#}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set(), id="matches-trim-shortest-prefix-empty"),
    P("${FOO##*x}", {"FOO": "xxyy"}, "yy", {"FOO"}, set(), id="matches-trim-longest-prefix"),
    P("${FOO##}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set(), id="matches-trim-longest-prefix-empty"),
    P(r"${FOO#?\?}", {"FOO": "???y"}, "?y", {"FOO"}, set(), id="matches-trim-escaped-question-mark"),
    P("${ABC:-.}${FOO%x}${ABC:-.}", {"FOO": "xxyy"}, ".xxyy.", {"FOO"}, {"ABC"}, id="matches-trim-suffix-no-match"),
    P(r"${FOO%%\**\*}", {"FOO": "a***yy*"}, "a", {"FOO"}, set(), id="matches-trim-longest-suffix-escaped-stars"),
    P("${FOO%}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set(), id="matches-trim-shortest-suffix-empty"),
    P("${FOO%%$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy", {"FOO", "BAR"}, set(), id="matches-trim-suffix-empty-var"),
    P(
        "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
        {"FOO": "/foo*/*/*.txt", "NEEDLE": "\\*/"},
        "/foo.*/*.txt - /foo..*.txt",
        {"FOO", "NEEDLE"},
        set(),
        id="matches-replace-escaped-wildcard",
    ),
    P(
        "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
        {"FOO": "/tmp/tmp/bar.txt", "NEEDLE": "/tmp"},
        "/tmp/bar.txt - /bar.txt",
        {"FOO", "NEEDLE"},
        set(),
        id="matches-replace-slash-in-pattern-variable",
    ),
    P(
        "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
        {"FOO": "/a/foo/b/c.txt", "NEEDLE": "/?/", "REPLACEMENT": "/"},
        "/foo/b/c.txt - /foo/c.txt",
        {"FOO", "NEEDLE", "REPLACEMENT"},
        set(),
        id="matches-replace-question-mark",
    ),
    P(
        "${FOO/$NEEDLE/$REPLACEMENT}",
        {"FOO": "http://google.de", "NEEDLE": "http://", "REPLACEMENT": "https://"},
        "https://google.de",
        {"FOO", "NEEDLE", "REPLACEMENT"},
        set(),
        id="matches-replace-url-scheme",
    ),
    P(
        r"${FOO//\//\/}",
        {"FOO": "/tmp/foo.txt"},
        r"\/tmp\/foo.txt",
        {"FOO"},
        set(),
        id="matches-replace-all-escaped-sep",
    ),
    P(
        "${FOO/$BAR/ww}",
        {"FOO": "xxyy", "BAR": ""},
        "wwxxyy",
        {"FOO", "BAR"},
        set(),
        id="matches-replace-empty-pattern",
    ),
    P("${FOO//ww}", {"FOO": "xxyy"}, None, None, None, id="matches-replace-missing-slash"),
    P("${FOO//}", {"FOO": "xxyy"}, None, None, None, id="matches-replace-empty"),
    P("${FOO///}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set(), id="matches-replace-all-empty-pattern-set"),
    P("${FOO///}", {}, "", set(), {"FOO"}, id="matches-replace-all-empty-pattern-unset"),
    # beyond lex_test: what is looked up, and when
    P("${XXX:+$PWD}", {"PWD": "/"}, "", {"PWD"}, {"XXX"}, id="matches-unused-word-still-looked-up"),
    P("${PWD:-$XXX}", {"PWD": "/"}, "/", {"PWD"}, {"XXX"}, id="matches-unused-default-still-looked-up"),
    P("'$PWD' \\$XXX", {"PWD": "/"}, "$PWD $XXX", set(), set(), id="matches-quoted-and-escaped-not-looked-up"),
    P('"$PWD"$PWD', {"PWD": "/"}, "//", {"PWD"}, set(), id="matches-each-name-once"),
]


@pytest.mark.parametrize(("word", "env", "expected", "matched", "unmatched"), MATCHES)
def test_process_with_matches(
    word: str, env: dict[str, str], expected: str | None, matched: set[str] | None, unmatched: set[str] | None
) -> None:
    if expected is None:
        error(word, env)
        return
    result = Lexer().expand(word, env)
    assert (result.value, result.matched, result.unmatched) == (expected, matched, unmatched)


# --- lex_test.go: TestShellParserMandatoryEnvVars and TestProcessWithMatchesPlatform --------------------------------

SET, EMPTY, UNSET = {"VAR": "plain", "ARG": "x"}, {"VAR": "", "ARG": "x"}, {"ARG": "x"}
MANDATORY = [
    P("${VAR:?message here$ARG}", SET, "plain", id="mandatory-not-empty-set"),
    P("${VAR:?message here$ARG}", EMPTY, None, id="mandatory-not-empty-empty"),
    P("${VAR:?message here$ARG}", UNSET, None, id="mandatory-not-empty-unset"),
    P("${VAR?message here$ARG}", SET, "plain", id="mandatory-set-set"),
    P("${VAR?message here$ARG}", EMPTY, "", id="mandatory-set-empty"),
    P("${VAR?message here$ARG}", UNSET, None, id="mandatory-set-unset"),
]


@pytest.mark.parametrize(("word", "env", "expected"), MANDATORY)
def test_mandatory_env_vars(word: str, env: dict[str, str], expected: str | None) -> None:
    if expected is None:
        assert "VAR: message herex" in error(word, env)
    else:
        assert value(word, env) == expected


RELEASE = "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz"
PLATFORM = {"VERSION": "v1.2.3", "TARGETOS": "linux"}
PLATFORMS = [
    P({"TARGETARCH": "arm", "TARGETVARIANT": "v7"}, "something-v1.2.3.linux-arm-v7.tar.gz", id="platform-variant"),
    P({"TARGETARCH": "arm64", "TARGETVARIANT": ""}, "something-v1.2.3.linux-arm64.tar.gz", id="platform-empty-variant"),
    P({"TARGETARCH": "arm64"}, "something-v1.2.3.linux-arm64.tar.gz", id="platform-no-variant"),
]


@pytest.mark.parametrize(("extra", "expected"), PLATFORMS)
def test_process_with_matches_platform(extra: dict[str, str], expected: str) -> None:
    assert value(RELEASE, {**PLATFORM, **extra}) == expected


# --- options --------------------------------------------------------------------------------------------------------

MODES = [
    # skip_unset: heredoc delimiter detection must see unset references as written
    P("$XXX", {"skip_unset": True}, "$XXX", id="skip-unset-dollar-name"),
    P("${XXX}", {"skip_unset": True}, "${XXX}", id="skip-unset-braces"),
    P("${XXX:-a}", {"skip_unset": True}, "${XXX:-a}", id="skip-unset-default"),
    P("${XXX-$YYY}", {"skip_unset": True}, "${XXX-$YYY}", id="skip-unset-nested"),
    P("${XXX:?}", {"skip_unset": True}, "${XXX:?}", id="skip-unset-required-no-error"),
    P("${XXX:=x}", {"skip_unset": True}, "${XXX:=x}", id="skip-unset-unsupported-modifier-no-error"),
    P("${XXX#*.}", {"skip_unset": True}, "${XXX#*.}", id="skip-unset-trim"),
    P("${XXX/a/b}", {"skip_unset": True}, "${XXX/a/b}", id="skip-unset-replace"),
    P("${XXX//a/b}", {"skip_unset": True}, "${XXX/a/b}", id="skip-unset-replace-all-loses-a-slash"),
    P("${XXX:-'a'}", {"skip_unset": True}, "${XXX:-a}", id="skip-unset-word-is-processed"),
    P("$PWD ${NULL:-d}", {"skip_unset": True}, "/home d", id="skip-unset-set-still-expands"),
    P("\"$XXX\" '$PWD'", {"skip_unset": True, "raw_quotes": True}, "\"$XXX\" '$PWD'", id="skip-unset-raw-quotes"),
    # raw_quotes
    P('"a b"', {"raw_quotes": True}, '"a b"', id="raw-quotes-double"),
    P("'a'\"$PWD\"", {"raw_quotes": True}, "'a'\"/home\"", id="raw-quotes-both"),
    # raw_escapes
    P(r"a\ b", {"raw_escapes": True}, r"a\ b", id="raw-escapes-outside-quotes"),
    P("hello\\", {"raw_escapes": True}, "hello\\", id="raw-escapes-at-end-kept"),
    P(r'"a\"b"', {"raw_escapes": True}, r"a\"b", id="raw-escapes-in-double-quotes"),
    P(r'"a\tb"', {"raw_escapes": True}, r"a\\tb", id="raw-escapes-unescapable-in-double-quotes-doubled"),
    P(r"${XXX:-\a}", {"raw_escapes": True}, "a", id="raw-escapes-not-in-default-word"),
    P("a`$PWD", {"raw_escapes": True, "escape": "`"}, "a`$PWD", id="raw-escapes-backtick"),
    # skip_process_quotes
    P("'$PWD'", {"skip_process_quotes": True}, "'/home'", id="skip-process-quotes-single"),
    P('"a  b"', {"skip_process_quotes": True}, '"a  b"', id="skip-process-quotes-double"),
]


@pytest.mark.parametrize(("word", "options", "expected"), MODES)
def test_option(word: str, options: dict[str, object], expected: str) -> None:
    assert value(word, **options) == expected


def test_skip_unset_still_reports_unset_names() -> None:
    result = Lexer(skip_unset=True).expand("$XXX ${PWD}", ENV)
    assert (result.matched, result.unmatched) == ({"PWD"}, {"XXX"})


def test_raw_quotes_words_keep_the_quotes() -> None:
    assert Lexer(raw_quotes=True).expand_words('"a b" c', {}) == ['"a b"', "c"]


def test_skip_process_quotes_words_split_inside_quotes() -> None:
    assert Lexer(skip_process_quotes=True).expand_words('"a b"', {}) == ['"a', 'b"']


def test_expansion_and_lexer_are_frozen_values() -> None:
    result = Lexer().expand("$PWD", ENV)
    assert result == Expansion("/home", ("/home",), frozenset({"PWD"}), frozenset())
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.value = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Lexer().escape = "`"  # type: ignore[misc]
    with pytest.raises(ValueError):
        Lexer(escape="\\\\")


def test_convenience_functions_agree_with_expand() -> None:
    lexer = Lexer()
    assert lexer.expand_word("a $PWD", ENV) == "a /home"
    assert lexer.expand_words("a $PWD", ENV) == ["a", "/home"]


def test_plain_word_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_scan(*args: object) -> None:
        raise AssertionError("scanned")

    monkeypatch.setattr(shell, "_Scan", no_scan)
    assert Lexer().expand("  plain words  here ", ENV) == Expansion(
        "  plain words  here ", ("plain", "words", "here"), frozenset(), frozenset()
    )
    with pytest.raises(AssertionError):
        Lexer().expand("$PWD", ENV)


# --- bounds against hostile Dockerfiles -----------------------------------------------------------------------------


def nested(levels: int) -> str:
    return "${A:-" * levels + "x" + "}" * levels


def test_nesting_up_to_the_limit() -> None:
    assert value(nested(MAX_NESTING), {}) == "x"
    assert value('"${A:-' * MAX_NESTING + "x" + '}"' * MAX_NESTING, {}) == "x"


@pytest.mark.parametrize("levels", [MAX_NESTING + 1, 5000], ids=["nesting-one-too-deep", "nesting-far-too-deep"])
def test_nesting_beyond_the_limit(levels: int) -> None:
    assert "too deeply nested" in error(nested(levels), {})


def test_unterminated_deep_nesting_is_still_too_deep() -> None:
    assert "too deeply nested" in error("${A:-" * 100, {})


@pytest.mark.parametrize(
    ("word", "env"),
    [
        P("${A//a/$A$A$A}", {"A": "a" * 2000}, id="size-replace-all-growth"),
        P("$A" * 300, {"A": "a" * 4000}, id="size-many-references"),
        P("${A:-$B$B$B}", {"B": "b" * (MAX_WORD_CHARS // 2)}, id="size-default-word"),
        P('"$B$B$B"', {"B": "b" * (MAX_WORD_CHARS // 2)}, id="size-double-quoted"),
    ],
)
def test_expansion_size_is_bounded(word: str, env: dict[str, str]) -> None:
    assert "expansion is longer than" in error(word, env)


def test_size_bound_allows_a_long_value_to_pass_through() -> None:
    big = "b" * (MAX_WORD_CHARS + 10)
    assert value("${B}", {"B": big}) == big
    assert "expansion is longer than" in error("$B$B", {"B": big})


def test_pattern_work_is_bounded() -> None:
    env = {"A": "a" * MAX_WORD_CHARS, "P": "?" * 20000 + "*"}
    assert "too long to match" in error("${A//$P/x}", env)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        P("${A##*a*a*a*b}", "a" * 20000, id="hostile-trim-many-stars"),
        P("${A%%*a*a*a*b}", "a" * 20000, id="hostile-trim-suffix-many-stars"),
        P("${A//*a*a*a*b/x}", "a" * 20000, id="hostile-replace-many-stars"),
        P("${A//a*a/x}", "x", id="hostile-replace-greedy"),
    ],
)
def test_patterns_run_in_linear_time(word: str, expected: str) -> None:
    # A backtracking regex needs about 20000**4 steps for these; Go's regexp and this automaton need 20000.
    started = time.monotonic()
    assert value(word, {"A": "a" * 20000}) == expected
    assert time.monotonic() - started < 5


# --- Go's regexp semantics, checked against Python's re on small cases ------------------------------------------------


def go_regex(pattern: str, greedy: bool, anchored: bool) -> re.Pattern[str] | None:
    """BuildKit's convertShellPatternToRegex, for Python's re, which matches leftmost-first as Go does."""
    out, i = "^" if anchored else "", 0
    while i < len(pattern):
        ch, i = pattern[i], i + 1
        if ch in "*?":
            out += (".*" if greedy else ".*?") if ch == "*" else "."
        elif ch == "\\" and i < len(pattern) and pattern[i] in "}/":
            continue
        elif ch == "\\":
            if i >= len(pattern) or pattern[i] not in "*?\\":
                return None
            out, i = out + re.escape(pattern[i]), i + 1
        else:
            out += re.escape(ch)
    return re.compile(out)


def go_trim_prefix(pattern: str, text: str, greedy: bool) -> str | None:
    regex = go_regex(pattern, greedy, True)
    if regex is None:
        return None
    found = regex.search(text)
    return text[found.end() :] if found else text


def go_reverse_pattern(pattern: str) -> str:
    units, i = [], 0
    while i < len(pattern):
        step = 2 if pattern[i] == "\\" and i + 1 < len(pattern) else 1
        units.append(pattern[i : i + step])
        i += step
    return "".join(reversed(units))


def go_replace_all(regex: re.Pattern[str], text: str, template: str) -> str:
    """Go's Regexp.ReplaceAllString, with its Expand for a regexp without groups."""

    def expand(match: str) -> str:
        def ref(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name = m.group(1) or m.group(2)
            return match if name == "0" else ""

        return re.sub(r"\$\$|\$\{(\w+)\}|\$(\w+)", ref, template)

    out, last, pos = [], 0, 0
    while pos <= len(text):
        found = regex.search(text, pos)
        if found is None:
            break
        out.append(text[last : found.start()])
        if found.end() > last or found.start() == 0:
            out.append(expand(found.group()))
        last = found.end()
        pos = pos + 1 if found.end() == pos else found.end()
    out.append(text[last:])
    return "".join(out)


def go_expected(form: str, text: str, pattern: str, replacement: str) -> str | None:
    if form in ("#", "##"):
        return go_trim_prefix(pattern, text, form == "##")
    if form in ("%", "%%"):
        trimmed = go_trim_prefix(go_reverse_pattern(pattern), text[::-1], form == "%%")
        return None if trimmed is None else trimmed[::-1]
    regex = go_regex(pattern, True, False)
    if regex is None:
        return None
    if form == "/":
        found = regex.search(text)
        return text[: found.start()] + replacement + text[found.end() :] if found else text
    return go_replace_all(regex, text, replacement)


@pytest.mark.parametrize("seed", range(6), ids=lambda seed: f"go-leftmost-first-seed-{seed}")
def test_patterns_match_as_go_regexp_does(seed: int) -> None:
    rng = random.Random(seed)
    pieces = ["a", "b", "c", "*", "?", "**", "\n", r"\*", r"\?", "\\\\", r"\}", r"\/", r"\x"]
    for _ in range(300):
        text = "".join(rng.choice("ab\n*?") for _ in range(rng.randint(0, 12)))
        pattern = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
        replacement = rng.choice(["", "X", "$0", "<${0}>", "$1", "$$", "$", "${0"])
        env = {"V": text, "P": pattern, "R": replacement}
        for form in ("#", "##", "%", "%%", "/", "//"):
            word = f"${{V{form}$P/$R}}" if "/" in form else f"${{V{form}$P}}"
            expected = go_expected(form, text, pattern, replacement)
            try:
                got: str | None = Lexer().expand_word(word, env)
            except DockerfileError:
                got = None
            assert got == expected, (form, text, pattern, replacement)


# --- robustness ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4), ids=lambda seed: f"fuzz-only-dockerfile-errors-seed-{seed}")
def test_arbitrary_input_raises_only_dockerfile_errors(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = [
        "$",
        "{",
        "}",
        ":",
        "-",
        "+",
        "?",
        "=",
        "#",
        "%",
        "/",
        "'",
        '"',
        "\\",
        "`",
        "*",
        "a",
        "A",
        " ",
        "0",
        "@",
    ]
    env = {"a": "x y", "A": "", "0": "*"}
    outcomes = set()
    for _ in range(2000):
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        lexer = Lexer(escape=rng.choice("\\`"), raw_quotes=rng.random() < 0.2, skip_unset=rng.random() < 0.2)
        try:
            result = lexer.expand(word, env)
        except DockerfileError as err:
            assert str(err).startswith("failed to process ")
            outcomes.add("error")
        else:
            assert isinstance(result.value, str) and all(result.words)
            outcomes.add("value")
    assert outcomes == {"error", "value"}
