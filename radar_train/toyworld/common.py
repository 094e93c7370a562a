"""Pieces the toy-world trainers share: the rendered image bank, determinism, the learning-rate
schedule, and the step logger (progress and losses in the log)."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from radar_train.progress import format_duration, format_speed
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


class StepLog:
    """One log line every `every` steps (and at the last): step / total, rate and ETA (radar_train.progress's
    formats; both over the steps since the previous line, so that they follow a run that was paused or slowed
    down), the mean of each value since the previous line, lr. The mean `loss` of every interval is kept as
    the loss curve."""

    def __init__(self, name: str, total: int, every: int):
        self.name, self.total, self.every = name, total, max(1, every)
        self.start = time.time()
        self._mark = (self.start, 0)  # (time, steps done) at the previous line
        self.sums: dict[str, float] = {}
        self.count = 0
        self.curve: list[float] = []  # mean `loss` of every logging interval

    def update(self, step: int, lr: float, **values: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1
        done = step + 1
        if done % self.every == 0 or done == self.total:
            now = time.time()
            rate = (done - self._mark[1]) / max(now - self._mark[0], 1e-9)
            self._mark = (now, done)
            avg = " ".join(f"{k}={v / self.count:.4f}" for k, v in self.sums.items())
            if "loss" in self.sums:
                self.curve.append(round(self.sums["loss"] / self.count, 5))
            log.info("%s: step %d/%d (%.1f %%), %s, ETA %s, %s lr=%.2e", self.name, done, self.total,
                     100 * done / max(self.total, 1), format_speed(rate, "it"),
                     format_duration((self.total - done) / rate), avg, lr)
            self.sums, self.count = {}, 0

    @property
    def elapsed_s(self) -> float:
        return time.time() - self.start
