"""The README's quick-start command works as written (less the package installs, which CI has done)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from conftest import REPO, require_root, require_tool

SETUP = ("apt-get ", "python3 -m venv ", ".venv/bin/pip ")


def quick_start() -> list[str]:
    readme = (REPO / "README.md").read_text()
    match = re.search(r"\*\*Try it\*\*.*?```sh\n(.*?)\n```", readme, re.DOTALL)
    assert match, "the README has no 'Try it' command"
    return match.group(1).split(" && ")


def test_the_quick_start_builds_the_example(tmp_path: Path) -> None:
    require_root()
    require_tool("skopeo")
    steps = [step for step in quick_start() if not step.startswith(SETUP)]
    assert any(" build " in step for step in steps), "the quick start must build something"
    # Its files go to this test's directory rather than /tmp; its store to this test's HOME.
    command = " && ".join(steps).replace("/tmp/", f"{tmp_path}/")
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"}
    for name in ("PYBUILD_ROOT", "XDG_DATA_HOME"):
        env.pop(name, None)
    result = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Hello from a daemonless build (from buildkitsandbox)" in result.stdout
    assert "built on " in result.stdout
    assert '"org.opencontainers.image.title": "hello"' in result.stdout, "skopeo reads the built image from the store"
    assert (home / ".local" / "share" / "pybuild" / "index.json").is_file()
