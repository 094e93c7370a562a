"""radar_train.progress: plain lines in a log (step / total, rate, ETA at an interval, a final line), a bar on a
terminal, the environment settings checked."""
from __future__ import annotations

import io
import re

import pytest

from radar_train.progress import Progress, check_env, format_duration, plural, resolve_mode

LINE = re.compile(r"^train: step (\d+)/(\d+) \((\d+\.\d) %\), ([\d.]+ it/s|[\d.]+ s/it), ETA (\d+ s|\d+ min \d+ s)")


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr("radar_train.progress.time.monotonic", c)
    return c


def test_plain_lines_at_the_interval_with_rate_eta_and_a_final_line(clock):
    out = io.StringIO()  # not a terminal: plain lines
    p = Progress(100, "train", "step", rate_unit="it", interval_s=30, stream=out)
    for _ in range(100):
        clock.t += 0.5  # 2 steps a second
        p.update(1, loss=0.25)
    p.close()
    lines = out.getvalue().splitlines()
    # a line every 30 s of 50 s (none at the end: the final line says it), then the final line
    assert len(lines) == 2, lines
    m = LINE.match(lines[0])
    assert m, lines[0]
    assert m.group(1, 2, 3) == ("60", "100", "60.0") and m.group(4) == "2 it/s" and m.group(5) == "20 s"
    assert lines[0].endswith("loss 0.25")
    assert lines[1] == "train: 100 steps in 50 s (2 it/s), loss 0.25"


def test_slow_work_reads_as_seconds_per_unit_and_a_long_eta_in_minutes(clock):
    out = io.StringIO()
    p = Progress(1800, "train", "step", rate_unit="it", interval_s=0, stream=out)
    clock.t += 25.0
    p.update(4)
    assert out.getvalue().strip() == "train: step 4/1800 (0.2 %), 6.25 s/it, ETA 3 h 07 min"


@pytest.mark.parametrize("unit,per", [("samples", "sample"), ("batches", "batch"), ("pairs", "pair"), ("it", "it")])
def test_slow_work_in_a_plural_unit_reads_as_seconds_per_one_of_them(clock, unit, per):
    out = io.StringIO()  # (radar-accel calibrate said "1.07 s/samples")
    p = Progress(10, "x", unit, interval_s=0, stream=out)
    clock.t += 2.0
    p.update(1)
    assert out.getvalue().split(", ")[1] == f"2 s/{per}"


def test_a_resumed_run_counts_its_rate_from_where_it_resumed(clock):
    out = io.StringIO()
    p = Progress(1000, "train", "step", rate_unit="it", initial=900, interval_s=0, stream=out)
    clock.t += 10
    p.update_to(950)
    clock.t += 10
    p.update_to(1000)
    p.close()
    first, final = out.getvalue().splitlines()
    assert first == "train: step 950/1000 (95.0 %), 5 it/s, ETA 10 s"
    assert final == "train: 100 steps in 20 s (5 it/s), now 1000/1000"


def test_the_lines_rate_and_eta_follow_the_recent_work_after_a_pause(clock):
    # 2 it/s for 50 s, a job stopped for 1,000 s, then 2 it/s again: a line's rate covers the work since the
    # 4th-last line, so the pause shows in the first line after it and is gone 4 lines later (the final line
    # keeps the whole run's average)
    out = io.StringIO()
    p = Progress(1000, "train", "step", rate_unit="it", interval_s=0, stream=out)
    for _ in range(10):
        clock.t += 5
        p.update(10)  # lines 1-10 at t = 5 ... 50 s, steps 10 ... 100
    clock.t += 1000
    for _ in range(5):
        clock.t += 5
        p.update(10)  # lines 11-15 at t = 1055 ... 1075 s, steps 110 ... 150
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[9] == "train: step 100/1000 (10.0 %), 2 it/s, ETA 7 min 30 s"  # since line 6: 40 steps in 20 s
    # line 11: since line 7 (t 35 s, step 70): 40 steps in 1,020 s, 25.5 s/it; 890 steps left: 22,695 s
    assert lines[10] == "train: step 110/1000 (11.0 %), 25.5 s/it, ETA 6 h 18 min"
    # line 15: since line 11 (t 1055 s, step 110): 40 steps in 20 s; 850 steps left
    assert lines[14] == "train: step 150/1000 (15.0 %), 2 it/s, ETA 7 min 5 s"
    assert lines[15] == "train: 150 steps in 17 min 55 s (7.17 s/it), stopped at 150/1000"  # 1,075 s / 150


def test_work_stopped_early_says_where_and_unknown_totals_have_no_eta(clock):
    out = io.StringIO()
    with Progress(None, "radar-fid", "samples", interval_s=0, stream=out) as p:
        clock.t += 4
        p.update(8)
    assert out.getvalue().splitlines() == ["radar-fid: samples 8, 2 samples/s", "radar-fid: 8 samples in 4 s (2 samples/s)"]
    out = io.StringIO()
    with Progress(10, "x", "batch", interval_s=0, stream=out) as p:
        clock.t += 1
        p.update(3)
    assert out.getvalue().splitlines()[-1] == "x: 3 batches in 1 s (3 batch/s), stopped at 3/10"


def test_if_logged_final_line_only_after_an_interval_line_and_off_writes_nothing(clock):
    out = io.StringIO()
    with Progress(2, "val", "batch", interval_s=30, final_line="if_logged", stream=out) as p:
        clock.t += 1
        p.update(2)
    assert out.getvalue() == ""
    with Progress(2, "val", "batch", interval_s=0, mode="off", stream=out) as p:
        p.update(1)
    with Progress(2, "val", "batch", interval_s=0, enabled=False, stream=out) as p:
        p.update(1)
    assert out.getvalue() == ""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_and_no_plain_lines():
    out = Terminal()
    assert resolve_mode("auto", out) == "bar" and resolve_mode("auto", io.StringIO()) == "log"
    with Progress(4, "radar-cache", "pairs", interval_s=0, stream=out) as p:
        p.update(4)
    text = out.getvalue()
    assert "4/4" in text and "\r" in text  # tqdm's bar
    assert "radar-cache: pairs" not in text and "pairs in" not in text


def test_environment_settings(monkeypatch):
    monkeypatch.setenv("RADAR_PROGRESS", "log")
    monkeypatch.setenv("RADAR_PROGRESS_INTERVAL", "0")
    check_env()
    assert resolve_mode(None, Terminal()) == "log"
    assert Progress(3, "x", stream=io.StringIO()).interval_s == 0
    monkeypatch.setenv("RADAR_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ValueError, match="RADAR_PROGRESS_INTERVAL='soon'"):
        check_env()
    monkeypatch.setenv("RADAR_PROGRESS_INTERVAL", "-1")
    with pytest.raises(ValueError, match="RADAR_PROGRESS_INTERVAL"):
        check_env()
    monkeypatch.setenv("RADAR_PROGRESS_INTERVAL", "5")
    monkeypatch.setenv("RADAR_PROGRESS", "loud")
    with pytest.raises(ValueError, match="RADAR_PROGRESS='loud' is not one of auto, bar, log, off"):
        check_env()


def test_formats():
    assert [format_duration(s) for s in (0.4, 59, 61, 937, 3600, 7500)] == [
        "0 s", "59 s", "1 min 1 s", "15 min 37 s", "1 h 00 min", "2 h 05 min"]
    assert format_duration(float("inf")) == "?"
    assert [plural(1, "step"), plural(2, "step"), plural(2, "batch"), plural(3, "pairs"), plural(3, "class"),
            plural(1, "class")] == ["1 step", "2 steps", "2 batches", "3 pairs", "3 classes", "1 class"]


def test_toy_trainers_log_step_total_rate_and_eta_and_keep_the_loss_curve(caplog):
    from radar_train.toyworld.common import StepLog

    with caplog.at_level("INFO", logger="radar_train.toyworld"):
        steps = StepLog("vqvae", total=4, every=2)
        for step in range(4):
            steps.update(step, lr=1e-3, loss=float(step))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert re.match(r"vqvae: step 2/4 \(50\.0 %\), [\d.]+ (it/s|s/it), ETA \d+ s, loss=0\.5000 lr=1\.00e-03$", lines[0])
    assert lines[1].startswith("vqvae: step 4/4 (100.0 %)") and "ETA 0 s, loss=2.5000" in lines[1]
    assert steps.curve == [0.5, 2.5]


def test_toy_trainers_rate_and_eta_cover_the_steps_since_the_previous_line(caplog, monkeypatch):
    from radar_train.toyworld.common import StepLog

    clock = FakeClock()
    monkeypatch.setattr("radar_train.toyworld.common.time.time", clock)
    with caplog.at_level("INFO", logger="radar_train.toyworld"):
        steps = StepLog("var", total=40, every=10)
        for step in range(30):
            clock.t += 1000.5 if step == 10 else 0.5  # 2 it/s, the job stopped for 1,000 s before step 11
            steps.update(step, lr=1e-3, loss=1.0)
    lines = [r.getMessage().split(", loss")[0] for r in caplog.records]
    assert lines == ["var: step 10/40 (25.0 %), 2 it/s, ETA 15 s",
                     "var: step 20/40 (50.0 %), 100 s/it, ETA 33 min 30 s",  # 10 steps in 1,005 s: 20 x 100.5 s left
                     "var: step 30/40 (75.0 %), 2 it/s, ETA 5 s"]


def test_postfix_values_are_wanted_only_when_shown_and_the_final_line_takes_them_at_close(clock):
    """A caller whose values cost something (a loss read back from the GPU) asks `wants_postfix` first: in log
    mode only when the next line is due, with a bar at most every BAR_POSTFIX_S, never when off."""
    from radar_train.progress import BAR_POSTFIX_S

    out = io.StringIO()
    p = Progress(100, "train", "step", rate_unit="it", interval_s=30, stream=out)
    wanted = []
    for _ in range(100):
        clock.t += 0.5
        wanted.append(p.wants_postfix())
        p.update(1, **({"loss": 0.25} if wanted[-1] else {}))
    p.close(loss=0.125)
    assert [i for i, w in enumerate(wanted) if w] == [59]  # the step whose line is due (at 30 s), and no other
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("loss 0.25") and lines[1] == "train: 100 steps in 50 s (2 it/s), loss 0.125"

    bar = Progress(10, "train", "step", interval_s=0, stream=Terminal())
    seen = []
    for _ in range(10):
        clock.t += BAR_POSTFIX_S / 4
        seen.append(bar.wants_postfix())
        bar.update(1, **({"loss": 1.0} if seen[-1] else {}))
    bar.close()
    assert seen == [True, False, False, False, True, False, False, False, True, False]
    off = Progress(10, "train", "step", enabled=False)
    assert not off.wants_postfix()


class _Failing(io.StringIO):
    """A stream whose writes fail from the `after`-th on: a full disk's log file, a terminal closed (SIGHUP), a pipe
    whose reader left."""

    def __init__(self, error: OSError, after: int = 0, tty: bool = False):
        super().__init__()
        self.error, self.after, self.tty, self.writes = error, after, tty, 0

    def write(self, text: str) -> int:
        self.writes += 1
        if self.writes > self.after:
            raise self.error
        return super().write(text)

    def isatty(self) -> bool:
        return self.tty


_FULL, _EIO, _PIPE = OSError(28, "No space left on device"), OSError(5, "Input/output error"), BrokenPipeError(32, "")


# (not a bar on EIO, a terminal gone: tqdm ignores that one itself)
@pytest.mark.parametrize("error,tty", [(_FULL, False), (_EIO, False), (_PIPE, False), (_FULL, True), (_PIPE, True)],
                         ids=["lines-full", "lines-closed-terminal", "lines-pipe", "bar-full", "bar-pipe"])
def test_a_progress_write_that_fails_turns_the_progress_off_not_the_work(clock, error, tty):
    """The error of the first progress line ended the work it reports on (radar-train fit with stderr on a full disk
    stopped at step 1 with nothing saved; after its reader left a pipe, it lost its steps since the last save)."""
    out = _Failing(error, after=1, tty=tty)
    p = Progress(10, "train", "step", interval_s=0, stream=out)
    assert p.mode == ("bar" if tty else "log")
    for _ in range(10):
        clock.t += 1
        p.update(1)
    p.close()
    assert p.done == 10 and p.mode == "off"
    assert out.writes == 2  # (the one that went through, the one that failed: nothing tried after it)


def test_a_bar_whose_first_draw_fails_turns_the_progress_off(clock):
    """(tqdm draws as it is made: that write's error ended radar-cache run and radar-train fit under RADAR_PROGRESS=bar
    with stderr on a full disk.)"""
    out = _Failing(OSError(28, "No space left on device"), after=0, tty=True)
    p = Progress(3, "train", "step", interval_s=0, stream=out, mode="bar")
    p.update(3)
    p.close()
    assert p.mode == "off" and p.done == 3
