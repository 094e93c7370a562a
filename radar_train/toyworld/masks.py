"""`radar-toy masks`: RADAR's supplementary Fig. 9 on the toy world — SCA-Mask against FastVAR's pivotal token
selection (PTS) and a handcrafted LiteVAR-style diagonal-window mask at the same attention budgets, with and
without a PAA adapter.

Families, each at every nominal attention budget B (default 1, 0.75, 0.5, 0.25) on the SCA-Mask active scales
(the last three: 4, 6, 8 on the toy model):

- `sca`: SCA-Mask with the calibrated tile scores (`mask_file`, default the shipped tile-8 toy calibration),
  compute budget B and memory budget 1 (no KV eviction): `sca:scores+compute_budget=B+memory_budget=1+mask_file=F`;
- `window`: the same number of attention blocks, those nearest each query tile's diagonal, same tile:
  `sca:window+compute_budget=B+tile=T`;
- `pts`: FastVAR pruning each active scale so that its attention keeps about B of vanilla's query·key pairs
  (`fastvar:budget=B`, `radar_train.accel.sca.fastvar_for_attention_budget`); FastVAR also skips the FFN and
  projections of the pruned tokens, so at equal attention it computes less than the masks.

Only the compute budget applies to SCA (memory 1), so the three families compare at equal attention. A budget
does not always give that share: protected blocks (each query tile's diagonal and the first-scale keys) are
never dropped and tiles are coarse on small scales, so every setting reports its *achieved* share of attention
pairs, per active scale and over the active scales (`pair_shares`, `attention_share`). A setting that computes
exactly what vanilla computes (B = 1) is not sampled again: it takes vanilla's numbers.

The samples, decodes and metrics are `radar-toy measure`'s (`run_measure`: the same per-sample seeds, class
accuracy from the toy classifier, PSNR against the vanilla image of the same seed, toy FID, and with adapters
the restoration metrics). Outputs in `--output DIR`: masks.json, masks.md (the table) and masks.png (class
accuracy and PSNR vs vanilla against the achieved attention share, one line per family, PAA points, vanilla's
accuracy as a dotted line).
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from radar_train.accel.base import AccelMethod
from radar_train.config import ModelArgs, SamplingConfig
from radar_train.formatting import fixed
from radar_train.toyworld.measure import (AdapterSpec, MeasureConfig, adapter_table, group_summary, toy_model,
                                          toy_sampling)
from radar_train.toyworld.preset import WEIGHTS_DIR

log = logging.getLogger(__name__)

FAMILIES = ("sca", "window", "pts")
FAMILY_TITLES = {"sca": "SCA-Mask", "window": "diagonal window", "pts": "PTS (FastVAR)"}
DEFAULT_BUDGETS = (1.0, 0.75, 0.5, 0.25)
MASK_FILE = "toy_sca_mask_tile8.safetensors"
"""The tile-8 calibration of the shipped toy model (beside the tile-16 toy_sca_mask.safetensors, whose
protected blocks keep scale 6 at >= 0.70 of its attention and scale 4 whole)."""
OUTPUT_FILES = ("masks.json", "masks.md", "masks.png")
PAA_BUDGET = 0.5
PAA_TARGET = 0.85
"""With PAA, class accuracy at the 50 % budget should reach this share of vanilla's (the issue's target)."""


@dataclass
class MasksConfig:
    """What `radar-toy masks` measures."""

    model: ModelArgs = field(default_factory=toy_model)
    """VQ-VAE + VAR (default: the shipped toy weights)."""
    classifier: Optional[str] = None
    """Toy classifier weights (default: the shipped toy_classifier.safetensors)."""
    sampling: SamplingConfig = field(default_factory=toy_sampling)
    """Sampler settings of every run (vanilla and accelerated)."""
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    """Mask families to measure: sca (calibrated SCA-Mask), window (diagonal window), pts (FastVAR PTS)."""
    budgets: list[float] = field(default_factory=lambda: list(DEFAULT_BUDGETS))
    """Nominal attention budgets, each in (0, 1]."""
    mask_file: Optional[str] = None
    """SCA-Mask calibration of the model (default: the shipped tile-8 toy calibration, toy_sca_mask_tile8)."""
    tile: Optional[int] = None
    """Tile of the window family (default: the mask file's, so sca and window drop the same block sizes)."""
    adapters: dict[str, AdapterSpec] = field(default_factory=dict)
    """Setting -> adapter folder exported by radar-train, or {name: folder} for several (names differing only by
    a seed suffix _s<N> form a group: mean ± sd). A setting is named family@budget (sca@0.5, window@0.5,
    pts@0.5) or by its method spec."""
    images_per_class: int = 20
    """Samples per class for every run (10 × this = the sample count of every toy FID)."""
    fid_reference_images: int = 1000
    """Real toy renders (toy-world set 2) the toy FID is measured against."""
    base_seed: int = 1_000_000
    """Sample i gets seed base_seed + i (keep clear of the seeds of PAA caches)."""
    num_heldout_images: int = 200
    """Held-out toy images for the reconstruction PSNR."""
    batch_size: int = 50
    """Samples per sampler call."""
    num_threads: int = 2
    """CPU threads."""


# ---------------------------------------------------------------------------- settings
def budget_text(budget: float) -> str:
    """The budget as settings and specs spell it: every digit a float's 15 significant ones hold (`:g`'s 6 made
    0.5000001 a second 0.5)."""
    return f"{budget:.15g}"


def setting_name(family: str, budget: float) -> str:
    """'sca', 0.5 -> 'sca@0.5'."""
    return f"{family}@{budget_text(budget)}"


def default_mask_file() -> Path:
    return WEIGHTS_DIR / MASK_FILE


def setting_spec(family: str, budget: float, mask_file: str | Path, tile: int) -> str:
    """The method spec (`radar_train.accel.spec`) of a family at a nominal attention budget."""
    b = budget_text(budget)
    if family == "sca":
        return f"sca:scores+compute_budget={b}+memory_budget=1+mask_file={mask_file}"
    if family == "window":
        return f"sca:window+compute_budget={b}+tile={tile}"
    if family == "pts":
        return f"fastvar:budget={b}"
    raise ValueError(f"--setup.families: unknown family {family!r}; available: {', '.join(FAMILIES)}")


def scale_pairs(patch_nums: Sequence[int]) -> dict[int, int]:
    """Vanilla's query·key pairs per scale side: l·e (l = side², e = tokens up to the scale's end)."""
    out, end = {}, 0
    for pn in patch_nums:
        end += pn * pn
        out[int(pn)] = pn * pn * end
    return out


def pair_shares(method: Optional[AccelMethod], patch_nums: Sequence[int], depth: int) -> dict[int, float]:
    """Share of vanilla's query·key pairs (the attention FLOPs) each scale computes with `method` (None:
    vanilla), mean over blocks. SCA-Mask: the kept tiles' pairs (`TileMasks.pair_share`). FastVAR: at a pruned
    scale (ratio ρ) the k = max(1, l − ⌊l·ρ⌋) kept queries attend to the n keys cached before the scale plus
    their own k, and only those k enter the cache; a ratio of 1 skips the scale and every later one (0);
    blocks outside `layers` compute everything. Other methods: ValueError."""
    from radar_train.accel import FastVAR, SCAMask

    pns = [int(p) for p in patch_nums]
    if method is None or type(method) is AccelMethod:
        return {pn: 1.0 for pn in pns}
    if isinstance(method, SCAMask):
        m = method.masks()
        return {pn: (m.pair_share(si) if si in m.active else 1.0) for si, pn in enumerate(pns)}
    if isinstance(method, FastVAR):
        ratios = method.ratios
        pruned_blocks = depth if method.layers is None else len(set(method.layers))
        out, cached, end, skipped = {}, 0, 0, False
        for pn in pns:
            l = pn * pn
            end += l
            rho = ratios.get(pn, 0.0)
            if skipped or rho >= 1.0:
                skipped, out[pn] = True, 0.0
                continue
            k = max(1, l - math.floor(l * rho))
            share = k * (cached + k) / (l * end)
            out[pn] = (pruned_blocks * share + depth - pruned_blocks) / depth
            cached += k
        return out
    raise ValueError(f"pair_shares: no attention accounting for method {method.name!r}")


def attention_share(shares: dict[int, float], patch_nums: Sequence[int], sides: Optional[Sequence[int]] = None) -> float:
    """The pair-weighted mean of per-scale shares over `sides` (default: every scale): the share of those
    scales' vanilla attention pairs that is computed."""
    pairs = scale_pairs(patch_nums)
    sides = list(pairs) if sides is None else [int(s) for s in sides]
    return sum(shares[s] * pairs[s] for s in sides) / sum(pairs[s] for s in sides)


@dataclass(frozen=True)
class Setting:
    family: str
    budget: float
    name: str
    spec: str
    method: AccelMethod
    patch_nums: tuple[int, ...]
    shares: dict[int, float]  # per scale side

    @property
    def vanilla(self) -> bool:
        """It computes what vanilla computes (nothing to sample again)."""
        return self.method.first_modified_scale(self.patch_nums) is None


def plan_settings(cfg: MasksConfig, patch_nums: Sequence[int], depth: int) -> list[Setting]:
    """Every (family, budget) setting with its method (validated against the model's shapes) and achieved
    shares; ValueError (one line) for a bad family, budget, tile or mask file."""
    from radar_train.accel.sca import load_mask_file
    from radar_train.accel.spec import build_spec

    p = []
    bad = [f for f in cfg.families if f not in FAMILIES]
    if bad or not cfg.families:
        p.append(f"--setup.families {cfg.families}: give one or more of {', '.join(FAMILIES)}")
    if len(set(cfg.families)) != len(cfg.families):
        p.append(f"--setup.families lists a family twice: {cfg.families}")
    if not cfg.budgets or any(not 0.0 < b <= 1.0 for b in cfg.budgets):
        p.append(f"--setup.budgets {cfg.budgets}: give one or more attention shares in (0, 1]")
    if len(set(cfg.budgets)) != len(cfg.budgets):
        p.append(f"--setup.budgets lists a budget twice: {cfg.budgets}")
    if cfg.tile is not None and cfg.tile < 1:
        p.append(f"--setup.tile must be >= 1, got {cfg.tile}")
    if cfg.num_threads is not None and cfg.num_threads < 1:
        p.append(f"--setup.num_threads must be >= 1, got {cfg.num_threads}")
    if p:
        raise ValueError("; ".join(p))
    mask_file = Path(cfg.mask_file) if cfg.mask_file else default_mask_file()
    tile = cfg.tile
    if "sca" in cfg.families or tile is None:
        try:
            header = load_mask_file(mask_file).header
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"--setup.mask_file: {e}") from None
        tile = header["tile"] if tile is None else tile
    if "+" in str(mask_file):
        raise ValueError(f"--setup.mask_file {mask_file}: a path with '+' cannot go into a method spec; move it")
    out = []
    for family in cfg.families:
        for budget in cfg.budgets:
            spec = setting_spec(family, budget, mask_file, int(tile))
            try:
                method = build_spec(spec, patch_nums, depth)
            except ValueError as e:
                raise ValueError(f"{setting_name(family, budget)}: {e}") from None
            out.append(Setting(family, float(budget), setting_name(family, budget), spec, method,
                               tuple(int(p) for p in patch_nums), pair_shares(method, patch_nums, depth)))
    return out


def adapters_by_spec(adapters: dict[str, AdapterSpec], settings: Sequence[Setting]) -> dict[str, AdapterSpec]:
    """The --setup.adapters keys (setting names or specs) as specs; ValueError for an unknown setting or one
    that is vanilla's computation (no accelerated latent to adapt)."""
    by_key = {s.name: s for s in settings} | {s.spec: s for s in settings}
    out = {}
    for key, value in adapters.items():
        s = by_key.get(key)
        if s is None:
            raise ValueError(f"--setup.adapters: {key!r} is not a measured setting (names: "
                             f"{', '.join(x.name for x in settings)})")
        if s.vanilla:
            raise ValueError(f"--setup.adapters: {key!r} computes exactly what vanilla computes; nothing to adapt")
        if s.spec in out:
            raise ValueError(f"--setup.adapters: {s.name} is given twice")
        out[s.spec] = value
    return out


# ---------------------------------------------------------------------------- the run
def run_masks(cfg: MasksConfig, output: Optional[str] = None, overwrite: bool = False) -> dict:
    """Measure every setting (module docstring); write masks.json, masks.md and masks.png to `output` if given
    (existing ones only with `overwrite`; everything is checked before any work). Returns the report with its
    markdown table under 'markdown'."""
    from radar_train.models import get_preset
    from radar_train.outputs import check_output_dir, staged_entries, write_report
    from radar_train.toyworld.measure import check_setup, run_measure

    preset = get_preset(cfg.model.preset)
    pns, depth = tuple(preset.var.patch_nums), preset.var.depth
    settings = plan_settings(cfg, pns, depth)
    adapters = adapters_by_spec(cfg.adapters, settings)
    measured = [s for s in settings if not s.vanilla]
    table = adapter_table(adapters, [s.spec for s in measured], option="--setup.adapters")
    folders = [f for named in table.values() for f in named.values()]
    mcfg = MeasureConfig(model=cfg.model, classifier=cfg.classifier, sampling=cfg.sampling,
                         methods=[s.spec for s in measured], adapters=adapters,
                         images_per_class=cfg.images_per_class, fid_reference_images=cfg.fid_reference_images,
                         base_seed=cfg.base_seed, num_heldout_images=cfg.num_heldout_images, grid_samples=1,
                         batch_size=cfg.batch_size, num_threads=cfg.num_threads)
    check_setup(mcfg)  # counts, seeds (the measurement's own checks, before the output's)
    if output is not None:
        check_output_dir(output, OUTPUT_FILES, "--output", overwrite=overwrite,
                         inputs={"--setup.adapters": folders, "--setup.classifier": cfg.classifier,
                                 "--setup.mask_file": cfg.mask_file,
                                 "--setup.model.vae_checkpoint": cfg.model.vae_checkpoint,
                                 "--setup.model.var_checkpoint": cfg.model.var_checkpoint})
    log.info("masks: %d settings (%d sampled, %d equal to vanilla), %d adapters", len(settings), len(measured),
             len(settings) - len(measured), len(folders))
    measure = run_measure(mcfg, command="radar-toy masks")
    report = build_report(cfg, settings, measure, pns)
    report["markdown"] = markdown_table(report)
    if output is not None:
        with staged_entries(output, OUTPUT_FILES, overwrite) as stage:
            write_report(stage, "masks", report)
            chart(report).save(stage / "masks.png")
    return report


_METRICS = ("class_accuracy", "psnr_vs_vanilla", "ssim_vs_vanilla", "latent_distance", "toy_fid",
            "toy_fid_vs_vanilla")


def build_report(cfg: MasksConfig, settings: Sequence[Setting], measure: dict, patch_nums: Sequence[int]) -> dict:
    """The masks.json document from the settings and `run_measure`'s report."""
    from radar_train.accel import SCAMask

    active = sorted({pn for s in settings if isinstance(s.method, SCAMask) for pn in s.method.scales}) or \
        _default_sides(patch_nums)
    head = {k: measure[k] for k in ("device", "torch", "cuda", "commit", "date", "command") if k in measure}
    rows = []
    for s in settings:
        row: dict = {"name": s.name, "family": s.family, "budget": s.budget, "spec": s.spec,
                     "method": s.method.describe(), "same_as_vanilla": s.vanilla,
                     "attention_share": {"per_scale": {str(pn): round(s.shares[pn], 4) for pn in active},
                                         "active_scales": round(attention_share(s.shares, patch_nums, active), 4),
                                         "all_scales": round(attention_share(s.shares, patch_nums), 4)}}
        if s.vanilla:
            row |= {k: measure["vanilla"].get(k) for k in ("class_accuracy", "toy_fid")}
            row |= {"psnr_vs_vanilla": None, "ssim_vs_vanilla": 1.0, "latent_distance": 0.0, "toy_fid_vs_vanilla": 0.0}
        else:
            m = measure["methods"][s.spec]
            row |= {k: m.get(k) for k in _METRICS}
            if m.get("adapters"):
                row["adapters"] = m["adapters"]
                row["groups"] = m.get("groups") or group_summary(m["adapters"])
        rows.append(row)
    report = {**head, "config": asdict(cfg), "sampling": asdict(cfg.sampling),
              "model": {"preset": cfg.model.preset, "patch_nums": list(patch_nums)},
              "active_scales": active, "num_samples": measure["num_samples"], "base_seed": measure["base_seed"],
              "notes": [
                  "SCA-Mask uses the compute budget only (memory budget 1: no KV eviction), so the three families "
                  "compare at equal attention; attention_share is the achieved share of vanilla's query-key pairs "
                  "(per active scale, over the active scales, over all scales), not the nominal budget",
                  "pts (FastVAR) also skips the FFN and projections of pruned tokens: at equal attention it "
                  "computes less than the masks",
                  "a setting that computes exactly vanilla's computation (budget 1) takes vanilla's numbers "
                  "(same_as_vanilla; PSNR vs vanilla is unbounded there and left empty)"],
              "reconstruction": measure["reconstruction"], "toy_fid": measure["toy_fid"],
              "vanilla": measure["vanilla"], "settings": rows}
    report["targets"] = targets(report)
    return report


def _default_sides(patch_nums: Sequence[int]) -> list[int]:
    from radar_train.accel.sca import default_scales

    return list(default_scales(patch_nums))


def _paa_groups(row: dict) -> dict[str, dict]:
    """{group: {metric: value}} of a setting's adapters: the group means where a group has several."""
    out = {}
    for group, g in (row.get("groups") or {}).items():
        out[group] = {k: (v["mean"] if isinstance(v, dict) else v) for k, v in g.items()
                      if k in _METRICS or k in ("g_mse", "delta_psnr", "fid_gap_closed")} | {"n": g["n"]}
    return out


def targets(report: dict) -> dict:
    """The issue's targets where the report has the numbers: at the 50 % budget SCA-Mask's class accuracy vs
    PTS's, and with PAA each family's class accuracy as a share of vanilla's (target >= 0.85)."""
    at = {r["family"]: r for r in report["settings"] if r["budget"] == PAA_BUDGET}
    van = report["vanilla"]["class_accuracy"]
    out: dict = {}
    if "sca" in at and "pts" in at:
        a, b = at["sca"]["class_accuracy"], at["pts"]["class_accuracy"]
        out["sca_vs_pts_at_0.5"] = {"sca": a, "pts": b, "difference": round(a - b, 4), "met": a >= b}
    paa = {}
    for family, row in at.items():
        for group, g in _paa_groups(row).items():
            ratio = g["class_accuracy"] / van if van else None
            paa[f"{family}+{group}"] = {"class_accuracy": g["class_accuracy"], "n": g["n"],
                                        "share_of_vanilla": None if ratio is None else round(ratio, 4),
                                        "met": ratio is not None and ratio >= PAA_TARGET}
    if paa:
        out["paa_at_0.5"] = {"target_share_of_vanilla": PAA_TARGET, "vanilla_class_accuracy": van, **paa}
    return out


# ---------------------------------------------------------------------------- outputs
def _f(v, kind: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{fixed(v, 1, scale=100)} %" if kind == "pct" else fixed(v, 2)  # (db, fid, share)


def markdown_table(report: dict) -> str:
    sides = [str(s) for s in report["active_scales"]]
    lines = [f"Toy world, {report['num_samples']} samples per run (seeds from {report['base_seed']}); attention "
             f"kept = achieved share of vanilla's query·key pairs on scales {' / '.join(sides)} and over them "
             f"(pair-weighted).", ""]
    tf = report.get("toy_fid") or {}
    if tf.get("baselines"):  # (the floor at this sample count, as every toy-FID report states it)
        base = tf["baselines"]
        lines += [f"Toy FID: {tf['num_samples']} samples per run, {tf['features']}, against "
                  f"{tf['reference']['num_images']} real toy renders (toy-world set {tf['reference']['world_seed']}); "
                  f"{tf['num_samples']} other real renders score {_f(base.get('real_renders'), 'fid')} (the floor at "
                  f"this count), their VQ-VAE reconstructions {_f(base.get('vqvae_reconstructions'), 'fid')}.", ""]
    lines += ["| setting | family | nominal budget | attention kept (" + " / ".join(sides) + ") | attention kept "
             "(active scales) | class accuracy | PSNR vs vanilla (dB) | toy FID |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    v = report["vanilla"]
    lines.append(f"| vanilla | – | 100 % | {' / '.join('1.00' for _ in sides)} | 1.00 | "
                 f"{_f(v['class_accuracy'], 'pct')} | – | {_f(v.get('toy_fid'), 'fid')} |")
    for r in report["settings"]:
        a = r["attention_share"]
        share = " / ".join(_f(a["per_scale"][s], "share") for s in sides)
        lines.append(f"| {r['name']}{' (= vanilla)' if r['same_as_vanilla'] else ''} | {FAMILY_TITLES[r['family']]} "
                     f"| {100 * r['budget']:g} % | {share} | {_f(a['active_scales'], 'share')} | "
                     f"{_f(r['class_accuracy'], 'pct')} | {_f(r['psnr_vs_vanilla'], 'db')} | {_f(r['toy_fid'], 'fid')} |")
        for name, ad in (r.get("adapters") or {}).items():
            lines.append(f"| {r['name']} + {name} | {FAMILY_TITLES[r['family']]} + PAA | {100 * r['budget']:g} % | "
                         f"{share} | {_f(a['active_scales'], 'share')} | {_f(ad.get('class_accuracy'), 'pct')} | "
                         f"{_f(ad.get('psnr_vs_vanilla'), 'db')} | {_f(ad.get('toy_fid'), 'fid')} |")
        for group, g in _paa_groups(r).items():
            if g["n"] > 1:
                lines.append(f"| {r['name']} + {group} (mean of {g['n']}) | {FAMILY_TITLES[r['family']]} + PAA | "
                             f"{100 * r['budget']:g} % | {share} | {_f(a['active_scales'], 'share')} | "
                             f"{_f(g.get('class_accuracy'), 'pct')} | {_f(g.get('psnr_vs_vanilla'), 'db')} | "
                             f"{_f(g.get('toy_fid'), 'fid')} |")
    t = report["targets"]
    lines += ["", "Targets:", ""]
    if "sca_vs_pts_at_0.5" in t:
        x = t["sca_vs_pts_at_0.5"]
        lines.append(f"- at the 50 % budget SCA-Mask's class accuracy {_f(x['sca'], 'pct')} vs PTS's "
                     f"{_f(x['pts'], 'pct')}: {'met' if x['met'] else 'not met'} (SCA-Mask >= PTS)")
    else:
        lines.append("- SCA-Mask vs PTS at the 50 % budget: not measured (needs both families at budget 0.5)")
    if "paa_at_0.5" in t:
        for key, x in t["paa_at_0.5"].items():
            if isinstance(x, dict):
                lines.append(f"- {key} at the 50 % budget: class accuracy {_f(x['class_accuracy'], 'pct')} = "
                             f"{_f(x['share_of_vanilla'], 'pct')} of vanilla's: "
                             f"{'met' if x['met'] else 'not met'} (>= {100 * PAA_TARGET:g} %)")
    else:
        lines.append("- PAA at the 50 % budget: no adapter given")
    lines += ["", "Notes:", ""] + [f"- {n}" for n in report["notes"] + list(tf.get("notes") or [])]
    return "\n".join(lines)


def chart(report: dict, size: tuple[int, int] = (800, 560)):
    """Two panels side by side: class accuracy and PSNR vs vanilla against the achieved attention share (over
    the active scales), one line per family, the PAA points (group means) as diamonds labelled with their
    group, vanilla's class accuracy as a dotted line; the PSNR panel marks vanilla's share (1) with a dotted
    vertical line (its PSNR against itself is unbounded)."""
    from PIL import Image

    from radar_train.images import CHART_COLOURS, ChartPoint, scatter_chart

    colours = {f: CHART_COLOURS[i] for i, f in enumerate(FAMILIES)}
    markers = {"sca": "circle", "window": "square", "pts": "triangle"}
    styles, panels = {}, []
    sides = ", ".join(str(s) for s in report["active_scales"])
    for metric, title, unit in (("class_accuracy", "class accuracy", "class accuracy (toy classifier)"),
                                ("psnr_vs_vanilla", "PSNR vs vanilla", "PSNR vs vanilla (dB)")):
        pts = []
        for r in report["settings"]:
            x = r["attention_share"]["active_scales"]
            fam = FAMILY_TITLES[r["family"]]
            styles[fam] = (colours[r["family"]], markers[r["family"]])
            if isinstance(r.get(metric), (int, float)):
                pts.append(ChartPoint(x, r[metric], "", fam))
            for group, g in _paa_groups(r).items():
                if isinstance(g.get(metric), (int, float)):
                    series = f"{fam} + PAA"
                    styles[series] = (colours[r["family"]], "diamond")
                    pts.append(ChartPoint(x, g[metric], "PAA" if group == "paa" else group, series))
        hl = [(report["vanilla"]["class_accuracy"], "vanilla")] if metric == "class_accuracy" else []
        panels.append(scatter_chart(pts, f"attention kept on scales {sides} (achieved share of vanilla's pairs)",
                                    unit, title=f"{title} vs attention budget (toy world)", styles=styles,
                                    lines=[FAMILY_TITLES[f] for f in FAMILIES], hlines=hl, size=size,
                                    vline=None if hl else 1.0))
    img = Image.new("RGB", (size[0] * 2, size[1]), (255, 255, 255))
    img.paste(panels[0], (0, 0))
    img.paste(panels[1], (size[0], 0))
    return img
