"""A small CNN that names the toy class of an image: the toy world's stand-in for FID/IS.

Trained on the procedural images with light corruptions (noise, blur, colour shifts) and, for part of
every batch, on the toy VQ-VAE's reconstructions of training images (generated images are VQ-VAE
decodes, softer than the renders), so that it judges the shape and not the rendering; the accuracy it
gives generated images measures whether a sampler drew the class it was asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from radar_train.toyworld.common import ImageBank, StepLog, log, lr_at, set_lr
from radar_train.toyworld.data import NUM_CLASSES


class ToyClassifier(nn.Module):
    """Images in [0, 1] (B, 3, 64, 64) -> logits (B, num_classes)."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 16):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                 nn.Conv2d(cout, cout, 3, padding=1, stride=2), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True))

        w = width
        self.features = nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w), block(4 * w, 4 * w))
        self.head = nn.Linear(8 * w, num_classes)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x01))

    def embed(self, x01: torch.Tensor) -> torch.Tensor:
        """The penultimate features (B, 8·width) that `head` reads: the last block's mean- and max-pooled
        channels, concatenated (the toy FID's feature space)."""
        h = self.features(x01 * 2 - 1)
        return torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)

    @torch.no_grad()
    def predict(self, x01: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Predicted class per image (eval mode is the caller's business)."""
        return torch.cat([self(x01[i:i + batch_size]).argmax(1) for i in range(0, x01.shape[0], batch_size)])


@dataclass
class ClassifierTrainConfig:
    """Optimisation of the toy classifier."""

    steps: int = 1500
    """Optimiser steps (400 left the first toy world's classifier at ~64 % held-out accuracy)."""
    batch_size: int = 32
    """Images per step."""
    learning_rate: float = 3e-3
    """Peak AdamW learning rate."""
    warmup_steps: int = 30
    """Linear warm-up steps before the cosine decay."""
    width: int = 16
    """Channels of the first block (doubling twice)."""
    recon_images: int = 4000
    """Training images whose VQ-VAE reconstructions the classifier also sees (0 = renders only); at most
    num_train_images are (toy_train.json's classifier metrics record recon_images_used)."""
    recon_share: float = 0.5
    """Share of every batch drawn from those reconstructions."""
    log_every: int = 100
    """Steps between log lines."""

    def problems(self, prefix: str = "classifier.") -> list[str]:
        """Every setting out of range, named `prefix` + field."""
        from radar_train.toyworld.checks import at_least, positive, share

        return (at_least(prefix, self, 1, "steps", "batch_size", "width")
                + at_least(prefix, self, 0, "warmup_steps", "recon_images")
                + positive(prefix, self, "learning_rate") + share(prefix, self, "recon_share"))


def corrupt(x01: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per image: Gaussian noise (σ ≤ 0.06), a 3×3 blur with probability ½, a colour offset (≤ 0.05)."""
    B = x01.shape[0]
    blur = F.avg_pool2d(F.pad(x01, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    use_blur = (torch.rand(B, 1, 1, 1, generator=g) < 0.5).to(x01.device)
    x = torch.where(use_blur, blur, x01)
    sigma = torch.rand(B, 1, 1, 1, generator=g).mul(0.06).to(x01.device)
    x = x + sigma * torch.randn(x.shape, generator=g).to(x01.device)
    x = x + torch.rand(B, 3, 1, 1, generator=g).sub(0.5).mul(0.1).to(x01.device)
    return x.clamp(0, 1)


def train_classifier(cfg: ClassifierTrainConfig, bank: ImageBank, seed: int,
                     device: torch.device | str = "cpu",
                     recon_bank: Optional[ImageBank] = None) -> tuple[ToyClassifier, dict]:
    """Train a fresh classifier on the bank (with corruptions) and, if given, on `recon_bank` (VQ-VAE
    reconstructions, `cfg.recon_share` of every batch); returns (model in eval mode, metrics)."""
    torch.manual_seed(seed)
    n_recon = round(cfg.batch_size * cfg.recon_share) if recon_bank is not None and len(recon_bank) else 0
    model = ToyClassifier(width=cfg.width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    progress = StepLog("classifier", cfg.steps, cfg.log_every)
    model.train()
    for step in range(cfg.steps):
        lr = lr_at(step, cfg.steps, cfg.learning_rate, cfg.warmup_steps, 0.02)
        set_lr(opt, lr)
        x, y = bank.batch(torch.randint(len(bank), (cfg.batch_size - n_recon,), generator=g), device)
        if n_recon:
            xr, yr = recon_bank.batch(torch.randint(len(recon_bank), (n_recon,), generator=g), device)
            x, y = torch.cat([x, xr]), torch.cat([y, yr])
        x01 = corrupt(x.add(1).mul(0.5), g)
        loss = F.cross_entropy(model(x01), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress.update(step, lr, loss=loss.item())
    model.eval()
    log.info("classifier: %d steps in %.0f s", cfg.steps, progress.elapsed_s)
    return model, {"steps": cfg.steps, "train_time_s": round(progress.elapsed_s, 1), "loss_curve": progress.curve}


@torch.no_grad()
def accuracy(model: ToyClassifier, images01: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose predicted class equals the label."""
    pred = model.predict(images01.to(next(model.parameters()).device)).cpu()
    return float((pred == labels.cpu()).float().mean())
