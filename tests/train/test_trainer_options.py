"""Less common Lightning settings of `radar-train fit` that the run folder follows: a `--trainer.max_time` budget
ends the run as max_steps does (final/ written), and `--trainer.fast_dev_run` writes nothing."""
from __future__ import annotations

import torch
import yaml

from tiny_training import run_train_cli, tiny_fit_argv


def test_a_run_ended_by_its_time_budget_writes_final(tiny_cache, tmp_path):
    """It exited 0 with checkpoints and no final/; its resume stopped at once too (the Timer's elapsed time is in the
    checkpoint), so a time budget as the run's only limit could never give the adapter."""
    root = tmp_path / "run"
    assert run_train_cli(tiny_fit_argv(tiny_cache, root, 100000, "--trainer.max_time", "00:00:00:02",
                                       "--model.optim.schedule_steps", "50")) == 0
    last = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    meta = yaml.safe_load((root / "final" / "radar_config.yaml").read_text())
    assert 0 < meta["global_step"] == last["global_step"] < 100000
    assert meta["selection"]["stopping_reason"] == f"trainer.max_time reached at step {last['global_step']}"
    assert meta["selection"]["stopped_early"] is False


def test_a_fast_dev_run_writes_nothing(tiny_cache, tmp_path):
    """Lightning suppresses its logging and checkpoints in this one-batch smoke test; the run's own end-of-training
    save and final/ were written anyway (checkpoints/last.ckpt at step 1), and the folder then refused a real fit."""
    root = tmp_path / "run"
    assert run_train_cli(tiny_fit_argv(tiny_cache, root, 6, "--trainer.fast_dev_run", "true",
                                       "--model.output.export_every_n_steps", "1")) == 0
    assert not root.exists() or sorted(p.name for p in root.rglob("*")) == []
    assert run_train_cli(tiny_fit_argv(tiny_cache, root, 2)) == 0  # (the real fit then starts there)
    assert (root / "final").is_dir()
