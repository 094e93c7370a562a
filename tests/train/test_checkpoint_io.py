"""A checkpoint save that fails (a full disk, a quota) keeps the last good checkpoint: the run's checkpoints are
written beside their names and renamed (BesideCheckpointIO), never copied over them from $TMPDIR."""
from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from pathlib import Path
from unittest import mock

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from radar_train.train.checkpoint_io import BesideCheckpointIO, use_beside_checkpoint_io

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"


def test_the_default_writer_is_replaced_and_a_configured_one_kept():
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    assert use_beside_checkpoint_io(trainer) and type(trainer.strategy.checkpoint_io) is BesideCheckpointIO

    class Mine(TorchCheckpointIO):
        pass

    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, plugins=[Mine()])
    assert not use_beside_checkpoint_io(trainer) and type(trainer.strategy.checkpoint_io) is Mine


class _CrossDevice:
    """The run folder on another file system than $TMPDIR (`tmpdir`): a rename out of $TMPDIR fails with EXDEV
    (shutil.move then copies), and the disk fills during the copy of the `fail_at`-th file."""

    def __init__(self, tmpdir: Path, fail_at: int):
        self.tmpdir, self.fail_at, self.copies = str(tmpdir), fail_at, 0
        self.rename, self.copyfile = os.rename, shutil.copyfile

    def fake_rename(self, src, dst, *a, **kw):
        if str(src).startswith(self.tmpdir):
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        return self.rename(src, dst, *a, **kw)

    def fake_copyfile(self, src, dst, *a, **kw):
        self.copies += 1
        if self.copies == self.fail_at:
            with open(src, "rb") as fsrc, open(dst, "wb") as fdst:
                fdst.write(fsrc.read(1000))  # part of it, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return self.copyfile(src, dst, *a, **kw)


def test_a_save_that_fills_the_disk_keeps_the_last_good_checkpoint(tiny_cache, tmp_path, monkeypatch, capsys):
    """radar-train fit saving at steps 2 and 4: the save at step 4 fails with ENOSPC. last.ckpt stays step 2's
    whole file (before: Lightning's copy from $TMPDIR had emptied it), no temporary is left beside it, the error
    is one line (status 1), and the run resumes from it."""
    from radar_train.cli.train import main

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr("tempfile.tempdir", None)  # (read $TMPDIR again)
    root = tmp_path / "run"
    caches = json.dumps([{"path": tiny_cache, "train_shards": "0-1", "val_shards": "14"}])
    argv = ["fit", "--config", str(CONFIGS / "tiny.yaml"), "--data.caches", caches, "--trainer.default_root_dir",
            str(root), "--trainer.max_steps", "6", "--trainer.val_check_interval", "2",
            "--trainer.enable_progress_bar", "false", "--model.output.save_every_n_steps", "2",
            "--model.monitor.images_every_n_steps", "0", "--data.batch_size", "4"]
    last = root / "checkpoints" / "last.ckpt"
    fs = _CrossDevice(tmpdir, fail_at=10 ** 9)
    real_save = torch.save
    saves = []

    def counting_save(obj, f, *a, **kw):  # the disk fills during the third file a save writes (step 4's)
        if isinstance(obj, dict) and "global_step" in obj:
            saves.append(obj["global_step"])
            if len(saves) == 3:
                fs.fail_at = fs.copies + 1
                if not isinstance(f, (str, os.PathLike)):  # Lightning: into a buffer, then copied
                    return real_save(obj, f, *a, **kw)
                with open(f, "wb") as out:
                    out.write(b"\0" * 1000)
                raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(os, "rename", fs.fake_rename)
    monkeypatch.setattr(shutil, "copyfile", fs.fake_copyfile)
    monkeypatch.setattr(torch, "save", counting_save)
    with pytest.raises(SystemExit) as e, mock.patch.object(sys, "argv", ["radar-train", *argv]):
        main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert e.value.code == 1 and len(err) == 1 and "No space left on device" in err[0], err
    assert saves[:2] == [2, 2]  # step-000002.ckpt and last.ckpt of step 2
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "step-000002.ckpt"]
    monkeypatch.undo()
    with pytest.raises(SystemExit) as e, mock.patch.object(sys, "argv", ["radar-train", *argv, "--ckpt_path", "last"]):
        main([*argv, "--ckpt_path", "last"])
    assert e.value.code == 0 and torch.load(last, weights_only=True)["global_step"] == 6
