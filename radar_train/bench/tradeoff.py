"""`radar-bench tradeoff`: speed against quality for a list of acceleration settings, with and without PAA.

For vanilla, every setting (`fastvar:aggressive`, `stagevar:paper`, `sca:default+mask_file=m.safetensors`, ...)
and every adapter of a setting, one run measures

- speed, interleaved in the same process (`radar_train.bench.rounds`: one job of each per round, warm-up rounds
  first, medians of the timed rounds): images/s of the sampling loop (transformer + quantizer) and end to end
  (sampling + decode, with the adapter's merged decoder for PAA rows), and the speed-ups over vanilla. A merged
  LoRA adapter has the base decoder's structure (a label-conditioned one adds its per-class FiLM), so PAA rows
  cost about what their setting costs; one adapter per group is timed and the group's other adapters take its
  times (`timed_as`);
- quality against vanilla on `num_samples` samples (sample i: class i mod num_classes, seed base_seed + i,
  the same for every run): PSNR and SSIM against the vanilla image of the same class and seed, the relative
  latent distance ‖f_acc − f_vanilla‖ / ‖f_vanilla‖ (not for PAA rows: the adapter does not change the latent)
  and, on the toy world (`model.preset: toy`), class accuracy and toy FID (`radar_train.toyworld.fid`) against
  real renders and against the vanilla samples; PAA rows add G_mse, ΔPSNR and (toy) the FID gap closed.

Outputs in `--output DIR`: `tradeoff.json` (device, torch, cuda, commit, date, command, config, rows, groups,
the Pareto front), `tradeoff.md` (the table) and `tradeoff.png` (speed-up on x, `--setup.quality_metric` on y,
settings without PAA, with PAA (mean of each adapter group, ± its standard deviation) and vanilla as separate
series, the Pareto front ringed and joined). `python -m radar_train.bench.tradeoff RESULT.json OUT.png
--quality_metric class_accuracy` draws an earlier result's chart with another metric (no measurement).
"""
from __future__ import annotations

import contextlib
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Literal, Optional, Sequence

import torch

from radar_train.config import ModelArgs, SamplingConfig
from radar_train.formatting import fixed
from radar_train.seeding import seed_range_problems
from radar_train.toyworld.measure import (DEFAULT_METHODS, AdapterSpec, adapter_group, adapter_table, fid_gaps,
                                          group_summary, quality_vs_vanilla, restoration, toy_model, toy_sampling)

OUTPUT_FILES = ("tradeoff.json", "tradeoff.md", "tradeoff.png")

# name -> (axis title, higher is better, toy world only)
METRICS: dict[str, tuple[str, bool, bool]] = {
    "psnr_vs_vanilla": ("PSNR vs vanilla (dB)", True, False),
    "ssim_vs_vanilla": ("SSIM vs vanilla", True, False),
    "latent_distance": ("relative latent distance to vanilla", False, False),
    "class_accuracy": ("class accuracy (toy classifier)", True, True),
    "toy_fid": ("toy FID vs real renders", False, True),
    "toy_fid_vs_vanilla": ("toy FID vs vanilla samples", False, True),
}


@dataclass
class TimingArgs:
    """How speed is timed."""

    batch_size: int = 16
    """Images per timed sampler call."""
    warmup: int = 1
    """Untimed rounds first (every job once per round)."""
    repeats: int = 5
    """Timed rounds; the median of each job is kept."""
    device: str = "auto"
    """auto (CUDA if available), cpu, cuda, cuda:1, ...; quality is measured on the same device."""
    dtype: str = "auto"
    """auto (bf16 autocast on CUDA, fp32 on the CPU), fp32, bf16, fp16 (or float32, bfloat16, float16)."""


@dataclass
class TradeoffConfig:
    """What `radar-bench tradeoff` measures."""

    settings: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    """Acceleration settings: fastvar:<preset>, stagevar:<preset>, sca:<options> (vanilla is always measured)."""
    adapters: dict[str, AdapterSpec] = field(default_factory=dict)
    """setting -> adapter folder, or {name: folder} for several (names differing only by a seed suffix _s<N> form
    a group: mean ± sd, one point on the chart)."""
    model: ModelArgs = field(default_factory=toy_model)
    """VQ-VAE + VAR (default: the shipped toy weights; any preset, random or real weights)."""
    sampling: SamplingConfig = field(default_factory=toy_sampling)
    """Sampler settings of every run, engine included (default: the toy world's; VAR presets: the FID protocol
    is cfg 1.5, top_k 900, top_p 0.96)."""
    classifier: Optional[str] = None
    """Toy classifier weights (toy world only; default: the shipped file)."""
    num_samples: int = 200
    """Samples per run for the quality metrics (sample i: class i mod num_classes, seed base_seed + i)."""
    base_seed: int = 1_000_000
    """Seed of sample 0 (keep clear of the seeds of PAA caches)."""
    batch_size: int = 50
    """Samples per sampler call for the quality metrics."""
    fid_reference_images: int = 1000
    """Toy world: real renders (toy-world set 2) the toy FID is measured against."""
    timing: TimingArgs = field(default_factory=TimingArgs)
    quality_metric: str = "auto"
    """The chart's y axis: psnr_vs_vanilla, ssim_vs_vanilla, latent_distance, class_accuracy, toy_fid,
    toy_fid_vs_vanilla (the last three toy world only); auto: toy_fid on the toy world, else psnr_vs_vanilla."""
    speed: Literal["e2e", "loop"] = "e2e"
    """The chart's x axis: end-to-end speed-up (sampling + decode) or the sampling loop's."""
    num_threads: Optional[int] = None
    """CPU threads (default: torch's)."""


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point dominates (x higher is better; y as given), sorted by x: the
    upper-right front (lower-right for a lower-is-better y). Equal points are all on it."""
    sign = 1.0 if higher_is_better else -1.0
    pts = [(float(x), sign * float(y)) for x, y in points]
    front = [i for i, (x, y) in enumerate(pts)
             if not any(qx >= x and qy >= y and (qx > x or qy > y) for qx, qy in pts)]
    return sorted(front, key=lambda i: (pts[i][0], -pts[i][1]))


def resolve_metric(name: str, toy: bool, option: str = "--setup.quality_metric") -> str:
    """The chart's metric: `name` checked against the model ('auto': toy_fid on the toy world, else PSNR)."""
    if name == "auto":
        return "toy_fid" if toy else "psnr_vs_vanilla"
    if name not in METRICS:
        raise ValueError(f"{option} {name!r}: choose one of auto, {', '.join(METRICS)}")
    if METRICS[name][2] and not toy:
        raise ValueError(f"{option} {name}: only on the toy world (model.preset toy); this model has "
                         f"psnr_vs_vanilla, ssim_vs_vanilla, latent_distance")
    return name


def _check(cfg: TradeoffConfig) -> None:
    p = []
    if not cfg.settings:
        p.append("--setup.settings is empty: give at least one acceleration setting")
    bad = [s for s in cfg.settings if s in ("none", "vanilla")]
    if bad:
        p.append("--setup.settings: vanilla is always measured; list only acceleration settings")
    dup = sorted({s for s in cfg.settings if cfg.settings.count(s) > 1})
    if dup:
        p.append(f"--setup.settings lists {dup} twice")
    if cfg.num_samples < 2:
        p.append(f"--setup.num_samples must be >= 2, got {cfg.num_samples}")
    for name, v, lo in (("batch_size", cfg.batch_size, 1), ("timing.batch_size", cfg.timing.batch_size, 1),
                        ("timing.repeats", cfg.timing.repeats, 1), ("timing.warmup", cfg.timing.warmup, 0)):
        if v < lo:
            p.append(f"--setup.{name} must be >= {lo}, got {v}")
    n = max(cfg.num_samples, cfg.timing.batch_size)  # seeds base_seed + i: the quality samples and the timed batch
    p += seed_range_problems("--setup.base_seed", cfg.base_seed, n)
    if cfg.fid_reference_images < 2:
        p.append(f"--setup.fid_reference_images must be >= 2, got {cfg.fid_reference_images}")
    if cfg.num_threads is not None and cfg.num_threads < 1:
        p.append(f"--setup.num_threads must be >= 1, got {cfg.num_threads}")
    p += cfg.sampling.problems()
    if cfg.sampling.noise != "per_sample":
        p.append("--setup.sampling.noise must be per_sample: quality compares the samples of the same seed")
    if p:
        raise ValueError("; ".join(p))


def _label(spec: str) -> str:
    """A short chart label: 'fastvar:aggressive' -> 'fv:aggr';
    'sca:scores+compute_budget=0.5+memory_budget=1+mask_file=m.safetensors' -> 'sca:c0.5+m1+mask' (a mask file
    implies the scores selection)."""
    s = spec.replace("fastvar", "fv").replace("stagevar", "sv").replace("aggressive", "aggr").replace("default", "def")
    s = s.replace("compute_budget=", "c").replace("memory_budget=", "m")
    if "mask_file=" in s:
        s = s.replace("scores+", "").replace("+scores", "")
    return re.sub(r"mask_file=[^+]*", "mask", s)


@torch.no_grad()
def run_tradeoff(cfg: TradeoffConfig, output: Optional[str] = None, overwrite: bool = False,
                 log: Callable[[str], None] = print) -> dict:
    """Measure speed and quality as the module docstring says; write the three files to `output` (existing
    ones only with `overwrite`; everything is checked before any work). Returns the result document."""
    from radar_train.bench.accel import resolve_device
    from radar_train.bench.record import environment
    from radar_train.bench.rounds import Job, PhaseClock, run_rounds
    from radar_train.models import load_models
    from radar_train.outputs import check_output_dir, naming, staged_entries, write_report
    from radar_train.sampling import NextScaleSampler
    from radar_train.accel.spec import build_specs
    from radar_train.toyworld.measure import check_adapter_folders, decode01, load_adapted_decoder, sample_fhat

    _check(cfg)
    dev, amp = resolve_device(cfg.timing.device, cfg.timing.dtype, "--setup.timing")
    table = adapter_table(cfg.adapters, cfg.settings, listed_in="--setup.settings")
    toy = cfg.model.preset == "toy"
    metric = resolve_metric(cfg.quality_metric, toy)
    folders = [f for named in table.values() for f in named.values()]
    if output is not None:
        check_output_dir(output, OUTPUT_FILES, "--output", overwrite=overwrite,
                         inputs={"--setup.adapters": folders, "--setup.classifier": cfg.classifier,
                                 "--setup.model.vae_checkpoint": cfg.model.vae_checkpoint,
                                 "--setup.model.var_checkpoint": cfg.model.var_checkpoint})
    check_adapter_folders(folders)
    judge = fid = None
    if toy:  # a file that is no toy classifier: one line before the models load
        from radar_train.toyworld.classifier import accuracy
        from radar_train.toyworld.fid import ToyFID
        from radar_train.toyworld.measure import load_classifier

        judge = load_classifier(cfg.classifier)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    m = cfg.model
    vqvae, var, vae_id, var_id = load_models(m.preset, m.vae_checkpoint, m.var_checkpoint, device=dev,
                                             init_seed=m.init_seed)
    accels = build_specs(cfg.settings, var, var_id, "--setup.settings")
    adapted = {spec: {name: load_adapted_decoder(vqvae, folder, vae_id, num_classes=var.num_classes).to(dev)
                      for name, folder in named.items()} for spec, named in table.items()}
    if amp is not None:
        var.cast_body_(amp)
    sampler = NextScaleSampler(var, vqvae.quantize, cfg.sampling, autocast_dtype=amp)
    ctx = (lambda: torch.autocast(dev.type, dtype=amp)) if amp is not None else contextlib.nullcontext
    dtype_name = "fp32" if amp is None else str(amp).replace("torch.", "")

    # ------------------------------------------------------------------ plan
    timed_adapters = {spec: [n for n in named if n == next(x for x in named if adapter_group(x) == adapter_group(n))]
                      for spec, named in table.items()}
    n_jobs = 1 + len(accels) + sum(len(v) for v in timed_adapters.values())
    B, n = cfg.timing.batch_size, cfg.num_samples
    log(f"tradeoff: {m.preset} on {dev} ({dtype_name}), cfg {cfg.sampling.cfg}, top_k {cfg.sampling.top_k}, "
        f"top_p {cfg.sampling.top_p}, engine {cfg.sampling.engine}; {len(accels)} settings + vanilla, "
        f"{len(folders)} adapters")
    log(f"  speed: {n_jobs} jobs x ({cfg.timing.warmup} warm-up + {cfg.timing.repeats} timed) interleaved rounds "
        f"of batch {B}; quality: {1 + len(accels)} sampling runs of {n} samples, {2 * len(folders)} adapted decodes"
        + (f", toy FID against {cfg.fid_reference_images} renders" if toy else ""))

    # ------------------------------------------------------------------ speed
    labels_t = torch.arange(B, device=dev) % var.num_classes
    seeds_t = list(range(cfg.base_seed, cfg.base_seed + B))
    clock = PhaseClock(dev)

    def job(accel, decoder):
        def run():
            clock.start()
            out = sampler.sample(labels_t, seeds=seeds_t, accel=accel)
            clock.mark("loop")
            with ctx():
                decode01(decoder, out.f_hat, batch_size=B, labels=labels_t)
            return clock.mark("e2e")
        return run

    jobs = [Job("vanilla", job(None, vqvae))]
    for spec, accel in accels.items():
        jobs.append(Job(spec, job(accel, vqvae)))
        for name in timed_adapters.get(spec, []):
            jobs.append(Job(f"{spec}+{name}", job(accel, adapted[spec][name])))
    repeats = run_rounds(jobs, dev, cfg.timing.warmup, cfg.timing.repeats, log=log)
    speed = speeds({j.name: (j.median("loop"), j.median("e2e")) for j in jobs}, B)

    # ------------------------------------------------------------------ quality
    labels = torch.arange(n) % var.num_classes
    seeds = cfg.base_seed + torch.arange(n)

    def decode(decoder, f_hat):
        with ctx():
            return decode01(decoder, f_hat.to(dev), labels=labels.to(dev)).float().cpu()

    def toy_quality(images01: torch.Tensor) -> dict:
        if judge is None:
            return {}
        return {"class_accuracy": _r(accuracy(judge, images01, labels)),
                **{k: _r(v) for k, v in fid.measure(images01).items()}}

    fhat_hq = sample_fhat(sampler, labels.to(dev), seeds, cfg.batch_size).float()
    img_hq = decode(vqvae, fhat_hq)
    doc_toy = None
    vanilla = {"setting": "vanilla", "adapter": None, "group": None, "paa": False, **speed["vanilla"],
               "psnr_vs_vanilla": None, "ssim_vs_vanilla": None, "latent_distance": 0.0}
    if judge is not None:
        fid = ToyFID(judge, cfg.fid_reference_images)
        vanilla["class_accuracy"] = _r(accuracy(judge, img_hq, labels))
        vanilla.update({k: _r(v) for k, v in fid.set_vanilla(img_hq).items()}, toy_fid_vs_vanilla=0.0)
        doc_toy = fid.describe(n) | {"baselines": {k: _r(v) for k, v in fid.baselines(n, vqvae, device=dev).items()}}
    rows = [vanilla]
    log(_row_line(vanilla, metric))
    groups = []
    for spec, accel in accels.items():
        fhat_lq = sample_fhat(sampler, labels.to(dev), seeds, cfg.batch_size, accel).float()
        img_lq = decode(vqvae, fhat_lq)
        row = {"setting": spec, "adapter": None, "group": None, "paa": False, **speed[spec],
               **quality_vs_vanilla(img_lq, img_hq, fhat_lq.cpu(), fhat_hq.cpu()), **toy_quality(img_lq)}
        rows.append(row)
        log(_row_line(row, metric))
        named_rows = {}
        for name, decoder in adapted.get(spec, {}).items():
            img_s = decode(decoder, fhat_lq)
            timed_as = next(x for x in timed_adapters[spec] if adapter_group(x) == adapter_group(name))
            r = {"setting": spec, "adapter": name, "group": adapter_group(name), "paa": True,
                 "adapter_dir": table[spec][name], "timed_as": timed_as, **speed[f"{spec}+{timed_as}"],
                 **quality_vs_vanilla(img_s, img_hq), "latent_distance": None, **toy_quality(img_s),
                 **restoration(img_hq, img_lq, img_s, decode(decoder, fhat_hq))}
            if judge is not None:
                r.update(fid_gaps(row, r, vanilla))
            rows.append(r)
            named_rows[name] = r
            log(_row_line(r, metric))
        for group, summary in group_summary(named_rows).items():
            groups.append({"setting": spec, "group": group, **summary})

    notes = [f"speed: median of {repeats} timed rounds (after {cfg.timing.warmup} warm-up), batch {B}, interleaved; "
             f"speed-ups are over vanilla in the same run",
             "quality against the vanilla sample of the same class and seed; vanilla's own PSNR / SSIM vs vanilla "
             "are not defined (it is the reference); PAA does not change the latent (no latent distance)"]
    if doc_toy:
        notes += doc_toy["notes"]
    points, front, _ = chart_points(rows, groups, metric, cfg.speed)
    doc = {**environment(dev), "dtype": dtype_name, "config": asdict(cfg),
           "num_samples": n, "quality_metric": metric, "speed_axis": cfg.speed, "toy_fid": doc_toy, "rows": rows,
           "groups": groups, "pareto_front": [points[i].label for i in front], "notes": notes}
    doc["markdown"] = markdown_table(doc)
    if output is not None:
        with staged_entries(output, OUTPUT_FILES, overwrite) as stage:
            write_report(stage, "tradeoff", doc, indent=2)
            with naming(os.path.join(output, "tradeoff.png")):
                draw_chart(doc).save(stage / "tradeoff.png")
    return doc


def speeds(medians: dict[str, tuple[float, float]], batch_size: int) -> dict[str, dict]:
    """{name: images/s (loop, e2e) and speed-ups against "vanilla"} from each job's median seconds per batch (loop,
    e2e): the speed-ups are ratios of the medians themselves (rounding images/s first made them wrong by up to 1 %
    on a slow model), images/s keep 4 significant digits (4 decimals left 0.0045 at VAR-d36 on a CPU)."""
    base_loop, base_e2e = medians["vanilla"]
    return {name: {"images_per_s": _sig(batch_size / loop), "images_per_s_e2e": _sig(batch_size / e2e),
                   "speedup": _r(base_loop / loop), "speedup_e2e": _r(base_e2e / e2e)}
            for name, (loop, e2e) in medians.items()}


def _sig(x: float, digits: int = 4) -> Optional[float]:
    """`x` to `digits` significant digits."""
    if not math.isfinite(x) or x == 0:
        return _r(x)
    return round(x, digits - 1 - math.floor(math.log10(abs(x))))


def _r(x: Optional[float], digits: int = 4) -> Optional[float]:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), digits)


def _row_line(row: dict, metric: str) -> str:
    name = row["setting"] + (f" + {row['adapter']}" if row["adapter"] else "")
    q = row.get(metric)
    return (f"  {name}: speed-up {row['speedup']:.2f}x loop, {row['speedup_e2e']:.2f}x e2e; "
            f"{metric} {'-' if q is None else f'{q:.4g}'}")


SERIES = ("vanilla", "accelerated", "accelerated + PAA")
SERIES_STYLES = {"vanilla": ((80, 80, 80), "diamond"), "accelerated": ((31, 119, 180), "circle"),
                 "accelerated + PAA": ((214, 39, 40), "square")}


VANILLA_SELF = {"psnr_vs_vanilla": math.inf, "ssim_vs_vanilla": 1.0, "latent_distance": 0.0}
"""What a metric measured against the vanilla sample is for vanilla itself (identical images and latents): the rows
record none, but vanilla is on the chart at it, so that a setting slower than vanilla is off the Pareto front."""


def chart_points(rows: list[dict], groups: list[dict], metric: str, speed: str = "e2e"):
    """(points, Pareto front indices, links): vanilla, each setting, and each adapter group of a setting (mean
    over its adapters, ± their standard deviation); rows without a value of `metric` are left out, but for
    vanilla's own value of a metric against vanilla (VANILLA_SELF; its PSNR infinite); links join each group's
    point to its setting's."""
    from radar_train.images import ChartPoint

    key = "speedup_e2e" if speed == "e2e" else "speedup"
    points, index = [], {}
    for r in rows:
        value = r.get(metric)
        if value is None and r["setting"] == "vanilla" and not r["paa"]:
            value = VANILLA_SELF.get(metric)
        if r["paa"] or value is None:
            continue
        index[r["setting"]] = len(points)
        points.append(ChartPoint(r[key], value, "vanilla" if r["setting"] == "vanilla" else _label(r["setting"]),
                                 SERIES[0] if r["setting"] == "vanilla" else SERIES[1]))
    links = []
    for g in groups:
        first = next(r for r in rows if r["paa"] and r["setting"] == g["setting"] and r["adapter"] == g["adapters"][0])
        v = g.get(metric)
        if v is None:
            continue
        if g["setting"] in index:
            links.append((index[g["setting"]], len(points)))
        points.append(ChartPoint(first[key], v["mean"], f"{_label(g['setting'])}+{g['group']}", SERIES[2],
                                 yerr=v["std"]))
    front = pareto_front([(p.x, p.y) for p in points], METRICS[metric][1])
    return points, front, links


def draw_chart(doc: dict, size: tuple[int, int] = (960, 640)):
    """The speed-quality chart of a result document (a PIL image)."""
    from radar_train.images import scatter_chart

    metric, speed = doc["quality_metric"], doc["speed_axis"]
    points, front, links = chart_points(doc["rows"], doc["groups"], metric, speed)
    finite = [p.y for p in points if math.isfinite(p.y)]
    if finite:  # vanilla's PSNR against itself: drawn above every other point, its label saying why
        top = max(finite) + max(1.0, 0.1 * (max(finite) - min(finite)))
        points = [p if math.isfinite(p.y) else replace(p, y=top, label=f"{p.label} (∞: the reference)")
                  for p in points]
    title, higher, _ = METRICS[metric]
    y_label = title + ("" if higher else " (lower is better; axis inverted)")
    x_label = f"speed-up over vanilla ({'end to end: sampling + decode' if speed == 'e2e' else 'sampling loop'})"
    head = f"{doc['config']['model']['preset']}, {doc['num_samples']} samples per run, {doc['device']}"
    return scatter_chart(points, x_label, y_label, title=head, invert_y=not higher, front=front, links=links,
                         vline=1.0, styles=SERIES_STYLES, size=size)


_MD_COLUMNS = (("speedup", "x"), ("speedup_e2e", "x"), ("images_per_s_e2e", "ips"), ("psnr_vs_vanilla", "f2"),
               ("ssim_vs_vanilla", "f3"), ("latent_distance", "f3"), ("class_accuracy", "pct"), ("toy_fid", "f2"),
               ("toy_fid_vs_vanilla", "f2"), ("g_mse", "pct"), ("fid_gap_closed", "pct"))
_MD_TITLES = {"speedup": "speed-up (loop)", "speedup_e2e": "speed-up (e2e)", "images_per_s_e2e": "images/s (e2e)",
              "psnr_vs_vanilla": "PSNR vs vanilla (dB)", "ssim_vs_vanilla": "SSIM vs vanilla",
              "latent_distance": "latent distance", "class_accuracy": "class accuracy", "toy_fid": "toy FID",
              "toy_fid_vs_vanilla": "toy FID vs vanilla", "g_mse": "G_mse", "fid_gap_closed": "FID gap closed"}


def _fmt(v, kind: str) -> str:
    if v is None:
        return "–"
    if isinstance(v, dict):
        mean, sd = _fmt(v["mean"], kind), v.get("std")
        if sd is None:
            return mean
        return f"{mean} ± {_fmt(sd, kind)}" if kind != "pct" else f"{mean[:-2]} ± {_fmt(sd, kind)}"
    if kind == "ips":  # (3 significant digits or one decimal: 0.00452, 0.452, 4.52, 45.2, 452.0)
        return fixed(v, 1) if v >= 10 or v <= 0 else fixed(v, 2 - math.floor(math.log10(v)))
    return {"x": f"{fixed(v, 2)}x", "f1": fixed(v, 1), "f2": fixed(v, 2), "f3": fixed(v, 3),
            "pct": f"{fixed(v, 1, scale=100)} %"}[kind]


def markdown_table(doc: dict) -> str:
    """The result as markdown: one row per run and adapter, and per group of several adapters (mean ± sd)."""
    cols = [(k, kind) for k, kind in _MD_COLUMNS if any(r.get(k) is not None for r in doc["rows"])]
    s = doc["config"]["sampling"]
    lines = [f"# Speed vs quality: {doc['config']['model']['preset']}", "",
             f"{doc['device']}, torch {doc['torch']}, {doc['dtype']}; commit {doc['commit']}, {doc['date']}; "
             f"cfg {s['cfg']}, top_k {s['top_k']}, top_p {s['top_p']}, engine {s.get('engine', 'eager')}; "
             f"{doc['num_samples']} samples per run.", "",
             f"`{doc['command']}`", "",
             "| run | " + " | ".join(_MD_TITLES[k] for k, _ in cols) + " |",
             "| --- |" + " ---: |" * len(cols)]
    rows = doc["rows"]
    for i, r in enumerate(rows):
        name = r["setting"] + (f" + {r['adapter']}" if r["adapter"] else "")
        lines.append(f"| {name} | " + " | ".join(_fmt(r.get(k), kind) for k, kind in cols) + " |")
        if i + 1 == len(rows) or rows[i + 1]["setting"] != r["setting"]:  # the setting's groups after its rows
            for g in doc["groups"]:
                if g["setting"] == r["setting"] and g["n"] > 1:
                    lines.append(f"| {g['setting']} + {g['group']} (mean ± sd of {g['n']}) | " + " | ".join(
                        _fmt(g.get(k), kind) if kind not in ("x", "ips") else _fmt((g.get(k) or {}).get("mean"), kind)
                        for k, kind in cols) + " |")
    if doc.get("toy_fid"):
        t = doc["toy_fid"]
        lines += ["", f"Toy FID: {t['features']}, against {t['reference']['num_images']} real renders (toy-world set "
                      f"{t['reference']['world_seed']}); {doc['num_samples']} other real renders score "
                      f"{_fmt(t['baselines'].get('real_renders'), 'f2')} (the floor at this count), their VQ-VAE "
                      f"reconstructions {_fmt(t['baselines'].get('vqvae_reconstructions'), 'f2')}."]
    lines += ["", f"Pareto front ({doc['quality_metric']} against the {doc['speed_axis']} speed-up): "
                  + ", ".join(doc["pareto_front"]), "", "![speed vs quality](tradeoff.png)", "", "Notes:", ""]
    lines += [f"- {x}" for x in doc["notes"]]
    return "\n".join(lines)


def redraw(result: str, output: str, quality_metric: str = "auto", speed: Literal["e2e", "loop"] = "e2e",
           overwrite: bool = False) -> int:
    """Draw the chart of an earlier `radar-bench tradeoff` result with another quality metric or speed axis
    (no measurement).

    Args:
        result: its tradeoff.json.
        output: the PNG to write.
        quality_metric: the y axis (as --setup.quality_metric).
        speed: the x axis: e2e or loop.
        overwrite: replace an existing PNG.
    """
    from radar_train.inputs import read_json
    from radar_train.outputs import atomic_file, check_output_file

    doc = read_json(result, "tradeoff result")
    needs = ("rows", "groups", "quality_metric", "config", "num_samples", "device")
    if not isinstance(doc, dict) or not set(needs) <= set(doc):
        raise ValueError(f"{result}: not a radar-bench tradeoff result (needs {', '.join(needs)})")
    doc = {**doc, "quality_metric": resolve_metric(quality_metric, bool(doc.get("toy_fid")), "--quality_metric"),
           "speed_axis": speed}
    check_output_file(output, "output", inputs={"result": result}, overwrite=overwrite)  # (positionals: by name)
    try:  # (drawn before anything is written: a hand-edited result fails here)
        chart = draw_chart(doc)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ValueError(f"{result}: not a radar-bench tradeoff result its chart can be drawn from "
                         f"({type(e).__name__}: {e})") from None
    with atomic_file(output) as tmp:
        chart.save(tmp, format="PNG")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    from jsonargparse import CLI

    from radar_train.cli.common import run_main

    prog = "python -m radar_train.bench.tradeoff"
    run_main(prog, lambda args: CLI(redraw, args=args, prog=prog, exit_on_error=False))
