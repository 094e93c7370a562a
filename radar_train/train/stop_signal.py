"""SIGTERM and Ctrl-C taken at a step boundary: the run saves the step it stopped at, then Lightning stops.

Lightning's own SIGTERM handler only flags the signal; the fit loop then stops after the current step
(SIGTERMException) without saving, so a run stopped by `kill`, `docker stop`, a preempting scheduler or
`scancel` lost every step since its last periodic checkpoint (up to model.output.save_every_n_steps). Ctrl-C
(SIGINT) was a KeyboardInterrupt in the middle of a step: Lightning shut down without saving either.

`StepBoundaryStop` takes SIGTERM and SIGINT over once training starts: its handler only notes the signal, and
the run's checkpoint callback (`RunCheckpoint`) asks `due()` at its own save points (the end of an optimizer
step, or the end of the validation due at that step, as for a SLURM requeue: requeue.py). There it saves the
step (step-NNNNNN.ckpt and last.ckpt, which resume exactly) and then raises Lightning's SIGTERM flag, so
Lightning stops as it would have. Under DDP the ranks agree at each save point (a signal on any rank counts),
so all of them save the same step. radar-train then exits with status 128 + the signal (143 for SIGTERM, 130
for Ctrl-C; `stopped_by`). A second Ctrl-C stops at once, without saving (a KeyboardInterrupt, as before).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Optional

log = logging.getLogger(__name__)

__all__ = ["StepBoundaryStop", "SIGNALS", "stopped_by"]

# SIGHUP: the terminal or ssh session of a fit run in the foreground closed (it ended the run without a save)
SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name))
stopped_by: Optional[int] = None  # the signal the last run of this process stopped on (for the exit status)


class StepBoundaryStop:
    """Notes SIGTERM / SIGINT during training; `due()` at a step boundary says when to save and stop (`stop`)."""

    def __init__(self) -> None:
        self._before: dict[int, object] = {}  # the handlers installed before ours (Lightning's), restored by uninstall
        self._installed = False
        self._noted: Optional[int] = None
        self._agreed: Optional[int] = None  # under DDP: the signal the ranks agreed on at the last save point
        self._pid = os.getpid()

    def install(self) -> None:
        """Take the signals (from the main thread only; elsewhere Lightning's own handling stays)."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        self._before = {s: signal.getsignal(s) for s in SIGNALS}
        self._noted, self._installed, self._pid = None, True, os.getpid()
        for s in SIGNALS:
            signal.signal(s, self._note)

    def uninstall(self) -> None:
        """Give each signal back to the handler before ours, unless someone (Lightning's teardown) replaced ours."""
        if self._installed:
            for s, handler in self._before.items():
                if signal.getsignal(s) == self._note:
                    signal.signal(s, handler)
        self._installed = False

    def _note(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a DataLoader worker forked while ours was installed: the run decides
            return
        if signum == signal.SIGINT and self._noted == signal.SIGINT:
            self.uninstall()
            raise KeyboardInterrupt  # a second Ctrl-C: stop now (Lightning's shutdown, nothing saved)
        if self._noted is None:
            self._noted = signum
        if signum == signal.SIGINT:
            log.warning("Ctrl-C: saving and stopping at the end of this training step (Ctrl-C again to stop at "
                        "once, without saving)")
        else:
            log.info("%s: saving and stopping at the end of this training step", signal.Signals(signum).name)

    def due(self, trainer) -> bool:
        """Whether to save and stop now. Every rank must call it at the same points (a collective under DDP)."""
        if not self._installed:
            return False
        if trainer.world_size > 1:  # the signal any rank noted (SIGTERM over SIGINT), so that all report the same
            import torch

            noted = torch.tensor(self._noted or 0, device=trainer.strategy.root_device)
            self._agreed = int(trainer.strategy.reduce(noted, reduce_op="max")) or None
            return self._agreed is not None
        return self._noted is not None

    def stop(self, trainer) -> None:
        """Raise Lightning's SIGTERM flag: its fit loop stops after this step (SIGTERMException)."""
        global stopped_by
        stopped_by = self._agreed or self._noted or signal.SIGTERM
        self.uninstall()
        trainer._signal_connector.received_sigterm = True
