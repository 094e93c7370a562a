"""A test-only Lightning callback: sends the process SIGTERM (or SIGINT: Ctrl-C) during a chosen training step
(deterministic, where a signal from outside would land wherever the test's timing put it).

    radar-train fit ... --trainer.callbacks '[{"class_path": "self_term.SelfTerm", "init_args": {"step": N}}]'
    (with tests/train/scripts on PYTHONPATH): the signal arrives during optimizer step N (1-based);
    "init_args": {"step": N, "signal": "SIGINT"} sends SIGINT; "in_validation": true sends it at the first validation
    batch instead (radar-train validate); "rank": R sends it in DDP rank R's process only; "group": true sends it to the process group (as a
    terminal's Ctrl-C and scancel do, from another process: DataLoader workers get it too; run the command in a session
of its own)
"""
from __future__ import annotations

import os
import subprocess
from typing import Optional
import signal as signal_module

from lightning.pytorch.callbacks import Callback


class SelfTerm(Callback):
    """os.kill(own pid, `signal`) at the start of the batch that makes optimizer step `step`."""

    def __init__(self, step: int, signal: str = "SIGTERM", group: bool = False, in_validation: bool = False,
                 rank: Optional[int] = None, at: Optional[str] = None):
        self.step, self.group, self.in_validation, self.rank, self.at = step, group, in_validation, rank, at
        self.signum = getattr(signal_module, signal)
        self.sent = False

    def setup(self, trainer, pl_module, stage) -> None:
        if self.at == "setup":
            self._send()

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.at == "fit_start":
            self._send()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.in_validation and not self.sent and self.at is None:
            self._send()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if self.at is None and not self.in_validation and not self.sent and trainer.global_step == self.step - 1:
            self._send()

    def _send(self) -> None:
        self.sent = True
        if self.group:  # from another process, as a terminal, scancel or `kill -TERM -PGID` send it (the workers
            # tell their run's own signal, which ends them, from anyone else's)
            subprocess.run(["kill", "-s", self.signum.name[3:], "--", f"-{os.getpgrp()}"], check=False)
        else:
            os.kill(os.getpid(), self.signum)
