"""`radar-bench accel`: images/s of vanilla, FastVAR, StageVAR, ... side by side, a forked HQ/LQ pair vs
the two runs done separately, the VQ-VAE decode, and (with `--official_var DIR`) the official
`VAR.autoregressive_infer_cfg` on the same device, weights, batch and sampler settings.

All competitors run interleaved (one of each per round; warm-up rounds first; medians of the timed
rounds; CUDA-synchronised). What each row times:
- `official`: the whole `autoregressive_infer_cfg` call (e2e, its decode included) and the call minus its
  decode (loop; the decode is timed by a wrapper around its VQVAE's `fhat_to_img`, set from outside).
- `vanilla` / a method spec (`fastvar:default`, ...): our `NextScaleSampler.sample` (loop: transformer +
  quantizer), and sample + decode to [0, 1] images (e2e), per engine and noise mode.
- `pair:<spec>`: `generate_pairs` (forked vanilla + method run, latents only, no decode); images/s counts
  both images of a pair.
- `decode:official` / `decode`: one `fhat_to_img` call on a batch of random f_hat.
Random weights (speed does not depend on the values); the official models get ours (strict loads). On
CUDA both sides run under bf16 autocast (ours with the transformer body cast to bf16, as our sampler does;
the official with its fp32 weights, as its demo does), decode included; on the CPU both run in fp32.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from radar_train.accel import AccelMethod
from radar_train.accel.spec import build_spec
from radar_train.config import SamplingConfig
from radar_train.models import build_var, build_vqvae, get_preset
from radar_train.models.init import init_random_
from radar_train.models.quantizer import MultiScaleQuantizer
from radar_train.sampling import NextScaleSampler, decode_images, generate_pairs


@dataclass
class BenchSetup:
    preset: str = "var-d16"
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; fp32, bf16, fp16 (or float32, bfloat16, float16)
    attention: str = "auto"  # auto: PyTorch picks the SDPA kernel; math: the math kernel (attention_context)
    warmup: int = 1
    repeats: int = 3
    seed: int = 0


def attention_context(name: str):
    """The SDPA kernels a benchmark runs with. `auto`: PyTorch's choice (flash / memory-efficient where they
    apply). `math`: every `scaled_dot_product_attention` call, ours and the official code's, on the math
    kernel (no flash): RADAR's timing baseline, fp32 without flash attention (methods.md §4.1), with
    --setup.dtype fp32. FlexAttention calls (SCA-Mask's kernel on CUDA) are not SDPA and keep their kernel."""
    if name == "auto":
        return contextlib.nullcontext()
    if name == "math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])
    raise ValueError(f"--setup.attention must be auto or math, got {name!r}")


def method_from_spec(spec: str, patch_nums: Sequence[int], depth: int) -> AccelMethod:
    """'none', 'fastvar', 'fastvar:aggressive', 'fastvar:budget=0.5', 'stagevar:paper', 'sca:window+aggressive', ...
    (`radar_train.accel.spec`; random weights: SCA runs without a mask file need selection window)."""
    return build_spec(spec, patch_nums, depth)


def resolve_device(device: str, dtype: str, prefix: str = "--setup") -> tuple[torch.device, Optional[torch.dtype]]:
    """(device, autocast dtype); ValueError naming `{prefix}.device` / `{prefix}.dtype` for a bad one. The dtype
    in any spelling radar-generate's --precision takes (fp32 or float32, bf16 or bfloat16, ...)."""
    from radar_train.config import check_device
    from radar_train.inference.pipeline import resolve_precision

    dev = check_device(device, f"{prefix}.device")
    return dev, resolve_precision(dev, dtype, f"{prefix}.dtype")


def check_setup(setup: "BenchSetup") -> tuple[torch.device, Optional[torch.dtype]]:
    """Every --setup option checked (one line naming it), before any work; returns resolve_device's pair."""
    from radar_train.config import check_positive, preset_problems
    from radar_train.seeding import seed_range_problems

    problems = preset_problems("--setup.preset", setup.preset)  # (the model's loader named no option)
    if problems:
        raise ValueError(problems[0])
    check_positive(**{"setup.batch_size": setup.batch_size, "setup.repeats": setup.repeats})
    check_positive(minimum=0, **{"setup.warmup": setup.warmup})
    # sample i's seed is seed + i, and the VQ-VAE's random weights take seed + 1 (the VAR's: seed)
    problems = seed_range_problems("--setup.seed", setup.seed, max(setup.batch_size, 2))
    if problems:
        raise ValueError(problems[0])
    attention_context(setup.attention)
    return resolve_device(setup.device, setup.dtype)


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


def spec_name(spec: str) -> str:
    """The row name of a method spec: 'none' -> 'vanilla', 'fastvar' -> 'fastvar:default', ..."""
    if spec in ("none", "vanilla"):
        return "vanilla"
    return f"{spec}:default" if ":" not in spec and spec in ("fastvar", "stagevar") else spec


def available_engines(device=None) -> tuple[str, ...]:
    """The sampling engines `radar_train.sampling` offers (`ENGINES`), else only 'eager'; for a `device`,
    those it times there by default (`engines_for`: compiled on CUDA only, where it compiles in seconds)."""
    import radar_train.sampling as sampling_module

    if device is not None and hasattr(sampling_module, "engines_for"):
        return tuple(sampling_module.engines_for(device))
    return tuple(getattr(sampling_module, "ENGINES", ("eager",)))


def check_engines(engines: Optional[Sequence[str]], option: str = "--engines") -> None:
    """ValueError (one line naming `option`) for an engine name the sampler does not offer, before any work."""
    offered = available_engines()
    for name in engines or ():
        if name not in offered:
            raise ValueError(f"{option}: unknown sampling engine {name!r} (one of {', '.join(offered)})")


def make_sampler(var, quantizer, sampling: SamplingConfig, amp: Optional[torch.dtype], engine: str) -> NextScaleSampler:
    """Our sampler for `engine`: passed as `NextScaleSampler(..., engine=)` or `SamplingConfig.engine`,
    whichever the sampler takes; 'eager' works without either."""
    if "engine" in inspect.signature(NextScaleSampler).parameters:
        return NextScaleSampler(var, quantizer, sampling, autocast_dtype=amp, engine=engine)
    if "engine" in {f.name for f in dataclasses.fields(SamplingConfig)}:
        return NextScaleSampler(var, quantizer, dataclasses.replace(sampling, engine=engine), autocast_dtype=amp)
    if engine != "eager":
        raise ValueError(f"engine {engine!r}: this sampler has no engine option")
    return NextScaleSampler(var, quantizer, sampling, autocast_dtype=amp)


def _timing_note(kind: str) -> str:
    return {
        "official": "autoregressive_infer_cfg: e2e = the whole call (decode included); loop = the call minus its "
                    "fhat_to_img (timed by a wrapper with CUDA syncs around it)",
        "sample": "NextScaleSampler.sample (loop: transformer + quantizer); e2e = sample + decode to [0, 1] images",
        "pair": "generate_pairs: forked vanilla + method run, latents only (no decode); images count both of a pair",
        "decode": "one fhat_to_img call on a batch of random f_hat",
    }[kind]


@torch.no_grad()
def run_accel_benchmark(setup: BenchSetup, methods: Sequence[str] = ("none", "fastvar", "stagevar"),
                        sampling: SamplingConfig = SamplingConfig(), log: Callable[[str], None] = print, *,
                        official_var: Optional[str] = None, official_config: Optional[str] = None,
                        engines: Optional[Sequence[str]] = None, pairs: bool = True,
                        plan_repeats: Optional[Callable[[float, int], int]] = None) -> list[dict]:
    """Rows (one per competitor) of the interleaved timing described in the module docstring.

    official_var: folder of a FoundationVision/VAR checkout (or the pinned snapshot): adds the official
        sampler and decode and our vanilla with the other noise mode as well, for each engine that runs it
        (graphs / compiled refuse the official noise: no such row for them).
    official_config: JSON with the official constructor arguments (`VQVAE_kwargs`, `VAR_kwargs`) to build
        both sides from (default: the preset; for `tiny`, the tiny_a fixture's configuration).
    engines: our sampling engines to time (default: every one `radar_train.sampling` offers; an engine a
        method cannot run with gets a row marked skipped).
    plan_repeats: called with a round's seconds and the rounds run so far, after the first round and the
        first timed one (radar_train.bench.rounds.run_rounds); returns the number of timed rounds.
    """
    from radar_train.bench.official import (OfficialRun, build_official, comparison_configs, load_official_code,
                                            official_kernels)
    from radar_train.bench.rounds import Job, PhaseClock, run_rounds

    dev, amp = check_setup(setup)  # a bad option: one line, before anything is built
    code = load_official_code(official_var) if official_var is not None else None
    if code is not None:
        if sampling.more_smooth:
            raise ValueError("sampling.more_smooth: the comparison with the official sampler times the FID protocol "
                             "(more_smooth=False)")
        vae_cfg, var_cfg, official_kw, source = comparison_configs(setup.preset, official_config)
    else:
        preset = get_preset(setup.preset)
        vae_cfg, var_cfg, source = preset.vae.with_patch_nums(preset.var.patch_nums), preset.var, f"preset {setup.preset}"
    # top_k >= V keeps every token: the same as no top-k, which the official code needs spelled as 0
    if sampling.top_k >= var_cfg.vocab_size:
        sampling = dataclasses.replace(sampling, top_k=0)
    specs = list(dict.fromkeys(spec_name(m) for m in methods))
    if "vanilla" not in specs:
        specs.insert(0, "vanilla")
    accels = {name: method_from_spec("none" if name == "vanilla" else name, var_cfg.patch_nums, var_cfg.depth)
              for name in specs}
    engines = tuple(engines) if engines else available_engines(dev)
    engine_samplers: dict[str, NextScaleSampler] = {}  # per engine, the sampler of the run's noise mode

    var = init_random_(build_var(var_cfg), setup.seed).eval().requires_grad_(False)
    vqvae = init_random_(build_vqvae(vae_cfg), setup.seed + 1).eval().requires_grad_(False)
    official = None
    if code is not None:
        official = build_official(code, official_kw, vqvae.state_dict(), var.state_dict(), dev)
    var, vqvae = var.to(dev), vqvae.to(dev)
    if amp is not None:
        var.cast_body_(amp)
    B = setup.batch_size
    labels = torch.arange(B, device=dev) % var.num_classes
    seeds = list(range(setup.seed, setup.seed + B))

    def noise_kw(noise: str) -> dict:  # the same noise for every run of the benchmark
        return dict(seeds=seeds) if noise == "per_sample" else dict(g_seed=setup.seed)
    P = vae_cfg.patch_nums[-1]
    f_hat = torch.randn(B, vae_cfg.z_channels, P, P, generator=torch.Generator().manual_seed(setup.seed)).to(dev)
    ctx = (lambda: torch.autocast(dev.type, dtype=amp)) if amp is not None else (lambda: torch.autocast(dev.type, enabled=False))
    dtype_name = "fp32" if amp is None else str(amp).replace("torch.", "")
    log(f"accel benchmark: {source} (random weights), batch {B}, device {dev}, "
        f"{'fp32' if amp is None else dtype_name + ' autocast'}"
        f"{', SDPA on the math kernel' if setup.attention == 'math' else ''}, {setup.warmup} warm-up + {setup.repeats} timed rounds "
        f"(interleaved, medians); cfg {sampling.cfg}, top_k {sampling.top_k}, top_p {sampling.top_p}")

    jobs: list[Job] = []
    meta: dict[str, dict] = {}

    def add(name: str, fn, kind: str, method: str, engine: str, noise: Optional[str], may_fail: bool = False, **extra):
        jobs.append(Job(name, fn, may_fail=may_fail))
        meta[name] = dict(kind=kind, method=method, engine=engine, noise=noise, **extra)

    clock = PhaseClock(dev)
    if official is not None:
        run_official = OfficialRun(official[1], amp, dev)
        add("official", lambda: run_official(labels, setup.seed, sampling.cfg, sampling.top_k, sampling.top_p)[1],
            "official", "official", "official", "official")
    noises = [sampling.noise] + (["official" if sampling.noise == "per_sample" else "per_sample"] if official else [])
    for engine in engines:
        samplers, problems = {}, {}
        for noise in noises:
            try:
                samplers[noise] = make_sampler(var, vqvae.quantize, dataclasses.replace(sampling, noise=noise), amp, engine)
            except (ValueError, NotImplementedError, TypeError) as e:
                if engine == "eager":
                    raise
                if noise != noises[0]:  # the other noise is a comparison row: left out where the engine refuses it
                    continue
                problems[noise] = f"{type(e).__name__}: {e}"
        if sampling.noise in samplers:
            engine_samplers[engine] = samplers[sampling.noise]
        engine_noises = [n for n in noises if n in samplers or n in problems]
        may_fail = engine != "eager"
        for name in specs:
            for noise in engine_noises if name == "vanilla" else engine_noises[:1]:
                key = f"{name}|{engine}|{noise}"
                if noise in problems:
                    add(key, lambda: {}, "sample", name, engine, noise)
                    jobs[-1].skipped = problems[noise]
                    continue

                def sample(s=samplers[noise], m=accels[name], noise=noise):
                    clock.start()
                    out = s.sample(labels, accel=m, **noise_kw(noise))
                    clock.mark("loop")
                    with ctx():
                        decode_images(vqvae, out.f_hat)
                    return clock.mark("e2e")

                add(key, sample, "sample", name, engine, noise, may_fail)
        if pairs and sampling.noise in samplers:
            for name in specs[1:]:
                def pair(s=samplers[sampling.noise], m=accels[name]):
                    clock.start()
                    generate_pairs(s, labels, m, **noise_kw(sampling.noise))
                    return clock.mark("loop")

                add(f"pair:{name}|{engine}", pair, "pair", f"pair:{name}", engine, sampling.noise, may_fail, of=name)

    def decoder(vae):
        def run():
            clock.start()
            with ctx():
                vae.fhat_to_img(f_hat)
            return clock.mark("loop")
        return run

    if official is not None:
        add("decode:official", decoder(official[0]), "decode", "decode:official", "official", None)
    add("decode", decoder(vqvae), "decode", "decode", "eager", None)

    with attention_context(setup.attention):
        repeats = run_rounds(jobs, dev, setup.warmup, setup.repeats, plan_repeats, log)
    device_name = str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev)
    by = {j.name: j for j in jobs}
    rows: dict[str, dict] = {}
    for j in jobs:
        m = meta[j.name]
        images = 2 * B if m["kind"] == "pair" else B
        loop, e2e = j.median("loop"), j.median("e2e")
        row = {"preset": setup.preset, "model": source, "method": m["method"], "engine": m["engine"],
               "noise": m["noise"], "batch_size": B,
               "images_per_s": images / loop if loop else None,
               "images_per_s_e2e": images / e2e if e2e else None,
               "seconds_per_image": loop / images if loop else None,
               "peak_memory_bytes": j.peak_bytes, "peak_memory_above_start_bytes": j.peak_above_start_bytes,
               "timed": _timing_note(m["kind"]), "device": device_name, "dtype": dtype_name,
               "attention": setup.attention,
               "sampling": {"cfg": sampling.cfg, "top_k": sampling.top_k, "top_p": sampling.top_p},
               "warmup": setup.warmup, "repeats": repeats,
               "loop_seconds_per_round": j.times.get("loop")}
        if j.skipped:
            row["skipped"] = j.skipped
        if m["kind"] == "official":
            row["official_kernels"] = official_kernels(official[1])
            row["decode_seconds"] = j.median("decode")
        rows[j.name] = row

    def get(name: str, key: str = "images_per_s") -> Optional[float]:
        r = rows.get(name)
        return None if r is None or r.get("skipped") else r[key]

    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a is not None and b else None

    compare = [(name, engine) for name in specs for engine in engine_samplers
               if engine != "eager" and "eager" in engine_samplers
               and not rows[f"{name}|{engine}|{sampling.noise}"].get("skipped")]
    with attention_context(setup.attention):
        agreements = engine_agreement(engine_samplers, accels, compare, labels, noise_kw(sampling.noise))
    for (name, engine), agreement in agreements.items():
        rows[f"{name}|{engine}|{sampling.noise}"].update(agreement)

    for name, r in rows.items():
        m = meta[name]
        if r.get("skipped"):
            continue
        if m["kind"] in ("sample", "pair"):
            r.update(method_accounting(accels.get(m.get("of", m["method"])), var_cfg))
        if m["kind"] == "sample":
            base = f"vanilla|{r['engine']}|{r['noise']}"
            r["speedup_vs_vanilla"] = ratio(r["images_per_s"], get(base))
            t_v, t_m = by[base].times.get("loop") if base in by else None, by[name].times.get("loop")
            if t_v and t_m:  # the same round's vanilla over this method: the spread the median hides
                r["speedup_vs_vanilla_per_round"] = [round(a / b, 4) for a, b in zip(t_v, t_m)]
            r["speedup_vs_vanilla_e2e"] = ratio(r["images_per_s_e2e"], get(base, "images_per_s_e2e"))
            if official is not None:
                r["vs_official"] = ratio(r["images_per_s"], get("official"))
                r["vs_official_e2e"] = ratio(r["images_per_s_e2e"], get("official", "images_per_s_e2e"))
        elif m["kind"] == "pair":
            t_v = by[f"vanilla|{r['engine']}|{r['noise']}"].median("loop")
            t_m = by[f"{m['of']}|{r['engine']}|{r['noise']}"].median("loop")
            r["pair_vs_separate"] = ratio(by[name].median("loop"), (t_v + t_m) if t_v and t_m else None)
        elif name == "decode" and official is not None:
            r["vs_official"] = ratio(r["images_per_s"], get("decode:official"))
    return list(rows.values())


def engine_agreement(samplers: dict[str, NextScaleSampler], accels: dict[str, AccelMethod],
                     compare: Sequence[tuple[str, str]], labels: torch.Tensor, kw: dict) -> dict[tuple[str, str], dict]:
    """How closely each (method, engine) of `compare` reproduces the eager engine at the benchmark's size and
    precision: one call of each with the same labels and noise (`kw`: seeds or g_seed), untimed. Returns
    {(method, engine): {"tokens_equal_vs_eager": share of equal token indices over all scales,
    "f_hat_max_diff_vs_eager": the largest |f_hat| difference}}; a call that fails gives
    {"agreement_failed": the error} instead."""
    out: dict[tuple[str, str], dict] = {}
    reference: dict[str, object] = {}
    for name, engine in compare:
        try:
            if name not in reference:
                reference[name] = samplers["eager"].sample(labels, accel=accels[name], **kw)
            want, got = reference[name], samplers[engine].sample(labels, accel=accels[name], **kw)
            same = torch.cat([(a == b).flatten() for a, b in zip(got.indices, want.indices)]).float().mean()
            diff = (got.f_hat.float() - want.f_hat.float()).abs().max()
            out[(name, engine)] = {"tokens_equal_vs_eager": round(same.item(), 6),
                                   "f_hat_max_diff_vs_eager": float(f"{diff.item():.4g}")}
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: the timed rows stand, the comparison says why
            out[(name, engine)] = {"agreement_failed": f"{type(e).__name__}: {e}".splitlines()[0]}
    return out


def method_accounting(method: Optional[AccelMethod], var_cfg) -> dict:
    """For an SCA-Mask method: its FLOP model (`ideal_speedup`: vanilla attention share, attention pairs
    kept, ideal speed-up at equal kernel efficiency) and the share of the KV tokens it holds at the last
    scale and the KV buffers it allocates (`SCAMask.kv_capacity`), both relative to vanilla; for FastVAR and
    StageVAR their FLOP models (attention share, ideal speed-up); {} for other methods."""
    from radar_train.accel import fastvar, stagevar
    from radar_train.accel.sca import SCAMask, ideal_speedup

    for module, kind in ((fastvar, fastvar.FastVAR), (stagevar, stagevar.StageVAR)):
        if isinstance(method, kind):
            return {k: round(v, 5) for k, v in module.ideal_speedup(method, var_cfg).items()}
    if not isinstance(method, SCAMask):
        return {}
    masks = method.masks()
    out = {k: round(v, 5) for k, v in ideal_speedup(method, var_cfg).items()}
    out["kv_tokens_kept_at_last_scale"] = round(masks.kv_share(masks.active[-1]), 5)
    capacity = method.kv_capacity(var_cfg.patch_nums, var_cfg.depth)
    out["kv_allocated_ratio"] = round(sum(capacity) / (var_cfg.depth * var_cfg.num_tokens), 5)
    return out


def _fmt(v, spec: str, suffix: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def format_table(rows: list[dict]) -> str:
    lines = [f"{'method':<28} {'engine':<9} {'noise':<10} {'images/s':>9} {'e2e':>9} {'vs official':>12} "
             f"{'(e2e)':>7} {'vs vanilla':>11} {'pair/sep':>9} {'peak MiB':>9}"]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"{r['method']:<28} {r['engine']:<9} {str(r['noise'] or '-'):<10} skipped: {r['skipped']}")
            continue
        peak = r.get("peak_memory_bytes")
        lines.append(
            f"{r['method']:<28} {r['engine']:<9} {str(r['noise'] or '-'):<10} {_fmt(r['images_per_s'], '.2f'):>9} "
            f"{_fmt(r.get('images_per_s_e2e'), '.2f'):>9} {_fmt(r.get('vs_official'), '.2f', 'x'):>12} "
            f"{_fmt(r.get('vs_official_e2e'), '.2f', 'x'):>7} {_fmt(r.get('speedup_vs_vanilla'), '.2f', 'x'):>11} "
            f"{_fmt(r.get('pair_vs_separate'), '.3f'):>9} {_fmt(None if peak is None else peak / 2**20, '.0f'):>9}")
    masked = [r for r in rows if r.get("ideal_speedup") is not None and not r.get("skipped")]
    if masked:
        lines.append(f"\n{'FLOP model':<28} {'engine':<9} {'attn share':>10} {'pairs kept':>10} "
                     f"{'ideal':>7} {'measured':>9} {'KV kept':>8} {'KV alloc':>9}")
        for r in masked:
            lines.append(f"{r['method']:<28} {r['engine']:<9} {r['attention_share']:>10.3f} "
                         f"{_fmt(r.get('attention_pairs_kept'), '.3f'):>10} {r['ideal_speedup']:>6.3f}x "
                         f"{_fmt(r.get('speedup_vs_vanilla'), '.3f', 'x'):>9} "
                         f"{_fmt(r.get('kv_tokens_kept_at_last_scale'), '.3f'):>8} "
                         f"{_fmt(r.get('kv_allocated_ratio'), '.3f'):>9}")
    compared = [r for r in rows if "tokens_equal_vs_eager" in r or "agreement_failed" in r]
    if compared:
        lines.append(f"\n{'the same call as eager':<28} {'engine':<9} {'tokens equal':>12} {'max |f_hat diff|':>17}")
        for r in compared:
            if "agreement_failed" in r:
                lines.append(f"{r['method']:<28} {r['engine']:<9} failed: {r['agreement_failed']}")
            else:
                lines.append(f"{r['method']:<28} {r['engine']:<9} {r['tokens_equal_vs_eager']:>12.4f} "
                             f"{r['f_hat_max_diff_vs_eager']:>17.3g}")
    return "\n".join(lines)
