"""The `radar-toy train` recipe: render the image bank, train the VQ-VAE, encode the bank, train the
VAR, train the classifier, write the three weight files and a JSON of config, metrics and hashes.

With the defaults (seed 0, 2 threads, CPU) this reproduces the weights shipped in
`radar_train/toyworld/weights/`. The VQ-VAE and the VAR are saved as they are trained (train_progress.py): the
same command, run again after an interruption, goes on from the next stage and ends with the same files.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from radar_train.models import VAR, VQVAE, file_sha256, save_weights
from radar_train.outputs import staged_entries
from radar_train.toyworld.checks import at_least
from radar_train.toyworld.classifier import ClassifierTrainConfig, accuracy, train_classifier
from radar_train.toyworld.common import log, make_bank, seed_everything
from radar_train.toyworld.data import HELDOUT_SEED, TRAIN_SEED, WorldConfig
from radar_train.toyworld.preset import CLASSIFIER_FILE, INFO_FILE, TOY_VAE, TOY_VAR, VAE_FILE, VAR_FILE
from radar_train.toyworld.train_progress import LOCK_NAME, ToyTrainProgress
from radar_train.toyworld.train_var import VARTrainConfig, encode_bank, token_metrics, train_var
from radar_train.toyworld.train_vqvae import VQVAETrainConfig, reconstruct_bank, reconstruction_psnr, train_vqvae


@dataclass
class ToyTrainConfig:
    """What `radar-toy train` does. The defaults reproduce the shipped weights."""

    seed: int = 0
    """Seed of the model initialisations and batch orders."""
    num_threads: int = 2
    """CPU threads (the shipped weights were made with 2; another count may change the last bits)."""
    device: str = "cpu"
    """Torch device to train on."""
    num_train_images: int = 16000
    """Images of the training set (toy-world seed 0) rendered once and shared by the three trainers."""
    num_heldout_images: int = 200
    """Held-out images (toy-world seed 1) for the metrics written beside the weights."""
    weights_dtype: Literal["float16", "float32"] = "float16"
    """Dtype of the VQ-VAE and VAR files (the loaders cast to the model's dtype)."""
    world: WorldConfig = field(default_factory=WorldConfig)
    vqvae: VQVAETrainConfig = field(default_factory=VQVAETrainConfig)
    var: VARTrainConfig = field(default_factory=VARTrainConfig)
    classifier: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)

    def problems(self, prefix: str = "--recipe.") -> list[str]:
        """Every setting out of range, named as the option (`--recipe.vqvae.batch_size`): counts, steps and
        batch sizes >= 1, shares in [0, 1], learning rates > 0, the world's ranges, and the image size the
        toy VQ-VAE needs."""
        p = []
        if not 0 <= self.seed < 2 ** 63:
            p.append(f"{prefix}seed must be in [0, 2**63), got {self.seed}")
        p += at_least(prefix, self, 1, "num_threads", "num_train_images", "num_heldout_images")
        p += self.world.problems(f"{prefix}world.")
        if self.world.image_size != TOY_VAE.image_size:
            p.append(f"{prefix}world.image_size must be {TOY_VAE.image_size} (the toy VQ-VAE's images: "
                     f"{TOY_VAE.patch_nums[-1]} tokens a side, {TOY_VAE.downsample}x downsampling), "
                     f"got {self.world.image_size}")
        p += self.vqvae.problems(f"{prefix}vqvae.") + self.var.problems(f"{prefix}var.")
        return p + self.classifier.problems(f"{prefix}classifier.")


def check_recipe(cfg: ToyTrainConfig) -> None:
    """ValueError naming every setting of `cfg` out of range (`ToyTrainConfig.problems`)."""
    problems = cfg.problems()
    if problems:
        raise ValueError("; ".join(problems))


def _save(model: torch.nn.Module, path: Path, dtype: torch.dtype, kind: str) -> Path:
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    return save_weights(sd, path, metadata={"format": "pt", "toyworld": kind})


def recipe_settings(cfg: ToyTrainConfig) -> dict:
    """What a run that goes on from an earlier one's progress must share with it: every setting but the dtype
    of the files written at the end."""
    d = dataclasses.asdict(cfg)
    d.pop("weights_dtype")
    return d


def train_all(cfg: ToyTrainConfig, output: str | Path, overwrite: bool = False) -> dict:
    """Train VQ-VAE, VAR and classifier into `output`; returns the info written to toy_train.json. The
    recipe is checked first (ValueError), then OUTPUT/toy-train-progress/ (OutputError: another recipe's, without
    `overwrite`). A run goes on from the stages saved there; the files are written under a temporary folder
    inside `output` and moved in at the end, so a run that fails leaves `output` as it was, but for the
    progress of the stages it finished (none: no progress folder)."""
    from radar_train.train import run_lock

    check_recipe(cfg)
    progress = ToyTrainProgress(output, recipe_settings(cfg))
    go_on = progress.check(overwrite)
    lock = run_lock.acquire(output, "--output", LOCK_NAME, "radar-toy train")  # (after every check)
    try:
        progress.open(go_on)
        with staged_entries(output, (VAE_FILE, VAR_FILE, CLASSIFIER_FILE, INFO_FILE)) as stage:
            info = _train_into(cfg, stage, progress)
        progress.finish()
    finally:
        progress.release()
        lock.release()
    log.info("wrote %s to %s in %.0f s", ", ".join(info["files"]), output, info["times"]["total_s"])
    return info


def _train_into(cfg: ToyTrainConfig, out: Path, progress: ToyTrainProgress) -> dict:
    seed_everything(cfg.seed, cfg.num_threads if cfg.device == "cpu" else None)
    dtype = getattr(torch, cfg.weights_dtype)
    times: dict[str, float] = {}
    t0 = time.time()
    resumed = progress.done()
    if resumed:
        log.info("going on from %s: %s trained by an earlier run", progress.dir, " and ".join(resumed))
    bank = make_bank(TRAIN_SEED, cfg.num_train_images, cfg.world)
    held = make_bank(HELDOUT_SEED, cfg.num_heldout_images, cfg.world)
    times["render_s"] = round(time.time() - t0, 1)
    log.info("rendered %d training + %d held-out images in %.0f s", len(bank), len(held), times["render_s"])

    if "vqvae" in resumed:
        vqvae, vq_metrics = progress.load("vqvae", VQVAE(TOY_VAE), cfg.device)
        log.info("stage 1/3: VQ-VAE of the earlier run")
    else:
        log.info("stage 1/3: VQ-VAE, %d steps", cfg.vqvae.steps)
        vqvae, vq_metrics = train_vqvae(TOY_VAE, cfg.vqvae, bank, cfg.seed, cfg.device)
        vq_metrics.update(reconstruction_psnr(vqvae, held, cfg.device))
        progress.save("vqvae", vqvae, vq_metrics)
    times["vqvae_s"] = vq_metrics["train_time_s"]
    _save(vqvae, out / VAE_FILE, dtype, "vqvae")
    log.info("vqvae: held-out reconstruction PSNR %.2f dB, codebook usage %.2f", vq_metrics["psnr_db"],
             vq_metrics["codebook_usage"])

    if "var" in resumed:
        var, var_metrics = progress.load("var", VAR(TOY_VAR), cfg.device)
        log.info("stage 2/3: VAR of the earlier run")
    else:
        t1 = time.time()
        tokens = encode_bank(vqvae, bank, cfg.device)
        held_tokens = encode_bank(vqvae, held, cfg.device)
        times["encode_s"] = round(time.time() - t1, 1)
        log.info("stage 2/3: VAR, %d steps", cfg.var.steps)
        var, var_metrics = train_var(TOY_VAR, cfg.var, tokens, cfg.seed, cfg.device)
        var_metrics.update(token_metrics(var, held_tokens, cfg.device))
        del tokens
        progress.save("var", var, var_metrics)
    times["var_s"] = var_metrics["train_time_s"]
    _save(var, out / VAR_FILE, dtype, "var")

    t2 = time.time()
    log.info("stage 3/3: classifier, %d steps", cfg.classifier.steps)
    recon = reconstruct_bank(vqvae, bank, cfg.classifier.recon_images, cfg.device) \
        if cfg.classifier.recon_images else None
    clf, clf_metrics = train_classifier(cfg.classifier, bank, cfg.seed, cfg.device, recon_bank=recon)
    # (recon_images is at most that many: the number used, where the recipe asked for more than its training images)
    clf_metrics["recon_images_used"] = 0 if recon is None else len(recon)
    times["classifier_s"] = round(time.time() - t2, 1)
    _save(clf, out / CLASSIFIER_FILE, torch.float32, "classifier")
    clf_metrics["heldout_accuracy"] = round(accuracy(clf, held.images.float().div(255), held.labels), 4)
    held_recon = reconstruct_bank(vqvae, held, device=cfg.device)
    clf_metrics["heldout_recon_accuracy"] = round(accuracy(clf, held_recon.images.float().div(255), held.labels), 4)
    log.info("classifier: held-out accuracy %.3f (renders), %.3f (their VQ-VAE reconstructions)",
             clf_metrics["heldout_accuracy"], clf_metrics["heldout_recon_accuracy"])

    times["total_s"] = round(time.time() - t0, 1)
    info = {
        "config": dataclasses.asdict(cfg),
        "models": {"vqvae": TOY_VAE.to_dict(), "var": TOY_VAR.to_dict(), "classifier_width": cfg.classifier.width},
        "metrics": {"vqvae": vq_metrics, "var": var_metrics, "classifier": clf_metrics},
        "times": times,
        "resumed_stages": resumed,
        "files": {name: file_sha256(out / name) for name in (VAE_FILE, VAR_FILE, CLASSIFIER_FILE)},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "threads": torch.get_num_threads()},
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return info
