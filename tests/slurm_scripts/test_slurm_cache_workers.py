"""slurm/cache.sbatch: every worker of the split runs once, whatever the array's first index and step
(radar-cache takes the split from the array), and NUM_WORKERS=N keeps array task i as worker i of N."""
from __future__ import annotations

import pytest

from radar_train.cache.workers import resolve_workers


def _run_array(slurm, task_ids, array_env, **env):
    """Run cache.sbatch once per array task; (exit codes, {(num_workers, worker_index)} that radar-cache resolved)."""
    codes = []
    for task in task_ids:
        proc = slurm.bash("cache.sbatch", "configs/cache.yaml", "out", RADAR_DIR=str(slurm.project),
                          SLURM_JOB_ID=str(100 + task), SLURM_ARRAY_JOB_ID="99", SLURM_ARRAY_TASK_ID=str(task),
                          **array_env, **env)
        codes.append((proc.returncode, proc.stderr))
    splits = set()
    for call in slurm.calls("radar-cache"):
        argv = call["argv"]
        opt = lambda name: int(argv[argv.index(name) + 1]) if name in argv else None  # noqa: E731
        split = resolve_workers(opt("--num-workers"), opt("--worker-index"), env=call["env"])
        splits.add((split.num_workers, split.worker_index))
    return codes, splits


ARRAYS = {  # sbatch --array=...: task ids, the SLURM_ARRAY_* variables SLURM sets
    "0-3": ([0, 1, 2, 3], dict(SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="3", SLURM_ARRAY_TASK_STEP="1",
                               SLURM_ARRAY_TASK_COUNT="4")),
    "1-4": ([1, 2, 3, 4], dict(SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_MAX="4", SLURM_ARRAY_TASK_STEP="1",
                               SLURM_ARRAY_TASK_COUNT="4")),
    "0-6:2": ([0, 2, 4, 6], dict(SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="6", SLURM_ARRAY_TASK_STEP="2",
                                 SLURM_ARRAY_TASK_COUNT="4")),
}


@pytest.mark.parametrize("array", ARRAYS.values(), ids=ARRAYS.keys())
def test_every_worker_of_the_array_runs_once(slurm, array):
    task_ids, array_env = array
    codes, splits = _run_array(slurm, task_ids, array_env)
    assert all(rc == 0 for rc, _ in codes), codes
    assert splits == {(4, i) for i in range(4)}


def test_num_workers_reruns_the_given_workers(slurm):
    env = dict(SLURM_ARRAY_TASK_MIN="3", SLURM_ARRAY_TASK_MAX="5", SLURM_ARRAY_TASK_COUNT="2")
    codes, splits = _run_array(slurm, [3, 5], env, NUM_WORKERS="8")   # NUM_WORKERS=8 sbatch --array=3,5
    assert all(rc == 0 for rc, _ in codes), codes
    assert splits == {(8, 3), (8, 5)}


def test_num_workers_refuses_an_array_index_past_it(slurm):
    env = dict(SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_MAX="4", SLURM_ARRAY_TASK_COUNT="4")
    codes, splits = _run_array(slurm, [4], env, NUM_WORKERS="4")
    assert codes[0][0] == 2 and "NUM_WORKERS=4" in codes[0][1], codes
    assert not splits


@pytest.mark.parametrize("num_workers", ["08", "abc"])
def test_num_workers_that_is_not_a_count_is_named(slurm, num_workers):
    codes, splits = _run_array(slurm, [0], dict(SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_COUNT="1"),
                               NUM_WORKERS=num_workers)
    assert codes[0][0] == 2 and codes[0][1].strip().splitlines() == [
        f"error: NUM_WORKERS={num_workers} is not a number of workers (a whole number >= 1, without a leading zero)"]
    assert not splits
