"""Profile one sampling call: `python -m radar_train.bench.profile [preset] [batch] [method ...]`.

Prints the operators that take the most device (or CPU) time, for finding what dominates a method."""
from __future__ import annotations

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from radar_train.bench.accel import build_random_models, method_from_spec
from radar_train.config import SamplingConfig
from radar_train.sampling import NextScaleSampler


def parse(argv: list[str]) -> tuple[str, int, list[str], list]:
    """(preset, batch, method specs, their methods) from [preset] [batch] [method ...]; ValueError naming the
    argument at fault, before any model is built."""
    from radar_train.models import get_preset

    preset = argv[0] if argv else "var-d16"
    cfg = get_preset(preset).var
    try:
        batch = int(argv[1]) if len(argv) > 1 else 32
    except ValueError:
        raise ValueError(f"batch {argv[1]!r}: not a whole number") from None
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    methods = argv[2:] or ["none"]
    accels = []
    for spec in methods:
        try:
            accels.append(method_from_spec(spec, cfg.patch_nums, cfg.depth))
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"method {spec}: {e}") from None
    return preset, batch, methods, accels


def main(argv: list[str]) -> None:
    try:
        preset, batch, methods, accels = parse(argv)
    except ValueError as e:
        print(f"error: {e} (usage: python -m radar_train.bench.profile [preset] [batch] [method ...])", file=sys.stderr)
        sys.exit(2)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    var, quant, _ = build_random_models(preset, dev, 0)
    amp = torch.bfloat16 if dev.type == "cuda" else None
    if amp is not None:
        var.cast_body_(amp)
    sampler = NextScaleSampler(var, quant, SamplingConfig(), autocast_dtype=amp)
    labels = torch.arange(batch, device=dev) % var.num_classes
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    for spec, accel in zip(methods, accels):
        for _ in range(2):
            sampler.sample(labels, seeds=list(range(batch)), accel=accel)
        with profile(activities=acts) as prof:
            sampler.sample(labels, seeds=list(range(batch)), accel=accel)
            if dev.type == "cuda":
                torch.cuda.synchronize()
        print(f"===== {preset} batch {batch} method {spec}")
        print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=48))


if __name__ == "__main__":
    main(sys.argv[1:])
