"""Fixtures of the cache tests: synthetic caches (the real writer, no VAR) and the tiny config."""
from __future__ import annotations

import pytest

from radar_train.cache.synthetic import synthetic_manifest, write_synthetic_cache


@pytest.fixture
def make_synthetic(tmp_path):
    """make_synthetic(num_samples, shard_size, chunk_size=4, shards=None, **kw) -> cache folder."""
    counter = iter(range(1000))

    def make(num_samples=30, shard_size=8, chunk_size=4, shards=None, name=None, **kw):
        m = synthetic_manifest(num_samples, shard_size, latent_shape=kw.pop("latent_shape", (4, 2, 2)),
                               patch_nums=kw.pop("patch_nums", (1, 2)), chunk_size=chunk_size,
                               num_classes=kw.pop("num_classes", 10), **kw)
        return write_synthetic_cache(tmp_path / (name or f"syn{next(counter)}"), m, shards)

    return make
