"""Build checks: BuildKit's Dockerfile rules that need nothing but the file and the build options.

Each rule has BuildKit's name and message. Rules that look at the file alone (casing, stage names, empty
continuation lines, MAINTAINER) run here over the parsed stages; rules that need the values in scope
(undefined variables, relative WORKDIR, JSON-form CMD, ...) are reported by the plan as it walks the steps. The
``# check=`` directive (``skip=RuleA,RuleB`` or ``skip=all``; ``error=true``) and ``--check`` use the same
configuration.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from builder.errors import DockerfileError
from builder.frontend.dockerfile import DockerfileAST
from builder.frontend.instructions import Arg, From, Instruction, Maintainer, Stage

__all__ = ["RULES", "CheckConfig", "Rule", "Warning", "file_checks", "parse_check_directive"]


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    description: str

    @property
    def url(self) -> str:
        kebab = "".join(f"-{c.lower()}" if c.isupper() else c for c in self.name).lstrip("-")
        return f"https://docs.docker.com/go/dockerfile/rule/{kebab}/"


@dataclass(frozen=True, slots=True)
class Warning:  # noqa: A001 - the build-check term; shadows nothing used here
    rule: str
    message: str
    line: int

    def render(self, path: str) -> str:
        return f"{path}:{self.line}: {self.rule}: {self.message}"


RULES = {
    rule.name: rule
    for rule in (
        Rule("StageNameCasing", "Stage names should be lowercase"),
        Rule("FromAsCasing", "The 'as' keyword should match the case of the 'from' keyword"),
        Rule("NoEmptyContinuation", "Empty continuation lines will become errors in a future release"),
        Rule(
            "ConsistentInstructionCasing",
            "All commands within the Dockerfile should use the same casing (either upper or lower)",
        ),
        Rule("DuplicateStageName", "Stage names should be unique"),
        Rule("ReservedStageName", "Reserved words should not be used as stage names"),
        Rule("JSONArgsRecommended", "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior"),
        Rule("MaintainerDeprecated", "The MAINTAINER instruction is deprecated, use a label instead"),
        Rule("UndefinedArgInFrom", "FROM command must use declared ARGs"),
        Rule("WorkdirRelativePath", "Relative workdir without an absolute workdir declared within the build"),
        Rule("UndefinedVar", "Variables should be defined before their use"),
        Rule("MultipleInstructionsDisallowed", "Multiple instructions of the same type should not be used"),
        Rule("LegacyKeyValueFormat", "Legacy key/value format with whitespace separator should not be used"),
        Rule("RedundantTargetPlatform", "Setting platform to predefined $TARGETPLATFORM in FROM is redundant"),
        Rule("SecretsUsedInArgOrEnv", "Sensitive data should not be used in the ARG or ENV commands"),
        Rule("InvalidDefaultArgInFrom", "Default value for global ARG results in an empty or invalid base image"),
        Rule("FromPlatformFlagConstDisallowed", "FROM --platform flag should not use a constant value"),
        Rule("CopyIgnoredFile", "Attempting to Copy file that is excluded by .dockerignore"),
        Rule("InvalidBaseImagePlatform", "Base image platform does not match expected target platform"),
    )
}

_RESERVED_STAGE_NAMES = ("context", "scratch")
_SECRET_WORDS = ("apikey", "auth", "credential", "credentials", "key", "password", "pword", "passwd", "secret", "token")


@dataclass(frozen=True, slots=True)
class CheckConfig:
    skip: frozenset[str] = frozenset()
    skip_all: bool = False
    error: bool = False

    def enabled(self, rule: str) -> bool:
        return not self.skip_all and rule not in self.skip


def parse_check_directive(value: str) -> CheckConfig:
    """``skip=A,B;error=true`` as in BuildKit's ``# check=`` directive and BUILDKIT_DOCKERFILE_CHECK."""
    skip: set[str] = set()
    skip_all = False
    error = False
    for part in value.split(";"):
        part = part.strip()
        if not part:
            continue
        key, eq, rest = part.partition("=")
        key = key.strip().lower()
        if not eq:
            raise DockerfileError(f"invalid check option {part!r}: expected key=value")
        if key == "skip":
            names = [n.strip() for n in rest.split(",") if n.strip()]
            if any(n.lower() == "all" for n in names):
                skip_all = True
            skip.update(names)
        elif key == "error":
            if rest.strip().lower() not in ("true", "false"):
                raise DockerfileError(f"invalid check option error={rest!r}: expected true or false")
            error = rest.strip().lower() == "true"
        elif key == "experimental":
            continue  # experimental rules: none are implemented, so there is nothing to enable
        else:
            raise DockerfileError(f"invalid check option {key!r} (expected skip, error or experimental)")
    return CheckConfig(frozenset(skip), skip_all, error)


def looks_secret(name: str) -> bool:
    """SecretsUsedInArgOrEnv: a ``_``-separated word of the name is a secret word, and none says "public"."""
    words = name.lower().split("_")
    return any(w in _SECRET_WORDS for w in words) and "public" not in words


def _casing(word: str) -> str | None:
    if word == word.lower():
        return "lower"
    if word == word.upper():
        return "upper"
    return None


def file_checks(ast: DockerfileAST, stages: Sequence[Stage], global_args: Sequence[Arg]) -> list[Warning]:
    """The rules that need only the parsed file."""
    warnings: list[Warning] = []
    for raw in ast.instructions:
        if raw.empty_continuation:
            warnings.append(Warning("NoEmptyContinuation", "Empty continuation line", raw.empty_continuation))
    # BuildKit counts casing over the stages only: ARGs before the first FROM are not in them.
    everything: list[Instruction] = []
    for stage in stages:
        everything.append(stage.start)
        everything.extend(stage.instructions)
    lower = sum(1 for i in everything if _casing(i.written_keyword) == "lower")
    upper = sum(1 for i in everything if _casing(i.written_keyword) == "upper")
    majority = "lowercase" if lower > upper else "uppercase"
    for instruction in sorted(everything, key=lambda i: i.line):
        written = instruction.written_keyword
        if (majority == "lowercase" and written != written.lower()) or (
            majority == "uppercase" and written != written.upper()
        ):
            warnings.append(
                Warning(
                    "ConsistentInstructionCasing",
                    f"Command '{written}' should match the case of the command majority ({majority})",
                    instruction.line,
                )
            )
        if isinstance(instruction, Maintainer):
            warnings.append(
                Warning(
                    "MaintainerDeprecated",
                    "Maintainer instruction is deprecated in favor of using label",
                    instruction.line,
                )
            )
    seen: set[str] = set()
    for stage in stages:
        start: From = stage.start
        words = start.original.split()
        if start.name and len(words) >= 3:
            as_word = next((w for w in words[1:] if w.lower() == "as"), "")
            written_name = words[-1]
            if written_name != written_name.lower():
                warnings.append(
                    Warning("StageNameCasing", f"Stage name '{written_name}' should be lowercase", start.line)
                )
            if (
                as_word
                and _casing(as_word)
                and _casing(start.written_keyword)
                and _casing(as_word) != _casing(start.written_keyword)
            ):
                warnings.append(
                    Warning(
                        "FromAsCasing",
                        f"'{as_word}' and '{start.written_keyword}' keywords' casing do not match",
                        start.line,
                    )
                )
        if start.name:
            if start.name in _RESERVED_STAGE_NAMES:
                warnings.append(
                    Warning(
                        "ReservedStageName",
                        f'Stage name should not use the same name as reserved stage "{start.name}"',
                        start.line,
                    )
                )
            if start.name in seen:
                warnings.append(
                    Warning(
                        "DuplicateStageName",
                        f'Duplicate stage name "{start.name}", stage names should be unique',
                        start.line,
                    )
                )
            seen.add(start.name)
    return warnings


def select(warnings: Iterable[Warning], config: CheckConfig) -> list[Warning]:
    """The warnings the configuration keeps, in line order, without repeats."""
    kept: dict[tuple[str, str, int], Warning] = {}
    for warning in warnings:
        if config.enabled(warning.rule):
            kept.setdefault((warning.rule, warning.message, warning.line), warning)
    return sorted(kept.values(), key=lambda w: (w.line, w.rule))
