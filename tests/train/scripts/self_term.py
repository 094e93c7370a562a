"""A test-only Lightning callback: sends the process SIGTERM (or SIGINT: Ctrl-C) during a chosen training step
(deterministic, where a signal from outside would land wherever the test's timing put it).

    radar-train fit ... --trainer.callbacks '[{"class_path": "self_term.SelfTerm", "init_args": {"step": N}}]'
    (with tests/train/scripts on PYTHONPATH): the signal arrives during optimizer step N (1-based);
    "init_args": {"step": N, "signal": "SIGINT"} sends SIGINT
"""
from __future__ import annotations

import os
import signal as signal_module

from lightning.pytorch.callbacks import Callback


class SelfTerm(Callback):
    """os.kill(own pid, `signal`) at the start of the batch that makes optimizer step `step`."""

    def __init__(self, step: int, signal: str = "SIGTERM"):
        self.step = step
        self.signum = getattr(signal_module, signal)
        self.sent = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.sent and trainer.global_step == self.step - 1:
            self.sent = True
            os.kill(os.getpid(), self.signum)
