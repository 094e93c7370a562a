"""Reading: PairDataset items (dtypes, content, shard selection), BlockShuffleSampler (every index once per
epoch across ranks and DataLoader workers, block order), DataLoader workers under fork and spawn, and the
WebDataset export yielding the same samples."""
import collections
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from radar_train.cache import schema
from radar_train.cache.reader import BlockShuffleSampler, PairDataset
from radar_train.cache.plan import Plan
from radar_train.cache.schema import read_manifest
from radar_train.cache.synthetic import synthetic_shard_arrays
from radar_train.cache.wds import WdsPairs, export_wds


def _expected(cache, shard):
    return synthetic_shard_arrays(read_manifest(cache), shard)


def test_items_have_the_contract_dtypes_and_the_written_content(make_synthetic):
    cache = make_synthetic(num_samples=30, shard_size=8, chunk_size=4)
    ds = PairDataset(cache)
    assert len(ds) == 30 and ds.shard_ids == [0, 1, 2, 3]
    want = _expected(cache, 2)
    item = ds[8 * 2 + 5]
    assert item["fhat_hq"].dtype == torch.float32 and item["fhat_hq"].shape == (4, 2, 2)
    assert all(item[k].dtype == torch.int64 and item[k].dim() == 0 for k in ("label", "seed", "index"))
    assert torch.equal(item["fhat_hq"], torch.from_numpy(want[schema.FHAT_HQ][5].astype(np.float32)))
    assert torch.equal(item["fhat_lq"], torch.from_numpy(want[schema.FHAT_LQ][5].astype(np.float32)))
    assert (int(item["index"]), int(item["label"]), int(item["seed"])) == (21, 21 % 10, 21)
    assert int(ds[-1]["index"]) == 29


@pytest.mark.parametrize("verify", [True, False])
def test_kept_tokens_are_both_runs_indices_in_item_order_from_the_same_read(make_synthetic, verify):
    """radar-eval's token agreement comes from the read that checks the shards (it read them a second time)."""
    cache = make_synthetic(num_samples=30, shard_size=8, chunk_size=4)
    ds = PairDataset(cache, shards=[3, 1], keep_tokens=True, verify=verify)
    for attr, key in (("tokens_hq", schema.INDICES_HQ), ("tokens_lq", schema.INDICES_LQ)):
        want = np.concatenate([_expected(cache, 3)[key], _expected(cache, 1)[key]])
        assert getattr(ds, attr).dtype == np.int16 and np.array_equal(getattr(ds, attr), want)
    assert PairDataset(cache, shards=[1]).tokens_hq is None  # (not kept unless asked)


def test_batched_fetch_equals_single_items(make_synthetic):
    ds = PairDataset(make_synthetic(num_samples=30, shard_size=8, chunk_size=4), block_size=4)
    order = [5, 6, 4, 29, 0, 17, 16, 3]  # runs inside a block, block changes, shard changes
    for a, b in zip(ds.__getitems__(order), [ds[i] for i in order]):
        assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_a_subset_of_shards_maps_positions_to_global_indices(make_synthetic):
    cache = make_synthetic(num_samples=30, shard_size=8)
    ds = PairDataset(cache, shards=[3, 1])
    assert ds.shard_ids == [3, 1] and len(ds) == 6 + 8
    assert [int(ds[i]["index"]) for i in range(len(ds))] == list(range(24, 30)) + list(range(8, 16))


def test_shards_are_read_as_the_configs_write_them(make_synthetic):
    """"12" is shard 12 (not shards 1 and 2), "0-2" a range, 3 one shard; what is not a list of shards names
    `shards`."""
    cache = make_synthetic(num_samples=13 * 2, shard_size=2)
    assert PairDataset(cache, shards="12").shard_ids == [12]
    assert PairDataset(cache, shards="0-2,7").shard_ids == [0, 1, 2, 7]
    assert PairDataset(cache, shards=3).shard_ids == [3]
    with pytest.raises(ValueError, match="shards: cannot read 'x'"):
        PairDataset(cache, shards="x")


def test_requesting_a_missing_shard_is_a_clear_error(make_synthetic):
    cache = make_synthetic(num_samples=30, shard_size=8, shards=[0, 1, 3])
    assert PairDataset(cache).shard_ids == [0, 1, 3]
    with pytest.raises(ValueError, match=r"shards 2 are missing or incomplete \(complete: 0-1, 3 of 0-3\)"):
        PairDataset(cache, shards=[0, 2])


def test_a_shard_folder_without_its_group_file_is_named_as_such(make_synthetic):
    """It was `cache shard not found`, of a folder that is there."""
    cache = make_synthetic(num_samples=16, shard_size=8)
    (cache / "shard-00001.zarr" / "zarr.json").unlink()
    with pytest.raises(ValueError) as e:
        PairDataset(cache)
    assert str(e.value).endswith(f"{cache / 'shard-00001.zarr'}: cache shard is not a Zarr group (its zarr.json is "
                                 f"missing; run `radar-cache verify`)")


@pytest.mark.parametrize("n, world, drop_last", [(30, 3, False), (29, 3, False), (29, 3, True), (30, 1, False)])
def test_sampler_visits_every_index_once_per_epoch_across_ranks(make_synthetic, n, world, drop_last):
    ds = PairDataset(make_synthetic(num_samples=n, shard_size=8, chunk_size=4))
    for epoch in (0, 1):
        seen = []
        for rank in range(world):
            s = BlockShuffleSampler(ds, seed=3, rank=rank, world_size=world, drop_last=drop_last)
            s.set_epoch(epoch)
            mine = list(s)
            assert len(mine) == len(s)
            seen += mine
        counts = collections.Counter(seen)
        assert len({len(list(BlockShuffleSampler(ds, rank=r, world_size=world, drop_last=drop_last)))
                    for r in range(world)}) == 1  # equal lengths on every rank
        if n % world == 0:
            assert sorted(seen) == list(range(n))
        elif drop_last:
            assert len(seen) == n - n % world and max(counts.values()) == 1
        else:
            assert set(seen) == set(range(n)) and sum(counts.values()) - n == world - n % world


def test_blocks_are_whole_chunks_within_a_shard(make_synthetic):
    cache = make_synthetic(num_samples=30, shard_size=16, chunk_size=4)
    assert PairDataset(cache, block_size=6).blocks() == [(0, 8), (8, 16), (16, 24), (24, 30)]
    assert PairDataset(cache).blocks() == [(0, 16), (16, 30)]  # default 256, cut at the shard's end


def test_sampler_goes_block_by_block_and_reshuffles_per_epoch(make_synthetic):
    ds = PairDataset(make_synthetic(num_samples=40, shard_size=16, chunk_size=4), block_size=4)
    s = BlockShuffleSampler(ds, seed=0)
    order = list(s)
    blocks = [tuple(sorted(order[i: i + 4])) for i in range(0, 40, 4)]
    assert sorted(blocks) == sorted(tuple(range(a, b)) for a, b in ds.blocks())
    assert order != list(range(40))
    s.set_epoch(1)
    assert list(s) != order
    assert list(BlockShuffleSampler(ds, seed=0)) == order  # same seed and epoch: same order on every rank
    assert list(BlockShuffleSampler(ds, shuffle=False)) == list(range(40))


def test_sampler_orders_any_seed_and_keeps_the_orders_of_seeds_that_fit_a_generator(make_synthetic):
    ds = PairDataset(make_synthetic(num_samples=40, shard_size=16, chunk_size=4), block_size=4)

    def order(seed, epoch):
        s = BlockShuffleSampler(ds, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    for seed in (10 ** 14, 2 ** 64, -(10 ** 14), 10 ** 40):  # seed * 1_000_003 overflowed the generator's 64 bits
        epochs = [order(seed, e) for e in range(3)]
        assert all(sorted(e) == list(range(40)) for e in epochs) and len({tuple(e) for e in epochs}) == 3
        assert order(seed, 1) == epochs[1] and order(seed + 1, 1) != epochs[1]
    for seed in (0, 7, 9_000_000_000_000, -5):  # the orders a run started before keeps on resume
        g = torch.Generator()
        g.manual_seed(seed * 1_000_003 + 2)
        blocks = torch.randperm(len(ds.blocks()), generator=g).tolist()
        assert [order(seed, 2)[i] // 4 for i in range(0, 40, 4)] == [ds.blocks()[b][0] // 4 for b in blocks]


def _epoch(ds, epoch, **kw):
    s = BlockShuffleSampler(ds, seed=5, **kw)
    s.set_epoch(epoch)
    return list(s)


def test_sampler_state_resumes_mid_epoch_then_goes_on_to_the_next_epoch(make_synthetic):
    ds = PairDataset(make_synthetic(num_samples=40, shard_size=16, chunk_size=4), block_size=4)
    a = BlockShuffleSampler(ds, seed=5)
    a.set_epoch(2)
    it = iter(a)
    head = [next(it) for _ in range(7)]
    state = a.state_dict()
    assert state == {"epoch": 2, "position": 7}
    b = BlockShuffleSampler(ds, seed=5)
    b.load_state_dict(state)
    assert b.state_dict() == state  # pending, before the iteration starts
    assert head + list(b) == _epoch(ds, 2)
    assert b.state_dict() == {"epoch": 2, "position": 40}
    b.set_epoch(3)
    assert list(b) == _epoch(ds, 3)
    assert list(b) == _epoch(ds, 3)  # the resume point applies to one iteration only


def test_sampler_state_at_the_end_of_an_epoch_resumes_at_the_next_one(make_synthetic):
    ds = PairDataset(make_synthetic(num_samples=40, shard_size=16, chunk_size=4), block_size=4)
    a = BlockShuffleSampler(ds, seed=5)
    a.set_epoch(1)
    assert list(a) == _epoch(ds, 1)
    b = BlockShuffleSampler(ds, seed=5)
    b.load_state_dict(a.state_dict())
    assert b.epoch == 2 and list(b) == _epoch(ds, 2)
    b.load_state_dict({"epoch": 4, "position": 3})
    b.set_epoch(5)  # another epoch drops the resume point
    assert list(b) == _epoch(ds, 5)


def test_sampler_state_counts_what_was_consumed_not_what_was_handed_out(make_synthetic):
    ds = PairDataset(make_synthetic(num_samples=40, shard_size=16, chunk_size=4), block_size=4)
    a = BlockShuffleSampler(ds, seed=5)
    it = iter(a)
    [next(it) for _ in range(20)]  # e.g. DataLoader workers reading ahead of training
    assert a.state_dict(consumed=8) == {"epoch": 0, "position": 8}
    assert a.state_dict(consumed=99) == {"epoch": 0, "position": 20}


@pytest.mark.parametrize("n, world, drop_last", [(29, 3, False), (29, 3, True)])
def test_sampler_state_of_rank_zero_resumes_every_rank(make_synthetic, n, world, drop_last):
    ds = PairDataset(make_synthetic(num_samples=n, shard_size=8, chunk_size=4), block_size=4)
    states, heads = [], []
    for rank in range(world):
        s = BlockShuffleSampler(ds, seed=5, rank=rank, world_size=world, drop_last=drop_last)
        s.set_epoch(1)
        it = iter(s)
        heads.append([next(it) for _ in range(4)])
        states.append(s.state_dict())
    assert all(st == {"epoch": 1, "position": 4} for st in states)
    for rank in range(world):
        s = BlockShuffleSampler(ds, seed=5, rank=rank, world_size=world, drop_last=drop_last)
        s.load_state_dict(states[0])
        assert heads[rank] + list(s) == _epoch(ds, 1, rank=rank, world_size=world, drop_last=drop_last)


def test_pair_dataset_reports_every_unreadable_shard(make_synthetic):
    import zarr

    cache = make_synthetic(num_samples=32, shard_size=8)
    for shard in (1, 3):
        zarr.open_group(f"{cache}/shard-{shard:05d}.zarr", mode="r+").attrs["complete"] = False
    with pytest.raises(ValueError, match=r"2 unreadable shard\(s\): .*shard-00001.zarr: cache shard is not marked "
                                         r"complete.*shard-00003.zarr: cache shard is not marked complete"):
        PairDataset(cache)


@pytest.mark.parametrize("damage", ["chunk file gone", "chunk file truncated", "another shard's copy"])
def test_pair_dataset_refuses_data_that_is_not_what_the_writer_wrote(make_synthetic, damage):
    """A half-copied cache: Zarr reads a missing chunk file as zeros, which a training run would learn to
    restore; the dataset checks every shard against its stored checksums when it is made."""
    cache = make_synthetic(num_samples=24, shard_size=8, chunk_size=4)
    data = cache / "shard-00001.zarr" / "fhat_hq" / "c" / "0" / "0" / "0" / "0"
    if damage == "chunk file gone":
        data.unlink()
    elif damage == "chunk file truncated":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    else:
        shutil.rmtree(cache / "shard-00001.zarr")
        shutil.copytree(cache / "shard-00002.zarr", cache / "shard-00001.zarr")
    with pytest.raises(ValueError, match=r"1 unreadable shard\(s\): \S*shard-00001.zarr: cache shard ") as e:
        PairDataset(cache)
    assert "\n" not in str(e.value) and "shard-00000" not in str(e.value)
    assert ("fhat_hq differs from its stored checksum" in str(e.value)) == (damage == "chunk file gone")
    assert ("is marked shard 2, not 1" in str(e.value)) == (damage == "another shard's copy")
    assert PairDataset(cache, shards=[0, 2]).shard_ids == [0, 2]  # the others are fine


def test_a_shard_damaged_after_the_dataset_was_made_names_itself_in_a_worker_too(make_synthetic):
    from torch._utils import ExceptionWrapper  # what DataLoader re-raises a worker's error with

    from radar_train.cli.common import worker_error

    cache = make_synthetic(num_samples=16, shard_size=8, chunk_size=4)
    ds = PairDataset(cache, block_size=4)
    data = cache / "shard-00001.zarr" / "fhat_lq" / "c" / "0" / "0" / "0" / "0"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    assert int(ds[0]["index"]) == 0
    with pytest.raises(ValueError, match=r"shard-00001.zarr: cache shard cannot be read \(") as e:
        ds[9]
    try:
        raise e.value
    except ValueError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 1")
    with pytest.raises(ValueError) as again:
        wrapped.reraise()
    assert "Traceback" in str(again.value)
    assert worker_error(again.value) == f"{e.value} (in DataLoader worker 1)"
    assert worker_error(ValueError("plain")).args == ("plain",)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_yield_the_same_batches_as_the_main_process(make_synthetic, context):
    ds = PairDataset(make_synthetic(num_samples=40, shard_size=16, chunk_size=4), block_size=8)
    ds[0]  # open Zarr and fill the block cache in the parent: workers must not depend on it
    sampler = BlockShuffleSampler(ds, seed=1)
    ref = list(DataLoader(ds, batch_size=8, sampler=sampler, num_workers=0))
    got = list(DataLoader(ds, batch_size=8, sampler=sampler, num_workers=2, multiprocessing_context=context))
    assert len(got) == len(ref) == 5
    for a, b in zip(ref, got):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_webdataset_export_round_trips(make_synthetic, tmp_path):
    cache = make_synthetic(num_samples=30, shard_size=8, chunk_size=4)
    index = export_wds(str(cache), str(tmp_path / "wds"), progress=False)
    assert [s["nsamples"] for s in index["shardlist"]] == [8, 8, 8, 6] and index["complete"]
    assert sorted(p.name for p in (tmp_path / "wds").iterdir()) == [
        "index.json", "manifest.json", "pairs-00000.tar", "pairs-00001.tar", "pairs-00002.tar", "pairs-00003.tar"]
    ds = PairDataset(cache)
    items = list(WdsPairs(tmp_path / "wds"))
    assert [int(it["index"]) for it in items] == list(range(30))
    for it in items:
        ref = ds[int(it["index"])]
        assert it.keys() == ref.keys()
        assert all(it[k].dtype == ref[k].dtype and torch.equal(it[k], ref[k]) for k in ref)


def test_folders_whose_names_read_as_urls_are_the_local_folders_they_name(make_synthetic, tmp_path, monkeypatch):
    """Zarr and webdataset take a string for a URL: a cache folder named `q::r` (Zarr's chained URL `q:`) could not
    be written or read, and, relative to the current folder, an export named `file:w` read the tars of `w` and
    one named `pipe:touch HERE;cat w` ran that shell command. Each is now the local folder it names."""
    from radar_train.cache.status import verify_shard
    from radar_train.train.datamodule import _wds_tars

    monkeypatch.chdir(tmp_path)
    cache = make_synthetic(num_samples=12, shard_size=8, name="q::r")  # (written through the cache's writer)
    other = make_synthetic(num_samples=20, shard_size=8, name="other")
    manifest = read_manifest("q::r")
    assert [verify_shard(manifest, Plan.from_dict(manifest.plan), s, Path("q::r") / schema.shard_name(s))
            for s in (0, 1)] == [[], []]
    assert [int(PairDataset("q::r")[i]["index"]) for i in range(12)] == list(range(12))
    export_wds(str(other), "w", progress=False)
    for name in ("file:w", "pipe:touch HERE;cat w"):
        export_wds("q::r", name, progress=False)
        assert sorted(int(it["index"]) for it in WdsPairs(name)) == list(range(12)), name
        assert sorted(int(it["index"]) for it in WdsPairs(_wds_tars(name, [0, 1]))) == list(range(12)), name
    assert not (tmp_path / "HERE").exists() and cache == tmp_path / "q::r"


def test_webdataset_workers_split_the_tars_and_export_resumes(make_synthetic, tmp_path):
    cache = make_synthetic(num_samples=30, shard_size=8)
    export_wds(str(cache), str(tmp_path / "wds"), progress=False)
    tar = tmp_path / "wds" / "pairs-00001.tar"
    stamp = tar.stat().st_mtime_ns
    export_wds(str(cache), str(tmp_path / "wds"), progress=False)
    assert tar.stat().st_mtime_ns == stamp  # existing tars are skipped
    dl = DataLoader(WdsPairs(tmp_path / "wds", shuffle=10, shardshuffle=True), batch_size=4, num_workers=2)
    seen = torch.cat([b["index"] for b in dl]).tolist()
    assert sorted(seen) == list(range(30))


def test_webdataset_workers_shuffle_their_tars_each_in_its_own_order(make_synthetic, tmp_path):
    """Two workers read two tars each; with one sample-shuffle seed for both, worker 1's order was worker 0's one tar
    on (each of its pairs 8 past the one worker 0 gave before it). Each worker now shuffles with a seed of its own,
    and the loader's order is the same in every run."""
    export_wds(str(make_synthetic(num_samples=32, shard_size=8)), str(tmp_path / "wds"), progress=False)

    def order() -> list[int]:
        dl = DataLoader(WdsPairs(tmp_path / "wds", shuffle=16, seed=5), batch_size=1, num_workers=2)
        return [int(b["index"]) for b in dl]

    seen = order()
    assert sorted(seen) == list(range(32)) and order() == seen
    by_worker = [seen[0::2], seen[1::2]]  # (batches alternate between the workers)
    assert {i // 8 for i in by_worker[0]} == {0, 2} and {i // 8 for i in by_worker[1]} == {1, 3}
    assert [i % 8 for i in by_worker[0]] != [i % 8 for i in by_worker[1]]


def _cut_at(tar, cut: str) -> int:
    """Where to cut the tar: inside the data of its first member, where its second member's header starts (a
    block boundary inside the first pair), or where the first pair's last member ends (padded to a block)."""
    import tarfile

    with tarfile.open(tar) as t:
        members = t.getmembers()
    first = [m for m in members if m.name.split(".")[0] == members[0].name.split(".")[0]]
    return {"to nothing": 0, "inside a member's data": members[0].offset_data + 100,
            "at a block inside a pair": members[1].offset,
            "after the first pair": first[-1].offset_data + -(-first[-1].size // 512) * 512}[cut]


@pytest.mark.parametrize("cut, error", [
    ("to nothing", r"WebDataset tar cannot be read \(empty file\)"),
    ("inside a member's data", r"WebDataset tar cannot be read \(unexpected end of data\)"),
    # tarfile reads a tar cut at a block boundary as a shorter whole one
    ("at a block inside a pair", r"WebDataset sample 0000000008 has no fhat_lq.npy, label.cls, seed.cls, index.cls"),
    ("after the first pair", r"WebDataset tar holds 1 pairs, its index 8"),
])
def test_a_tar_cut_short_after_the_export_names_itself_when_read(make_synthetic, tmp_path, cut, error):
    """(An interrupted copy of an export: webdataset's tarfile.ReadError traceback, which is no OSError, a
    KeyError, or pairs left out without a word.)"""
    from radar_train.cache.wds import cut_short
    from radar_train.inputs import InputError

    export_wds(str(make_synthetic(num_samples=24, shard_size=8)), str(tmp_path / "wds"), progress=False)
    tar = tmp_path / "wds" / "pairs-00001.tar"
    size = _cut_at(tar, cut)
    tar.write_bytes(tar.read_bytes()[:size])
    # a tar is whole 512-byte blocks: the cut inside the member's data shows in the size, a cut at a block
    # boundary only when the tar is read
    assert cut_short(tar) == (cut in ("to nothing", "inside a member's data"))
    with pytest.raises(InputError, match=rf"^{tar}: {error}.*; copy or export it again \(radar-cache export-wds\)$"):
        list(WdsPairs(tmp_path / "wds"))
    assert not cut_short(tmp_path / "wds" / "pairs-00000.tar")


@pytest.mark.parametrize("cut, why", [
    ("to nothing", r"cannot be read \(empty file\)"),
    ("inside a member's data", r"cannot be read \(unexpected end of data\)"),
    ("at a block inside a pair", r"holds 1 pairs' members, not the 8 pairs 8-15 of the export"),
    ("after the first pair", r"holds 1 pairs' members, not the 8 pairs 8-15 of the export"),
])
def test_an_export_rerun_over_a_damaged_tar_names_it_and_writes_nothing(make_synthetic, tmp_path, cut, why):
    """The rerun skipped the damaged tar and called the export whole (`complete: true`); a missing tar beside it
    is not written either, until the damaged one is deleted."""
    from cli_checks import snapshot

    from radar_train.inputs import InputError

    cache = make_synthetic(num_samples=24, shard_size=8)
    export_wds(str(cache), str(tmp_path / "wds"), progress=False)
    whole = (tmp_path / "wds" / "pairs-00001.tar").read_bytes()
    tar = tmp_path / "wds" / "pairs-00001.tar"
    tar.write_bytes(whole[:_cut_at(tar, cut)])
    (tmp_path / "wds" / "pairs-00002.tar").unlink()
    before = snapshot(tmp_path / "wds")
    with pytest.raises(InputError, match=rf"^{tmp_path / 'wds'}: 1 exported tar\(s\) damaged since they were written, "
                                         rf"nothing was written: {tar} {why}; delete them and rerun"):
        export_wds(str(cache), str(tmp_path / "wds"), progress=False)
    assert snapshot(tmp_path / "wds") == before
    tar.unlink()
    assert export_wds(str(cache), str(tmp_path / "wds"), progress=False)["complete"]
    assert tar.read_bytes() == whole


@pytest.mark.parametrize("damage, error", [
    ("gone", r"WebDataset tar cannot be read \(No such file or directory\)"),
    ("zeros", r"WebDataset tar holds 0 pairs, its index 8"),  # (tarfile reads a zero block as the end)
    ("an empty tar", r"WebDataset tar holds 0 pairs, its index 8"),
    ("a member that does not decode", r"WebDataset sample 0000000008 member fhat_hq.npy does not decode \("),
])
def test_a_tar_damaged_after_the_dataset_was_made_names_itself(make_synthetic, tmp_path, damage, error):
    """(A tar gone between the check and the read ended in a traceback without its name; one of zeros, or an empty
    tar, left its pairs out without a word.)"""
    import io
    import tarfile

    from radar_train.inputs import InputError

    export_wds(str(make_synthetic(num_samples=24, shard_size=8)), str(tmp_path / "wds"), progress=False)
    ds = WdsPairs(tmp_path / "wds")
    tar = tmp_path / "wds" / "pairs-00001.tar"
    if damage == "gone":
        tar.unlink()
    elif damage == "zeros":
        tar.write_bytes(bytes(tar.stat().st_size))
    elif damage == "an empty tar":
        tarfile.open(tar, "w").close()
    else:
        with tarfile.open(tar) as t:
            members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
        with tarfile.open(tar, "w") as t:
            for m, data in members:
                data = b"not an npy file" if m.name == "0000000008.fhat_hq.npy" else data
                m.size = len(data)
                t.addfile(m, io.BytesIO(data))
    with pytest.raises(InputError, match=rf"^{tar}: {error}.*; copy or export it again \(radar-cache export-wds\)$"):
        list(ds)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_emptied_last_tar_is_named_when_the_epochs_batches_are_full_without_it(make_synthetic, tmp_path, workers):
    """Training reads an epoch's batches from the index's counts (StreamLoader.max_batches) and stopped there: with
    no shuffle buffer reading ahead, a last tar emptied since (its 2 pairs the drop_last remainder) was never
    reached, and each epoch trained without it, without a word."""
    import tarfile

    from radar_train.inputs import InputError
    from radar_train.train.datamodule import StreamLoader

    export_wds(str(make_synthetic(num_samples=18, shard_size=8)), str(tmp_path / "wds"), progress=False)
    ds = WdsPairs(tmp_path / "wds", shuffle=0, shardshuffle=False)
    loader = StreamLoader(ds, batch_size=4, drop_last=True, num_workers=workers)
    loader.max_batches = 4  # (18 pairs in batches of 4)
    assert len(list(loader)) == 4  # whole: the remainder is read, unused
    tar = tmp_path / "wds" / "pairs-00002.tar"
    tarfile.open(tar, "w").close()
    with pytest.raises(InputError, match=rf"{tar}: WebDataset tar holds 0 pairs, its index 2"):  # (a worker's: in
        list(loader)  # torch's "Caught InputError in DataLoader worker process 0", which the training run unwraps)


def test_a_brace_pattern_names_the_tars():
    assert WdsPairs("/data/wds/pairs-{00000..00002}.tar").urls == [f"/data/wds/pairs-0000{k}.tar" for k in range(3)]


def test_webdataset_shuffles_each_epoch_anew_and_reproducibly(make_synthetic, tmp_path):
    export_wds(str(make_synthetic(num_samples=24, shard_size=8)), str(tmp_path / "wds"), progress=False)
    ds = WdsPairs(tmp_path / "wds", shuffle=8, shardshuffle=True, seed=3)
    epochs = [[int(it["index"]) for it in ds] for _ in range(3)]
    assert all(sorted(e) == list(range(24)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3  # each epoch its own order
    again = WdsPairs(tmp_path / "wds", shuffle=8, shardshuffle=True, seed=3)
    assert [[int(it["index"]) for it in again] for _ in range(2)] == epochs[:2]  # the same seed, the same epochs
    later = WdsPairs(tmp_path / "wds", shuffle=8, shardshuffle=True, seed=3)
    later.epoch = 2
    assert [int(it["index"]) for it in later] == epochs[2]
    other = WdsPairs(tmp_path / "wds", shuffle=8, shardshuffle=True, seed=4)
    assert [int(it["index"]) for it in other] != epochs[0]
    # DataLoader workers that are not persistent: each epoch's are fresh copies, told their epoch by set_epoch
    loaded = WdsPairs(tmp_path / "wds", shuffle=8, shardshuffle=True, seed=3)
    dl = DataLoader(loaded, batch_size=None, num_workers=1, persistent_workers=False)
    by_epoch = []
    for e in range(2):
        loaded.set_epoch(e)
        by_epoch.append([int(it["index"]) for it in dl])
    assert by_epoch == epochs[:2]


@pytest.mark.parametrize("damage", ["unreadable array metadata", "chunk file gone", "another shard's copy"])
def test_export_checks_every_shard_before_writing_and_names_the_bad_one(make_synthetic, tmp_path, damage):
    from cli_checks import assert_one_line_error, assert_unchanged, call_cli, snapshot

    cache = make_synthetic(num_samples=24, shard_size=8, chunk_size=4)
    export_wds(str(cache), str(tmp_path / "whole"), progress=False)  # (its tar 0, for the export resumed below)
    if damage == "unreadable array metadata":
        (cache / "shard-00001.zarr" / "fhat_hq" / "zarr.json").write_text("{not json")
    elif damage == "chunk file gone":  # Zarr reads a missing chunk as zeros that only the stored checksum tells apart
        (cache / "shard-00001.zarr" / "fhat_lq" / "c" / "0" / "0" / "0" / "0").unlink()
    else:  # a whole shard copied to the wrong name: its own checksums pass, its records are shard 2's
        shutil.rmtree(cache / "shard-00001.zarr")
        shutil.copytree(cache / "shard-00002.zarr", cache / "shard-00001.zarr")
    code, err = call_cli("cache", ["export-wds", str(cache), "--output", str(tmp_path / "new")], tmp_path)
    line = assert_one_line_error(err, f"{cache / 'shard-00001.zarr'}", "nothing was written")
    assert code == 2 and "shard-00000" not in line and "shard-00002" not in line
    assert ("differs from its stored checksum" in line) == (damage == "chunk file gone")
    assert ("is marked shard 2, not 1" in line and "index records differ from the plan (samples 8..15)" in line) \
        == (damage == "another shard's copy")
    assert not (tmp_path / "new").exists()
    resumed = tmp_path / "resumed"  # an export that stopped after tar 0: kept as it was
    resumed.mkdir()
    (resumed / "manifest.json").write_text((cache / "manifest.json").read_text())
    shutil.copy(tmp_path / "whole" / "pairs-00000.tar", resumed)
    before = snapshot(resumed)
    code, err = call_cli("cache", ["export-wds", str(cache), "--output", str(resumed)], tmp_path)
    assert code == 2 and "shard-00001.zarr" in assert_one_line_error(err)
    assert_unchanged(before, snapshot(resumed))


def test_export_refuses_a_folder_holding_another_cache(make_synthetic, tmp_path):
    export_wds(str(make_synthetic(num_samples=16, shard_size=8)), str(tmp_path / "wds"), progress=False)
    with pytest.raises(ValueError, match="export of another cache; differing fields: plan.num_samples"):
        export_wds(str(make_synthetic(num_samples=24, shard_size=8)), str(tmp_path / "wds"), progress=False)


def test_export_refuses_a_folder_inside_another_cache_or_export(make_synthetic, tmp_path):
    """(As radar-cache run does: the cache's status, verify and disk figures would count the export as its own.)"""
    from cli_checks import assert_refused

    a, b = make_synthetic(num_samples=16, shard_size=8), make_synthetic(num_samples=24, shard_size=8)
    export_wds(str(b), str(tmp_path / "wds_b"), progress=False)
    for holder, what in ((b, "the cache"), (tmp_path / "wds_b", "the WebDataset export")):
        out = holder / "sub"
        assert_refused("cache", ["export-wds", str(a), "--output", str(out)], tmp_path, (tmp_path,),
                       [f"--output {out} lies inside {what} {holder.resolve()}: choose a folder outside it"])


@pytest.mark.parametrize("n,world", [(16, 3), (16, 9), (30, 4), (8, 8), (5, 2)])
def test_the_unique_positions_of_all_ranks_are_every_position_once(make_synthetic, n, world):
    ds = PairDataset(make_synthetic(num_samples=n, shard_size=8, chunk_size=4))
    seen = []
    for rank in range(world):
        s = BlockShuffleSampler(ds, shuffle=True, seed=1, rank=rank, world_size=world)
        seen += s.rank_order()[:s.unique_count()].tolist()
    assert sorted(seen) == list(range(n))


def test_a_cache_run_into_a_folder_inside_an_export_says_it_is_an_export(make_synthetic, tmp_path):
    """(The export holds the cache's manifest: the refusal called it 'the cache'.)"""
    from pathlib import Path

    from cli_checks import assert_refused

    export_wds(str(make_synthetic(num_samples=16, shard_size=8)), str(tmp_path / "wds"), progress=False)
    config = Path(__file__).resolve().parents[2] / "configs" / "cache" / "tiny.yaml"
    assert_refused("cache", ["run", "--config", str(config), "--output", str(tmp_path / "wds" / "sub")], tmp_path,
                   (tmp_path,), [f"lies inside the WebDataset export {tmp_path / 'wds'}: choose a folder outside it"])


def test_an_export_is_the_same_bytes_each_time_with_one_tar_header_per_member(make_synthetic, tmp_path):
    """(The members carried the export's float time, so tarfile wrote a PAX header before each: 1.5 KiB a
    member, 16.6 KiB a pair of the tiny model against 2.9 KiB in the cache, and other bytes at every export.)"""
    import tarfile
    import time

    from radar_train.cache.schema import read_manifest
    from radar_train.cache.wds import tar_mtime

    cache = make_synthetic(num_samples=16, shard_size=8)
    export_wds(str(cache), str(tmp_path / "a"), progress=False)
    time.sleep(1.1)
    export_wds(str(cache), str(tmp_path / "b"), progress=False)
    for name in ("pairs-00000.tar", "pairs-00001.tar", "index.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    tar = tmp_path / "a" / "pairs-00000.tar"
    with tarfile.open(tar) as t:
        members = t.getmembers()
    assert len(members) == 8 * 7 and all(not m.pax_headers for m in members)
    assert all(m.mtime == tar_mtime(read_manifest(cache)) for m in members)
    padded = sum(512 + -(-m.size // 512) * 512 for m in members)  # a header block each, the data in blocks
    assert tar.stat().st_size <= padded + 20 * 512  # (the end-of-archive blocks, padded to tarfile's record)


def test_the_tars_time_is_the_caches_creation_or_0():
    from types import SimpleNamespace

    from radar_train.cache.wds import tar_mtime

    assert tar_mtime(SimpleNamespace(created="2026-12-06T16:00:00+0000")) == 1796572800
    assert tar_mtime(SimpleNamespace(created="")) == 0 and tar_mtime(SimpleNamespace(created=None)) == 0


def test_a_tar_copied_under_another_shards_name_is_named_when_read(make_synthetic, tmp_path):
    """(It was read as that shard: shard 0's pairs, trained on, were validated on as shard 2.)"""
    import shutil

    from radar_train.inputs import InputError

    export_wds(str(make_synthetic(num_samples=24, shard_size=8)), str(tmp_path / "wds"), progress=False)
    shutil.copyfile(tmp_path / "wds" / "pairs-00000.tar", tmp_path / "wds" / "pairs-00002.tar")
    with pytest.raises(InputError, match=r"pairs-00002\.tar: WebDataset sample \S+ is pair 0, not one of shard 2's "
                                         r"\(16-23\): a tar copied or renamed under another shard's name"):
        list(WdsPairs(tmp_path / "wds"))
    assert len(list(WdsPairs([str(tmp_path / "wds" / "pairs-00001.tar")]))) == 8  # (its own pairs: fine)


def test_export_stopped_by_sigterm_says_what_it_kept_and_leaves_no_temporary(make_synthetic, tmp_path, monkeypatch):
    """(export-wds had no SIGTERM handling: it died of the signal without a line, and could leave a tar's temporary
    file.) Stopped while its second tar is written: exit 143, the first tar kept, and the same command finishes."""
    import os
    import signal

    import webdataset as wds
    from cli_checks import call_cli

    cache = make_synthetic(num_samples=24, shard_size=8, chunk_size=4)
    export_wds(str(cache), str(tmp_path / "whole"), progress=False)
    real, tars = wds.TarWriter.write, []

    def write(self, sample):
        if self not in tars:
            tars.append(self)
        if len(tars) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # (the handler runs between bytecodes)
                pass
        return real(self, sample)

    out = tmp_path / "wds"
    with monkeypatch.context() as m:
        m.setattr(wds.TarWriter, "write", write)
        code, err = call_cli("cache", ["export-wds", str(cache), "--output", str(out)], tmp_path)
    assert code == 143 and err.strip().splitlines()[-1] == (
        f"radar-cache export-wds: stopped by SIGTERM; the 1 tar(s) written whole are kept in {out}: run the same "
        f"command to go on from there"), err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "pairs-00000.tar"]
    code, err = call_cli("cache", ["export-wds", str(cache), "--output", str(out)], tmp_path)
    assert code == 0, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes()
                                                              for p in (tmp_path / "whole").iterdir()}
