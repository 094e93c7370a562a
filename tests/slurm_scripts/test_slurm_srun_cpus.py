"""The job scripts hand the job's --cpus-per-task to their srun steps: Slurm >= 22.05 srun no longer takes it
from the batch allocation but from SRUN_CPUS_PER_TASK, so a cache worker or training rank got one CPU while its
data loader ran several workers."""
from __future__ import annotations

import pytest

JOBS = {  # script: its arguments
    "cache.sbatch": ("configs/cache.yaml", "out"),
    "verify.sbatch": ("out",),
    "train.sbatch": ("configs/train.yaml", "run"),
    "fid.sbatch": ("configs/generate.yaml", "out"),
}


def _srun_calls(slurm, script, **env):
    slurm.config("cache.yaml", "output: out\n")
    slurm.config("train.yaml", "trainer:\n  default_root_dir: run\n")
    (slurm.project / "run").mkdir()   # what the real radar-train makes
    proc = slurm.bash(script, *JOBS[script], cwd=slurm.project, RADAR_DIR=str(slurm.project), **env)
    assert proc.returncode == 0, proc.stderr
    calls = slurm.calls("srun")
    assert len(calls) == 1, calls
    return calls


@pytest.mark.parametrize("script", JOBS)
def test_srun_steps_get_the_jobs_cpus_per_task(slurm, script):
    [call] = _srun_calls(slurm, script, SLURM_CPUS_PER_TASK="8")
    assert call["env"].get("SRUN_CPUS_PER_TASK") == "8", call


@pytest.mark.parametrize("script", JOBS)
def test_without_cpus_per_task_srun_is_left_its_default(slurm, script):
    [call] = _srun_calls(slurm, script)
    assert "SRUN_CPUS_PER_TASK" not in call["env"], call
