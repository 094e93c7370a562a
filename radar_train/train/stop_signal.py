"""SIGTERM taken at a step boundary: the run saves the step it stopped at, then Lightning stops.

Lightning's own SIGTERM handler only flags the signal; the fit loop then stops after the current step
(SIGTERMException) without saving, so a run stopped by `kill`, `docker stop`, a preempting scheduler or
`scancel` lost every step since its last periodic checkpoint (up to model.output.save_every_n_steps).

`StepBoundaryStop` takes SIGTERM over from Lightning once training starts: its handler only notes the
signal, and the run's checkpoint callback (`RunCheckpoint`) asks `due()` at its own save points (the end of
an optimizer step, or the end of the validation due at that step, as for a SLURM requeue: requeue.py). There
it saves the step (step-NNNNNN.ckpt and last.ckpt, which resume exactly) and then raises Lightning's flag,
so Lightning stops as it would have. Under DDP the ranks agree at each save point (a signal on any rank
counts), so all of them save the same step. radar-train then exits with status 143 (128 + SIGTERM).
"""
from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

__all__ = ["StepBoundaryStop"]


class StepBoundaryStop:
    """Notes SIGTERM during training; `due()` at a step boundary says when to save and stop (`stop`)."""

    def __init__(self) -> None:
        self._lightning = None  # the handler installed before ours (Lightning's), restored by uninstall
        self._installed = False
        self._noted = False

    def install(self) -> None:
        """Take SIGTERM (from the main thread only; elsewhere Lightning's own handling stays)."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        self._lightning = signal.getsignal(signal.SIGTERM)
        self._noted, self._installed = False, True
        signal.signal(signal.SIGTERM, self._note)

    def uninstall(self) -> None:
        """Give SIGTERM back to the handler before ours, unless someone (Lightning's teardown) replaced ours."""
        if self._installed and signal.getsignal(signal.SIGTERM) == self._note:
            signal.signal(signal.SIGTERM, self._lightning)
        self._installed = False

    def _note(self, signum, frame) -> None:
        self._noted = True
        log.info("SIGTERM: saving and stopping at the end of this training step")

    def due(self, trainer) -> bool:
        """Whether to save and stop now. Every rank must call it at the same points (a collective under DDP)."""
        if not self._installed:
            return False
        if trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(self._noted, all=False))
        return self._noted

    def stop(self, trainer) -> None:
        """Raise Lightning's SIGTERM flag: its fit loop stops after this step (SIGTERMException)."""
        self.uninstall()
        trainer._signal_connector.received_sigterm = True
