"""``--change`` instructions edit the runtime config as the same Dockerfile line would."""

from __future__ import annotations

import pytest

from builder.changes import apply_changes
from builder.errors import UsageError
from oci.config import RuntimeConfig


def change(*lines: str, config: RuntimeConfig | None = None) -> RuntimeConfig:
    return apply_changes(config or RuntimeConfig(), lines)


def test_cmd_exec_and_shell_form() -> None:
    assert change('CMD ["sh", "-c", "echo hi"]').cmd == ("sh", "-c", "echo hi")
    assert change("CMD echo $HOME").cmd == ("/bin/sh", "-c", "echo $HOME")
    assert change('cmd ["x"]').cmd == ("x",)  # keywords are case-insensitive


def test_shell_form_uses_the_image_shell() -> None:
    assert change("CMD run it", config=RuntimeConfig(shell=("/bin/bash", "-ec"))).cmd == ("/bin/bash", "-ec", "run it")


def test_entrypoint_resets_cmd_as_in_a_dockerfile() -> None:
    config = change('CMD ["a"]', 'ENTRYPOINT ["/init"]')
    assert (config.entrypoint, config.cmd) == (("/init",), None)


def test_env_pairs_with_quotes_and_legacy_form() -> None:
    config = change('ENV A=1 B="two words" C=three\\ words', "ENV D the rest of the line", "ENV A=override")
    assert config.env_dict() == {"A": "override", "B": "two words", "C": "three words", "D": "the rest of the line"}
    assert change("ENV X='single quoted'").env_dict() == {"X": "single quoted"}


def test_label_merges() -> None:
    config = change('LABEL a=1 "b c"=2', "LABEL a=3")
    assert dict(config.labels) == {"a": "3", "b c": "2"}


def test_expose_protocols_and_ranges() -> None:
    assert change("EXPOSE 80 53/udp 8000-8002/TCP").exposed_ports == (
        "53/udp",
        "80/tcp",
        "8000/tcp",
        "8001/tcp",
        "8002/tcp",
    )


def test_volume_workdir_user_stopsignal_onbuild() -> None:
    config = change(
        'VOLUME ["/data", "/logs"]',
        "VOLUME /cache",
        "WORKDIR /app",
        "WORKDIR sub/../src",
        "USER 1000:1000",
        "STOPSIGNAL SIGINT",
        "ONBUILD RUN make",
    )
    assert config.volumes == ("/cache", "/data", "/logs")
    assert config.working_dir == "/app/src"
    assert (config.user, config.stop_signal, config.on_build) == ("1000:1000", "SIGINT", ("RUN make",))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("RUN echo", "not supported"),
        ("", "not supported"),
        ("CMD", "needs an argument"),
        ("ENV A=$B", "variable expansion"),
        ("WORKDIR $HOME", "variable expansion"),
        ("ENV A='unterminated", "unterminated quote"),
        ("LABEL novalue", "KEY=VALUE"),
        ("EXPOSE 70000", "invalid port"),
        ("EXPOSE 80/icmp", "invalid protocol"),
        ("EXPOSE http", "invalid port"),
        ("ENV ONLYNAME", "needs a value"),
    ],
)
def test_bad_changes_are_usage_errors(line: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        change(line)
