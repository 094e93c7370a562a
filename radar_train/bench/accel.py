"""`radar-bench accel`: sampling time per image of vanilla, FastVAR and StageVAR side by side, and the
cost of a forked HQ/LQ pair vs a vanilla plus an accelerated run done separately.

Timed: the transformer + quantizer loop (what the methods change). The VQ-VAE decode is the same for
every method and has its own row. Random weights of a real-size preset (no checkpoint needed): the
speed of these kernels does not depend on the weight values.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from radar_train.accel import AccelMethod, build_accel
from radar_train.config import AccelArgs, FastVARArgs, SamplingConfig, StageVARArgs
from radar_train.models import LatentDecoder, build_var, get_preset
from radar_train.models.init import init_random_
from radar_train.models.quantizer import MultiScaleQuantizer
from radar_train.sampling import NextScaleSampler, generate_pairs


@dataclass
class BenchSetup:
    preset: str = "var-d16"
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    warmup: int = 1
    repeats: int = 3
    seed: int = 0


def method_from_spec(spec: str, patch_nums: Sequence[int], depth: int) -> AccelMethod:
    """'none', 'fastvar', 'fastvar:aggressive', 'stagevar:paper', 'sca:window+aggressive', ..."""
    name, _, preset = spec.partition(":")
    args = AccelArgs(method=name)
    if name == "fastvar":
        args.fastvar = FastVARArgs(preset=preset or "default")
    elif name == "stagevar":
        args.stagevar = StageVARArgs(preset=preset or "default")
    elif name == "sca":
        from radar_train.accel.sca import args_from_spec

        args.sca = args_from_spec(preset)  # e.g. sca:window+compute_budget=0.5 (random weights: no calibration)
    return build_accel(args, patch_nums, depth)


def resolve_device(device: str, dtype: str) -> tuple[torch.device, Optional[torch.dtype]]:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device)
    if dtype == "auto":
        return dev, (torch.bfloat16 if dev.type == "cuda" else None)
    return dev, {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]


def timed(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of fn() in seconds (CUDA-synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build_random_models(preset_name: str, device: torch.device, seed: int):
    preset = get_preset(preset_name)
    var = init_random_(build_var(preset.var), seed).to(device).eval().requires_grad_(False)
    vae_cfg = preset.vae.with_patch_nums(preset.var.patch_nums)
    q = MultiScaleQuantizer(vae_cfg.vocab_size, vae_cfg.z_channels, vae_cfg.patch_nums,
                            quant_resi=vae_cfg.quant_resi, share_quant_resi=vae_cfg.share_quant_resi)
    q = init_random_(q, seed + 1).to(device).eval().requires_grad_(False)
    return var, q, vae_cfg


@torch.no_grad()
def run_accel_benchmark(setup: BenchSetup, methods: Sequence[str] = ("none", "fastvar", "stagevar"),
                        sampling: SamplingConfig = SamplingConfig(), log: Callable[[str], None] = print) -> list[dict]:
    dev, amp = resolve_device(setup.device, setup.dtype)
    var, quant, vae_cfg = build_random_models(setup.preset, dev, setup.seed)
    if amp is not None:
        var.cast_body_(amp)
    sampler = NextScaleSampler(var, quant, sampling, autocast_dtype=amp)
    B = setup.batch_size
    labels = torch.arange(B, device=dev) % var.num_classes
    seeds = list(range(setup.seed, setup.seed + B))
    accels = {m: method_from_spec(m, var.patch_nums, var.depth) for m in methods}
    log(f"accel benchmark: {setup.preset} (random weights), batch {B}, device {dev}, "
        f"{'fp32' if amp is None else str(amp).replace('torch.', '') + ' autocast'}, median of {setup.repeats}")
    t = {}
    for m, method in accels.items():
        t[m] = timed(lambda: sampler.sample(labels, seeds=seeds, accel=method), dev, setup.warmup, setup.repeats)
        log(f"  {m}: {t[m] / B * 1000:.1f} ms/image")
    base = t.get("none") or t[methods[0]]
    rows = [{"method": m, "seconds_per_image": t[m] / B, "speedup_vs_vanilla": base / t[m]} for m in methods]
    for m, method in accels.items():
        if m == "none":
            continue
        tp = timed(lambda: generate_pairs(sampler, labels, method, seeds=seeds), dev, setup.warmup, setup.repeats)
        rows.append({"method": f"pair(none+{m})", "seconds_per_image": tp / B, "speedup_vs_vanilla": None,
                     "pair_vs_separate": tp / (base + t[m])})
        log(f"  pair(none+{m}): {tp / B * 1000:.1f} ms/image, {tp / (base + t[m]):.3f} of the separate runs")
    dec = init_random_(LatentDecoder(vae_cfg), setup.seed + 2).to(dev).eval()
    f_hat = torch.randn(B, vae_cfg.z_channels, vae_cfg.patch_nums[-1], vae_cfg.patch_nums[-1], device=dev)
    ctx = torch.autocast(dev.type, dtype=amp) if amp is not None else torch.autocast(dev.type, enabled=False)

    def decode():
        with ctx:
            return dec.to_image(f_hat)

    td = timed(decode, dev, setup.warmup, setup.repeats)
    rows.append({"method": "decode (VQ-VAE, same for all)", "seconds_per_image": td / B, "speedup_vs_vanilla": None})
    for r in rows:
        r.update(preset=setup.preset, batch_size=B, device=str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
                 dtype="fp32" if amp is None else str(amp).replace("torch.", ""))
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'method':<32} {'ms/image':>10} {'speedup':>9} {'pair/separate':>14}"]
    for r in rows:
        sp = f"{r['speedup_vs_vanilla']:.2f}x" if r.get("speedup_vs_vanilla") else "-"
        pr = f"{r['pair_vs_separate']:.3f}" if r.get("pair_vs_separate") is not None else "-"
        lines.append(f"{r['method']:<32} {r['seconds_per_image'] * 1000:>10.2f} {sp:>9} {pr:>14}")
    return "\n".join(lines)
