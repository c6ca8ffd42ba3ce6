"""Build-context selection behaves as Docker with BuildKit: ignore-file parsing, matching, exceptions, the walk.

Case ids name the rule checked. Cases marked ``(patternmatcher)`` or ``(buildkit)`` pin down where the code
Docker runs differs from what its documentation says; the code is what decides which files reach the builder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from builder.context import (
    ContextEntry,
    IgnoreRules,
    Kind,
    Status,
    list_context,
    load_ignore_rules,
    parse_ignore,
    select_ignore_file,
    walk_context,
)
from builder.errors import ContextError, UsageError
from tests.conftest import TESTDATA


def rules(text: str | bytes, source: str = ".dockerignore") -> IgnoreRules:
    return parse_ignore(text if isinstance(text, bytes) else text.encode(), source)


def make_tree(root: Path, spec: dict[str, str | None]) -> Path:
    """Files (``"content"``) and directories (``None``) under ``root``; parents are created."""
    for rel, content in spec.items():
        path = root / rel
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    return root


def walked(root: Path, ruleset: IgnoreRules | None = None) -> dict[str, ContextEntry]:
    return {entry.path: entry for entry in walk_context(root, ruleset or IgnoreRules())}


# --------------------------------------------------------------------------------------------------------------
# Parsing the ignore file

PARSE_CASES = [
    pytest.param("# comment\nfoo\n#bar", [(2, False, "foo")], id="comment-lines"),
    pytest.param("  # not a comment", [(1, False, "# not a comment")], id="hash-after-whitespace-is-a-pattern"),
    pytest.param("\n\n  \nfoo\n", [(4, False, "foo")], id="blank-lines-skipped-but-counted"),
    pytest.param("\t foo \t", [(1, False, "foo")], id="whitespace-trimmed"),
    pytest.param("a\r\nb\r\n", [(1, False, "a"), (2, False, "b")], id="crlf-line-endings"),
    pytest.param(b"\xef\xbb\xbffoo", [(1, False, "foo")], id="utf8-bom-stripped"),
    pytest.param(b"a\n\xef\xbb\xbfb", [(1, False, "a"), (2, False, "\ufeffb")], id="bom-stripped-on-first-line-only"),
    pytest.param("/foo/bar", [(1, False, "foo/bar")], id="leading-slash-stripped"),
    pytest.param("./a", [(1, False, "a")], id="dot-slash-cleaned"),
    pytest.param("a/", [(1, False, "a")], id="trailing-slash-cleaned"),
    pytest.param("a/../b", [(1, False, "b")], id="dotdot-cleaned"),
    pytest.param("/../a", [(1, False, "a")], id="dotdot-above-root-clamped"),
    pytest.param("../a", [(1, False, "../a")], id="leading-dotdot-kept"),
    pytest.param("a//b///c", [(1, False, "a/b/c")], id="repeated-slashes-cleaned"),
    pytest.param("!a", [(1, True, "a")], id="exception-prefix"),
    pytest.param("! /inverted/abs/path", [(1, True, "inverted/abs/path")], id="exception-space-and-slash-after-bang"),
    pytest.param("!!a", [(1, True, "!a")], id="double-bang-excepts-a-literal-bang"),
    pytest.param("a!", [(1, False, "a!")], id="bang-inside-is-literal"),
    pytest.param("/", [(1, False, "/")], id="slash-alone-kept-and-matches-nothing"),
    pytest.param(".", [(1, False, ".")], id="dot-alone-kept-and-matches-nothing"),
    pytest.param("a/ /", [(1, False, "a")], id="trimmed-again-after-clean"),
    pytest.param(b"\x1cfoo", [(1, False, "\x1cfoo")], id="trim-is-go-unicode-space-not-python-strip"),
    pytest.param("\u00a0foo\u3000", [(1, False, "foo")], id="unicode-spaces-trimmed"),
    pytest.param("a" * 65535, [(1, False, "a" * 65535)], id="longest-line-go-reads"),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse(text: str | bytes, expected: list[tuple[int, bool, str]]) -> None:
    parsed = rules(text)
    assert [(r.line, r.exception, r.pattern) for r in parsed.rules] == expected
    assert all(r.source == ".dockerignore" for r in parsed.rules)


PARSE_ERRORS = [
    pytest.param("!", 1, 'illegal exclusion pattern: "!"', id="bang-alone-is-an-error"),
    pytest.param("a\n!   ", 2, 'illegal exclusion pattern: "!"', id="bang-and-spaces-is-an-error"),
    pytest.param("ok\n\n!/", 3, 'illegal exclusion pattern: "!"', id="bang-slash-cleans-to-bang"),
    pytest.param("[a", 1, "syntax error", id="unclosed-class"),
    pytest.param("x\n[a-]", 2, "syntax error", id="class-range-without-end"),
    pytest.param("[]a]", 1, "syntax error", id="class-cannot-start-with-close-bracket"),
    pytest.param("[]", 1, "syntax error", id="empty-class"),
    pytest.param("[^]", 1, "syntax error", id="empty-negated-class"),
    pytest.param("foo\\", 1, "syntax error", id="trailing-backslash"),
    pytest.param("*.go\n*[", 2, "syntax error", id="error-after-star-still-found"),
    pytest.param("x\\q*", 1, "invalid escape", id="re2-rejects-escaped-letter (patternmatcher)"),
    pytest.param("[a-?]", 1, "invalid character class range", id="glob-expanded-inside-class-breaks-range"),
    pytest.param("[[:foo:]]", 1, "invalid character class range", id="unknown-posix-class (patternmatcher)"),
    pytest.param("\\pL*", 1, "not supported", id="unicode-class-refused"),
    pytest.param("a" * 65536, 1, "too long", id="line-longer-than-go-reads"),
]


@pytest.mark.parametrize(("text", "line", "message"), PARSE_ERRORS)
def test_parse_errors_carry_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ContextError) as raised:
        rules(text, source="build/app.Dockerfile.dockerignore")
    assert str(raised.value).startswith(f"build/app.Dockerfile.dockerignore:{line}: ")
    assert message in str(raised.value)


def test_rule_keeps_the_line_as_written_for_why() -> None:
    (rule,) = rules("\n  ! /vendor/../keep  ").rules
    assert (rule.text, rule.pattern, rule.exception) == ("! /vendor/../keep", "keep", True)
    assert str(rule) == ".dockerignore:2: ! /vendor/../keep"


# --------------------------------------------------------------------------------------------------------------
# Matching: (ignore file, path, included?, line of the rule reported)

MATCH_CASES = [
    pytest.param("", "a/b", True, None, id="no-rules-includes-everything"),
    pytest.param("secret.txt", "secret.txt", False, 1, id="exact-name-excluded"),
    pytest.param("secret.txt", "sub/secret.txt", True, None, id="exact-name-only-at-root"),
    pytest.param("build", "build/out/app.bin", False, 1, id="parent-dir-match-excludes-children"),
    pytest.param("foo/", "foo", False, 1, id="trailing-slash-has-no-dir-only-meaning"),
    pytest.param("*.md", "notes.md", False, 1, id="star-within-a-name"),
    pytest.param("*.md", "docs/notes.md", True, None, id="star-does-not-cross-slash"),
    pytest.param("*", ".git", False, 1, id="star-matches-hidden-names"),
    pytest.param("log*", "log", False, 1, id="star-matches-nothing-too"),
    pytest.param("a*b", "a/b", True, None, id="star-in-the-middle-does-not-cross-slash"),
    pytest.param("temp?", "tempa", False, 1, id="question-matches-one-char"),
    pytest.param("temp?", "temp", True, None, id="question-needs-a-char"),
    pytest.param("temp?", "tempab", True, None, id="question-matches-only-one-char"),
    pytest.param("a?b", "a/b", True, None, id="question-does-not-match-slash"),
    pytest.param("*/temp*", "somedir/temporary.txt", False, 1, id="docs-example-one-level"),
    pytest.param("*/temp*", "a/b/temp", True, None, id="docs-example-exactly-one-level"),
    pytest.param("*/*/temp*", "somedir/subdir/temporary.txt", False, 1, id="docs-example-two-levels"),
    pytest.param("**/*.go", "main.go", False, 1, id="double-star-matches-zero-dirs"),
    pytest.param("**/*.go", "a/b/c/main.go", False, 1, id="double-star-matches-many-dirs"),
    pytest.param("a/**/b", "a/b", False, 1, id="inner-double-star-matches-zero-dirs"),
    pytest.param("a/**/b", "a/x/y/b", False, 1, id="inner-double-star-matches-many-dirs"),
    pytest.param("a/**/b", "a/x/c", True, None, id="inner-double-star-needs-the-rest"),
    pytest.param("a/**", "a/x", False, 1, id="trailing-double-star-excludes-contents"),
    pytest.param("a/**", "a", True, None, id="trailing-double-star-not-the-dir-itself"),
    pytest.param("foo**", "foobar", False, 1, id="trailing-double-star-is-a-plain-prefix (patternmatcher)"),
    pytest.param("**foo", "barfoo", False, 1, id="leading-double-star-is-a-plain-suffix (patternmatcher)"),
    pytest.param("**/foo", "foo", False, 1, id="leading-double-star-slash-matches-at-root"),
    pytest.param("**/node_modules", "a/node_modules/x/y.js", False, 1, id="leading-double-star-then-parent-match"),
    pytest.param("**", "a/b/c", False, 1, id="double-star-alone-matches-everything"),
    pytest.param("[a-c].txt", "b.txt", False, 1, id="class-range"),
    pytest.param("[a-c].txt", "d.txt", True, None, id="class-range-miss"),
    pytest.param("[^a].txt", "b.txt", False, 1, id="class-caret-negates"),
    pytest.param("[^a].txt", "a.txt", True, None, id="class-caret-negation-miss"),
    pytest.param("[!a].txt", "b.txt", True, None, id="class-bang-is-not-negation"),
    pytest.param("[!a].txt", "!.txt", False, 1, id="class-bang-is-a-literal"),
    pytest.param("a[^x]b", "a/b", False, 1, id="negated-class-matches-slash (patternmatcher)"),
    pytest.param("[*]", "*", True, None, id="star-inside-class-is-expanded (patternmatcher)"),
    pytest.param("[*]", "]", False, 1, id="star-inside-class-what-it-matches (patternmatcher)"),
    pytest.param("[[:digit:]]x", "5x", False, 1, id="posix-class-is-re2 (patternmatcher)"),
    pytest.param("[[:digit:]]x", "d]x", True, None, id="posix-class-is-not-go-match-class (patternmatcher)"),
    pytest.param("a\\d", "a7", False, 1, id="escaped-letter-is-re2-escape (patternmatcher)"),
    pytest.param("a\\d", "ad", True, None, id="escaped-letter-is-not-the-letter (patternmatcher)"),
    pytest.param("\\*.txt", "*.txt", False, 1, id="escaped-star-is-literal"),
    pytest.param("\\*.txt", "a.txt", True, None, id="escaped-star-is-not-a-wildcard"),
    pytest.param("a\\?", "a?", False, 1, id="escaped-question-is-literal"),
    pytest.param("\\[x\\]", "[x]", False, 1, id="escaped-brackets-are-literal"),
    pytest.param("[\\]]", "]", False, 1, id="escaped-bracket-inside-class"),
    pytest.param("a.b+(c)|{d}$", "a.b+(c)|{d}$", False, 1, id="regex-metachars-are-literal"),
    pytest.param("a.b*", "axb", True, None, id="dot-is-not-any-char"),
    pytest.param("^a", "^a", False, 1, id="caret-is-literal-in-a-plain-pattern"),
    pytest.param("^a*", "abc", False, 1, id="caret-anchors-in-a-glob-pattern (patternmatcher)"),
    pytest.param("^a*", "^abc", True, None, id="caret-in-a-glob-pattern-is-not-literal (patternmatcher)"),
    pytest.param("*.MD", "a.md", True, None, id="case-sensitive"),
    pytest.param("*.txt", "a.txt\n", True, None, id="glob-end-is-end-of-name-even-before-newline"),
    pytest.param("café*", "café.txt", False, 1, id="non-ascii-names"),
    pytest.param("my file.txt", "my file.txt", False, 1, id="inner-spaces-kept"),
    pytest.param(".", "a", True, None, id="dot-pattern-is-ignored"),
    pytest.param("/foo", "foo", False, 1, id="leading-slash-stripped-matches"),
    pytest.param("./foo/", "foo/x", False, 1, id="dot-slash-cleaned-matches"),
    pytest.param("x/../foo", "foo", False, 1, id="dotdot-cleaned-matches"),
    pytest.param("../foo", "foo", True, None, id="leading-dotdot-never-matches"),
    pytest.param("foo", "./foo//bar", False, 1, id="queried-path-is-cleaned"),
    pytest.param("# x", "# x", True, None, id="comment-is-not-a-pattern"),
    pytest.param("  # x", "# x", False, 1, id="indented-hash-is-a-pattern"),
]

EXCEPTION_CASES = [
    pytest.param("*.md\n!README.md", "README.md", True, 2, id="exception-reincludes-file"),
    pytest.param("*.md\n!README.md", "CHANGES.md", False, 1, id="exception-leaves-the-rest-excluded"),
    pytest.param("*.md\n!README*.md\nREADME-secret.md", "README-secret.md", False, 3, id="last-match-wins"),
    pytest.param("*.md\n!README*.md\nREADME-secret.md", "README-x.md", True, 2, id="last-match-wins-exception"),
    pytest.param("*.md\nREADME-secret.md\n!README*.md", "README-secret.md", True, 3, id="last-match-wins-order"),
    pytest.param("!a.md\n*.md", "a.md", False, 2, id="exception-before-exclusion-has-no-effect"),
    pytest.param("*.md\n*.md", "a.md", False, 2, id="reported-rule-is-the-last-match"),
    pytest.param("docs\n**/*.md\n!docs/x", "docs/a.md", False, 2, id="reported-rule-may-match-the-path-itself"),
    pytest.param("docs\n**/*.md", "docs/a.md", False, 1, id="reported-rule-is-the-one-that-pruned-the-parent"),
    pytest.param("docs\n!docs/keep.md", "docs/keep.md", True, 2, id="exception-below-excluded-dir"),
    pytest.param("docs\n!docs/keep.md", "docs/other.md", False, 1, id="exception-below-excluded-dir-only-that"),
    pytest.param("*\n!src", "src/pkg/mod.py", True, 2, id="exception-dir-reincludes-children"),
    pytest.param("*\n!Dockerfile\n!src/**", "README", False, 1, id="allow-list-excludes-the-rest"),
    pytest.param("*\n!Dockerfile\n!src/**", "src/a/b.c", True, 3, id="allow-list-includes-listed"),
    pytest.param("vendor\n!**/keep", "vendor/a/keep", True, 2, id="glob-exception-reaches-into-excluded-dir"),
    pytest.param("vendor\n!src/keep", "vendor/keep", False, 1, id="literal-exception-elsewhere-leaves-dir-out"),
    pytest.param("!a/b\na", "a/b", False, 2, id="later-parent-exclusion-wins"),
    pytest.param("*\n!/keep", "keep", True, 2, id="exception-with-leading-slash"),
    pytest.param("x\n!x/y\nx", "x/y", True, 2, id="skipped-rule-not-reapplied-below (buildkit)"),
    pytest.param("a/*\n!a", "a/b", False, 1, id="exception-skipped-at-parent-not-inherited (buildkit)"),
]


@pytest.mark.parametrize(("text", "path", "included", "line"), MATCH_CASES + EXCEPTION_CASES)
def test_decide(text: str, path: str, included: bool, line: int | None) -> None:
    decision = rules(text).decide(path)
    assert decision.included is included
    assert (decision.rule.line if decision.rule else None) == line


# --------------------------------------------------------------------------------------------------------------
# Which excluded directories the walk may skip: (ignore file, directory, skipped?)

PRUNE_CASES = [
    pytest.param("vendor", "vendor", True, id="prune-without-exceptions"),
    pytest.param("vendor", "src", False, id="included-dir-not-pruned"),
    pytest.param("vendor\n!vendor/keep", "vendor", False, id="literal-exception-below-keeps-dir-open"),
    pytest.param("vendor\n!src/keep", "vendor", True, id="literal-exception-elsewhere-allows-prune"),
    pytest.param("vendor\n!vendorx/keep", "vendor", True, id="exception-path-prefix-is-by-component"),
    pytest.param("vendor\n!*.go", "vendor", False, id="glob-exception-disables-pruning"),
    pytest.param("vendor\n!other/**", "vendor", True, id="trailing-double-star-exception-counts-as-literal"),
    pytest.param("vendor\n!vendor/*", "vendor", False, id="trailing-star-exception-below-keeps-dir-open"),
    pytest.param("a\n!a/b/c", "a/b", False, id="deeper-exception-keeps-ancestors-open"),
    pytest.param("a\n!a/b/c", "a/x", True, id="deeper-exception-elsewhere-allows-prune"),
]


@pytest.mark.parametrize(("text", "directory", "prune"), PRUNE_CASES)
def test_prune(text: str, directory: str, prune: bool) -> None:
    assert rules(text).decide(directory, is_dir=True).prune is prune


def test_prune_is_only_for_directories() -> None:
    assert rules("vendor").decide("vendor", is_dir=False).prune is False


def test_path_below_a_pruned_dir_names_it() -> None:
    decision = rules("vendor\n!src/keep").decide("vendor/a/keep")
    assert (decision.included, decision.pruned_at, decision.rule and decision.rule.line) == (False, "vendor", 1)


def test_context_root_is_never_excluded_and_outside_is_refused() -> None:
    assert rules("**\n*").decide(".").included
    with pytest.raises(ValueError):
        rules("x").decide("../x")


# --------------------------------------------------------------------------------------------------------------
# Walking


def test_walk_yields_tree_order_with_lstat_kinds(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a/x": "1", "a.txt": "22", "b/": None, "B": "3"})
    os.symlink("a.txt", tmp_path / "link")
    os.mkfifo(tmp_path / "pipe")
    entries = list(walk_context(tmp_path, IgnoreRules()))
    assert [(e.path, e.kind, e.size) for e in entries] == [
        ("B", Kind.FILE, 1),
        ("a", Kind.DIR, 0),
        ("a/x", Kind.FILE, 1),
        ("a.txt", Kind.FILE, 2),  # after "a/x": names are sorted per directory, as Go walks
        ("b", Kind.DIR, 0),
        ("link", Kind.SYMLINK, 0),
        ("pipe", Kind.OTHER, 0),
    ]
    assert all(e.decision.included for e in entries)


def test_walk_lists_symlinks_to_outside_and_never_follows_them(tmp_path: Path) -> None:
    outside = make_tree(tmp_path / "outside", {"secret/key": "k", "file": "f"})
    context = make_tree(tmp_path / "ctx", {"app.py": "x"})
    os.symlink(outside / "secret", context / "dirlink")
    os.symlink(outside / "file", context / "filelink")
    os.symlink("/nonexistent/target", context / "dangling")
    entries = walked(context)
    assert set(entries) == {"app.py", "dangling", "dirlink", "filelink"}
    assert {entries[p].kind for p in ("dangling", "dirlink", "filelink")} == {Kind.SYMLINK}


def test_walk_does_not_descend_a_symlink_to_a_dir_inside(tmp_path: Path) -> None:
    context = make_tree(tmp_path, {"real/f": "x"})
    os.symlink("real", context / "alias")
    assert sorted(walked(context)) == ["alias", "real", "real/f"]


def test_walk_prunes_excluded_dirs_but_yields_them(tmp_path: Path) -> None:
    make_tree(tmp_path, {"vendor/a": "x", "vendor/b/c": "y", "src/main.go": "z"})
    entries = walked(tmp_path, rules("vendor"))
    assert sorted(entries) == ["src", "src/main.go", "vendor"]
    assert entries["vendor"].decision.prune and not entries["vendor"].decision.included


def test_walk_enters_excluded_dir_with_an_exception_below(tmp_path: Path) -> None:
    make_tree(tmp_path, {"vendor/keep": "x", "vendor/other": "y"})
    entries = walked(tmp_path, rules("vendor\n!vendor/keep"))
    assert {p: e.decision.included for p, e in entries.items()} == {
        "vendor": False,
        "vendor/keep": True,
        "vendor/other": False,
    }
    assert not entries["vendor"].decision.prune


def test_walk_with_glob_exception_walks_excluded_dirs(tmp_path: Path) -> None:
    make_tree(tmp_path, {"vendor/a/keep": "x", "vendor/a/drop": "y"})
    entries = walked(tmp_path, rules("vendor\n!**/keep"))
    assert entries["vendor/a/keep"].decision.included
    assert not entries["vendor/a/drop"].decision.included


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="no-rules"),
        pytest.param("*.md\n!README.md\nbuild", id="simple"),
        pytest.param("vendor\n!vendor/keep\n**/*.log\n!**/important.log", id="exceptions-and-globs"),
        pytest.param("x\n!x/y\nx\na/*\n!a", id="buildkit-quirks"),
    ],
)
def test_walk_agrees_with_decide(tmp_path: Path, text: str) -> None:
    make_tree(
        tmp_path,
        {
            "README.md": "",
            "NOTES.md": "",
            "build/out": "",
            "vendor/keep": "",
            "vendor/x/important.log": "",
            "vendor/x/debug.log": "",
            "x/y/z": "",
            "a/b/c": "",
            "src/app.log": "",
        },
    )
    ruleset = rules(text)
    entries = list(walk_context(tmp_path, ruleset))
    assert entries
    for entry in entries:
        assert entry.decision == ruleset.decide(entry.path, is_dir=entry.kind is Kind.DIR), entry.path


def test_walk_deep_tree_without_recursion(tmp_path: Path) -> None:
    depth = 1200  # beyond Python's default recursion limit of 1000
    chain = [tmp_path / ("d/" * n) / "d" for n in range(depth)]
    try:
        for path in chain:
            path.mkdir()
        entries = list(walk_context(tmp_path, IgnoreRules()))
        assert len(entries) == depth and entries[-1].path == "/".join(["d"] * depth)
    finally:
        for path in reversed(chain):  # shutil.rmtree, which cleans tmp_path, recurses and would fail
            if path.exists():
                path.rmdir()


def test_walk_refuses_a_context_that_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ContextError, match="not a directory"):
        list(walk_context(tmp_path / "file", IgnoreRules()))


def test_walk_refuses_a_missing_context(tmp_path: Path) -> None:
    with pytest.raises(ContextError, match="No such file"):
        list(walk_context(tmp_path / "missing", IgnoreRules()))


def test_walk_follows_a_context_root_that_is_a_symlink(tmp_path: Path) -> None:
    make_tree(tmp_path / "real", {"f": "x"})
    os.symlink(tmp_path / "real", tmp_path / "ctx")
    assert list(walked(tmp_path / "ctx")) == ["f"]


def _deny(monkeypatch: pytest.MonkeyPatch, denied: Path) -> None:
    # Permission bits do not stop root, so the refusal is simulated where the walk reads directories.
    real_scandir = os.scandir

    def scandir(path: str) -> object:
        if Path(path) == denied:
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_walk_refuses_an_unreadable_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _deny(monkeypatch, tmp_path)
    with pytest.raises(ContextError, match="Permission denied"):
        list(walk_context(tmp_path, IgnoreRules()))


def test_walk_refuses_an_unreadable_included_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path, {"private/key": "x"})
    _deny(monkeypatch, tmp_path / "private")
    with pytest.raises(ContextError, match="private"):
        list(walk_context(tmp_path, IgnoreRules()))


def test_walk_tolerates_an_unreadable_excluded_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path, {"private/key": "x", "app": "y"})
    _deny(monkeypatch, tmp_path / "private")
    # A glob exception keeps the excluded dir from being pruned, so the walk does try to read it.
    entries = walked(tmp_path, rules("private\n!**/*.keep"))
    assert sorted(entries) == ["app", "private"]


# --------------------------------------------------------------------------------------------------------------
# Choosing the ignore file and listing the context


def test_dockerfile_specific_ignore_wins(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {
            ".dockerignore": "a\n",
            "build/app.Dockerfile": "FROM scratch\n",
            "build/app.Dockerfile.dockerignore": "b\n",
            "a": "",
            "b": "",
        },
    )
    listing = list_context(tmp_path, tmp_path / "build/app.Dockerfile", show_excluded=True)
    assert listing.ignore_file == tmp_path / "build/app.Dockerfile.dockerignore"
    assert listing.rules.source == "build/app.Dockerfile.dockerignore"
    status = {row.path: row.included for row in listing.entries}
    assert (status["a"], status["b"]) == (True, False)


def test_default_dockerfile_specific_ignore_wins(tmp_path: Path) -> None:
    make_tree(tmp_path, {".dockerignore": "a\n", "Dockerfile.dockerignore": "b\n", "Dockerfile": ""})
    assert select_ignore_file(tmp_path) == tmp_path / "Dockerfile.dockerignore"


def test_empty_dockerfile_specific_ignore_still_wins(tmp_path: Path) -> None:
    make_tree(tmp_path, {".dockerignore": "a\n", "Dockerfile.dockerignore": "", "a": ""})
    listing = list_context(tmp_path, None, show_excluded=False)
    assert listing.ignore_file == tmp_path / "Dockerfile.dockerignore"
    assert "a" in {row.path for row in listing.entries}


def test_context_dockerignore_without_a_specific_one(tmp_path: Path) -> None:
    make_tree(tmp_path, {".dockerignore": "a\n", "build/app.Dockerfile": ""})
    assert select_ignore_file(tmp_path, tmp_path / "build/app.Dockerfile") == tmp_path / ".dockerignore"


def test_dockerfile_outside_the_context_brings_its_ignore_file(tmp_path: Path) -> None:
    context = make_tree(tmp_path / "ctx", {".dockerignore": "a\n", "a": "", "b": ""})
    make_tree(tmp_path / "df", {"Dockerfile": "", "Dockerfile.dockerignore": "b\n"})
    path, ruleset = load_ignore_rules(context, tmp_path / "df" / "Dockerfile")
    assert path == tmp_path / "df" / "Dockerfile.dockerignore"
    assert ruleset.source == str(path)  # outside the context, so shown as given
    assert [r.pattern for r in ruleset.rules] == ["b"]


def test_no_ignore_file(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a": ""})
    listing = list_context(tmp_path, None, show_excluded=True)
    assert (listing.ignore_file, listing.rules, listing.dockerfile) == (None, IgnoreRules(), None)
    assert [(row.path, row.status, row.reason) for row in listing.entries] == [
        ("a", Status.INCLUDED, "included: no pattern matches it")
    ]


def test_ignored_dockerfile_and_ignore_file_are_frontend_only(tmp_path: Path) -> None:
    make_tree(tmp_path, {".dockerignore": "Dockerfile\n.dockerignore\n", "Dockerfile": "FROM scratch\n"})
    listing = list_context(tmp_path, None, show_excluded=True)
    rows = {row.path: row for row in listing.entries}
    for path, line in (("Dockerfile", 1), (".dockerignore", 2)):
        assert (rows[path].status, rows[path].included) == (Status.FRONTEND, False)
        assert rows[path].rule == f".dockerignore:{line}: {path}"
        assert "builder still reads it" in rows[path].reason
    assert list_context(tmp_path, None, show_excluded=False).entries == ()


def test_context_dockerignore_is_ordinary_when_a_specific_one_is_used(tmp_path: Path) -> None:
    make_tree(tmp_path, {".dockerignore": "x\n", "Dockerfile": "", "Dockerfile.dockerignore": ".dockerignore\n"})
    rows = {row.path: row for row in list_context(tmp_path, None, show_excluded=True).entries}
    assert rows[".dockerignore"].status is Status.EXCLUDED
    assert rows["Dockerfile.dockerignore"].status is Status.INCLUDED


def test_excluded_dir_above_an_included_path_is_sent_as_parent(tmp_path: Path) -> None:
    make_tree(tmp_path, {".dockerignore": "vendor\n!**/keep\n", "vendor/a/keep": "", "vendor/b/drop": ""})
    rows = {row.path: row for row in list_context(tmp_path, None, show_excluded=True).entries}
    assert {p: (r.status, r.included) for p, r in rows.items() if p.startswith("vendor")} == {
        "vendor": (Status.PARENT, True),
        "vendor/a": (Status.PARENT, True),
        "vendor/a/keep": (Status.INCLUDED, True),
        "vendor/b": (Status.EXCLUDED, False),
        "vendor/b/drop": (Status.EXCLUDED, False),
    }
    assert "parent directory of an included path" in rows["vendor"].reason
    assert rows["vendor/a/keep"].reason == "included: re-included by .dockerignore:2: !**/keep"
    assert rows["vendor/b"].reason == "excluded by .dockerignore:1: vendor (which matches a parent directory)"


def test_listing_hides_excluded_rows_unless_asked(tmp_path: Path) -> None:
    make_tree(tmp_path, {".dockerignore": "*.log\nvendor\n", "app.py": "print()\n", "x.log": "", "vendor/m": ""})
    shown = [row.path for row in list_context(tmp_path, None, show_excluded=False).entries]
    assert shown == [".dockerignore", "app.py"]
    rows = {row.path: row for row in list_context(tmp_path, None, show_excluded=True).entries}
    assert sorted(rows) == [".dockerignore", "app.py", "vendor", "x.log"]
    assert rows["vendor"].reason.endswith("its contents are not walked, as no exception can re-include them")
    assert rows["app.py"].size == 8


def test_rows_serialise_as_json_lines(tmp_path: Path) -> None:
    make_tree(tmp_path, {".dockerignore": "*.log\n", "x.log": "abc"})
    row = next(r for r in list_context(tmp_path, None, show_excluded=True).entries if r.path == "x.log")
    assert json.loads(json.dumps(row.to_json())) == {
        "Path": "x.log",
        "Kind": "file",
        "Size": 3,
        "Included": False,
        "Status": "excluded",
        "Rule": ".dockerignore:1: *.log",
        "Reason": "excluded by .dockerignore:1: *.log",
    }


def test_missing_dockerfile_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        list_context(tmp_path, tmp_path / "nope.Dockerfile", show_excluded=False)


def test_bad_pattern_in_the_ignore_file_names_file_and_line(tmp_path: Path) -> None:
    make_tree(tmp_path, {".dockerignore": "ok\n# fine\n[bad\n"})
    with pytest.raises(ContextError, match=r"^\.dockerignore:3: syntax error"):
        list_context(tmp_path, None, show_excluded=False)


def test_ignore_file_symlink_inside_the_context_is_read(tmp_path: Path) -> None:
    make_tree(tmp_path, {"conf/ignore": "secret\n", "secret": ""})
    os.symlink("conf/ignore", tmp_path / ".dockerignore")
    assert [r.pattern for r in load_ignore_rules(tmp_path)[1].rules] == ["secret"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda ctx, out: os.symlink(out, ctx / ".dockerignore"), "outside", id="symlink-leaving-context"),
        pytest.param(lambda ctx, out: os.symlink("missing", ctx / ".dockerignore"), "cannot read", id="dangling"),
        pytest.param(lambda ctx, out: (ctx / ".dockerignore").mkdir(), "not a regular file", id="directory"),
    ],
)
def test_ignore_file_that_docker_would_silently_skip_is_an_error(tmp_path: Path, make: object, message: str) -> None:
    context = make_tree(tmp_path / "ctx", {"secret": ""})
    outside = make_tree(tmp_path, {"elsewhere": "secret\n"}) / "elsewhere"
    make(context, outside)  # type: ignore[operator]
    with pytest.raises(ContextError, match=message):
        list_context(context, None, show_excluded=False)


def test_testdata_node_app_ignore_file(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {
            "Dockerfile": "FROM node\n",
            "package.json": "{}",
            "README.md": "",
            "CHANGELOG.md": "",
            ".env": "",
            ".env.example": "",
            "docker-compose.yml": "",
            "node_modules/left-pad/index.js": "",
            "dist/app.js": "",
            "src/index.js": "",
            "src/debug.log": "",
            "src/docs/api.md": "",
        },
    )
    (tmp_path / ".dockerignore").write_bytes((TESTDATA / "dockerignore" / "node-app.dockerignore").read_bytes())
    rows = {row.path: row for row in list_context(tmp_path, None, show_excluded=True).entries}
    sent = sorted(path for path, row in rows.items() if row.included)
    assert sent == [
        ".env.example",
        "Dockerfile",
        "README.md",
        "package.json",
        "src",
        "src/docs",
        "src/docs/api.md",
        "src/index.js",
    ]
    assert rows[".dockerignore"].status is Status.FRONTEND
    assert rows["src/debug.log"].rule == ".dockerignore:3: **/*.log"
    assert rows["node_modules"].reason.startswith("excluded by .dockerignore:2: node_modules;")


# --------------------------------------------------------------------------------------------------------------
# Scale


def test_deciding_twenty_thousand_paths() -> None:
    ruleset = rules(
        "**/*.log\n*.md\n!README.md\npkg1\n**/__pycache__\n.git\nbuild/**\n!build/keep/**\n*.tmp\n**/.DS_Store\n"
    )
    paths = [
        f"pkg{i % 50}/sub{i % 7}/{'__pycache__/' if i % 11 == 0 else ''}f{i}.{('py', 'log', 'md')[i % 3]}"
        for i in range(20_000)
    ]
    excluded = sum(not ruleset.decide(path).included for path in paths)

    def expected(i: int) -> bool:
        return i % 3 == 1 or i % 50 == 1 or i % 11 == 0

    assert len(paths) == 20_000
    assert excluded == sum(expected(i) for i in range(20_000))


def test_walking_a_wide_tree(tmp_path: Path) -> None:
    for d in range(20):
        sub = tmp_path / f"d{d}"
        sub.mkdir()
        for f in range(250):
            (sub / f"f{f}.{'log' if f % 5 == 0 else 'txt'}").write_bytes(b"")
    entries = list(walk_context(tmp_path, rules("**/*.log\nd3\n")))
    assert len(entries) == 20 + 19 * 250
    assert sum(e.decision.included for e in entries) == 19 + 19 * 200
