"""The image configuration (OCI image config, read also from Docker's schema 2 configs) as frozen values.

A config from a base image is untrusted input: every field is type-checked on parse (``config: null`` is an
empty runtime config; an Env entry with a NUL byte is refused). Docker's extensions that builds rely on
(Healthcheck, OnBuild, Shell) are kept. Fields this model does not know are dropped when a new config is
encoded; the raw bytes of a config that was read are what its digest covers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from oci.canonical import MAX_DOCUMENT_SIZE, canonical_json, load_json_object
from oci.descriptor import Platform, string_list, string_map
from oci.digest import Digest
from oci.errors import InvalidDigest, InvalidDocument
from oci.frozen import FrozenMap

__all__ = ["Healthcheck", "History", "ImageConfig", "RuntimeConfig", "parse_config"]


@dataclass(frozen=True, slots=True)
class Healthcheck:
    """Docker's HEALTHCHECK: ``test`` is ["NONE"], ["CMD", ...] or ["CMD-SHELL", cmd]; durations in ns."""

    test: tuple[str, ...] = ()
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0

    @classmethod
    def from_json(cls, data: Any) -> Healthcheck:
        if not isinstance(data, dict):
            raise InvalidDocument("config Healthcheck must be an object")
        return cls(
            test=tuple(string_list(data.get("Test"), "config Healthcheck.Test")),
            interval=_int(data, "Interval", "config Healthcheck"),
            timeout=_int(data, "Timeout", "config Healthcheck"),
            start_period=_int(data, "StartPeriod", "config Healthcheck"),
            start_interval=_int(data, "StartInterval", "config Healthcheck"),
            retries=_int(data, "Retries", "config Healthcheck"),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Test": list(self.test)}
        for key, value in (
            ("Interval", self.interval),
            ("Timeout", self.timeout),
            ("StartPeriod", self.start_period),
            ("StartInterval", self.start_interval),
            ("Retries", self.retries),
        ):
            if value:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """The ``config`` member: how a container from this image runs."""

    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    volumes: tuple[str, ...] = ()
    working_dir: str = ""
    labels: FrozenMap[str, str] = field(default_factory=FrozenMap)
    stop_signal: str = ""
    args_escaped: bool = False
    healthcheck: Healthcheck | None = None
    on_build: tuple[str, ...] = ()
    shell: tuple[str, ...] = ()

    def env_dict(self) -> dict[str, str]:
        """Env as a mapping; a later entry for the same name wins, as in a container."""
        result: dict[str, str] = {}
        for entry in self.env:
            name, _, value = entry.partition("=")
            result[name] = value
        return result

    @classmethod
    def from_json(cls, data: Any) -> RuntimeConfig:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise InvalidDocument("config 'config' must be an object")
        env = string_list(data.get("Env"), "config Env")
        for entry in env:
            if "\0" in entry:
                raise InvalidDocument("config Env has an entry with a NUL byte")
        health = data.get("Healthcheck")
        args_escaped = _bool(data, "ArgsEscaped")
        return cls(
            user=_str(data, "User"),
            exposed_ports=tuple(sorted(_set(data.get("ExposedPorts"), "config ExposedPorts"))),
            env=tuple(env),
            entrypoint=_optional_list(data.get("Entrypoint"), "config Entrypoint"),
            cmd=_optional_list(data.get("Cmd"), "config Cmd"),
            volumes=tuple(sorted(_set(data.get("Volumes"), "config Volumes"))),
            working_dir=_str(data, "WorkingDir"),
            labels=string_map(data.get("Labels"), "config Labels"),
            stop_signal=_str(data, "StopSignal"),
            args_escaped=args_escaped,
            healthcheck=Healthcheck.from_json(health) if health is not None else None,
            on_build=tuple(string_list(data.get("OnBuild"), "config OnBuild")),
            shell=tuple(string_list(data.get("Shell"), "config Shell")),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.user:
            out["User"] = self.user
        if self.exposed_ports:
            out["ExposedPorts"] = {port: {} for port in self.exposed_ports}
        if self.env:
            out["Env"] = list(self.env)
        if self.entrypoint is not None:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            out["Cmd"] = list(self.cmd)
        if self.volumes:
            out["Volumes"] = {volume: {} for volume in self.volumes}
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.labels:
            out["Labels"] = self.labels.to_dict()
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        if self.args_escaped:
            out["ArgsEscaped"] = True
        if self.healthcheck is not None:
            out["Healthcheck"] = self.healthcheck.to_json()
        if self.on_build:
            out["OnBuild"] = list(self.on_build)
        if self.shell:
            out["Shell"] = list(self.shell)
        return out


@dataclass(frozen=True, slots=True)
class History:
    created: str = ""
    created_by: str = ""
    author: str = ""
    comment: str = ""
    empty_layer: bool = False

    @classmethod
    def from_json(cls, data: Any) -> History:
        if not isinstance(data, dict):
            raise InvalidDocument("config history entry must be an object")
        empty = _bool(data, "empty_layer")
        return cls(
            created=_str(data, "created"),
            created_by=_str(data, "created_by"),
            author=_str(data, "author"),
            comment=_str(data, "comment"),
            empty_layer=empty,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.created:
            out["created"] = self.created
        if self.created_by:
            out["created_by"] = self.created_by
        if self.author:
            out["author"] = self.author
        if self.comment:
            out["comment"] = self.comment
        if self.empty_layer:
            out["empty_layer"] = True
        return out


@dataclass(frozen=True, slots=True)
class ImageConfig:
    architecture: str
    os: str
    config: RuntimeConfig = field(default_factory=RuntimeConfig)
    diff_ids: tuple[Digest, ...] = ()
    history: tuple[History, ...] = ()
    created: str = ""
    author: str = ""
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant, self.os_version, self.os_features)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "architecture": self.architecture,
            "os": self.os,
            "config": self.config.to_json(),
            "rootfs": {"type": "layers", "diff_ids": [str(d) for d in self.diff_ids]},
        }
        if self.history:
            out["history"] = [h.to_json() for h in self.history]
        if self.created:
            out["created"] = self.created
        if self.author:
            out["author"] = self.author
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        return out

    def encode(self) -> bytes:
        return canonical_json(self.to_json())


def parse_config(raw: bytes, what: str = "image config") -> ImageConfig:
    if len(raw) > MAX_DOCUMENT_SIZE:
        raise InvalidDocument(f"{what} is larger than {MAX_DOCUMENT_SIZE} bytes")
    data = load_json_object(raw, what)
    rootfs = data.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise InvalidDocument(f"{what}: rootfs must be an object of type 'layers'")
    try:
        diff_ids = tuple(Digest.parse(d) for d in string_list(rootfs.get("diff_ids"), f"{what} diff_ids"))
    except InvalidDigest as err:
        raise InvalidDocument(f"{what}: {err}") from None
    history = data.get("history")
    if history is not None and not isinstance(history, list):
        raise InvalidDocument(f"{what}: history must be an array")
    return ImageConfig(
        architecture=_str(data, "architecture"),
        os=_str(data, "os"),
        config=RuntimeConfig.from_json(data.get("config")),
        diff_ids=diff_ids,
        history=tuple(History.from_json(h) for h in history or ()),
        created=_str(data, "created"),
        author=_str(data, "author"),
        variant=_str(data, "variant"),
        os_version=_str(data, "os.version"),
        os_features=tuple(string_list(data.get("os.features"), f"{what} os.features")),
    )


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidDocument(f"config {key} must be a string")
    return value


def _bool(data: dict[str, Any], key: str) -> bool:
    value = data.get(key)
    if value is None:
        return False  # null reads as false, as in Go
    if not isinstance(value, bool):
        raise InvalidDocument(f"config {key} must be a boolean")
    return value


def _int(data: dict[str, Any], key: str, what: str) -> int:
    value = data.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidDocument(f"{what}.{key} must be an integer")
    return value


def _set(value: Any, what: str) -> list[str]:
    """Docker's set encoding: an object whose keys are the members (values are ignored)."""
    if value is None:
        return []
    if not isinstance(value, dict):
        raise InvalidDocument(f"{what} must be an object")
    return list(value)


def _optional_list(value: Any, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(string_list(value, what))
