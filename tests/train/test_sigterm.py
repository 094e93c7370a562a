"""`radar-train fit` stopped by SIGTERM (kill, docker stop, a preempting scheduler, scancel) or Ctrl-C: it saves the
step it stops at and exits with status 143 (130 for Ctrl-C), and the run resumed from that checkpoint ends bit-identical to an
uninterrupted one. Lightning alone stopped without saving (every step since the last periodic checkpoint
lost) and exited 0, so `radar-train fit ... && radar-eval ...` went on as if the run had finished."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

import torch

ROOT = Path(__file__).resolve().parents[2]
MAX_STEPS = 6


def _command(cache: str, run: Path, term_at: int = 0, signal: str = "SIGTERM", group: bool = False,
             at: Optional[str] = None) -> list[str]:
    callbacks = [{"class_path": "self_term.SelfTerm", "init_args": {"step": term_at, "signal": signal,
                                                                   "group": group, "at": at}}] if term_at else []
    return [sys.executable, "-m", "radar_train.cli.train", "fit", "--config", str(ROOT / "configs/train/tiny.yaml"),
            "--trainer.default_root_dir", str(run), "--trainer.max_steps", str(MAX_STEPS),
            "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.callbacks", json.dumps(callbacks),
            "--data.caches", json.dumps([{"path": cache, "train_shards": "0-1", "val_shards": "14"}]),
            "--data.batch_size", "4", "--data.val_batch_size", "4", "--data.num_workers", "0",
            "--model.lora.dropout", "0.1", "--model.output.save_every_n_steps", "1000",
            "--model.monitor.images_every_n_steps", "0", "--model.monitor.train_metrics_every_n_steps", "0"]


def _start(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "scripts"), str(ROOT)]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # (a signal to the process group stays in it)


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return _finish(_start(cmd))


def _both(first: list[str], second: list[str]) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """Two independent runs at the same time (each in its own session: a signal to one's process group does not
    reach the other); their results once both ended."""
    a = _start(first)
    try:
        b = _start(second)
    except BaseException:
        a.kill()
        a.wait()
        raise
    try:
        rb = _finish(b)
    finally:
        ra = _finish(a)
    return ra, rb


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def test_sigterm_saves_the_step_it_stops_at_exits_143_and_the_run_resumes_exactly(tiny_cache, tmp_path):
    from safetensors.torch import load_file

    full, stopped = tmp_path / "full", tmp_path / "stopped"
    # the uninterrupted run and, beside it (independent runs: the suite's time), the first stopped one:
    # step 2, Ctrl-C (SIGINT to the process group, as a terminal sends it; the same path as SIGTERM): a validation is
    # due -> it runs, then the step is saved (with its metrics) and the run stops, status 130. With a DataLoader
    # worker per loader, the validation's forked in the sanity check (before the run took the signal): a worker the
    # Ctrl-C killed broke that validation, and nothing was saved
    r_full, r = _both(_command(tiny_cache, full), _command(tiny_cache, stopped, term_at=2, signal="SIGINT", group=True)
                      + ["--data.num_workers", "1", "--trainer.num_sanity_val_steps", "1"])
    assert r_full.returncode == 0, r_full.stderr[-3000:]
    assert r.returncode == 130 and "stopped by Ctrl-C" in r.stderr, r.stderr[-3000:]
    assert not (stopped / "final").exists()
    last = _last(stopped)
    assert last["global_step"] == 2 and last["radar"]["metrics"]  # those of the validation at step 2

    # step 3: no validation due -> saved at the step's end. SIGTERM to the process group (scancel, a time limit):
    # the DataLoader worker it reached went on serving batches (the run ends it); before, its death raised in the
    # run's step (a traceback, exit 1, nothing saved since the last checkpoint)
    # (beside it: Ctrl-C in radar-train validate of the uninterrupted run, checked below)
    cb = [{"class_path": "self_term.SelfTerm", "init_args": {"step": 0, "signal": "SIGINT", "in_validation": True}}]
    validate = ["validate", *_command(tiny_cache, full)[4:], "--ckpt_path", "last", "--trainer.callbacks", json.dumps(cb)]
    r, r_validate = _both(_command(tiny_cache, stopped, term_at=3, group=True)
                          + ["--ckpt_path", "last", "--data.num_workers", "1"], _command(tiny_cache, full)[:3] + validate)
    assert r.returncode == 143 and "stopped by SIGTERM" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert _last(stopped)["global_step"] == 3 and _last(stopped)["radar"]["metrics"] == last["radar"]["metrics"]

    # the last step (6, a validation due): the run finishes instead (checkpoint and final/), exit 0
    # (beside it: SIGTERM in radar-train validate, which said the fit's "saved the step it stopped at (resume it")
    cb[0]["init_args"]["signal"] = "SIGTERM"
    validate[-1] = json.dumps(cb)  # (its --trainer.callbacks; on 4 batches: the signal, taken at a batch's end, is
    # not the last one's, whose validation would end, exit 0)
    r, r_validate_term = _both(_command(tiny_cache, stopped, term_at=MAX_STEPS) + ["--ckpt_path", "last"],
                               _command(tiny_cache, full)[:3] + validate + ["--trainer.limit_val_batches", "4"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r_validate_term.returncode == 143, r_validate_term.stderr[-3000:]
    assert r_validate_term.stderr.strip().splitlines()[-1] == (
        "radar-train validate: stopped by SIGTERM before the validation ended; it saves nothing (run it again)")
    a, b = (load_file(str(run / "final" / "adapter_model.safetensors")) for run in (full, stopped))
    assert a.keys() == b.keys() and a and all(torch.equal(a[k], b[k]) for k in a)
    assert _last(stopped)["global_step"] == MAX_STEPS

    # Ctrl-C in radar-train validate (Lightning takes it: its shutdown, then exit 1): one line, status 130
    assert r_validate.returncode == 130, r_validate.stderr[-3000:]
    assert r_validate.stderr.strip().splitlines()[-1] == \
        "radar-train: interrupted (nothing saved since the run's last checkpoint)"


def test_a_second_ctrl_c_stops_at_once():
    """The first SIGINT is only noted (the save waits for the step's end); a second raises KeyboardInterrupt
    (Lightning's shutdown, nothing saved), and the handlers before ours are back."""
    import signal

    from radar_train.train.stop_signal import StepBoundaryStop

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stop = StepBoundaryStop()
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop._noted == signal.SIGINT
        try:
            os.kill(os.getpid(), signal.SIGINT)
            raise AssertionError("the second Ctrl-C did not interrupt")
        except KeyboardInterrupt:
            pass
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    finally:
        stop.uninstall()


def test_sighup_to_the_process_group_saves_the_step_as_sigterm_does(tiny_cache, tmp_path):
    """The terminal or ssh session of a fit in the foreground closed: SIGHUP to its process group (DataLoader workers
    too) ended the run at once, status 129, nothing saved since its last periodic checkpoint (up to
    save_every_n_steps - 1 steps: 499 with the shipped d16 configs)."""
    r = _run(_command(tiny_cache, tmp_path / "run", term_at=3, signal="SIGHUP", group=True)
             + ["--data.num_workers", "1"])
    assert r.returncode == 129, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == ("radar-train: stopped by SIGHUP; a run with checkpoints saved the "
                                                 "step it stopped at (resume it with --ckpt_path last)")
    assert _last(tmp_path / "run")["global_step"] == 3


@pytest.mark.parametrize("at, signal", [("setup", "SIGTERM"), ("fit_start", "SIGHUP")])
def test_a_signal_during_the_fits_set_up_is_one_line_and_a_status_and_leaves_no_lock(tiny_cache, tmp_path, at, signal):
    """Before training starts (the model, the data and Lightning's set-up; `setup`: before Lightning registers its
    own SIGTERM handler, `fit_start`: after it made the run folder's logs, before a resume restores its checkpoint)
    a SIGTERM or SIGHUP ended the process by the signal's default action: no line, and RUN/.fit.lock left behind."""
    run = tmp_path / "run"
    r = _run(_command(tiny_cache, run, term_at=1, signal=signal, at=at))
    assert r.returncode == 128 + getattr(__import__("signal"), signal), r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"radar-train: stopped by {signal} during the fit's set-up, before its first step; nothing was saved (run "
        "the same command again)")
    assert not (run / ".fit.lock").exists() and not (run / "checkpoints").exists()


@pytest.mark.parametrize("signal", ["SIGTERM", "SIGHUP"])
def test_without_checkpoints_a_sigterm_in_training_is_lightnings_stop_not_a_set_up_one(tiny_cache, tmp_path, signal):
    """With model.output.checkpoints false no StepBoundaryStop takes the signals over: the set-up's handler, which
    Lightning's calls after noting the signal, must still hand over when training starts (else the stop would be
    called one of the set-up, in the middle of a step). SIGHUP, which Lightning does not handle, is taken as SIGTERM
    is (the hand-over put back its default action: the process ended with no line and left RUN/.fit.lock)."""
    run = tmp_path / "run"
    r = _run(_command(tiny_cache, run, term_at=3, signal=signal) + ["--model.output.checkpoints", "false"])
    assert r.returncode == 128 + getattr(__import__("signal"), signal), r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "set-up" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == (f"radar-train: stopped by {signal}; this run saves no checkpoints "
                                                 f"(--model.output.checkpoints false): nothing was saved")
    assert not (run / ".fit.lock").exists()
