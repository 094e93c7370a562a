"""Interleaved timing: every job runs once per round, rounds repeat, medians are kept.

Running the competitors alternately (official, ours, each method, ... then again) spreads drifts of the
machine (clocks, other load) over all of them instead of favouring whichever ran first or last. A job
times its own phases (e.g. the sampling loop and the whole call with the decode) and returns them; this
module keeps the values of the timed rounds and, on CUDA, the peak memory of each job.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch


@dataclass
class Job:
    """One competitor. `fn` runs it once and returns {phase: seconds}."""

    name: str
    fn: Callable[[], dict[str, float]]
    may_fail: bool = False  # a failure marks the job skipped (with the reason) instead of stopping the run
    times: dict[str, list[float]] = field(default_factory=dict)
    peak_bytes: Optional[int] = None  # CUDA: max_memory_allocated during the job (max over rounds)
    peak_above_start_bytes: Optional[int] = None  # the same minus what was allocated when the job started
    skipped: Optional[str] = None

    def median(self, phase: str) -> Optional[float]:
        v = self.times.get(phase)
        return statistics.median(v) if v else None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseClock:
    """Marks phases inside a job: `clock.start()`, work, `clock.mark("loop")`, work, `clock.mark("e2e")`;
    each mark is the time since start, CUDA-synchronised first."""

    def __init__(self, device: torch.device):
        self.device, self.t0, self.phases = device, 0.0, {}

    def start(self) -> "PhaseClock":
        sync(self.device)
        self.phases = {}
        self.t0 = time.perf_counter()
        return self

    def mark(self, phase: str) -> dict[str, float]:
        sync(self.device)
        self.phases[phase] = time.perf_counter() - self.t0
        return self.phases


def _run_once(job: Job, device: torch.device, keep: bool) -> None:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    try:
        phases = job.fn()
    except Exception as e:  # noqa: BLE001 - only for jobs that may fail (e.g. an engine a method does not support)
        if not job.may_fail:
            raise
        job.skipped = f"{type(e).__name__}: {e}"
        return
    if cuda and keep:  # (a warm-up round holds one-off costs: the graphs engine's capture builds a second KV
        peak = torch.cuda.max_memory_allocated(device)  # cache and its pool, which later rounds do not need)
        job.peak_bytes = max(job.peak_bytes or 0, peak)
        job.peak_above_start_bytes = max(job.peak_above_start_bytes or 0, peak - start)
    if keep:
        for k, v in phases.items():
            job.times.setdefault(k, []).append(v)


def run_rounds(jobs: list[Job], device: torch.device, warmup: int, repeats: int,
               plan_repeats: Optional[Callable[[float, int], int]] = None,
               log: Callable[[str], None] = lambda s: None) -> int:
    """Run `warmup` untimed rounds, then `repeats` timed ones (every job once per round, in order).
    `plan_repeats(seconds of a round, rounds run so far)` may set the number of timed rounds: after the first
    round, and again after the first timed one (with warm-up rounds: the first round's time holds one-off costs
    such as CUDA-graph capture or compilation, the first timed round's is what each further round costs).
    Returns the number of timed rounds. `log` gets a line per round; the first says how long all rounds
    should take (from its own time), the others the time left (from the mean round)."""
    from radar_train.progress import format_duration

    r = 0
    total = warmup + repeats
    t_start = time.perf_counter()
    while r < total:
        t0 = time.perf_counter()
        for job in jobs:
            if job.skipped is None:
                _run_once(job, device, keep=r >= warmup)
        took = time.perf_counter() - t0
        if plan_repeats is not None and (r == 0 or r == warmup):
            repeats = max(1, int(plan_repeats(took, r + 1)))
            total = warmup + repeats
        r += 1
        line = f"  round {r}/{total} ({'warm-up' if r <= warmup else 'timed'}): {took:.2f} s"
        if r == 1 and total > 1:
            line += f"; {total} rounds of {len(jobs)} jobs: about {format_duration(took * total)} in all"
        elif r < total:
            line += f", ETA {format_duration((total - r) * (time.perf_counter() - t_start) / r)}"
        log(line)
    return repeats
