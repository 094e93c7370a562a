"""Early stopping (model.early_stopping) and the best step's adapter in final/, also across a resume."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from radar_train.export import ADAPTER_WEIGHTS, read_radar_config
from radar_train.train.module import MonitorArgs, OutputArgs, RadarLoraModule
from radar_train.train.optim import OptimArgs
from radar_train.train.selection import EarlyStoppingArgs
from tiny_training import HARMLESS, LabelledPairs


class RecordValidation(pl.Callback):
    def __init__(self):
        self.values: dict[int, float] = {}

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.values[trainer.global_step] = float(trainer.callback_metrics["val/psnr_harmless"])


def _fit(root, max_steps, ckpt_path=None, early_stopping=HARMLESS, extra=(), train_size=24, save_every=2):
    torch.manual_seed(0)
    module = RadarLoraModule(optim=OptimArgs(learning_rate=2e-2, warmup_steps=1, schedule_steps=40),
                             monitor=MonitorArgs(images_every_n_steps=0, train_metrics_every_n_steps=0),
                             output=OutputArgs(save_every_n_steps=save_every, export_every_n_steps=2),
                             early_stopping=early_stopping)
    rec = RecordValidation()
    trainer = pl.Trainer(default_root_dir=str(root), accelerator="cpu", devices=1, precision="32-true",
                         max_steps=max_steps, val_check_interval=2, check_val_every_n_epoch=None,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         logger=False, callbacks=[rec, *extra])
    data = LabelledPairs(32)
    train = DataLoader(torch.utils.data.Subset(data, range(train_size)), batch_size=4, shuffle=False)
    val = DataLoader(torch.utils.data.Subset(data, range(24, 32)), batch_size=8)
    trainer.fit(module, train, val, ckpt_path=ckpt_path)
    return trainer, module, rec.values


def _weights(folder):
    return load_file(folder / ADAPTER_WEIGHTS)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_stops_and_final_holds_the_best_steps_adapter(tmp_path):
    trainer, module, values = _fit(tmp_path, 40)
    steps = sorted(values)
    assert steps == [2, 4, 6] and values[2] > max(values[4], values[6])  # no improvement after the first validation
    assert trainer.global_step == 6 < 40
    assert trainer.early_stopping_callback.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED
    sel = read_radar_config(tmp_path / "final")["selection"]
    assert sel["final_adapter"] == "best" and sel["step"] == 2 and sel["last_step"] == 6
    assert sel["monitor"] == "val/psnr_harmless" and sel["mode"] == "max" and sel["stopped_early"]
    assert sel["value"] == pytest.approx(values[2])
    assert read_radar_config(tmp_path / "final")["global_step"] == 2
    assert _same(_weights(tmp_path / "final"), _weights(tmp_path / "step-000002"))
    assert not _same(_weights(tmp_path / "final"), _weights(tmp_path / "step-000006"))
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["best-step-000002.ckpt", "last.ckpt", "step-000006.ckpt"]


def test_the_best_step_survives_a_resume(tmp_path):
    _, _, first = _fit(tmp_path, 4)
    assert sorted(first) == [2, 4] and first[2] > first[4]
    assert (tmp_path / "checkpoints" / "best-step-000002.ckpt").is_file()
    trainer, _, second = _fit(tmp_path, 40, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    assert sorted(second) == [6]  # the patience count (one validation without improvement) came back too
    assert trainer.global_step == 6
    sel = read_radar_config(tmp_path / "final")["selection"]
    assert sel["step"] == 2 and sel["value"] == pytest.approx(first[2])
    assert _same(_weights(tmp_path / "final"), _weights(tmp_path / "step-000002"))


class _CrashInValidation(pl.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_validation_start(self, trainer, pl_module):
        if trainer.global_step == self.step and not trainer.sanity_checking:
            raise RuntimeError("killed during the validation")


def test_a_run_killed_during_a_validation_runs_it_again_at_resume(tmp_path):
    """The step's checkpoint is written after its validation: a resume from the one before repeats the steps
    and the validation, so the patience count, the stop and final/ are those of an uninterrupted run."""
    # two batches per epoch: the checkpoints fall on epoch ends, where a plain DataLoader resumes exactly
    _, _, straight = _fit(tmp_path / "a", 40, train_size=8)
    assert sorted(straight) == [2, 4, 6]
    with pytest.raises(RuntimeError, match="killed during the validation"):
        _fit(tmp_path / "b", 40, extra=[_CrashInValidation(4)], train_size=8)
    assert not (tmp_path / "b" / "step-000004").exists()  # the step's export waits for its validation too
    trainer, _, resumed = _fit(tmp_path / "b", 40, ckpt_path="last", train_size=8)
    assert resumed == {k: straight[k] for k in (4, 6)}  # the validation at step 4 again, then the stop at 6
    for step in (2, 4, 6):  # each step export once, with its own validation's metrics
        want = read_radar_config(tmp_path / "a" / f"step-{step:06d}")["metrics"]
        assert read_radar_config(tmp_path / "b" / f"step-{step:06d}")["metrics"] == want and want
    assert trainer.global_step == 6
    assert _same(_weights(tmp_path / "b" / "final"), _weights(tmp_path / "a" / "final"))


def test_without_early_stopping_final_is_the_best_step_when_asked_for(tmp_path):
    _, _, values = _fit(tmp_path, 4, early_stopping=EarlyStoppingArgs(monitor="val/psnr_harmless", final_adapter="best"))
    assert values[2] > values[4]
    sel = read_radar_config(tmp_path / "final")["selection"]
    assert sel["final_adapter"] == "best" and sel["step"] == 2 and not sel["stopped_early"]
    assert _same(_weights(tmp_path / "final"), _weights(tmp_path / "step-000002"))


def test_bad_early_stopping_settings_are_reported_together():
    with pytest.raises(ValueError) as e:
        RadarLoraModule(early_stopping=EarlyStoppingArgs(monitor="val/fid", patience=0))
    assert "model.early_stopping.monitor 'val/fid' is not a validation metric" in str(e.value)
    assert "model.early_stopping.patience must be >= 1" in str(e.value)


def test_a_continued_run_keeps_the_patience_of_its_config(tmp_path):
    """The checkpoint holds early stopping's patience count and best score, which a continued run keeps; the
    patience itself is the new config's, so a run stopped at patience 1 goes on at patience 5."""
    trainer, _, first = _fit(tmp_path, 40, early_stopping=EarlyStoppingArgs(
        enabled=True, monitor="val/psnr_harmless", patience=1))
    assert sorted(first) == [2, 4] and first[2] > first[4] and trainer.global_step == 4  # stopped at patience 1
    more = EarlyStoppingArgs(enabled=True, monitor="val/psnr_harmless", patience=5)
    trainer, _, second = _fit(tmp_path, 8, ckpt_path="last", early_stopping=more)
    stop = trainer.early_stopping_callback
    assert stop.patience == 5 and stop.wait_count == 3  # the count went on from the checkpoint's 1
    assert sorted(second) == [6, 8] and trainer.global_step == 8
    assert stop.stopping_reason is EarlyStoppingReason.NOT_STOPPED
    sel = read_radar_config(tmp_path / "final")["selection"]
    assert not sel["stopped_early"] and sel["step"] == 2


class _RecordMetrics(pl.Callback):
    def __init__(self):
        self.by_step: dict[int, dict] = {}

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.by_step[trainer.global_step] = dict(pl_module.val_metrics)


def test_a_step_export_records_the_validation_of_its_step(tmp_path):
    """A step export at a step with a validation due is written after that validation: its metrics are the
    step's, not the previous validation's."""
    rec = _RecordMetrics()
    _fit(tmp_path, 6, early_stopping=EarlyStoppingArgs(), extra=[rec])  # validation and export every 2 steps
    assert sorted(rec.by_step) == [2, 4, 6] and rec.by_step[2] != rec.by_step[4]
    for step in (2, 4, 6):
        meta = read_radar_config(tmp_path / f"step-{step:06d}")
        assert meta["global_step"] == step
        assert meta["metrics"] == pytest.approx(rec.by_step[step], rel=1e-12)


def test_a_step_export_waiting_for_a_validation_that_does_not_run_is_still_written(tmp_path):
    """A validation due at an export step whose loader has no batch is skipped by Lightning: the export is
    written before the next step (and at the end of training, for the last step)."""
    torch.manual_seed(0)
    module = RadarLoraModule(monitor=MonitorArgs(images_every_n_steps=0, train_metrics_every_n_steps=0),
                             output=OutputArgs(save_every_n_steps=2, export_every_n_steps=2, export_final=False))
    trainer = pl.Trainer(default_root_dir=str(tmp_path), accelerator="cpu", devices=1, precision="32-true",
                         max_steps=4, val_check_interval=2, check_val_every_n_epoch=None, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, logger=False)
    train = DataLoader(torch.utils.data.Subset(LabelledPairs(32), range(24)), batch_size=4, shuffle=False)
    trainer.fit(module, train, DataLoader([], batch_size=8))
    for step in (2, 4):
        assert read_radar_config(tmp_path / f"step-{step:06d}")["global_step"] == step


class _CrashAfterStep(pl.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("killed")


def test_a_run_killed_before_its_first_periodic_save_resumes_from_its_best_step_with_last(tmp_path):
    """A reviewer: killed after the first validation (step 2, its best-step file) but before the first periodic
    save (every 100), the run folder held no last.ckpt, and `--ckpt_path last` was refused. last.ckpt follows the
    best step's save, so the resume from `last` ends as an uninterrupted run does."""
    _, _, straight = _fit(tmp_path / "a", 40, train_size=8, save_every=100)
    with pytest.raises(RuntimeError, match="killed"):
        _fit(tmp_path / "b", 40, extra=[_CrashAfterStep(3)], train_size=8, save_every=100)
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == \
        ["best-step-000002.ckpt", "last.ckpt"]
    assert torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    trainer, _, resumed = _fit(tmp_path / "b", 40, ckpt_path="last", train_size=8, save_every=100)
    assert resumed == {k: straight[k] for k in resumed} and trainer.global_step == 6
    assert _same(_weights(tmp_path / "b" / "final"), _weights(tmp_path / "a" / "final"))
