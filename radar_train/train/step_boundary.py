"""The last step boundary of a fit, kept so that a training step that raises still saves the step before it.

An exception in the middle of a training step (CUDA out of memory in the forward or backward, a cache shard
that cannot be read, a failed check in the loss) ended the fit with every step since the last periodic
checkpoint lost: up to `model.output.save_every_n_steps` of them. Yet the state at the end of the step before
the failed one is still there, but for two small parts. From one optimizer step's end to the next one's update,
a checkpoint's contents move only in
- the loops' state (progress counters, and the training loader's position: `fit_loop.state_dict`), which counts
  the failed step's batches as fetched;
- the module's step random stream (train/rng.py), which counts its forwards.
The trained weights, the optimizer's moments, the learning-rate schedule, the gradient scaler, the weight
average and the callbacks' states change in the optimizer step or after it, at the step's end.

`LastBoundary` keeps those two parts as of each boundary (small: a few dicts of counters) and notes when an
optimizer step begins its update (`on_before_optimizer_step`, which Lightning calls after the closure's forward
and backward, just before `optimizer.step` changes the weights). When a step fails before that, `RunCheckpoint`
saves the boundary's step: the checkpoint of now with the loop state and the stream of the boundary, which is
what its periodic save would have written at that step, so `--ckpt_path last` resumes exactly. A step that
fails after its update began (in `optimizer.step`, a scheduler, an end-of-step hook) is not saved: the run's
last checkpoint stays the newest.

A validation that raises (CUDA out of memory in its larger batches, an unreadable validation shard) comes after
its step's update, and the step's save waits for it (run_checkpoint.py): that step is saved with the validation
owed. `record_validation` keeps the boundary as the validation begins, and the checkpoint gets the loop state
of a save made in the validation's first batch, which Lightning resumes by running the validation again
(its "restarted mid-evaluation" stage), before any further training (at the last step, where a resumed fit runs
no training loop, RunCheckpoint runs it as the fit loop starts): the resumed run validates, saves and trains on
as the uninterrupted one. Not with a validation every so many seconds (`val_check_interval` a time), which is not
due again when a run resumes: such a validation that fails saves nothing, as a step that fails after its update. The weight average the validation swapped into the module is swapped back first
(ema.AdapterEMA.on_exception). A failure after a callback had taken the validation's results (early stopping's
count, the best step: their on_validation_end) saves nothing: the validation run again would count twice.

Under DDP only global rank 0 saves, and without the save's collectives (`local_collectives`): the other ranks
are in the failed step's collectives, or gone. The ranks were at the same boundary (every optimizer step is a
collective), and rank 0's checkpoint is the one every rank resumes from. A rank other than 0 that fails leaves
rank 0 waiting in the step's gradient all-reduce; when that ends in an error (the process group's timeout, or
the peer's exit), rank 0 saves then.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator, Optional

import torch

__all__ = ["LastBoundary", "local_collectives"]


class LastBoundary:
    """A fit's last step boundary: its step, the loop state and module stream there, and whether an optimizer
    update began since (`moved`)."""

    def __init__(self) -> None:
        self.step: Optional[int] = None
        self.epoch: Optional[int] = None
        self.loops: Optional[dict[str, Any]] = None
        self.stream: Any = None
        self.moved = False
        self.save_failed = False  # the boundary's own checkpoint save raised (a retry would meet the same disk)
        self.validation = False  # the boundary is a step whose validation has begun (`record_validation`)
        self.callbacks: Optional[dict[str, Any]] = None  # the callbacks' states as that validation began

    def record(self, trainer, pl_module) -> None:
        """The boundary at the end of the current optimizer step (after the validation due at it, if any)."""
        loops = getattr(getattr(trainer, "_checkpoint_connector", None), "_get_loops_state_dict", None)
        if loops is None:  # (a Lightning without it: what its dump holds is unknown, so no boundary is kept)
            self.step = None
            return
        self.step, self.epoch = trainer.global_step, trainer.current_epoch
        self.loops = copy.deepcopy(loops())
        state = getattr(pl_module, "step_stream_state", None)
        self.stream = copy.deepcopy(state()) if callable(state) else None
        self.moved = self.save_failed = self.validation = False
        self.callbacks = None

    def record_validation(self, trainer, pl_module, own) -> None:
        """The boundary at the end of the current optimizer step, whose validation begins now (its loop has been
        reset): kept with the validation loop's progress at its first batch, and the states of the callbacks that
        take a validation's results (but `own`, the callback saving it)."""
        self.record(trainer, pl_module)
        progress = (self.loops or {}).get("fit_loop", {}).get("epoch_loop.val_loop.batch_progress")
        if self.step is None or not isinstance(progress, dict) or not {"total", "current"} <= progress.keys():
            self.step = None  # (a Lightning whose loop state differs: no validation boundary)
            return
        for counts in (progress["total"], progress["current"]):  # batch 0 fetched and started, none processed
            counts["ready"] = counts["started"] = counts["completed"] + 1
            counts["processed"] = counts["completed"]
        progress["is_last_batch"] = False
        self.validation = True
        self.callbacks = copy.deepcopy(_result_states(trainer, own))

    def callbacks_changed(self, trainer, own) -> bool:
        """Whether a callback that takes a validation's results has changed its state since the validation began."""
        return not _same(_result_states(trainer, own), self.callbacks or {})

    def update_began(self) -> None:
        self.moved = True

    def savable(self, trainer) -> bool:
        """Whether the state now is the boundary's but for the parts kept: a boundary after at least one step,
        at the trainer's step, and no update since."""
        return self.step is not None and self.step > 0 and not self.moved and not self.save_failed \
            and trainer.global_step == self.step

    def rewind(self, pl_module) -> None:
        """Put the kept module stream back (the loops' state goes into the checkpoint: `rewind_checkpoint`)."""
        restore = getattr(pl_module, "restore_step_stream", None)
        if callable(restore):
            restore(copy.deepcopy(self.stream))

    def rewind_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["loops"] = copy.deepcopy(self.loops)
        checkpoint["epoch"] = self.epoch
        checkpoint["global_step"] = self.step


def _result_states(trainer, own) -> dict[str, Any]:
    """The states of the callbacks that take a validation's results, by state key: early stopping (its count, its
    best score) and the checkpoint callbacks (the best step's file), but `own`. (Not every callback: a Timer's
    state is the time elapsed, which differs at every call.)"""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    return {c.state_key: c.state_dict() for c in trainer.callbacks
            if isinstance(c, (EarlyStopping, ModelCheckpoint)) and c is not own}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape \
            and a.dtype == b.dtype and (bool(torch.equal(a, b)) or  # (nan where both have it: an unset score)
                                        (a.is_floating_point() and bool(((a == b) | (a.isnan() & b.isnan())).all())))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:  # (nan, as an unset score)
        return True
    try:
        return bool(a == b)
    except Exception:  # (an object without a plain ==)
        return a is b


@contextlib.contextmanager
def local_collectives(strategy) -> Iterator[None]:
    """Within the block, the strategy's barrier, broadcast and reductions act on this process alone (a save by
    rank 0 while the other ranks cannot join it). Only for a single-process strategy or rank 0."""
    if getattr(strategy, "world_size", 1) <= 1:
        yield
        return
    local = {"barrier": lambda *args, **kwargs: None,
             "broadcast": lambda obj, src=0: obj,
             "reduce_boolean_decision": lambda decision, all=True: bool(decision),
             "reduce": lambda tensor, *args, **kwargs: tensor}
    shadowed = {name: strategy.__dict__[name] for name in local if name in strategy.__dict__}
    for name, fn in local.items():
        setattr(strategy, name, fn)
    try:
        yield
    finally:
        for name in local:
            if name in shadowed:
                setattr(strategy, name, shadowed[name])
            else:
                delattr(strategy, name)
