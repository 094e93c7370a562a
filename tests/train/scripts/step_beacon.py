"""A test-only Lightning callback: after every training step, the step number goes to a file (replaced
atomically), so that a test can SIGKILL a `radar-train fit` subprocess at a chosen step.

    radar-train fit ... --trainer.callbacks '[{"class_path": "step_beacon.StepBeacon", "init_args": {"path": F}}]'
    (with tests/train/scripts on PYTHONPATH)
"""
from __future__ import annotations

import os

from lightning.pytorch.callbacks import Callback


class StepBeacon(Callback):
    """Writes trainer.global_step to `path` after every training step."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            f.write(str(trainer.global_step))
        os.replace(tmp, self.path)
