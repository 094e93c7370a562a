"""Which adapter a run ends with: early stopping on a validation metric, and the best step's adapter.

Both are Lightning's own machinery: `EarlyStopping` on the monitored validation metric (it counts the
validations without improvement), and a `ModelCheckpoint` on the same metric (`BestCheckpoint`) that keeps the
best validation's training state as RUN/checkpoints/best-step-NNNNNN.ckpt (save_top_k=1). Both callbacks'
state (best score, patience count, best file) goes into every checkpoint, and the best step is a file, so a
resumed run keeps its best adapter; the patience a count is held against is the resumed run's config
(`ConfiguredEarlyStopping`). When the run ends (max_steps, or early stopping), final/ is exported from
the best checkpoint (final_adapter best) or from the weights of the last step (last).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from .run_checkpoint import state_in_dirpath

__all__ = ["EarlyStoppingArgs", "MONITORS", "BestCheckpoint", "BEST_PREFIX", "ConfiguredEarlyStopping"]

#: Validation metrics that may be monitored, and the direction in which each improves.
MONITORS: dict[str, str] = {
    "val/loss": "min", "val/mse_student": "min", "val/gap_closed_mse": "max", "val/psnr_student": "max",
    "val/ssim_student": "max", "val/delta_psnr": "max", "val/delta_ssim": "max", "val/psnr_harmless": "max",
}
BEST_PREFIX = "best-step-"


@dataclass
class EarlyStoppingArgs:
    """Early stopping on a validation metric and the choice of the adapter exported to final/."""

    enabled: bool = False
    """Stop training when `monitor` has not improved by more than min_delta for `patience` validations in a
    row (Lightning's EarlyStopping; validations run every trainer.val_check_interval steps)."""
    monitor: str = "val/loss"
    """The validation metric that decides early stopping and the best step: val/loss, val/mse_student,
    val/gap_closed_mse, val/psnr_student, val/ssim_student, val/delta_psnr, val/delta_ssim, val/psnr_harmless."""
    mode: Optional[Literal["min", "max"]] = None
    """Whether smaller or larger is better (default: min for val/loss and val/mse_student, max for the others)."""
    patience: int = 3
    """Validations in a row without improvement before training stops."""
    min_delta: float = 0.0
    """The least change of `monitor` that counts as an improvement (for early stopping only; the best step
    is the best value)."""
    final_adapter: Literal["auto", "last", "best"] = "auto"
    """What final/ holds: best = the adapter of the validation with the best `monitor` (its training state kept
    as checkpoints/best-step-NNNNNN.ckpt), last = the adapter of the step training ended on; auto = best
    when early stopping is enabled, else last."""

    def problems(self) -> list[str]:
        p = []
        if self.monitor not in MONITORS:
            p.append(f"model.early_stopping.monitor {self.monitor!r} is not a validation metric "
                     f"({', '.join(MONITORS)})")
        if self.patience < 1:
            p.append(f"model.early_stopping.patience must be >= 1, got {self.patience}")
        if self.min_delta < 0:
            p.append(f"model.early_stopping.min_delta must be >= 0, got {self.min_delta}")
        return p

    @property
    def resolved_mode(self) -> str:
        return self.mode or MONITORS.get(self.monitor, "min")

    @property
    def keeps_best(self) -> bool:
        """Whether final/ is the best validation's adapter."""
        return self.final_adapter == "best" or (self.final_adapter == "auto" and self.enabled)

    def early_stopping_callback(self) -> Optional["ConfiguredEarlyStopping"]:
        if not self.enabled:
            return None
        # after each validation, as the best step's checkpoint (Lightning's default checks at an epoch's end when a
        # run validates once an epoch, after the run's checkpoint of that step, which would not hold the count; and
        # reads trainer.val_check_interval, which a validation every so many seconds does not set)
        return ConfiguredEarlyStopping(monitor=self.monitor, mode=self.resolved_mode, patience=self.patience,
                                       min_delta=self.min_delta, strict=True, check_finite=True,
                                       check_on_train_epoch_end=False)

    def best_checkpoint_callback(self, root: str | Path) -> Optional["BestCheckpoint"]:
        if not self.keeps_best:
            return None
        return BestCheckpoint(dirpath=Path(root) / "checkpoints", filename=BEST_PREFIX + "{step:06d}",
                              auto_insert_metric_name=False, monitor=self.monitor, mode=self.resolved_mode,
                              save_top_k=1, save_last=False, save_on_train_epoch_end=False)


class ConfiguredEarlyStopping(EarlyStopping):
    """EarlyStopping whose patience is the run's config, also in a run continued from a checkpoint.

    Lightning's restores the saved patience with the saved count; a continued run with another
    `model.early_stopping.patience` keeps the count and best score and counts them against its own patience.
    A stop for exhausted patience that the new patience no longer calls for is cleared (final/'s `selection`
    then says the run was not stopped early, unless it stops again). The state key stays EarlyStopping's, so
    checkpoints written before this class resume it."""

    @property
    def state_key(self) -> str:
        return f"EarlyStopping{dict(monitor=self.monitor, mode=self.mode)!r}"

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience
        if self.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED and self.wait_count < patience:
            self.stopping_reason, self.stopping_reason_message = EarlyStoppingReason.NOT_STOPPED, None


class BestCheckpoint(ModelCheckpoint):
    """ModelCheckpoint of the best validation (a type of its own, so that it sits beside the run's
    RunCheckpoint rather than replacing it)."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning's, with the best file under this run's checkpoint folder when the run folder moved (else a
        resume of a moved run forgets its best step: run_checkpoint.state_in_dirpath)."""
        super().load_state_dict(state_in_dirpath(state_dict, self.dirpath))

    def best(self) -> Optional[dict]:
        """{checkpoint, value} of the best validation so far, or None if none was saved (or its file is gone)."""
        path = self.best_model_path
        if not path or not Path(path).is_file():
            return None
        score = self.best_model_score
        return {"checkpoint": str(path), "value": None if score is None else float(score)}
