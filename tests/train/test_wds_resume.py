"""Resume of `radar-train fit` on a WebDataset export: a stream's position inside an epoch is not saved, but a
checkpoint taken at an epoch's last step holds the next epoch at its start, so the resumed run trains the batches
the uninterrupted one trains (bit-identical adapter, CPU, fp32) and says nothing about a restarted order. The
stream reads the epoch Lightning trains (StreamLoader.set_epoch): around the restart, where validation was due, Lightning
starts an iteration it drops, which a count of iterations took for the next epoch."""
from __future__ import annotations

import json
import logging

from safetensors.torch import load_file
from tiny_training import run_train_cli, tiny_fit_argv

STEPS_PER_EPOCH = 8  # shards 0-1: 32 pairs, batch 4, one stream (no workers)


def test_a_run_stopped_at_an_epoch_end_resumes_exactly_without_a_warning(tiny_cache, tmp_path, caplog):
    from radar_train.cache.wds import export_wds

    wds = tmp_path / "wds"
    export_wds(tiny_cache, str(wds), progress=False)
    caches = json.dumps([{"path": str(wds), "train_shards": "0-1", "val_shards": "14", "format": "wds"}])

    def fit(root: str, steps: int, *extra: str) -> int:
        return run_train_cli(tiny_fit_argv(tiny_cache, tmp_path / root, steps, "--data.caches", caches,
                                           "--trainer.val_check_interval", "8",
                                           "--model.output.save_every_n_steps", "4", *extra))

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
    with caplog.at_level(logging.WARNING):
        assert run_train_cli(tiny_fit_argv(tiny_cache, tmp_path / "run", 8, "--ckpt_path", "last",
                                           "--trainer.logger", "false")) == 0
    assert "resume: the checkpoint was trained on a WebDataset stream: the cache's data order starts at the " \
           "beginning of epoch 0" in caplog.text
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()
