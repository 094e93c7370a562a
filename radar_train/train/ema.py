"""The `model.ema` config group: an exponential moving average of the trained weights.

Lightning's `WeightAveraging` callback keeps the average (a `torch.optim.swa_utils.AveragedModel` of the
module, updated every `every_n_steps` optimizer steps with torch's EMA, `get_ema_multi_avg_fn`): validation runs on it, checkpoints hold it as their `state_dict` (the
current weights beside it, for resume), and when training ends it replaces the current weights, so final/,
best-step checkpoints, step-NNNNNN/ exports and `radar-train export` all give the averaged adapter.
`AdapterEMA` adapts it to this project's checkpoints, which hold only the trained tensors (the frozen decoder
is rebuilt from its identity), and to `start_step`: until then the average is simply the current weights
(each update restarts it), so validations before it see the model as trained so far.

Why: an adversarial term keeps the adapters chasing the discriminator to the end of training; the average of
the last few hundred steps is the usual remedy in GAN training (docs/training.md, Weight averaging).
"""
from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging

__all__ = ["EmaArgs", "AdapterEMA"]


@dataclass
class EmaArgs:
    """Exponential moving average of the adapters (and label conditioning) over training steps; off at decay 0."""

    decay: float = 0.0
    """Weight of the old average at each update (0.998: a half-life of about 350 steps); 0: no averaging."""
    start_step: int = 0
    """Optimizer step from which the average accumulates (before it, the average is the current weights)."""
    every_n_steps: int = 1
    """Update the average every this many optimizer steps."""

    def problems(self) -> list[str]:
        p = []
        if not 0 <= self.decay < 1:
            p.append(f"model.ema.decay must be in [0, 1), got {self.decay}")
        if self.start_step < 0:
            p.append(f"model.ema.start_step must be >= 0, got {self.start_step}")
        if self.every_n_steps < 1:
            p.append(f"model.ema.every_n_steps must be >= 1, got {self.every_n_steps}")
        return p

    @property
    def enabled(self) -> bool:
        return self.decay > 0

    def callback(self) -> Optional["AdapterEMA"]:
        return AdapterEMA(self) if self.enabled else None


class AdapterEMA(WeightAveraging):
    """An exponential moving average for RadarLoraModule (module docstring)."""

    def __init__(self, args: EmaArgs):
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        # torch's EMA in its lerp form, a + (1 - decay)(w - a): exact for the frozen decoder's tensors (w == a),
        # which Lightning's EMAWeightAveraging (decay·a + (1 - decay)·w) rounds a little at every update, so
        # that the teacher validation runs on drifted
        self._avg_fn = get_ema_multi_avg_fn(args.decay)
        super().__init__(use_buffers=True, multi_avg_fn=self._avg_fn)
        self.args = args
        self._count: Optional[int] = None  # the average's update count (n_averaged) on the host; None: read it
        self._trained: Optional[dict[str, Any]] = None  # the weights as trained, once the average replaced them
        self._validating = False  # a validation has the average in the module's weights (swapped at its start)

    def should_update(self, step_idx: Optional[int] = None, epoch_idx: Optional[int] = None) -> bool:
        """After optimizer steps N, 2N, ... (step_idx is zero-based: global_step - 1), so that a run of a multiple
        of N steps averages its last step."""
        return step_idx is not None and (step_idx + 1) % self.args.every_n_steps == 0

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        from radar_train.train.module import is_trained_key

        self._trained = {k: v.detach().clone() for k, v in pl_module.state_dict().items() if is_trained_key(k)}
        super().on_train_end(trainer, pl_module)  # the average into the module's weights (final/, exports)

    def on_save_checkpoint(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                           checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._trained is not None and "current_model_state" in checkpoint:
            # saved after training ended (the final step's checkpoint): the module holds the average, but a
            # run continued from this checkpoint goes on from the weights as trained
            checkpoint["current_model_state"] = {**checkpoint["current_model_state"], **self._trained}

    def on_validation_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        self._validating = self._average_model is not None

    def on_validation_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_validation_epoch_end(trainer, pl_module)
        self._validating = False

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        """A validation that raised leaves the average in the module's weights: the weights as trained go back
        (before the run's checkpoint callback saves the step, which comes later in the list)."""
        if self._validating:
            self._validating = False
            self._swap_models(pl_module)

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        avg = self._average_model
        if avg is None:
            return
        if trainer.global_step - 1 < self.args.start_step:
            avg.n_averaged.zero_()  # before start_step the average restarts from the current weights
            self._count = 0
            self._update(pl_module)
            self._latest_update_step = trainer.global_step
        elif trainer.global_step > self._latest_update_step and self.should_update(step_idx=trainer.global_step - 1):
            self._update(pl_module)  # (WeightAveraging's own rule, with the update below)
            self._latest_update_step = trainer.global_step

    def _update(self, pl_module: "pl.LightningModule") -> None:
        """`AveragedModel.update_parameters` (use_buffers: parameters and buffers; per device and dtype, torch's EMA
        function), with the update count kept on the host: torch reads `n_averaged` back from the device (or copies
        it there) at every update, a wait for the step's kernels that keeps the host from queueing the next step.
        It is read once per fit or resume."""
        avg = self._average_model
        if self._count is None:
            self._count = int(avg.n_averaged)
        groups: dict[tuple, tuple[list, list]] = {}
        for a, m in zip(itertools.chain(avg.module.parameters(), avg.module.buffers()),
                        itertools.chain(pl_module.parameters(), pl_module.buffers()), strict=True):
            ours, theirs = groups.setdefault((a.device, a.dtype), ([], []))
            ours.append(a.detach())
            theirs.append(m.detach().to(a.device))
        with torch.no_grad():
            for ours, theirs in groups.values():
                if self._count == 0:  # the first update copies
                    for a, m in zip(ours, theirs):
                        a.copy_(m)
                else:
                    self._avg_fn(ours, theirs, avg.n_averaged)  # (torch's EMA does not use the count)
            avg.n_averaged.add_(1)
        self._count += 1

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._count = None

    def on_load_checkpoint(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                           checkpoint: dict[str, Any]) -> None:
        # the checkpoint's state_dict (the average) and current_model_state hold the trained tensors only: load
        # both non-strictly; the frozen rest is what setup() copied
        avg = self._average_model
        if avg is None:
            return
        self._count = None  # (n_averaged comes from the checkpoint)
        avg.module.load_state_dict(checkpoint["state_dict"], strict=False)
        if "current_model_state" in checkpoint:
            avg.n_averaged.copy_(checkpoint.get("averaging_state", {}).get("n_averaged", avg.n_averaged))
            pl_module.load_state_dict(checkpoint["current_model_state"], strict=False)
        else:  # a checkpoint written without averaging: the average starts from its weights
            avg.n_averaged.zero_()

    @contextmanager
    def averaged(self, pl_module: "pl.LightningModule") -> Iterator[None]:
        """The average in the module's weights for the duration (a step export); nothing before fit's setup."""
        if self._average_model is None:
            yield
            return
        self._swap_models(pl_module)
        try:
            yield
        finally:
            self._swap_models(pl_module)

