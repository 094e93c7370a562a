"""Training on a tiny cache: the gap closes on held-out shards, resume is exact, a wrong cache is refused."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from radar_train.config import ModelArgs
from radar_train.train.datamodule import CacheSource, PairDataModule
from radar_train.train.module import MonitorArgs, OutputArgs, RadarLoraModule
from radar_train.train.optim import OptimArgs


class RecordLosses(pl.Callback):
    def __init__(self):
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = outputs["loss"].item()


def _fit(cache, root, max_steps, *, train="0-13", val="14-15", batch=8, lr=1e-3, warmup=10, schedule=None,
         save_every=0, validate=True, export_final=False, max_epochs=None):
    torch.manual_seed(0)
    dm = PairDataModule([CacheSource(cache, train_shards=train, val_shards=val)], batch_size=batch, val_batch_size=16)
    module = RadarLoraModule(optim=OptimArgs(learning_rate=lr, warmup_steps=warmup, schedule_steps=schedule),
                             monitor=MonitorArgs(images_every_n_steps=0, train_metrics_every_n_steps=0),
                             output=OutputArgs(save_every_n_steps=save_every, export_final=export_final))
    rec = RecordLosses()
    trainer = pl.Trainer(default_root_dir=str(root), accelerator="cpu", devices=1, precision="32-true",
                         max_steps=max_steps, max_epochs=max_epochs, val_check_interval=max_steps,
                         check_val_every_n_epoch=None,
                         limit_val_batches=None if validate else 0,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         use_distributed_sampler=False, logger=False, callbacks=[rec])
    return trainer, module, dm, rec


@pytest.mark.slow
def test_a_few_hundred_steps_close_a_clear_share_of_the_gap_on_held_out_shards(tiny_cache, tmp_path):
    trainer, module, dm, _ = _fit(tiny_cache, tmp_path, 200)
    before = trainer.validate(module, dm, verbose=False)[0]
    trainer.fit(module, dm)
    after, m = trainer.callback_metrics, module.val_metrics
    print(f"\ntiny cache, 200 steps of 8 pairs (224 train / 32 held-out pairs): val loss {before['val/loss']:.4f} -> "
          f"{float(after['val/loss']):.4f}, G_mse {m['gap_closed_mse']:.3f}, ΔPSNR {m['delta_psnr']:+.2f} dB, "
          f"ΔSSIM {m['delta_ssim']:+.4f}, harmless PSNR {m['psnr_harmless']:.2f} dB")
    assert float(after["val/loss"]) < 0.95 * before["val/loss"]
    assert m["gap_closed_mse"] >= 0.10
    assert m["delta_psnr"] > 0


def test_resume_continues_at_the_same_step_with_the_same_losses(tiny_cache, tmp_path):
    # 16 training pairs / batch 8 = 2 steps per epoch; the interrupted run stops at an epoch boundary
    kw = dict(train="0", val="14", schedule=6, warmup=2, save_every=2, validate=False)
    trainer, module, dm, full = _fit(tiny_cache, tmp_path / "a", 6, **kw)
    trainer.fit(module, dm)
    trainer, _, dm_b, first = _fit(tiny_cache, tmp_path / "b", 4, **kw)
    trainer.fit(_, dm_b)
    trainer, resumed_module, dm_b, second = _fit(tiny_cache, tmp_path / "b", 6, **kw)
    trainer.fit(resumed_module, dm_b, ckpt_path="last")
    assert sorted(first.losses) == [1, 2, 3, 4] and sorted(second.losses) == [5, 6]
    assert {**first.losses, **second.losses} == full.losses
    a, b = module.state_dict(), resumed_module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_final_is_exported_when_max_epochs_ends_the_run_before_max_steps(tiny_cache, tmp_path):
    trainer, module, dm, rec = _fit(tiny_cache, tmp_path, 20, train="0", val="14", validate=False, export_final=True,
                                    max_epochs=1)  # 16 pairs / batch 8: 2 steps, then max_epochs stops the run
    trainer.fit(module, dm)
    assert sorted(rec.losses) == [1, 2] and (tmp_path / "final" / "adapter_model.safetensors").is_file()


class RecordLr(pl.Callback):
    def __init__(self):
        self.lr: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lr[trainer.global_step + 1] = trainer.optimizers[0].param_groups[0]["lr"]  # the rate of this step


def test_a_continued_run_follows_the_schedule_of_its_config(tiny_cache, tmp_path):
    """Continued past its max_steps with schedule_steps set, a run takes the new schedule's rates (not the
    schedule saved in the checkpoint); with the config unchanged a resume is exact (test above)."""
    kw = dict(train="0", val="14", warmup=2, save_every=2, validate=False)
    rates = {}
    for name, steps, schedule, ckpt in (("first", 6, None, None), ("continued", 10, 10, "last"),
                                        ("straight", 10, 10, None)):
        trainer, module, dm, _ = _fit(tiny_cache, tmp_path / ("b" if name != "straight" else "a"), steps,
                                      schedule=schedule, **kw)
        rec = RecordLr()
        trainer.callbacks.append(rec)
        trainer.fit(module, dm, ckpt_path=ckpt)
        rates[name] = rec.lr
    assert sorted(rates["continued"]) == [7, 8, 9, 10]
    assert rates["continued"] == {s: rates["straight"][s] for s in (7, 8, 9, 10)}
    assert min(rates["continued"].values()) > 1.1e-4  # the first run's schedule sits at its floor (1e-4) past step 6


def test_fit_refuses_a_cache_made_with_another_vqvae(tiny_cache, tmp_path):
    dm = PairDataModule([CacheSource(tiny_cache, train_shards="0", val_shards="4")], batch_size=8)
    module = RadarLoraModule(decoder=ModelArgs(preset="tiny", init_seed=1))
    trainer = pl.Trainer(default_root_dir=str(tmp_path), accelerator="cpu", max_steps=1, logger=False,
                         enable_progress_bar=False, use_distributed_sampler=False)
    with pytest.raises(ValueError, match=f"cache {tiny_cache} .* does not match the decoder"):
        trainer.fit(module, dm)
    assert not (tmp_path / "checkpoints").exists()


class RecordGroups(pl.Callback):
    """Each parameter group's (lr, weight_decay, betas) at the start of every optimizer step."""

    def __init__(self):
        self.groups: dict[int, list[tuple]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.groups[trainer.global_step + 1] = [(g["lr"], g["weight_decay"], tuple(g["betas"]))
                                                for g in trainer.optimizers[0].param_groups]


def test_a_continued_run_takes_the_rates_decay_and_betas_of_its_config(tmp_path, make_loader):
    """A checkpoint's optimizer and scheduler hold the first config's rate, weight decay and betas; the run
    continued from it with another config trains with the new ones (the discriminator group at its new
    lr_scale), from the first step after the resume."""
    from radar_train.train.adversarial import AdversarialArgs

    def fit(steps, lr, wd, betas, scale, ckpt=None):
        torch.manual_seed(0)
        module = RadarLoraModule(optim=OptimArgs(learning_rate=lr, weight_decay=wd, betas=betas, warmup_steps=0,
                                                 min_lr_ratio=1.0),  # constant: the rate is the config's
                                 monitor=MonitorArgs(images_every_n_steps=0, train_metrics_every_n_steps=0),
                                 output=OutputArgs(save_every_n_steps=2, export_final=False),
                                 adversarial=AdversarialArgs(weight=0.1, lr_scale=scale, width=8, layers=1))
        rec = RecordGroups()
        trainer = pl.Trainer(default_root_dir=str(tmp_path), accelerator="cpu", devices=1, precision="32-true",
                             max_steps=steps, limit_val_batches=0, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, logger=False, callbacks=[rec])
        trainer.fit(module, make_loader(), ckpt_path=ckpt)  # 8 pairs, 2 batches: step 4 ends an epoch
        return rec.groups

    first = fit(4, 1e-2, 0.0, (0.9, 0.999), 1.0)
    assert first[4] == [(1e-2, 0.0, (0.9, 0.999))] * 2
    continued = fit(8, 1e-3, 0.5, (0.8, 0.99), 2.0, ckpt="last")
    assert sorted(continued) == [5, 6, 7, 8]
    for step in continued:
        assert continued[step] == [(1e-3, 0.5, (0.8, 0.99)), (2e-3, 0.5, (0.8, 0.99))]
