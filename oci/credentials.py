"""Registry credentials where Docker keeps them: ``$DOCKER_CONFIG/config.json`` and ``docker-credential-*`` helpers.

``pybuild login`` writes what ``docker login`` writes, and every tool that reads Docker's config (docker, skopeo,
podman, buildx) reads what pybuild wrote. The decisions (which entry, which helper) are ``oci.auth``'s; this module
reads and writes the file, atomically, and runs the helper programs.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oci.auth import (
    AuthConfigError,
    Credential,
    config_key,
    credential_source,
    helper_credential,
    with_login,
    without_login,
)
from oci.store import atomic_file

__all__ = ["DockerConfig", "docker_config_dir"]

_HELPER_TIMEOUT = 60.0


def docker_config_dir(environ: Mapping[str, str]) -> Path:
    """``$DOCKER_CONFIG``, else ``~/.docker`` (Docker's own rule)."""
    if value := environ.get("DOCKER_CONFIG"):
        return Path(value)
    return Path(environ.get("HOME") or Path.home()) / ".docker"


class DockerConfig:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "config.json"

    def load(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise AuthConfigError(f"{self.path}: {err.strerror}") from None
        try:
            data = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError) as err:
            raise AuthConfigError(f"{self.path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise AuthConfigError(f"{self.path}: not a JSON object")
        return data

    def lookup(self, registry: str) -> Credential | None:
        """The credentials config.json (or its helper) holds for ``registry``, or None."""
        source = credential_source(self.load(), registry)
        if source.helper:
            answer = self._helper(source.helper, "get", source.server_url)
            if answer is None:
                return None
            try:
                data = json.loads(answer)
            except ValueError:
                raise AuthConfigError(f"docker-credential-{source.helper}: its answer is not JSON") from None
            return helper_credential(data) if isinstance(data, dict) else None
        return source.credential

    def store(self, registry: str, credential: Credential) -> str:
        """Save ``credential`` for ``registry``; returns where it went (a helper's name or the file)."""
        config = self.load()
        source = credential_source(config, registry)
        if source.helper:
            payload = {"ServerURL": source.server_url, "Username": credential.username, "Secret": credential.password}
            self._helper(source.helper, "store", json.dumps(payload), required=True)
            auths = dict(config.get("auths") or {})
            auths.setdefault(config_key(registry), {})  # docker records the registry with an empty entry
            self._save({**config, "auths": auths})
            return f"docker-credential-{source.helper}"
        self._save(with_login(config, registry, credential))
        return str(self.path)

    def erase(self, registry: str) -> bool:
        """Forget ``registry``'s credentials; True if there were any."""
        config = self.load()
        source = credential_source(config, registry)
        erased = False
        if source.helper:
            erased = self._helper(source.helper, "erase", source.server_url) is not None
        updated, had_entry = without_login(config, registry)
        if had_entry:
            self._save(updated)
        return erased or had_entry

    def _save(self, config: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = json.dumps(config, indent="\t").encode() + b"\n"
        with atomic_file(self.path, mode=0o600) as out:
            out.write(data)

    def _helper(self, name: str, action: str, stdin: str, *, required: bool = False) -> str | None:
        """Run ``docker-credential-NAME ACTION``; None when it has nothing for this registry."""
        program = f"docker-credential-{name}"
        try:
            proc = subprocess.run(
                [program, action],
                input=stdin.encode(),
                capture_output=True,
                timeout=_HELPER_TIMEOUT,
                env={**os.environ},
            )
        except FileNotFoundError:
            raise AuthConfigError(
                f"{self.path} names the credential helper {program}, which is not installed"
            ) from None
        except subprocess.TimeoutExpired:
            raise AuthConfigError(f"{program} {action}: no answer after {_HELPER_TIMEOUT:.0f} s") from None
        if proc.returncode != 0:
            message = (proc.stdout or proc.stderr).decode(errors="replace").strip().splitlines()
            text = message[0] if message else f"exit status {proc.returncode}"
            if not required and "not found" in text.lower():
                return None
            raise AuthConfigError(f"{program} {action}: {text}")
        return proc.stdout.decode(errors="replace")
