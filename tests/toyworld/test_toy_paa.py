"""A short PAA run on the shipped toy world: a cache made with the aggressive FastVAR preset, a LoRA
trained on it for a hundred steps, and the held-out shard's restoration metrics."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from radar_train.config import AccelArgs, ModelArgs, SamplingConfig
from radar_train.train.datamodule import CacheSource, PairDataModule
from radar_train.train.module import MonitorArgs, OutputArgs, RadarLoraModule
from radar_train.train.optim import OptimArgs


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory, build_cache) -> str:
    """160 toy pairs (vanilla / FastVAR aggressive), shards 0-9 of 16; the settings of configs/cache/toy.yaml."""
    from radar_train.cache.config import CacheArgs, PlanArgs, StorageArgs

    out = tmp_path_factory.mktemp("cache") / "toy"
    accel = AccelArgs(method="fastvar")
    accel.fastvar.preset = "aggressive"
    args = CacheArgs(model=ModelArgs(preset="toy"), sampling=SamplingConfig(cfg=3.0, top_k=32, top_p=0.0),
                     accel=accel, plan=PlanArgs(images_per_class=16, shard_size=16),
                     storage=StorageArgs(chunk_size=16), output=str(out), batch_size=80, progress=False,
                     device="cpu", num_threads=torch.get_num_threads())  # (this test process's share of the cores)
    return build_cache(args)


@pytest.mark.slow
def test_a_short_paa_run_on_the_toy_world_wins_back_psnr(toy_cache, tmp_path):
    torch.manual_seed(0)
    dm = PairDataModule([CacheSource(toy_cache, train_shards="0-8", val_shards="9")], batch_size=16,
                        val_batch_size=16)
    module = RadarLoraModule(decoder=ModelArgs(preset="toy"),
                             optim=OptimArgs(learning_rate=1e-3, warmup_steps=10),
                             monitor=MonitorArgs(images_every_n_steps=0, train_metrics_every_n_steps=0),
                             output=OutputArgs(save_every_n_steps=0, export_final=False))
    trainer = pl.Trainer(default_root_dir=str(tmp_path), accelerator="cpu", devices=1, precision="32-true",
                         max_steps=100, val_check_interval=100, check_val_every_n_epoch=None,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         use_distributed_sampler=False, logger=False)
    before = trainer.validate(module, dm, verbose=False)[0]
    trainer.fit(module, dm)
    m = module.val_metrics
    print(f"\ntoy world, FastVAR aggressive, 100 steps of 16 pairs (144 train / 16 held-out pairs): val loss "
          f"{before['val/loss']:.4f} -> {float(trainer.callback_metrics['val/loss']):.4f}, G_mse "
          f"{m['gap_closed_mse']:.3f}, ΔPSNR {m['delta_psnr']:+.2f} dB")
    assert float(trainer.callback_metrics["val/loss"]) < before["val/loss"]
    assert m["delta_psnr"] > 0
    assert m["gap_closed_mse"] > 0
