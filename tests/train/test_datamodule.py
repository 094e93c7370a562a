"""PairDataModule: shard split by config, block-aligned sampling over several caches, WebDataset input."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from radar_train.cache.schema import read_manifest
from radar_train.models import load_latent_decoder
from radar_train.train.checks import check_cache_matches
from radar_train.train.datamodule import CacheSource, PairDataModule, parse_shards


def test_shard_specs_parse_ranges_lists_and_reject_garbage():
    assert parse_shards("0-3,7", "x") == [0, 1, 2, 3, 7]
    assert parse_shards([9, 8], "x") == [8, 9] and parse_shards("4", "x") == [4] and parse_shards(None, "x") is None
    with pytest.raises(ValueError, match="data.caches\\[0\\].val_shards"):
        parse_shards("a-b", "data.caches[0].val_shards")
    with pytest.raises(ValueError, match="twice"):
        parse_shards("1,1", "x")


def test_train_shards_default_to_every_complete_shard_not_held_out(tiny_cache):
    dm = PairDataModule([CacheSource(tiny_cache, val_shards="14-15")], batch_size=4)
    dm.setup("fit")
    assert dm.splits == [(list(range(14)), [14, 15])]
    assert len(dm.train_set) == 224 and len(dm.val_set) == 32
    train_idx = {int(dm.train_set[i]["index"]) for i in range(len(dm.train_set))}
    val_idx = {int(dm.val_set[i]["index"]) for i in range(len(dm.val_set))}
    assert train_idx == set(range(224)) and val_idx == set(range(224, 256))


def test_bad_splits_are_reported_together(tiny_cache, tmp_path):
    dm = PairDataModule([CacheSource(tiny_cache, train_shards="0-4", val_shards="4,19"),
                         CacheSource(str(tmp_path / "nothing"), val_shards="0")])
    with pytest.raises(ValueError) as e:
        dm.setup("fit")
    msg = str(e.value)
    assert "[4] are in both" in msg and "[19] are not complete" in msg and "nothing does not exist" in msg


def test_no_validation_shards_is_an_error(tiny_cache):
    with pytest.raises(ValueError, match="no validation shards"):
        PairDataModule([CacheSource(tiny_cache)]).setup("fit")


def test_one_epoch_over_two_caches_visits_every_training_pair_once_in_whole_blocks(tiny_cache):
    dm = PairDataModule([CacheSource(tiny_cache, train_shards="0-1", val_shards="4"),
                         CacheSource(tiny_cache, train_shards="2-3", val_shards="5")], batch_size=8, drop_last=False)
    dm.setup("fit")
    loader = dm.train_dataloader()
    seen = torch.cat([b["index"] for b in loader]).tolist()
    assert sorted(seen) == list(range(64))
    # here dataset position == global index; the order is a sequence of whole blocks, each shuffled inside
    blocks = {a: (a, z) for a, z in dm.train_set.blocks()}
    assert len(blocks) > 1 and sum(z - a for a, z in blocks.values()) == 64
    k = 0
    while k < len(seen):
        a, z = next(blk for blk in blocks.values() if blk[0] <= seen[k] < blk[1])
        assert sorted(seen[k:k + z - a]) == list(range(a, z))
        k += z - a
    loader.sampler.set_epoch(1)
    assert torch.cat([b["index"] for b in loader]).tolist() != seen


def test_webdataset_export_gives_the_same_pairs(tiny_cache, tmp_path):
    from radar_train.cache.wds import export_wds

    export_wds(tiny_cache, str(tmp_path / "wds"), progress=False)
    zarr_dm = PairDataModule([CacheSource(tiny_cache, train_shards="0-1", val_shards="4")], batch_size=8)
    wds_dm = PairDataModule([CacheSource(str(tmp_path / "wds"), train_shards="0-1", val_shards="4", format="wds")],
                            batch_size=8, wds_shuffle_buffer=16)
    zarr_dm.setup("fit")
    wds_dm.setup("fit")
    z = {int(b["index"][i]): b["fhat_lq"][i] for b in zarr_dm.train_dataloader() for i in range(len(b["index"]))}
    w = {int(b["index"][i]): b["fhat_lq"][i] for b in wds_dm.train_dataloader() for i in range(len(b["index"]))}
    assert sorted(z) == sorted(w) == list(range(32))
    assert all(torch.equal(z[k], w[k]) for k in z)
    assert torch.equal(wds_dm.image_batch(4)["index"], torch.arange(64, 68))  # shard 4 = pairs 64..79


def test_a_cache_of_another_latent_shape_or_vqvae_is_refused(tiny_cache):
    manifest = read_manifest(tiny_cache)
    _, ident = load_latent_decoder("tiny")
    check_cache_matches(tiny_cache, manifest, ident, [8, 8, 8])  # the matching decoder passes
    with pytest.raises(ValueError, match=r"latents are \[8, 8, 8\] but the decoder takes \[32, 16, 16\]"):
        check_cache_matches(tiny_cache, manifest, ident, [32, 16, 16])
    _, other = load_latent_decoder("tiny", init_seed=1)
    with pytest.raises(ValueError, match="made with the VQ-VAE random:tiny:seed=0 but the decoder is random:tiny:seed=1"):
        check_cache_matches(tiny_cache, manifest, other, [8, 8, 8])
    changed = dataclasses.replace(ident, config={**ident.config, "ch": 64})
    with pytest.raises(ValueError, match="config differs from the decoder's in ch"):
        check_cache_matches(tiny_cache, manifest, changed, [8, 8, 8])
