"""The resolved build plan: which stages run, in what order, and every step with its values expanded.

``plan_build`` follows BuildKit's Dockerfile-to-LLB conversion step by step, without executing anything:

- global ARGs (before the first FROM) and the automatic platform ARGs expand FROM lines; ``--build-arg`` wins;
- a FROM names an earlier stage (exactly as written), ``scratch``, a ``--build-context``, or an image; a stage
  whose name is a build context is replaced by that context;
- ``--target`` (case-insensitive) picks the stage; only the stages it needs (FROM, ``COPY --from``,
  ``RUN --mount=from=``) are planned, in file order; cycles and copies from later stages are errors;
- inside a stage, one ordered environment holds the base image's ENV, then ENV and ARG values as they come (a
  later definition replaces an earlier one, as in BuildKit), and expands every instruction that expands; the
  image config (ENV, LABEL, CMD, ENTRYPOINT, USER, WORKDIR, ...) is tracked alongside, with BuildKit's history
  strings, so the engine only executes what the plan says;
- a base image's ONBUILD triggers run first in the stages built on it.

The base image's config is asked of ``base_configs`` (the store, for a build); when it is unknown, as for a plan
printed without pulling, the stage says so and the checks that need it are skipped.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
import signal as signals
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from builder.errors import DockerfileError
from builder.frontend import instructions as ins
from builder.frontend.checks import CheckConfig, Warning, file_checks, looks_secret, parse_check_directive, select
from builder.frontend.dockerfile import Directives, DockerfileAST, Heredoc, parse_dockerfile, parse_heredoc_word
from builder.frontend.gitref import is_git_source
from builder.frontend.gostyle import go_quote, go_quote_rune, parse_int, suggest, with_suggestion
from builder.frontend.runmount import MountSpec, parse_mount
from builder.frontend.shell import Lexer
from oci.config import Healthcheck, History, ImageConfig, RuntimeConfig
from oci.descriptor import Platform
from oci.errors import InvalidReference
from oci.frozen import FrozenMap
from oci.reference import Reference

__all__ = [
    "Base",
    "BuildPlan",
    "PlanOptions",
    "PlannedStage",
    "Source",
    "Step",
    "check_dockerfile",
    "instruction_json",
    "plan_build",
    "plan_dockerfile",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_HOSTNAME = "buildkitsandbox"  # a RUN's, unless the build arg BUILDKIT_SANDBOX_HOSTNAME names another
DEFAULT_SHELL = ("/bin/sh", "-c")
HISTORY_COMMENT = "buildkit.dockerfile.v0"
PROXY_ARGS = ("http_proxy", "https_proxy", "ftp_proxy", "no_proxy", "all_proxy")
#: Build args BuildKit reads itself; passing one is never "unused".
BUILTIN_ARGS = (
    "BUILDKIT_CACHE_MOUNT_NS",
    "BUILDKIT_CONTEXT_KEEP_GIT_DIR",
    "BUILDKIT_INLINE_CACHE",
    "BUILDKIT_MULTI_PLATFORM",
    "BUILDKIT_SANDBOX_HOSTNAME",
    "BUILDKIT_SYNTAX",
    "BUILDKIT_DOCKERFILE_CHECK",
    "SOURCE_DATE_EPOCH",
)
# Rare patterns stay text, compiled by re (and kept in its cache) when first used: not at every start-up.
_CHMOD_SYMBOLIC = r"^([ugoa]*[-+=]([rwxXst]*|[ugo]))+(,([ugoa]*[-+=]([rwxXst]*|[ugo]))+)*$"

BaseConfigs = Callable[[str, Platform], ImageConfig | None]


def _no_configs(ref: str, platform: Platform) -> ImageConfig | None:
    return None


# ----------------------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class PlanOptions:
    build_args: FrozenMap[str, str] = field(default_factory=FrozenMap)
    target: str = ""
    platform: Platform | None = None  # the target platform; None means the build platform
    build_platform: Platform = Platform("linux", "amd64")
    contexts: frozenset[str] = frozenset()  # --build-context names
    labels: FrozenMap[str, str] = field(default_factory=FrozenMap)
    all_stages: bool = False  # plan every stage, not only what the target needs (--check)
    checks: str = ""  # an override of the "# check=" directive
    is_ignored: Callable[[str], bool] | None = None  # .dockerignore, for the CopyIgnoredFile check

    @property
    def target_platform(self) -> Platform:
        return self.platform or self.build_platform


@dataclass(frozen=True)
class Base:
    kind: str  # "scratch", "image", "stage" or "context"
    ref: str  # the normalised image reference, the stage's name, or the context's name
    stage: int = -1
    config_known: bool = True


@dataclass(frozen=True)
class Source:
    """Where COPY --from or a RUN mount reads: the build context, a stage, an image, or a named context."""

    kind: str  # "context", "stage", "image", "named-context", or for ADD "url" or "git"
    ref: str = ""
    stage: int = -1


@dataclass(frozen=True)
class Step:
    instruction: ins.Instruction  # with its values expanded
    env: tuple[str, ...]  # the environment at this step ("K=V", in order): expansion and RUN
    build_args: tuple[tuple[str, str | None], ...]  # ARGs in scope, for history and cache keys
    workdir: str
    user: str
    shell: tuple[str, ...]
    history: str
    empty_layer: bool
    argv: tuple[str, ...] = ()  # RUN: the process to run
    script: Heredoc | None = None  # RUN <<EOF with a #! line: the file to execute as argv[0]
    mounts: tuple[MountSpec, ...] = ()
    mount_sources: tuple[Source | None, ...] = ()
    proxy_env: tuple[str, ...] = ()  # RUN: proxy variables from --build-arg, kept out of history
    source: Source | None = None  # COPY/ADD: where the sources are read
    dest: str = ""  # COPY/ADD: the destination, absolute (a trailing / kept)
    onbuild: bool = False  # an ONBUILD trigger of the base

    @property
    def line(self) -> int:
        return self.instruction.line


@dataclass(frozen=True)
class PlannedStage:
    index: int
    name: str
    base: Base
    platform: Platform
    line: int
    steps: tuple[Step, ...]
    config: ImageConfig  # after every step (no diff_ids: the engine adds the layers)
    deps: tuple[int, ...]

    @property
    def display(self) -> str:
        return self.name or f"stage-{self.index}"


@dataclass(frozen=True)
class BuildPlan:
    path: str
    directives: Directives
    stages: tuple[PlannedStage, ...]
    target: int
    platform: Platform
    warnings: tuple[Warning, ...]
    unused_build_args: tuple[str, ...]
    checks: CheckConfig

    def stage(self, index: int) -> PlannedStage:
        for stage in self.stages:
            if stage.index == index:
                return stage
        raise KeyError(index)

    def to_json(self) -> dict[str, Any]:
        return {
            "dockerfile": self.path,
            "platform": str(self.platform),
            "target": self.stage(self.target).display,
            "stages": [_stage_json(s) for s in self.stages],
            "warnings": [{"rule": w.rule, "line": w.line, "message": w.message} for w in self.warnings],
            "unused_build_args": list(self.unused_build_args),
        }


# ------------------------------------------------------------------------------------------------ JSON


def _value_json(value: Any) -> Any:
    if isinstance(value, Heredoc):
        out: dict[str, Any] = {"name": value.name, "content": value.text, "expand": value.expand}
        if value.chomp:
            out["chomp"] = True
        return out
    if isinstance(value, ins.CommandLine):
        return {"exec_form": value.exec_form, "args": list(value.args)}
    if isinstance(value, ins.KeyValue):
        return {"key": value.key, "value": value.value}
    if isinstance(value, ins.ArgPair):
        return {"key": value.key, "default": value.default}
    if isinstance(value, MountSpec):
        fields = dataclasses.asdict(value).items()
        return {k.rstrip("_"): v for k, v in fields if v not in ("", None, 0, False) or k == "readonly"}
    if isinstance(value, Source):
        return {k: v for k, v in dataclasses.asdict(value).items() if v not in ("", -1)}
    if isinstance(value, tuple | list):
        return [_value_json(v) for v in value]
    return value


def instruction_json(instruction: ins.Instruction) -> dict[str, Any]:
    """An instruction's (expanded) arguments as JSON: what --print-plan shows and cache keys hold."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(instruction):
        if f.name in ("line", "end_line", "original", "written_keyword"):
            continue
        value = getattr(instruction, f.name)
        if value in ("", (), None) or value is False:
            continue
        out[f.name.rstrip("_")] = _value_json(value)
    return out


def _stage_json(stage: PlannedStage) -> dict[str, Any]:
    return {
        "index": stage.index,
        "name": stage.display,
        "line": stage.line,
        "base": {k: v for k, v in dataclasses.asdict(stage.base).items() if v not in (-1,)},
        "platform": str(stage.platform),
        "depends_on": list(stage.deps),
        "steps": [_step_json(step) for step in stage.steps],
        "config": stage.config.to_json(),
    }


def _step_json(step: Step) -> dict[str, Any]:
    out: dict[str, Any] = {
        "line": step.line,
        "instruction": step.instruction.keyword,
        "original": step.instruction.original,
        "args": instruction_json(step.instruction),
        "workdir": step.workdir,
        "user": step.user,
        "env": list(step.env),
        "layer": not step.empty_layer,
    }
    if step.history:
        out["history"] = step.history
    if step.build_args:
        out["build_args"] = {k: v for k, v in step.build_args}
    if any(step.mount_sources):
        out["mount_sources"] = [_value_json(s) if s is not None else None for s in step.mount_sources]
    for name in ("argv", "mounts", "proxy_env"):
        value = getattr(step, name)
        if value:
            out[name] = _value_json(value)
    if step.script is not None:
        out["script"] = _value_json(step.script)
    if step.source is not None:
        out["source"] = _value_json(step.source)
    if step.dest:
        out["dest"] = step.dest
    if step.onbuild:
        out["onbuild"] = True
    return out


# -------------------------------------------------------------------------------------- small helpers


class _Env:
    """An ordered environment where setting a name keeps its place (BuildKit's EnvList.AddOrReplace)."""

    def __init__(self, items: Sequence[tuple[str, str]] = ()) -> None:
        self._items: dict[str, str] = dict(items)

    def set(self, key: str, value: str) -> None:
        self._items[key] = value

    def get(self, key: str) -> str | None:
        return self._items.get(key)

    def mapping(self) -> dict[str, str]:
        return dict(self._items)

    def entries(self) -> tuple[str, ...]:
        return tuple(f"{k}={v}" for k, v in self._items.items())

    def copy(self) -> _Env:
        return _Env(tuple(self._items.items()))


def _go_quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _go_list(items: Sequence[str], quoted: bool) -> str:
    return "[" + " ".join(_go_quote(i) if quoted else i for i in items) + "]"


def go_duration(ns: int) -> str:
    """Go's time.Duration.String()."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _trim(ns / size) + unit
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    seconds = rest / 1_000_000_000
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return sign + out + _trim(seconds) + "s"


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def _normalize_workdir(current: str, requested: str) -> str:
    if requested == "":
        raise DockerfileError("normalizing workdir: cannot normalize nothing")
    if not requested.startswith("/"):
        requested = posixpath.join("/", current or "/", requested)
    return "/" + posixpath.normpath(requested).lstrip("/") if requested != "/" else "/"


def _dest_path(workdir: str, dest: str) -> str:
    """BuildKit's pathRelativeToWorkingDir: absolute, cleaned, a trailing slash kept (it means a directory)."""
    keep_slash = dest.endswith("/") or dest.endswith("/.") or dest in ("", ".")
    full = dest if dest.startswith("/") else posixpath.join("/", workdir or "/", dest or ".")
    cleaned = "/" + posixpath.normpath(full).lstrip("/")
    if keep_slash and not cleaned.endswith("/"):
        cleaned += "/"
    return cleaned


def _check_chmod(chmod: str) -> None:
    if not chmod:
        return
    if chmod.isdigit():
        if not re.fullmatch(r"[0-7]+", chmod) or int(chmod, 8) > 0o7777:
            raise DockerfileError(
                f"invalid chmod parameter: '{chmod}'. it should be octal string and between 0 and 07777"
            )
        return
    if not re.match(_CHMOD_SYMBOLIC, chmod):
        raise DockerfileError(f"invalid chmod parameter: '{chmod}'. it should be octal string and between 0 and 07777")


def _check_digest(text: str) -> None:
    """go-digest's Parse, with its messages."""
    algorithm, colon, encoded = text.partition(":")
    if not colon or not algorithm or not encoded:
        raise DockerfileError("invalid checksum digest format")
    lengths = {"sha256": 64, "sha384": 96, "sha512": 128}
    if algorithm not in lengths:
        if not re.fullmatch(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+", text):
            raise DockerfileError("invalid checksum digest format")
        raise DockerfileError("unsupported digest algorithm")
    if len(encoded) != lengths[algorithm]:
        raise DockerfileError("invalid checksum digest length")
    if not re.fullmatch(r"[a-f0-9]+", encoded):
        raise DockerfileError("invalid checksum digest format")


def _check_signal(name: str) -> None:
    """moby/sys/signal's ParseSignal: a number strconv.Atoi reads (not 0), or a known name."""
    try:
        number: int | None = parse_int(name)
    except ValueError:
        number = None
    if number is not None:
        if number == 0:
            raise DockerfileError(f"invalid signal: {name}")
        return
    upper = name.upper().removeprefix("SIG")
    if upper.startswith("RTMIN") or upper.startswith("RTMAX"):
        match = re.fullmatch(r"RT(MIN|MAX)([+-][0-9]+)?", upper)
        if match:
            return
    if not hasattr(signals, f"SIG{upper}") or upper in ("IGN", "DFL"):
        raise DockerfileError(f"invalid signal: {name}")


def _port_number(text: str) -> int:
    if text == "":
        raise ValueError("value is empty")
    port = parse_int(text)  # ValueError: "invalid syntax" or "value out of range"
    if not 0 <= port <= 65535:
        raise ValueError("value out of range (0–65535)")
    return port


def _port_range(text: str) -> tuple[int, int]:
    if text == "":
        raise ValueError("empty string specified for ports")
    start, dash, end = text.partition("-")
    first = _port_number(start)
    if not dash or start == end:
        return first, first
    last = _port_number(end)
    if last < first:
        raise ValueError(f"invalid port range: {text}")
    return first, last


def _port_specs(ports: Sequence[str], warn: Callable[[str, str], None]) -> list[str]:
    """BuildKit's portSpecs.parsePorts: ``[ip:][hostPort:]containerPort[/proto]`` to "port/proto" strings."""
    result = []
    for raw in ports:
        parts = raw.split(":")
        ip, host, container = (
            ("", "", parts[0])
            if len(parts) == 1
            else ("", parts[0], parts[1])
            if len(parts) == 2
            else (":".join(parts[:-2]), parts[-2], parts[-1])
        )
        port, _, proto = container.partition("/")
        if port == "":
            raise DockerfileError(f"invalid port: {go_quote(raw)}: no port specified")
        if proto.lower() not in ("", "tcp", "udp", "sctp"):
            raise DockerfileError(f"invalid port: {go_quote(raw)}: invalid proto: {proto}")
        if proto != proto.lower():
            warn("ExposeProtoCasing", f"Defined protocol '{raw}' in EXPOSE instruction should be lowercase")
        if ip or host:
            warn(
                "ExposeInvalidFormat",
                f"EXPOSE instruction should not define an IP address or host-port mapping, found '{raw}'",
            )
        try:
            first, last = _port_range(port)
        except ValueError:
            raise DockerfileError(f"invalid containerPort: {port}") from None
        if host:
            try:
                host_first, host_last = _port_range(host)
            except ValueError:
                raise DockerfileError(f"invalid hostPort: {host}") from None
            if last - first != host_last - host_first and last != first:
                raise DockerfileError(f"invalid ranges specified for container and host Ports: {port} and {host}")
        result.extend(f"{n}/{(proto or 'tcp').lower()}" for n in range(first, last + 1))
    return result


def _healthcheck_history(h: Healthcheck) -> str:
    test = _go_list(h.test, quoted=True)
    durations = " ".join(_go_quote(go_duration(d)) for d in (h.interval, h.timeout, h.start_period, h.start_interval))
    return f"HEALTHCHECK &{{{test} {durations} {go_quote_rune(h.retries)}}}"


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://")) and not is_git_source(source)


def _is_git(source: str) -> bool:
    return is_git_source(source)


def _mount_from(raw: str) -> str:
    """The ``from=`` field of a raw mount (it never expands)."""
    for part in raw.split(","):
        key, eq, value = part.partition("=")
        if eq and key.strip().lower() == "from":
            return value.strip().strip('"')
    return ""


# --------------------------------------------------------------------------------------------- planning


@dataclass
class _StageState:
    """What BuildKit's dispatchState holds while a stage is converted (mutable while planning only)."""

    env: _Env
    image_env: list[str]
    config: RuntimeConfig
    build_args: list[tuple[str, str | None]]
    history: list[History]
    author: str = ""
    workdir_set: bool = False
    cmd_line: int = 0
    entrypoint_line: int = 0
    healthcheck_line: int = 0
    config_known: bool = True

    def clone(self) -> _StageState:
        return _StageState(
            self.env.copy(),
            list(self.image_env),
            self.config,
            list(self.build_args),
            list(self.history),
            self.author,
            self.workdir_set,
            config_known=self.config_known,
        )


@dataclass
class _StageInfo:
    stage: ins.Stage
    base: Base
    platform: Platform
    sources: dict[int, Source] = field(default_factory=dict)  # instruction position -> COPY --from source
    mount_sources: dict[tuple[int, int], Source] = field(default_factory=dict)
    deps: dict[int, int] = field(default_factory=dict)  # stage index -> line that needs it


class _Deferred(Exception):
    """In ``check_dockerfile``: the error found may be one a base image's config would avoid."""


class _Planner:
    def __init__(
        self, ast: DockerfileAST, options: PlanOptions, base_configs: BaseConfigs, checking: bool = False
    ) -> None:
        self.ast = ast
        self.checking = checking
        self.path = ast.path
        self.options = options
        self.base_configs = base_configs
        self.lexer = Lexer(escape=ast.directives.escape)
        self.raw_lexer = Lexer(escape="\\", skip_process_quotes=True)
        self.warnings: list[Warning] = []
        self.consumed: set[str] = set()
        self.globals: dict[str, str] = {}

    def fail(self, message: str, line: int) -> DockerfileError:
        return DockerfileError(message, path=self.path, line=line)

    # --- global scope

    def platform_args(self) -> dict[str, str]:
        build, target = self.options.build_platform, self.options.target_platform
        return {
            "BUILDPLATFORM": str(build),
            "BUILDOS": build.os,
            "BUILDARCH": build.architecture,
            "BUILDVARIANT": build.variant,
            "TARGETPLATFORM": str(target),
            "TARGETOS": target.os,
            "TARGETARCH": target.architecture,
            "TARGETVARIANT": target.variant,
        }

    def meta_args(self, global_args: Sequence[ins.Arg], build_args: Mapping[str, str]) -> dict[str, str]:
        args = self.platform_args()
        for arg in global_args:
            for pair in arg.pairs:
                if pair.key in build_args:
                    args[pair.key] = build_args[pair.key]
                elif pair.default is not None:
                    try:
                        args[pair.key] = self.lexer.expand(pair.default, args).value
                    except DockerfileError as err:
                        raise err.located(self.path, arg.line) from None
        return args

    # --- stages and their bases

    def resolve_stages(
        self, stages: Sequence[ins.Stage], global_args: Sequence[ins.Arg], meta: dict[str, str]
    ) -> list[_StageInfo]:
        declared = {p.key for a in global_args for p in a.pairs} | set(self.platform_args())
        self._check_default_bases(stages, global_args)
        infos: list[_StageInfo] = []
        by_name: dict[str, int] = {}
        for stage in stages:
            start = stage.start
            expanded, _ = self._expand_global(start.base, meta, declared, start.line)
            if expanded == "":
                raise self.fail(f"base name ({start.base}) should not be blank", start.line)
            platform = self.options.target_platform
            if start.platform:
                value, unmatched = self._expand_global(start.platform, meta, declared, start.line, platform_flag=start)
                options = sorted(meta)
                if value == "":
                    message = f"empty platform value from expression {start.platform}"
                    raise self.fail(_suggest_any(message, unmatched, options), start.line)
                try:
                    platform = Platform.parse(value, default=self.options.build_platform)
                except ValueError as err:
                    reason = _suggest_any(str(err), unmatched, options)
                    raise self.fail(f"failed to parse platform {start.platform}: {reason}", start.line) from None
            if start.name and start.name in self.options.contexts:
                base = Base("context", start.name, config_known=False)
            elif expanded in by_name:
                base = Base("stage", expanded, by_name[expanded])
            elif expanded == "scratch":
                base = Base("scratch", "scratch")
            elif expanded in self.options.contexts:
                base = Base("context", expanded, config_known=False)
            else:
                try:
                    ref = Reference.parse(expanded)
                except InvalidReference:
                    reason = _reference_error(expanded)
                    raise self.fail(f"failed to parse stage name {go_quote(expanded)}: {reason}", start.line) from None
                base = Base("image", str(ref))
            infos.append(_StageInfo(stage, base, platform))
            if start.name:
                by_name[start.name] = stage.index
        return infos

    def _expand_global(
        self, word: str, meta: dict[str, str], declared: set[str], line: int, platform_flag: ins.From | None = None
    ) -> tuple[str, frozenset[str]]:
        try:
            result = self.lexer.expand(word, meta)
        except DockerfileError as err:
            raise err.located(self.path, line) from None
        for name in sorted(result.unmatched - declared):
            message = with_suggestion(f"FROM argument '{name}' is not declared", name, sorted(declared))
            self.warnings.append(Warning("UndefinedArgInFrom", message, line))
        if platform_flag is not None:
            if result.matched == {"TARGETPLATFORM"} and not result.unmatched and result.value == meta["TARGETPLATFORM"]:
                self.warnings.append(
                    Warning(
                        "RedundantTargetPlatform",
                        f"Setting platform to predefined {word} in FROM is redundant as this is the default behavior",
                        line,
                    )
                )
            if not result.matched and not result.unmatched:
                try:
                    constant = Platform.parse(result.value, default=self.options.build_platform)
                except ValueError:
                    constant = None
                name = platform_flag.name
                if constant is not None and constant.os not in name and constant.architecture not in name:
                    self.warnings.append(
                        Warning(
                            "FromPlatformFlagConstDisallowed",
                            f"FROM --platform flag should not use constant value {go_quote(result.value)}",
                            line,
                        )
                    )
        return result.value, result.unmatched

    def _check_default_bases(self, stages: Sequence[ins.Stage], global_args: Sequence[ins.Arg]) -> None:
        try:
            defaults = self.meta_args(global_args, {})
        except DockerfileError:
            return
        for stage in stages:
            try:
                value = self.lexer.expand(stage.start.base, defaults).value
            except DockerfileError:
                return
            if value == "scratch":
                continue
            try:
                Reference.parse(value)
            except InvalidReference:
                self.warnings.append(
                    Warning(
                        "InvalidDefaultArgInFrom",
                        f"Default value for ARG {stage.start.base} results in empty or invalid base image name",
                        stage.start.line,
                    )
                )

    # --- dependencies

    def source_for(self, value: str, infos: Sequence[_StageInfo], line: int, numeric: bool) -> Source:
        index: int | None = None
        if numeric:  # BuildKit's toCommand: what strconv.Atoi reads is a stage index, anything else a name
            try:
                index = parse_int(value)
            except ValueError:
                index = None
        if index is not None:
            if not 0 <= index < len(infos):
                raise self.fail(f"invalid stage index {index}", line)
            return Source("stage", infos[index].stage.name or str(index), index)
        for info in infos:
            if info.stage.name and info.stage.name == value.lower():
                return Source("stage", info.stage.name, info.stage.index)
        if value in self.options.contexts:
            return Source("named-context", value)
        try:
            return Source("image", str(Reference.parse(value)))
        except InvalidReference:
            # An unknown name is an image, and resolving it fails as BuildKit's resolveBaseImage does.
            message = f"failed to parse stage name {go_quote(value)}: {_reference_error(value)}"
            raise self.fail(message, line) from None

    def link(self, infos: list[_StageInfo]) -> None:
        for info in infos:
            if info.base.kind == "stage":
                info.deps.setdefault(info.base.stage, info.stage.start.line)
            if info.base.kind == "context" and info.stage.name in self.options.contexts:
                continue
            for position, instruction in enumerate(info.stage.instructions):
                self._link_instruction(info, infos, position, instruction)

    def _link_instruction(
        self, info: _StageInfo, infos: list[_StageInfo], position: int, instruction: ins.Instruction
    ) -> None:
        if isinstance(instruction, ins.Copy) and instruction.from_:
            try:  # BuildKit's toCommand: a --from that processing with no variables would change is refused
                processed = self.lexer.expand(instruction.from_, {}).value
            except DockerfileError as err:
                raise err.located(self.path, instruction.line) from None
            if processed != instruction.from_:
                raise self.fail(
                    "variable expansion is not supported for --from, define a new stage with FROM using ARG from"
                    " global scope as a workaround",
                    instruction.line,
                )
            source = self.source_for(instruction.from_, infos, instruction.line, numeric=True)
            info.sources[position] = source
            if source.kind == "stage":
                info.deps.setdefault(source.stage, instruction.line)
        if isinstance(instruction, ins.Run):
            for number, raw in enumerate(instruction.mounts):
                name = _mount_from(raw)
                if name:
                    source = self.source_for(name, infos, instruction.line, numeric=False)
                    info.mount_sources[(position, number)] = source
                    if source.kind == "stage":
                        info.deps.setdefault(source.stage, instruction.line)

    def check_cycles(self, infos: list[_StageInfo]) -> None:
        """BuildKit's validateCircularDependency: walk from each stage in order; report the stage the walk
        started from, at the first instruction on the path that closes the cycle."""
        visited: set[int] = set()

        def visit(index: int, on_path: list[int], lines: list[int]) -> list[int] | None:
            if index in visited:
                return None
            visited.add(index)
            on_path.append(index)
            for dep, line in sorted(infos[index].deps.items()):
                path_lines = lines + [line]
                if dep in on_path:
                    return path_lines
                found = visit(dep, on_path, path_lines)
                if found is not None:
                    return found
            on_path.pop()
            return None

        for info in infos:
            found = visit(info.stage.index, [], [])
            if found is not None:
                name = info.stage.name or f"stage-{info.stage.index}"
                raise self.fail(f"circular dependency detected on stage: {name}", found[0])

    def reachable(self, infos: list[_StageInfo], target: int) -> list[int]:
        seen: set[int] = set()
        todo = [target]
        while todo:
            index = todo.pop()
            if index in seen:
                continue
            seen.add(index)
            todo.extend(infos[index].deps)
        return sorted(seen)

    # --- inside a stage

    def expand_word(self, word: str, state: _StageState, line: int, raw: bool = False) -> str:
        lexer = self.raw_lexer if raw else self.lexer
        try:
            result = lexer.expand(word, state.env.mapping())
        except DockerfileError as err:
            raise err.located(self.path, line) from None
        self._report_unmatched(result.unmatched, state, line)
        return result.value

    def expand_words(self, word: str, state: _StageState, line: int) -> list[str]:
        try:
            result = self.lexer.expand(word, state.env.mapping())
        except DockerfileError as err:
            raise err.located(self.path, line) from None
        self._report_unmatched(result.unmatched, state, line)
        return list(result.words)

    def _report_unmatched(self, unmatched: frozenset[str], state: _StageState, line: int) -> None:
        if not state.config_known:
            return  # the base image's ENV is unknown: any of these may be defined there
        declared = {key for key, _ in state.build_args}
        options = sorted(state.env.mapping())
        for name in sorted(unmatched - declared):
            close = suggest(name, options)
            message = f"Usage of undefined variable '${name}'" + (f" (did you mean ${close}?)" if close else "")
            self.warnings.append(Warning("UndefinedVar", message, line))

    def initial_state(self, info: _StageInfo, planned: Mapping[int, tuple[PlannedStage, _StageState]]) -> _StageState:
        base = info.base
        if base.kind == "stage":
            return planned[base.stage][1].clone()
        config: ImageConfig | None = None
        if base.kind == "image":
            config = self.base_configs(base.ref, info.platform)
        known = base.kind == "scratch" or config is not None
        runtime = config.config if config is not None else RuntimeConfig()
        if base.kind == "scratch":
            runtime = RuntimeConfig(working_dir="/")  # BuildKit's emptyImage
        image_env = list(runtime.env)
        if known and not any(e.split("=", 1)[0] == "PATH" for e in image_env):
            image_env.append(f"PATH={DEFAULT_PATH}")
        env = _Env([tuple(e.split("=", 1)) if "=" in e else (e, "") for e in image_env])  # type: ignore[misc]
        history = list(config.history) if config is not None else []
        return _StageState(
            env, image_env, replace(runtime, env=()), [], history, config.author if config else "", config_known=known
        )

    def onbuild_triggers(
        self, info: _StageInfo, state: _StageState, planned: Mapping[int, tuple[PlannedStage, _StageState]]
    ) -> list[ins.Instruction]:
        expressions = list(state.config.on_build)
        if info.base.kind == "stage":
            base_stage = planned[info.base.stage][0]
            expressions = [
                step.instruction.expression  # type: ignore[attr-defined]
                for step in base_stage.steps
                if isinstance(step.instruction, ins.Onbuild)
            ]
            expressions = list(dict.fromkeys(expressions))
        triggers = []
        line = info.stage.start.line
        for expression in expressions:
            try:
                ast = parse_dockerfile(expression, self.path)
                if len(ast.instructions) != 1:
                    raise DockerfileError("onbuild trigger should be a single expression")
                trigger = ins.parse_instruction(
                    replace(ast.instructions[0], start_line=line, end_line=line), "\\", self.path
                )
            except DockerfileError as err:
                raise DockerfileError(err.message, path=self.path, line=line) from None
            triggers.append(trigger)
        return triggers

    def plan_stage(
        self, info: _StageInfo, infos: list[_StageInfo], planned: Mapping[int, tuple[PlannedStage, _StageState]]
    ) -> tuple[PlannedStage, _StageState]:
        state = self.initial_state(info, planned)
        if info.base.kind == "stage":
            platform = planned[info.base.stage][0].platform
        else:
            platform = info.platform
        steps: list[Step] = []
        if info.base.kind == "context" and info.stage.name in self.options.contexts:
            instructions: list[tuple[int, ins.Instruction, bool]] = []
        else:
            triggers = self.onbuild_triggers(info, state, planned)
            state.config = replace(state.config, on_build=())
            instructions = [(-1, t, True) for t in triggers]
            instructions += [(i, instruction, False) for i, instruction in enumerate(info.stage.instructions)]
        for position, instruction, is_trigger in instructions:
            step = self.dispatch(info, infos, state, position, instruction, planned)
            if step is not None:
                steps.append(replace(step, onbuild=is_trigger) if is_trigger else step)
        config = ImageConfig(
            architecture=platform.architecture,
            os=platform.os,
            variant=platform.variant,
            config=replace(state.config, env=tuple(state.image_env)),
            history=tuple(state.history),
            author=state.author,
        )
        stage = PlannedStage(
            index=info.stage.index,
            name=info.stage.name,
            base=replace(info.base, config_known=state.config_known),
            platform=platform,
            line=info.stage.start.line,
            steps=tuple(steps),
            config=config,
            deps=tuple(sorted(info.deps)),
        )
        return stage, state

    def _step(self, state: _StageState, instruction: ins.Instruction, history: str, empty: bool, **extra: Any) -> Step:
        if history:
            state.history.append(History(created_by=history, comment=HISTORY_COMMENT, empty_layer=empty))
        return Step(
            instruction=instruction,
            env=state.env.entries(),
            build_args=tuple(state.build_args),
            workdir=state.config.working_dir or "/",
            user=state.config.user,
            shell=state.config.shell or DEFAULT_SHELL,
            history=history,
            empty_layer=empty,
            **extra,
        )

    def dispatch(
        self,
        info: _StageInfo,
        infos: list[_StageInfo],
        state: _StageState,
        position: int,
        instruction: ins.Instruction,
        planned: Mapping[int, tuple[PlannedStage, _StageState]],
    ) -> Step | None:
        line = instruction.line

        def word(text: str) -> str:
            return self.expand_word(text, state, line)

        def words(text: str) -> list[str]:
            return self.expand_words(text, state, line)

        if isinstance(instruction, ins.Arg):
            return self._dispatch_arg(state, instruction)
        expanded = instruction.expanded(word, words)
        config = state.config
        try:
            if isinstance(expanded, ins.Env):
                for pair in expanded.pairs:
                    if pair.legacy:
                        self._legacy(expanded, line)
                    self._secret_name("ENV", pair.key, line)
                    state.env.set(pair.key, pair.value)
                    _replace_env(state.image_env, pair.key, pair.value)
                history = "ENV " + " ".join(f"{p.key}={p.value}" for p in expanded.pairs)
                return self._step(state, expanded, history, True)
            if isinstance(expanded, ins.Label):
                labels = config.labels.to_dict()
                for pair in expanded.pairs:
                    if pair.legacy:
                        self._legacy(expanded, line)
                    labels[pair.key] = pair.value
                state.config = replace(config, labels=FrozenMap(labels))
                history = "LABEL " + " ".join(f"{p.key}={p.value}" for p in expanded.pairs)
                return self._step(state, expanded, history, True)
            if isinstance(expanded, ins.Run):
                return self._dispatch_run(info, state, position, expanded, infos)
            if isinstance(expanded, ins.Workdir):
                if not state.workdir_set and not expanded.path.startswith("/"):
                    self.warnings.append(
                        Warning(
                            "WorkdirRelativePath",
                            f'Relative workdir "{expanded.path}" can have unexpected results if the base image changes',
                            line,
                        )
                    )
                state.workdir_set = True
                workdir = _normalize_workdir(config.working_dir, expanded.path)
                step = self._step(state, expanded, f"WORKDIR {workdir}", workdir == "/", dest=workdir)
                state.config = replace(config, working_dir=workdir)
                return replace(step, workdir=workdir)
            if isinstance(expanded, ins.User):
                state.config = replace(config, user=expanded.user)
                return replace(self._step(state, expanded, f"USER {expanded.user}", True), user=expanded.user)
            if isinstance(expanded, ins.Copy | ins.Add):
                return self._dispatch_copy(info, state, position, expanded)
            if isinstance(expanded, ins.Cmd | ins.Entrypoint):
                return self._dispatch_command(state, expanded)
            if isinstance(expanded, ins.Healthcheck):
                if state.healthcheck_line:
                    self._multiple(expanded.written_keyword or "HEALTHCHECK", state.healthcheck_line)
                state.healthcheck_line = line
                health = Healthcheck(
                    expanded.test,
                    expanded.interval,
                    expanded.timeout,
                    expanded.start_period,
                    expanded.start_interval,
                    expanded.retries,
                )
                state.config = replace(config, healthcheck=health)
                return self._step(state, expanded, _healthcheck_history(health), True)
            if isinstance(expanded, ins.Expose):
                ports = _port_specs(
                    expanded.ports, lambda rule, message: self.warnings.append(Warning(rule, message, line))
                )
                state.config = replace(config, exposed_ports=tuple(sorted(set(config.exposed_ports) | set(ports))))
                history = "EXPOSE " + _go_list(ports, quoted=False)
                return self._step(state, replace(expanded, ports=tuple(ports)), history, True)
            if isinstance(expanded, ins.Volume):
                state.config = replace(config, volumes=tuple(sorted(set(config.volumes) | set(expanded.paths))))
                return self._step(state, expanded, "VOLUME " + _go_list(expanded.paths, quoted=False), True)
            if isinstance(expanded, ins.StopSignal):
                _check_signal(expanded.signal)
                state.config = replace(config, stop_signal=expanded.signal)
                return self._step(state, expanded, f"STOPSIGNAL {expanded.signal}", True)
            if isinstance(expanded, ins.Shell):
                state.config = replace(config, shell=expanded.shell)
                return self._step(state, expanded, "SHELL " + _go_list(expanded.shell, quoted=False), True)
            if isinstance(expanded, ins.Maintainer):
                state.author = expanded.maintainer
                return self._step(state, expanded, f"MAINTAINER {expanded.maintainer}", True)
            if isinstance(expanded, ins.Onbuild):
                state.config = replace(config, on_build=config.on_build + (expanded.expression,))
                return self._step(state, expanded, "", True)
        except DockerfileError as err:
            raise err.located(self.path, line) from None
        raise AssertionError(f"no dispatch for {type(instruction).__name__}")  # pragma: no cover

    def _legacy(self, instruction: ins.Instruction, line: int) -> None:
        name = instruction.written_keyword or instruction.keyword
        message = f'"{name} key=value" should be used instead of legacy "{name} key value" format'
        self.warnings.append(Warning("LegacyKeyValueFormat", message, line))

    def _secret_name(self, instruction: str, key: str, line: int) -> None:
        if looks_secret(key):
            message = f"Do not use ARG or ENV instructions for sensitive data ({instruction} {go_quote(key)})"
            self.warnings.append(Warning("SecretsUsedInArgOrEnv", message, line))

    def _multiple(self, name: str, previous_line: int) -> None:
        message = (
            f"Multiple {name} instructions should not be used in the same stage because only the last one will be used"
        )
        self.warnings.append(Warning("MultipleInstructionsDisallowed", message, previous_line))

    def _dispatch_arg(self, state: _StageState, arg: ins.Arg) -> Step:
        pairs = []
        for pair in arg.pairs:
            key = pair.key
            self._secret_name("ARG", key, arg.line)
            build_args = self.options.build_args
            value: str | None
            if key in build_args:
                value = build_args[key]
                self.consumed.add(key)
            elif pair.default is not None:
                value = self.expand_word(pair.default, state, arg.line)
            else:
                value = self.globals.get(key)
            if value is not None:
                state.env.set(key, value)
            state.build_args.append((key, value))
            pairs.append(ins.ArgPair(key, value))
        expanded = replace(arg, pairs=tuple(pairs))
        history = "ARG " + " ".join(p.key + ("" if p.default is None else f"={p.default}") for p in pairs)
        return self._step(state, expanded, history, True)

    def _proxy_env(self, state: _StageState) -> tuple[str, ...]:
        out = []
        for key, value in sorted(self.options.build_args.items()):
            if key.lower() in PROXY_ARGS:
                self.consumed.add(key)
                if state.env.get(key) is None:
                    out.append(f"{key}={value}")
        return tuple(out)

    def _dispatch_run(
        self, info: _StageInfo, state: _StageState, position: int, run: ins.Run, infos: list[_StageInfo]
    ) -> Step:
        line = run.line
        mounts = []
        sources: list[Source | None] = []
        for number, raw in enumerate(run.mounts):
            mounts.append(parse_mount(raw, lambda v: self.expand_word(v, state, line)))
            sources.append(info.mount_sources.get((position, number)))
        shell = state.config.shell or DEFAULT_SHELL
        args = run.command.args
        script: Heredoc | None = None
        if run.heredocs:
            if len(args) != 1 or run.command.exec_form:
                raise DockerfileError(f"parsing produced an invalid run command: {list(args)}")
            if parse_heredoc_word(args[0]) is not None:
                body = run.heredocs[0]
                if body.content.startswith("#!"):
                    script = body  # written to /dev/pipes/NAME (mode 0755) and run through the shell
                    argv: tuple[str, ...] = (*shell, posixpath.join("/dev/pipes", body.name))
                else:
                    argv = (*shell, body.text)
            else:
                full = args[0] + "".join(f"\n{h.content}{h.name}" for h in run.heredocs)
                argv = (*shell, full)
        else:
            argv = run.command.argv(shell)
        if not argv:
            raise DockerfileError("arguments are required")  # BuildKit's ExecOp.Validate, for RUN []
        proxy = self._proxy_env(state)
        env = state.env
        build_args: dict[str, str] = {}
        for key, value in state.build_args:
            current = env.get(key)
            build_args[key] = current if current is not None else (value or "")
        prefix = [f"|{len(build_args)}", *(f"{k}={v}" for k, v in build_args.items())] if build_args else []
        history = "RUN " + " ".join([*prefix, *argv]) + " # buildkit"
        return self._step(
            state,
            replace(run, mounts=tuple(run.mounts)),
            history,
            False,
            argv=argv,
            script=script,
            mounts=tuple(mounts),
            mount_sources=tuple(sources),
            proxy_env=proxy,
        )

    def _dispatch_copy(self, info: _StageInfo, state: _StageState, position: int, copy: ins.Copy | ins.Add) -> Step:
        line = copy.line
        is_add = isinstance(copy, ins.Add)
        source = info.sources.get(position, Source("context"))
        if is_add and copy.sources and all(_is_url(s) for s in copy.sources):
            source = Source("url")
        elif is_add and copy.sources and all(_is_git(s) for s in copy.sources):
            source = Source("git")
        if source.kind == "stage" and source.stage >= info.stage.index:
            current = info.stage.name or f"stage-{info.stage.index}"
            raise DockerfileError(
                f'cannot copy from stage "{copy.from_}", it needs to be defined before current stage "{current}"'  # type: ignore[union-attr]
            )
        heredocs = tuple(
            replace(h, content=self.expand_word(h.text, state, line, raw=True), chomp=False) if h.expand else h
            for h in copy.heredocs
        )
        copy = replace(copy, heredocs=heredocs)
        _check_chmod(copy.chmod)
        for src in copy.sources:
            if _is_git(src) and not is_add:
                raise DockerfileError("source can't be a git ref for COPY")
            if _is_url(src) and not is_add:
                raise DockerfileError("source can't be a URL for COPY")
        if isinstance(copy, ins.Add) and copy.checksum:
            if not (copy.sources and _is_git(copy.sources[0])):
                _check_digest(copy.checksum)
            if len(copy.sources) != 1:
                raise DockerfileError("checksum can't be specified for multiple sources")
            if not (_is_url(copy.sources[0]) or _is_git(copy.sources[0])):
                raise DockerfileError("checksum can't be specified for non-HTTP(S) sources")
        if source.kind == "context" and self.options.is_ignored is not None:
            for src in copy.sources:
                if not _is_url(src) and not _is_git(src) and self.options.is_ignored(src):
                    verb = "Add" if is_add else "Copy"
                    message = f'Attempting to {verb} file "{src}" that is excluded by .dockerignore'
                    self.warnings.append(Warning("CopyIgnoredFile", message, line))
        dest = _dest_path(state.config.working_dir, copy.dest)
        parts = ["ADD" if is_add else "COPY"]
        if isinstance(copy, ins.Copy) and copy.parents:
            parts.append("--parents")
        if copy.chown:
            parts.append(f"--chown={copy.chown}")
        if copy.chmod:
            parts.append(f"--chmod={copy.chmod}")
        parts.extend(copy.sources)
        parts.extend(f"<<{h.name}" for h in copy.heredocs)
        parts.append(copy.dest)
        history = " ".join(parts) + " # buildkit"
        return self._step(state, copy, history, False, source=source, dest=dest)

    def _dispatch_command(self, state: _StageState, command: ins.Cmd | ins.Entrypoint) -> Step:
        config = state.config
        name = command.keyword
        written = command.written_keyword or name
        line = command.line
        if not command.command.exec_form and not config.shell:
            self.warnings.append(
                Warning(
                    "JSONArgsRecommended",
                    f"JSON arguments recommended for {written} to prevent unintended behavior related to OS signals",
                    line,
                )
            )
        argv = command.command.argv(config.shell or DEFAULT_SHELL)
        if isinstance(command, ins.Cmd):
            if state.cmd_line:
                self._multiple(written, state.cmd_line)
            state.cmd_line = line
            state.config = replace(config, cmd=argv, args_escaped=True)
        else:
            if state.entrypoint_line:
                self._multiple(written, state.entrypoint_line)
            state.entrypoint_line = line
            state.config = replace(config, entrypoint=argv, cmd=config.cmd if state.cmd_line else None)
        return self._step(state, command, f"{name} {_go_list(argv, quoted=True)}", True, argv=argv)

    # --- the whole plan

    def _may_depend_on_base(self, infos: Sequence[_StageInfo], index: int, line: int) -> bool:
        """Whether an error at ``line`` in stage ``index`` may go away once the base image's config is known: the
        stage comes from an image, and the error is in its ONBUILD triggers (reported at FROM) or in an
        instruction that expands a variable the image's ENV may set."""
        base = infos[index].base
        while base.kind == "stage":
            base = infos[base.stage].base
        if base.kind != "image":
            return False
        if line == infos[index].stage.start.line:
            return True
        for raw in self.ast.instructions:
            if raw.start_line == line:
                return "$" in raw.original or any("$" in h.content for h in raw.heredocs)
        return True

    def run(self) -> BuildPlan:
        stages, global_args = ins.to_stages(self.ast)
        directive = self.options.checks or self.ast.directives.check
        try:
            checks = parse_check_directive(directive)
        except DockerfileError as err:
            raise err.located(self.path, 1) from None
        self.warnings.extend(file_checks(self.ast, stages, global_args))
        build_args = self.options.build_args
        self.globals = self.meta_args(global_args, build_args)
        for arg in global_args:
            for pair in arg.pairs:
                if pair.key in build_args:
                    self.consumed.add(pair.key)
        infos = self.resolve_stages(stages, global_args, self.globals)
        if self.options.target:
            matches = [i for i in infos if i.stage.name and i.stage.name == self.options.target.lower()]
            if not matches:
                raise DockerfileError(f'target stage "{self.options.target}" could not be found', path=self.path)
            target = matches[-1].stage.index
        else:
            target = infos[-1].stage.index
        self.link(infos)
        self.check_cycles(infos)
        wanted = range(len(infos)) if self.options.all_stages else self.reachable(infos, target)
        planned: dict[int, tuple[PlannedStage, _StageState]] = {}
        for index in wanted:
            try:
                planned[index] = self.plan_stage(infos[index], infos, planned)
            except DockerfileError as err:
                if self.checking and self._may_depend_on_base(infos, index, err.line):
                    raise _Deferred from None
                raise
        target_stage = planned[target][0]
        if self.options.labels:
            runtime = target_stage.config.config
            labels = {**runtime.labels, **self.options.labels}
            new_config = replace(target_stage.config, config=replace(runtime, labels=FrozenMap(labels)))
            planned[target] = (replace(target_stage, config=new_config), planned[target][1])
        unused = sorted(
            k for k in build_args if k not in self.consumed and k.lower() not in PROXY_ARGS and k not in BUILTIN_ARGS
        )
        return BuildPlan(
            path=self.path,
            directives=self.ast.directives,
            stages=tuple(planned[i][0] for i in sorted(planned)),
            target=target,
            platform=self.options.target_platform,
            warnings=tuple(select(self.warnings, checks)),
            unused_build_args=tuple(unused),
            checks=checks,
        )


def _replace_env(env: list[str], key: str, value: str) -> None:
    for i, entry in enumerate(env):
        if entry.split("=", 1)[0] == key:
            env[i] = f"{key}={value}"
            return
    env.append(f"{key}={value}")


def _suggest_any(message: str, names: frozenset[str], options: Sequence[str]) -> str:
    """BuildKit's wrapSuggestAny: a suggestion for the first unmatched name that has one."""
    for name in sorted(names):
        close = suggest(name, options)
        if close:
            return f"{message} (did you mean {close}?)"
    return message


def _reference_error(text: str) -> str:
    """distribution/reference's ParseNormalizedNamed messages."""
    if re.fullmatch(r"[a-f0-9]{64}", text):
        return f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings"
    first, slash, rest = text.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        remainder = rest
    else:
        remainder = text if "/" in text else f"library/{text}"
    remote = remainder.split("@", 1)[0].split(":", 1)[0]
    if remote.lower() != remote:
        return f"invalid reference format: repository name ({remote}) must be lowercase"
    return "invalid reference format"


def plan_build(ast: DockerfileAST, options: PlanOptions, base_configs: BaseConfigs = _no_configs) -> BuildPlan:
    """The resolved plan for ``ast`` under ``options``. Raises ``DockerfileError`` with ``path:line``."""
    return _Planner(ast, options, base_configs).run()


def check_dockerfile(ast: DockerfileAST, options: PlanOptions) -> None:
    """Raise the plan's first error that no base image's config can avoid, without asking for any config: run
    before a build touches the store or the network, so that a broken Dockerfile fails with no side effect.

    An error in a stage built on an image, in an instruction that expands a variable (which the image's ENV may
    set) or in the image's ONBUILD triggers, waits for the build's own plan, which has the config."""
    try:
        _Planner(ast, options, _no_configs, checking=True).run()
    except _Deferred:
        pass


def plan_dockerfile(
    data: bytes | str, options: PlanOptions, path: str = "Dockerfile", base_configs: BaseConfigs = _no_configs
) -> BuildPlan:
    return plan_build(parse_dockerfile(data, path), options, base_configs)
