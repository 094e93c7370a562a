"""`radar-toy measure`: what the toy models do, what acceleration breaks, what PAA wins back.

- reconstruction PSNR of the VQ-VAE on held-out toy images;
- class accuracy (the toy classifier's verdict) of vanilla samples, per-sample seeds held out from
  any PAA cache;
- per acceleration setting (`fastvar:default`, `stagevar:paper`, ...): PSNR of the accelerated image
  against the vanilla image of the same label and seed, and its class accuracy;
- per setting with an adapter: the restoration metrics of methods.md §5.1 (T = vanilla image, Q =
  accelerated image, S = accelerated latent through the adapted decoder): gap closed G_mse, ΔPSNR,
  and the class accuracy of S.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from radar_train.accel import AccelMethod, build_accel
from radar_train.config import AccelArgs, ModelArgs, SamplingConfig
from radar_train.images import save_grid, to_uint8
from radar_train.models import VQVAE, ModelIdentity, load_models, read_state_dict
from radar_train.sampling import NextScaleSampler
from radar_train.toyworld.classifier import ToyClassifier, accuracy
from radar_train.toyworld.common import make_bank
from radar_train.toyworld.data import CLASS_NAMES, HELDOUT_SEED, NUM_CLASSES
from radar_train.toyworld.preset import CLASSIFIER_FILE, WEIGHTS_DIR
from radar_train.toyworld.train_vqvae import reconstruction_psnr
from radar_train.train.metrics import RestorationStats, psnr_per_image

log = logging.getLogger(__name__)

DEFAULT_METHODS = ["fastvar:default", "fastvar:aggressive", "stagevar:default", "stagevar:paper"]


def _toy_model() -> ModelArgs:
    return ModelArgs(preset="toy")


def _toy_sampling() -> SamplingConfig:
    return SamplingConfig(cfg=3.0, top_k=32, top_p=0.0, noise="per_sample")


@dataclass
class MeasureConfig:
    """What `radar-toy measure` measures."""

    model: ModelArgs = field(default_factory=_toy_model)
    """VQ-VAE + VAR (default: the shipped toy weights)."""
    classifier: Optional[str] = None
    """Toy classifier weights (default: the shipped toy_classifier.safetensors)."""
    sampling: SamplingConfig = field(default_factory=_toy_sampling)
    """Sampler settings of every run (vanilla and accelerated)."""
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    """Acceleration settings as method:preset (fastvar: default | mild | aggressive; stagevar: default | paper;
    sca:<options>, e.g. sca:default+mask_file=radar_train/toyworld/weights/toy_sca_mask.safetensors)."""
    adapters: dict[str, str] = field(default_factory=dict)
    """method:preset -> adapter folder exported by radar-train, for the PAA rows."""
    images_per_class: int = 20
    """Samples per class for every run."""
    base_seed: int = 1_000_000
    """Sample i gets seed base_seed + i (keep clear of the seeds of PAA caches)."""
    num_heldout_images: int = 200
    """Held-out toy images for the reconstruction PSNR."""
    grid_samples: int = 6
    """Samples shown in the comparison grid (one row each)."""
    batch_size: int = 50
    """Samples per sampler call."""
    num_threads: int = 2
    """CPU threads."""


def parse_method(spec: str) -> AccelArgs:
    """'fastvar:aggressive' -> AccelArgs(method='fastvar', fastvar.preset='aggressive'); 'sca:<options>'
    (`radar_train.accel.sca.args_from_spec`, e.g. 'sca:default+mask_file=m.safetensors')."""
    method, _, preset = spec.partition(":")
    if method == "sca" and preset:
        from radar_train.accel.sca import args_from_spec

        return AccelArgs(method="sca", sca=args_from_spec(preset))
    if method not in ("fastvar", "stagevar") or not preset:
        raise ValueError(f"methods: {spec!r} is not fastvar:<preset>, stagevar:<preset> or sca:<options>")
    args = AccelArgs(method=method)
    getattr(args, method).preset = preset
    return args


def load_classifier(path: Optional[str] = None, device: torch.device | str = "cpu") -> ToyClassifier:
    """The toy classifier from `path` (default: the shipped file), in eval mode."""
    p = Path(path) if path else WEIGHTS_DIR / CLASSIFIER_FILE
    if not p.is_file():
        raise FileNotFoundError(f"classifier weights {p} not found (radar-toy train writes {CLASSIFIER_FILE})")
    sd = read_state_dict(p)
    width = int(sd["features.0.0.weight"].shape[0])
    model = ToyClassifier(width=width)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    return model.to(device).eval()


def sample_plan(cfg: MeasureConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and seeds of the measured samples: `images_per_class` per class, interleaved, seeds from
    `base_seed` on."""
    n = NUM_CLASSES * cfg.images_per_class
    return torch.arange(n) % NUM_CLASSES, cfg.base_seed + torch.arange(n)


@torch.no_grad()
def sample_fhat(sampler: NextScaleSampler, labels: torch.Tensor, seeds: torch.Tensor, batch_size: int,
                accel: Optional[AccelMethod] = None) -> torch.Tensor:
    """Final f_hat of every sample (batches of `batch_size`), vanilla or with `accel`."""
    out = []
    for i in range(0, labels.shape[0], batch_size):
        res = sampler.sample(labels[i:i + batch_size], seeds=seeds[i:i + batch_size].tolist(), accel=accel)
        out.append(res.f_hat)
    return torch.cat(out)


@torch.no_grad()
def decode01(decoder: torch.nn.Module, f_hat: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
    """f_hat -> images in [0, 1] with a VQVAE or a (possibly adapted) LatentDecoder."""
    fn = decoder.fhat_to_img if isinstance(decoder, VQVAE) else (lambda f: decoder(f).clamp(-1, 1))
    return torch.cat([fn(f_hat[i:i + batch_size]).add(1).mul(0.5) for i in range(0, f_hat.shape[0], batch_size)])


def load_adapted_decoder(vqvae: VQVAE, adapter_dir: str, identity: ModelIdentity) -> torch.nn.Module:
    """A copy of the VQ-VAE's decoder with the adapter merged in."""
    from radar_train.export import load_adapter

    if not Path(adapter_dir).is_dir():
        raise FileNotFoundError(f"adapters: {adapter_dir} is not an adapter folder")
    return load_adapter(vqvae.latent_decoder().eval(), adapter_dir, identity=identity, merge=True).eval()


def run_measure(cfg: MeasureConfig, output: Optional[str] = None) -> dict:
    """Measure everything in `cfg`; writes metrics.json, metrics.md and toyworld_grid.png to `output`
    if given. Returns the metrics plus their markdown table under 'markdown'."""
    torch.set_num_threads(cfg.num_threads)
    unknown = sorted(set(cfg.adapters) - set(cfg.methods))
    if unknown:
        raise ValueError(f"adapters given for {unknown}, which are not in methods {cfg.methods}")
    m = cfg.model
    vqvae, var, vae_id, var_id = load_models(m.preset, m.vae_checkpoint, m.var_checkpoint, init_seed=m.init_seed)
    clf = load_classifier(cfg.classifier)
    accels = {spec: build_accel(parse_method(spec), var.patch_nums, var.depth, var_id) for spec in cfg.methods}
    report: dict = {"sampling": vars(cfg.sampling) | {}, "images_per_class": cfg.images_per_class,
                    "base_seed": cfg.base_seed}

    held = make_bank(HELDOUT_SEED, cfg.num_heldout_images)
    report["reconstruction"] = reconstruction_psnr(vqvae, held)
    log.info("reconstruction PSNR %.2f dB", report["reconstruction"]["psnr_db"])

    labels, seeds = sample_plan(cfg)
    n = labels.shape[0]
    sampler = NextScaleSampler(var, vqvae.quantize, cfg.sampling)
    fhat_hq = sample_fhat(sampler, labels, seeds, cfg.batch_size)
    img_hq = decode01(vqvae, fhat_hq)
    report["vanilla"] = {"class_accuracy": round(accuracy(clf, img_hq, labels), 4)}
    log.info("vanilla class accuracy %.3f", report["vanilla"]["class_accuracy"])
    columns, titles = [img_hq[:cfg.grid_samples]], ["vanilla"]
    report["methods"] = {}
    for spec, accel in accels.items():
        fhat_lq = sample_fhat(sampler, labels, seeds, cfg.batch_size, accel)
        img_lq = decode01(vqvae, fhat_lq)
        row = {"psnr_vs_vanilla_db": round(float(psnr_per_image(img_lq, img_hq).mean()), 3),
               "class_accuracy": round(accuracy(clf, img_lq, labels), 4)}
        columns.append(img_lq[:cfg.grid_samples])
        titles.append(spec)
        if spec in cfg.adapters:
            adapted = load_adapted_decoder(vqvae, cfg.adapters[spec], vae_id)
            img_s = decode01(adapted, fhat_lq)
            stats = RestorationStats()
            stats.update(img_hq, img_lq, img_s, decode01(adapted, fhat_hq))
            paa = stats.compute()
            row["paa"] = {"adapter": cfg.adapters[spec], "class_accuracy": round(accuracy(clf, img_s, labels), 4),
                          **{k: round(float(v), 4) for k, v in paa.items()}}
            columns.append(img_s[:cfg.grid_samples])
            titles.append(spec + "+PAA")
        report["methods"][spec] = row
        log.info("%s: %s", spec, row)
    report["markdown"] = markdown_table(report)
    if output is not None:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({k: v for k, v in report.items() if k != "markdown"}, indent=1))
        (out / "metrics.md").write_text(report["markdown"] + "\n")
        rows = [[to_uint8(col[r:r + 1])[0] for col in columns] for r in range(min(cfg.grid_samples, n))]
        names = [f"{CLASS_NAMES[int(labels[r])]}" for r in range(len(rows))]
        save_grid(rows, out / "toyworld_grid.png", col_titles=_short(titles), row_titles=names, scale=2)
    return report


def _short(titles: list[str]) -> list[str]:
    return [t.replace("fastvar", "fv").replace("stagevar", "sv").replace("aggressive", "aggr")
            .replace("default", "def") for t in titles]


def markdown_table(report: dict) -> str:
    """The metrics as a markdown table (one row per run)."""
    rec = report["reconstruction"]
    lines = [f"VQ-VAE reconstruction PSNR on {rec['num_images']} held-out toy images: {rec['psnr_db']:.2f} dB",
             "",
             "| run | PSNR vs vanilla (dB) | class accuracy | gap closed G_mse | ΔPSNR (dB) |",
             "| --- | --- | --- | --- | --- |",
             f"| vanilla | – | {100 * report['vanilla']['class_accuracy']:.1f} % | | |"]
    for spec, row in report["methods"].items():
        lines.append(f"| {spec} | {row['psnr_vs_vanilla_db']:.2f} | {100 * row['class_accuracy']:.1f} % | | |")
        if "paa" in row:
            p = row["paa"]
            lines.append(f"| {spec} + PAA | {p['psnr_student']:.2f} | {100 * p['class_accuracy']:.1f} % | "
                         f"{100 * p['gap_closed_mse']:.1f} % | {p['delta_psnr']:+.2f} |")
    return "\n".join(lines)
