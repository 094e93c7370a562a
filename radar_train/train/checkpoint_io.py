"""Checkpoint files written beside their name and renamed, so that a failed save never costs the last good one.

Lightning's default writer (`TorchCheckpointIO`, through fsspec's transaction) writes a local checkpoint into
the system's temporary folder and moves it into place on commit. When the run folder lies on another file
system than $TMPDIR (local /tmp, checkpoints on a shared file system with a quota: the usual cluster), that
move is a copy that empties the destination first: a disk that fills during it leaves a truncated last.ckpt,
and the previous good one is gone (`--ckpt_path last` then refuses the run). `BesideCheckpointIO` writes
the checkpoint to a hidden temporary in its own folder (`outputs.atomic_file`: named after the writing process
and host, cleared by the next save of that name if a kill left it) and renames it onto the checkpoint, an
atomic replace on one file system. Remote paths (`s3://...`) keep Lightning's writer.

Two details matter. The checkpoint is serialised into memory first and written with Python's file write, so
that a full disk is an OSError naming the file (torch.save onto a path fails in its C++ writer with a bare
RuntimeError, which would be a traceback). And the temporary's name does not contain the checkpoint's
"ckpt_": Lightning finds the newest `hpc_ckpt_N.ckpt` of a run folder (a SLURM requeue's) by the digits of
every name there containing "hpc_ckpt_", so a killed requeue save's temporary would make it resume from a
file that does not exist.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from radar_train.outputs import atomic_file, clear_stale_temps

__all__ = ["BesideCheckpointIO", "use_beside_checkpoint_io", "temp_key", "clear_killed_saves", "is_save_temp"]


class BesideCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local saves are written beside the target and renamed onto it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        clear_killed_saves(Path(path).parent)
        with atomic_file(path, temp_of=temp_key(path)) as tmp:
            tmp.write_bytes(buffer.getbuffer())


def temp_key(path) -> str:
    """The name a checkpoint's temporary is made under: its own without "ckpt_" (see the module docstring)."""
    return "save-" + Path(path).name.replace("ckpt_", "ckpt-")


def is_save_temp(entry) -> bool:
    """Whether a folder's entry is a checkpoint save's temporary (`.save-NAME.tmp-<token>-<pid>-<host>`)."""
    name = Path(entry).name
    return name.startswith(".save-") and ".tmp-" in name


def clear_killed_saves(folder: Path) -> None:
    """Remove the temporaries of checkpoint saves in `folder` whose process (of this host) was killed, whatever
    checkpoint they were for: a step file's name changes with every save, so the next save of the same name,
    which clears its own, may never come."""
    try:
        names = {e.name[1:e.name.index(".tmp-")] for e in folder.iterdir() if is_save_temp(e)}
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        clear_stale_temps(folder, name)


def use_beside_checkpoint_io(trainer) -> bool:
    """Give `trainer`'s strategy a BesideCheckpointIO in place of Lightning's default writer (a writer the user
    configured is kept). Returns whether it did."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is not TorchCheckpointIO:
        return False
    strategy.checkpoint_io = BesideCheckpointIO()
    return True
