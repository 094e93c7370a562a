"""Progress of long work, readable on a terminal and in a plain log.

On a terminal (the stream, stderr by default, is a TTY) a tqdm bar. Otherwise (a SLURM job, `nohup`, a pipe)
plain lines at an interval, and a final line:

    train: step 300/1800 (16.7 %), 1.6 it/s, ETA 15 min 37 s, loss 0.351
    train: 1800 steps in 18 min 45 s (1.6 it/s), loss 0.287

A line's rate and ETA count the work since the RECENT_LINES-th last line (a paused or slowed-down run is not
averaged over); the final line's rate is the whole run's.

Environment:
    RADAR_PROGRESS           auto (default: bar on a terminal, lines otherwise), bar, log, or off
    RADAR_PROGRESS_INTERVAL  seconds between two plain lines (default 30; 0: a line at every update)

    with Progress(total=len(items), what="radar-generate", unit="sample") as p:
        for item in items:
            ...
            p.update(1)
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections import deque
from typing import Callable, Iterable, Iterator, Literal, Optional, TextIO, TypeVar

ENV_MODE = "RADAR_PROGRESS"
ENV_INTERVAL = "RADAR_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 30.0
RECENT_LINES = 4  # a plain line's rate and ETA: the work since the 4th-last line (or the start), not the whole run
BAR_POSTFIX_S = 1.0  # a bar's postfix values (e.g. the loss), at most this often: see Progress.wants_postfix
MODES = ("auto", "bar", "log", "off")
Mode = Literal["auto", "bar", "log", "off"]
T = TypeVar("T")


def format_duration(seconds: float) -> str:
    """`42 s`, `15 min 37 s`, `2 h 05 min` (`?` for an unknown or infinite duration)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def format_rate(rate: float) -> str:
    """A rate with about three significant digits (`0.143`, `1.6`, `18.6`, `1234`)."""
    if rate >= 100:
        return f"{rate:.0f}"
    return f"{rate:.3g}"


def singular(unit: str) -> str:
    """`sample` of `samples`, `batch` of `batches`, `it` of `it` (a unit not in the plural stays)."""
    if unit.endswith(("ches", "shes", "xes")):
        return unit[:-2]
    return unit[:-1] if unit.endswith("s") and not unit.endswith("ss") else unit


def format_speed(rate: Optional[float], unit: str) -> str:
    """`18.6 pairs/s`, or the time per unit when slower than one a second (`7.4 s/it`, `1.2 s/sample` of
    `samples`)."""
    if not rate:
        return f"? {unit}/s"
    return f"{format_rate(rate)} {unit}/s" if rate >= 1 else f"{format_rate(1 / rate)} s/{singular(unit)}"


def plural(n: int, unit: str) -> str:
    """`1 step`, `12 steps`, `2 batches`, `3 classes`, `80 pairs` (a unit given in the plural stays)."""
    if n == 1 or (unit.endswith("s") and not unit.endswith("ss")):
        return f"{n} {unit}"
    return f"{n} {unit}{'es' if unit.endswith(('ch', 'sh', 'x', 'ss')) else 's'}"


def env_interval() -> float:
    """RADAR_PROGRESS_INTERVAL in seconds (DEFAULT_INTERVAL_S if unset); ValueError naming it if it is not a
    number >= 0."""
    raw = os.environ.get(ENV_INTERVAL, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{ENV_INTERVAL}={raw!r} is not a number of seconds >= 0 (e.g. 30; 0: a line per update)")
    return value


def env_mode() -> str:
    """RADAR_PROGRESS (auto if unset); ValueError naming it if it is not one of MODES."""
    raw = os.environ.get(ENV_MODE, "").strip().lower() or "auto"
    if raw not in MODES:
        raise ValueError(f"{ENV_MODE}={raw!r} is not one of {', '.join(MODES)}")
    return raw


def check_env() -> None:
    """ValueError naming the variable if RADAR_PROGRESS or RADAR_PROGRESS_INTERVAL is set to something invalid
    (the entry points call this before any work)."""
    env_mode()
    env_interval()


def log_mode() -> str:
    """For coarse progress (a line per long unit of work, e.g. per measured run, written between other log
    lines): log, or off when RADAR_PROGRESS=off."""
    return "off" if env_mode() == "off" else "log"


def resolve_mode(mode: Optional[str] = None, stream: Optional[TextIO] = None) -> str:
    """bar, log or off: `mode` (default: RADAR_PROGRESS); auto is a bar when `stream` is a terminal."""
    mode = mode or env_mode()
    if mode != "auto":
        return mode
    stream = stream if stream is not None else sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "bar" if tty else "log"


class Progress:
    """Progress of `total` units of work (None: unknown) named `what`.

    total: units to do (None or inf: unknown; no percentage or ETA then).
    what: the prefix of every line (`radar-cache`, `train`, ...).
    unit: what is counted (`step`, `pairs`); the plain line reads `what: unit done/total`.
    rate_unit: the unit of the rate (default: `unit`), e.g. `it` for `it/s`.
    initial: units already done before (a resumed run): counted in done / total, not in the rate.
    interval_s: seconds between plain lines (default: RADAR_PROGRESS_INTERVAL, else 30).
    mode: auto, bar, log or off (default: RADAR_PROGRESS, else auto).
    enabled: False shows nothing (same as mode off).
    final_line: in log mode, write a final line at close (`always`), only if an interval line was written
        (`if_logged`: for short work inside longer work, e.g. a validation), or never.
    emit: where plain lines go (default: printed to `stream`, flushed).
    stream: the terminal or log stream (default: sys.stderr).
    """

    def __init__(self, total: Optional[float], what: str, unit: str = "it", *, rate_unit: Optional[str] = None,
                 initial: int = 0, interval_s: Optional[float] = None, mode: Optional[str] = None,
                 enabled: bool = True, final_line: Literal["always", "if_logged", "never"] = "always",
                 emit: Optional[Callable[[str], None]] = None, stream: Optional[TextIO] = None, leave: bool = True):
        self.total = None if total is None or not math.isfinite(total) else int(total)
        self.what, self.unit, self.rate_unit = what, unit, rate_unit or unit
        self.initial = self.done = int(initial)
        self.interval_s = env_interval() if interval_s is None else max(0.0, float(interval_s))
        self.stream = stream
        self.mode = resolve_mode(mode, stream) if enabled else "off"
        self.final_line = final_line
        self._emit = emit
        self.postfix: dict[str, object] = {}
        self.start = self._last_line = time.monotonic()
        # (time, done) at the last RECENT_LINES plain lines (the start while fewer were written): the lines' window
        self._marks: deque[tuple[float, int]] = deque([(self.start, self.done)], maxlen=RECENT_LINES)
        self.lines_written = 0
        self.closed = False
        self._bar = None
        self._postfix_at = -math.inf  # (when a bar last took postfix values)
        if self.mode == "bar":
            from tqdm.auto import tqdm

            file = stream if stream is not None else sys.stderr
            fixed = _unsized(file)  # a terminal that reports no size (tqdm would draw nothing): 80x24
            with self._written():  # (its first draw)
                self._bar = tqdm(total=self.total, initial=self.initial, desc=what, unit=self.rate_unit, file=file,
                                 dynamic_ncols=not fixed, ncols=80 if fixed else None, nrows=24 if fixed else None,
                                 smoothing=0.1, leave=leave)

    # -- counting ---------------------------------------------------------------------------------------------
    def update(self, n: int = 1, **postfix: object) -> None:
        """`n` more units done; `postfix` values (e.g. loss=0.35) are shown with the progress."""
        self.update_to(self.done + n, **postfix)

    def update_to(self, done: int, **postfix: object) -> None:
        """`done` units done in all (e.g. a trainer's global step)."""
        self._take_postfix(postfix)
        step, self.done = done - self.done, done
        if self._bar is not None:
            with self._written():
                self._bar.update(step)
        elif self.mode == "log":
            now = time.monotonic()
            if now - self._last_line >= self.interval_s and not (self.total is not None and done >= self.total):
                self._write(self.line(now))
                self._last_line = now
                self._marks.append((now, done))

    def _take_postfix(self, postfix: dict) -> None:
        """Show `postfix` values from now on (a bar's, without redrawing it)."""
        if not postfix:
            return
        self.postfix.update(postfix)
        if self._bar is not None:
            self._bar.set_postfix({k: _short(v) for k, v in self.postfix.items()}, refresh=False)
            self._postfix_at = time.monotonic()

    def wants_postfix(self) -> bool:
        """Whether postfix values given to the next `update_to` would be shown: in log mode when its line is due,
        with a bar at most every BAR_POSTFIX_S seconds, never when off. A caller whose values cost something to
        get (a training loss read back from the GPU: a synchronisation that stalls the step queue) asks first, and
        gives them to `close` too, for the final line."""
        now = time.monotonic()
        if self._bar is not None:
            return now - self._postfix_at >= BAR_POSTFIX_S
        return self.mode == "log" and now - self._last_line >= self.interval_s

    def iterate(self, items: Iterable[T], size: Callable[[T], int] = lambda _: 1) -> Iterator[T]:
        """Yield `items`, counting `size(item)` units after each one is processed; closes at the end."""
        try:
            for item in items:
                yield item
                self.update(size(item))
        finally:
            self.close()

    # -- reporting --------------------------------------------------------------------------------------------
    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.start

    def rate(self, now: Optional[float] = None) -> Optional[float]:
        """Units per second done in this process (the `initial` ones excluded); None before any."""
        dt = (now if now is not None else time.monotonic()) - self.start
        n = self.done - self.initial
        return n / dt if n > 0 and dt > 0 else None

    def recent_rate(self, now: Optional[float] = None) -> Optional[float]:
        """Units per second since the RECENT_LINES-th last plain line (the start before that many): what the
        lines show, so that the ETA follows a run that slows down, speeds up or was paused (a stopped job, a
        suspended laptop) instead of averaging over all of it. None before any unit in that window."""
        t0, done0 = self._marks[0]
        dt = (now if now is not None else time.monotonic()) - t0
        n = self.done - done0
        return n / dt if n > 0 and dt > 0 else None

    def eta_s(self, now: Optional[float] = None) -> Optional[float]:
        rate = self.recent_rate(now)
        if self.total is None or rate is None:
            return None
        return max(0, self.total - self.done) / rate

    def line(self, now: Optional[float] = None) -> str:
        """The plain progress line: `what: unit done/total (pct %), rate unit/s, ETA ..., postfix`."""
        now = now if now is not None else time.monotonic()
        parts = [f"{self.what}: {self.unit} {self.done}/{self.total}" if self.total is not None
                 else f"{self.what}: {self.unit} {self.done}"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.1f} %)"
        rate = self.recent_rate(now)
        parts.append(format_speed(rate, self.rate_unit))
        if self.total is not None:
            parts.append(f"ETA {format_duration(self.eta_s(now)) if rate else '?'}")
        parts += [f"{k} {_short(v)}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def final(self) -> str:
        """The closing line: `what: N units in 3 min 2 s (rate unit/s)`, plus where it stands when that is not
        simply N/N (a resumed run, or work stopped early)."""
        n = self.done - self.initial
        text = f"{self.what}: {plural(n, self.unit)} in {format_duration(self.elapsed_s)}"
        rate = self.rate()
        if rate:
            text += f" ({format_speed(rate, self.rate_unit)})"
        if self.total is not None and (self.initial or self.done < self.total):
            text += f", {'stopped at' if self.done < self.total else 'now'} {self.done}/{self.total}"
        return text + "".join(f", {k} {_short(v)}" for k, v in self.postfix.items())

    def close(self, **postfix: object) -> None:
        """Close the bar, or write the final line (see `final_line`), with `postfix` values updated. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._take_postfix(postfix)
        if self._bar is not None:
            with self._written():
                self._bar.close()
        elif self.mode == "log" and (self.final_line == "always"
                                     or (self.final_line == "if_logged" and self.lines_written)):
            self._write(self.final())

    def _write(self, text: str) -> None:
        self.lines_written += 1
        if self._emit is not None:
            self._emit(text)
        else:
            with self._written():
                print(text, file=self.stream if self.stream is not None else sys.stderr, flush=True)

    @contextlib.contextmanager
    def _written(self):
        """A write of the progress that fails (stderr a full disk's file, a closed terminal after SIGHUP, a pipe
        whose reader left) turns the progress off instead of ending the work it reports on (a fit lost its steps
        since its last save, radar-cache its shards)."""
        try:
            yield
        except (OSError, ValueError):  # (ValueError: a closed file)
            self.mode, self._bar = "off", None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _unsized(stream: TextIO) -> bool:
    """Whether `stream` is a terminal that reports a width of 0 columns."""
    try:
        return os.get_terminal_size(stream.fileno()).columns == 0
    except (AttributeError, OSError, ValueError):
        return False


def _short(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if hasattr(v, "item"):  # a 0-d tensor
        try:
            return f"{float(v.item()):.4g}"
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(v)
