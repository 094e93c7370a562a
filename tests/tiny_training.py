"""Shared pieces of the training tests: random latent pairs, the early-stopping setting whose best step is the
first validation, radar-train fit's command line on a tiny cache run in-process, and a callback that makes a
training step fail."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional
from unittest import mock

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from radar_train.train.selection import EarlyStoppingArgs

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny.yaml"

# PSNR(D_LoRA(f_HQ), D(f_HQ)) starts at the identity (LoRA B = 0) and falls as the LoRA learns the LQ -> HQ
# mapping without an identity term: a metric that stops improving after the first validation
HARMLESS = EarlyStoppingArgs(enabled=True, monitor="val/psnr_harmless", patience=2)


class LabelledPairs(torch.utils.data.Dataset):
    """Random tiny-model latent pairs (8, 8, 8) with labels: fhat_lq = fhat_hq + noise."""

    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.hq = torch.randn(n, 8, 8, 8, generator=g)
        self.lq = self.hq + 0.5 * torch.randn(n, 8, 8, 8, generator=g)

    def __len__(self) -> int:
        return len(self.hq)

    def __getitem__(self, i: int) -> dict:
        return {"fhat_hq": self.hq[i], "fhat_lq": self.lq[i], "label": torch.tensor(i % 10)}


def run_train_cli(argv: list[str]) -> int:
    """radar-train's main(argv) in-process (sys.argv as a console script would have it); the exit status."""
    from radar_train.cli.train import main

    with pytest.raises(SystemExit) as e, mock.patch.object(sys, "argv", ["radar-train", *argv]):
        main(argv)
    return e.value.code


def tiny_fit_argv(cache: str, root: Path, steps: int, *extra: str) -> list[str]:
    """fit on the tiny config: shards 0-1 of `cache` train, 14 validates; validation and a save every 2 steps."""
    caches = json.dumps([{"path": cache, "train_shards": "0-1", "val_shards": "14"}])
    return ["fit", "--config", str(TINY_CONFIG), "--data.caches", caches, "--trainer.default_root_dir", str(root),
            "--trainer.max_steps", str(steps), "--trainer.val_check_interval", "2",
            "--trainer.enable_progress_bar", "false", "--model.output.save_every_n_steps", "2",
            "--model.monitor.images_every_n_steps", "0", "--data.batch_size", "4", *extra]


class FailAt(Callback):
    """Raises RuntimeError("injected failure") in optimizer step `step` (1-based) at `where`: "backward" (after the
    backward of the step's `micro_batch`-th micro-batch: the update not begun), "update" (Lightning's hook just before
    the update), "end" (the step's end, after the update), or "validation" (batch `val_batch`, 0-based, of the
    validation after step `step`)."""

    def __init__(self, step: int, where: str = "backward", micro_batch: int = 1, rank: Optional[int] = None,
                 val_batch: int = 0):
        self.step, self.where, self.micro_batch, self.rank, self.val_batch = step, where, micro_batch, rank, val_batch
        self._backwards = 0

    def _due(self, trainer, where: str, step_done: int) -> bool:
        return self.where == where and trainer.global_step == step_done and \
            (self.rank is None or trainer.global_rank == self.rank)

    def on_after_backward(self, trainer, pl_module) -> None:
        if self._due(trainer, "backward", self.step - 1):
            self._backwards += 1
            if self._backwards == self.micro_batch:
                raise RuntimeError("injected failure")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._due(trainer, "update", self.step - 1):
            raise RuntimeError("injected failure")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._due(trainer, "end", self.step):
            raise RuntimeError("injected failure")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self._due(trainer, "validation", self.step) and not trainer.sanity_checking and batch_idx == self.val_batch:
            raise RuntimeError("injected failure")


class ValidationSteps(Callback):
    """Appends the global step of every validation that ends in a fit (sanity checks aside) to the file `path`, one
    line each, across the processes of a run and its resumes; "N torn down" for one that ran after the strategy's
    teardown (on a GPU the model is on the CPU then), which a test marks as `strategy.torn_down`."""

    def __init__(self, path: str):
        self.path = path

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            with open(self.path, "a") as f:
                f.write(f"{trainer.global_step}{' torn down' if getattr(trainer.strategy, 'torn_down', 0) else ''}\n")
