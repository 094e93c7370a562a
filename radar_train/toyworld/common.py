"""Pieces the toy-world trainers share: the rendered image bank, determinism, the learning-rate
schedule, and a progress logger."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from radar_train.toyworld.data import ToyWorld, WorldConfig

log = logging.getLogger("radar_train.toyworld")


@dataclass
class ImageBank:
    """Rendered images as uint8 (N, 3, H, W) with their labels (N,): rendered once, shared by the
    three trainers."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, idx: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] (float32) and labels for the bank positions `idx`."""
        x = self.images[idx].to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
        return x, self.labels[idx].to(device)


def make_bank(seed: int, num_images: int, world: WorldConfig = WorldConfig(), start: int = 0,
              chunk: int = 512) -> ImageBank:
    """Images start .. start+num_images−1 of the toy-world set `seed`."""
    tw = ToyWorld(seed, world)
    parts = []
    for i in range(start, start + num_images, chunk):
        idx = range(i, min(i + chunk, start + num_images))
        parts.append(tw.images(idx, chunk=16).mul(255).round_().to(torch.uint8))
    return ImageBank(torch.cat(parts), tw.labels(range(start, start + num_images)))


def seed_everything(seed: int, num_threads: int | None) -> None:
    """Seed torch's global RNG (model init, dropout, class dropout) and fix the thread count."""
    torch.manual_seed(int(seed))
    if num_threads:
        torch.set_num_threads(int(num_threads))


def lr_at(step: int, total: int, base: float, warmup: int, final_ratio: float = 0.1) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to `final_ratio`·base at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class Progress:
    """One log line every `every` steps: step, losses, it/s, lr."""

    def __init__(self, name: str, total: int, every: int):
        self.name, self.total, self.every = name, total, max(1, every)
        self.start = self.last = time.time()
        self.sums: dict[str, float] = {}
        self.count = 0
        self.curve: list[float] = []  # mean `loss` of every logging interval

    def update(self, step: int, lr: float, **values: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1
        if (step + 1) % self.every == 0 or step + 1 == self.total:
            now = time.time()
            avg = " ".join(f"{k}={v / self.count:.4f}" for k, v in self.sums.items())
            if "loss" in self.sums:
                self.curve.append(round(self.sums["loss"] / self.count, 5))
            log.info("%s step %d/%d %s lr=%.2e %.2f it/s", self.name, step + 1, self.total, avg, lr,
                     self.count / max(now - self.last, 1e-9))
            self.sums, self.count, self.last = {}, 0, now

    @property
    def elapsed_s(self) -> float:
        return time.time() - self.start
