"""Typed instructions: one frozen dataclass and one parse function per Dockerfile instruction.

``parse_instruction`` turns a ``RawInstruction`` into its typed value: arguments split as BuildKit splits them
(JSON exec form or shell form; whitespace-separated lists; quote-aware ``key=value`` words), flags checked
against the instruction's own set (an unknown flag, a missing value, a bad boolean or a repeated flag is an
error, with a suggestion for a near miss), and argument counts enforced with BuildKit's messages. Nothing is
expanded here: values keep their ``$VARIABLES`` and quotes until the plan expands them, through each class's
``expanded`` method, with the variables in scope at that step.

``to_stages`` groups instructions into stages and returns the ARGs before the first FROM (the global scope).
Every error raised while parsing an instruction gets that instruction's location attached, here and only here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar, TypeVar

from builder.errors import DockerfileError
from builder.frontend.dockerfile import DockerfileAST, Heredoc, RawInstruction, parse_heredoc_word, parse_json_array
from builder.frontend.gostyle import go_quote, parse_duration, parse_int, with_suggestion
from builder.frontend.runmount import check_mount_syntax

__all__ = [
    "Add",
    "Arg",
    "ArgPair",
    "Cmd",
    "CommandLine",
    "Copy",
    "Entrypoint",
    "Env",
    "Expose",
    "From",
    "Healthcheck",
    "Instruction",
    "KeyValue",
    "Label",
    "Maintainer",
    "Onbuild",
    "Run",
    "Shell",
    "Stage",
    "StopSignal",
    "User",
    "Volume",
    "Workdir",
    "KEYWORDS",
    "parse_instruction",
    "to_stages",
]

Word = Callable[[str], str]
Words = Callable[[str], list[str]]
T = TypeVar("T", bound="Instruction")

_WHITESPACE = re.compile(r"[\t\v\f\r ]+")
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9\-_.]*$")


# ------------------------------------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class CommandLine:
    """RUN/CMD/ENTRYPOINT arguments: the exec-form argv, or the shell-form command as one string."""

    args: tuple[str, ...]
    exec_form: bool

    def argv(self, shell: Sequence[str]) -> tuple[str, ...]:
        """The process arguments: exec form as is, shell form handed to ``shell`` as one string."""
        if self.exec_form:
            return self.args
        return (*shell, " ".join(self.args))


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: str
    legacy: bool = False  # "ENV key value" rather than "ENV key=value"


@dataclass(frozen=True, slots=True)
class ArgPair:
    key: str
    default: str | None = None


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """What every instruction has: where it is and how it was written."""

    keyword: ClassVar[str] = ""
    line: int
    end_line: int
    original: str
    written_keyword: str = ""

    def expanded(self: T, word: Word, words: Words) -> T:
        """This instruction with its expandable fields expanded (most have none)."""
        return self


@dataclass(frozen=True, kw_only=True)
class From(Instruction):
    keyword: ClassVar[str] = "FROM"
    base: str
    name: str = ""
    platform: str = ""


@dataclass(frozen=True, kw_only=True)
class Run(Instruction):
    keyword: ClassVar[str] = "RUN"
    command: CommandLine
    heredocs: tuple[Heredoc, ...] = ()
    mounts: tuple[str, ...] = ()
    network: str = ""
    security: str = ""


@dataclass(frozen=True, kw_only=True)
class Cmd(Instruction):
    keyword: ClassVar[str] = "CMD"
    command: CommandLine


@dataclass(frozen=True, kw_only=True)
class Entrypoint(Instruction):
    keyword: ClassVar[str] = "ENTRYPOINT"
    command: CommandLine


@dataclass(frozen=True, kw_only=True)
class Shell(Instruction):
    keyword: ClassVar[str] = "SHELL"
    shell: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Env(Instruction):
    keyword: ClassVar[str] = "ENV"
    pairs: tuple[KeyValue, ...]

    def expanded(self, word: Word, words: Words) -> Env:
        return replace(self, pairs=tuple(KeyValue(word(p.key), word(p.value), p.legacy) for p in self.pairs))


@dataclass(frozen=True, kw_only=True)
class Label(Instruction):
    keyword: ClassVar[str] = "LABEL"
    pairs: tuple[KeyValue, ...]

    def expanded(self, word: Word, words: Words) -> Label:
        return replace(self, pairs=tuple(KeyValue(word(p.key), word(p.value), p.legacy) for p in self.pairs))


@dataclass(frozen=True, kw_only=True)
class Arg(Instruction):
    """ARG: expanded by the plan itself, one pair at a time, since each may see the one before."""

    keyword: ClassVar[str] = "ARG"
    pairs: tuple[ArgPair, ...]


@dataclass(frozen=True, kw_only=True)
class Expose(Instruction):
    keyword: ClassVar[str] = "EXPOSE"
    ports: tuple[str, ...]

    def expanded(self, word: Word, words: Words) -> Expose:
        return replace(self, ports=tuple(p for port in self.ports for p in words(port)))


@dataclass(frozen=True, kw_only=True)
class Volume(Instruction):
    keyword: ClassVar[str] = "VOLUME"
    paths: tuple[str, ...]

    def expanded(self, word: Word, words: Words) -> Volume:
        return replace(self, paths=tuple(word(p) for p in self.paths))


@dataclass(frozen=True, kw_only=True)
class Workdir(Instruction):
    keyword: ClassVar[str] = "WORKDIR"
    path: str

    def expanded(self, word: Word, words: Words) -> Workdir:
        return replace(self, path=word(self.path))


@dataclass(frozen=True, kw_only=True)
class User(Instruction):
    keyword: ClassVar[str] = "USER"
    user: str

    def expanded(self, word: Word, words: Words) -> User:
        return replace(self, user=word(self.user))


@dataclass(frozen=True, kw_only=True)
class StopSignal(Instruction):
    keyword: ClassVar[str] = "STOPSIGNAL"
    signal: str

    def expanded(self, word: Word, words: Words) -> StopSignal:
        return replace(self, signal=word(self.signal))


@dataclass(frozen=True, kw_only=True)
class Maintainer(Instruction):
    keyword: ClassVar[str] = "MAINTAINER"
    maintainer: str


@dataclass(frozen=True, kw_only=True)
class Healthcheck(Instruction):
    """``test`` is ("NONE",), ("CMD", argv...) or ("CMD-SHELL", command); durations in nanoseconds."""

    keyword: ClassVar[str] = "HEALTHCHECK"
    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


@dataclass(frozen=True, kw_only=True)
class Onbuild(Instruction):
    keyword: ClassVar[str] = "ONBUILD"
    expression: str


@dataclass(frozen=True, kw_only=True)
class Copy(Instruction):
    keyword: ClassVar[str] = "COPY"
    sources: tuple[str, ...]
    dest: str
    heredocs: tuple[Heredoc, ...] = ()
    from_: str = ""
    chown: str = ""
    chmod: str = ""
    link: bool = False
    parents: bool = False
    excludes: tuple[str, ...] = ()

    def expanded(self, word: Word, words: Words) -> Copy:
        return replace(
            self,
            sources=tuple(word(s) for s in self.sources),
            dest=word(self.dest),
            chown=word(self.chown),
            chmod=word(self.chmod),
            excludes=tuple(word(e) for e in self.excludes),
        )


@dataclass(frozen=True, kw_only=True)
class Add(Instruction):
    keyword: ClassVar[str] = "ADD"
    sources: tuple[str, ...]
    dest: str
    heredocs: tuple[Heredoc, ...] = ()
    chown: str = ""
    chmod: str = ""
    link: bool = False
    keep_git_dir: bool = False
    checksum: str = ""
    excludes: tuple[str, ...] = ()
    unpack: bool | None = None

    def expanded(self, word: Word, words: Words) -> Add:
        return replace(
            self,
            sources=tuple(word(s) for s in self.sources),
            dest=word(self.dest),
            chown=word(self.chown),
            chmod=word(self.chmod),
            checksum=word(self.checksum),
            excludes=tuple(word(e) for e in self.excludes),
        )


@dataclass(frozen=True)
class Stage:
    """A FROM and the instructions up to the next FROM. ``name`` is lower case ("" if unnamed)."""

    index: int
    start: From
    instructions: tuple[Instruction, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return self.start.name


# ----------------------------------------------------------------------------------------------- helpers


class _Flags:
    """BuildKit's BFlags: declare the flags an instruction takes, then parse the words it was given."""

    def __init__(self, words: Sequence[str]) -> None:
        self._words = words
        self._kinds: dict[str, str] = {}
        self.values: dict[str, str] = {}
        self.lists: dict[str, list[str]] = {}
        self.used: set[str] = set()

    def add(self, name: str, kind: str) -> None:
        self._kinds[name] = kind

    def parse(self) -> None:
        for word in self._words:
            if not word.startswith("--"):
                raise DockerfileError(f"arg should start with -- : {word}")
            if word == "--":
                return
            name, eq, value = word[2:].partition("=")
            kind = self._kinds.get(name)
            if kind is None:
                raise DockerfileError(with_suggestion(f"unknown flag: --{name}", name, self._kinds))
            if name in self.used and kind != "strings":
                raise DockerfileError(f"duplicate flag specified: --{name}")
            self.used.add(name)
            if kind == "bool":
                if eq and value == "":
                    raise DockerfileError(f"missing a value on flag: --{name}")
                lowered = value.lower()
                if lowered == "":
                    self.values[name] = "true"
                elif lowered in ("true", "false"):
                    self.values[name] = lowered
                else:
                    raise DockerfileError(f"expecting boolean value for flag --{name}, not: {value}")
            else:
                if not eq:
                    raise DockerfileError(f"missing a value on flag: --{name}")
                if kind == "strings":
                    self.lists.setdefault(name, []).append(value)
                else:
                    self.values[name] = value

    def string(self, name: str) -> str:
        return self.values.get(name, "")

    def boolean(self, name: str) -> bool:
        return self.values.get(name) == "true"


def _split_whitespace(rest: str) -> list[str]:
    rest = rest.strip()
    return _WHITESPACE.split(rest) if rest else []


def _maybe_json_list(rest: str) -> tuple[list[str], bool]:
    """parseMaybeJSONToList: a JSON array, else whitespace-separated words."""
    array = parse_json_array(rest)
    if array is not None:
        return array, True
    return _split_whitespace(rest), False


def _maybe_json(rest: str) -> tuple[list[str], bool]:
    """parseMaybeJSON: a JSON array, else the whole text as one argument."""
    array = parse_json_array(rest)
    if array is not None:
        return array, True
    return ([rest] if rest else []), False


def parse_words(rest: str, escape: str) -> list[str]:
    """Quote-aware words, quotes and escapes kept for the expander (BuildKit's parseWords)."""
    words: list[str] = []
    current: list[str] = []
    quote = ""
    blank_ok = False
    in_word = False
    i, n = 0, len(rest)
    while i < n:
        ch = rest[i]
        if not in_word:
            if ch.isspace():
                i += 1
                continue
            in_word = True
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'":
                if i + 1 == n:
                    break
                current.append(ch)
                i += 1
                ch = rest[i]
            current.append(ch)
            i += 1
            continue
        if ch.isspace():
            if blank_ok or current:
                words.append("".join(current))
            current, blank_ok, in_word = [], False, False
            i += 1
            continue
        if ch in "'\"":
            quote = ch
            blank_ok = True
        if ch == escape:
            if i + 1 == n:
                break
            current.append(ch)
            i += 1
            ch = rest[i]
        current.append(ch)
        i += 1
    if in_word and (blank_ok or current):
        words.append("".join(current))
    return words


def _name_values(rest: str, keyword: str, escape: str) -> tuple[KeyValue, ...]:
    """ENV and LABEL: ``key=value ...``, or the legacy ``key value`` form."""
    words = parse_words(rest, escape)
    if not words:
        raise DockerfileError(f"{keyword} requires at least one argument")
    if "=" not in words[0]:
        parts = _WHITESPACE.split(rest.strip(), maxsplit=1)
        if len(parts) < 2:
            raise DockerfileError(f"{keyword} must have two arguments")
        return (KeyValue(parts[0], parts[1], legacy=True),)
    pairs = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            raise DockerfileError(f"Syntax error - can't find = in {go_quote(word)}. Must be of the form: name=value")
        if not key:
            raise DockerfileError(f"{keyword} names can not be blank")
        pairs.append(KeyValue(key, value))
    return tuple(pairs)


def _interval(text: str, flag: str) -> int:
    """A HEALTHCHECK duration: Go's syntax; zero means unset; anything else at least 1ms (BuildKit)."""
    if text == "":
        return 0
    value = parse_duration(text)
    if value != 0 and value < 1_000_000:
        raise DockerfileError(f"Interval {go_quote(flag)} cannot be less than 1ms")
    return value


def _heredoc_sources(
    keyword: str, args: list[str], heredocs: tuple[Heredoc, ...]
) -> tuple[list[str], str, tuple[Heredoc, ...]]:
    """Split COPY/ADD words into paths, destination and heredoc sources (BuildKit's parseSourcesAndDest)."""
    sources, dest = args[:-1], args[-1]
    if parse_heredoc_word(dest) is not None:
        raise DockerfileError(f"{keyword} cannot accept a heredoc as a destination")
    bodies = {h.name: h for h in heredocs}
    paths: list[str] = []
    contents: list[Heredoc] = []
    for source in sources:
        opener = parse_heredoc_word(source)
        if opener is None:
            paths.append(source)
            continue
        body = bodies.get(opener.name)
        contents.append(body if body is not None else replace(opener, content=""))
    return paths, dest, tuple(contents)


# -------------------------------------------------------------------------------------- parse functions


def _common(raw: RawInstruction) -> dict[str, object]:
    return {
        "line": raw.start_line,
        "end_line": raw.end_line,
        "original": raw.original,
        "written_keyword": raw.original.split(None, 1)[0] if raw.original else raw.keyword,
    }


def _no_flags(raw: RawInstruction) -> None:
    _Flags(raw.flags).parse()


def _parse_from(raw: RawInstruction, escape: str) -> From:
    args = _split_whitespace(raw.rest)
    name = ""
    if len(args) == 3 and args[1].lower() == "as":
        name = args[2].lower()
        if not _STAGE_NAME.match(name):
            raise DockerfileError(
                f"invalid name for build stage: {go_quote(args[2])}, name can't start with a number or contain symbols"
            )
    elif len(args) != 1:
        raise DockerfileError("FROM requires either one or three arguments")
    flags = _Flags(raw.flags)
    flags.add("platform", "string")
    flags.parse()
    return From(base=args[0], name=name, platform=flags.string("platform"), **_common(raw))  # type: ignore[arg-type]


def _parse_run(raw: RawInstruction, escape: str) -> Run:
    flags = _Flags(raw.flags)
    flags.add("mount", "strings")
    flags.add("network", "string")
    flags.add("security", "string")
    flags.parse()
    args, exec_form = _maybe_json(raw.rest)
    network = flags.string("network")
    if "network" in flags.used and network not in ("default", "none", "host"):
        raise DockerfileError(f"invalid network mode {go_quote(network)}")
    security = flags.string("security")
    if "security" in flags.used and security not in ("sandbox", "insecure"):
        raise DockerfileError(f"security {go_quote(security)} is not valid")
    mounts = tuple(flags.lists.get("mount", ()))
    for mount in mounts:
        check_mount_syntax(mount)
    command = CommandLine(tuple(args) if exec_form else (" ".join(args),) if args else (), exec_form)
    return Run(
        command=command,
        heredocs=raw.heredocs,
        mounts=mounts,
        network=network,
        security=security,
        **_common(raw),  # type: ignore[arg-type]
    )


def _command_line(raw: RawInstruction) -> CommandLine:
    args, exec_form = _maybe_json(raw.rest)
    if exec_form:
        return CommandLine(tuple(args), True)
    return CommandLine((" ".join(args),) if args else (), False)


def _parse_cmd(raw: RawInstruction, escape: str) -> Cmd:
    _no_flags(raw)
    return Cmd(command=_command_line(raw), **_common(raw))  # type: ignore[arg-type]


def _parse_entrypoint(raw: RawInstruction, escape: str) -> Entrypoint:
    _no_flags(raw)
    return Entrypoint(command=_command_line(raw), **_common(raw))  # type: ignore[arg-type]


def _parse_shell(raw: RawInstruction, escape: str) -> Shell:
    _no_flags(raw)
    args, exec_form = _maybe_json(raw.rest)
    if not args:
        raise DockerfileError("SHELL requires at least one argument")
    if not exec_form:
        raise DockerfileError("SHELL requires the arguments to be in JSON form")
    return Shell(shell=tuple(args), **_common(raw))  # type: ignore[arg-type]


def _parse_env(raw: RawInstruction, escape: str) -> Env:
    _no_flags(raw)
    return Env(pairs=_name_values(raw.rest, "ENV", escape), **_common(raw))  # type: ignore[arg-type]


def _parse_label(raw: RawInstruction, escape: str) -> Label:
    _no_flags(raw)
    return Label(pairs=_name_values(raw.rest, "LABEL", escape), **_common(raw))  # type: ignore[arg-type]


def _parse_arg(raw: RawInstruction, escape: str) -> Arg:
    words = parse_words(raw.rest, escape)
    if not words:
        raise DockerfileError("ARG requires at least one argument")
    # BuildKit never parses ARG's flags: they are ignored, not refused.
    pairs = []
    for word in words:
        key, eq, value = word.partition("=")
        if eq and not key:
            raise DockerfileError("ARG names can not be blank")
        pairs.append(ArgPair(key, value if eq else None))
    return Arg(pairs=tuple(pairs), **_common(raw))  # type: ignore[arg-type]


def _parse_expose(raw: RawInstruction, escape: str) -> Expose:
    ports = _split_whitespace(raw.rest)
    if not ports:
        raise DockerfileError("EXPOSE requires at least one argument")
    _no_flags(raw)
    return Expose(ports=tuple(sorted(ports)), **_common(raw))  # type: ignore[arg-type]


def _parse_volume(raw: RawInstruction, escape: str) -> Volume:
    paths, _ = _maybe_json_list(raw.rest)
    if not paths:
        raise DockerfileError("VOLUME requires at least one argument")
    _no_flags(raw)
    cleaned = []
    for path in paths:
        path = path.strip()
        if not path:
            raise DockerfileError("VOLUME specified can not be an empty string")
        cleaned.append(path)
    return Volume(paths=tuple(cleaned), **_common(raw))  # type: ignore[arg-type]


def _exactly_one(raw: RawInstruction) -> str:
    if not raw.rest:
        raise DockerfileError(f"{raw.keyword} requires exactly one argument")
    return raw.rest


def _parse_workdir(raw: RawInstruction, escape: str) -> Workdir:
    path = _exactly_one(raw)
    _no_flags(raw)
    return Workdir(path=path, **_common(raw))  # type: ignore[arg-type]


def _parse_user(raw: RawInstruction, escape: str) -> User:
    user = _exactly_one(raw)
    _no_flags(raw)
    return User(user=user, **_common(raw))  # type: ignore[arg-type]


def _parse_stopsignal(raw: RawInstruction, escape: str) -> StopSignal:
    signal = _exactly_one(raw)  # BuildKit never parses STOPSIGNAL's flags: they are ignored
    return StopSignal(signal=signal, **_common(raw))  # type: ignore[arg-type]


def _parse_maintainer(raw: RawInstruction, escape: str) -> Maintainer:
    name = _exactly_one(raw)
    _no_flags(raw)
    return Maintainer(maintainer=name, **_common(raw))  # type: ignore[arg-type]


def _parse_healthcheck(raw: RawInstruction, escape: str) -> Healthcheck:
    parts = raw.rest.split(None, 1)
    if not parts:
        raise DockerfileError("HEALTHCHECK requires at least one argument")
    kind = parts[0].upper()
    rest = parts[1].strip() if len(parts) > 1 else ""
    if kind == "NONE":
        if rest:
            raise DockerfileError("HEALTHCHECK NONE takes no arguments")
        return Healthcheck(test=("NONE",), **_common(raw))  # type: ignore[arg-type]
    flags = _Flags(raw.flags)
    for name in ("interval", "timeout", "start-period", "start-interval", "retries"):
        flags.add(name, "string")
    flags.parse()
    if kind != "CMD":
        raise DockerfileError(f'Unknown type "{kind}" in HEALTHCHECK (try CMD)')
    args, exec_form = _maybe_json(rest)
    if not args:
        raise DockerfileError("Missing command after HEALTHCHECK CMD")
    test = ("CMD", *args) if exec_form else ("CMD-SHELL", " ".join(args))
    retries_text = flags.string("retries")
    retries = 0
    if retries_text:
        try:
            retries = parse_int(retries_text, 32)
        except ValueError as err:
            raise DockerfileError(f"strconv.ParseInt: parsing {go_quote(retries_text)}: {err}") from None
        if retries < 0:
            raise DockerfileError(f"--retries cannot be negative ({retries})")
    return Healthcheck(
        test=test,
        interval=_interval(flags.string("interval"), "interval"),
        timeout=_interval(flags.string("timeout"), "timeout"),
        start_period=_interval(flags.string("start-period"), "start-period"),
        start_interval=_interval(flags.string("start-interval"), "start-interval"),
        retries=retries,
        **_common(raw),  # type: ignore[arg-type]
    )


def _parse_onbuild(raw: RawInstruction, escape: str) -> Onbuild:
    if not raw.rest:
        raise DockerfileError("ONBUILD requires at least one argument")
    _no_flags(raw)
    trigger = raw.rest.split(None, 1)[0].upper()
    if trigger == "ONBUILD":
        raise DockerfileError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger in ("MAINTAINER", "FROM"):
        raise DockerfileError(f"{trigger} isn't allowed as an ONBUILD trigger")
    expression = re.sub(r"(?i)^\s*ONBUILD\s*", "", raw.original)
    for heredoc in raw.heredocs:
        expression += "\n" + heredoc.content + heredoc.name
    return Onbuild(expression=expression, **_common(raw))  # type: ignore[arg-type]


def _copy_args(raw: RawInstruction) -> list[str]:
    args, _ = _maybe_json_list(raw.rest)
    if len(args) < 2:
        raise DockerfileError(
            f"{raw.keyword} requires at least two arguments, but only one was provided. "
            "Destination could not be determined"
        )
    return args


def _parse_copy(raw: RawInstruction, escape: str) -> Copy:
    args = _copy_args(raw)
    flags = _Flags(raw.flags)
    for name, kind in (
        ("from", "string"),
        ("chown", "string"),
        ("chmod", "string"),
        ("link", "bool"),
        ("parents", "bool"),
        ("exclude", "strings"),
    ):
        flags.add(name, kind)
    flags.parse()
    sources, dest, heredocs = _heredoc_sources("COPY", args, raw.heredocs)
    return Copy(
        sources=tuple(sources),
        dest=dest,
        heredocs=heredocs,
        from_=flags.string("from"),
        chown=flags.string("chown"),
        chmod=flags.string("chmod"),
        link=flags.boolean("link"),
        parents=flags.boolean("parents"),
        excludes=tuple(flags.lists.get("exclude", ())),
        **_common(raw),  # type: ignore[arg-type]
    )


def _parse_add(raw: RawInstruction, escape: str) -> Add:
    args = _copy_args(raw)
    flags = _Flags(raw.flags)
    for name, kind in (
        ("chown", "string"),
        ("chmod", "string"),
        ("link", "bool"),
        ("keep-git-dir", "bool"),
        ("checksum", "string"),
        ("exclude", "strings"),
        ("unpack", "bool"),
    ):
        flags.add(name, kind)
    flags.parse()
    sources, dest, heredocs = _heredoc_sources("ADD", args, raw.heredocs)
    return Add(
        sources=tuple(sources),
        dest=dest,
        heredocs=heredocs,
        chown=flags.string("chown"),
        chmod=flags.string("chmod"),
        link=flags.boolean("link"),
        keep_git_dir=flags.boolean("keep-git-dir"),
        checksum=flags.string("checksum"),
        excludes=tuple(flags.lists.get("exclude", ())),
        unpack=flags.boolean("unpack") if "unpack" in flags.used else None,
        **_common(raw),  # type: ignore[arg-type]
    )


_PARSERS: dict[str, Callable[[RawInstruction, str], Instruction]] = {
    "ADD": _parse_add,
    "ARG": _parse_arg,
    "CMD": _parse_cmd,
    "COPY": _parse_copy,
    "ENTRYPOINT": _parse_entrypoint,
    "ENV": _parse_env,
    "EXPOSE": _parse_expose,
    "FROM": _parse_from,
    "HEALTHCHECK": _parse_healthcheck,
    "LABEL": _parse_label,
    "MAINTAINER": _parse_maintainer,
    "ONBUILD": _parse_onbuild,
    "RUN": _parse_run,
    "SHELL": _parse_shell,
    "STOPSIGNAL": _parse_stopsignal,
    "USER": _parse_user,
    "VOLUME": _parse_volume,
    "WORKDIR": _parse_workdir,
}

#: Every instruction keyword, for suggestions and checks.
KEYWORDS = tuple(sorted(_PARSERS))


def parse_instruction(raw: RawInstruction, escape: str = "\\", path: str = "Dockerfile") -> Instruction:
    """The typed value of one raw instruction; any error carries ``path:line``."""
    parser = _PARSERS.get(raw.keyword)
    try:
        if parser is None:
            written = raw.original.split(None, 1)[0] if raw.original else raw.keyword
            message = f"unknown instruction: {written}"
            raise DockerfileError(with_suggestion(message, written, KEYWORDS, case_sensitive=False))
        return parser(raw, escape)
    except DockerfileError as err:
        raise err.located(path, raw.start_line) from None


def to_stages(ast: DockerfileAST) -> tuple[list[Stage], list[Arg]]:
    """Group the instructions into stages; the ARGs before the first FROM are returned apart."""
    stages: list[Stage] = []
    global_args: list[Arg] = []
    current: list[Instruction] = []
    start: From | None = None
    for raw in ast.instructions:
        instruction = parse_instruction(raw, ast.directives.escape, ast.path)
        if isinstance(instruction, From):
            if start is not None:
                stages.append(Stage(len(stages), start, tuple(current)))
            start, current = instruction, []
        elif start is None:
            if isinstance(instruction, Arg):
                global_args.append(instruction)
            else:
                raise DockerfileError("no build stage in current context", path=ast.path, line=raw.start_line)
        else:
            current.append(instruction)
    if start is None:
        raise DockerfileError("dockerfile contains no stages to build", path=ast.path, line=1)
    stages.append(Stage(len(stages), start, tuple(current)))
    return stages, global_args
