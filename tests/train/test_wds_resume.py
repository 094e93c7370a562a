"""Resume of `radar-train fit` on a WebDataset export: a stream's position inside an epoch is not saved, but a
checkpoint taken at an epoch's last step holds the next epoch at its start, so the resumed run trains the batches
the uninterrupted one trains (bit-identical adapter, CPU, fp32) and says nothing about a restarted order. The
stream reads the epoch Lightning trains (StreamLoader.set_epoch): around the restart, where validation was due, Lightning
starts an iteration it drops, which a count of iterations took for the next epoch."""
from __future__ import annotations

import json
import logging

import pytest

from safetensors.torch import load_file
from tiny_training import run_train_cli, tiny_fit_argv

STEPS_PER_EPOCH = 8  # shards 0-1: 32 pairs, batch 4, one stream (no workers)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_a_run_stopped_at_an_epoch_end_resumes_exactly_without_a_warning(workers, tiny_cache, tmp_path, caplog):
    """(workers 1: the loader's persistent worker counted the epochs of its own copy of the stream, the dropped
    iteration included, so the resumed run read the epoch after the one it trained)"""
    from radar_train.cache.wds import export_wds

    wds = tmp_path / "wds"
    export_wds(tiny_cache, str(wds), progress=False)
    caches = json.dumps([{"path": str(wds), "train_shards": "0-1", "val_shards": "14", "format": "wds"}])

    def fit(root: str, steps: int, *extra: str) -> int:
        return run_train_cli(tiny_fit_argv(tiny_cache, tmp_path / root, steps, "--data.caches", caches,
                                           "--trainer.val_check_interval", "8",
                                           "--model.output.save_every_n_steps", "4", "--data.num_workers",
                                           str(workers), *extra))

    assert fit("whole", STEPS_PER_EPOCH + 4) == 0
    assert fit("split", STEPS_PER_EPOCH) == 0
    with caplog.at_level(logging.WARNING):
        assert fit("split", STEPS_PER_EPOCH + 4, "--ckpt_path", "last") == 0
    assert "WebDataset streams cannot resume mid-stream" not in caplog.text
    a, b = (load_file(tmp_path / r / "final" / "adapter_model.safetensors") for r in ("whole", "split"))
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_a_run_trained_on_the_export_resumes_on_the_zarr_cache_from_the_epochs_start(tiny_cache, tmp_path, caplog):
    """The same pairs in the other format (the format is not what a resume checks): the stream's checkpoint holds
    an epoch and no position, which the cache's loader starts at the epoch's beginning, saying so. (It raised a
    KeyError traceback, after the run's config.yaml had been rewritten.)"""
    from radar_train.cache.wds import export_wds

    wds = tmp_path / "wds"
    export_wds(tiny_cache, str(wds), progress=False)
    as_wds = json.dumps([{"path": str(wds), "train_shards": "0-1", "val_shards": "14", "format": "wds"}])
    assert run_train_cli(tiny_fit_argv(tiny_cache, tmp_path / "run", 6, "--data.caches", as_wds,
                                       "--trainer.logger", "false")) == 0
    record = tmp_path / "pairs.txt"
    with caplog.at_level(logging.WARNING):
        assert run_train_cli(tiny_fit_argv(tiny_cache, tmp_path / "run", 16, "--ckpt_path", "last",
                                           "--trainer.logger", "false", "--trainer.callbacks", json.dumps(
                                               {"class_path": "tiny_training.TrainedPairs",
                                                "init_args": {"path": str(record)}}))) == 0
    # stopped after 6 of epoch 0's 8 steps, epoch 0 trains 2 more batches, the first 2 of the cache's order for epoch
    # 0; epoch 1 is whole
    batches = [(int(e), [int(i) for i in b.split(",")]) for e, b in
               (ln.split(": ") for ln in record.read_text().splitlines())]
    assert [e for e, _ in batches] == [0] * 2 + [1] * STEPS_PER_EPOCH
    assert sorted(i for e, b in batches if e == 1 for i in b) == list(range(32))
    order = _cache_order(tiny_cache, epoch=0)
    assert [i for e, b in batches if e == 0 for i in b] == order[:8]
    assert "resume: the checkpoint was trained on a WebDataset stream, which saves no position in its epoch: the " \
           "rest of epoch 0 (the batches its steps had not reached) comes from the beginning of the cache's order " \
           "for that epoch, so this epoch trains some pairs twice and leaves others out; from epoch 1 on" in caplog.text
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()


def _cache_order(cache: str, epoch: int) -> list[int]:
    """The pairs of shards 0-1 of `cache` in the order the training loader reads them in `epoch` (tiny config: seed
    0, one rank)."""
    from radar_train.cache.reader import BlockShuffleSampler, PairDataset

    ds = PairDataset(cache, [0, 1])
    sampler = BlockShuffleSampler(ds, shuffle=True, seed=0)
    sampler.set_epoch(epoch)
    return [int(ds[p]["index"]) for p in sampler]


def test_a_validation_tar_that_fails_in_its_first_batch_saves_the_step_with_the_validation_owed(tiny_cache, tmp_path,
                                                                                                 capsys):
    """Lightning read the first batch of a loader of unknown length while it set the validation up, before the
    validation began: a validation tar that failed there (cut at a block boundary inside a member, which the checks
    before the run cannot see) failed outside the validation, and the step before it was not saved."""
    import tarfile

    import torch

    from radar_train.cache.wds import export_wds

    wds = tmp_path / "wds"
    export_wds(tiny_cache, str(wds), progress=False)
    tar = wds / "pairs-00014.tar"
    with tarfile.open(tar) as t:
        cut = t.getmembers()[0].offset_data + 512
    tar.write_bytes(tar.read_bytes()[:cut])
    caches = json.dumps([{"path": str(wds), "train_shards": "0-1", "val_shards": "14", "format": "wds"}])
    assert run_train_cli(tiny_fit_argv(tiny_cache, tmp_path / "run", 4, "--data.caches", caches,
                                       "--trainer.logger", "false",  # (no grid: its pairs are read at the start)
                                       "--model.monitor.num_image_samples", "0")) == 2
    err = capsys.readouterr().err
    assert f"{tar}: WebDataset tar cannot be read (unexpected end of data)" in err
    assert "radar-train: the run failed in the validation at step 2; the step is saved" in err
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (state,) = [v for k, v in saved["callbacks"].items() if k.startswith("RunCheckpoint")]
    assert saved["global_step"] == 2 and state["validation_owed"] == 2


def test_a_wds_run_stopped_in_its_first_epoch_says_the_epoch_restarts_on_resume(tiny_cache, tmp_path, caplog):
    """The first epoch of a process is iterated before the loop passes its number: a count of iterations said a
    checkpoint in its middle was taken at its start, and the resume restarted the epoch's order without a word."""
    from radar_train.cache.wds import export_wds

    export_wds(tiny_cache, str(tmp_path / "wds"), progress=False)
    caches = json.dumps([{"path": str(tmp_path / "wds"), "train_shards": "0-1", "val_shards": "14", "format": "wds"}])
    argv = ("--data.caches", caches, "--trainer.logger", "false")
    assert run_train_cli(tiny_fit_argv(tiny_cache, tmp_path / "run", 6, *argv)) == 0
    with caplog.at_level(logging.WARNING):
        assert run_train_cli(tiny_fit_argv(tiny_cache, tmp_path / "run", 8, *argv, "--ckpt_path", "last")) == 0
    assert "resume: WebDataset streams cannot resume mid-stream: epoch 0's data order restarts from its beginning" \
        in caplog.text
