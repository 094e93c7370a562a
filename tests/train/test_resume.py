"""Exact resume of `radar-train fit`: a real training process is SIGKILLed twice at random steps and resumed
with --ckpt_path last; its final adapter is bit-identical to an uninterrupted run's (CPU, fp32). The runs
cross epoch boundaries, resume once mid-epoch and once at an epoch's end (where validation was due, so the
resumed run skips a validation the uninterrupted one ran), and train with LoRA dropout."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
MAX_STEPS, SAVE_EVERY, STEPS_PER_EPOCH = 40, 4, 5  # 32 pairs, batch 6, drop_last: 5 steps per epoch
SEED = 20240917


def _command(cache: str, run: Path, beacon: Path) -> list[str]:
    callbacks = [{"class_path": "step_beacon.StepBeacon", "init_args": {"path": str(beacon)}}]
    return [sys.executable, "-m", "radar_train.cli.train", "fit", "--config", str(ROOT / "configs/train/tiny.yaml"),
            "--trainer.default_root_dir", str(run), "--trainer.max_steps", str(MAX_STEPS),
            "--trainer.val_check_interval", "10", "--trainer.limit_val_batches", "1",
            "--trainer.log_every_n_steps", "5", "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks", json.dumps(callbacks),
            "--data.caches", json.dumps([{"path": cache, "train_shards": "0-1", "val_shards": "14"}]),
            "--data.batch_size", "6", "--data.val_batch_size", "4",
            "--model.lora.dropout", "0.1", "--model.output.save_every_n_steps", str(SAVE_EVERY),
            "--model.monitor.images_every_n_steps", "10", "--model.monitor.num_image_samples", "2",
            "--model.monitor.train_metrics_every_n_steps", "0"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "scripts"), str(ROOT)]),
            "OMP_NUM_THREADS": "1"}  # both runs alike (they run at the same time)


def _step(beacon: Path) -> int:
    try:
        return int(beacon.read_text())
    except (FileNotFoundError, ValueError):
        return -1


def _saved_steps(run: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("step-*.ckpt"))


def _run_until(cmd: list[str], beacon: Path, kill_at: int, log) -> int:
    """Start `cmd`; SIGKILL it once the beacon reports step `kill_at` (it is then inside the next step)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        while proc.poll() is None and _step(beacon) < kill_at:
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before step {kill_at}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return _step(beacon)


def _images_per_step(tb: Path) -> dict[int, int]:
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    ea = EventAccumulator(str(tb), size_guidance={IMAGES: 0})
    ea.Reload()
    steps = [e.step for e in ea.Images("val/samples")]
    return {s: steps.count(s) for s in steps}


@pytest.mark.slow
def test_a_run_killed_twice_with_sigkill_and_resumed_ends_bit_identical(tiny_cache, tmp_path):
    from safetensors.torch import load_file

    rng = random.Random(SEED)
    # kill 1 after the checkpoint of a mid-epoch step (8, 12 or 16) -> resume there; kill 2 after step 20,
    # an epoch end where validation was due -> the second resume starts an epoch
    first_ckpt = rng.choice([8, 12, 16])
    kill1 = first_ckpt + rng.randrange(1, SAVE_EVERY - 1)
    kill2 = 20 + rng.randrange(1, SAVE_EVERY - 1)
    print(f"\nseed {SEED}: SIGKILL at steps {kill1} and {kill2}")

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    with open(tmp_path / "full.log", "w") as log_a, open(tmp_path / "resumed.log", "w") as log_b:
        a = subprocess.Popen(_command(tiny_cache, full, tmp_path / "a.step"), cwd=ROOT, env=_env(), stdout=log_a,
                             stderr=subprocess.STDOUT)
        try:
            cmd = _command(tiny_cache, resumed, tmp_path / "b.step")
            reached = _run_until(cmd, tmp_path / "b.step", kill1, log_b)
            saved = _saved_steps(resumed)
            assert saved and saved[-1] == first_ckpt, (reached, saved)
            reached = _run_until(cmd + ["--ckpt_path", "last"], tmp_path / "b.step", kill2, log_b)
            assert _saved_steps(resumed)[-1] == 20, (reached, _saved_steps(resumed))
            r = subprocess.run(cmd + ["--ckpt_path", "last"], cwd=ROOT, env=_env(), stdout=log_b,
                               stderr=subprocess.STDOUT, timeout=600)
            assert r.returncode == 0, (tmp_path / "resumed.log").read_text()[-3000:]
            assert a.wait(timeout=600) == 0, (tmp_path / "full.log").read_text()[-3000:]
        finally:
            if a.poll() is None:
                a.kill()
    text = (tmp_path / "resumed.log").read_text()
    assert text.count("Restored all states from the checkpoint") == 2

    adapters = [load_file(str(run / "final" / "adapter_model.safetensors")) for run in (full, resumed)]
    assert adapters[0].keys() == adapters[1].keys() and len(adapters[0]) > 0
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
    for run in (full, resumed):
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == MAX_STEPS
    # the TensorBoard image grid: once per step, at the start, every 10 steps and (not again) at the end
    assert _images_per_step(full / "tb") == {s: 1 for s in range(0, MAX_STEPS + 1, 10)}
    assert set(_images_per_step(resumed / "tb").values()) == {1}


def test_a_finished_run_continued_to_more_steps_trains_the_rest_of_its_epoch(tiny_cache, tmp_path):
    """A run that ended between saves (5 steps, saves every 2) saved its last step at the fit's end, with the loop
    state Lightning has then: the epoch counted complete. Continued to 8 steps, it started the next epoch and left
    the rest of this one's batches untrained, without a word. Now the continued run is the uninterrupted one, bit for
    bit; the step file of its end is named for its step."""
    from safetensors.torch import load_file
    from tiny_training import run_train_cli, tiny_fit_argv

    same = ("--trainer.logger", "false", "--model.optim.schedule_steps", "8")  # (the schedule of the 8-step run)
    assert run_train_cli(tiny_fit_argv(tiny_cache, tmp_path / "whole", 8, *same)) == 0
    assert run_train_cli(tiny_fit_argv(tiny_cache, tmp_path / "continued", 5, *same)) == 0
    assert sorted(p.name for p in (tmp_path / "continued" / "checkpoints").iterdir()) == ["last.ckpt",
                                                                                          "step-000005.ckpt"]
    assert run_train_cli(tiny_fit_argv(tiny_cache, tmp_path / "continued", 8, *same, "--ckpt_path", "last")) == 0
    a, b = (load_file(tmp_path / r / "final" / "adapter_model.safetensors") for r in ("whole", "continued"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
