"""For the radar-fid tests: tiny TorchScript extractors with its contract (uint8 (N, 3, H, W) -> float (N, D)), and
a Ctrl-C at a given write of samples."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class Pool(nn.Module):
    """uint8 (N, 3, H, W) -> 4x4 average pool -> fixed random linear map to `dim` outputs."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Parameter(torch.randn(48, dim, generator=g) / 7, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(x.float() / 255.0, 4).flatten(1)
        return x @ self.proj


def save_extractors(folder: Path) -> dict:
    """{"features": pool16.pt (16-d features), "logits": logits10.pt (10 logits)} in `folder`."""
    feats, logits = folder / "pool16.pt", folder / "logits10.pt"
    torch.jit.save(torch.jit.script(Pool(16, 0)), str(feats))
    torch.jit.save(torch.jit.script(Pool(10, 1)), str(logits))
    return {"features": feats, "logits": logits}


def ctrl_c_at_write(monkeypatch, call: int) -> None:
    """radar-fid's progress raises KeyboardInterrupt (Ctrl-C) at its `call`-th write of a run's samples of a batch
    (one per run and batch: with two runs, call 3 is the first of the second batch); monkeypatch.undo() ends it."""
    from radar_train.inference.fid_progress import FidProgress

    real, calls = FidProgress.write_images, []

    def write_images(self, run, images):
        calls.append(run)
        if len(calls) == call:
            raise KeyboardInterrupt
        real(self, run, images)

    monkeypatch.setattr(FidProgress, "write_images", write_images)
