"""The run's checkpoint callback: Lightning's ModelCheckpoint, plus a checkpoint of the final step.

ModelCheckpoint(every_n_train_steps=N) saves only at multiples of N, so a run whose max_steps is not one
would end with a last.ckpt older than its final/ adapter; `RunCheckpoint` saves the final step when
training ends (step-NNNNNN.ckpt and last.ckpt), unless that step was just saved.

A step at which a validation is due is saved after that validation, not at the end of the step: the
checkpoint then holds what the validation changed in the callbacks (early stopping's patience count, the
best step: selection.py), and a run killed during the validation resumes from the checkpoint before and
runs the validation again. (Lightning resumes a checkpoint saved at the end of such a step *past* the
validation, so a kill during it would lose that validation, and with it early stopping's count.) Callbacks
run in list order: those whose state the validation changes come before this one
(RadarLoraModule.configure_callbacks).

A training step that raises (CUDA out of memory, an unreadable shard) saves the step before it, when the failed
step had not begun its optimizer update; a validation that raises saves its step with the validation owed, which
the resumed run runs first and then saves the step again, as the uninterrupted run did: step_boundary.py.
radar-train then names the saved step.

Under SLURM auto-requeue the requeue save (hpc_ckpt_N.ckpt) is taken at the same points, not wherever the
signal lands (requeue.py: a mid-step save resumed one batch late).

With `trainer.accumulate_grad_batches` every save point is the end of an optimizer step: its last
micro-batch, or the validation after it. `val_check_interval` counts batches, so a validation can also follow
a micro-batch inside a step (after an epoch with an odd batch count); nothing is saved there, and a SIGTERM
or requeue signal waits for the step's last micro-batch. A save there would count the micro-batch as trained
(loop counters, loader position) without its accumulated gradient, and the resumed run would skip it.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from lightning.pytorch.callbacks import ModelCheckpoint

from radar_train.outputs import atomic_file

from .finite import TrainingDiverged, check_finite_weights
from .requeue import StepBoundaryRequeue
from .step_boundary import LastBoundary, local_collectives
from .stop_signal import StepBoundaryStop

STEP_CKPT = re.compile(r"step-(\d+)\.ckpt")  # a step's checkpoint file in RUN/checkpoints (RunCheckpoint's name)

__all__ = ["RunCheckpoint", "last_failure", "state_in_dirpath"]

log = logging.getLogger(__name__)
last_failure: dict = {}  # this process's last fit that raised: {"step": saved step or None, "why": if not saved}


def state_in_dirpath(state: dict[str, Any], dirpath: str) -> dict[str, Any]:
    """A ModelCheckpoint's saved `state` with its files found in `dirpath`: when the files it names under the
    saved dirpath (best_model_path, kth_best_model_path, last_model_path, the keys of best_k_models) are in
    `dirpath` (a run folder moved or copied, then resumed), those paths get `dirpath` for that prefix and the
    state's dirpath becomes `dirpath`. Lightning's load_state_dict drops the best score, the kept files and
    last.ckpt's path when the dirpath differs: the resumed run would take its next validation for the best, keep
    a second best-step file, write last-v1.ckpt and keep every step file saved before the move. When none of
    them is in `dirpath` (a new fit from another run folder's checkpoint, whose files stay there), the state is
    Lightning's to handle, as it was."""
    old = state.get("dirpath")
    if not isinstance(old, str) or not dirpath or old == dirpath:
        return state
    old = old.rstrip(os.sep)

    def moved(path: Any) -> Any:
        if isinstance(path, str) and (path == old or path.startswith(old + os.sep)):
            return str(dirpath) + path[len(old):]
        return path

    named = [state.get(k) for k in ("best_model_path", "kth_best_model_path", "last_model_path")]
    named += list(state.get("best_k_models") or {}) if isinstance(state.get("best_k_models"), dict) else []
    here = [moved(p) for p in named if isinstance(p, str) and p and moved(p) != p]
    if not here or not any(os.path.isfile(p) for p in here):
        return state
    out = dict(state, dirpath=dirpath)
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in out:
            out[key] = moved(out[key])
    if isinstance(out.get("best_k_models"), dict):
        out["best_k_models"] = {moved(k): v for k, v in out["best_k_models"].items()}
    return out


def validation_follows(trainer) -> bool:
    """Whether the fit loop runs a validation right after the current training step (Lightning's own test,
    `_should_check_val_fx`; False where this Lightning lacks it, which keeps the save at the step's end)."""
    loop = trainer.fit_loop.epoch_loop
    check, fetcher = getattr(loop, "_should_check_val_fx", None), getattr(trainer.fit_loop, "_data_fetcher", None)
    if check is None or fetcher is None or getattr(loop, "_skip_next_val", False) or not trainer.enable_validation:
        return False
    return bool(check(fetcher))


def step_ended(trainer) -> bool:
    """Whether the batch just trained (or just validated after) ended an optimizer step: not a micro-batch that
    accumulates into the next (Lightning's `_should_accumulate`, which steps on an epoch's last batch). Only
    such a point can be saved and resumed exactly: the checkpoint holds no accumulated gradient."""
    return not trainer.fit_loop.epoch_loop._should_accumulate()


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose last.ckpt always holds the step training ended on, and the validation run at it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._after_validation = False  # this step's save waits for the validation due at it
        self._requeue = StepBoundaryRequeue()
        self._requeue_after_validation = False  # so does a requeue save asked for during the step
        self._stop = StepBoundaryStop()
        self._stop_after_validation = False  # so does a SIGTERM's save and stop
        self._boundary = LastBoundary()  # the last step boundary, saved when the next step raises
        self._rewinding = False  # the save of that boundary is being written
        self._validation_owed: Optional[int] = None  # resumed from a save whose validation at this step failed

    def setup(self, trainer, pl_module, stage: str) -> None:
        from .checkpoint_io import use_beside_checkpoint_io

        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            use_beside_checkpoint_io(trainer)  # a failed save keeps the last good checkpoint (checkpoint_io.py)
            self._requeue.install(trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._boundary = LastBoundary()
        self._failed_save = None
        last_failure.clear()
        self._stop.install()  # (after Lightning's own SIGTERM handler, which it registers before training)

    def on_fit_start(self, trainer, pl_module) -> None:
        super().on_fit_start(trainer, pl_module)
        self._restore_last(trainer)
        fit_loop = trainer.fit_loop
        fit_loop.__dict__.pop("run", None)  # (the one of an earlier fit of this trainer that raised before its loop)
        run = fit_loop.run

        def run_owed_first() -> None:  # (the loops are restored by now, the model on its device)
            fit_loop.__dict__.pop("run", None)
            if self._validation_owed == trainer.global_step and 0 < trainer.max_steps <= trainer.global_step:
                self._run_owed_validation(trainer)
            run()

        fit_loop.run = run_owed_first

    @property
    def validation_owed(self) -> Optional[int]:
        """The step whose validation the checkpoint this run resumed from owes (it failed there), until it ran."""
        return self._validation_owed

    def _run_owed_validation(self, trainer) -> None:
        """Resumed from the save of a validation that failed at the run's last step: Lightning runs no training
        loop at max_steps, so not the validation its epoch loop runs again at any other step; it runs here, before
        the fit ends and the module writes final/ (which may be the best step's); the step is saved after it."""
        loop, stage = trainer.fit_loop.epoch_loop.val_loop, trainer.state.stage
        trainer.validating = True
        try:
            loop.run()
        finally:
            loop.restarting = False
            trainer.state.stage = stage

    def _restore_last(self, trainer) -> None:
        """A run resumed from a step file of its checkpoints/ newer than its last.ckpt (last.ckpt's save failed on a
        full disk, or the run was killed between the two; `--ckpt_path last` takes the newer file) copies it to
        last.ckpt first: a run resumed at its end saves nothing, and its last.ckpt stayed missing or old for good
        (`radar-train export --ckpt RUN/checkpoints/last.ckpt` failed, radar-demo could not go on)."""
        if not (trainer.ckpt_path and self.dirpath and self.save_last):
            return
        src, last = Path(trainer.ckpt_path), Path(self.dirpath) / "last.ckpt"
        m = STEP_CKPT.fullmatch(src.name)
        if m is None or not src.is_file() or src.resolve().parent != Path(self.dirpath).resolve():
            return
        copied = False
        if trainer.is_global_zero:
            try:
                held = torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("global_step", -1) \
                    if last.is_file() else -1
            except Exception:  # noqa: BLE001 - an unreadable last.ckpt is replaced by the good step file
                held = -1
            if held < int(m.group(1)):
                with atomic_file(last) as tmp:
                    shutil.copyfile(src, tmp)
                log.info("%s: a copy of %s, the run's newest checkpoint", last, src.name)
                copied = True
        if trainer.world_size > 1:  # (rank 0 decides, at the same point on every rank)
            copied = bool(trainer.strategy.broadcast(copied, src=0))
        if copied:  # the run's own last.ckpt, which its next save replaces (one found there that is not
            # `last_model_path`, as the state of a first save has it, Lightning leaves alone: last-v1.ckpt beside it)
            self.last_model_path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._requeue.uninstall()
        self._stop.uninstall()
        super().teardown(trainer, pl_module, stage)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._rewinding and self._boundary.validation:
            state["validation_owed"] = self._boundary.step
        return state

    def adopt_saved_state(self, checkpoint: dict[str, Any]) -> None:
        """The state a RunCheckpoint of other save settings saved in `checkpoint`, keyed for this one. Lightning keys
        a ModelCheckpoint's state by its settings (every_n_train_steps among them), so a run resumed with another
        model.output.save_every_n_steps found none: it took its own last.ckpt for another callback's, wrote
        last-v1.ckpt beside it (`--ckpt_path last` and `radar-train export` of last.ckpt then read an old step) and
        kept every step file from then on."""
        states = checkpoint.get("callbacks")
        if not isinstance(states, dict) or self.state_key in states:
            return
        prefix = type(self).__qualname__ + "{"
        saved = [k for k in states if isinstance(k, str) and k.startswith(prefix)]
        if len(saved) == 1:
            states[self.state_key] = states.pop(saved[0])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning's, with the saved files under this run's checkpoint folder when the run folder moved."""
        state_dict = dict(state_dict)
        self._validation_owed = state_dict.pop("validation_owed", None)
        super().load_state_dict(state_in_dirpath(state_dict, self.dirpath))

    def on_validation_start(self, trainer, pl_module) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        super().on_validation_start(trainer, pl_module)
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking or not step_ended(trainer):
            return
        if self._validation_owed == trainer.global_step:
            # the owed validation, run again by Lightning's restart mid-evaluation, which puts back the current
            # counters of the validation loop but not its totals: they would stay a batch ahead, and every later
            # resume would take its checkpoint for one saved in a validation and run that validation again
            trainer.fit_loop.epoch_loop.val_loop.batch_progress.total.reset_on_restart()
        if getattr(trainer, "_val_check_time_interval", None) is None:  # (a validation every so many seconds
            self._boundary.record_validation(trainer, pl_module, self)  # is not due again when a run resumes)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if self._validation_owed is not None:  # training goes on and the owed validation has not run again
            if trainer.is_global_zero:
                log.warning("the validation of step %d, which the checkpoint owed, did not run again on resume",
                            self._validation_owed)
            trainer.fit_loop.epoch_loop.val_loop.batch_progress.total.reset_on_restart()
            self._validation_owed = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not step_ended(trainer):  # a micro-batch inside a step: its state is saved after the step's last one
            return
        follows = validation_follows(trainer)
        if not follows:  # (before the collectives below: a rank that fails in them saves this step)
            self._boundary.record(trainer, pl_module)
        requeue = self._requeue.due(trainer)
        if self._stop.due(trainer):
            if follows:  # after that validation (on_validation_end), as the run's own save of this step
                self._stop_after_validation = True
            else:
                self._save_and_stop(trainer)
        if self._train_time_interval is None and follows:
            every = self._every_n_train_steps
            self._after_validation = every >= 1 and trainer.global_step % every == 0 \
                and not self._should_skip_saving_checkpoint(trainer)
        else:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if requeue and follows:
            self._requeue_after_validation = True
        elif requeue:
            self._requeue.requeue(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        super().on_validation_end(trainer, pl_module)
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking or not step_ended(trainer):
            return  # (a validation inside an optimizer step: its saves, and a signal's, wait for the step's end)
        self._boundary.record(trainer, pl_module)
        owed, self._validation_owed = self._validation_owed == trainer.global_step, None
        if not trainer.fast_dev_run and trainer.global_step > 0 and (
                self._after_validation or owed or self._last_global_step_saved == trainer.global_step):
            self._after_validation = False
            self._save_both(trainer)
        elif not trainer.fast_dev_run and trainer.global_step > 0 and self._best_saved_now(trainer):
            # the best step's file is the run's newest checkpoint: last.ckpt follows it, so that `--ckpt_path last`
            # (and the SLURM requeue) resumes from there rather than finding no last.ckpt (a run killed after its
            # first validation, before its first periodic save) or an older one
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if self._stop_after_validation or self._stop.due(trainer):  # a SIGTERM during the validation, too
            self._stop_after_validation = False
            self._save_and_stop(trainer)
        if self._requeue_after_validation or self._requeue.due(trainer):  # a signal during the validation, too
            self._requeue_after_validation = False
            self._requeue.requeue(trainer)

    def _should_remove_checkpoint(self, trainer, previous: str, current: str) -> bool:
        """Lightning's rule, but the step file the run resumed from goes as any older step file does once a newer
        one is saved: a run resumed from a step file (`--ckpt_path last` after a kill between a save's two files,
        or a job script naming the newest file) kept it for good beside the newer ones."""
        if previous != current and trainer.ckpt_path is not None and self.dirpath is not None \
                and os.path.abspath(previous) == os.path.abspath(trainer.ckpt_path) \
                and os.path.dirname(os.path.abspath(previous)) == os.path.abspath(self.dirpath) \
                and STEP_CKPT.fullmatch(os.path.basename(previous)):
            return True
        return super()._should_remove_checkpoint(trainer, previous, current)

    def _step_file_kept(self, b) -> Optional[str]:
        """The step file of the boundary's step when what failed was the last.ckpt save after it, else None."""
        failed = getattr(self, "_failed_save", None)
        if not (b.save_failed and failed and os.path.basename(failed) == "last.ckpt" and b.step and self.dirpath):
            return None
        for name in sorted(os.listdir(self.dirpath)):
            m = STEP_CKPT.fullmatch(name)
            if m and int(m.group(1)) == b.step:
                return os.path.join(self.dirpath, name)
        return None

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        check_finite_weights(trainer, trainer.lightning_module)  # (NaN weights are not saved over good ones)
        try:
            super()._save_checkpoint(trainer, filepath)
        except BaseException:
            self._boundary.save_failed = not self._rewinding  # (the failed step's save reports its own failure)
            self._failed_save = filepath
            raise

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._boundary.update_began()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._rewinding:
            self._boundary.rewind_checkpoint(checkpoint)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """A fit that raised: save its last step boundary if the failed step had not changed the weights yet
        (step_boundary.py). Not for KeyboardInterrupt (a second Ctrl-C: stop at once) or SystemExit (a signal's
        stop, saved at its step). A save that fails leaves the run's last checkpoint as it was, and the fit's own
        error is the one raised."""
        from lightning.pytorch.trainer.states import TrainerFn

        super().on_exception(trainer, pl_module, exception)
        if not isinstance(exception, Exception) or trainer.state.fn != TrainerFn.FITTING or trainer.fast_dev_run:
            return
        b = self._boundary
        last_failure.clear()
        if not trainer.is_global_zero:  # (rank 0 saves, and says so: one line per run, not one per process)
            return
        last_failure.update(step=None, why=None)
        if isinstance(exception, TrainingDiverged):  # (the weights now are NaN: the last checkpoint is the newest good)
            last = os.path.join(self.dirpath, "last.ckpt") if self.dirpath else None
            last_failure.update(why="its weights diverged", diverged=last if last and os.path.isfile(last) else "")
            return
        # the run's end, saved (at the end of its training, or the checkpoint it resumed at its end), failed in the
        # export (final/) that follows
        exporting = getattr(pl_module, "exporting", None)
        if exporting and (self._last_global_step_saved == trainer.global_step or
                          (b.step is None and trainer.ckpt_path is not None)):
            last_failure.update(step=trainer.global_step, export=exporting)
            return
        step_file = self._step_file_kept(b)
        if step_file is not None:  # (last.ckpt's save failed after the step's file: the step is saved there)
            last_failure.update(step=b.step, last_failed=step_file)
            return
        if not b.savable(trainer):
            last_failure["why"] = f"the save of step {b.step} failed" if b.save_failed else \
                "the failure came after an optimizer update began" if b.moved else \
                "no training step had ended in this run"
            return
        last_failure["validation"] = b.validation
        if b.validation and b.callbacks_changed(trainer, self):
            last_failure["why"] = (f"the validation at step {b.step} failed after a callback had taken its results "
                                   "(early stopping, the best step): running it again would count it twice")
            return
        if self._last_global_step_saved == b.step and not b.validation:
            last_failure["step"] = b.step
            return
        log.warning("the %s step %d raised %s: saving step %d", "validation at" if b.validation else
                    "training step after", b.step, type(exception).__name__, b.step)
        try:
            b.rewind(pl_module)
            self._rewinding = True
            with local_collectives(trainer.strategy):
                self._save_both(trainer)
            last_failure["step"] = b.step
        except Exception as e:  # (the disk may be what failed)
            log.warning("could not save step %d: %s", b.step, e)
            last_failure["why"] = f"saving step {b.step} failed too ({type(e).__name__}: {e})"
        finally:
            self._rewinding = False

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step > 0 and self._last_global_step_saved != trainer.global_step \
                and not trainer.fast_dev_run:
            # with the loop state of the last step's end, as a periodic save there would hold it: Lightning has
            # counted the epoch complete by now, so a run continued to a larger max_steps from this state started
            # the next epoch, leaving the rest of this one's batches untrained without a word
            self._rewinding = self._boundary.savable(trainer) and not self._boundary.validation
            try:
                self._save_both(trainer)
            finally:
                self._rewinding = False
        self._after_validation = False
        if not trainer.fast_dev_run:  # (Lightning's own end-of-training save does not look at it)
            super().on_train_end(trainer, pl_module)

    def _best_saved_now(self, trainer) -> bool:
        """Whether another ModelCheckpoint (the best step's: selection.BestCheckpoint) saved this very step, after
        this callback's last save."""
        step = trainer.global_step
        return self._last_global_step_saved != step and any(
            isinstance(c, ModelCheckpoint) and c is not self and getattr(c, "_last_global_step_saved", None) == step
            for c in trainer.callbacks)

    def _save_and_stop(self, trainer) -> None:
        """SIGTERM at a save point: this step's checkpoint (unless just saved, or the run was requeued: the
        requeue checkpoint is the one its restart resumes from, and SLURM's SIGTERM follows every requeue),
        then Lightning's stop."""
        if 0 < trainer.max_steps <= trainer.global_step:  # the last step: training ends now anyway, with final/
            log.info("SIGTERM at the last step: finishing (checkpoint and final/) instead of stopping")
            self._stop.uninstall()
            return
        if trainer.global_step > 0 and self._last_global_step_saved != trainer.global_step \
                and not trainer.fast_dev_run and not self._requeue.done:
            self._save_both(trainer)
        self._stop.stop(trainer)

    def _save_both(self, trainer) -> None:
        candidates = self._monitor_candidates(trainer)  # (top-1, no monitor: the step's file and last.ckpt)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
