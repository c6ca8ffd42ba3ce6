"""Progress output: the only place that reports on long work while it runs.

Modes follow buildx's ``--progress``: ``tty`` rewrites one status line in place, ``plain`` prints a line per
update (what CI logs want), ``quiet`` prints nothing. ``auto`` picks ``tty`` on a terminal, else ``plain``.
Everything goes to standard error, so standard output holds only results (an image ID, JSON).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["MODES", "Progress"]

MODES = ("auto", "tty", "plain", "quiet")


class Progress:
    def __init__(self, mode: str = "auto", stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        if mode == "auto":
            mode = "tty" if self._stream.isatty() else "plain"
        if mode not in MODES:
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode
        self._start = time.monotonic()
        self._live = False

    def status(self, text: str) -> None:
        if self.mode == "quiet":
            return
        elapsed = time.monotonic() - self._start
        line = f"[{elapsed:5.1f}s] {text}"
        if self.mode == "tty":
            self._stream.write("\r\x1b[2K" + line)
            self._live = True
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def done(self) -> None:
        """End the live line, if any, so later output starts on a fresh line."""
        if self._live:
            self._stream.write("\r\x1b[2K")
            self._stream.flush()
            self._live = False
