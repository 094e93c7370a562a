"""The run's checkpoint callback: Lightning's ModelCheckpoint, plus a checkpoint of the final step.

ModelCheckpoint(every_n_train_steps=N) saves only at multiples of N, so a run whose max_steps is not one
would end with a last.ckpt older than its final/ adapter; `RunCheckpoint` saves the final step when
training ends (step-NNNNNN.ckpt and last.ckpt), unless that step was just saved.

It saves at the end of a training step, before a validation due at that step has run; when one runs, the
step's checkpoints are written again after it, so that they hold what the validation changed in the callbacks
(early stopping's patience count, the best step: selection.py). Callbacks run in list order: those whose state
the validation changes come before this one (RadarLoraModule.configure_callbacks).
"""
from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["RunCheckpoint"]


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose last.ckpt always holds the step training ended on, and the validation run at it."""

    def on_validation_end(self, trainer, pl_module) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        super().on_validation_end(trainer, pl_module)
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and not trainer.fast_dev_run \
                and trainer.global_step > 0 and self._last_global_step_saved == trainer.global_step:
            candidates = self._monitor_candidates(trainer)  # the same files again (top-1, no monitor)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step > 0 and self._last_global_step_saved != trainer.global_step \
                and not trainer.fast_dev_run:
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)
