"""A training step on a GPU must not wait for its own kernels: any value read back to the host (a loss for the
progress line, a Python number that Lightning copies to the device) stops the host from queueing the next step
while this one runs. radar-train fit read the loss back after every step (logged for Lightning's progress bar,
which converts every such value to a number after each step, bar or no bar) and logged the sample rate as a
Python number (a copy to the device, which waits for it), so that the Lightning loop ran at 0.945 of the bare
loop on an H200 (docs/benchmarks.md). Checked on the CPU by where such reads are made."""
from __future__ import annotations

import json

import pytest

from tiny_training import HostReadbacks, run_train_cli, tiny_fit_argv


@pytest.mark.parametrize("extra", [(), ("--model.ema.decay", "0.9")], ids=["plain", "ema"])
def test_the_steps_of_a_fit_read_nothing_back_to_the_host_between_its_logging_steps(tiny_cache, tmp_path,
                                                                                   monkeypatch, capfd, extra):
    """(With model.ema, torch's AveragedModel.update_parameters read its update count back at every update.)"""
    monkeypatch.setenv("RADAR_PROGRESS", "log")  # (the progress lines, as in a SLURM job's log: none due in 8 steps)
    monkeypatch.setenv("RADAR_PROGRESS_INTERVAL", "3600")
    # the steps 3 to 7 of 8 (the last step saves and exports: those read the weights back, as they must)
    cb = [{"class_path": "tiny_training.HostReadbacks", "init_args": {"after": 2, "until": 7}}]
    argv = tiny_fit_argv(tiny_cache, tmp_path / "run", 8, "--trainer.callbacks", json.dumps(cb),
                         "--trainer.val_check_interval", "100", "--model.output.save_every_n_steps", "100",
                         "--trainer.log_every_n_steps", "100", "--trainer.enable_progress_bar", "true", *extra)
    HostReadbacks.found = {"not run": 1}
    assert run_train_cli(argv) == 0
    assert HostReadbacks.found == {}
    # the progress reads the loss when it shows it: the final line has it
    final = [line for line in capfd.readouterr().err.splitlines() if line.startswith("train: 8 steps in ")]
    assert len(final) == 1 and ", loss 0." in final[0], final
