"""Optimiser and learning-rate schedule of methods.md §4.6: AdamW over the LoRA parameters only,
linear warm-up then cosine decay to a floor, gradient-norm clipping."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal, Optional, Sequence, Union

import torch

from radar_train.models.vae_blocks import CHECKPOINTING

__all__ = ["OptimArgs", "WarmupCosine", "build_optimizer"]


@dataclass
class OptimArgs:
    """AdamW + warm-up + cosine schedule, gradient clipping, activation checkpointing, compilation."""

    learning_rate: float = 1e-4
    """Peak learning rate (after warm-up)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Linear warm-up steps (from learning_rate / warmup_steps to learning_rate)."""
    min_lr_ratio: float = 0.1
    """The cosine decays to min_lr_ratio · learning_rate at schedule_steps."""
    schedule_steps: Optional[int] = None
    """Length of the schedule in optimizer steps (default: trainer.max_steps, or the steps of max_epochs).
    Set it when a run is continued with a larger max_steps and the schedule must not change."""
    grad_clip_norm: Optional[float] = 1.0
    """Clip the global gradient norm of the LoRA parameters (null: no clipping). trainer.gradient_clip_val,
    if set, takes precedence."""
    activation_checkpointing: Union[bool, Literal["norms", "blocks"]] = False
    """Recompute decoder activations in the backward instead of keeping them (same loss and gradients):
    "norms" recomputes each GroupNorm + SiLU (the convolutions run once; under bf16-mixed on a GPU it keeps 4
    of the 10 activation tensors of a resnet block, as GroupNorm runs in float32 there); "blocks" (or true)
    recomputes each decoder block: the least memory, for about one more decoder forward of compute; false keeps
    everything (see the training benchmark)."""
    compile: bool = False
    """Run the decoder's blocks through torch.compile (inductor; one compiled function for all blocks, a
    handful of graphs compiled during the first steps): fuses GroupNorm, SiLU, residual sums and LoRA's
    additions. Same losses up to float rounding; the training benchmark's compiled_vs_eager row measures it."""

    def problems(self) -> list[str]:
        p = []
        if self.learning_rate <= 0:
            p.append(f"model.optim.learning_rate must be > 0, got {self.learning_rate}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            p.append(f"model.optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if not self.weight_decay >= 0:
            p.append(f"model.optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            p.append(f"model.optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            p.append(f"model.optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.schedule_steps is not None and self.schedule_steps < 1:
            p.append(f"model.optim.schedule_steps must be >= 1, got {self.schedule_steps}")
        if self.activation_checkpointing not in (False, True, *CHECKPOINTING):
            p.append("model.optim.activation_checkpointing must be false, norms, blocks or true (= blocks), got "
                     f"{self.activation_checkpointing!r}")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            p.append(f"model.optim.grad_clip_norm must be > 0 or null, got {self.grad_clip_norm}")
        return p

    @property
    def decoder_checkpointing(self) -> Optional[str]:
        """The decoder's checkpointing mode (`Decoder.checkpointing`) this option selects."""
        mode = self.activation_checkpointing
        return "blocks" if mode is True else (mode or None)


class WarmupCosine:
    """LR multiplier for LambdaLR: (step+1)/warmup during warm-up, then a cosine from 1 to `floor` at
    `total` steps, `floor` afterwards. A plain object (not a lambda) so that its state checkpoints."""

    def __init__(self, warmup: int, total: int, floor: float):
        self.warmup, self.total, self.floor = int(warmup), int(total), float(floor)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        t = min(1.0, (step - self.warmup) / span)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))


def build_optimizer(params: Iterable[torch.nn.Parameter], args: OptimArgs, total_steps: int,
                    extra: Sequence[tuple[Iterable[torch.nn.Parameter], float]] = ()):
    """(AdamW, LambdaLR stepping once per optimizer step) over `params` (the trainable ones), plus a parameter
    group per (parameters, learning-rate multiple) of `extra` (the same schedule, scaled)."""
    groups = [{"params": [p for p in params if p.requires_grad]}]
    groups += [{"params": [p for p in ps if p.requires_grad], "lr": args.learning_rate * scale} for ps, scale in extra]
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW(groups, lr=args.learning_rate, betas=tuple(args.betas), weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(args.warmup_steps, total_steps, args.min_lr_ratio))
    return opt, sched
