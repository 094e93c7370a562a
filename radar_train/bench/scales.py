"""Where a sampling call's time goes: per scale, per operator, and the decode's layout (the GPU suite's
`profile` section).

- `scale_times`: each scale's step (and the run's start) of one sampling call. On CUDA, CUDA events on the
  GPU's timeline, recorded between the scales without a synchronisation: a scale whose kernels wait for the
  host counts that wait as its time, so a host-bound scale shows. Elsewhere wall time. Medians over repeats,
  after one untimed call (which captures the graphs of a captured engine).
- `top_ops`: the operators of one eager sampling call by self time (device time on CUDA; torch.profiler).
- `scale_kernels`: per scale of one eager sampling call (or per scale a method changes), the device kernels
  (count and summed time) of the transformer step (`VAR.step`) and of the rest of the scale (embedding, head,
  guidance, token draw, f_hat update): under a captured engine a scale's time past its kernels' busy time is the
  per-kernel floor, so this says whether the small scales' floor comes from the blocks' kernel count or from the
  sampler's tail, and whether a method's scales are bound by their kernels' count or by their work.
- `decode_layouts`: the VQ-VAE decode with the decoder's activations in NCHW and in channels-last,
  interleaved (`Decoder.channels_last`).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional, Sequence

import torch
from torch.autograd import DeviceType

__all__ = ["scale_times", "top_ops", "scale_kernels", "decode_layouts"]


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


def _kernels(event) -> list:
    """The device kernels launched inside a profiler range (its own and its descendants')."""
    out = list(getattr(event, "kernels", None) or [])
    for child in event.cpu_children:
        out += _kernels(child)
    return out


@torch.no_grad()
def scale_kernels(sampler, labels: torch.Tensor, seeds: Sequence[int], accel=None, from_scale: int = 0) -> list[dict]:
    """[{"scale", "pn", "blocks_kernels", "blocks_kernel_ms", "rest_kernels", "rest_kernel_ms", "cpu_ms"}] for
    each scale from `from_scale` on (that runs: a method may skip the last ones) of one call of `sampler` (after an
    untimed one; run it with the eager engine: a captured graph's replay is one launch). Kernel times are the
    kernels' own durations, summed (no gaps); `cpu_ms` the scale's host time. On a device without kernels (the
    CPU) the counts are 0."""
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = sampler.device.type == "cuda"
    var = sampler.var
    step = var.step

    def labelled_step(*args, **kwargs):
        with record_function("radar::blocks"):
            return step(*args, **kwargs)

    var.step = labelled_step  # (an instance attribute over the method, removed below)
    try:
        sampler.sample(labels, seeds=seeds, accel=accel)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            state = sampler.start(labels, seeds=seeds, accel=accel)
            ran = set()  # (a scale the method skips, and those after it, have nothing to show)
            for si in range(len(sampler.patch_nums)):
                with record_function(f"radar::scale{si}"):
                    sampler.advance(state, until=si + 1)
                if state.si > si:
                    ran.add(si)
            sampler.output(state)
            if cuda:
                torch.cuda.synchronize()
    finally:
        del var.step
    rows = []
    for e in prof.events():
        if not e.name.startswith("radar::scale") or e.device_type != DeviceType.CPU:
            continue
        si = int(e.name[len("radar::scale"):])
        if si < from_scale or si not in ran:
            continue
        every = _kernels(e)
        blocks = [k for b in e.cpu_children if b.name == "radar::blocks" for k in _kernels(b)]
        ms = lambda ks: sum(k.duration for k in ks) / 1e3  # noqa: E731 - (µs -> ms)
        rows.append({"scale": si, "pn": sampler.patch_nums[si], "blocks_kernels": len(blocks),
                     "blocks_kernel_ms": ms(blocks), "rest_kernels": len(every) - len(blocks),
                     "rest_kernel_ms": ms(every) - ms(blocks), "cpu_ms": e.cpu_time_total / 1e3})
    return sorted(rows, key=lambda r: r["scale"])


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
