"""The commands' SIGTERM handling (radar_train.cli.common): `sigterm_stops` raises Stopped once and ignores a
second SIGTERM while the command saves; `sigterm_ignored` lets a command finish moving its outputs into place;
both put the handler before back."""
from __future__ import annotations

import os
import signal

import pytest

from radar_train.cli.common import Stopped, sigterm_ignored, sigterm_stops


@pytest.fixture
def noted():
    """A handler of our own for SIGTERM during the test (so that a signal that got through does not end pytest)."""
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    yield seen
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_stops_raises_once_then_ignores_and_restores(noted):
    mine = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped):
        with sigterm_stops():
            os.kill(os.getpid(), signal.SIGTERM)  # (the handler runs as soon as os.kill returns)
            pytest.fail("SIGTERM did not stop the block")
    assert signal.getsignal(signal.SIGTERM) is mine and noted == []
    with pytest.raises(Stopped):
        with sigterm_stops():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(10):
                    pass
            except Stopped:
                os.kill(os.getpid(), signal.SIGTERM)  # a second one, while the command saves: ignored
                for _ in range(10):
                    pass
                raise
    assert noted == []


def test_sigterm_ignored_lets_the_block_finish_and_restores(noted):
    mine = signal.getsignal(signal.SIGTERM)
    finished = False
    with sigterm_ignored():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10):
            pass
        finished = True
    assert finished and noted == [] and signal.getsignal(signal.SIGTERM) is mine
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(10):
        pass
    assert noted == [signal.SIGTERM]  # outside the block, the handler before takes it again
