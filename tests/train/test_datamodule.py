"""PairDataModule: shard split by config, block-aligned sampling over several caches, WebDataset input."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

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


@pytest.mark.parametrize("ids,said", [([7, 0, 1, 2, 3], "0-3, 7"), ([5], "5"), ([], "none"), ([4, 6, 8], "4, 6, 8")])
def test_id_lists_are_said_as_the_ranges_they_are_written_in(ids, said):
    from radar_train.config import format_int_list, parse_int_list

    assert format_int_list(ids) == said
    if ids:  # (with "," between them, what a user types back: --classes / --shards)
        assert parse_int_list(format_int_list(ids, ","), "x") == sorted(ids)


def test_a_list_of_ids_from_python_is_refused_unless_whole_numbers():
    """int() took [1.5] as [1] and [True] as [1]; the command line refuses both (RadarPipeline / generate() callers
    reach the list form)."""
    import numpy as np

    from radar_train.config import parse_int_list

    assert parse_int_list([3, np.int64(4)], "--classes") == [3, 4] and parse_int_list(5, "--seeds") == [5]
    for bad in ([1.5], [True], [1.0], ["1"], True):
        with pytest.raises(ValueError, match="^--classes: .* is not whole numbers"):
            parse_int_list(bad, "--classes")


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
    assert "shards 4 are in both" in msg and "shards 19 are past the cache's plan of 16 shards (0-15)" in msg
    assert "nothing does not exist" in msg


@pytest.mark.parametrize("spelling", ["trailing slash", "symlink", "dot segment"])
def test_a_cache_named_twice_is_refused_naming_both_entries(tiny_cache, tmp_path, spelling):
    # its validation shards would be training shards of the other entry, and shared shards train twice
    if spelling == "symlink":
        (tmp_path / "link").symlink_to(tiny_cache)
    other = {"trailing slash": tiny_cache + "/", "dot segment": f"{tiny_cache}/../tiny",
             "symlink": str(tmp_path / "link")}[spelling]
    dm = PairDataModule([CacheSource(tiny_cache, train_shards="0-2", val_shards="3"),
                         CacheSource(other, train_shards="3", val_shards=[])], batch_size=4)
    with pytest.raises(ValueError) as e:
        dm.setup("fit")
    msg = str(e.value)
    assert "\n" not in msg and f"data.caches[1] ({other}) and data.caches[0] ({tiny_cache}) name the same folder" in msg
    assert dm.manifests == {} and dm.train_set is None


def test_a_cache_path_that_is_a_file_is_called_a_file(tiny_cache, tmp_path):
    for path in (tmp_path / "file", tmp_path / "nothing"):
        if path.name == "file":
            path.write_text("x")
        for fmt in ("zarr", "wds"):
            with pytest.raises(ValueError) as e:
                PairDataModule([CacheSource(str(path), val_shards="1", format=fmt)]).setup("fit")
            want = "is a file, not a folder" if path.name == "file" else "does not exist"
            assert f"data.caches[0]: cache folder {path} {want}" in str(e.value)


def test_no_validation_shards_is_an_error(tiny_cache):
    with pytest.raises(ValueError, match="no validation shards"):
        PairDataModule([CacheSource(tiny_cache)]).setup("fit")


def test_one_epoch_over_two_caches_visits_every_training_pair_once_in_whole_blocks(tiny_cache, tmp_path):
    import shutil

    copy = shutil.copytree(tiny_cache, tmp_path / "copy")  # a second cache (the same pairs: indices stay unique here)
    dm = PairDataModule([CacheSource(tiny_cache, train_shards="0-1", val_shards="4"),
                         CacheSource(str(copy), train_shards="2-3", val_shards="5")], batch_size=8, drop_last=False)
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


def test_a_webdataset_tar_cut_short_is_refused_before_training(tiny_cache, tmp_path):
    """A tar that is not whole 512-byte blocks (an interrupted copy, an empty file) is named with the other
    problems, before anything is read or written; an intact export of the same shards passes."""
    from radar_train.cache.wds import export_wds

    export_wds(tiny_cache, str(tmp_path / "wds"), progress=False)
    dm = PairDataModule([CacheSource(str(tmp_path / "wds"), train_shards="0-2", val_shards="4", format="wds")],
                        batch_size=8)
    dm.setup("fit")
    for tar, size in (("pairs-00001.tar", 1000), ("pairs-00004.tar", 0)):
        path = tmp_path / "wds" / tar
        path.write_bytes(path.read_bytes()[:size])
    with pytest.raises(ValueError, match=r"pairs-00001.tar, .*pairs-00004.tar cut short \(not whole tar blocks"):
        PairDataModule([CacheSource(str(tmp_path / "wds"), train_shards="0-2", val_shards="4", format="wds")],
                       batch_size=8).setup("fit")


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


def _indices(batches) -> list[list[int]]:
    return [b["index"].tolist() for b in batches]


def _train_loader(cache, workers: int):
    dm = PairDataModule([CacheSource(cache, train_shards="0-2", val_shards="14")], batch_size=5, num_workers=workers,
                        shuffle_seed=7)
    dm.setup("fit")
    return dm.train_dataloader()


def test_training_loader_state_is_what_training_consumed_and_resumes_there(tiny_cache):
    ref = _train_loader(tiny_cache, 0)  # 48 pairs, batch 5, drop_last: 9 batches per epoch
    epochs = []
    for e in range(2):
        ref.sampler.set_epoch(e)
        epochs.append(_indices(ref))
    assert len(epochs[0]) == 9 and epochs[0] != epochs[1]

    a = _train_loader(tiny_cache, 2)  # workers read ahead of what the loop took
    it = iter(a)
    head = _indices(next(it) for _ in range(3))
    state = a.state_dict()
    assert (state["epoch"], state["position"]) == (0, 15) and a.sampler.state_dict()["position"] > 15
    b = _train_loader(tiny_cache, 2)
    b.load_state_dict(state)
    assert head + _indices(b) == epochs[0]
    c = _train_loader(tiny_cache, 0)
    c.load_state_dict(b.state_dict())  # epoch 0 consumed (the 3 pairs drop_last leaves out do not count)
    assert c.sampler.epoch == 1
    it = iter(c)  # Lightning makes the iterator, then calls set_epoch with the epoch it resumes in
    c.sampler.set_epoch(1)
    assert _indices(it) == epochs[1]
    d = _train_loader(tiny_cache, 2)
    it = iter(d)
    d.sampler.set_epoch(1)  # with workers too, the order is drawn at the first batch, not by iter()
    assert _indices(it) == epochs[1]


def test_a_changed_training_set_is_resumed_with_a_warning(tiny_cache, caplog):
    a = _train_loader(tiny_cache, 0)
    state = {**a.state_dict(), "position": 10, "num_samples": 64}
    with caplog.at_level("WARNING"):
        a.load_state_dict(state)
    assert "num_samples 64 -> 48" in caplog.text and "not the one an uninterrupted run" in caplog.text
    assert a.sampler.state_dict() == {"epoch": 0, "position": 10}


def test_a_webdataset_stream_says_at_resume_that_its_order_is_not_restored(tiny_cache, tmp_path, caplog):
    from radar_train.cache.wds import export_wds
    from radar_train.train.datamodule import StreamLoader

    export_wds(tiny_cache, str(tmp_path / "wds"), progress=False)
    dm = PairDataModule([CacheSource(str(tmp_path / "wds"), train_shards="0", val_shards="14", format="wds")],
                        batch_size=8)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, StreamLoader)
    next(iter(loader))  # mid-epoch
    state = loader.state_dict()
    assert state["epoch"] == 0 and not state["at_epoch_start"]
    with caplog.at_level("WARNING"):
        loader.load_state_dict(state)
    lines = [r.getMessage() for r in caplog.records if "WebDataset" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "differs from an uninterrupted run" in lines[0]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_webdataset_stream_has_its_own_order_per_epoch_and_resumes_at_the_epoch(tiny_cache, tmp_path, caplog,
                                                                                   num_workers):
    """Persistent DataLoader workers count the epochs in their own copy of the stream; the loader's count
    goes into checkpoints, so a resumed run reads the saved epoch's order (from its beginning)."""
    from radar_train.cache.wds import export_wds

    export_wds(tiny_cache, str(tmp_path / "wds"), progress=False)

    def loader():
        dm = PairDataModule([CacheSource(str(tmp_path / "wds"), train_shards="0-13", val_shards="14", format="wds")],
                            batch_size=4, num_workers=num_workers, wds_shuffle_buffer=16)
        dm.setup("fit")
        return dm.train_dataloader()

    first = loader()
    epochs = [torch.cat([b["index"] for b in first]).tolist() for _ in range(4)]
    assert len({tuple(e) for e in epochs}) == 4 and len({tuple(sorted(e)) for e in epochs}) == 1
    # every batch of epoch 3 read: the state is the start of epoch 4
    assert first.state_dict() == {"stream": "wds", "position_saved": False, "at_epoch_start": True, "epoch": 4}
    it = iter(first)
    next(it)
    assert first.state_dict() == {"stream": "wds", "position_saved": False, "at_epoch_start": False, "epoch": 4}
    resumed = loader()
    with caplog.at_level("WARNING"):
        resumed.load_state_dict({"stream": "wds", "position_saved": False, "at_epoch_start": False, "epoch": 1})
    assert "epoch 1's data order restarts" in caplog.text
    assert [torch.cat([b["index"] for b in resumed]).tolist() for _ in range(2)] == epochs[1:3]
    caplog.clear()
    at_end = loader()  # saved once epoch 1 was read to its end: epoch 2 from its start, exactly, without a warning
    with caplog.at_level("WARNING"):
        at_end.load_state_dict({"stream": "wds", "position_saved": False, "at_epoch_start": True, "epoch": 2})
    assert "WebDataset" not in caplog.text
    assert [torch.cat([b["index"] for b in at_end]).tolist() for _ in range(2)] == epochs[2:4]


def test_every_missing_cache_shard_and_bad_manifest_is_reported_at_once(tiny_cache, tmp_path):
    import shutil

    import zarr

    partial = tmp_path / "partial"
    shutil.copytree(tiny_cache, partial)
    shutil.rmtree(partial / "shard-00002.zarr")
    zarr.open_group(str(partial / "shard-00003.zarr"), mode="r+").attrs["complete"] = False
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    dm = PairDataModule([CacheSource(str(tmp_path / "gone1"), val_shards="0"),
                         CacheSource(str(tmp_path / "gone2"), val_shards="0"),
                         CacheSource(str(bad), val_shards="0"),
                         CacheSource(str(partial), train_shards="0-2", val_shards="14")])
    with pytest.raises(ValueError) as e:
        dm.setup("fit")
    msg = str(e.value)
    assert "gone1 does not exist" in msg and "gone2 does not exist" in msg and "bad/manifest.json is not valid JSON" in msg
    assert "data.caches[3]" in msg and "shards 2 are not complete" in msg
    # (the count ran on into the list: "complete: 0-1, 3-15, 15 of 16" read as a shard 15 again; shard 3's flag is
    # read when the shard is, below)
    assert "shards 2 are not complete in the cache (complete: 0-1, 3-15; 15 of 16 shards)" in msg
    assert dm.manifests == {}  # nothing half-resolved is kept

    # the split is fine, but a shard named complete cannot be read: every such shard, of every part
    dm = PairDataModule([CacheSource(str(partial), train_shards="0-1,3", val_shards="14")])
    zarr.open_group(str(partial / "shard-00014.zarr"), mode="r+").attrs["complete"] = False
    with pytest.raises(ValueError) as e:
        dm.setup("fit")
    msg = str(e.value)
    assert "shard-00003.zarr: cache shard is not marked complete" in msg
    assert "shard-00014.zarr: cache shard is not marked complete" in msg

    # a half-copied cache: a chunk file missing reads as zeros in Zarr; the stored checksum tells
    (partial / "shard-00001.zarr" / "fhat_hq" / "c" / "0" / "0" / "0" / "0").unlink()
    dm = PairDataModule([CacheSource(str(partial), train_shards="0-1", val_shards="4")])
    with pytest.raises(ValueError, match=r"shard-00001.zarr: cache shard fhat_hq differs from its stored checksum"):
        dm.setup("fit")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_webdataset_training_ranks_read_the_same_number_of_batches_and_validate_every_pair(
        tiny_cache, tmp_path, monkeypatch, num_workers):
    """Ranks read whole tars: 3 training tars over 2 ranks are 2 + 1. Each rank's epoch stops at the smaller
    share, so that under DDP no rank runs out of batches while the others wait for it."""
    from radar_train.cache.wds import export_wds

    export_wds(tiny_cache, str(tmp_path / "wds"), progress=False)
    monkeypatch.setenv("WORLD_SIZE", "2")  # (no Trainer: the rank comes from the environment, as webdataset reads it)
    batches, train, val = [], [], []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        dm = PairDataModule([CacheSource(str(tmp_path / "wds"), train_shards="0-2", val_shards="14", format="wds")],
                            batch_size=4, num_workers=num_workers, wds_shuffle_buffer=8)
        dm.setup("fit")
        loader = dm.train_dataloader()
        epochs = [[b["index"].tolist() for b in loader] for _ in range(2)]
        batches.append([len(e) for e in epochs])
        train.append({i for e in epochs for b in e for i in b})
        val.append(sorted(i for b in dm.val_dataloader() for i in b["index"].tolist()))
    assert batches == [[4, 4], [4, 4]]
    assert train[0] <= set(range(0, 16)) | set(range(32, 48)) and train[1] == set(range(16, 32))
    assert val == [list(range(224, 240))] * 2  # validation is not split: every rank's metrics are of all of it


def test_webdataset_training_with_a_rank_that_gets_no_batch_is_refused(tiny_cache, tmp_path, monkeypatch):
    from radar_train.cache.wds import export_wds

    export_wds(tiny_cache, str(tmp_path / "wds"), progress=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    dm = PairDataModule([CacheSource(str(tmp_path / "wds"), train_shards="0-2", val_shards="14", format="wds")],
                        batch_size=4)
    dm.setup("fit")
    with pytest.raises(ValueError, match="the 3 WebDataset training tars .* by 4 rank.* give a rank no batch of "
                                         "data.batch_size 4: use at least as many training tars as ranks"):
        dm.train_dataloader()


def test_a_process_whose_loader_was_never_shut_down_still_exits(tiny_cache):
    """At exit Python ends live DataLoader workers with SIGTERM, then joins them: workers that ignored SIGTERM (to
    outlast a `scancel`) kept such a process from ever exiting (the test suite hung at its end). The workers ignore
    Ctrl-C, and take SIGTERM in a thread (blocked elsewhere) that ends them when their run sends it."""
    import subprocess
    import sys

    code = ("from radar_train.train.datamodule import CacheSource, PairDataModule\n"
            f"dm = PairDataModule([CacheSource({str(tiny_cache)!r}, train_shards='0-1', val_shards='14')], batch_size=4,"
            " num_workers=1)\n"
            "dm.setup('fit'); it = iter(dm.train_dataloader()); next(it)\n"
            "import multiprocessing, pathlib; w = multiprocessing.active_children()[0]  # the worker's handlers:\n"
            "st = pathlib.Path(f'/proc/{w.pid}/status').read_text().splitlines()\n"
            "print(*[int(l.split()[1], 16) for l in st if l.startswith(('SigIgn', 'SigBlk'))] or [-1, -1])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    blocked, ignored = map(int, r.stdout.split()[-2:])
    if ignored >= 0:  # (Linux)
        assert ignored & (1 << (2 - 1)) and not ignored & (1 << (15 - 1))  # SIGINT ignored, SIGTERM not
        assert blocked & (1 << (15 - 1))  # SIGTERM taken by sigwaitinfo


def test_two_caches_holding_the_same_pairs_may_not_train_on_one_anothers_validation_pairs(tiny_cache, tmp_path):
    """A copy (or a larger plan) of a cache listed beside it trained on its validation pairs, without a word: the
    validations scored trained pairs and picked the best step on them. Only the same folder was refused."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_cache, copy)
    dm = PairDataModule([CacheSource(path=tiny_cache, train_shards="0-3", val_shards="4"),
                         CacheSource(path=str(copy), train_shards="2-5", val_shards=[])], batch_size=4)
    with pytest.raises(ValueError) as e:
        dm.setup("fit")
    msg = str(e.value)
    assert msg.startswith("data: 16 validation pairs of data.caches[0]") and "are training pairs of data.caches[1]" in msg
    assert "32 training pairs of data.caches[0]" in msg and "\n" not in msg  # (shards 2-3 twice)
    dm = PairDataModule([CacheSource(path=tiny_cache, train_shards="0-3", val_shards="4"),
                         CacheSource(path=str(copy), train_shards="2-5", val_shards=[])], batch_size=4)
    dm.setup("validate")  # (validate reads no training shards: their overlap does not matter there)
    dm = PairDataModule([CacheSource(path=tiny_cache, train_shards="0-3", val_shards="4"),
                         CacheSource(path=str(copy), train_shards="5-9", val_shards="10")], batch_size=4)
    dm.setup("fit")  # other pairs of the same cache: fine
    assert [t for t, _ in dm.splits] == [[0, 1, 2, 3], [5, 6, 7, 8, 9]]


def test_shards_past_the_plan_a_format_that_is_not_the_folders_and_a_validation_batch_of_0_are_named(tiny_cache,
                                                                                                        tmp_path):
    """(Shards past the plan were 'not complete in the cache', listed one by one: '5-200000' made a 1.5 MB line; an
    export read as format zarr had 'no complete shard'; val_batch_size 0 was taken as batch_size.)"""
    from radar_train.cache.wds import export_wds

    dm = PairDataModule([CacheSource(path=tiny_cache, train_shards="0-3", val_shards="14-200000")], batch_size=4)
    with pytest.raises(ValueError, match=r"^data: data.caches\[0\] \(.*\): shards 16-200000 are past the cache's "
                                         r"plan of 16 shards \(0-15\)$"):
        dm.setup("fit")
    export_wds(tiny_cache, str(tmp_path / "wds"), progress=False)
    for path, fmt, says in ((str(tmp_path / "wds"), "zarr", "is a WebDataset export: give it format: wds"),
                            (tiny_cache, "wds", "is a radar-cache (Zarr) cache: give it format: zarr")):
        dm = PairDataModule([CacheSource(path=path, train_shards="0-3", val_shards="4", format=fmt)], batch_size=4)
        with pytest.raises(ValueError, match=re.escape(says)):
            dm.setup("fit")
    with pytest.raises(ValueError, match="data.val_batch_size must be >= 1"):
        PairDataModule([CacheSource(path=tiny_cache, train_shards="0-3", val_shards="4")], batch_size=4,
                       val_batch_size=0)
    with pytest.raises(ValueError, match="data.wds_shuffle_buffer must be >= 0, got -1"):  # (it was taken)
        PairDataModule([CacheSource(path=tiny_cache, train_shards="0-3", val_shards="4")], wds_shuffle_buffer=-1)


def test_validate_takes_a_cache_of_validation_shards_alone(tiny_cache):
    """(`radar-train validate` on a held-out cache was refused: 'no training shards in data.caches'.)"""
    dm = PairDataModule([CacheSource(path=tiny_cache, train_shards=[], val_shards="0-15")], batch_size=4)
    dm.setup("validate")
    assert len(dm.val_set) == 256
    dm = PairDataModule([CacheSource(path=tiny_cache, train_shards=[], val_shards="0-15")], batch_size=4)
    with pytest.raises(ValueError, match="no training shards in data.caches"):
        dm.setup("fit")


def test_a_bare_shard_number_is_one_shard_and_a_boolean_is_refused(tiny_cache, tmp_path):
    """(`val_shards: 4` in a YAML file was refused by the parser: 'expected str or list[int] or null, got 4'.)"""
    from cli_checks import call_cli

    assert parse_shards(4, "val_shards") == [4]
    with pytest.raises(ValueError, match="val_shards: True is not a shard"):
        parse_shards(True, "val_shards")
    config = tmp_path / "data.yaml"
    config.write_text(f"data:\n  caches:\n    - path: {tiny_cache}\n      train_shards: 0-3\n      val_shards: 4\n")
    code, err = call_cli("train", ["fit", "--config", str(Path(__file__).parents[2] / "configs/train/tiny.yaml"),
                                   "--config", str(config), "--print_config"], tmp_path)
    assert code == 0, err
