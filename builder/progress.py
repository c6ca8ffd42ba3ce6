"""Progress output: the only place that reports on a build (or any long work) while it runs.

Modes follow buildx's ``--progress``. ``plain`` prints a line per event, BuildKit's way: ``#3 [build 2/5] RUN make``
when a step starts, ``#3 0.532 <output line>`` for each line of its output (seconds since the step started), then
``#3 DONE 1.2s``, ``#3 CACHED`` or ``#3 ERROR: <message>``. ``tty`` keeps a live view in place (a header, one line
per step with its time, the last lines of output under each running step) and leaves the full list behind at
``done()``. ``quiet`` prints nothing. ``auto`` is ``tty`` when the stream is a terminal, else ``plain``.

Everything goes to standard error, so standard output holds only results (an image ID, JSON). A ``log_file``, if
given, gets the plain log whatever the mode, flushed per event so that a killed build still leaves a usable log.

Output arrives as raw bytes from a child process: it is decoded as UTF-8 with replacement (sequences split across
reads are joined first), split into lines, and a line redrawn with carriage returns (a progress bar) is kept as its
last segment, as a terminal would show it. Nothing here raises because of what a step printed, and a stream that
fails is dropped rather than failing the build. The view is redrawn by the calls themselves, at most every
``REDRAW_INTERVAL`` seconds for output and always when a step starts or ends: no thread, no timer, no curses.
"""

from __future__ import annotations

import codecs
import functools
import math
import os
import re
import shutil
import sys
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO, TypeVar

_T = TypeVar("_T")
__all__ = ["MODES", "Progress", "StepProgress"]

MODES = ("auto", "tty", "plain", "quiet")

REDRAW_INTERVAL = 0.1  # seconds between redraws driven by output; BuildKit's tty display uses the same
_SLACK = 1e-6  # clock readings are floats: 100.1 - 100.0 < 0.1, and a microsecond early is on time
LIVE_TAIL = 6  # output lines shown under a running step
ERROR_TAIL = 10  # output lines kept under a failed step in the final view
MAX_LINE = 64 * 1024  # a longer line without a newline is cut here, so one endless line cannot eat memory

_RUNNING, _DONE, _CACHED, _ERROR, _CANCELED = "running", "done", "cached", "error", "canceled"

# What a step's output may contain that would move the cursor or garble the live view: escape sequences (CSI,
# OSC, two-byte), then any other C0/C1 control. Plain output keeps them, as buildx's does.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_BREAKS = re.compile(r"([\r\n])")

_UP = "\x1b[{}A\r"
_CLEAR_LINE = "\x1b[2K"
_CLEAR_BELOW = "\x1b[J"
_RED, _DIM, _RESET = "\x1b[31m", "\x1b[2m", "\x1b[0m"


class StepProgress:
    """One step's handle: its output goes in through ``log``, and one of ``cached``/``finish``/``fail`` ends it.

    Calls after the step has ended are ignored, so an engine's clean-up path can end a step twice harmlessly.
    """

    def __init__(self, progress: Progress, number: int, title: str, started: float) -> None:
        self._progress = progress
        self.number = number
        self.title = title
        self.started = started
        self.ended: float | None = None
        self.state = _RUNNING
        self.message = ""
        self.notes: list[str] = []
        # Output kept for the live view: the last complete lines, cleaned for the terminal.
        self.tail: deque[str] = deque(maxlen=max(LIVE_TAIL, ERROR_TAIL))
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._parts: list[str] = []  # the visible segment of the unfinished line, in pieces
        self._size = 0
        self._line_start: float | None = None  # when the unfinished line's first byte arrived
        self._overwrite = False  # a carriage return was seen: the next text replaces the line

    # ---------------------------------------------------------------------------------------------- the API

    def log(self, data: bytes) -> None:
        """Raw output from the step: any bytes, in any pieces (partial lines, split UTF-8 sequences)."""
        if self.state == _RUNNING:
            self._progress._log(self, data)

    def note(self, text: str) -> None:
        """A line about the step rather than from it (why its cache missed): kept in the final view too."""
        if self.state == _RUNNING:
            self._progress._note(self, _one_line(str(text)))

    def cached(self) -> None:
        self._progress._end(self, _CACHED)

    def finish(self) -> None:
        self._progress._end(self, _DONE)

    def fail(self, message: str) -> None:
        self._progress._end(self, _ERROR, str(message))

    # -------------------------------------------------------------------------------------- line splitting

    @property
    def partial(self) -> str:
        """What the unfinished last line shows now."""
        return "".join(self._parts)

    def _feed(self, text: str, now: float) -> list[tuple[float, str]]:
        """Add decoded text; return the lines it completed, each with the time its first byte arrived."""
        lines: list[tuple[float, str]] = []
        for piece in _BREAKS.split(text):
            if not piece:
                continue
            if self._line_start is None:
                self._line_start = now
            if piece == "\n":
                lines.append(self._take())
            elif piece == "\r":
                # Not yet a new segment: "text\r\n" (CRLF) must keep "text", so only text after it replaces.
                self._overwrite = True
            else:
                if self._overwrite:
                    self._parts, self._size, self._overwrite = [], 0, False
                self._parts.append(piece)
                self._size += len(piece)
                if self._size >= MAX_LINE:
                    lines.append(self._take())
        return lines

    def _flush(self, now: float) -> list[tuple[float, str]]:
        """The end of output: an incomplete UTF-8 sequence becomes U+FFFD and a partial line becomes a line."""
        lines = self._feed(self._decoder.decode(b"", final=True), now)
        if self._parts or self._line_start is not None:
            lines.append(self._take())
        return lines

    def _take(self) -> tuple[float, str]:
        line = (self._line_start if self._line_start is not None else self.started, "".join(self._parts))
        self._parts, self._size, self._line_start, self._overwrite = [], 0, None, False
        return line


def _locked(method: Callable[..., _T]) -> Callable[..., _T]:
    """Run ``method`` holding the display's lock (a step's output and another stage's step may arrive at once)."""

    @functools.wraps(method)
    def wrapper(self: Progress, *args: Any, **kwargs: Any) -> _T:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


class Progress:
    """Reports a build's steps (``step``) and one-off status lines (``status``); ``done`` ends the display.

    Events may come from several threads (stages run in parallel): one lock orders them. ``clock`` is injectable
    so tests can drive timings and throttling.
    """

    def __init__(
        self,
        mode: str = "auto",
        stream: TextIO | None = None,
        log_file: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "tty" if _isatty(self._stream) else "plain"
        if mode not in MODES:
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode
        self._clock = clock
        self._start = clock()
        self._steps: list[StepProgress] = []
        self._expected = 0
        # plain: every stream that gets the plain log, and which step's lines are being printed (BuildKit
        # re-announces a step whose output resumes after another step's).
        self._plain: list[TextIO] = [self._stream] if mode == "plain" else []
        if log_file is not None:
            self._plain.append(log_file)
        self._current: StepProgress | None = None
        self._printed = False
        # tty: how many lines the live view has on screen, when it was drawn, and from which step it starts
        self._tty = mode == "tty"
        self._color = self._tty and not os.environ.get("NO_COLOR")
        self._drawn = 0
        self._last_draw = -math.inf
        self._view_from = 0
        self._status = ""
        self._lock = threading.RLock()

    # -------------------------------------------------------------------------------------------- the API

    @_locked
    def status(self, text: str) -> None:
        """A one-off status line (``[  1.2s] unpacking rootfs.tar``); in a terminal it replaces the last one."""
        now = self._clock()
        line = f"[{now - self._start:5.1f}s] {_one_line(str(text))}"
        self._emit_plain(line + "\n")
        if self._tty:
            self._status = line
            self._draw(now)

    @_locked
    def step(self, name: str, *, stage: str = "", index: int = 0, total: int = 0) -> StepProgress:
        """Start a step. ``name`` is the instruction as shown (``RUN make -j4``); ``stage``, ``index`` and
        ``total`` make the ``[build 2/5]`` label."""
        now = self._clock()
        where = " ".join(part for part in (stage, f"{index}/{total}" if total else "") if part)
        title = _one_line(str(name))
        if where:
            title = f"[{where}] {title}"
        step = StepProgress(self, len(self._steps) + 1, title, now)
        self._steps.append(step)
        if self._plain:
            self._emit_plain(self._focus(step))
        if self._tty:
            self._draw(now)
        return step

    @_locked
    def expect(self, steps: int) -> None:
        """Say how many steps the build will run, so the terminal header reads (done/expected)."""
        self._expected = max(0, int(steps))

    @_locked
    def refresh(self) -> None:
        """Redraw the live view if it is due; an engine waiting on a quiet step can call this to move the clocks."""
        if self._tty and self._drawn:
            now = self._clock()
            if now - self._last_draw >= REDRAW_INTERVAL - _SLACK:
                self._draw(now)

    @_locked
    def done(self) -> None:
        """End the display: steps still running are marked canceled, and a terminal gets the final list."""
        for step in self._steps:
            if step.state == _RUNNING:
                self._end(step, _CANCELED, draw=False)
        if self._tty:
            self._draw(self._clock(), final=True)
            self._drawn = 0
            self._view_from = len(self._steps)
            self._status = ""

    # --------------------------------------------------------------------------------------------- events

    @_locked
    def _log(self, step: StepProgress, data: bytes) -> None:
        now = self._clock()
        text = data if isinstance(data, str) else step._decoder.decode(data)
        lines = step._feed(text, now)
        if lines and self._plain:
            self._emit_plain(self._focus(step) + "".join(_plain_line(step, at, line) for at, line in lines))
        if self._tty:
            _keep(step, lines)
            if now - self._last_draw >= REDRAW_INTERVAL - _SLACK:
                self._draw(now)

    @_locked
    def _note(self, step: StepProgress, text: str) -> None:
        step.notes.append(text)
        if self._plain:
            self._emit_plain(self._focus(step) + f"#{step.number} {text}\n")
        if self._tty:
            self._draw(self._clock())

    @_locked
    def _end(self, step: StepProgress, state: str, message: str = "", *, draw: bool = True) -> None:
        if step.state != _RUNNING:
            return
        now = self._clock()
        lines = step._flush(now)
        step.state, step.ended, step.message = state, now, message
        if self._plain:
            text = self._focus(step) + "".join(_plain_line(step, at, line) for at, line in lines)
            self._emit_plain(text + _verdict(step))
            self._current = None
        if self._tty:
            _keep(step, lines)
            if draw:
                self._draw(now)

    # ---------------------------------------------------------------------------------------------- plain

    def _focus(self, step: StepProgress) -> str:
        """The lines that make ``step`` the one being printed: its header, after a note that the last one paused."""
        if step is self._current:
            return ""
        text = ""
        previous = self._current
        if previous is not None and previous.state == _RUNNING:
            text += f"#{previous.number} ...\n"
        if self._printed:
            text += "\n"
        self._current = step
        return text + f"#{step.number} {step.title}\n"

    def _emit_plain(self, text: str) -> None:
        if not text:
            return
        self._printed = True
        for out in list(self._plain):
            try:
                out.write(text)
                out.flush()
            except (AttributeError, OSError, ValueError):  # a closed, broken or missing stream: drop it
                self._plain.remove(out)

    # ------------------------------------------------------------------------------------------------ tty

    def _draw(self, now: float, *, final: bool = False) -> None:
        columns, rows = self._size()
        lines = self._frame(now, columns - 1, rows - 1, final)
        # Up to the view's first line, rewrite each line, and clear what a longer previous view left below.
        text = _UP.format(self._drawn) if self._drawn else ""
        text += "".join(f"{_CLEAR_LINE}{line}\n" for line in lines)
        if len(lines) < self._drawn:
            text += _CLEAR_BELOW
        self._last_draw = now
        if not text:
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except (AttributeError, OSError, ValueError):
            self._tty = False
        self._drawn = len(lines)

    def _size(self) -> tuple[int, int]:
        try:
            size = os.get_terminal_size(self._stream.fileno())
        except (AttributeError, OSError, ValueError):  # not a real file (a test's stream)
            size = os.terminal_size((0, 0))
        if size.columns <= 0 or size.lines <= 0:  # a fresh pty says 0x0: then $COLUMNS/$LINES, else 80x24
            size = shutil.get_terminal_size()
        return max(size.columns, 20), max(size.lines, 4)

    def _frame(self, now: float, width: int, height: int, final: bool) -> list[str]:
        """The view's lines, each at most ``width`` cells; a live view also fits in ``height`` lines, since the
        cursor cannot go back up to a line that scrolled off the screen."""
        steps = self._steps[self._view_from :]
        status = [] if final or not self._status else [_fit(_clean(self._status), width)[0]]
        if not steps:
            return status
        ended = sum(step.state != _RUNNING for step in self._steps)
        total = max(self._expected, len(self._steps))
        header = f"[+] Building {now - self._start:.1f}s ({ended}/{total})"
        if final and ended == total:
            header += " FINISHED"
        header = _fit(header, width)[0]
        if final:
            body = [(step, _final_tail(step)) for step in steps]
            return [header] + self._render(body, now, width) + status
        # Too tall: the oldest ended steps go first (done() shows them again), then running steps' output
        # shrinks a line at a time, then whatever is still too much is cut from the top.
        body = [(step, _live_tail(step)) for step in steps]
        room = height - 1 - len(status)
        while _height(body) > room and any(step.state != _RUNNING for step, _ in body):
            body.remove(next(item for item in body if item[0].state != _RUNNING))
        for count in range(LIVE_TAIL - 1, -1, -1):
            if _height(body) <= room:
                break
            body = [(step, tail[len(tail) - count :] if count else []) for step, tail in body]
        lines = [header] + self._render(body, now, width) + status
        return lines[:1] + lines[len(lines) - height + 1 :] if len(lines) > height else lines

    def _render(self, body: list[tuple[StepProgress, list[str]]], now: float, width: int) -> list[str]:
        lines = []
        for step, tail in body:
            line = _step_line(step, now, width)
            lines.append(self._paint(line, _RED) if step.state == _ERROR else line)
            lines.extend(self._paint(_fit(" => => # " + text, width)[0], _DIM) for text in tail)
        return lines

    def _paint(self, text: str, color: str) -> str:
        return f"{color}{text}{_RESET}" if self._color else text


# --------------------------------------------------------------------------------------------------- helpers


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def _one_line(text: str) -> str:
    # A heredoc RUN's name has newlines; a header is one line.
    return " ".join(text.splitlines())


def _plain_line(step: StepProgress, at: float, line: str) -> str:
    seconds = max(0.0, at - step.started)
    # BuildKit's precision: three decimals under 10 s, two under 100 s, then one, so the columns stay aligned.
    stamp = f"{seconds:.3f}" if seconds < 10 else f"{seconds:.2f}" if seconds < 100 else f"{seconds:.1f}"
    return f"#{step.number} {stamp} {line}\n" if line else f"#{step.number} {stamp}\n"


def _verdict(step: StepProgress) -> str:
    n = step.number
    if step.state == _CACHED:
        return f"#{n} CACHED\n"
    if step.state == _CANCELED:
        return f"#{n} CANCELED\n"
    if step.state == _ERROR:
        first, *rest = step.message.splitlines() or [""]
        return f"#{n} ERROR: {first}\n" + "".join(f"#{n} {line}\n" for line in rest)
    return f"#{n} DONE {(step.ended or step.started) - step.started:.1f}s\n"


def _keep(step: StepProgress, lines: list[tuple[float, str]]) -> None:
    for _, line in lines:
        text = _clean(line)
        if text.strip():
            step.tail.append(text)


def _live_tail(step: StepProgress) -> list[str]:
    notes = [_clean(note) for note in step.notes]
    if step.state != _RUNNING:
        return notes
    lines = list(step.tail)
    partial = _clean(step.partial)
    if partial.strip():
        lines.append(partial)
    return notes + lines[-LIVE_TAIL:]


def _final_tail(step: StepProgress) -> list[str]:
    notes = [_clean(note) for note in step.notes]
    return notes + (list(step.tail)[-ERROR_TAIL:] if step.state == _ERROR else [])


def _height(body: list[tuple[StepProgress, list[str]]]) -> int:
    return sum(1 + len(tail) for _, tail in body)


def _step_line(step: StepProgress, now: float, width: int) -> str:
    """`` => [build 2/5] RUN make          DONE 1.2s``: marker and name on the left, the time on the right."""
    seconds = 0.0 if step.state == _CACHED else (step.ended if step.ended is not None else now) - step.started
    timer = f"{seconds:.1f}s"
    marker = {_CACHED: "CACHED ", _ERROR: "ERROR ", _CANCELED: "CANCELED "}.get(step.state, "")
    if step.state == _DONE:
        timer = "DONE " + timer
    left = " => " + marker + _clean(step.title)
    room = width - len(timer) - 1
    if room < 12:  # too narrow to align: the name matters more than the time
        return _fit(left, width)[0]
    left, used = _fit(left, room)
    return left + " " * (room - used) + " " + timer


def _clean(text: str) -> str:
    """Text that is safe to place in the live view: no escapes or controls, tabs expanded."""
    return _CONTROLS.sub("", _ESCAPES.sub("", text)).expandtabs(8)


def _fit(text: str, width: int) -> tuple[str, int]:
    """The longest prefix of ``text`` that fills at most ``width`` terminal cells, and the cells it fills."""
    used = 0
    for i, char in enumerate(text):
        cells = _cells(char)
        if used + cells > width:
            return text[:i], used
        used += cells
    return text, used


def _cells(char: str) -> int:
    if char.isascii():
        return 1
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
