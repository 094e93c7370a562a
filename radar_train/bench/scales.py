"""Where a sampling call's time goes: per scale, per operator, and the decode's layout (the GPU suite's
`profile` section).

- `scale_times`: each scale's step (and the run's start) of one sampling call. On CUDA, CUDA events on the
  GPU's timeline, recorded between the scales without a synchronisation: a scale whose kernels wait for the
  host counts that wait as its time, so a host-bound scale shows. Elsewhere wall time. Medians over repeats,
  after one untimed call (which captures the graphs of a captured engine).
- `top_ops`: the operators of one eager sampling call by self time (device time on CUDA; torch.profiler).
- `decode_layouts`: the VQ-VAE decode with the decoder's activations in NCHW and in channels-last,
  interleaved (`Decoder.channels_last`).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional, Sequence

import torch
from torch.autograd import DeviceType

__all__ = ["scale_times", "top_ops", "decode_layouts"]


def _timeline(device: torch.device) -> tuple[Callable[[], object], Callable[[list], list[float]]]:
    """(mark, spans): `mark()` records a point, `spans(points)` the milliseconds between consecutive points
    (synchronising once, at the end)."""
    if device.type == "cuda":
        def mark():
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e

        def spans(points: list) -> list[float]:
            points[-1].synchronize()
            return [a.elapsed_time(b) for a, b in zip(points, points[1:])]
        return mark, spans
    return time.perf_counter, lambda points: [(b - a) * 1e3 for a, b in zip(points, points[1:])]


@torch.no_grad()
def scale_times(sampler, labels: torch.Tensor, seeds: Sequence[int], accel=None, repeats: int = 3) -> dict:
    """{"start_ms", "scale_ms": [one per scale; None for a scale the method skips], "total_ms"}: medians over
    `repeats` calls of `sampler` (after an untimed one)."""
    K = len(sampler.patch_nums)
    mark, spans = _timeline(sampler.device)
    runs = []
    for r in range(repeats + 1):
        points = [mark()]
        state = sampler.start(labels, seeds=seeds, accel=accel)
        points.append(mark())
        ran = 0
        for si in range(K):
            sampler.advance(state, until=si + 1)
            if state.si > si:  # (a method that skips the rest stops the run: its scales have no time)
                points.append(mark())
                ran += 1
        sampler.output(state)
        del state  # (a captured engine's next run then reuses this run's workspace instead of capturing another)
        if r:
            runs.append(spans(points))
    med = [statistics.median(run[i] for run in runs) for i in range(1 + ran)]
    scale_ms = med[1:] + [None] * (K - ran)
    return {"start_ms": med[0], "scale_ms": scale_ms, "total_ms": sum(med)}  # (the sum of the medians)


@torch.no_grad()
def top_ops(sampler, labels: torch.Tensor, seeds: Sequence[int], accel=None, limit: int = 12) -> list[dict]:
    """The `limit` operators with the most self time in one call of `sampler` (after an untimed one):
    [{"op", "ms", "calls"}], the device's time on CUDA, else the CPU's."""
    from torch.profiler import ProfilerActivity, profile

    cuda = sampler.device.type == "cuda"
    sampler.sample(labels, seeds=seeds, accel=accel)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        sampler.sample(labels, seeds=seeds, accel=accel)
        if cuda:
            torch.cuda.synchronize()

    def self_us(e) -> float:
        if not cuda:
            return e.self_cpu_time_total
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)

    # the operators only: on CUDA the averages also list each kernel (device events) with the same device time
    # as the operator that launched it, which would count it twice
    ops = [e for e in prof.key_averages() if e.device_type == DeviceType.CPU and self_us(e) > 0]
    events = sorted(ops, key=self_us, reverse=True)
    return [{"op": e.key, "ms": self_us(e) / 1e3, "calls": e.count} for e in events[:limit]]


@torch.no_grad()
def decode_layouts(vqvae, f_hat: torch.Tensor, autocast: Optional[torch.dtype], repeats: int = 3) -> list[dict]:
    """images/s of `vqvae.fhat_to_img(f_hat)` with the decoder's activations in NCHW and in channels-last
    (interleaved; medians of `repeats` after one untimed round), the decoder's setting restored after."""
    dev = f_hat.device
    mark, spans = _timeline(dev)
    decoder = vqvae.decoder
    before = decoder.channels_last
    layouts = {"nchw": False, "channels_last": True}
    times: dict[str, list[float]] = {name: [] for name in layouts}
    try:
        for r in range(repeats + 1):
            for name, value in layouts.items():
                decoder.channels_last = value
                points = [mark()]
                with torch.autocast(dev.type, dtype=autocast, enabled=autocast is not None):
                    vqvae.fhat_to_img(f_hat)
                points.append(mark())
                if r:
                    times[name] += spans(points)
    finally:
        decoder.channels_last = before
    B = f_hat.shape[0]
    return [{"layout": name, "images_per_s": B / (statistics.median(ms) / 1e3), "ms": statistics.median(ms)}
            for name, ms in times.items()]
