"""The build plan: ARG/ENV scoping, stage graphs, expansion per instruction, history, and the build checks.

Each case is named after the Dockerfile-reference (or BuildKit) rule it checks. The expected values are
BuildKit's: dockerfile2llb's dispatch functions, the reference's "Scope" and "Environment replacement"
sections, and the build-checks documentation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from builder.errors import DockerfileError
from builder.plan import DEFAULT_PATH, BuildPlan, PlanOptions, Step, plan_dockerfile
from oci.config import ImageConfig, RuntimeConfig
from oci.descriptor import Platform
from oci.frozen import FrozenMap

AMD64 = Platform("linux", "amd64")


def plan(text: str, configs: dict[str, ImageConfig] | None = None, **options: Any) -> BuildPlan:
    if "build_args" in options:
        options["build_args"] = FrozenMap(options["build_args"])
    if "labels" in options:
        options["labels"] = FrozenMap(options["labels"])
    if "contexts" in options:
        options["contexts"] = frozenset(options["contexts"])
    opts = PlanOptions(build_platform=AMD64, **options)
    known = configs or {}
    return plan_dockerfile(text.lstrip("\n"), opts, "Dockerfile", lambda ref, platform: known.get(ref))


def step(p: BuildPlan, line: int) -> Step:
    for stage in p.stages:
        for s in stage.steps:
            if s.line == line:
                return s
    raise AssertionError(f"no step at line {line}")


def env(p: BuildPlan, line: int) -> dict[str, str]:
    return dict(e.split("=", 1) for e in step(p, line).env)


def rules(p: BuildPlan) -> list[tuple[str, int]]:
    return [(w.rule, w.line) for w in p.warnings]


def config(p: BuildPlan) -> RuntimeConfig:
    return p.stage(p.target).config.config


@dataclass
class Case:
    id: str
    dockerfile: str
    check: Callable[[BuildPlan], object]
    options: dict[str, Any] = field(default_factory=dict)
    configs: dict[str, ImageConfig] | None = None


def run_case(case: Case) -> None:
    result = case.check(plan(case.dockerfile, case.configs, **case.options))
    assert result is None or result is True, result


def cases(*items: Case) -> Any:
    return pytest.mark.parametrize("case", items, ids=[c.id for c in items])


BASE_WITH_ENV = {
    "docker.io/library/app:1": ImageConfig(
        "amd64",
        "linux",
        RuntimeConfig(
            env=("PATH=/opt/bin:/bin", "HOME=/root"),
            working_dir="/srv",
            user="app",
            cmd=("serve",),
            on_build=("RUN echo from-the-base-image",),
        ),
    )
}

# ---------------------------------------------------------------------------------------- ARG and ENV


@cases(
    Case(
        "global-arg-expands-from",
        "ARG V=3.18\nFROM alpine:$V\n",
        lambda p: p.stages[0].base.ref == "docker.io/library/alpine:3.18",
    ),
    Case(
        "build-arg-overrides-global-default",
        "ARG V=3.18\nFROM alpine:${V}\n",
        lambda p: p.stages[0].base.ref == "docker.io/library/alpine:3.19",
        {"build_args": {"V": "3.19"}},
    ),
    Case(
        "global-arg-default-expands-earlier-global",
        "ARG A=alp\nARG B=${A}ine\nFROM $B\n",
        lambda p: p.stages[0].base.ref == "docker.io/library/alpine:latest",
    ),
    Case(
        "global-arg-not-in-stage-scope",
        "ARG V=1\nFROM scratch\nENV X=$V\n",
        lambda p: env(p, 3)["X"] == "" and ("UndefinedVar", 3) in rules(p),
    ),
    Case(
        "global-arg-redeclared-takes-global-value",
        "ARG V=1\nFROM scratch\nARG V\nENV X=$V\n",
        lambda p: env(p, 4)["X"] == "1",
    ),
    Case(
        "global-arg-redeclared-takes-build-arg",
        "ARG V=1\nFROM scratch\nARG V\nENV X=$V\n",
        lambda p: env(p, 4)["X"] == "2",
        {"build_args": {"V": "2"}},
    ),
    Case(
        "build-arg-overrides-stage-default",
        "FROM scratch\nARG V=1\nENV X=$V\n",
        lambda p: env(p, 3)["X"] == "9",
        {"build_args": {"V": "9"}},
    ),
    Case(
        "stage-arg-default-sees-earlier-arg",
        "FROM scratch\nARG A=x\nARG B=${A}y\nENV C=$B\n",
        lambda p: env(p, 4)["C"] == "xy",
    ),
    Case("several-args-on-one-line", "FROM scratch\nARG A=1 B=$A\nENV C=$B\n", lambda p: env(p, 3)["C"] == "1"),
    Case(
        "env-defined-after-arg-wins",
        "FROM scratch\nARG X=arg\nENV X=env\nRUN echo\n",
        lambda p: env(p, 4)["X"] == "env",
    ),
    Case(
        "arg-defined-after-env-wins-in-the-step-environment",
        "FROM scratch\nENV X=env\nARG X=arg\nRUN echo\n",
        lambda p: env(p, 4)["X"] == "arg" and "X=env" in config(p).env,
    ),
    Case(
        "arg-without-value-is-unset",
        "FROM scratch\nARG X\nRUN echo\n",
        lambda p: "X" not in env(p, 3) and step(p, 3).build_args == (("X", None),),
    ),
    Case(
        "arg-values-stay-out-of-the-image-config",
        "FROM scratch\nARG SECRETLESS=1\n",
        lambda p: not any(e.startswith("SECRETLESS") for e in config(p).env),
    ),
    Case(
        "env-goes-into-the-image-config",
        "FROM scratch\nENV A=1 B=2\n",
        lambda p: config(p).env == (f"PATH={DEFAULT_PATH}", "A=1", "B=2"),
    ),
    Case(
        "env-replaces-in-place",
        "FROM scratch\nENV A=1 B=2\nENV A=3\n",
        lambda p: config(p).env == (f"PATH={DEFAULT_PATH}", "A=3", "B=2"),
    ),
    Case("path-is-set-when-the-base-has-none", "FROM scratch\nRUN true\n", lambda p: env(p, 2)["PATH"] == DEFAULT_PATH),
    Case(
        "env-legacy-form-value-is-the-rest-of-the-line",
        "FROM scratch\nENV GREETING hello  world\n",
        lambda p: env(p, 2)["GREETING"] == "hello  world",
    ),
    Case(
        "env-quotes-removed-by-expansion",
        "FROM scratch\nENV A=\"two words\" B='$literal'\n",
        lambda p: (env(p, 2)["A"], env(p, 2)["B"]) == ("two words", "$literal"),
    ),
    Case(
        "env-value-sees-earlier-pairs-of-its-own-line-only-after",
        "FROM scratch\nENV A=1\nENV A=2 B=$A\n",
        lambda p: env(p, 3)["B"] == "1",
    ),
    Case(
        "platform-args-in-global-scope",
        "FROM --platform=$BUILDPLATFORM alpine\n",
        lambda p: p.stages[0].platform == AMD64,
    ),
    Case(
        "platform-args-redeclared-in-stage",
        "FROM scratch\nARG TARGETARCH\nARG TARGETPLATFORM\nRUN x\n",
        lambda p: (env(p, 4)["TARGETARCH"], env(p, 4)["TARGETPLATFORM"]) == ("arm64", "linux/arm64"),
        {"platform": Platform("linux", "arm64")},
    ),
    Case(
        "platform-args-need-declaring-in-stage",
        "FROM scratch\nRUN echo $TARGETARCH\n",
        lambda p: "TARGETARCH" not in env(p, 2),
    ),
    Case(
        "target-platform-sets-the-image-platform",
        "FROM scratch\n",
        lambda p: (p.stages[0].config.architecture, p.stages[0].config.variant) == ("arm", "v7"),
        {"platform": Platform.parse("linux/arm/v7")},
    ),
    Case(
        "proxy-args-need-no-declaration",
        "FROM scratch\nRUN true\n",
        lambda p: (
            step(p, 2).proxy_env == ("HTTPS_PROXY=http://proxy:3128",)
            and "proxy" not in step(p, 2).history
            and p.unused_build_args == ()
        ),
        {"build_args": {"HTTPS_PROXY": "http://proxy:3128"}},
    ),
    Case(
        "unused-build-args-are-reported",
        "FROM scratch\nARG USED\n",
        lambda p: p.unused_build_args == ("EXTRA",),
        {"build_args": {"USED": "1", "EXTRA": "2"}},
    ),
    Case(
        "global-arg-consumes-build-arg",
        "ARG V\nFROM scratch\n",
        lambda p: p.unused_build_args == (),
        {"build_args": {"V": "1"}},
    ),
    Case(
        "builtin-build-args-are-never-unused",
        "FROM scratch\n",
        lambda p: p.unused_build_args == (),
        {"build_args": {"SOURCE_DATE_EPOCH": "0", "BUILDKIT_INLINE_CACHE": "1"}},
    ),
    Case(
        "child-stage-inherits-args-and-env",
        "FROM scratch AS a\nARG X=1\nENV Y=2\nFROM a\nRUN true\n",
        lambda p: env(p, 5)["X"] == "1" and env(p, 5)["Y"] == "2" and step(p, 5).build_args == (("X", "1"),),
    ),
    Case(
        "base-image-env-expands-instructions",
        "FROM app:1\nWORKDIR $HOME/x\n",
        lambda p: step(p, 2).dest == "/root/x",
        configs=BASE_WITH_ENV,
    ),
    Case(
        "base-image-path-is-kept",
        "FROM app:1\nRUN true\n",
        lambda p: env(p, 2)["PATH"] == "/opt/bin:/bin",
        configs=BASE_WITH_ENV,
    ),
    Case(
        "base-image-workdir-and-user-apply",
        "FROM app:1\nRUN true\n",
        lambda p: (step(p, 2).workdir, step(p, 2).user) == ("/srv", "app"),
        configs=BASE_WITH_ENV,
    ),
)
def test_arg_and_env_scoping(case: Case) -> None:
    run_case(case)


# ------------------------------------------------------------------------------- expansion per instruction


@cases(
    Case(
        "run-is-not-expanded",
        "FROM scratch\nENV A=1\nRUN echo $A\n",
        lambda p: step(p, 3).argv == ("/bin/sh", "-c", "echo $A"),
    ),
    Case(
        "cmd-is-not-expanded",
        "FROM scratch\nENV A=1\nCMD echo $A\n",
        lambda p: config(p).cmd == ("/bin/sh", "-c", "echo $A"),
    ),
    Case(
        "entrypoint-is-not-expanded",
        'FROM scratch\nENV A=1\nENTRYPOINT ["$A"]\n',
        lambda p: config(p).entrypoint == ("$A",),
    ),
    Case(
        "copy-sources-and-dest-expand",
        "FROM scratch\nENV D=/opt S=src\nCOPY $S ${D}/\n",
        lambda p: (step(p, 3).instruction.sources, step(p, 3).dest) == (("src",), "/opt/"),
    ),  # type: ignore[attr-defined]
    Case(
        "copy-source-with-space-stays-one-path",
        'FROM scratch\nARG F="a b"\nCOPY $F /d\n',
        lambda p: step(p, 3).instruction.sources == ("a b",),
    ),  # type: ignore[attr-defined]
    Case(
        "copy-chown-and-chmod-expand",
        "FROM scratch\nARG U=1000 M=640\nCOPY --chown=$U --chmod=$M a /b\n",
        lambda p: (step(p, 3).instruction.chown, step(p, 3).instruction.chmod) == ("1000", "640"),
    ),  # type: ignore[attr-defined]
    Case(
        "label-keys-and-values-expand",
        'FROM scratch\nARG K=version V=1.2\nLABEL $K=$V "a b"=c\n',
        lambda p: dict(config(p).labels) == {"version": "1.2", "a b": "c"},
    ),
    Case(
        "workdir-expands-and-joins-relative-paths",
        "FROM scratch\nWORKDIR /a\nARG D=b\nWORKDIR $D\nWORKDIR ../c\n",
        lambda p: config(p).working_dir == "/a/c",
    ),
    Case("user-expands", "FROM scratch\nARG U=nobody\nUSER $U:$U\n", lambda p: config(p).user == "nobody:nobody"),
    Case(
        "expose-expands-and-splits-words",
        'FROM scratch\nARG P="80 443/udp"\nEXPOSE $P 8000-8001\n',
        lambda p: config(p).exposed_ports == ("443/udp", "80/tcp", "8000/tcp", "8001/tcp"),
    ),
    Case(
        "volume-expands",
        'FROM scratch\nARG D=/data\nVOLUME ["$D", "/logs"]\n',
        lambda p: config(p).volumes == ("/data", "/logs"),
    ),
    Case(
        "stopsignal-expands", "FROM scratch\nARG S=SIGINT\nSTOPSIGNAL $S\n", lambda p: config(p).stop_signal == "SIGINT"
    ),
    Case(
        "healthcheck-is-not-expanded",
        "FROM scratch\nENV A=1\nHEALTHCHECK CMD check $A\n",
        lambda p: config(p).healthcheck.test == ("CMD-SHELL", "check $A"),
    ),  # type: ignore[union-attr]
    Case(
        "copy-heredoc-unquoted-expands-keeping-quotes",
        'FROM scratch\nARG N=World\nCOPY <<EOF /greeting\nsay "hi $N"\nEOF\n',
        lambda p: step(p, 3).instruction.heredocs[0].content == 'say "hi World"\n',
    ),  # type: ignore[attr-defined]
    Case(
        "copy-heredoc-quoted-is-literal",
        "FROM scratch\nARG N=World\nCOPY <<'EOF' /greeting\nhi $N\nEOF\n",
        lambda p: step(p, 3).instruction.heredocs[0].content == "hi $N\n",
    ),  # type: ignore[attr-defined]
    Case(
        "run-heredoc-runs-in-the-shell",
        "FROM scratch\nRUN <<EOF\necho one\necho two\nEOF\n",
        lambda p: step(p, 2).argv == ("/bin/sh", "-c", "echo one\necho two\n"),
    ),
    Case(
        "run-heredoc-with-shebang-runs-as-a-script",
        "FROM scratch\nRUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n",
        lambda p: step(p, 2).argv == ("/bin/sh", "-c", "/dev/pipes/EOF") and step(p, 2).script is not None,
    ),
    Case(
        "run-heredoc-as-command-input",
        "FROM scratch\nRUN python3 <<EOF\nprint(1)\nEOF\n",
        lambda p: step(p, 2).argv == ("/bin/sh", "-c", "python3 <<EOF\nprint(1)\nEOF"),
    ),
    Case(
        "run-heredoc-chomp-strips-tabs",
        "FROM scratch\nRUN <<-EOF\n\techo hi\n\tEOF\n",
        lambda p: step(p, 2).argv == ("/bin/sh", "-c", "echo hi\n"),
    ),
    Case(
        "run-mounts-expand-values",
        "FROM scratch\nARG T=/cache\nRUN --mount=type=cache,target=$T true\n",
        lambda p: step(p, 3).mounts[0].target == "/cache" and step(p, 3).mounts[0].readonly is False,
    ),
    Case(
        "secret-mount-defaults-target-from-id",
        "FROM scratch\nRUN --mount=type=secret,id=npmrc true\n",
        lambda p: (step(p, 2).mounts[0].target, step(p, 2).mounts[0].readonly) == ("/run/secrets/npmrc", True),
    ),
    Case(
        "secret-mount-as-env-has-no-file",
        "FROM scratch\nRUN --mount=type=secret,id=tok,env=TOKEN true\n",
        lambda p: (step(p, 2).mounts[0].target, step(p, 2).mounts[0].env) == ("", "TOKEN"),
    ),
    Case(
        "ssh-mount-default-id",
        "FROM scratch\nRUN --mount=type=ssh true\n",
        lambda p: step(p, 2).mounts[0].id == "default",
    ),
    Case(
        "tmpfs-size-in-bytes",
        "FROM scratch\nRUN --mount=type=tmpfs,target=/t,size=64m true\n",
        lambda p: step(p, 2).mounts[0].size == 64 * 1024 * 1024,
    ),
    Case(
        "shell-instruction-changes-shell-form",
        'FROM scratch\nSHELL ["/bin/bash", "-eo", "pipefail", "-c"]\nRUN a | b\n',
        lambda p: step(p, 3).argv == ("/bin/bash", "-eo", "pipefail", "-c", "a | b"),
    ),
    Case(
        "exec-form-runs-as-is",
        'FROM scratch\nRUN ["/bin/echo", "a b"]\n',
        lambda p: step(p, 2).argv == ("/bin/echo", "a b"),
    ),
    Case(
        "copy-dest-relative-to-workdir",
        "FROM scratch\nWORKDIR /app\nCOPY a b/\nCOPY c .\n",
        lambda p: (step(p, 3).dest, step(p, 4).dest) == ("/app/b/", "/app/"),
    ),
    Case(
        "copy-parents-pivot-kept",
        "FROM scratch\nCOPY --parents src/./lib/*.py /dst/\n",
        lambda p: step(p, 2).instruction.parents is True,
    ),  # type: ignore[attr-defined]
)
def test_expansion_per_instruction(case: Case) -> None:
    run_case(case)


# ------------------------------------------------------------------------------------------ the config


@cases(
    Case(
        "cmd-shell-form-wraps-in-shell",
        "FROM scratch\nCMD run it\n",
        lambda p: config(p).cmd == ("/bin/sh", "-c", "run it"),
    ),
    Case("cmd-sets-args-escaped", 'FROM scratch\nCMD ["x"]\n', lambda p: config(p).args_escaped is True),
    Case(
        "entrypoint-clears-inherited-cmd",
        'FROM scratch AS a\nCMD ["x"]\nFROM a\nENTRYPOINT ["y"]\n',
        lambda p: (config(p).entrypoint, config(p).cmd) == (("y",), None),
    ),
    Case(
        "entrypoint-keeps-cmd-of-same-stage",
        'FROM scratch\nCMD ["x"]\nENTRYPOINT ["y"]\n',
        lambda p: config(p).cmd == ("x",),
    ),
    Case(
        "entrypoint-clears-base-image-cmd",
        'FROM app:1\nENTRYPOINT ["y"]\n',
        lambda p: config(p).cmd is None,
        configs=BASE_WITH_ENV,
    ),
    Case(
        "healthcheck-durations-in-nanoseconds",
        "FROM scratch\nHEALTHCHECK --interval=1m30s --retries=3 CMD curl -f x\n",
        lambda p: (config(p).healthcheck.interval, config(p).healthcheck.retries) == (90_000_000_000, 3),
    ),  # type: ignore[union-attr]
    Case("healthcheck-none", "FROM scratch\nHEALTHCHECK NONE\n", lambda p: config(p).healthcheck.test == ("NONE",)),  # type: ignore[union-attr]
    Case(
        "maintainer-sets-author", "FROM scratch\nMAINTAINER someone\n", lambda p: p.stages[0].config.author == "someone"
    ),
    Case(
        "onbuild-is-recorded-not-run",
        "FROM scratch\nONBUILD RUN make\n",
        lambda p: config(p).on_build == ("RUN make",) and len(p.stages[0].steps) == 1,
    ),
    Case(
        "labels-from-options-go-to-the-target",
        "FROM scratch\nLABEL a=1\n",
        lambda p: dict(config(p).labels) == {"a": "1", "b": "2"},
        {"labels": {"b": "2"}},
    ),
)
def test_image_config(case: Case) -> None:
    run_case(case)


# ----------------------------------------------------------------------------------------------- history


@cases(
    Case("history-env", "FROM scratch\nENV A=1 B=two\n", lambda p: step(p, 2).history == "ENV A=1 B=two"),
    Case("history-label", "FROM scratch\nLABEL a=b\n", lambda p: step(p, 2).history == "LABEL a=b"),
    Case("history-arg", "FROM scratch\nARG A=1 B\n", lambda p: step(p, 2).history == "ARG A=1 B"),
    Case(
        "history-run-lists-build-args",
        "FROM scratch\nARG A=1\nRUN make\n",
        lambda p: step(p, 3).history == "RUN |1 A=1 /bin/sh -c make # buildkit",
    ),
    Case(
        "history-run-without-args",
        "FROM scratch\nRUN make\n",
        lambda p: step(p, 2).history == "RUN /bin/sh -c make # buildkit",
    ),
    Case(
        "history-copy-with-flags",
        "FROM scratch\nCOPY --chown=1:1 --chmod=644 a b /d/\n",
        lambda p: step(p, 2).history == "COPY --chown=1:1 --chmod=644 a b /d/ # buildkit",
    ),
    Case(
        "history-copy-heredoc",
        "FROM scratch\nCOPY <<EOF /f\nx\nEOF\n",
        lambda p: step(p, 2).history == "COPY <<EOF /f # buildkit",
    ),
    Case(
        "history-workdir",
        "FROM scratch\nWORKDIR /a\n",
        lambda p: step(p, 2).history == "WORKDIR /a" and not step(p, 2).empty_layer,
    ),
    Case("history-workdir-root-is-empty", "FROM scratch\nWORKDIR /\n", lambda p: step(p, 2).empty_layer),
    Case(
        "history-cmd-go-quoted", 'FROM scratch\nCMD ["a", "b c"]\n', lambda p: step(p, 2).history == 'CMD ["a" "b c"]'
    ),
    Case(
        "history-expose-map",
        "FROM scratch\nEXPOSE 443 80/udp\n",
        lambda p: step(p, 2).history == "EXPOSE [443/tcp 80/udp]",
    ),
    Case("history-volume", 'FROM scratch\nVOLUME ["/a", "/b"]\n', lambda p: step(p, 2).history == "VOLUME [/a /b]"),
    Case("history-user", "FROM scratch\nUSER 1000\n", lambda p: step(p, 2).history == "USER 1000"),
    Case(
        "history-shell",
        'FROM scratch\nSHELL ["/bin/bash", "-c"]\n',
        lambda p: step(p, 2).history == "SHELL [/bin/bash -c]",
    ),
    Case(
        "history-config-instructions-have-no-layer",
        'FROM scratch\nENV A=1\nLABEL b=2\nUSER x\nCMD ["y"]\n',
        lambda p: all(s.empty_layer for s in p.stages[0].steps),
    ),
    Case(
        "history-comment-is-buildkits",
        "FROM scratch\nRUN x\n",
        lambda p: p.stages[0].config.history[-1].comment == "buildkit.dockerfile.v0",
    ),
    Case("history-onbuild-has-none", "FROM scratch\nONBUILD RUN x\n", lambda p: p.stages[0].config.history == ()),
)
def test_history(case: Case) -> None:
    run_case(case)


# ---------------------------------------------------------------------------------------- stage graphs


def names(p: BuildPlan) -> list[str]:
    return [s.display for s in p.stages]


@cases(
    Case("from-earlier-stage-by-name", "FROM scratch AS a\nFROM a\n", lambda p: p.stages[1].base.kind == "stage"),
    Case(
        "from-stage-is-matched-exactly",
        "FROM scratch AS build\nFROM build:latest\n",
        lambda p: p.stages[0].base.ref == "docker.io/library/build:latest" and names(p) == ["stage-1"],
    ),
    Case(
        "from-later-stage-name-is-an-image",
        "FROM b AS a\nFROM scratch AS b\n",
        lambda p: p.stages[0].base.kind == "image",
        {"target": "a"},
    ),
    Case("default-target-is-the-last-stage", "FROM scratch AS a\nFROM scratch AS b\n", lambda p: names(p) == ["b"]),
    Case(
        "target-is-case-insensitive",
        "FROM scratch AS a\nFROM scratch AS b\n",
        lambda p: names(p) == ["a"],
        {"target": "A"},
    ),
    Case(
        "only-needed-stages-are-planned",
        "FROM scratch AS a\nFROM scratch AS b\nFROM b AS c\n",
        lambda p: names(p) == ["b", "c"],
    ),
    Case(
        "copy-from-stage-is-needed",
        "FROM scratch AS a\nFROM scratch AS b\nCOPY --from=a /x /x\n",
        lambda p: names(p) == ["a", "b"] and p.stages[1].deps == (0,),
    ),
    Case(
        "copy-from-index", "FROM scratch\nFROM scratch\nCOPY --from=0 /x /x\n", lambda p: step(p, 3).source.stage == 0
    ),  # type: ignore[union-attr]
    Case(
        "copy-from-image",
        "FROM scratch\nCOPY --from=nginx:1.25 /etc/nginx /n\n",
        lambda p: (step(p, 2).source.kind, step(p, 2).source.ref) == ("image", "docker.io/library/nginx:1.25"),
    ),  # type: ignore[union-attr]
    Case(
        "copy-from-named-context",
        "FROM scratch\nCOPY --from=assets /x /x\n",
        lambda p: step(p, 2).source.kind == "named-context",
        {"contexts": ["assets"]},
    ),  # type: ignore[union-attr]
    Case(
        "copy-without-from-reads-the-context",
        "FROM scratch\nCOPY a /a\n",
        lambda p: step(p, 2).source.kind == "context",
    ),  # type: ignore[union-attr]
    Case(
        "run-mount-from-stage-is-needed",
        "FROM scratch AS tools\nFROM scratch\nRUN --mount=from=tools,target=/t true\n",
        lambda p: names(p) == ["tools", "stage-1"] and step(p, 3).mount_sources[0].stage == 0,
    ),  # type: ignore[union-attr]
    Case(
        "named-context-replaces-a-stage",
        "FROM alpine AS base\nRUN never\nFROM base\n",
        lambda p: p.stages[0].base.kind == "context" and p.stages[0].steps == (),
        {"contexts": ["base"]},
    ),
    Case(
        "named-context-as-a-base",
        "FROM mylib\n",
        lambda p: p.stages[0].base == p.stages[0].base.__class__("context", "mylib", config_known=False),
        {"contexts": ["mylib"]},
    ),
    Case("scratch-base", "FROM scratch\n", lambda p: p.stages[0].base.kind == "scratch"),
    Case(
        "all-stages-for-checks",
        "FROM scratch AS a\nFROM scratch AS b\n",
        lambda p: names(p) == ["a", "b"],
        {"all_stages": True},
    ),
    Case(
        "duplicate-stage-name-latest-is-the-target",
        "FROM scratch AS x\nENV N=1\nFROM scratch AS x\nENV N=2\n",
        lambda p: env(p, 4)["N"] == "2" and ("DuplicateStageName", 3) in rules(p),
        {"target": "x"},
    ),
    Case(
        "onbuild-triggers-run-first-in-child",
        "FROM scratch AS base\nONBUILD RUN echo hi\nFROM base\nRUN next\n",
        lambda p: (
            [s.onbuild for s in p.stages[1].steps] == [True, False] and p.stages[1].steps[0].argv[-1] == "echo hi"
        ),
    ),
    Case(
        "onbuild-triggers-from-the-base-image",
        "FROM app:1\n",
        lambda p: p.stages[0].steps[0].argv[-1] == "echo from-the-base-image" and config(p).on_build == (),
        configs=BASE_WITH_ENV,
    ),
    Case("unknown-base-config-is-said", "FROM somewhere/image:1\n", lambda p: p.stages[0].base.config_known is False),
)
def test_stage_graph(case: Case) -> None:
    run_case(case)


# ------------------------------------------------------------------------------------------------ checks


@cases(
    Case("UndefinedArgInFrom", "FROM alpine$VERSION\n", lambda p: ("UndefinedArgInFrom", 1) in rules(p)),
    Case(
        "UndefinedArgInFrom-suggests",
        "ARG VERSION=1\nFROM alpine$VERSON\n",
        lambda p: any("did you mean VERSION" in w.message for w in p.warnings),
    ),
    Case(
        "InvalidDefaultArgInFrom",
        "ARG IMG\nFROM $IMG\n",
        lambda p: ("InvalidDefaultArgInFrom", 2) in rules(p),
        {"build_args": {"IMG": "alpine"}},
    ),
    Case(
        "RedundantTargetPlatform",
        "FROM --platform=$TARGETPLATFORM alpine\n",
        lambda p: ("RedundantTargetPlatform", 1) in rules(p),
    ),
    Case(
        "FromPlatformFlagConstDisallowed",
        "FROM --platform=linux/amd64 alpine AS build\n",
        lambda p: ("FromPlatformFlagConstDisallowed", 1) in rules(p),
    ),
    Case(
        "FromPlatformFlagConstDisallowed-not-when-the-name-says-the-arch",
        "FROM --platform=linux/amd64 alpine AS build-amd64\n",
        lambda p: not rules(p),
    ),
    Case(
        "JSONArgsRecommended",
        "FROM scratch\nCMD run\nENTRYPOINT go\n",
        lambda p: (
            [r for r in rules(p) if r[0] == "JSONArgsRecommended"]
            == [("JSONArgsRecommended", 2), ("JSONArgsRecommended", 3)]
        ),
    ),
    Case(
        "JSONArgsRecommended-not-with-a-shell",
        'FROM scratch\nSHELL ["/bin/bash", "-c"]\nCMD run\n',
        lambda p: not rules(p),
    ),
    Case(
        "MultipleInstructionsDisallowed-points-at-the-ignored-one",
        'FROM scratch\nCMD ["a"]\nCMD ["b"]\n',
        lambda p: ("MultipleInstructionsDisallowed", 2) in rules(p),
    ),
    Case(
        "WorkdirRelativePath",
        "FROM scratch\nWORKDIR app\nWORKDIR sub\n",
        lambda p: [r for r in rules(p)] == [("WorkdirRelativePath", 2)],
    ),
    Case(
        "UndefinedVar-suggests",
        "FROM scratch\nENV VERSION=1\nENV X=$VERSON\n",
        lambda p: any("did you mean $VERSION" in w.message for w in p.warnings),
    ),
    Case("UndefinedVar-not-for-declared-args", "FROM scratch\nARG MAYBE\nENV X=$MAYBE\n", lambda p: not rules(p)),
    Case(
        "UndefinedVar-skipped-when-the-base-env-is-unknown", "FROM somewhere/x\nENV X=$HOME\n", lambda p: not rules(p)
    ),
    Case(
        "LegacyKeyValueFormat",
        "FROM scratch\nENV A 1\nLABEL b 2\n",
        lambda p: rules(p) == [("LegacyKeyValueFormat", 2), ("LegacyKeyValueFormat", 3)],
    ),
    Case(
        "SecretsUsedInArgOrEnv",
        "FROM scratch\nARG GITHUB_TOKEN\nENV DB_PASSWORD=x PUBLIC_KEY=k\n",
        lambda p: rules(p) == [("SecretsUsedInArgOrEnv", 2), ("SecretsUsedInArgOrEnv", 3)],
    ),
    Case(
        "ConsistentInstructionCasing",
        "FROM scratch\nRUN a\nrun b\nCopy c d\n",
        lambda p: rules(p) == [("ConsistentInstructionCasing", 3), ("ConsistentInstructionCasing", 4)],
    ),
    Case("StageNameCasing", "FROM scratch AS Build\n", lambda p: ("StageNameCasing", 1) in rules(p)),
    Case("FromAsCasing", "FROM scratch as build\n", lambda p: ("FromAsCasing", 1) in rules(p)),
    Case("ReservedStageName", "FROM scratch AS scratch\n", lambda p: ("ReservedStageName", 1) in rules(p)),
    Case("MaintainerDeprecated", "FROM scratch\nMAINTAINER me\n", lambda p: ("MaintainerDeprecated", 2) in rules(p)),
    Case("NoEmptyContinuation", "FROM scratch\nRUN a \\\n\n  b\n", lambda p: ("NoEmptyContinuation", 4) in rules(p)),
    Case(
        "CopyIgnoredFile",
        "FROM scratch\nCOPY secret.txt /s\nCOPY --from=a /secret.txt /t\n",
        lambda p: rules(p) == [("CopyIgnoredFile", 2)],
        {"is_ignored": lambda path: path == "secret.txt", "contexts": ["a"]},
    ),
    Case(
        "check-directive-skips-rules",
        "# check=skip=JSONArgsRecommended,StageNameCasing\nFROM scratch AS Build\nCMD x\n",
        lambda p: not rules(p),
    ),
    Case("check-directive-skip-all", "# check=skip=all\nFROM scratch\nCMD x\nrun y\n", lambda p: not rules(p)),
    Case(
        "check-directive-error",
        "# check=error=true\nFROM scratch\nCMD x\n",
        lambda p: p.checks.error and bool(rules(p)),
    ),
    Case(
        "check-option-overrides-directive",
        "# check=skip=all\nFROM scratch\nCMD x\n",
        lambda p: rules(p) == [("JSONArgsRecommended", 3)],
        {"checks": "skip=StageNameCasing"},
    ),
)
def test_build_checks(case: Case) -> None:
    run_case(case)


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("dockerfile", "options", "message"),
    [
        ("ARG X=\nFROM $X\n", {}, "Dockerfile:2: base name ($X) should not be blank"),
        ("FROM --platform=$NOPE alpine\n", {}, "Dockerfile:1: empty platform value from expression $NOPE"),
        (
            "FROM --platform=linux/amd64! alpine\n",
            {},
            'Dockerfile:1: failed to parse platform linux/amd64!: "amd64!" is',
        ),
        ("FROM Builder\n", {}, 'Dockerfile:1: failed to parse stage name "Builder":'),
        ("FROM scratch\n", {"target": "nope"}, 'Dockerfile: target stage "nope" could not be found'),
        (
            "FROM scratch AS a\nCOPY --from=b /x /x\nFROM scratch AS b\nCOPY --from=a /y /y\n",
            {},
            "Dockerfile:2: circular dependency detected on stage: a",
        ),
        ("FROM scratch AS a\nCOPY --from=a /x /x\n", {}, "Dockerfile:2: circular dependency detected on stage: a"),
        (
            "FROM scratch AS a\nCOPY --from=b /x /x\nFROM scratch AS b\n",
            {"target": "a"},
            'Dockerfile:2: cannot copy from stage "b", it needs to be defined before current stage "a"',
        ),
        ("FROM scratch\nCOPY --from=3 /x /x\n", {}, "Dockerfile:2: invalid stage index 3"),
        ("FROM scratch\nCOPY --from=$S /x /x\n", {}, "Dockerfile:2: variable expansion is not supported for --from"),
        ("FROM scratch\nCOPY https://example.com/f /f\n", {}, "Dockerfile:2: source can't be a URL for COPY"),
        ("FROM scratch\nCOPY https://github.com/o/r.git /r\n", {}, "Dockerfile:2: source can't be a git ref for COPY"),
        ("FROM scratch\nADD --checksum=sha256:abc a /a\n", {}, "Dockerfile:2: invalid checksum digest length"),
        (
            "FROM scratch\nADD --checksum=sha256:" + "0" * 64 + " a b /d/\n",
            {},
            "Dockerfile:2: checksum can't be specified for multiple sources",
        ),
        (
            "FROM scratch\nADD --checksum=sha256:" + "0" * 64 + " a /d\n",
            {},
            "Dockerfile:2: checksum can't be specified for non-HTTP(S) sources",
        ),
        ("FROM scratch\nCOPY --chmod=999 a /a\n", {}, "Dockerfile:2: invalid chmod parameter: '999'"),
        ("FROM scratch\nCOPY --chmod=u+q a /a\n", {}, "Dockerfile:2: invalid chmod parameter: 'u+q'"),
        ('FROM scratch\nENV A="${MISSING:?must be set}"\n', {}, "Dockerfile:2: failed to process"),
        (
            "FROM scratch\nENV A=${MISSING:?must be set}\n",
            {},
            'Dockerfile:2: Syntax error - can\'t find = in "be". Must be of the form: name=value',
        ),
        ("FROM scratch\nEXPOSE 80/icmp\n", {}, 'Dockerfile:2: invalid port: "80/icmp": invalid proto: icmp'),
        ("FROM scratch\nEXPOSE http\n", {}, "Dockerfile:2: invalid containerPort: http"),
        ("FROM scratch\nADD --checksum=sha256 a /a\n", {}, "Dockerfile:2: invalid checksum digest format"),
        ("FROM scratch\nADD --checksum=md5:abc a /a\n", {}, "Dockerfile:2: unsupported digest algorithm"),
        (
            "FROM --platform=$BULIDPLATFORM alpine\n",
            {},
            "Dockerfile:1: empty platform value from expression $BULIDPLATFORM (did you mean BUILDPLATFORM?)",
        ),
        ("FROM scratch\nSTOPSIGNAL SIGNOPE\n", {}, "Dockerfile:2: invalid signal: SIGNOPE"),
        ("FROM scratch\nARG D=\nWORKDIR $D\n", {}, "Dockerfile:3: normalizing workdir: cannot normalize nothing"),
        (
            "FROM scratch\nRUN --mount=type=bind,target=/x,mode=0600 true\n",
            {},
            'Dockerfile:2: mode not allowed for "bind" type mounts',
        ),
        (
            "FROM scratch\nARG T=nope\nRUN --mount=type=$T,target=/x true\n",
            {},
            'Dockerfile:3: unsupported mount type "nope"',
        ),
        ("FROM scratch\nRUN --mount=type=cache true\n", {}, 'Dockerfile:2: mount type "cache" needs a target'),
        (
            "FROM scratch\nRUN --mount=type=secret,id=a,from=b true\n",
            {},
            "Dockerfile:2: secret mount should not have a from",
        ),
        ("FROM scratch\nRUN --mount=type=cache,target=/c,uid=-1 true\n", {}, "Dockerfile:2: invalid value -1 for uid"),
        ("FROM scratch AS base\nONBUILD COPY --nope a b\nFROM base\n", {}, "Dockerfile:3: unknown flag: --nope"),
    ],
    ids=lambda v: v if isinstance(v, str) and v.startswith("Dockerfile") else None,
)
def test_plan_errors_carry_the_line(dockerfile: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(DockerfileError) as caught:
        plan(dockerfile, **options)
    assert str(caught.value).startswith(message), str(caught.value)
