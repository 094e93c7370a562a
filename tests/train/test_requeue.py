"""SLURM's requeue signal (USR1) arriving in the middle of a training step: the requeue save is taken at the
step's end (or after the validation due at it), so a run resumed from hpc_ckpt_N.ckpt trains exactly the
batches of an uninterrupted run. Lightning's own handler saved mid-step, and the resumed run skipped a batch."""
from __future__ import annotations

import os
import signal
import stat

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment

from radar_train.cache.synthetic import synthetic_manifest, write_synthetic_cache
from radar_train.train.datamodule import CacheSource, PairDataModule
from radar_train.train.run_checkpoint import RunCheckpoint

MAX_STEPS = 8


class _Recorder(pl.LightningModule):
    """A one-parameter model recording the pairs of each training step and the steps validated; sends
    itself the requeue signal inside the training step at `signal_at` (global step before the step)."""

    def __init__(self, signal_at: int | None = None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.signal_at = signal_at
        self.batches: list[list[int]] = []
        self.validated: list[int] = []

    def training_step(self, batch, i):
        if self.global_step == self.signal_at:
            os.kill(os.getpid(), signal.SIGUSR1)  # the handler runs here, inside the step
        self.batches.append(batch["index"].tolist())
        return (self.w * batch["fhat_lq"].mean()).sum()

    def validation_step(self, batch, i):
        pass

    def on_validation_end(self):
        if not self.trainer.sanity_checking:
            self.validated.append(self.global_step)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture()
def slurm(tmp_path, monkeypatch):
    """A SLURM job's environment and a stub scontrol recording its arguments."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    stub = bin_dir / "scontrol"
    stub.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for k, v in {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                 "SLURM_NODEID": "0", "SLURM_JOB_NAME": "radar-train"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    yield calls
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None), "the fit left its handler behind"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("requeue") / "cache"
    m = synthetic_manifest(32, 8, latent_shape=(4, 2, 2), patch_nums=(1, 2), chunk_size=4, num_classes=10)
    return str(write_synthetic_cache(path, m))


def _fit(cache: str, root, max_steps: int, signal_at=None, ckpt_path=None, accumulate: int = 1) -> _Recorder:
    module = _Recorder(signal_at)
    checkpoint = RunCheckpoint(dirpath=root / "checkpoints", filename="step-{step:06d}", every_n_train_steps=100,
                               save_last=True)
    trainer = pl.Trainer(default_root_dir=str(root), accelerator="cpu", devices=1, max_steps=max_steps, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         val_check_interval=2, check_val_every_n_epoch=None, use_distributed_sampler=False,
                         accumulate_grad_batches=accumulate, callbacks=[checkpoint],
                         plugins=[SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1)])
    data = PairDataModule([CacheSource(cache, train_shards="0-2", val_shards="3")], batch_size=3, shuffle_seed=5)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module


@pytest.mark.parametrize("signal_at", [2, 3], ids=["mid-step", "step-before-a-validation"])
def test_a_requeue_save_resumes_the_batches_an_uninterrupted_run_trains(cache, tmp_path, slurm, signal_at):
    reference = _fit(cache, tmp_path / "reference", MAX_STEPS)
    assert reference.validated == [2, 4, 6, 8] and len(reference.batches) == MAX_STEPS
    run = tmp_path / "run"
    first = _fit(cache, run, signal_at + 2, signal_at=signal_at)  # goes on after the save, as a job does until killed
    assert slurm.read_text() == "requeue 4242\n"
    saved = torch.load(run / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=False)["global_step"]
    resumed = _fit(cache, run, MAX_STEPS, ckpt_path=str(run / "hpc_ckpt_1.ckpt"))
    assert first.batches[:saved] + resumed.batches == reference.batches
    assert saved == signal_at + 1  # the end of the step the signal came in
    # the validation due at the saved step ran before the save, once
    assert [s for s in first.validated if s <= signal_at + 1] + resumed.validated == reference.validated


def test_a_requeue_signal_in_an_optimizer_steps_first_micro_batch_is_taken_after_its_last(cache, tmp_path, slurm):
    # accumulation 2: the signal comes in the first micro-batch of step 3 (a save there counted that micro-batch
    # as trained without its gradient, and the resumed run skipped it)
    reference = _fit(cache, tmp_path / "reference", MAX_STEPS, accumulate=2)
    assert len(reference.batches) == 2 * MAX_STEPS
    run = tmp_path / "run"
    first = _fit(cache, run, 4, signal_at=2, accumulate=2)
    assert slurm.read_text() == "requeue 4242\n"
    saved = torch.load(run / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert saved == 3  # the end of the optimizer step the signal came in
    resumed = _fit(cache, run, MAX_STEPS, ckpt_path=str(run / "hpc_ckpt_1.ckpt"), accumulate=2)
    assert first.batches[:2 * saved] + resumed.batches == reference.batches


def test_a_requeue_signal_before_training_is_kept_for_the_first_step(cache, tmp_path, slurm):
    """SIGUSR1 while radar-train loads its models (before the fit takes the signal): its default action killed the
    process, and SLURM marked the job FAILED, not requeued. radar-train notes it from its start (hold_requeue_signal);
    the fit saves and requeues at the end of its first step."""
    from radar_train.train.requeue import hold_requeue_signal

    hold_requeue_signal()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)  # still alive: noted
        _fit(cache, tmp_path / "run", 3)
        assert slurm.read_text() == "requeue 4242\n"
        assert torch.load(tmp_path / "run" / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=False)["global_step"] == 1
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)


def test_a_requeue_slurm_refuses_is_not_taken_as_done_and_the_sigterm_after_it_saves_its_step(cache, tmp_path,
                                                                                               slurm):
    """scontrol requeue failing (a job of --no-requeue, JobRequeue=0): Lightning only warned, the run counted the
    requeue as done, skipped the save of the time limit's SIGTERM (the job then ended for good, the steps since the
    requeue save lost) and its last line said the job was requeued."""
    from radar_train.train import requeue

    stub = slurm.parent / "bin" / "scontrol"
    stub.write_text(f'#!/bin/sh\necho "$@" >> {slurm}\nexit 1\n')
    requeue.last_requeue.clear()

    class _TermAt(_Recorder):
        def training_step(self, batch, i):
            if self.global_step == 5:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().training_step(batch, i)

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    module = _TermAt(signal_at=2)
    checkpoint = RunCheckpoint(dirpath=tmp_path / "run" / "checkpoints", filename="step-{step:06d}",
                               every_n_train_steps=100, save_last=True)
    trainer = pl.Trainer(default_root_dir=str(tmp_path / "run"), accelerator="cpu", devices=1, max_steps=MAX_STEPS,
                         logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         val_check_interval=2, check_val_every_n_epoch=None, use_distributed_sampler=False,
                         callbacks=[checkpoint],
                         plugins=[SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1)])
    data = PairDataModule([CacheSource(cache, train_shards="0-2", val_shards="3")], batch_size=3, shuffle_seed=5)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SIGTERMException):
            trainer.fit(module, datamodule=data)
    finally:  # (a fit stopped by SIGTERM ends its process: the handlers of its signals are not given back)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    assert slurm.read_text() == "requeue 4242\n"
    assert requeue.last_requeue == {}
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 6  # the end of the step the SIGTERM came in, past the requeue save's step 3


def test_a_name_lightnings_requeue_save_cannot_number_past_is_refused_before_training(tiny_cache, tmp_path, slurm):
    """Lightning numbers its requeue save hpc_ckpt_<N+1> from the digits of every name in the run folder holding
    'ckpt_'; a user's old_hpc_ckpt_notes.md (no digits) made the save fail with `invalid literal for int()`, and the
    job ended FAILED at the requeue instead of requeueing."""
    from cli_checks import assert_one_line_error, assert_unchanged, call_cli, snapshot
    from tiny_training import tiny_fit_argv

    root = tmp_path / "run"
    usr1 = signal.getsignal(signal.SIGUSR1)
    try:  # (radar-train's main holds the requeue signal from its start under SLURM: in a process of its own)
        code, err = call_cli("train", tiny_fit_argv(tiny_cache, root, 2), tmp_path)
        assert code == 0, err
        (root / "old_hpc_ckpt_notes.md").write_text("notes")
        before = snapshot(root)
        code, err = call_cli("train", tiny_fit_argv(tiny_cache, root, 4, "--ckpt_path", "last"), tmp_path)
    finally:
        signal.signal(signal.SIGUSR1, usr1)
    assert code == 2, err
    assert_one_line_error(err, f"{root / 'old_hpc_ckpt_notes.md'}", "requeue")
    assert_unchanged(before, snapshot(root))


def test_the_requeue_line_names_the_checkpoint_the_restarted_job_resumes_from(tmp_path):
    """A periodic save of a later step, made while the job waited for SLURM's SIGTERM after the requeue save, is
    newer: slurm/train.sbatch resumes from it, and the last line named the requeue save."""
    from radar_train.cli.train import newest_run_checkpoint

    (tmp_path / "checkpoints").mkdir()
    assert newest_run_checkpoint(tmp_path) is None
    files = {"hpc_ckpt_1.ckpt": 300, "checkpoints/last.ckpt": 200, "checkpoints/step-000004.ckpt": 200,
             "hpc_ckpt_backup.ckpt": 900, "checkpoints/last-backup.ckpt": 900, "checkpoints/step-000004-old.ckpt": 900}
    for name, mtime in files.items():
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (mtime, mtime))
    assert newest_run_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_1.ckpt"
    os.utime(tmp_path / "checkpoints" / "last.ckpt", (400, 400))
    assert newest_run_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.ckpt"
