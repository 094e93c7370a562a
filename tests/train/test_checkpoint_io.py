"""A checkpoint save that fails (a full disk, a quota) keeps the last good checkpoint: the run's checkpoints are
written beside their names and renamed (BesideCheckpointIO), never copied over them from $TMPDIR."""
from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from radar_train.train.checkpoint_io import BesideCheckpointIO, use_beside_checkpoint_io
from tiny_training import run_train_cli, tiny_fit_argv



def test_the_default_writer_is_replaced_and_a_configured_one_kept():
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    assert use_beside_checkpoint_io(trainer) and type(trainer.strategy.checkpoint_io) is BesideCheckpointIO

    class Mine(TorchCheckpointIO):
        pass

    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, plugins=[Mine()])
    assert not use_beside_checkpoint_io(trainer) and type(trainer.strategy.checkpoint_io) is Mine


class _FullDisk:
    """The run folder on another file system than $TMPDIR (`tmpdir`: a rename out of it fails with EXDEV, so
    shutil.move copies), and a disk that fills while a checkpoint file is written once `full` is set: the write
    (a copy from $TMPDIR, or a write of the checkpoint's bytes) puts part of it there, then fails with ENOSPC."""

    def __init__(self, tmpdir: Path):
        self.tmpdir, self.full = str(tmpdir), False
        self.real_rename, self.real_copyfile, self.real_write_bytes = os.rename, shutil.copyfile, Path.write_bytes

    def rename(self, src, dst, *a, **kw):
        if str(src).startswith(self.tmpdir):
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        return self.real_rename(src, dst, *a, **kw)

    def copyfile(self, src, dst, *a, **kw):
        if self.full:
            with open(src, "rb") as f:
                self._part(f.read(1000), dst)
        return self.real_copyfile(src, dst, *a, **kw)

    def write_bytes(self, path, data):
        if self.full:
            self._part(bytes(memoryview(data)[:1000]), path)
        return self.real_write_bytes(path, data)

    def _part(self, head: bytes, dst) -> None:
        self.full = False
        with open(dst, "wb") as f:
            f.write(head)
        raise OSError(errno.ENOSPC, "No space left on device")


def _disk_fills_at(nth: int, tmp_path: Path, monkeypatch) -> list[int]:
    """The disk ($TMPDIR and the run's) fills while the `nth` checkpoint file of the run is written; the steps of
    the checkpoint files torch.save was given, in order."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr("tempfile.tempdir", None)  # (read $TMPDIR again)
    disk = _FullDisk(tmpdir)
    real_save, saves = torch.save, []

    def counting_save(obj, f, *a, **kw):
        if isinstance(obj, dict) and "global_step" in obj:
            saves.append(obj["global_step"])
            disk.full = len(saves) == nth
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(os, "rename", disk.rename)
    monkeypatch.setattr(shutil, "copyfile", disk.copyfile)
    monkeypatch.setattr(Path, "write_bytes", lambda path, data: disk.write_bytes(path, data))
    monkeypatch.setattr(torch, "save", counting_save)
    return saves


def test_a_save_that_fills_the_disk_keeps_the_last_good_checkpoint(tiny_cache, tmp_path, monkeypatch, capsys):
    """radar-train fit saving at steps 2 and 4: the save at step 4 fails with ENOSPC. last.ckpt stays step 2's
    whole file (before: Lightning's copy from $TMPDIR had emptied it), no temporary is left beside it, the error
    is one line (status 1), and the run resumes from it."""
    root = tmp_path / "run"
    argv = tiny_fit_argv(tiny_cache, root, 6)
    last = root / "checkpoints" / "last.ckpt"
    saves = _disk_fills_at(3, tmp_path, monkeypatch)  # the third checkpoint file: step 4's
    code = run_train_cli(argv)
    lines = capsys.readouterr().err.splitlines()
    err = [line for line in lines if line.startswith("error:")]
    assert code == 1 and len(err) == 1 and "No space left on device" in err[0], err
    # the failed save is not tried again at the failure (the disk that failed it would fail the retry)
    assert lines[-1] == "radar-train: the run failed; nothing saved since its last checkpoint (the save of step 4 failed)"
    assert saves[:2] == [2, 2]  # step-000002.ckpt and last.ckpt of step 2
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "step-000002.ckpt"]
    monkeypatch.undo()
    code = run_train_cli([*argv, "--ckpt_path", "last"])
    assert code == 0 and torch.load(last, weights_only=True)["global_step"] == 6


_KILLED_SAVE = r"""
import os, signal, sys
from pathlib import Path
import torch
from radar_train.train.checkpoint_io import BesideCheckpointIO

def killed(path, data):  # part of the file, then the process is gone (a time limit, scancel -9, a lost node)
    with open(path, "wb") as f:
        f.write(bytes(memoryview(data)[:1000]))
    os.kill(os.getpid(), signal.SIGKILL)

Path.write_bytes = killed
BesideCheckpointIO().save_checkpoint({"global_step": 2, "w": torch.zeros(1000)}, sys.argv[1])
"""


def test_a_killed_requeue_save_leaves_nothing_lightnings_hpc_lookup_takes_for_a_checkpoint(tmp_path):
    """A SLURM requeue save (RUN/hpc_ckpt_2.ckpt) killed mid-write leaves its temporary in RUN; Lightning picks
    the newest hpc_ckpt_N.ckpt by the digits of every name there holding "hpc_ckpt_", so the temporary's name
    must not (it made a resume look for hpc_ckpt_201234000000.ckpt, which does not exist)."""
    import subprocess

    from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

    root = tmp_path / "run"
    root.mkdir()
    BesideCheckpointIO().save_checkpoint({"global_step": 1}, root / "hpc_ckpt_1.ckpt")
    proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(root / "hpc_ckpt_2.ckpt")], timeout=120)
    assert proc.returncode == -9
    left = sorted(p.name for p in root.iterdir())
    assert len(left) == 2 and "hpc_ckpt_1.ckpt" in left  # (the killed save's temporary, beside it)
    newest = getattr(_CheckpointConnector, "_CheckpointConnector__max_ckpt_version_in_folder")
    assert newest(root, "hpc_ckpt_") == 1
    BesideCheckpointIO().save_checkpoint({"global_step": 2}, root / "hpc_ckpt_2.ckpt")  # the next save of it
    assert sorted(p.name for p in root.iterdir()) == ["hpc_ckpt_1.ckpt", "hpc_ckpt_2.ckpt"]  # clears it


def test_a_save_past_a_quota_is_one_error_line_naming_the_checkpoint(tiny_cache, tmp_path):
    """A real write limit (RLIMIT_FSIZE: EFBIG, as a quota or a full disk fail a write) on a resumed fit: one
    `error:` line naming the checkpoint, status 1, no traceback (torch.save onto a path failed with a bare
    RuntimeError from its C++ writer); last.ckpt stays step 2's."""
    import resource
    import signal
    import subprocess

    root = tmp_path / "run"
    exe = str(Path(sys.executable).parent / "radar-train")
    assert run_train_cli(tiny_fit_argv(tiny_cache, root, 2)) == 0  # (in-process: only the limited fit needs its own)
    last = root / "checkpoints" / "last.ckpt"
    size = last.stat().st_size

    def limit() -> None:  # a file may not grow past half a checkpoint
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, resource.RLIM_INFINITY))

    proc = subprocess.run([exe, *tiny_fit_argv(tiny_cache, root, 4, "--ckpt_path", "last")], capture_output=True,
                          text=True, timeout=300, preexec_fn=limit)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 1 and "File too large" in errors[0] and ".ckpt" in errors[0], proc.stderr[-2000:]
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert not [p for p in root.rglob(".*") if p.name != ".fit.lock"] and not (root / ".fit.lock").exists()


def test_a_save_clears_what_killed_saves_of_other_checkpoints_left(tmp_path):
    """A step file's name changes with every save: a killed save's temporary of step-000004.ckpt is removed by
    the next save of any checkpoint in that folder; a running writer's temporary stays."""
    import socket

    from radar_train.outputs import temp_name
    from radar_train.train.checkpoint_io import temp_key

    host = socket.gethostname()[:32]
    dead = tmp_path / f".{temp_key('step-000004.ckpt')}.tmp-0badc0de-{_dead_pid()}-{host}"
    dead.write_bytes(b"\0" * 1000)
    live = temp_name(tmp_path / temp_key("step-000006.ckpt"))  # (this process: a save that still runs)
    live.write_bytes(b"\0" * 10)
    BesideCheckpointIO().save_checkpoint({"global_step": 8}, tmp_path / "step-000008.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "step-000008.ckpt"])


def _dead_pid() -> int:
    import subprocess

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def test_a_run_whose_last_ckpt_save_failed_after_its_step_file_puts_that_file_at_last_ckpt_when_resumed(
        tiny_cache, tmp_path, monkeypatch, caplog, capsys):
    """The disk fills while last.ckpt of the run's last step is written, after step-000004.ckpt: `--ckpt_path last`
    resumed from the step file, at the run's end, and saved nothing, so last.ckpt stayed step 2's for good (the
    README's `radar-train export --ckpt RUN/checkpoints/last.ckpt` exported step 2; radar-demo could not go on)."""
    root = tmp_path / "run"
    argv = tiny_fit_argv(tiny_cache, root, 4, "--trainer.logger", "false")
    last, step_file = root / "checkpoints" / "last.ckpt", root / "checkpoints" / "step-000004.ckpt"
    saves = _disk_fills_at(4, tmp_path, monkeypatch)  # the fourth checkpoint file: last.ckpt of step 4
    capsys.readouterr()
    assert run_train_cli(argv) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"radar-train: the run failed saving last.ckpt of step 4; the step is saved in {step_file} (once the cause "
        f"is fixed, resume with --ckpt_path last: it takes that file)")  # (it said step 4 was not saved)
    assert saves == [2, 2, 4, 4]
    assert torch.load(last, weights_only=True)["global_step"] == 2 and step_file.is_file()
    monkeypatch.undo()
    with caplog.at_level("INFO", logger="radar_train"):
        assert run_train_cli([*argv, "--ckpt_path", "last"]) == 0
    assert last.read_bytes() == step_file.read_bytes()
    assert f"{last}: a copy of step-000004.ckpt, the run's newest checkpoint" in caplog.text
    before = last.stat().st_mtime_ns  # (a last.ckpt of the step is left alone)
    assert run_train_cli([*argv, "--ckpt_path", "last"]) == 0
    assert last.stat().st_mtime_ns == before
