"""A TensorBoard logger whose `version_N/` folder is its own: `radar-train validate` logs to a new
RUN/tb/validate/version_N/ each time, and Lightning's logger picks N as one more than the folders it finds, then
makes the folder when it first writes. Two validates started together (two checkpoints measured at once, on two
GPUs) took the same N: their event files mixed in one folder and the second's hparams.yaml, which names the
checkpoint measured, replaced the first's, so the first's metrics were credited to the other checkpoint. Here the
folder is claimed with an exclusive mkdir when N is chosen (on rank zero, the process that writes)."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only


class OwnVersionTensorBoardLogger(TensorBoardLogger):
    def _get_next_version(self) -> int:
        n = super()._get_next_version()
        if getattr(rank_zero_only, "rank", 0) != 0:
            return n
        root = Path(self.root_dir)
        root.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                (root / f"version_{n}").mkdir()
                return n
            except FileExistsError:
                n += 1
