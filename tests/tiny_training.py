"""Shared pieces of the training tests: random latent pairs, the early-stopping setting whose best step is the
first validation, and radar-train fit's command line on a tiny cache run in-process."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

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
