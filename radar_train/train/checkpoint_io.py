"""Checkpoint files written beside their name and renamed, so that a failed save never costs the last good one.

Lightning's default writer (`TorchCheckpointIO`, through fsspec's transaction) writes a local checkpoint into
the system's temporary folder and moves it into place on commit. When the run folder lies on another file
system than $TMPDIR (local /tmp, checkpoints on a shared file system with a quota: the usual cluster), that
move is a copy that empties the destination first: a disk that fills during it leaves a truncated last.ckpt,
and the previous good one is gone (`--ckpt_path last` then refuses the run). `BesideCheckpointIO` writes
`torch.save` to a hidden temporary in the checkpoint's own folder (`outputs.atomic_file`: named after the
writing process and host, cleared by the next save if a kill left it) and renames it onto the checkpoint, an
atomic replace on one file system. Remote paths (`s3://...`) keep Lightning's writer.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from radar_train.outputs import atomic_file

__all__ = ["BesideCheckpointIO", "use_beside_checkpoint_io"]


class BesideCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local saves are written beside the target and renamed onto it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_file(path) as tmp:
            torch.save(checkpoint, tmp)


def use_beside_checkpoint_io(trainer) -> bool:
    """Give `trainer`'s strategy a BesideCheckpointIO in place of Lightning's default writer (a writer the user
    configured is kept). Returns whether it did."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is not TorchCheckpointIO:
        return False
    strategy.checkpoint_io = BesideCheckpointIO()
    return True
