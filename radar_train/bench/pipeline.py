"""`radar-bench pipeline`: what a PAA adapter costs at inference, and end-to-end images/s per method.

- decode time of the base decoder, the decoder with the adapter merged (target ≤ 1.02× the base),
  unmerged (peft wrappers, extra convolutions), and label-conditioned (merged LoRA + a per-class FiLM of
  every GroupNorm, radar_train/export/label_conditioning.py; embedding 64);
- images/s of the whole pipeline (sampling + decode) per acceleration method, with and without the
  merged adapter.
Random weights of a real-size preset with a rank-16 LoRA on every decoder conv (non-zero B, so the
merge changes the weights); speed does not depend on the values.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch

from radar_train.bench.accel import (BenchSetup, attention_context, build_random_models, method_from_spec,
                                     check_setup, timed)
from radar_train.config import SamplingConfig
from radar_train.models import LatentDecoder
from radar_train.models.init import init_random_
from radar_train.progress import Progress, log_mode
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
    t_dec = {name: timed(lambda d=d: d(f_hat), dev, setup.warmup, setup.repeats)
             for name, d in (("base", base), ("merged", merged), ("unmerged", unmerged))}
    t_dec["label-conditioned"] = timed(lambda: conditioned(f_hat, dec_labels), dev, setup.warmup, setup.repeats)
    rows = [{"method": f"decode: {name} decoder", "seconds_per_image": t / B, "vs_base_decoder": t / t_dec["base"]}
            for name, t in t_dec.items()]
    rows[-1]["vs_merged_decoder"] = t_dec["label-conditioned"] / t_dec["merged"]
    sampler = NextScaleSampler(var, quant, sampling, autocast_dtype=amp)
    labels = torch.arange(B, device=dev) % var.num_classes
    seeds = list(range(B))
    # a line after each timed run: runs done, time per run, ETA (the decoder timings above are short)
    runs = Progress(2 * len(methods), "radar-bench pipeline", "runs", rate_unit="run", interval_s=0, mode=log_mode(),
                    emit=log)
    for spec in methods:
        accel = method_from_spec(spec, var.patch_nums, var.depth)
        for with_adapter, dec in ((False, base), (True, merged)):
            def run(accel=accel, dec=dec):
                return dec(sampler.sample(labels, seeds=seeds, accel=accel).f_hat).clamp(-1, 1)

            t = timed(run, dev, setup.warmup, setup.repeats)
            rows.append({"method": f"{spec}{' + adapter (merged)' if with_adapter else ''}",
                         "seconds_per_image": t / B, "images_per_second": B / t})
            log(f"  {rows[-1]['method']}: {B / t:.2f} images/s")
            runs.update(1)
    runs.close()
    for r in rows:
        r.update(preset=setup.preset, batch_size=B, attention=setup.attention, device=str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev))
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'row':<40} {'ms/image':>10} {'images/s':>10} {'vs base decoder':>16} {'vs merged':>10}"]
    for r in rows:
        ips = f"{r['images_per_second']:.2f}" if "images_per_second" in r else "-"
        vs = f"{r['vs_base_decoder']:.3f}" if "vs_base_decoder" in r else "-"
        vm = f"{r['vs_merged_decoder']:.3f}" if "vs_merged_decoder" in r else "-"
        lines.append(f"{r['method']:<40} {r['seconds_per_image'] * 1000:>10.2f} {ips:>10} {vs:>16} {vm:>10}")
    return "\n".join(lines)
