"""Restoration metrics of an adapter on held-out cache shards (methods.md §5.1).

T = D(f_HQ) (frozen decoder, vanilla latent), Q = D(f_LQ) (baseline), S = D_LoRA(f_LQ) (adapted),
H = D_LoRA(f_HQ) (harmlessness). PSNR / SSIM of Q and S against T, G_mse = 1 − MSE(S,T)/MSE(Q,T),
ΔPSNR, and PSNR(H, T); LPIPS of Q and S against T when local LPIPS weights are given. The same metrics in
bins of the latent distance d = ‖f_HQ − f_LQ‖/‖f_HQ‖ (`by_distance`, the §5.1 diagnostic).
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

import radar_train

from radar_train.cache.status import distance_summary, latent_distance
from radar_train.config import format_int_list
from radar_train.inference import by_distance
from radar_train.outputs import naming, staged_entries
from radar_train.train.metrics import RestorationStats

REPORT_FILES = ("eval.json", "eval.md")


@dataclass
class LpipsArgs:
    vgg: Optional[str] = None
    """torchvision VGG16 weights (vgg16-397923af.pth), for LPIPS."""
    heads: Optional[str] = None
    """LPIPS v0.1 linear heads (the lpips package's weights/v0.1/vgg.pth); default: torchmetrics' copy of it."""


def _adapter_shards(meta: dict, cache_dir: Path, manifest) -> Optional[list[int]]:
    """The adapter's validation shards in this cache, or None: the shards holding pairs of a validation shard
    the adapter records for a cache with this cache's pairs (`_records_for`; under this cache's shard size,
    so a copy made with another plan maps them) and none of its training pairs."""
    shards: set[int] = set()
    for record, by_content in _records_for(meta, cache_dir, manifest):
        val = [int(s) for s in record.get("val_shards") or []]
        shards |= set(_shards_meeting(manifest, range(manifest.num_shards), record, val) if by_content else val)
    shards -= set(train_shard_overlap(meta, cache_dir, manifest, sorted(shards)))
    return sorted(shards) or None


def _pairs_identity(d: dict) -> Optional[dict]:
    """What decides the pairs a cache holds for a sample (label, seed), from a manifest's or an adapter cache
    record's fields: the model's identity (not its checkpoint paths), the method's settings (not its files or
    kernel: `pipeline._accel_settings`), the sampling settings but the engine (radar_train.cache.schema
    INFORMATIONAL_FIELDS), the plan's sample rule and the transformer's precision (None in a record of before
    2026-12-06). None when the fields or the plan are not all there."""
    from radar_train.cache.plan import Plan
    from radar_train.cache.schema import INFORMATIONAL_FIELDS
    from radar_train.inference.pipeline import _accel_settings

    if not all(isinstance(d.get(k), dict) for k in ("model", "accel", "sampling", "plan")):
        return None
    try:
        Plan.from_dict(d["plan"])
    except (KeyError, TypeError):
        return None
    model = {k: v for k, v in d["model"].items() if f"model.{k}" not in INFORMATIONAL_FIELDS}
    sampling = {k: v for k, v in d["sampling"].items() if f"sampling.{k}" not in INFORMATIONAL_FIELDS}
    ident = {"model": model, "sampling": sampling, "rule": d["plan"].get("rule"), "precision": d.get("precision")}
    accel = _accel_settings(d["accel"])
    if any(k not in ("method", "preset") for k in accel):  # (as pipeline.accel_differences: where the method's
        accel.pop("preset", None)  # settings are recorded, a preset only names them; None for them given one by one)
    return {**json.loads(json.dumps(ident, default=str)), "accel": accel}


def _records_for(meta: dict, cache_dir: Path, manifest) -> list[tuple[dict, bool]]:
    """(record, by_content) for the adapter's cache records of this cache. A record names it by content when
    the pairs are decided alike (`_pairs_identity`: a copy elsewhere, one made with a larger plan or another
    shard size or engine; the record's path is relative to the folder training ran in); a record without those
    fields (an older adapter's) only by path, its shards then taken as this cache's shard numbers."""
    mine = _pairs_identity(manifest.to_dict())
    out = []
    for record in meta.get("caches") or []:
        if not isinstance(record, dict):
            continue
        theirs = _pairs_identity(record)
        if theirs is not None:  # (a record of before 2026-12-06 holds no precision: not compared on it)
            if theirs == (mine if theirs["precision"] is not None else {**mine, "precision": None}):
                out.append((record, True))
        elif record.get("path") and Path(record["path"]).resolve() == cache_dir.resolve():
            out.append((record, False))
    return out


def _samples(plan: dict, shards: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(seeds, labels) of the samples of `shards` under `plan` (radar_train.cache.plan: sample i has label
    classes[i mod n] and seed base_seed + i), sorted by seed; shards past the plan hold none."""
    from radar_train.cache.plan import Plan

    labels, seeds = Plan.from_dict(plan).shard_samples(shards)
    order = np.argsort(seeds, kind="stable")
    return seeds[order], labels[order]


def _shards_meeting(manifest, shards: Sequence[int], record: dict, record_shards: Sequence[int]) -> list[int]:
    """The shards among `shards` of this cache holding any sample (label, seed) of `record_shards` of the
    record's cache (whose pairs are this cache's: the same sample, the same pair)."""
    ref_seeds, ref_labels = _samples(record["plan"], record_shards)
    if not len(ref_seeds):
        return []
    out = []
    for s in shards:
        seeds, labels = _samples(manifest.plan, [s])
        pos = np.searchsorted(ref_seeds, seeds).clip(max=len(ref_seeds) - 1)  # a plan's seeds are distinct
        if ((ref_seeds[pos] == seeds) & (ref_labels[pos] == labels)).any():
            out.append(int(s))
    return out


def train_shard_overlap(meta: dict, cache_dir: str | Path, manifest, shards: Sequence[int]) -> list[int]:
    """The shards among `shards` of this cache holding pairs the adapter (its radar_config.yaml `meta`) was
    trained on: samples of its training shards, under the plan of the cache it recorded (`_records_for`)."""
    trained: set[int] = set()
    for record, by_content in _records_for(meta, Path(cache_dir), manifest):
        train = [int(s) for s in record.get("train_shards") or []]
        trained |= set(_shards_meeting(manifest, shards, record, train) if by_content else train)
    return sorted(trained & {int(s) for s in shards})


def other_latents(meta: dict, cache_dir: str | Path, manifest) -> list[str]:
    """How the cache's latents differ from those the adapter (its radar_config.yaml `meta`) was trained on, each as
    `another acceleration than C's (...)` / `another VAR than C's (...)`: metrics on them are of latents it was not
    trained to restore (radar-eval and radar-train validate warn of them). Empty when they are of its own."""
    from radar_train.inference.pipeline import untrained_accel, untrained_var

    trained = [c for c in meta.get("caches") or [] if isinstance(c, dict)]
    out = []
    accel = untrained_accel([c["accel"] for c in trained if c.get("accel")], manifest.accel)
    if accel:
        out.append(f"another acceleration than {cache_dir}'s ({'; '.join(accel)}, trained vs the cache's): the "
                   f"metrics are of latents it was not trained to restore")
    var = untrained_var([c.get("model") for c in trained], manifest.model)
    if var:
        out.append(f"another VAR than {cache_dir}'s ({var}, trained vs the cache's)")
    return out


def unknown_training_shards(meta: dict, cache_dir: str | Path, manifest) -> Optional[str]:
    """Why the adapter's metadata cannot tell which of this cache's shards it was trained on (no `caches`
    record at all, or its record of this cache without `train_shards`: a hand-made or edited radar_config.yaml;
    radar-train always writes both); None when it can."""
    if not meta.get("caches"):
        return "its radar_config.yaml records no training caches"
    matched = _records_for(meta, Path(cache_dir), manifest)
    if any(record.get("train_shards") is None for record, _ in matched):
        return "its radar_config.yaml record of this cache has no train_shards"
    unmatched = [r for r in meta["caches"] if isinstance(r, dict) and _pairs_identity(r) is None
                 and not any(r is m for m, _ in matched)]
    if unmatched:  # an older record names its cache by a path relative to where training ran: maybe this one
        named = ", ".join(str(r.get("path")) for r in unmatched)
        return (f"its radar_config.yaml records a training cache by path only ({named}, relative to the folder "
                f"training ran in: an older adapter's record, without the cache's model, accel, sampling and plan), "
                f"which may be this cache")
    return None


def load_decoders(manifest, meta: dict, adapter_dir: str, vae_checkpoint: Optional[str], device):
    """(plain decoder, adapted decoder (merged), identity) for the cache's VQ-VAE."""
    from radar_train.export import load_adapter
    from radar_train.models import get_preset, identity_seed, load_latent_decoder

    model = manifest.model
    vae_id = model["vae"]
    if vae_id["kind"] != "file" and vae_checkpoint is not None:
        raise ValueError(f"--vae_checkpoint {vae_checkpoint}: the cache was made with a randomly initialised VQ-VAE "
                         f"({vae_id['kind']}:{vae_id['value']}), not a file: leave out --vae_checkpoint")
    ckpt = vae_checkpoint
    if ckpt is None and vae_id["kind"] == "file" and model.get("vae_checkpoint") and Path(model["vae_checkpoint"]).is_file():
        ckpt = model["vae_checkpoint"]  # the file the cache was made with, if it is still there
    try:
        plain, ident = load_latent_decoder(model["preset"], ckpt, identity_seed(vae_id), device)
    except ValueError as e:
        source = (repr(model["vae_checkpoint"]) if model.get("vae_checkpoint")
                  else f"packaged with the {model['preset']} preset")  # (no --vae_checkpoint: the preset's own)
        made = f"the cache was made with the VQ-VAE file {source} (sha256 {vae_id['value'][:12]}…)"
        if vae_checkpoint is None:
            raise FileNotFoundError(f"{made}, which is not here: pass --vae_checkpoint ({e})") from None
        raise ValueError(f"--vae_checkpoint {vae_checkpoint} does not load: {e} ({made})") from None
    if (ident.kind, ident.value) != (vae_id["kind"], vae_id["value"]):
        gone = model.get("vae_checkpoint") if vae_checkpoint is None and vae_id["kind"] == "file" else None
        if gone and not Path(gone).is_file():  # (the preset's own weights were loaded in its place: say why)
            raise FileNotFoundError(f"the cache was made with the VQ-VAE file {gone!r} (sha256 "
                                    f"{vae_id['value'][:12]}…), which is not here: pass --vae_checkpoint")
        raise ValueError(f"VQ-VAE {ident.kind}:{ident.value[:16]} is not the one the cache was made with "
                         f"({vae_id['kind']}:{vae_id['value'][:16]}); pass the right --vae_checkpoint")
    adapted, _ = load_latent_decoder(model["preset"], ckpt, identity_seed(vae_id), device)
    # a label-conditioned adapter must have the class count of the cache's generator
    num_classes = get_preset(model["preset"]).var.num_classes
    adapted = load_adapter(adapted, adapter_dir, identity=ident, merge=True, num_classes=num_classes).eval()
    return plain.eval(), adapted, ident


@torch.no_grad()
def evaluate_restoration(cache_dir: str, adapter_dir: str, shards: Optional[Sequence[int]] = None,
                         batch_size: int = 32, device: str = "cpu", vae_checkpoint: Optional[str] = None,
                         lpips: Optional[LpipsArgs] = None, num_workers: int = 0,
                         allow_train_shards: bool = False, progress: bool = False, distance_bins: int = 4) -> dict:
    """Restoration metrics of the adapter on `shards` of the cache (default: the adapter's validation shards).
    Shards holding pairs the adapter was trained on, in this cache or in one with the same pairs (a copy, a
    larger plan, another shard size: `train_shard_overlap`), are refused (ValueError naming them) unless
    `allow_train_shards`, which warns and records them in the result (`train_shard_overlap`, `held_out` false).
    `progress`: show the pairs done (radar_train.progress: a bar on a terminal, lines in a log). `distance_bins`:
    the metrics also in that many equal-count bins of the latent distance d = ‖f_HQ − f_LQ‖/‖f_HQ‖
    (`by_distance`; 0: none), with d's percentiles."""
    from radar_train.cache.reader import BlockShuffleSampler, PairDataset
    from radar_train.cache.schema import read_manifest
    from radar_train.export import adapter_version, check_adapter, check_same_adapter, decode_with_labels
    from radar_train.progress import Progress

    cache = Path(cache_dir)
    manifest = read_manifest(cache)
    version = adapter_version(adapter_dir)  # (the shards and the verdict below are of the weights loaded later)
    meta = check_adapter(adapter_dir)
    given = shards is not None
    if shards is None:
        shards = _adapter_shards(meta, cache, manifest)
        if shards is None:
            raise ValueError(f"adapter {adapter_dir} records no validation shards of {cache} (no shard of it holds "
                             f"validation samples of the adapter and none of its training samples): pass --shards")
    if not shards:
        raise ValueError("--shards is empty: name the shards to evaluate")
    if len(set(shards)) != len(shards):
        raise ValueError(f"--shards {format_int_list(shards, ',')} lists a shard twice")
    if lpips is not None and lpips.heads and not lpips.vgg:
        raise ValueError("--lpips.heads without --lpips.vgg: LPIPS needs the local VGG16 weights too (or neither "
                         "file: no LPIPS)")
    unknown = unknown_training_shards(meta, cache, manifest)
    if unknown:  # whether the metrics are held-out cannot be said: not called held-out
        if not allow_train_shards:
            named = format_int_list(shards, ",")
            which = "--shards" if given else "its validation shards"
            raise ValueError(f"adapter {adapter_dir}: {unknown}, so whether {which} {named} of {cache} "
                             f"hold pairs it was trained on is unknown; pass --allow_train_shards to evaluate them "
                             f"anyway (eval.json then says held_out null)")
        warnings.warn(f"radar-eval: adapter {adapter_dir}: {unknown}: the metrics may include pairs it was trained "
                      f"on", stacklevel=3)  # (the caller's line: 2 is torch.no_grad's wrapper)
    from radar_train.inference.pipeline import untrained_accel

    accel_diffs = untrained_accel([c["accel"] for c in meta.get("caches") or [] if c.get("accel")], manifest.accel)
    for other in other_latents(meta, cache, manifest):  # (as RadarPipeline warns; accel_diffs goes into the report)
        warnings.warn(f"radar-eval: adapter {adapter_dir} was trained on latents of {other}", stacklevel=3)
    overlap = train_shard_overlap(meta, cache, manifest, shards)
    named = format_int_list(overlap, ",")
    if overlap and not allow_train_shards:
        raise ValueError(f"--shards {named} of {cache} are training shards of the adapter {adapter_dir} "
                         f"(they hold samples of its radar_config.yaml caches[*].train_shards): metrics on them are not held-out; "
                         f"evaluate other shards, or pass --allow_train_shards to evaluate them anyway")
    if overlap:
        warnings.warn(f"radar-eval: shards {named} of {cache} are training shards of the adapter "
                      f"{adapter_dir}: the metrics include pairs it was trained on (not held-out)", stacklevel=3)
    # every shard checked against its stored checksums: data that is not what the writer wrote (a chunk file
    # gone reads as zeros) is refused, not measured
    ds = PairDataset(cache, shards=list(shards), keep_tokens=True)  # (the token agreement from the same read)
    dev = torch.device(device)
    plain, adapted, _ = load_decoders(manifest, meta, adapter_dir, vae_checkpoint, dev)
    check_same_adapter(adapter_dir, version)
    lp = None
    if lpips is not None and lpips.vgg:
        from radar_train.train.lpips import load_lpips

        lp = load_lpips(lpips.vgg, lpips.heads or None, ("--lpips.vgg", "--lpips.heads")).to(dev).eval()
    # nothing is read back to the host before the end (each readback waits for the batch's kernels, so that the
    # host could not queue the next batch meanwhile), and the pairs go to a GPU from pinned memory without blocking
    cuda = dev.type == "cuda"
    loader = DataLoader(ds, batch_size=batch_size, sampler=BlockShuffleSampler(ds, shuffle=False),
                        num_workers=num_workers, pin_memory=cuda)
    stats = RestorationStats(dev)
    lp_sums = torch.zeros(2, dtype=torch.float64, device=dev)
    dists: list[np.ndarray] = []
    per_image: dict[str, list[torch.Tensor]] = {}

    def img(dec, f, labels=None):  # a label-conditioned adapter decodes with the cache's labels
        return decode_with_labels(dec, f, labels).clamp(-1, 1).add(1).mul(0.5)

    for batch in Progress(len(ds), "radar-eval", "pairs", enabled=progress).iterate(loader, lambda b: len(b["label"])):
        hq, lq = (batch[k].to(dev, non_blocking=cuda) for k in ("fhat_hq", "fhat_lq"))
        labels = batch["label"]  # (on the host: a label-conditioned adapter checks them there)
        t, q, s, h = img(plain, hq), img(plain, lq), img(adapted, lq, labels), img(adapted, hq, labels)
        for key, v in stats.update(t, q, s, h).items():
            per_image.setdefault(key, []).append(v.double())
        dists.append(latent_distance(batch["fhat_hq"].numpy(), batch["fhat_lq"].numpy()))
        if lp is not None:
            lp_sums[0] += lp(q * 2 - 1, t * 2 - 1).double().sum()
            lp_sums[1] += lp(s * 2 - 1, t * 2 - 1).double().sum()
    m = stats.compute()
    n = int(stats.sums[0].item())
    out = {"num_pairs": n, "shards": list(shards), "psnr_baseline": m["psnr_baseline"], "psnr_adapted": m["psnr_student"],
           "ssim_baseline": m["ssim_baseline"], "ssim_adapted": m["ssim_student"], "gap_closed": _finite(m["gap_closed_mse"]),
           "delta_psnr": m["delta_psnr"], "delta_ssim": m["delta_ssim"], "harmlessness_psnr": m.get("psnr_harmless"),
           "mse_baseline": m["mse_baseline"], "mse_adapted": m["mse_student"], "cache": str(cache),
           "adapter": str(adapter_dir), "accel": manifest.accel, "accel_differences": accel_diffs,
           "model": manifest.model.get("preset"),
           "held_out": None if unknown and not overlap else not overlap, "train_shard_overlap": overlap,
           "label_conditioned": bool(getattr(adapted, "label_conditioned", False)),
           "radar_train": radar_train.__version__}  # (the code that measured it)
    if lp is not None:
        out["lpips_baseline"], out["lpips_adapted"] = (lp_sums / max(n, 1)).tolist()
        out["delta_lpips"] = out["lpips_adapted"] - out["lpips_baseline"]  # (< 0: the adapter is closer)
    out["token_agreement"] = _token_agreement(manifest, ds.tokens_hq, ds.tokens_lq)
    if dists:
        d = np.concatenate(dists)
        out["latent_distance"] = distance_summary(d)
        if distance_bins > 0:
            out["by_latent_distance"] = by_distance.distance_bins(
                d, {k: torch.cat(v).cpu().numpy() for k, v in per_image.items()}, distance_bins)
    return out


def _token_agreement(manifest, hq: np.ndarray, lq: np.ndarray) -> dict[str, Optional[float]]:
    """{scale side: share of LQ tokens equal to HQ's} over the evaluated pairs' token indices (null: a scale the LQ
    run skipped): where acceleration changed the token map (methods.md §5.1's second diagnostic)."""
    from radar_train.cache.status import token_agreement

    shares = token_agreement(manifest.patch_nums, hq, lq)
    return {str(pn): a for pn, a in zip(manifest.patch_nums, shares)}


def _finite(x: float) -> Optional[float]:
    """None for NaN (JSON has no NaN: a strict reader refuses eval.json holding one)."""
    return None if math.isnan(x) else x


def markdown_table(r: dict) -> str:
    rows = [("PSNR (dB) vs vanilla decode", r["psnr_baseline"], r["psnr_adapted"]),
            ("SSIM vs vanilla decode", r["ssim_baseline"], r["ssim_adapted"])]
    if "lpips_baseline" in r:
        rows.append(("LPIPS vs vanilla decode", r["lpips_baseline"], r["lpips_adapted"]))
    shards = format_int_list(r["shards"])  # (ranges: 2,000 shard ids made a 23 kB title)
    if r.get("held_out", True) is None:
        title = (f"Restoration on {r['num_pairs']} pairs (shards {shards}) of {r['cache']}: held-out UNKNOWN, "
                 f"the adapter's metadata does not record its training shards")
    elif r.get("held_out", True):
        title = f"Restoration on {r['num_pairs']} held-out pairs (shards {shards}) of {r['cache']}"
    else:
        title = (f"Restoration on {r['num_pairs']} pairs (shards {shards}) of {r['cache']}: NOT held-out, "
                 f"the adapter was trained on shards {format_int_list(r['train_shard_overlap'])}")
    lines = [title,
             "", "| metric | accelerated (baseline) | accelerated + adapter |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {a:.4f} | {b:.4f} |" for name, a, b in rows]
    gap = ("undefined: MSE(baseline) is 0, the accelerated latents decode exactly as the vanilla ones"
           if r["gap_closed"] is None else f"**{r['gap_closed']:.3f}**")
    lines += ["", f"- gap closed G_mse = 1 − MSE(adapted)/MSE(baseline): {gap}",
              f"- ΔPSNR: {r['delta_psnr']:+.3f} dB, ΔSSIM: {r['delta_ssim']:+.4f}"
              + (f", ΔLPIPS: {r['delta_lpips']:+.4f}" if r.get("delta_lpips") is not None else "")]
    if r.get("harmlessness_psnr") is not None:
        lines.append(f"- harmlessness PSNR(D_LoRA(f_HQ), D(f_HQ)): {r['harmlessness_psnr']:.2f} dB")
    if r.get("latent_distance"):
        ld = r["latent_distance"]
        lines.append(f"- latent distance d = ‖f_HQ − f_LQ‖/‖f_HQ‖ per pair: mean {ld['mean']:.4f}, "
                     f"p50 {ld['p50']:.4f}, p95 {ld['p95']:.4f}, max {ld['max']:.4f}")
    if r.get("token_agreement"):
        shares = " ".join("skip" if a is None else f"{a:.2f}" for a in r["token_agreement"].values())
        lines.append(f"- LQ tokens equal to HQ, per scale {', '.join(r['token_agreement'])}: {shares}")
    if r.get("by_latent_distance"):
        lines += ["", f"By latent distance ({len(r['by_latent_distance'])} bins of equal pair count, d ascending):", "",
                  *by_distance.markdown_rows(r["by_latent_distance"])]
    return "\n".join(lines) + "\n"


def write_report(r: dict, out_dir: str | Path, overwrite: bool = True) -> tuple[Path, Path]:
    """eval.json and eval.md in `out_dir`, moved in together once both are written (staged_entries: a failed
    write leaves the earlier pair, or no folder it created); the caller checks beforehand that replacing them
    is allowed (`radar_train.outputs.check_output_dir`); without `overwrite`, reports that appeared since are not
    replaced (OutputError)."""
    out = Path(out_dir)
    with staged_entries(out, REPORT_FILES, overwrite) as stage:
        with naming(out / REPORT_FILES[0]):  # (a full disk: said of the file, not of nothing)
            (stage / REPORT_FILES[0]).write_text(json.dumps(r, indent=2), encoding="utf-8")
        with naming(out / REPORT_FILES[1]):
            (stage / REPORT_FILES[1]).write_text(markdown_table(r), encoding="utf-8")
    return out / REPORT_FILES[0], out / REPORT_FILES[1]
