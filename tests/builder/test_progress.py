"""The progress display: buildx's plain log line for line, and a tty view replayed on a tiny terminal emulator."""

from __future__ import annotations

import io
import os
import re
import shutil

import pytest

from builder import progress as progress_module
from builder.progress import Progress


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Screen:
    """Just enough of a VT100 to replay what the tty view writes; any other escape fails the test."""

    TOKEN = re.compile(r"\x1b\[([0-9;]*)([A-Za-z])|\r|\n|[^\x1b\r\n]+")

    def __init__(self) -> None:
        self.lines = [""]
        self.row = self.col = 0

    def feed(self, text: str) -> Screen:
        pos = 0
        while pos < len(text):
            match = self.TOKEN.match(text, pos)
            assert match, f"unexpected output at {text[pos : pos + 10]!r}"
            pos = match.end()
            token = match.group(0)
            if match.group(2):
                self._csi(match.group(1), match.group(2))
            elif token == "\r":
                self.col = 0
            elif token == "\n":
                self.row, self.col = self.row + 1, 0
                while len(self.lines) <= self.row:
                    self.lines.append("")
            else:
                line = self.lines[self.row].ljust(self.col)
                self.lines[self.row] = line[: self.col] + token + line[self.col + len(token) :]
                self.col += len(token)
        return self

    def _csi(self, arg: str, command: str) -> None:
        if command == "A":
            self.row = max(0, self.row - int(arg or 1))
        elif command == "K" and arg == "2":
            self.lines[self.row] = ""
        elif command == "J" and arg == "":
            self.lines[self.row] = self.lines[self.row][: self.col]
            del self.lines[self.row + 1 :]
        elif command != "m":
            raise AssertionError(f"unexpected escape ESC[{arg}{command}")

    @property
    def text(self) -> list[str]:
        lines = list(self.lines)
        while lines and not lines[-1]:
            lines.pop()
        return lines


def plain(clock: Clock | None = None, **kwargs: object) -> tuple[Progress, io.StringIO]:
    stream = io.StringIO()
    return Progress("plain", stream, clock=clock or Clock(), **kwargs), stream  # type: ignore[arg-type]


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Terminal:
    """A terminal of 60x20 cells, without colour unless a test asks for it."""
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *args, **kwargs: os.terminal_size((60, 20)))
    monkeypatch.setenv("NO_COLOR", "1")
    return Terminal()


def screen(stream: io.StringIO) -> list[str]:
    return Screen().feed(stream.getvalue()).text


# ------------------------------------------------------------------------------------------------------ plain


def test_plain_numbers_steps_in_order_with_stage_labels() -> None:
    progress, out = plain()
    progress.step("FROM alpine", stage="build", index=1, total=2).finish()
    progress.step("RUN make", stage="build", index=2, total=2).finish()
    assert out.getvalue() == ("#1 [build 1/2] FROM alpine\n#1 DONE 0.0s\n\n#2 [build 2/2] RUN make\n#2 DONE 0.0s\n"), (
        "a blank line between steps, as buildx prints"
    )


def test_plain_labels_without_a_stage_or_a_count() -> None:
    progress, out = plain()
    progress.step("load build definition", stage="internal")
    progress.step("RUN true")
    progress.step("COPY . /src", index=3, total=4)
    headers = [line for line in out.getvalue().splitlines() if line.startswith("#") and "..." not in line]
    assert headers == ["#1 [internal] load build definition", "#2 RUN true", "#3 [3/4] COPY . /src"]


def test_plain_output_lines_carry_the_seconds_since_the_step_started() -> None:
    clock = Clock()
    progress, out = plain(clock)
    step = progress.step("RUN make")
    clock.advance(0.532)
    step.log(b"compiling\nlinking\n")
    clock.advance(0.7)
    step.finish()
    assert out.getvalue().splitlines() == ["#1 RUN make", "#1 0.532 compiling", "#1 0.532 linking", "#1 DONE 1.2s"]


def test_plain_timestamps_narrow_as_steps_get_long() -> None:
    clock = Clock()
    progress, out = plain(clock)
    step = progress.step("RUN sleep")
    for seconds in (1.5, 15.0, 150.0):
        clock.now = 100.0 + seconds
        step.log(b"tick\n")
    assert out.getvalue().splitlines()[1:] == ["#1 1.500 tick", "#1 15.00 tick", "#1 150.0 tick"]


def test_a_line_is_timed_by_its_first_byte_and_printed_when_complete() -> None:
    clock = Clock()
    progress, out = plain(clock)
    step = progress.step("RUN x")
    clock.advance(1)
    step.log(b"hel")
    assert out.getvalue() == "#1 RUN x\n", "nothing printed before the line ends"
    clock.advance(1)
    step.log(b"lo\nwor")
    assert out.getvalue().endswith("#1 1.000 hello\n")
    clock.advance(1)
    step.log(b"ld\n")
    assert out.getvalue().endswith("#1 2.000 world\n")


def test_a_partial_last_line_is_flushed_before_the_verdict() -> None:
    progress, out = plain()
    step = progress.step("RUN printf done")
    step.log(b"no newline at the end")
    step.finish()
    assert out.getvalue().splitlines()[-2:] == ["#1 0.000 no newline at the end", "#1 DONE 0.0s"]


def test_empty_lines_are_kept_without_a_trailing_space() -> None:
    progress, out = plain()
    progress.step("RUN x").log(b"a\n\nb\n")
    assert out.getvalue().splitlines()[1:] == ["#1 0.000 a", "#1 0.000", "#1 0.000 b"]


def test_carriage_returns_keep_the_last_drawn_segment() -> None:
    progress, out = plain()
    step = progress.step("RUN curl")
    step.log(b" 10%\r 50%\r")
    step.log(b"100%\n")
    step.log(b"windows line\r\n")
    step.log(b"\r\n")
    step.log(b"left\rright")
    step.finish()
    assert out.getvalue().splitlines()[1:-1] == ["#1 0.000 100%", "#1 0.000 windows line", "#1 0.000", "#1 0.000 right"]


def test_invalid_utf8_is_replaced_and_split_sequences_are_joined() -> None:
    progress, out = plain()
    step = progress.step("RUN x")
    step.log(b"bad \xff\xfe byte\n")
    step.log("café".encode()[:-1])
    step.log("café\n".encode()[-2:])
    step.log(b"cut \xc3")
    step.fail("exit code 1")
    assert out.getvalue().splitlines()[1:-1] == [
        "#1 0.000 bad \ufffd\ufffd byte",
        "#1 0.000 café",
        "#1 0.000 cut \ufffd",
    ]


def test_cached_error_and_multiline_error_verdicts() -> None:
    progress, out = plain()
    progress.step("FROM alpine").cached()
    progress.step("RUN false").fail("process exited with code 1")
    progress.step("RUN check").fail("two problems\nthe second one")
    lines = out.getvalue().splitlines()
    assert "#1 CACHED" in lines
    assert "#2 ERROR: process exited with code 1" in lines
    assert lines[-2:] == ["#3 ERROR: two problems", "#3 the second one"]


def test_events_after_a_step_ended_are_ignored() -> None:
    progress, out = plain()
    step = progress.step("RUN x")
    step.finish()
    before = out.getvalue()
    step.log(b"late output\n")
    step.finish()
    step.fail("late failure")
    step.cached()
    assert out.getvalue() == before


def test_interleaved_steps_are_announced_again_as_buildx_does() -> None:
    progress, out = plain()
    first = progress.step("RUN a", stage="one")
    second = progress.step("RUN b", stage="two")
    first.log(b"from a\n")
    first.finish()
    second.finish()
    assert out.getvalue().splitlines() == [
        "#1 [one] RUN a",
        "#1 ...",
        "",
        "#2 [two] RUN b",
        "#2 ...",
        "",
        "#1 [one] RUN a",
        "#1 0.000 from a",
        "#1 DONE 0.0s",
        "",
        "#2 [two] RUN b",
        "#2 DONE 0.0s",
    ]


def test_done_cancels_steps_still_running_and_flushes_their_output() -> None:
    progress, out = plain()
    step = progress.step("RUN sleep 100")
    step.log(b"waiting")
    progress.done()
    assert out.getvalue().splitlines()[-2:] == ["#1 0.000 waiting", "#1 CANCELED"]
    step.finish()
    assert out.getvalue().splitlines()[-1] == "#1 CANCELED", "the engine finishing it later changes nothing"


def test_an_endless_line_is_cut_rather_than_kept_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "MAX_LINE", 10)
    progress, out = plain()
    step = progress.step("RUN yes")
    for _ in range(5):
        step.log(b"abcdef")
    step.finish()
    assert out.getvalue().splitlines()[1:] == [
        "#1 0.000 abcdefabcdef",
        "#1 0.000 abcdefabcdef",
        "#1 0.000 abcdef",
        "#1 DONE 0.0s",
    ]


def test_names_with_newlines_stay_on_one_line() -> None:
    progress, out = plain()
    progress.step("RUN <<EOF\napk add make\nEOF")
    assert out.getvalue() == "#1 RUN <<EOF apk add make EOF\n"


# ------------------------------------------------------------------------------------- status() and done()


def test_status_lines_keep_their_format_in_plain_mode() -> None:
    clock = Clock()
    progress, out = plain(clock)
    progress.status("unpacking rootfs.tar")
    clock.advance(1.5)
    progress.status("writing layer")
    progress.done()
    assert out.getvalue() == "[  0.0s] unpacking rootfs.tar\n[  1.5s] writing layer\n"


def test_the_default_stream_is_standard_error(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress("plain")
    progress.status("unpacking x")
    progress.done()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.endswith("] unpacking x\n")


def test_status_in_a_terminal_is_replaced_in_place_then_cleared_by_done(terminal: Terminal) -> None:
    clock = Clock()
    progress = Progress("tty", terminal, clock=clock)
    progress.status("unpacking rootfs.tar")
    assert screen(terminal) == ["[  0.0s] unpacking rootfs.tar"]
    clock.advance(2)
    progress.status("writing layer")
    assert screen(terminal) == ["[  2.0s] writing layer"]
    progress.done()
    assert screen(terminal) == [], "nothing is left behind, so the CLI's next line starts clean"
    written = terminal.getvalue()
    progress.done()
    assert terminal.getvalue() == written, "done() twice draws nothing more"


# -------------------------------------------------------------------------------------------------------- tty


def test_tty_view_shows_a_header_and_a_timed_line_per_step(terminal: Terminal) -> None:
    clock = Clock()
    progress = Progress("tty", terminal, clock=clock)
    progress.expect(3)
    progress.step("FROM alpine", stage="build", index=1, total=3).cached()
    clock.advance(0.5)
    done = progress.step("COPY . /src", stage="build", index=2, total=3)
    clock.advance(0.7)
    done.finish()
    progress.step("RUN make", stage="build", index=3, total=3)
    clock.advance(2.0)
    progress.refresh()
    lines = screen(terminal)
    assert lines[0] == "[+] Building 3.2s (2/3)"
    assert re.fullmatch(r" => CACHED \[build 1/3\] FROM alpine +0\.0s", lines[1])
    assert re.fullmatch(r" => \[build 2/3\] COPY \. /src +DONE 0\.7s", lines[2])
    assert re.fullmatch(r" => \[build 3/3\] RUN make +2\.0s", lines[3])
    assert {len(line) for line in lines[1:]} == {59}, "times are right-aligned just inside the 60 columns"


def test_tty_shows_the_last_six_lines_under_a_running_step(terminal: Terminal) -> None:
    clock = Clock()
    progress = Progress("tty", terminal, clock=clock)
    step = progress.step("RUN make")
    clock.advance(0.1)
    step.log(b"".join(b"line %d\n" % i for i in range(1, 10)) + b"partial")
    lines = screen(terminal)
    assert lines[2:] == [f" => => # {text}" for text in ("line 5", "line 6", "line 7", "line 8", "line 9", "partial")]


def test_tty_output_lines_go_away_when_the_step_finishes(terminal: Terminal) -> None:
    clock = Clock()
    progress = Progress("tty", terminal, clock=clock)
    step = progress.step("RUN make")
    clock.advance(0.5)
    step.log(b"compiling\n")
    assert screen(terminal)[1:] == [" => RUN make" + " " * 43 + "0.5s", " => => # compiling"]
    step.finish()
    assert screen(terminal)[1:] == [" => RUN make" + " " * 38 + "DONE 0.5s"]


def test_tty_lines_are_cut_to_the_terminal_width(terminal: Terminal) -> None:
    clock = Clock()
    progress = Progress("tty", terminal, clock=clock)
    step = progress.step("RUN " + "x" * 200, stage="build", index=1, total=1)
    clock.advance(0.1)
    step.log(b"y" * 300 + b"\n" + "界".encode() * 100 + b"\n")
    lines = screen(terminal)
    assert lines[1].startswith(" => [build 1/1] RUN xxx") and lines[1].endswith(" 0.1s")
    assert lines[2] == " => => # " + "y" * 50
    assert lines[3] == " => => # " + "界" * 25, "wide characters count two cells"
    assert all(len(line) <= 59 for line in lines[:3])


def test_tty_strips_escapes_and_controls_that_would_break_the_view(terminal: Terminal) -> None:
    log = io.StringIO()
    clock = Clock()
    progress = Progress("tty", terminal, log_file=log, clock=clock)
    step = progress.step("RUN npm install")
    clock.advance(0.1)
    step.log(b"\x1b[32mgreen\x1b[0m\x1b[2J\x1b]0;title\x07 bell\x07\x00 tab\tend\n")
    assert screen(terminal)[2] == " => => # green bell tab  end"
    assert "\x1b[32mgreen" in log.getvalue(), "the plain log keeps the output as it came"


def test_tty_throttles_redraws_caused_by_output(terminal: Terminal) -> None:
    clock = Clock()
    progress = Progress("tty", terminal, clock=clock)
    step = progress.step("RUN make")
    drawn = terminal.getvalue()
    clock.advance(0.05)
    step.log(b"first\n")
    assert terminal.getvalue() == drawn, "50 ms after the last frame: no redraw"
    progress.refresh()
    assert terminal.getvalue() == drawn, "refresh() respects the same limit"
    clock.advance(0.06)
    step.log(b"second\n")
    assert screen(terminal)[2:] == [" => => # first", " => => # second"], "100 ms: redrawn, nothing lost"
    drawn = terminal.getvalue()
    step.finish()
    assert terminal.getvalue() != drawn, "a step ending always redraws"


def test_tty_redraws_in_place_with_cursor_up_and_clears_leftovers(terminal: Terminal) -> None:
    clock = Clock()
    progress = Progress("tty", terminal, clock=clock)
    step = progress.step("RUN make")
    clock.advance(1)
    step.log(b"a\nb\nc\n")
    frame = terminal.getvalue()
    clock.advance(1)
    step.finish()
    update = terminal.getvalue()[len(frame) :]
    assert update.startswith("\x1b[5A\r\x1b[2K"), "up the five lines drawn before, clearing each line rewritten"
    assert update.endswith("\x1b[J"), "the view got shorter: clear below it"
    assert screen(terminal) == ["[+] Building 2.0s (1/1)", " => RUN make" + " " * 38 + "DONE 2.0s"]


def test_tty_final_view_lists_every_step_and_a_failed_steps_last_lines(terminal: Terminal) -> None:
    clock = Clock()
    progress = Progress("tty", terminal, clock=clock)
    ok = progress.step("RUN ok")
    ok.log(b"noise\n")
    ok.finish()
    bad = progress.step("RUN make")
    bad.log(b"".join(b"error %d\n" % i for i in range(1, 13)))
    clock.advance(1.5)
    bad.fail("process exited with code 2")
    progress.done()
    lines = screen(terminal)
    assert lines[0] == "[+] Building 1.5s (2/2) FINISHED"
    assert lines[1].startswith(" => RUN ok") and lines[1].endswith("DONE 0.0s")
    assert lines[2].startswith(" => ERROR RUN make") and lines[2].endswith(" 1.5s")
    assert lines[3:] == [f" => => # error {i}" for i in range(3, 13)], "the last ten lines, nothing of the ok step"


def test_tty_live_view_fits_the_terminal_height(monkeypatch: pytest.MonkeyPatch, terminal: Terminal) -> None:
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *args, **kwargs: os.terminal_size((60, 8)))
    clock = Clock()
    progress = Progress("tty", terminal, clock=clock)
    for i in range(10):
        progress.step(f"RUN step{i}").finish()
    running = progress.step("RUN last")
    clock.advance(0.1)
    running.log(b"1\n2\n3\n4\n5\n6\n")
    lines = screen(terminal)
    assert len(lines) <= 7, "one line short of the screen, so the cursor can always get back to the top"
    assert lines[0].startswith("[+] Building")
    assert any("RUN last" in line for line in lines)
    assert lines[-1] == " => => # 6"
    progress.done()
    assert len(screen(terminal)) == 12, "the final view has every step"


def test_tty_colours_failures_unless_no_color(monkeypatch: pytest.MonkeyPatch, terminal: Terminal) -> None:
    monkeypatch.delenv("NO_COLOR")
    coloured = Terminal()
    Progress("tty", coloured, clock=Clock()).step("RUN false").fail("exit 1")
    assert "\x1b[31m => ERROR RUN false" in coloured.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    Progress("tty", terminal, clock=Clock()).step("RUN false").fail("exit 1")
    assert "\x1b[31m" not in terminal.getvalue()


# ------------------------------------------------------------------------------------ quiet, log file, modes


def test_quiet_prints_nothing_but_the_log_file_gets_everything() -> None:
    stream, log = Terminal(), io.StringIO()
    progress = Progress("quiet", stream, log_file=log, clock=Clock())
    progress.status("starting")
    step = progress.step("RUN make", stage="build", index=1, total=1)
    step.log(b"one\ntwo\n")
    step.fail("exit 2")
    progress.done()
    assert stream.getvalue() == ""
    assert log.getvalue() == (
        "[  0.0s] starting\n\n#1 [build 1/1] RUN make\n#1 0.000 one\n#1 0.000 two\n#1 ERROR: exit 2\n"
    )


def test_tty_log_file_gets_every_line_not_just_the_tail(terminal: Terminal) -> None:
    log = io.StringIO()
    progress = Progress("tty", terminal, log_file=log, clock=Clock())
    step = progress.step("RUN make")
    step.log(b"".join(b"%d\n" % i for i in range(20)))
    step.finish()
    assert log.getvalue().splitlines() == ["#1 RUN make"] + [f"#1 0.000 {i}" for i in range(20)] + ["#1 DONE 0.0s"]
    assert "\x1b" not in log.getvalue()


def test_the_log_file_is_flushed_at_every_event(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "build.log")
    with open(path, "w", buffering=64 * 1024) as log:
        progress = Progress("quiet", io.StringIO(), log_file=log, clock=Clock())
        step = progress.step("RUN make")
        step.log(b"still running\n")
        with open(path) as reader:
            assert reader.read() == "#1 RUN make\n#1 0.000 still running\n", "readable while the build runs"


def test_a_broken_stream_never_fails_the_build() -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError("reader went away")

    log = io.StringIO()
    progress = Progress("plain", Broken(), log_file=log, clock=Clock())
    step = progress.step("RUN make")
    step.log(b"output\n")
    step.finish()
    progress.done()
    assert log.getvalue().splitlines() == ["#1 RUN make", "#1 0.000 output", "#1 DONE 0.0s"]
    tty = Progress("tty", Broken(), clock=Clock())
    tty.step("RUN make").finish()
    tty.done()


@pytest.mark.parametrize(("stream", "mode"), [(Terminal(), "tty"), (io.StringIO(), "plain")])
def test_auto_is_tty_only_on_a_terminal(stream: io.StringIO, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")  # only isatty decides, as in buildx
    assert Progress("auto", stream).mode == mode
    assert Progress(stream=stream).mode == mode, "auto is the default"


def test_auto_on_a_closed_stream_is_plain_and_unknown_modes_are_refused() -> None:
    closed = io.StringIO()
    closed.close()
    assert Progress("auto", closed).mode == "plain"
    with pytest.raises(ValueError, match="rawjson"):
        Progress("rawjson", io.StringIO())


def test_a_terminal_that_reports_no_size_falls_back_to_the_environment(terminal: Terminal) -> None:
    controller, device = os.openpty()  # a fresh pseudo-terminal says it is 0x0
    try:
        with open(device, "w", closefd=False) as stream:
            progress = Progress("auto", stream, clock=Clock())
            assert progress.mode == "tty"
            assert progress._size() == (60, 20), "the fake 60x20 from shutil, not the 20x4 floor"
    finally:
        os.close(controller)
        os.close(device)


# ------------------------------------------------------------------------------------------------------ notes


def test_a_note_is_a_line_of_its_step_in_plain_mode() -> None:
    progress, out = plain()
    step = progress.step("COPY src/ /app")
    step.note("cache miss: src/app.py changed")
    step.finish()
    step.note("after the end: ignored")
    assert out.getvalue().splitlines() == ["#1 COPY src/ /app", "#1 cache miss: src/app.py changed", "#1 DONE 0.0s"]


def test_a_note_stays_under_its_step_in_the_terminal_after_it_finishes(terminal: Terminal) -> None:
    clock = Clock()
    progress = Progress("tty", terminal, clock=clock)
    step = progress.step("RUN make")
    step.note("cache miss: build arg V changed (1 -> 2)")
    clock.advance(0.2)
    step.log(b"compiling\n")
    assert screen(terminal)[2:] == [" => => # cache miss: build arg V changed (1 -> 2)", " => => # compiling"]
    step.finish()
    progress.done()
    assert screen(terminal)[-1] == " => => # cache miss: build arg V changed (1 -> 2)"
