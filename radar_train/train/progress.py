"""Training progress by optimizer step (radar-train fit / validate): Lightning's progress bar replaced by
radar_train.progress, so that a SLURM job's log shows `train: step 300/1800 (16.7 %), 1.6 it/s, ETA ...`
(every RADAR_PROGRESS_INTERVAL seconds) and a terminal shows a bar over the run's steps (trainer.max_steps,
not epochs). Validation inside a fit reports a line only when it outlasts the interval."""
from __future__ import annotations

import math
from typing import Optional

from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

from radar_train.progress import Progress

LOSS_KEY = "train/loss"


class StepProgress(ProgressBar):
    """Progress of fit (optimizer steps of trainer.max_steps) and of validation (batches), on global rank 0."""

    def __init__(self, interval_s: Optional[float] = None, mode: Optional[str] = None):
        super().__init__()
        self.interval_s, self.mode = interval_s, mode
        self._enabled = True
        self.train: Optional[Progress] = None
        self.val: Optional[Progress] = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _progress(self, total, what: str, unit: str, **kw) -> Progress:
        return Progress(total, what, unit, interval_s=self.interval_s, mode=self.mode,
                        enabled=self._enabled and self.trainer.is_global_zero, **kw)

    @staticmethod
    def total_steps(trainer) -> Optional[float]:
        """The optimizer steps this fit ends at: max_steps when set, else what the epochs amount to (None when
        unknown)."""
        if trainer.max_steps is not None and trainer.max_steps > 0:
            return trainer.max_steps
        est = trainer.estimated_stepping_batches
        return est if est is not None and math.isfinite(est) else None

    # -- fit ------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self.train = self._progress(self.total_steps(trainer), "train", "step", rate_unit="it",
                                    initial=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.train is None:
            return
        # the loss only when it is shown: reading it back from the GPU waits for the step's kernels, and a wait
        # every step would keep the host from queueing the next step while this one runs
        self.train.update_to(trainer.global_step, **(self._loss(trainer) if self.train.wants_postfix() else {}))

    def on_train_end(self, trainer, pl_module) -> None:
        if self.train is not None:
            self.train.close(**self._loss(trainer))

    @staticmethod
    def _loss(trainer) -> dict:
        """{"loss": the step's training loss} (read back to the host: call it only when it is shown), or {}."""
        loss = trainer.callback_metrics.get(LOSS_KEY)
        return {"loss": float(loss)} if loss is not None else {}

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        for p in (self.val, self.train):
            if p is not None:
                p.close()

    # -- validation -----------------------------------------------------------------------------------------
    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        total = self.total_val_batches if trainer.state.fn == "fit" else sum(
            b for b in (trainer.num_val_batches or []) if math.isfinite(b))
        inside_fit = trainer.state.fn == "fit"
        self.val = self._progress(total or None, "val" if inside_fit else "validate", "batch",
                                  final_line="if_logged" if inside_fit else "always", leave=not inside_fit)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.val is not None:
            self.val.update(1)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.val is not None:
            self.val.close()
            self.val = None
