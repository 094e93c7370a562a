"""slurm/train.sbatch under a real SLURM: USR1 (what `--signal=USR1@90` sends before the time limit) makes
Lightning save hpc_ckpt_1.ckpt and requeue the job; the restarted job resumes from that checkpoint at the
saved global step (not from 0), finishes COMPLETED and leaves no requeue checkpoint behind."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slurm_cluster import (FAST_TRAINING, REPO, Cluster, cancel, start_requeued_now, tail_logs, wait_final_states,
                           wait_for)

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]

BIN = Path(sys.executable).parent
CPU = {"RADAR_BIN": str(BIN)}
EXPORT_EVERY = 2  # step-000002/ appearing tells the test that training (and Lightning's signal handlers) runs
MORE_STEPS = 3  # steps the restarted run does after the saved one
JOB_TIMEOUT_S = 420


def _scalar_steps(event_file: Path, tag: str = "train/loss") -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(event_file), size_guidance={SCALARS: 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def _event_files(tb_dir: Path) -> list[Path]:
    """Event files in the order they were created (the name holds the creation time in seconds). The first
    run writes one, and may open a second one after USR1 (Lightning closes the logger before saving);
    the restarted run writes the last one."""
    return sorted(tb_dir.glob("events.out.tfevents.*"), key=lambda p: (int(p.name.split(".")[3]), p.stat().st_mtime))


def _pending_after_requeue(cluster: Cluster, job: str):
    info = cluster.show_job(job)
    return info if info.get("Restarts") == "1" and info.get("JobState") == "PENDING" else None


def _write_config(path: Path, max_steps: int) -> None:
    """configs/train/tiny.yaml with another trainer.max_steps."""
    text = (REPO / "configs" / "train" / "tiny.yaml").read_text()
    text, n = re.subn(r"(?m)^  max_steps: \d+$", f"  max_steps: {max_steps}", text)
    assert n == 1, "configs/train/tiny.yaml has no `  max_steps: N` line under trainer:"
    path.write_text(text)


def test_usr1_requeues_training_which_resumes_from_the_saved_step(slurm_cluster, tmp_path):
    cache, run, log, config = tmp_path / "cache", tmp_path / "run", tmp_path / "train.out", tmp_path / "train.yaml"
    # The first run could go on for ever: USR1 stops it whatever the speed of the machine. While the job
    # waits to be restarted, max_steps is lowered to a few steps past the saved one (a user may change
    # the config of a run between restarts, too), so that the test does not wait for a long run.
    _write_config(config, 100_000)
    subprocess.run([str(BIN / "radar-cache"), "run", "--config", "configs/cache/tiny.yaml", "--output", str(cache),
                    "--progress", "false"], cwd=REPO, check=True, capture_output=True, timeout=300)
    job = slurm_cluster.sbatch(
        "--gres=none", "--cpus-per-task=1", "--time=00:15:00", f"--output={log}",
        "slurm/train.sbatch", str(config), str(run), *FAST_TRAINING, "--trainer.log_every_n_steps", "1",
        "--model.output.save_every_n_steps", "1000000",  # no step checkpoint: only USR1 saves one
        "--model.output.export_every_n_steps", str(EXPORT_EVERY),
        env={**CPU, "CACHE_DIR": str(cache)}, cwd=REPO)
    explain = lambda: f"scontrol: {slurm_cluster.show_job(job)}\n{tail_logs(tmp_path)}"
    try:
        wait_for(lambda: (run / f"step-{EXPORT_EVERY:06d}").is_dir(), JOB_TIMEOUT_S, "training to start", explain)
        slurm_cluster.run("scancel", "--signal=USR1", job)
        wait_for(lambda: _pending_after_requeue(slurm_cluster, job), 120, "the job to be requeued", explain)
        hpc = run / "hpc_ckpt_1.ckpt"
        assert hpc.is_file(), sorted(p.name for p in run.iterdir())
        assert not (run / "checkpoints" / "last.ckpt").exists()  # so the restart must use the hpc checkpoint
        saved = torch.load(hpc, map_location="cpu", weights_only=True)
        saved_step = saved["global_step"]  # optimizer steps done
        # the step the logger goes on from (Lightning's own counter; it may count the batch in progress)
        saved_log_step = saved["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"]
        assert saved_step >= EXPORT_EVERY
        max_steps = saved_step + MORE_STEPS
        _write_config(config, max_steps)
        start_requeued_now(slurm_cluster, job, explain)
        states = wait_final_states(slurm_cluster, [job], 1, JOB_TIMEOUT_S, tmp_path)
    finally:
        cancel(slurm_cluster, [job])

    assert states[job] == ("COMPLETED", "0:0"), explain()
    assert slurm_cluster.show_job(job)["Restarts"] == "1"
    text = log.read_text()  # both runs, thanks to --open-mode=append
    assert re.search(rf"restart 1 on .*resuming from {re.escape(str(hpc))}", text), text[-3000:]

    files = _event_files(run / "tb")
    assert len(files) >= 2, files
    assert _scalar_steps(files[0])[0] == 0  # the first run started from scratch
    # The restarted run logged one point per optimizer step (log_every_n_steps 1) and ended at global step
    # max_steps (last.ckpt, below): it did exactly the steps from the saved one on, not from 0.
    steps = _scalar_steps(files[-1])
    assert len(steps) == max_steps - saved_step, (saved_step, max_steps, steps)
    assert steps == list(range(steps[0], steps[0] + len(steps))), steps
    # Its logger went on from the saved counter; Lightning adds 1 to it when the save interrupted a batch.
    assert steps[0] in (saved_log_step, saved_log_step + 1), (saved_log_step, steps)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == max_steps
    assert (run / "final" / "adapter_model.safetensors").is_file()
    assert not list(run.glob("hpc_ckpt_*.ckpt"))
