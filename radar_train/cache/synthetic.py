"""Synthetic caches written with the real writer but without running VAR: for reader benchmarks at the
official latent shapes and for tests. Content is a pure function of (seed, shard): fhat_hq is standard
normal noise, fhat_lq = fhat_hq + 0.1 · noise, token indices uniform in [0, vocab)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

import radar_train
from radar_train.cache import schema
from radar_train.cache.plan import Plan
from radar_train.cache.schema import Manifest
from radar_train.cache.writer import begin_shard, commit_shard, write_arrays, writer_info

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def synthetic_manifest(num_samples: int, shard_size: int, latent_shape: Sequence[int] = (32, 16, 16),
                       patch_nums: Sequence[int] = PATCH_NUMS_256, dtype: str = "float16", chunk_size: int = 64,
                       num_classes: int = 1000, compressor: str = "lz4") -> Manifest:
    plan = Plan(tuple(range(num_classes)), None, num_samples, 0, shard_size)
    return Manifest(
        format_version=schema.FORMAT_VERSION, radar_train_version=radar_train.__version__, plan=plan.to_dict(),
        model={"preset": "synthetic", "vae": {"kind": "synthetic", "value": "synthetic", "config": {}},
               "var": {"kind": "synthetic", "value": "synthetic", "config": {}}},
        sampling={}, accel={"method": "synthetic"}, latent_shape=list(latent_shape), latent_dtype=dtype,
        patch_nums=list(patch_nums), precision="float32",
        storage={"dtype": dtype, "chunk_size": chunk_size, "compressor": compressor, "compression_level": 5},
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def synthetic_shard_arrays(manifest: Manifest, shard: int, seed: int = 0, vocab: int = 4096) -> dict[str, np.ndarray]:
    plan = Plan.from_dict(manifest.plan)
    start, stop = plan.shard_range(shard)
    n = stop - start
    rng = np.random.default_rng([seed, shard])
    hq = rng.standard_normal((n, *manifest.latent_shape), dtype=np.float32)
    lq = hq + 0.1 * rng.standard_normal(hq.shape, dtype=np.float32)
    labels, seeds = plan.labels_seeds(start, stop)
    L = manifest.index_length
    dt = manifest.latent_dtype
    return {schema.FHAT_HQ: hq.astype(dt), schema.FHAT_LQ: lq.astype(dt),
            schema.INDICES_HQ: rng.integers(0, vocab, (n, L)).astype(np.int16),
            schema.INDICES_LQ: rng.integers(0, vocab, (n, L)).astype(np.int16),
            schema.LABEL: labels.astype(np.int16), schema.SEED: seeds, schema.INDEX: np.arange(start, stop)}


def write_synthetic_cache(cache_dir: str | Path, manifest: Manifest, shards: Optional[Sequence[int]] = None,
                          seed: int = 0) -> Path:
    """Write the manifest and the given shards (default: all) of a synthetic cache."""
    cache_dir = Path(cache_dir)
    schema.create_or_check_manifest(cache_dir, manifest)
    plan = Plan.from_dict(manifest.plan)
    for s in range(plan.num_shards) if shards is None else shards:
        tmp = begin_shard(cache_dir, s, writer_info(0, 1, "cpu"))
        write_arrays(tmp, s, plan.shard_range(s)[0], synthetic_shard_arrays(manifest, s, seed), manifest)
        commit_shard(tmp, s)
    return cache_dir
