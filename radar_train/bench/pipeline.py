"""`radar-bench pipeline`: what a PAA adapter costs at inference, and end-to-end images/s per method.

- decode time of the base decoder, the decoder with the adapter merged (target ≤ 1.02× the base),
  unmerged (peft wrappers, extra convolutions), and label-conditioned (merged LoRA + a per-class FiLM of
  every GroupNorm, radar_train/export/label_conditioning.py; embedding 64);
- images/s of the whole pipeline (sampling + decode) per acceleration method, with and without the
  merged adapter.
Random weights of a real-size preset with a rank-16 LoRA on every decoder conv (non-zero B, so the
merge changes the weights); speed does not depend on the values. Each group (the decoders, then the pipeline runs)
is timed in interleaved rounds (bench/rounds.py), medians kept.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch

from radar_train.bench.accel import (BenchSetup, attention_context, build_random_models, method_from_spec,
                                     check_setup)
from radar_train.bench.rounds import Job, PhaseClock, run_rounds
from radar_train.config import SamplingConfig
from radar_train.models import LatentDecoder
from radar_train.models.init import init_random_
from radar_train.sampling import NextScaleSampler


def random_adapter(decoder: LatentDecoder, rank: int = 16, seed: int = 0):
    """(unmerged peft model, merged plain decoder) with random LoRA weights, from a copy of `decoder`."""
    from radar_train.train.lora import LoraArgs, inject_lora

    peft_model = inject_lora(copy.deepcopy(decoder), LoraArgs(rank=rank, alpha=float(rank)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g).mul_(0.02).to(p.device, p.dtype))
    merged = copy.deepcopy(peft_model).merge_and_unload()
    return peft_model.eval(), merged.eval()


def random_conditioned(merged: LatentDecoder, num_classes: int, embed_dim: int = 64, seed: int = 0):
    """A label-conditioned decoder: a copy of `merged` with a ClassFiLM of random (non-zero) projections."""
    from radar_train.export.label_conditioning import ClassFiLM, LabelConditionedDecoder, group_norms

    dec = copy.deepcopy(merged)
    g = torch.Generator().manual_seed(seed)
    film = ClassFiLM(group_norms(dec), num_classes, embed_dim)
    with torch.no_grad():
        for p in film.parameters():
            p.copy_(torch.randn(p.shape, generator=g).mul_(0.02))
    return LabelConditionedDecoder(dec, film.to(next(dec.parameters()).device)).eval()


@torch.no_grad()
def run_pipeline_benchmark(setup: BenchSetup, methods: Sequence[str] = ("none", "fastvar", "stagevar"),
                           sampling: SamplingConfig = SamplingConfig(), log: Callable[[str], None] = print) -> list[dict]:
    """The rows of `radar-bench pipeline`, every attention call on the kernels of --setup.attention."""
    with attention_context(setup.attention):
        return _run(setup, methods, sampling, log)


def _run(setup: BenchSetup, methods: Sequence[str], sampling: SamplingConfig, log: Callable[[str], None]) -> list[dict]:
    dev, amp = check_setup(setup)
    var, quant, vae_cfg = build_random_models(setup.preset, dev, setup.seed)
    if amp is not None:
        var.cast_body_(amp)
    base = init_random_(LatentDecoder(vae_cfg), setup.seed + 2).to(dev).eval()
    unmerged, merged = random_adapter(base)
    conditioned = random_conditioned(merged, var.num_classes, seed=setup.seed)
    B, P = setup.batch_size, vae_cfg.patch_nums[-1]
    f_hat = torch.randn(B, vae_cfg.z_channels, P, P, device=dev)
    log(f"pipeline benchmark: {setup.preset} (random weights), batch {B}, device {dev}")
    dec_labels = torch.arange(B, device=dev) % var.num_classes
    # every competitor once per round, rounds repeated (bench/rounds.py): a drift of the machine's speed is spread
    # over all of them (timed one after another, the base decoder, timed first on a busy machine, took 5x the
    # merged one, which is the same module)
    decoders = [_job(name, dev, lambda d=d: d(f_hat)) for name, d in (("base", base), ("merged", merged),
                                                                      ("unmerged", unmerged))]
    decoders.append(_job("label-conditioned", dev, lambda: conditioned(f_hat, dec_labels)))
    log(f"  the decoders ({len(decoders)}), interleaved:")
    run_rounds(decoders, dev, setup.warmup, setup.repeats, log=log)
    t_dec = {j.name: j.median("t") for j in decoders}
    rows = [{"method": f"decode: {name} decoder", "seconds_per_image": t / B, "vs_base_decoder": t / t_dec["base"]}
            for name, t in t_dec.items()]
    rows[-1]["vs_merged_decoder"] = t_dec["label-conditioned"] / t_dec["merged"]
    sampler = NextScaleSampler(var, quant, sampling, autocast_dtype=amp)
    labels = torch.arange(B, device=dev) % var.num_classes
    seeds = list(range(B))
    runs = []
    for spec in methods:
        accel = method_from_spec(spec, var.patch_nums, var.depth)
        for with_adapter, dec in ((False, base), (True, merged)):
            def run(accel=accel, dec=dec):
                return dec(sampler.sample(labels, seeds=seeds, accel=accel).f_hat).clamp(-1, 1)

            runs.append(_job(f"{spec}{' + adapter (merged)' if with_adapter else ''}", dev, run))
    log(f"  the pipeline runs ({len(runs)}), interleaved:")
    run_rounds(runs, dev, setup.warmup, setup.repeats, log=log)
    for j in runs:
        t = j.median("t")
        rows.append({"method": j.name, "seconds_per_image": t / B, "images_per_second": B / t})
        log(f"  {j.name}: {B / t:.2f} images/s")
    for r in rows:
        r.update(preset=setup.preset, batch_size=B, attention=setup.attention, device=str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev))
    return rows


def _job(name: str, device: torch.device, fn: Callable[[], object]) -> Job:
    """A competitor of the rounds: fn() timed whole (CUDA-synchronised), as phase "t"."""
    def run() -> dict[str, float]:
        clock = PhaseClock(device).start()
        fn()
        return clock.mark("t")

    return Job(name, run)


def format_table(rows: list[dict]) -> str:
    lines = [f"{'row':<40} {'ms/image':>10} {'images/s':>10} {'vs base decoder':>16} {'vs merged':>10}"]
    for r in rows:
        ips = f"{r['images_per_second']:.2f}" if "images_per_second" in r else "-"
        vs = f"{r['vs_base_decoder']:.3f}" if "vs_base_decoder" in r else "-"
        vm = f"{r['vs_merged_decoder']:.3f}" if "vs_merged_decoder" in r else "-"
        lines.append(f"{r['method']:<40} {r['seconds_per_image'] * 1000:>10.2f} {ips:>10} {vs:>16} {vm:>10}")
    return "\n".join(lines)
