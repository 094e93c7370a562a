"""Checkpoints with `trainer.accumulate_grad_batches`: `val_check_interval` counts batches, so after an epoch
with an odd batch count a validation can follow the first micro-batch of an optimizer step. The run's
checkpoint callback saved the step before again there (and took a SIGTERM's save there): a state that counts
the micro-batch as consumed without its accumulated gradient, so the resumed run skipped it. Saves happen at
the end of an optimizer step only; a resumed run trains exactly the micro-batches of an uninterrupted one."""
from __future__ import annotations

import os
import signal

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from radar_train.cache.synthetic import synthetic_manifest, write_synthetic_cache
from radar_train.train.datamodule import CacheSource, PairDataModule
from radar_train.train.run_checkpoint import RunCheckpoint

# 20 pairs, batch 4: 5 batches an epoch; accumulation 2: steps {0,1} {2,3} {4} (3 an epoch); validation every 4
# batches: the one after batch 8 (epoch 1, batch 2) follows the first micro-batch of step 5 (global step 4)
MAX_STEPS, ACCUMULATE, VAL_EVERY = 8, 2, 4
MICRO_BEFORE_STEP_5 = 7  # micro-batches of steps 1-4


class _Crash(BaseException):
    """Stands for a SIGKILL: the run ends where it is, saving nothing (not an Exception: a step that raises one
    saves the step before it)."""


class _Recorder(pl.LightningModule):
    """A one-parameter model recording the pairs of each micro-batch and the global steps validated; crashes in
    the first micro-batch at global step `crash_at` (raises RuntimeError there at `fail_at`), or sends itself
    SIGTERM in the validation at `term_at`."""

    def __init__(self, crash_at: int | None = None, term_at: int | None = None, fail_at: int | None = None,
                 val_fail_at: int | None = None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.crash_at, self.term_at, self.fail_at, self.val_fail_at = crash_at, term_at, fail_at, val_fail_at
        self.batches: list[list[int]] = []
        self.validated: list[int] = []

    def training_step(self, batch, i):
        if self.global_step == self.crash_at:
            raise _Crash
        if self.global_step == self.fail_at:
            raise RuntimeError("injected failure")
        self.batches.append(batch["index"].tolist())
        return (self.w * batch["fhat_lq"].mean()).sum()

    def validation_step(self, batch, i):
        if self.global_step == self.term_at and not self.trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGTERM)  # noted, acted on at the end of the optimizer step
        if self.global_step == self.val_fail_at and not self.trainer.sanity_checking:
            raise RuntimeError("injected failure")

    def on_validation_end(self):
        if not self.trainer.sanity_checking:
            self.validated.append(self.global_step)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("accumulation") / "cache"
    m = synthetic_manifest(24, 4, latent_shape=(4, 2, 2), patch_nums=(1, 2), chunk_size=4, num_classes=10)
    return str(write_synthetic_cache(path, m))


def _fit(cache: str, root, save_every: int, ckpt_path=None, **recorder) -> _Recorder:
    module = _Recorder(**recorder)
    checkpoint = RunCheckpoint(dirpath=root / "checkpoints", filename="step-{step:06d}",
                               every_n_train_steps=save_every, save_last=True)
    trainer = pl.Trainer(default_root_dir=str(root), accelerator="cpu", devices=1, max_steps=MAX_STEPS,
                         logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         val_check_interval=VAL_EVERY, check_val_every_n_epoch=None, limit_val_batches=1,
                         accumulate_grad_batches=ACCUMULATE, callbacks=[checkpoint], use_distributed_sampler=False)
    data = PairDataModule([CacheSource(cache, train_shards="0-4", val_shards="5")], batch_size=4, shuffle_seed=3)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module


def _last(root) -> dict:
    return torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory):
    module = _fit(cache, tmp_path_factory.mktemp("reference"), save_every=2)
    assert len(module.batches) == 14 and module.validated == [2, 4, 7]  # after batches 4, 8 and 12
    return module


def test_a_validation_inside_an_optimizer_step_does_not_save_the_step_before_again(cache, tmp_path, reference):
    run = tmp_path / "run"
    with pytest.raises(_Crash):  # killed in step 6, after step 5 (not saved: every 2 steps)
        _fit(cache, run, save_every=2, crash_at=5)
    ckpt = _last(run)
    assert ckpt["global_step"] == 4
    loop = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert loop["total"]["ready"] == MICRO_BEFORE_STEP_5  # not the micro-batch of step 5 validated after
    resumed = _fit(cache, run, save_every=2, ckpt_path=str(run / "checkpoints" / "last.ckpt"))
    assert resumed.batches == reference.batches[MICRO_BEFORE_STEP_5:]
    assert torch.equal(resumed.w.detach(), reference.w.detach())


def test_sigterm_in_a_validation_inside_an_optimizer_step_saves_at_the_end_of_that_step(cache, tmp_path, reference):
    run = tmp_path / "run"
    with pytest.raises(SIGTERMException):
        _fit(cache, run, save_every=100, term_at=4)  # no periodic checkpoint before
    assert _last(run)["global_step"] == 5  # the step the validation came in, saved after its last micro-batch
    resumed = _fit(cache, run, save_every=100, ckpt_path=str(run / "checkpoints" / "last.ckpt"))
    assert resumed.batches == reference.batches[MICRO_BEFORE_STEP_5 + 2:]
    assert torch.equal(resumed.w.detach(), reference.w.detach())


def test_a_step_that_raises_after_a_validation_inside_the_step_before_saves_that_step(cache, tmp_path, reference):
    """Step 6 raises in its first micro-batch: step 5, whose first micro-batch the validation followed, is saved at
    its end (run_checkpoint.py), and the resumed run trains the micro-batches an uninterrupted one does."""
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="injected failure"):
        _fit(cache, run, save_every=100, fail_at=5)  # no periodic checkpoint before
    assert _last(run)["global_step"] == 5
    resumed = _fit(cache, run, save_every=100, ckpt_path=str(run / "checkpoints" / "last.ckpt"))
    assert resumed.batches == reference.batches[MICRO_BEFORE_STEP_5 + 2:]
    assert torch.equal(resumed.w.detach(), reference.w.detach())


def test_a_validation_that_raises_inside_an_optimizer_step_saves_the_step_before(cache, tmp_path, reference):
    """The validation after the first micro-batch of step 5 raises: step 4 is saved (its loop state, before that
    micro-batch), and the resumed run trains that micro-batch again, validates after it and ends as the
    uninterrupted one."""
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="injected failure"):
        _fit(cache, run, save_every=100, val_fail_at=4)  # no periodic checkpoint before
    ckpt = _last(run)
    assert ckpt["global_step"] == 4
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["ready"] == MICRO_BEFORE_STEP_5
    resumed = _fit(cache, run, save_every=100, ckpt_path=str(run / "checkpoints" / "last.ckpt"))
    assert resumed.batches == reference.batches[MICRO_BEFORE_STEP_5:] and resumed.validated == [4, 7]
    assert torch.equal(resumed.w.detach(), reference.w.detach())


def test_a_fit_that_raises_before_its_loop_leaves_the_trainer_able_to_fit_again(cache, tmp_path):
    """RunCheckpoint wraps the fit loop's run for the fit (an owed validation at the last step runs there); a fit
    whose sanity check raises never reaches it, and Lightning calls no teardown hook then."""

    class SanityFails(_Recorder):
        def validation_step(self, batch, i):
            if self.trainer.sanity_checking:
                raise RuntimeError("injected failure")

    checkpoint = RunCheckpoint(dirpath=tmp_path / "checkpoints", filename="step-{step:06d}", save_last=True)
    trainer = pl.Trainer(default_root_dir=str(tmp_path), accelerator="cpu", devices=1, max_steps=2, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1,
                         limit_val_batches=1, callbacks=[checkpoint], use_distributed_sampler=False)
    data = lambda: PairDataModule([CacheSource(cache, train_shards="0-4", val_shards="5")], batch_size=4)
    with pytest.raises(RuntimeError, match="injected failure"):
        trainer.fit(SanityFails(), datamodule=data())
    module = _Recorder()
    trainer.fit(module, datamodule=data())
    assert trainer.global_step == 2 and len(module.batches) == 2
