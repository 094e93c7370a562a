"""Fixtures of the training tests: a small tiny-model cache (6 shards of 16 pairs, FastVAR default preset,
the sampler settings of configs/cache/tiny.yaml) made once per session with the cache API, and synthetic
latent batches."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"
TRAIN_SHARDS, VAL_SHARDS = "0-3", "4-5"


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> str:
    """Path of a tiny cache: 96 pairs in shards 0-5 (train 0-3, validation 4-5)."""
    from radar_train.cache.config import CacheArgs, PlanArgs, StorageArgs
    from radar_train.cache.generate import run_cache
    from radar_train.config import AccelArgs, SamplingConfig

    out = tmp_path_factory.mktemp("cache") / "tiny"
    threads = torch.get_num_threads()
    args = CacheArgs(sampling=SamplingConfig(cfg=1.5, top_k=64, top_p=0.96), accel=AccelArgs(method="fastvar"),
                     plan=PlanArgs(images_per_class=None, num_samples=96, shard_size=16),
                     storage=StorageArgs(chunk_size=8), output=str(out), batch_size=48, progress=False,
                     device="cpu", num_threads=1)
    try:
        run_cache(args, print_fn=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    return str(out)


def synthetic_batch(n: int = 4, seed: int = 0, noise: float = 0.5) -> dict[str, torch.Tensor]:
    """Random tiny-model latent pairs (B, 8, 8, 8): fhat_lq = fhat_hq + noise."""
    g = torch.Generator().manual_seed(seed)
    hq = torch.randn(n, 8, 8, 8, generator=g)
    return {"fhat_hq": hq, "fhat_lq": hq + noise * torch.randn(n, 8, 8, 8, generator=g)}


class SyntheticPairs(torch.utils.data.Dataset):
    """A map-style dataset of `synthetic_batch` items."""

    def __init__(self, n: int, seed: int = 0):
        self.items = synthetic_batch(n, seed)

    def __len__(self) -> int:
        return len(self.items["fhat_hq"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.items.items()}


@pytest.fixture
def make_batch():
    return synthetic_batch


@pytest.fixture
def make_pairs():
    return SyntheticPairs


@pytest.fixture
def quiet_trainer_kwargs(tmp_path) -> dict:
    """CPU fp32 Trainer settings for fast tests (no progress bar / summary / sanity check)."""
    return dict(default_root_dir=str(tmp_path / "run"), accelerator="cpu", devices=1, precision="32-true",
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                use_distributed_sampler=False, log_every_n_steps=1)
