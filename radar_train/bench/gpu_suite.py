"""The GPU suite: one prepared command, sized for 8 minutes of H100/H200 time.

    python -m radar_train.bench.gpu_suite --official_var .official_var [--output benchmarks/gpu/DATE-DEVICE.json]

Sections (run in this order; the result file is rewritten after each preset and section, so a killed run
keeps what it measured):
- accel: for VAR-d16 / d24 / d20 / d30 shapes (random weights; the targets' d16 and d24 first), batch 32, bf16
  autocast, the interleaved
  rows of `radar-bench accel` (radar_train.bench.accel): the official sampler and decode (with
  --official_var), our vanilla sampler for every engine `radar_train.sampling` offers (per-sample noise;
  with eager also the official noise), FastVAR default, StageVAR default and paper, their forked pairs, our
  decode; loop and end-to-end images/s, peak memory per row. Timed rounds per preset are planned from the
  measured first (warm-up) round and planned again from the first timed one (the first round also captures
  the CUDA graphs), so that the section fits its share of --budget_s (never fewer than --min_repeats for the
  targets' d16 and d24, --min_repeats_other for the others); a later preset whose fewest rounds (estimated,
  scaled by how the last preset's timed round compared with its estimate, its warm-up rounds by how much
  longer that preset's first round was) no longer fit is skipped and recorded so.
- train: decoder-LoRA training-step throughput and peak memory (radar_train.train.bench, VAR-d16 shapes,
  batch 16, bf16-mixed), and each activation-checkpointing mode's peak memory and step time with the whole
  batch and in micro-batches of 2 (the checkpointing rows) — only when its imports (lightning, peft, zarr) work
  and at least --train_reserve_s of the budget is left; otherwise recorded as skipped. With --train_compiled also the step with
  model.optim.compile (the compiled_vs_eager row; compiling does not fit the default budget).
- profile: where the time goes (radar_train.bench.scales), on d16 and d24 (those of --presets) at batch 32, bf16:
  per method (vanilla and --methods) each scale's time with the default engine and with compiled (CUDA events
  between the scales), the 30 operators with the most device time in one eager call, vanilla's kernels per scale
  (count and time, the blocks against the rest of the scale), and on the first preset the VQ-VAE decode with
  NCHW against channels-last activations; saved after each preset, a preset skipped (and recorded so) when less
  than its part of --profile_reserve_s is left.
- sca (last by default, so that a slow FlexAttention compile cannot crowd out the training figures; it
  gets what is left): SCA-Mask (RADAR's own method) on VAR-d16 and d24 shapes (those of --presets), batch
  32, bf16: vanilla SDPA against window-selected masks at the default and aggressive budgets (random weights: no
  calibration; the same block counts as calibrated masks) through FlexAttention, per engine, with the
  FLOP model's ideal speed-up, the KV buffers allocated and peak memory per row; in its own try so that a
  kernel failure costs only this section; rows under sections.sca. A preset is skipped (and recorded so) when
  less than its part of --sca_reserve_s is left; its timed rounds (1 to --min_repeats) are planned from its
  first round and its first timed one to fit its share of what is left, and the section is saved after each preset.
- paper: RADAR's timing setting (fp32, SDPA on the math kernel: the baseline its 1.6-1.9x were measured
  against, methods.md §4.1): vanilla against SCA-Mask at the default budgets on VAR-d20 shapes; not in the
  default list; name it in --sections (about 75 s of the budget) to run it.
- pipeline, cache: the adapter-cost and radar-cache benchmarks; not in the default list (they do not fit
  the 8 minutes next to the accel section); name them in --sections to run them.
Each section stops planning rounds early enough to leave the sections after it their reserves (--sca_reserve_s,
--train_reserve_s, --paper_reserve_s), so a slow accel section cannot crowd out the training figures.
The file has the shape {device, torch, cuda, commit, date, command, rows: [...], sections: {...}};
`python -m radar_train.bench.tables` makes the README tables from it.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import importlib.util
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

DEFAULT_PRESETS = ("var-d16", "var-d24", "var-d20", "var-d30")  # the targets' presets (d16, d24) first
TARGET_PRESETS = ("var-d16", "var-d24")  # the presets the targets name: --min_repeats; the others --min_repeats_other
DEFAULT_METHODS = ("fastvar:default", "stagevar:default", "stagevar:paper")
# Seconds at batch 32 for one interleaved round per engine (the official, two vanilla, three method, three pair
# and two decode runs) and for building the models and the first round's extras: used for the ETA printed up
# front and to share the budget between presets before their first round is measured. Measured on an H200
# (benchmarks/gpu/2026-12-04-nvidia-h200.suite.log: the timed round of eager + graphs / 1.7, and each preset's
# time less its rounds).
ROUND_S = {"var-d16": 2.0, "var-d20": 2.5, "var-d24": 3.2, "var-d30": 4.4}
BUILD_S = {"var-d16": 9.0, "var-d20": 9.0, "var-d24": 15.0, "var-d30": 25.0}
TRAIN_S = 100.0  # (33 s on the H200 before the checkpointing rows: about 45 s more for their six variants, estimated)
SCA_PRESETS = ("var-d16", "var-d24")
SCA_METHODS = ("sca:window+default", "sca:window+aggressive")
SCA_S = 90.0
PAPER_PRESET = "var-d20"  # the model of RADAR's main table (methods.md §4.1)
PAPER_METHODS = ("sca:window+default",)
PAPER_S = 75.0
PROFILE_S = 100.0  # (66 s on the H200: d16 27 s, d24 39 s, model builds included; since then each method's kernels
# and the compiled engine's scale times too)
OPS_PER_METHOD = 30  # operators recorded per method (the docs' table shows the first 8): the methods' own show too


def _estimate(preset: str, engines: int, batch: int) -> tuple[float, float]:
    scale = batch / 32
    return ROUND_S.get(preset, 2.0) * scale * (0.3 + 0.7 * engines), BUILD_S.get(preset, 5.0)


def _rounds_that_fit(round_s: float, rounds_done: int, warmup: int, share: float, started: float) -> int:
    """Timed rounds (those already run included) that fit what is left of `share` seconds since `started`,
    each taking `round_s`, after the warm-up rounds still to run."""
    warm_left, timed_done = max(0, warmup - rounds_done), max(0, rounds_done - warmup)
    left = share - (time.time() - started) - warm_left * round_s
    return timed_done + int(left // max(round_s, 1e-3))


def default_output(device_name: str, device_type: str) -> str:
    """benchmarks/gpu/<date>-<device>.json (benchmarks/cpu/... for a CPU run)."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")[:40].strip("-") or "device"
    folder = "cpu" if device_type == "cpu" else "gpu"
    return f"benchmarks/{folder}/{_dt.date.today().isoformat()}-{slug}.json"


def run_accel_section(args, results, log: Callable[[str], None], deadline: float) -> Optional[str]:
    import torch

    from radar_train.bench.accel import BenchSetup, available_engines, format_table, run_accel_benchmark

    engines = args.engines or list(available_engines(args.device))
    presets = list(args.presets)
    skipped: dict[str, str] = {}
    failed: list[str] = []
    # from the last preset measured: its timed round's seconds / the estimate, and its first round's / its timed
    # round's (the first round captures CUDA graphs: scaling later presets' every round by it would skip them)
    speed, capture = [1.0], [1.0]

    def estimate(p: str) -> tuple[float, float]:
        r, b = _estimate(p, len(engines), args.batch_size)
        return r * speed[0], b

    for i, preset in enumerate(presets):
        started = time.time()
        left = deadline - started
        weights = [sum(estimate(p)) for p in presets[i:]]
        share = left * weights[0] / sum(weights)
        round_est, build_est = estimate(preset)
        fewest = args.min_repeats if preset in TARGET_PRESETS else args.min_repeats_other
        least = build_est + (args.warmup * capture[0] + fewest) * round_est
        # it would eat the later sections' reserves: recorded as skipped (never the targets' presets: they get their
        # fewest rounds, budget or not; the first round, capture included, can make the estimates pessimistic)
        if i > 0 and left < least and preset not in TARGET_PRESETS:
            skipped[preset] = f"{left:.0f} s of the budget left (< {least:.0f} s estimated for its fewest rounds)"
            log(f"== accel {preset}: skipped ({skipped[preset]})")
            results.set("skipped", {**results.doc.get("skipped", {}), f"accel {preset}": skipped[preset]})
            continue

        first: list[float] = []

        def plan(round_s: float, rounds_done: int = 1, started=started, share=share, preset=preset,
                 fewest=fewest, first=first) -> int:
            steady = rounds_done > args.warmup  # a timed round: no one-off costs in it
            if rounds_done == 1:
                first.append(round_s)
            speed[0] = round_s / _estimate(preset, len(engines), args.batch_size)[0]  # for the later presets
            capture[0] = first[0] / round_s if steady else 1.0
            fit = _rounds_that_fit(round_s, rounds_done, args.warmup, share, started)
            n = max(fewest, min(args.repeats, fit))
            log(f"  {preset}: {'timed' if steady else 'first'} round {round_s:.1f} s; {n} timed rounds fit its "
                f"share ({share:.0f} s of the budget)")
            return n

        log(f"== accel {preset} (batch {args.batch_size}): share {share:.0f} s, "
            f"estimated round {round_est:.1f} s")
        try:
            rows = run_accel_benchmark(
                BenchSetup(preset=preset, batch_size=args.batch_size, device=args.device, warmup=args.warmup,
                           repeats=args.repeats, seed=0),
                ["none", *args.methods], official_var=args.official_var, engines=engines, plan_repeats=plan,
                log=log)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: record it and go on with the next preset
            traceback.print_exc()
            failures = dict(results.doc.get("failures", {}))
            failures[f"accel {preset}"] = f"{type(e).__name__}: {e}"
            results.set("failures", failures)
            failed.append(preset)
            rows = []
        results.add_rows(rows)
        if rows:
            log(format_table(rows))
        log(f"== accel {preset}: {time.time() - started:.0f} s")
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    status = [f"failed for {', '.join(failed)}"] * bool(failed) + [f"skipped {', '.join(skipped)}"] * bool(skipped)
    return "; ".join(status) or None


def run_sca_section(args, results, log, deadline: float) -> Optional[str]:
    import torch

    from radar_train.bench.accel import BenchSetup, format_table, run_accel_benchmark

    presets = [p for p in args.presets if p in SCA_PRESETS] or list(args.presets[:1])
    engines = args.engines or None
    rows, failures, skipped = [], {}, {}
    per_preset = args.sca_reserve_s / len(presets)

    def save() -> None:  # after each preset: a run killed in a later one keeps these rows
        _section(results, "sca", {"rows": rows, **({"failures": failures} if failures else {}),
                                  **({"skipped": skipped} if skipped else {})})

    for i, preset in enumerate(presets):
        started = time.time()
        left = deadline - started
        if left < per_preset:  # the later sections keep their reserves; this preset is recorded as skipped
            skipped[preset] = f"{left:.0f} s of the budget left (< {per_preset:.0f} s)"
            log(f"== sca {preset}: skipped ({skipped[preset]})")
            save()
            continue
        share = left / (len(presets) - i)

        def plan(round_s: float, rounds_done: int = 1, started=started, share=share) -> int:
            fit = _rounds_that_fit(round_s, rounds_done, args.warmup, share, started)
            n = max(1, min(args.min_repeats, fit))  # (the first round compiles the FlexAttention kernels)
            log(f"  sca {preset}: {'timed' if rounds_done > args.warmup else 'first'} round {round_s:.1f} s; "
                f"{n} timed rounds fit its share ({share:.0f} s)")
            return n

        try:
            rows += run_accel_benchmark(
                BenchSetup(preset=preset, batch_size=args.batch_size, device=args.device, warmup=args.warmup,
                           repeats=args.min_repeats, seed=0),
                ["none", *SCA_METHODS], engines=engines, pairs=False, plan_repeats=plan, log=log)
        except Exception as e:  # noqa: BLE001 - e.g. a FlexAttention compile failure: record it, go on
            traceback.print_exc()
            failures[preset] = f"{type(e).__name__}: {e}"
        save()
        gc.collect()  # (samplers and their engines hold each other: their KV sets and graph pools go here)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if rows:
        log(format_table(rows))
    notes = []
    if failures:
        notes.append(f"failed for {', '.join(failures)}")
    if skipped:
        notes.append(f"skipped {', '.join(skipped)}")
    return "; ".join(notes) or None


def run_paper_section(args, results, log, deadline: float) -> Optional[str]:
    """RADAR's timing setting (methods.md §4.1: fp32, no flash attention): our vanilla with every SDPA call on
    the math kernel against SCA-Mask at its default budgets (window selection; FlexAttention on CUDA), on the
    main table's model (VAR-d20 when --presets has it, else the first preset), eager, --min_repeats timed
    rounds; rows under sections.paper. The accel and sca sections time the same methods against a bf16 flash
    baseline. Skipped when less than --paper_reserve_s of the budget is left."""
    import torch

    from radar_train.bench.accel import BenchSetup, format_table, run_accel_benchmark

    left = deadline - time.time()
    if left < args.paper_reserve_s:
        why = f"{left:.0f} s of the budget left (< {args.paper_reserve_s:.0f} s)"
        _section(results, "paper", {"skipped": why})
        return f"skipped ({why})"
    preset = PAPER_PRESET if PAPER_PRESET in args.presets else args.presets[0]
    rows = run_accel_benchmark(
        BenchSetup(preset=preset, batch_size=args.batch_size, device=args.device, dtype="fp32", attention="math",
                   warmup=args.warmup, repeats=args.min_repeats, seed=0),
        ["none", *PAPER_METHODS], engines=["eager"], pairs=False, log=log)
    log(format_table(rows))
    _section(results, "paper", {"rows": rows, "setting": "fp32, SDPA on the math kernel (RADAR's timing baseline)",
                                "matmul_tf32": torch.backends.cuda.matmul.allow_tf32})
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_profile_section(args, results, log, deadline: float) -> Optional[str]:
    """Where the time goes (radar_train.bench.scales), on the targets' presets of --presets (else the first), at
    --batch_size: per method (vanilla and --methods) each scale's time with the default engine (graphs on CUDA)
    and on CUDA with compiled, the OPS_PER_METHOD operators with the most device time in one eager call, and each
    scale's kernels, count and time, the blocks against the rest of the scale (scales.scale_kernels: vanilla's
    every scale, a method's those it changes; first_modified_scale None, a method that changes none: every scale);
    on the first preset also the decode with
    NCHW against channels-last activations. Rows under sections.profile, saved after each preset; a preset is
    skipped (and recorded so) when less than its part of --profile_reserve_s is left."""
    import torch

    from radar_train.bench.accel import method_from_spec, resolve_device, spec_name
    from radar_train.bench.scales import decode_layouts, scale_kernels, scale_times, top_ops
    from radar_train.models import build_var, build_vqvae, get_preset
    from radar_train.models.init import init_random_
    from radar_train.sampling import NextScaleSampler

    dev, amp = resolve_device(args.device, "auto")
    presets = [p for p in args.presets if p in TARGET_PRESETS] or list(args.presets[:1])
    names = list(dict.fromkeys(["vanilla", *(spec_name(m) for m in args.methods)]))
    out: dict = {"scales": [], "ops": [], "decode": [], "batch_size": args.batch_size}
    per_preset = args.profile_reserve_s / len(presets)
    B = args.batch_size
    for preset in presets:
        left = deadline - time.time()
        if left < per_preset:
            out.setdefault("skipped", {})[preset] = f"{left:.0f} s of the budget left (< {per_preset:.0f} s)"
            log(f"== profile {preset}: skipped ({out['skipped'][preset]})")
            _section(results, "profile", out)
            continue
        try:  # (a failure costs this preset's remaining rows only; what it measured is saved)
            cfg = get_preset(preset)
            var = init_random_(build_var(cfg.var), 0).eval().requires_grad_(False).to(dev)
            if amp is not None:
                var.cast_body_(amp)
            vae_cfg = cfg.vae.with_patch_nums(cfg.var.patch_nums)
            vqvae = init_random_(build_vqvae(vae_cfg), 1).eval().requires_grad_(False).to(dev)
            default = NextScaleSampler(var, vqvae.quantize, autocast_dtype=amp)
            eager = NextScaleSampler(var, vqvae.quantize, autocast_dtype=amp, engine="eager")
            timed = [default] + ([NextScaleSampler(var, vqvae.quantize, autocast_dtype=amp, engine="compiled")]
                                 if dev.type == "cuda" else [])  # (compiled: where its fewer kernels tell)
            labels = torch.arange(B, device=dev) % var.num_classes
            seeds = list(range(B))
            for name in names:
                accel = method_from_spec("none" if name == "vanilla" else name, cfg.var.patch_nums, cfg.var.depth)
                for sampler in timed:
                    t = scale_times(sampler, labels, seeds, accel)
                    out["scales"].append({"preset": preset, "method": name, "engine": sampler.engine,
                                          "patch_nums": list(cfg.var.patch_nums), **t})
                    log(f"  profile {preset} {name}: {t['total_ms']:.1f} ms per call ({sampler.engine}); by scale "
                        + " ".join("-" if ms is None else f"{ms:.1f}" for ms in t["scale_ms"]))
                out["ops"] += [{"preset": preset, "method": name, "engine": "eager", **op}
                               for op in top_ops(eager, labels, seeds, accel, limit=OPS_PER_METHOD)]
                # each scale's kernels, blocks against the rest: vanilla's every scale (those the methods share),
                # a method's the scales it changes
                first = (accel.first_modified_scale(cfg.var.patch_nums) if accel is not None else None) or 0
                out.setdefault("kernels", []).extend(
                    {"preset": preset, "method": name, "engine": "eager", **row}
                    for row in scale_kernels(eager, labels, seeds, accel, from_scale=first))
                _section(results, "profile", out)
            if preset == presets[0]:
                P = vae_cfg.patch_nums[-1]
                f_hat = torch.randn(B, vae_cfg.z_channels, P, P, generator=torch.Generator().manual_seed(0)).to(dev)
                for row in decode_layouts(vqvae, f_hat, amp):
                    out["decode"].append({"preset": preset, "batch_size": B, **row})
                    log(f"  profile decode {row['layout']}: {row['images_per_s']:.1f} images/s")
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: record it, go on with the next preset
            traceback.print_exc()
            out.setdefault("failures", {})[preset] = f"{type(e).__name__}: {e}"
        finally:
            var = vqvae = default = eager = timed = None  # (samplers and engines hold each other: collected here)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        _section(results, "profile", out)
    notes = [f"{what} {', '.join(out[key])}" for key, what in (("failures", "failed for"), ("skipped", "skipped"))
             if out.get(key)]
    return "; ".join(notes) or None


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def run_train_section(args, results, log, deadline: float) -> Optional[str]:
    missing = _missing("lightning", "peft", "zarr")
    left = deadline - time.time()
    if missing or left < args.train_reserve_s:
        why = f"needs {', '.join(missing)}" if missing else f"{left:.0f} s of the budget left (< {args.train_reserve_s:.0f} s)"
        _section(results, "train", {"skipped": why})
        return f"skipped ({why})"
    from radar_train.train.bench import TrainBenchArgs, format_table, run_train_benchmark

    # VAR-d16 at batch 16 (RADAR's recipe); on a CPU (a smoke run of the suite) the first preset asked for
    preset, batch = ("var-d16", 16) if args.device != "cpu" else (args.presets[0], args.batch_size)
    # every checkpointing mode with the whole batch and in micro-batches of 2 (gradient accumulation: the same
    # update with the activations of 2 pairs), against the sampling of the batch
    micro = [batch, 2] if batch % 2 == 0 and batch > 2 else None
    rows = run_train_benchmark(TrainBenchArgs(preset=preset, batch_size=batch, device=args.device,
                                              checkpointing_rows=True, micro_batch_sizes=micro,
                                              compiled_row=args.train_compiled), log=log)
    log(format_table(rows))
    _section(results, "train", {"rows": rows})


def run_pipeline_section(args, results, log, deadline: float) -> None:
    from radar_train.bench.accel import BenchSetup
    from radar_train.bench.pipeline import format_table, run_pipeline_benchmark

    rows = run_pipeline_benchmark(BenchSetup(preset="var-d16", batch_size=args.batch_size, device=args.device,
                                             warmup=1, repeats=3), log=log)
    log(format_table(rows))
    _section(results, "pipeline", {"rows": rows})


def run_cache_section(args, results, log, deadline: float) -> None:
    from radar_train.cache.bench import format_rows, run_cache_benchmark

    overrides = ["--model.vae_checkpoint", "null", "--model.var_checkpoint", "null", "--model.init_seed", "0",
                 "--plan.images_per_class", "null", "--plan.num_samples", "3072", "--plan.shard_size", "1024",
                 "--storage.chunk_size", "64"]  # (the layout of the runs before the config's shards of 1000)
    rows = run_cache_benchmark("configs/cache/d16_fastvar.yaml", overrides, parts=("generation",))
    log(format_rows(rows))
    _section(results, "cache", {"rows": rows})


def _section(results, name: str, value: dict) -> None:
    sections = dict(results.doc.get("sections", {}))
    sections[name] = value
    results.set("sections", sections)


SECTIONS = {"accel": run_accel_section, "sca": run_sca_section, "train": run_train_section,
            "profile": run_profile_section, "paper": run_paper_section, "pipeline": run_pipeline_section,
            "cache": run_cache_section}


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m radar_train.bench.gpu_suite",
                                 description="Everything that only a GPU can show, in one command (see the module docstring).")
    ap.add_argument("--official_var", help="folder of a FoundationVision/VAR checkout (models/, dist.py), e.g. a "
                                           "git-ignored copy of the pinned snapshot; without it no official rows")
    ap.add_argument("--output", help="result JSON (default benchmarks/gpu/<date>-<device>.json)")
    ap.add_argument("--output_dir", help="write the default file name (<date>-<device>.json) into this folder instead")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    ap.add_argument("--sections", default="accel,train,profile,sca",
                    help="comma-separated: accel, sca, train, profile, paper, pipeline, cache")
    ap.add_argument("--presets", default=",".join(DEFAULT_PRESETS), help="comma-separated model presets")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated method specs (vanilla always runs)")
    ap.add_argument("--engines", default=None, help="comma-separated sampling engines (default: eager and, on "
                                                    "CUDA, graphs and compiled)")
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds per preset")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per preset at most")
    ap.add_argument("--min_repeats", type=int, default=3, help="timed rounds per preset at least, budget or not "
                                                               "(the targets' presets, d16 and d24; SCA-Mask's most)")
    ap.add_argument("--min_repeats_other", type=int, default=1,
                    help="timed rounds at least for the accel section's other presets (d20, d30)")
    ap.add_argument("--budget_s", type=float, default=450.0, help="seconds the whole suite should take")
    ap.add_argument("--sca_reserve_s", type=float, default=SCA_S,
                    help="budget the sca section needs (shared between its presets; a preset is skipped without its part)")
    ap.add_argument("--train_reserve_s", type=float, default=TRAIN_S, help="budget the train section needs to run")
    ap.add_argument("--paper_reserve_s", type=float, default=PAPER_S, help="budget the paper section needs to run")
    ap.add_argument("--profile_reserve_s", type=float, default=PROFILE_S,
                    help="budget the profile section needs (shared between its presets)")
    ap.add_argument("--train_compiled", action="store_true",
                    help="train section: also time the training step with model.optim.compile (compiled_vs_eager; "
                         "compiling takes a minute or two: raise --train_reserve_s with it)")
    ap.add_argument("--device", default="cuda", help="cuda (default), or cpu for a smoke test")
    ap.add_argument("--commit", default=None, help="commit to record, a hash (default: git rev-parse of this checkout)")
    ap.add_argument("--command", default=None,
                    help="the command line to record (default: this process's; run_gpu_suite.sh records its own)")
    a = ap.parse_args(argv)
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    a.sections, a.presets, a.methods = split(a.sections), split(a.presets), split(a.methods)
    a.engines = split(a.engines) if a.engines else None
    return a


def check_methods_and_engines(a, get_preset) -> None:
    """--batch_size, --engines and every --methods spec against every preset (ValueError naming the option), so
    that a typo is one error line before the run, not a run whose rows fail or are skipped one by one."""
    from radar_train.accel.spec import build_spec
    from radar_train.bench.accel import check_engines

    if a.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {a.batch_size}")
    check_engines(a.engines, "--engines")
    for p in a.presets:
        cfg = get_preset(p).var
        for m in a.methods:
            try:
                build_spec(m, cfg.patch_nums, cfg.depth)
            except (ValueError, FileNotFoundError) as e:
                raise ValueError(f"--methods {m} ({p}): {e}") from None


def main(argv: Optional[list[str]] = None) -> int:
    a = parse_args(argv)
    t_start = time.time()
    try:
        import torch

        from radar_train.bench.record import ResultFile, environment
        from radar_train.config import check_device
        from radar_train.models import get_preset
        from radar_train.outputs import check_output_file

        if a.output and a.output_dir:
            raise ValueError("--output and --output_dir: name one of them")
        if a.commit is not None and not re.fullmatch(r"[0-9a-f]{7,40}(\+dirty)?", a.commit):
            raise ValueError(f"--commit {a.commit}: not a commit hash (e.g. the output of git rev-parse --short HEAD)")
        problems = [f"--{k} must be >= 1, got {getattr(a, k)}" for k in ("repeats", "min_repeats", "min_repeats_other")
                    if getattr(a, k) < 1]
        problems += [f"--warmup must be >= 0, got {a.warmup}"] * (a.warmup < 0)
        problems += ["--presets names no preset"] * (not a.presets)
        if problems:
            raise ValueError("; ".join(problems))
        unknown = [s for s in a.sections if s not in SECTIONS]
        if unknown:
            raise ValueError(f"--sections: unknown {unknown}; known: {', '.join(SECTIONS)}")
        check_methods_and_engines(a, get_preset)
        if "cache" in a.sections and importlib.util.find_spec("jsonargparse") is None:
            raise ValueError("--sections cache: the cache section builds its run with radar-cache's parser, which "
                             "needs jsonargparse, not installed here (the GPU image: add its wheel to .whl/)")
        a.device = str(check_device(a.device))  # a name that is no device, or a CUDA device not here
        if a.official_var is not None:
            from radar_train.bench.official import load_official_code

            load_official_code(a.official_var)
        device = torch.device(a.device)
        head = environment(device, command=a.command, commit=a.commit)
        output = default_output(head["device"], device.type) if a.output is None else a.output
        if a.output_dir is not None:  # the default file name in another folder
            output = str(Path(a.output_dir) / Path(default_output(head["device"], device.type)).name)
        check_output_file(output, "--output_dir" if a.output_dir is not None else "--output", overwrite=a.overwrite)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from radar_train.bench.accel import available_engines

    log = lambda s: print(s, flush=True)  # noqa: E731
    engines = a.engines or list(available_engines(a.device))
    results = ResultFile(output, {**head, "suite": {"sections": a.sections, "presets": a.presets, "methods": a.methods,
                                                    "engines": engines, "batch_size": a.batch_size,
                                                    "budget_s": a.budget_s}})
    results.save()
    eta = sum(b + (a.warmup + a.repeats) * r for r, b in (_estimate(p, len(engines), a.batch_size) for p in a.presets)) \
        if "accel" in a.sections else 0.0
    eta += a.train_reserve_s if "train" in a.sections else 0.0
    eta += a.sca_reserve_s if "sca" in a.sections else 0.0
    eta += a.paper_reserve_s if "paper" in a.sections else 0.0
    eta += a.profile_reserve_s if "profile" in a.sections else 0.0
    log(f"gpu suite on {head['device']}: sections {', '.join(a.sections)}; presets {', '.join(a.presets)}; "
        f"engines {', '.join(engines)}; batch {a.batch_size}; writing {output}")
    log(f"ETA about {eta / 60:.1f} min at {a.repeats} timed rounds per preset (estimate for an H100/H200); "
        f"budget {a.budget_s / 60:.1f} min: rounds are cut (to no fewer than {a.min_repeats}) to fit it")
    deadline = t_start + a.budget_s
    reserves = {"sca": a.sca_reserve_s, "train": a.train_reserve_s, "paper": a.paper_reserve_s,
                "profile": a.profile_reserve_s}
    for i, name in enumerate(a.sections):
        t0 = time.time()
        # each section ends early enough to leave the later sections their reserves
        section_deadline = deadline - sum(reserves.get(later, 0.0) for later in a.sections[i + 1:])
        results.set("status", {**results.doc.get("status", {}), name: "running"})  # (a killed suite says where)
        try:
            status = SECTIONS[name](a, results, log, section_deadline) or f"ok ({time.time() - t0:.0f} s)"
        except Exception as e:  # noqa: BLE001 - report and go on with the next section
            traceback.print_exc()
            status = f"failed: {type(e).__name__}: {e}"
        results.set("status", {**results.doc.get("status", {}), name: status})
        log(f"== {name}: {status}")
    results.set("wall_s", round(time.time() - t_start, 1))
    log(f"done in {(time.time() - t_start) / 60:.1f} min; wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
