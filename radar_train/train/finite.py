"""Stop a run whose training diverged before it saves or exports NaN weights.

A learning rate far too high (or a loss that overflows) makes the gradients NaN or inf, and AdamW then turns
every weight it updates into NaN. Such a run trained on, saved those weights over its good checkpoints, exported
a NaN final/ and exited 0. The trained weights are checked where the run reads values back to the host anyway,
so that the steps in between still queue on the GPU without waiting (test_host_readbacks.py): at every logging
step (`trainer.log_every_n_steps`), before every validation of the fit, and before every checkpoint save and
adapter export (RunCheckpoint, RadarLoraModule.export). Weights holding NaN or inf raise `TrainingDiverged`,
and the run's checkpoint callback saves nothing for it (its last checkpoint, taken before, is the run's newest
good state). Under fp16 mixed precision the gradient scaler skips the updates whose gradients overflowed, so the
weights stay finite there and the check finds nothing.
"""
from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["FiniteWeights", "TrainingDiverged", "check_finite_weights"]


class TrainingDiverged(RuntimeError):
    """The trained weights hold NaN or inf."""


def check_finite_weights(trainer, pl_module) -> None:
    """TrainingDiverged if a trained tensor of `pl_module` (those with requires_grad) holds NaN or inf."""
    trained = [p.detach() for p in pl_module.parameters() if p.requires_grad]
    # (the largest magnitude of each: NaN propagates through amax, and unlike a sum it cannot overflow)
    if not trained or bool(torch.stack([p.abs().amax().float() for p in trained]).isfinite().all()):
        return
    loss = trainer.callback_metrics.get("train/loss")
    said = f"; the training loss is {float(loss):.4g}" if isinstance(loss, torch.Tensor) and loss.numel() == 1 else ""
    lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
    rate = f" (this step's rate {lr:.3g})" if isinstance(lr, float) else ""
    raise TrainingDiverged(
        f"training diverged by step {trainer.global_step}: the trained LoRA weights hold NaN or inf{said}; lower "
        f"--model.optim.learning_rate{rate} or --model.optim.grad_clip_norm, or train in another --trainer.precision")


class FiniteWeights(Callback):
    """Checks the trained weights at each logging step and before each validation of a fit (the saves and exports
    check for themselves). Listed before the run's checkpoint callbacks, so that it raises before they save."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.log_every_n_steps > 0 and trainer.global_step % trainer.log_every_n_steps == 0 \
                and not trainer.fit_loop.epoch_loop._should_accumulate():
            check_finite_weights(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            check_finite_weights(trainer, pl_module)
