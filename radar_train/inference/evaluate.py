"""Restoration metrics of an adapter on held-out cache shards (methods.md §5.1).

T = D(f_HQ) (frozen decoder, vanilla latent), Q = D(f_LQ) (baseline), S = D_LoRA(f_LQ) (adapted),
H = D_LoRA(f_HQ) (harmlessness). PSNR / SSIM of Q and S against T, G_mse = 1 − MSE(S,T)/MSE(Q,T),
ΔPSNR, and PSNR(H, T); LPIPS of Q and S against T when local LPIPS weights are given.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.utils.data import DataLoader

from radar_train.outputs import write_text_atomic
from radar_train.train.metrics import RestorationStats

REPORT_FILES = ("eval.json", "eval.md")


@dataclass
class LpipsArgs:
    vgg: Optional[str] = None
    """torchvision VGG16 weights (vgg16-397923af.pth), for LPIPS."""
    heads: Optional[str] = None
    """LPIPS v0.1 linear heads (the lpips package's weights/v0.1/vgg.pth)."""


def _adapter_shards(meta: dict, cache_dir: Path, manifest) -> Optional[list[int]]:
    """The validation shards the adapter's records of this cache name (`_same_cache`: a record's path is
    relative to the folder training ran in, so the content decides too), or None."""
    shards = {int(s) for c in meta.get("caches") or [] if isinstance(c, dict) and _same_cache(c, cache_dir, manifest)
              for s in c.get("val_shards") or []}
    return sorted(shards) or None


def _same_cache(record: dict, cache_dir: Path, manifest) -> bool:
    """Whether an adapter's cache record names this cache: the same folder, or a cache with the same content
    (model, method, sampling and plan, so the same pairs: e.g. a copy elsewhere)."""
    if record.get("path") and Path(record["path"]).resolve() == cache_dir.resolve():
        return True
    keys = ("model", "accel", "sampling", "plan")
    return all(k in record for k in keys) and all(record[k] == getattr(manifest, k) for k in keys)


def train_shard_overlap(meta: dict, cache_dir: str | Path, manifest, shards: Sequence[int]) -> list[int]:
    """The shards among `shards` that the adapter (its radar_config.yaml `meta`) was trained on in this cache."""
    trained: set[int] = set()
    for record in meta.get("caches") or []:
        if isinstance(record, dict) and _same_cache(record, Path(cache_dir), manifest):
            trained |= {int(s) for s in record.get("train_shards") or []}
    return sorted(trained & {int(s) for s in shards})


def _seed_of(identity: dict) -> Optional[int]:
    m = re.search(r"seed=(\d+)", str(identity.get("value", "")))
    return int(m.group(1)) if identity.get("kind") == "random" and m else None


def load_decoders(manifest, meta: dict, adapter_dir: str, vae_checkpoint: Optional[str], device):
    """(plain decoder, adapted decoder (merged), identity) for the cache's VQ-VAE."""
    from radar_train.export import load_adapter
    from radar_train.models import get_preset, load_latent_decoder

    model = manifest.model
    vae_id = model["vae"]
    ckpt = vae_checkpoint
    if ckpt is None and vae_id["kind"] == "file" and model.get("vae_checkpoint") and Path(model["vae_checkpoint"]).is_file():
        ckpt = model["vae_checkpoint"]  # the file the cache was made with, if it is still there
    try:
        plain, ident = load_latent_decoder(model["preset"], ckpt, _seed_of(vae_id), device)
    except ValueError as e:
        raise FileNotFoundError(f"the cache was made with the VQ-VAE file {model.get('vae_checkpoint')!r} "
                                f"(sha256 {vae_id['value'][:12]}…), which is not here: pass --vae_checkpoint ({e})") from None
    if (ident.kind, ident.value) != (vae_id["kind"], vae_id["value"]):
        raise ValueError(f"VQ-VAE {ident.kind}:{ident.value[:16]} is not the one the cache was made with "
                         f"({vae_id['kind']}:{vae_id['value'][:16]}); pass the right --vae_checkpoint")
    adapted, _ = load_latent_decoder(model["preset"], ckpt, _seed_of(vae_id), device)
    # a label-conditioned adapter must have the class count of the cache's generator
    num_classes = get_preset(model["preset"]).var.num_classes
    adapted = load_adapter(adapted, adapter_dir, identity=ident, merge=True, num_classes=num_classes).eval()
    return plain.eval(), adapted, ident


@torch.no_grad()
def evaluate_restoration(cache_dir: str, adapter_dir: str, shards: Optional[Sequence[int]] = None,
                         batch_size: int = 32, device: str = "cpu", vae_checkpoint: Optional[str] = None,
                         lpips: Optional[LpipsArgs] = None, num_workers: int = 0,
                         allow_train_shards: bool = False, progress: bool = False) -> dict:
    """Restoration metrics of the adapter on `shards` of the cache (default: the adapter's validation shards).
    Shards the adapter was trained on are refused (ValueError naming them) unless `allow_train_shards`, which
    warns and records them in the result (`train_shard_overlap`, `held_out` false). `progress`: show the pairs
    done (radar_train.progress: a bar on a terminal, lines in a log)."""
    from radar_train.cache.reader import BlockShuffleSampler, PairDataset
    from radar_train.cache.schema import read_manifest
    from radar_train.export import check_adapter, decode_with_labels
    from radar_train.progress import Progress

    cache = Path(cache_dir)
    manifest = read_manifest(cache)
    meta = check_adapter(adapter_dir)
    if shards is None:
        shards = _adapter_shards(meta, cache, manifest)
        if shards is None:
            raise ValueError(f"adapter {adapter_dir} records no validation shards of {cache}: pass --shards")
    if not shards:
        raise ValueError("--shards is empty: name the shards to evaluate")
    if lpips is not None and bool(lpips.vgg) != bool(lpips.heads):
        given, missing = ("--lpips.vgg", "--lpips.heads") if lpips.vgg else ("--lpips.heads", "--lpips.vgg")
        raise ValueError(f"{given} without {missing}: LPIPS needs both local weight files (or neither: no LPIPS)")
    overlap = train_shard_overlap(meta, cache, manifest, shards)
    if overlap and not allow_train_shards:
        raise ValueError(f"--shards {_ranges(overlap)} of {cache} are training shards of the adapter {adapter_dir} "
                         f"(its radar_config.yaml caches[*].train_shards): metrics on them are not held-out; "
                         f"evaluate other shards, or pass --allow_train_shards to evaluate them anyway")
    if overlap:
        warnings.warn(f"radar-eval: shards {_ranges(overlap)} of {cache} are training shards of the adapter "
                      f"{adapter_dir}: the metrics include pairs it was trained on (not held-out)", stacklevel=2)
    dev = torch.device(device)
    plain, adapted, _ = load_decoders(manifest, meta, adapter_dir, vae_checkpoint, dev)
    lp = None
    if lpips is not None and (lpips.vgg or lpips.heads):
        from radar_train.train.lpips import load_lpips

        lp = load_lpips(lpips.vgg, lpips.heads, ("--lpips.vgg", "--lpips.heads")).to(dev).eval()
    ds = PairDataset(cache, shards=list(shards))
    loader = DataLoader(ds, batch_size=batch_size, sampler=BlockShuffleSampler(ds, shuffle=False),
                        num_workers=num_workers)
    stats = RestorationStats(dev)
    lp_sums = torch.zeros(2, dtype=torch.float64)

    def img(dec, f, labels=None):  # a label-conditioned adapter decodes with the cache's labels
        return decode_with_labels(dec, f, labels).clamp(-1, 1).add(1).mul(0.5)

    for batch in Progress(len(ds), "radar-eval", "pairs", enabled=progress).iterate(loader, lambda b: len(b["label"])):
        hq, lq, labels = batch["fhat_hq"].to(dev), batch["fhat_lq"].to(dev), batch["label"].to(dev)
        t, q, s, h = img(plain, hq), img(plain, lq), img(adapted, lq, labels), img(adapted, hq, labels)
        stats.update(t, q, s, h)
        if lp is not None:
            lp_sums[0] += lp(q * 2 - 1, t * 2 - 1).double().sum().cpu()
            lp_sums[1] += lp(s * 2 - 1, t * 2 - 1).double().sum().cpu()
    m = stats.compute()
    n = int(stats.sums[0].item())
    out = {"num_pairs": n, "shards": list(shards), "psnr_baseline": m["psnr_baseline"], "psnr_adapted": m["psnr_student"],
           "ssim_baseline": m["ssim_baseline"], "ssim_adapted": m["ssim_student"], "gap_closed": _finite(m["gap_closed_mse"]),
           "delta_psnr": m["delta_psnr"], "delta_ssim": m["delta_ssim"], "harmlessness_psnr": m.get("psnr_harmless"),
           "mse_baseline": m["mse_baseline"], "mse_adapted": m["mse_student"], "cache": str(cache),
           "adapter": str(adapter_dir), "accel": manifest.accel, "model": manifest.model.get("preset"),
           "held_out": not overlap, "train_shard_overlap": overlap,
           "label_conditioned": bool(getattr(adapted, "label_conditioned", False))}
    if lp is not None:
        out["lpips_baseline"], out["lpips_adapted"] = (lp_sums / max(n, 1)).tolist()
    return out


def _finite(x: float) -> Optional[float]:
    """None for NaN (JSON has no NaN: a strict reader refuses eval.json holding one)."""
    return None if math.isnan(x) else x


def markdown_table(r: dict) -> str:
    rows = [("PSNR (dB) vs vanilla decode", r["psnr_baseline"], r["psnr_adapted"]),
            ("SSIM vs vanilla decode", r["ssim_baseline"], r["ssim_adapted"])]
    if "lpips_baseline" in r:
        rows.append(("LPIPS vs vanilla decode", r["lpips_baseline"], r["lpips_adapted"]))
    if r.get("held_out", True):
        title = f"Restoration on {r['num_pairs']} held-out pairs (shards {r['shards']}) of {r['cache']}"
    else:
        title = (f"Restoration on {r['num_pairs']} pairs (shards {r['shards']}) of {r['cache']}: NOT held-out, "
                 f"the adapter was trained on shards {r['train_shard_overlap']}")
    lines = [title,
             "", "| metric | accelerated (baseline) | accelerated + adapter |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {a:.4f} | {b:.4f} |" for name, a, b in rows]
    gap = ("undefined: MSE(baseline) is 0, the accelerated latents decode exactly as the vanilla ones"
           if r["gap_closed"] is None else f"**{r['gap_closed']:.3f}**")
    lines += ["", f"- gap closed G_mse = 1 − MSE(adapted)/MSE(baseline): {gap}",
              f"- ΔPSNR: {r['delta_psnr']:+.3f} dB, ΔSSIM: {r['delta_ssim']:+.4f}"]
    if r.get("harmlessness_psnr") is not None:
        lines.append(f"- harmlessness PSNR(D_LoRA(f_HQ), D(f_HQ)): {r['harmlessness_psnr']:.2f} dB")
    return "\n".join(lines) + "\n"


def _ranges(shards: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    out, run = [], []
    for s in sorted(shards):
        if run and s == run[-1] + 1:
            run.append(s)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [s]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def write_report(r: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """eval.json and eval.md in `out_dir` (each written to a temporary file and renamed; the caller checks
    beforehand that replacing them is allowed: `radar_train.outputs.check_output_dir`)."""
    out = Path(out_dir)
    js = write_text_atomic(out / REPORT_FILES[0], json.dumps(r, indent=2))
    md = write_text_atomic(out / REPORT_FILES[1], markdown_table(r))
    return js, md
