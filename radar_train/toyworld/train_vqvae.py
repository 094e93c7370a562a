"""Train the toy world's multi-scale residual VQ-VAE (our `VQVAE` class) from scratch.

Loss = MSE + L1 + `gradient_weight`·L1 of the image gradients (a light edge term) + the quantizer's
VQ loss (commitment β inside). The codebook is started on quantizer inputs of the first batch and
then follows the vectors assigned to each code as an exponential moving average (online k-means, as
in VQ-VAE-2) instead of the optimiser: AdamW moves a code by about one learning rate per step, far too
slowly for a short CPU budget (with the gradient-trained codebook a pilot run stood at 17.1 dB after 200
steps, with the moving average at 19.0 dB). Codes unused for `restart_every` steps are restarted on
random quantizer inputs of the current batch (the residuals the quantizer sees at a random scale).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from radar_train.models import VQVAE, VQVAEConfig
from radar_train.toyworld.common import ImageBank, StepLog, log, lr_at, set_lr
from radar_train.train.metrics import psnr_per_image, to_unit


@dataclass
class VQVAETrainConfig:
    """Optimisation of the toy VQ-VAE."""

    steps: int = 600
    """Optimiser steps."""
    batch_size: int = 32
    """Images per step."""
    learning_rate: float = 5e-4
    """Peak AdamW learning rate (1e-3 and 2e-3 trail 5e-4 over the first 150 steps)."""
    warmup_steps: int = 50
    """Linear warm-up steps before the cosine decay."""
    final_lr_ratio: float = 0.05
    """Learning rate at the last step as a fraction of the peak."""
    gradient_weight: float = 0.5
    """Weight of the L1 loss on horizontal/vertical image differences (edges)."""
    l1_weight: float = 0.5
    """Weight of the pixel L1 loss (the MSE has weight 1)."""
    restart_every: int = 25
    """Restart codes unused over this many steps (0 = never)."""
    restart_until: float = 0.8
    """Stop restarting after this fraction of the steps."""
    codebook_init_std: float = 0.02
    """Std of the normal initialisation of the codebook (before the data initialisation, if any)."""
    codebook_ema_decay: float = 0.95
    """Decay of the codebook's moving averages (0 = train the codebook with the optimiser instead)."""
    codebook_data_init: bool = True
    """Start every code on a random quantizer input of the first batch."""
    zero_init_residual: bool = True
    """Start every residual and attention block as the identity (last conv zero): trains much faster."""
    log_every: int = 50
    """Steps between log lines."""

    def problems(self, prefix: str = "vqvae.") -> list[str]:
        """Every setting out of range, named `prefix` + field."""
        from radar_train.toyworld.checks import at_least, positive, share

        return (at_least(prefix, self, 1, "steps", "batch_size")
                + at_least(prefix, self, 0, "warmup_steps", "restart_every", "gradient_weight", "l1_weight",
                           "codebook_init_std")
                + positive(prefix, self, "learning_rate") + share(prefix, self, "final_lr_ratio", "restart_until")
                + share(prefix, self, "codebook_ema_decay", below_one=True))


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, cfg: VQVAETrainConfig) -> dict[str, torch.Tensor]:
    """Pixel MSE, L1 and gradient L1 of an unclamped reconstruction vs the target (both in [−1, 1])."""
    gx_r, gy_r = image_gradients(recon)
    gx_t, gy_t = image_gradients(target)
    return {
        "mse": F.mse_loss(recon, target),
        "l1": F.l1_loss(recon, target),
        "grad": 0.5 * (F.l1_loss(gx_r, gx_t) + F.l1_loss(gy_r, gy_t)),
    }


@torch.no_grad()
def quantizer_inputs(vqvae: VQVAE, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All vectors the quantizer matches for latents f (B, C, P, P) — the area-downsampled residual at
    every scale, stacked to (N, C) — and the code chosen for each (N,)."""
    q = vqvae.quantize
    pns = q.patch_nums
    B, C = f.shape[:2]
    rest = f.detach().float().clone()
    zs, idxs = [], []
    for si, pn in enumerate(pns):
        z = F.interpolate(rest, size=(pn, pn), mode="area") if si != len(pns) - 1 else rest
        z = z.permute(0, 2, 3, 1).reshape(-1, C)
        idx = q.nearest(z)
        rest = rest - q.residual_step(si, q.embedding(idx.view(B, pn, pn)).permute(0, 3, 1, 2), pns)
        zs.append(z)
        idxs.append(idx)
    return torch.cat(zs), torch.cat(idxs)


class EmaCodebook:
    """Online k-means of the codebook: each code is the moving average of the quantizer inputs
    assigned to it (counts Laplace-smoothed so that rare codes do not divide by ~0)."""

    def __init__(self, weight: torch.Tensor, decay: float, eps: float = 1e-5):
        self.decay, self.eps = float(decay), eps
        self.count = torch.ones(weight.shape[0], device=weight.device)
        self.sum = weight.detach().float().clone()

    @torch.no_grad()
    def update_(self, weight: torch.Tensor, z: torch.Tensor, idx: torch.Tensor) -> None:
        V, d = weight.shape[0], self.decay
        self.count.mul_(d).add_(torch.bincount(idx, minlength=V).float(), alpha=1 - d)
        self.sum.mul_(d).add_(torch.zeros_like(self.sum).index_add_(0, idx, z.float()), alpha=1 - d)
        n = self.count.sum()
        smoothed = (self.count + self.eps) / (n + V * self.eps) * n
        weight.copy_((self.sum / smoothed[:, None]).to(weight.dtype))

    @torch.no_grad()
    def reset_(self, codes: torch.Tensor, vectors: torch.Tensor) -> None:
        """Codes `codes` restart on `vectors` with the weight of one assignment."""
        self.count[codes] = 1.0
        self.sum[codes] = vectors.float()


@torch.no_grad()
def restart_dead_codes_(vqvae: VQVAE, usage: torch.Tensor, f: torch.Tensor, generator: torch.Generator,
                        ema: Optional[EmaCodebook] = None, everyone: bool = False) -> int:
    """Codes with zero `usage` (all codes with `everyone`) get random quantizer inputs of `f`;
    returns how many were restarted."""
    dead = torch.arange(usage.numel()) if everyone else (usage == 0).nonzero().flatten()
    if dead.numel() == 0:
        return 0
    cand, _ = quantizer_inputs(vqvae, f)
    pick = torch.randint(cand.shape[0], (dead.numel(),), generator=generator).to(cand.device)
    dead = dead.to(cand.device)
    vqvae.quantize.embedding.weight.data[dead] = cand[pick]
    if ema is not None:
        ema.reset_(dead, cand[pick])
    return int(dead.numel())


@torch.no_grad()
def zero_init_residual_(vqvae: VQVAE) -> VQVAE:
    """Zero the last convolution of every ResnetBlock (`conv2`) and AttnBlock (`proj_out`), so that each
    block starts as the identity."""
    for name, module in vqvae.named_modules():
        if name.endswith((".conv2", ".proj_out")) and isinstance(module, torch.nn.Conv2d):
            module.weight.zero_()
            module.bias.zero_()
    return vqvae


def train_vqvae(model_cfg: VQVAEConfig, cfg: VQVAETrainConfig, bank: ImageBank, seed: int,
                device: torch.device | str = "cpu", eval_every: int = 0,
                on_eval: Optional[Callable[[int, VQVAE], None]] = None) -> tuple[VQVAE, dict]:
    """Train a fresh VQ-VAE on the bank; returns (model in eval mode, metrics). `on_eval(step, model)`
    runs every `eval_every` steps (model in eval mode, under no_grad)."""
    torch.manual_seed(seed)
    vqvae = VQVAE(model_cfg).to(device)
    torch.nn.init.normal_(vqvae.quantize.embedding.weight, std=cfg.codebook_init_std)
    if cfg.zero_init_residual:
        zero_init_residual_(vqvae)
    codebook = vqvae.quantize.embedding.weight
    ema = EmaCodebook(codebook, cfg.codebook_ema_decay) if cfg.codebook_ema_decay > 0 else None
    codebook.requires_grad_(ema is None)
    params = [p for p in vqvae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(0.9, 0.99), weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    usage = torch.zeros(model_cfg.vocab_size, dtype=torch.long)
    progress = StepLog("vqvae", cfg.steps, cfg.log_every)
    restarted = 0
    vqvae.train()
    for step in range(cfg.steps):
        lr = lr_at(step, cfg.steps, cfg.learning_rate, cfg.warmup_steps, cfg.final_lr_ratio)
        set_lr(opt, lr)
        x, _ = bank.batch(torch.randint(len(bank), (cfg.batch_size,), generator=g), device)
        f = vqvae.encode(x)
        if step == 0 and cfg.codebook_data_init:
            restart_dead_codes_(vqvae, usage, f, g, ema, everyone=True)
        f_hat, vq_loss, idx = vqvae.quantize.quantize_ste(f)
        recon = vqvae.decoder(vqvae.post_quant_conv(f_hat))
        parts = reconstruction_loss(recon, x, cfg)
        loss = parts["mse"] + cfg.l1_weight * parts["l1"] + cfg.gradient_weight * parts["grad"] + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:  # codes follow the inputs assigned to them in this batch
            ema.update_(codebook.data, *quantizer_inputs(vqvae, f))
        usage += torch.bincount(torch.cat(idx, 1).flatten().cpu(), minlength=model_cfg.vocab_size)
        if cfg.restart_every and (step + 1) % cfg.restart_every == 0:
            if step < cfg.restart_until * cfg.steps:
                restarted += restart_dead_codes_(vqvae, usage, f.detach(), g, ema)
            usage.zero_()
        progress.update(step, lr, loss=loss.item(), mse=parts["mse"].item(), vq=vq_loss.item())
        if on_eval is not None and eval_every and (step + 1) % eval_every == 0:
            with torch.no_grad():
                on_eval(step + 1, vqvae.eval())
            vqvae.train()
    vqvae.eval()
    metrics = {"steps": cfg.steps, "train_time_s": round(progress.elapsed_s, 1), "codes_restarted": restarted,
               "loss_curve": progress.curve}
    log.info("vqvae: %d steps in %.0f s, %d codes restarted", cfg.steps, progress.elapsed_s, restarted)
    return vqvae, metrics


@torch.no_grad()
def reconstruction_psnr(vqvae: VQVAE, bank: ImageBank, device: torch.device | str = "cpu",
                        batch_size: int = 128) -> dict[str, float]:
    """Mean PSNR (dB, data range 1) of the VQ-VAE's reconstructions (encode → multi-scale indices →
    f_hat → decode, clamped) of the bank's images, and the share of the codebook they use."""
    vals, used = [], set()
    for i in range(0, len(bank), batch_size):
        x, _ = bank.batch(torch.arange(i, min(i + batch_size, len(bank))), device)
        f = vqvae.encode(x)
        for idx in vqvae.quantize.f_to_indices(f):
            used.update(idx.unique().tolist())
        fhat = vqvae.quantize.f_to_indices(f, to_fhat=True)[-1]
        rec = vqvae.fhat_to_img(fhat)
        vals.append(psnr_per_image(to_unit(rec), to_unit(x)).cpu())
    v = torch.cat(vals)
    return {"psnr_db": round(float(v.mean()), 3), "psnr_min_db": round(float(v.min()), 3),
            "codebook_usage": round(len(used) / vqvae.config.vocab_size, 3), "num_images": int(v.numel())}


@torch.no_grad()
def reconstruct_bank(vqvae: VQVAE, bank: ImageBank, num_images: int | None = None,
                     device: torch.device | str = "cpu", batch_size: int = 128) -> ImageBank:
    """VQ-VAE reconstructions (encode → multi-scale indices → decode, uint8) of the bank's first
    `num_images` images (default: all), with their labels."""
    n = len(bank) if num_images is None else min(int(num_images), len(bank))
    parts = []
    for i in range(0, n, batch_size):
        x, _ = bank.batch(torch.arange(i, min(i + batch_size, n)), device)
        parts.append(to_unit(vqvae.reconstruct(x)).mul(255).round_().to(torch.uint8).cpu())
    images = torch.cat(parts) if parts else bank.images[:0].clone()
    return ImageBank(images, bank.labels[:n].clone())
