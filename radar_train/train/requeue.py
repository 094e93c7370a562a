"""SLURM's requeue signal taken at a step boundary, so that the requeue checkpoint resumes exactly.

Lightning's auto-requeue (`SLURMEnvironment(auto_requeue=True)`, which radar-train adds under SLURM) saves
hpc_ckpt_N.ckpt from inside its signal handler, wherever the signal lands. In the middle of a training step
the data loader's state already counts the step's batch while the fit loop's progress counts only the
completed steps, so the run resumed from that file skipped a batch (and the step's random stream had moved
on): not what the uninterrupted job would have trained.

`StepBoundaryRequeue` takes the signal first: its handler only notes it (Lightning installs its own handler
only where none is set), and the run's checkpoint callback (`RunCheckpoint`) asks `due()` at its own save
points: the end of an optimizer step (with `trainer.accumulate_grad_batches`, its last micro-batch: a save
after an earlier one counted it as trained without its gradient), or the end of the validation due at that
step. There Lightning's handler runs as it would have (the loggers finalised, hpc_ckpt_N.ckpt saved,
`scontrol requeue`), and the file holds what last.ckpt would hold at that step. Under DDP the ranks agree at
each save point (a flag set on any rank counts), so all of them save at the same step.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading

log = logging.getLogger(__name__)

__all__ = ["StepBoundaryRequeue", "hold_requeue_signal", "last_requeue", "unnumbered_names"]

_early = {"noted": False}
last_requeue: dict = {}  # {"root", "step"} of this process's requeue save, for the command's last line


def unnumbered_names(root: str | os.PathLike) -> list[str]:
    """The entries of a run folder that Lightning's requeue save cannot number past: it names the save
    hpc_ckpt_<N+1> from the digits after the last 'ckpt_' of every name there holding 'ckpt_' (anyone's), and fails
    on one with no digit there (`int('')`: the job ended FAILED at the requeue instead of requeueing).
    (lightning.pytorch's _CheckpointConnector.hpc_save_path.)"""
    if not os.path.isdir(root):
        return []
    return sorted(name for name in os.listdir(root)
                  if "ckpt_" in name and not re.sub(r"[^0-9]", "", name.split("ckpt_")[-1]))


def _note_early(signum, frame) -> None:
    _early["noted"] = True
    log.info("requeue signal %s before training started: saving and requeueing at the end of the first step", signum)


def hold_requeue_signal(signum: int = signal.SIGUSR1) -> None:
    """From the start of a radar-train process under SLURM until its fit takes the signal: note the requeue signal
    rather than die of it (SIGUSR1's default action: the job FAILED, not requeued, when the signal came while the
    models loaded or DDP started, e.g. with a short time limit). `StepBoundaryRequeue.install` takes the note
    over, so the fit saves and requeues at the end of its first step; after the fit this handler notes again."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signum) in (None, signal.SIG_DFL):
        signal.signal(signum, _note_early)


def _requeue_signal(trainer):
    """The signal of the trainer's SLURM environment with auto-requeue, or None."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    connector = getattr(trainer, "_accelerator_connector", None)
    env = getattr(connector, "cluster_environment", None)
    if isinstance(env, SLURMEnvironment) and env.auto_requeue:
        return env.requeue_signal
    return None


class StepBoundaryRequeue:
    """Notes SLURM's requeue signal; `due()` at a step boundary says when to save and requeue (`requeue`)."""

    def __init__(self) -> None:
        self._signum = None
        self._previous = None
        self._noted = False
        self._done = False

    def install(self, trainer) -> None:
        """Take the requeue signal for this fit (before Lightning registers its handlers). Nothing is installed
        outside SLURM auto-requeue, off the main thread, where another handler is set already, or where this
        Lightning lacks the handler `requeue` calls (its own mid-step save then stays)."""
        signum = _requeue_signal(trainer)
        connector = getattr(trainer, "_signal_connector", None)
        if signum is None or not hasattr(connector, "_slurm_sigusr_handler_fn") \
                or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signum)
        if previous not in (None, signal.SIG_DFL, _note_early):
            return
        self._signum, self._previous, self._noted, self._done = signum, previous, _early["noted"], False
        _early["noted"] = False
        signal.signal(signum, self._note)

    def uninstall(self) -> None:
        if self._signum is not None:
            signal.signal(self._signum, self._previous)
            self._signum = None

    @property
    def done(self) -> bool:
        """Whether this run has saved and asked for its requeue (SLURM's SIGTERM then ends the job)."""
        return self._done

    def _note(self, signum, frame) -> None:
        self._noted = True
        log.info("requeue signal %s: saving and requeueing at the end of this training step", signum)

    def due(self, trainer) -> bool:
        """Whether to save and requeue now. Every rank must call it at the same points (a collective under DDP)."""
        if self._signum is None or self._done:
            return False
        return bool(trainer.strategy.reduce_boolean_decision(self._noted, all=False))

    def requeue(self, trainer) -> None:
        """Lightning's own requeue: finalise the loggers, save hpc_ckpt_N.ckpt, `scontrol requeue` (rank 0). A
        requeue SLURM refused (a job of --no-requeue, JobRequeue=0; Lightning only warns) is not counted as done:
        the run goes on, and the SIGTERM of its time limit saves its step as without a requeue (it skipped that
        save, the job ended for good, and the last line said the job was requeued)."""
        self._noted = False
        with _scontrol_status() as status:
            trainer._signal_connector._slurm_sigusr_handler_fn(self._signum, None)
        failed = bool(trainer.is_global_zero and status and status[-1] != 0)
        if trainer.world_size > 1:  # (rank 0 alone calls scontrol; every rank is at this save point)
            failed = bool(trainer.strategy.broadcast(failed, src=0))
        if failed:
            log.warning("SLURM did not requeue the job (scontrol requeue: exit status %s): the run goes on, and a "
                        "SIGTERM saves its step as without a requeue (the hpc_ckpt_N.ckpt just saved holds step %d)",
                        status[-1] if status else "?", trainer.global_step)
            return
        self._done = True
        last_requeue.update(root=trainer.default_root_dir, step=trainer.global_step)


@contextlib.contextmanager
def _scontrol_status():
    """The exit statuses of the commands Lightning's requeue handler runs (`scontrol requeue`), in a list filled as
    they end (empty where this Lightning runs them otherwise: then taken as done, as before)."""
    from lightning.pytorch.trainer.connectors import signal_connector

    statuses: list[int] = []
    original = getattr(signal_connector, "call", None)
    if not callable(original):
        yield statuses
        return

    def call(*args, **kwargs):
        status = original(*args, **kwargs)
        statuses.append(status)
        return status

    signal_connector.call = call
    try:
        yield statuses
    finally:
        signal_connector.call = original
