"""Fixtures of the training tests: a small tiny-model cache (16 shards of 16 pairs, FastVAR default preset,
the sampler settings of configs/cache/tiny.yaml; ~15 s) made once per session with the cache API, and
synthetic latent batches."""
from __future__ import annotations

import pytest
import torch

NUM_PAIRS, SHARD_SIZE = 256, 16  # shards 0-15; the tests train on 0-13 and hold out 14-15


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory, build_cache) -> str:
    """Path of a tiny cache: 256 pairs in shards 0-15 of 16 pairs."""
    from radar_train.cache.config import CacheArgs, PlanArgs, StorageArgs
    from radar_train.config import AccelArgs, SamplingConfig

    out = tmp_path_factory.mktemp("cache") / "tiny"
    args = CacheArgs(sampling=SamplingConfig(cfg=1.5, top_k=64, top_p=0.96), accel=AccelArgs(method="fastvar"),
                     plan=PlanArgs(images_per_class=None, num_samples=NUM_PAIRS, shard_size=SHARD_SIZE),
                     storage=StorageArgs(chunk_size=8), output=str(out), batch_size=48, progress=False,
                     device="cpu", num_threads=1)
    return build_cache(args)


def synthetic_batch(n: int = 4, seed: int = 0, noise: float = 0.5) -> dict[str, torch.Tensor]:
    """Random tiny-model latent pairs (B, 8, 8, 8): fhat_lq = fhat_hq + noise."""
    g = torch.Generator().manual_seed(seed)
    hq = torch.randn(n, 8, 8, 8, generator=g)
    return {"fhat_hq": hq, "fhat_lq": hq + noise * torch.randn(n, 8, 8, 8, generator=g)}


@pytest.fixture
def make_batch():
    return synthetic_batch


def synthetic_loader(n: int = 8, batch_size: int = 4):
    """The `synthetic_batch(n)` pairs one by one, in order, in batches of `batch_size` (a training dataloader)."""
    from torch.utils.data import DataLoader

    b = synthetic_batch(n)
    return DataLoader([{k: v[i] for k, v in b.items()} for i in range(n)], batch_size=batch_size, shuffle=False)


@pytest.fixture(scope="session")
def make_loader():
    return synthetic_loader

