"""Shared pieces of the training tests: random latent pairs, the early-stopping setting whose best step is the
first validation, radar-train fit's command line on a tiny cache run in-process, and a callback that makes a
training step fail."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional
from unittest import mock

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from radar_train.train.selection import EarlyStoppingArgs

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny.yaml"

# PSNR(D_LoRA(f_HQ), D(f_HQ)) starts at the identity (LoRA B = 0) and falls as the LoRA learns the LQ -> HQ
# mapping without an identity term: a metric that stops improving after the first validation
HARMLESS = EarlyStoppingArgs(enabled=True, monitor="val/psnr_harmless", patience=2)


class LabelledPairs(torch.utils.data.Dataset):
    """Random tiny-model latent pairs (8, 8, 8) with labels: fhat_lq = fhat_hq + noise."""

    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.hq = torch.randn(n, 8, 8, 8, generator=g)
        self.lq = self.hq + 0.5 * torch.randn(n, 8, 8, 8, generator=g)

    def __len__(self) -> int:
        return len(self.hq)

    def __getitem__(self, i: int) -> dict:
        return {"fhat_hq": self.hq[i], "fhat_lq": self.lq[i], "label": torch.tensor(i % 10)}


def train_main(argv: list[str]) -> None:
    """radar-train's main(argv) in-process, sys.argv as a console script would have it (LightningCLI warns when
    they differ); its SystemExit or error propagates."""
    from radar_train.cli.train import main

    with mock.patch.object(sys, "argv", ["radar-train", *argv]):
        main(argv)


def run_train_cli(argv: list[str]) -> int:
    """train_main(argv); the exit status."""
    with pytest.raises(SystemExit) as e:
        train_main(argv)
    return e.value.code


def tiny_fit_argv(cache: str, root: Path, steps: int, *extra: str) -> list[str]:
    """fit on the tiny config: shards 0-1 of `cache` train, 14 validates; validation and a save every 2 steps."""
    caches = json.dumps([{"path": cache, "train_shards": "0-1", "val_shards": "14"}])
    return ["fit", "--config", str(TINY_CONFIG), "--data.caches", caches, "--trainer.default_root_dir", str(root),
            "--trainer.max_steps", str(steps), "--trainer.val_check_interval", "2",
            "--trainer.enable_progress_bar", "false", "--model.output.save_every_n_steps", "2",
            "--model.monitor.images_every_n_steps", "0", "--data.batch_size", "4", *extra]


class FailAt(Callback):
    """Raises RuntimeError("injected failure") in optimizer step `step` (1-based) at `where`: "backward" (after the
    backward of the step's `micro_batch`-th micro-batch: the update not begun), "update" (Lightning's hook just before
    the update), "end" (the step's end, after the update), or "validation" (batch `val_batch`, 0-based, of the
    validation after step `step`). `out_of_memory`: torch.OutOfMemoryError (a RuntimeError) instead, as CUDA's
    allocator raises it."""

    def __init__(self, step: int, where: str = "backward", micro_batch: int = 1, rank: Optional[int] = None,
                 val_batch: int = 0, out_of_memory: bool = False):
        self.step, self.where, self.micro_batch, self.rank, self.val_batch = step, where, micro_batch, rank, val_batch
        self.error = torch.OutOfMemoryError if out_of_memory else RuntimeError
        self._backwards = 0

    def _due(self, trainer, where: str, step_done: int) -> bool:
        return self.where == where and trainer.global_step == step_done and \
            (self.rank is None or trainer.global_rank == self.rank)

    def on_after_backward(self, trainer, pl_module) -> None:
        if self._due(trainer, "backward", self.step - 1):
            self._backwards += 1
            if self._backwards == self.micro_batch:
                raise self.error("injected failure")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._due(trainer, "update", self.step - 1):
            raise self.error("injected failure")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._due(trainer, "end", self.step):
            raise self.error("injected failure")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self._due(trainer, "validation", self.step) and not trainer.sanity_checking and batch_idx == self.val_batch:
            raise self.error("injected failure")


class ValidationSteps(Callback):
    """Appends the global step of every validation that ends in a fit (sanity checks aside) to the file `path`, one
    line each, across the processes of a run and its resumes; "N torn down" for one that ran after the strategy's
    teardown (on a GPU the model is on the CPU then), which a test marks as `strategy.torn_down`."""

    def __init__(self, path: str):
        self.path = path

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            with open(self.path, "a") as f:
                f.write(f"{trainer.global_step}{' torn down' if getattr(trainer.strategy, 'torn_down', 0) else ''}\n")


class TrainedPairs(Callback):
    """Appends `epoch: index,index,...` (the pairs of each training batch) to the file `path`, one line per batch,
    across a run and its resumes."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with open(self.path, "a") as f:
            f.write(f"{trainer.current_epoch}: {','.join(str(int(i)) for i in batch['index'])}\n")


class HostReadbacks(Callback):
    """Records where the training loop reads a value back to the host that on a GPU lives on the device (a
    synchronisation: the host waits for the step's kernels instead of queueing the next step), in the optimizer
    steps `after` + 1 to `until` (global_step `after` to `until` − 1 as they begin), in the class attribute `found`
    ({(what, where): calls}): `.item()`, `.tolist()`, `float()` / `int()` / `bool()` of a tensor, `.cpu()` and
    `.numpy()` made by radar_train's training code, Lightning's step logging or its callbacks (the innermost frame
    outside torch and Lightning's generic helpers), and every Python number turned into a tensor on a device
    (Lightning's `self.log` of a number: a copy that waits for the device). Host-side tensors by design (the optimizer's step
    counts, the data loader's) are read by other code and not counted."""

    found: dict = {}
    WATCHED = ("radar_train/train/", "lightning/pytorch/trainer/connectors/logger_connector/",
               "lightning/pytorch/callbacks/")
    TRANSPARENT = ("/torch/", "/lightning_utilities/", "/lightning/fabric/utilities/", "/tiny_training.py")

    def __init__(self, after: int = 2, until: int = 6):
        self.after, self.until = after, until
        self._mode = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._mode is None and trainer.global_step == self.after:
            HostReadbacks.found = {}
            self._mode = _ReadbackMode()
            self._mode.__enter__()
        elif self._mode is not None and trainer.global_step == self.until:
            self._stop()

    def _stop(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            HostReadbacks.found, self._mode = dict(self._mode.found), None

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop()


class _ReadbackMode(torch.overrides.TorchFunctionMode):
    READBACKS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__, torch.Tensor.__int__,
                 torch.Tensor.__bool__, torch.Tensor.cpu, torch.Tensor.numpy}

    def __init__(self):
        super().__init__()
        self.found: dict = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        what = None
        if func in self.READBACKS:
            what = func.__name__
        elif func is torch.tensor and kwargs.get("device") is not None and not isinstance(args[0], torch.Tensor):
            what = "a number to the device"
        if what is not None:
            import traceback

            frames = [f"{f.filename.replace(chr(92), '/')}:{f.lineno}" for f in traceback.extract_stack()[:-1]]
            caller = next((f for f in reversed(frames) if not any(t in f for t in HostReadbacks.TRANSPARENT)), "?")
            host_data = any("/torch/utils/data/" in f for f in frames)  # (a data loader's own host tensors)
            if what == "a number to the device" or (any(w in caller for w in HostReadbacks.WATCHED) and not host_data):
                where = caller[caller.find("radar_train/"):] if "radar_train/" in caller \
                    else caller.split("site-packages/")[-1]
                self.found[(what, where)] = self.found.get((what, where), 0) + 1
        return func(*args, **kwargs)
