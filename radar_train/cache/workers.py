"""Which worker this process is, and which device it uses.

Workers = SLURM array tasks × processes per task (torchrun / accelerate launch). Worker I of N writes the
shards s with s mod N == I; one device per process. Explicit --num-workers / --worker-index win over
what the environment says.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping, Optional

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSplit:
    num_workers: int
    worker_index: int
    source: str  # where the split came from, for the plan printout
    process_count: int = 1  # processes launched by torchrun / accelerate in this task (1 otherwise)
    process_index: int = 0

    def shards(self, num_shards: int) -> list[int]:
        return list(range(self.worker_index, num_shards, self.num_workers))


def env_int(env: Mapping[str, str], name: str, default: Optional[int] = None) -> int:
    """Integer environment variable `name` (`default` when unset or empty); ValueError naming it otherwise."""
    value = env.get(name, "")
    if value.strip() == "" and default is not None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _slurm_array(env: Mapping[str, str]) -> Optional[tuple[int, int]]:
    """(task count, task index from 0) of a SLURM array job, aware of SLURM_ARRAY_TASK_MIN and _STEP."""
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    task = env_int(env, "SLURM_ARRAY_TASK_ID")
    lo = env_int(env, "SLURM_ARRAY_TASK_MIN", 0)
    step = env_int(env, "SLURM_ARRAY_TASK_STEP", 1) or 1
    spanned = (env_int(env, "SLURM_ARRAY_TASK_MAX", task) - lo) // step + 1  # the tasks MIN..MAX by STEP
    count = env_int(env, "SLURM_ARRAY_TASK_COUNT") if "SLURM_ARRAY_TASK_COUNT" in env else spanned
    # a task off the MIN + k x STEP grid would be the same worker as the one below it (its shards written twice),
    # and a COUNT other than the grid's (an array of a list, 1,3,7) numbers no task as its place in the array
    off_grid = (task - lo) % step != 0
    if off_grid or ("SLURM_ARRAY_TASK_MAX" in env and count != spanned):
        why = (f"task {task} is not MIN + a multiple of STEP" if off_grid else
               f"COUNT is not the {spanned} tasks MIN..MAX by STEP (an array of a list of ids?)")
        raise ValueError(f"the SLURM array variables ({_slurm_variables(env)}) name no worker split: {why}; give "
                         f"--num_workers and --worker_index")
    return count, (task - lo) // step


def _slurm_variables(env: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={env[k]}" for k in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
                                                "SLURM_ARRAY_TASK_STEP", "SLURM_ARRAY_TASK_COUNT") if k in env)


def _launched_processes(env: Mapping[str, str]) -> Optional[tuple[int, int]]:
    """(world size, rank) when launched by torchrun / accelerate launch with several processes: their
    WORLD_SIZE and RANK, read without joining a process group (which waits for every rank: a --check, or a
    rank alone in a launcher's environment, waited half an hour for peers that never came)."""
    world = env_int(env, "WORLD_SIZE", 1)
    if world <= 1:
        return None
    for name in ("LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        if name in env:
            env_int(env, name)
    if "RANK" not in env:
        # (not "or give --num_workers and --worker_index": a launcher's processes split those too, so they need it)
        raise ValueError(f"environment variable WORLD_SIZE={env['WORLD_SIZE']} without RANK: not a torchrun / "
                         f"accelerate launch process (a launcher sets both); unset WORLD_SIZE")
    rank = env_int(env, "RANK")
    if not 0 <= rank < world:
        raise ValueError(f"environment variables RANK={rank} and WORLD_SIZE={world}: the rank is outside [0, {world})")
    return world, rank


def resolve_workers(num_workers: Optional[int] = None, worker_index: Optional[int] = None,
                    env: Mapping[str, str] = os.environ) -> WorkerSplit:
    """The worker split from explicit values, else the SLURM array and the launcher's processes. Both explicit
    values name this machine's share in place of the array's; a launcher's processes split it (N x W workers,
    this one I x W + rank). --num_workers alone is the whole count, this worker's index from the array and the
    launcher; --worker_index alone is this machine's place among the SLURM array's tasks, split again by the
    launcher's processes."""
    # both explicit values name the machine's share in place of the array's (`NUM_WORKERS=8 sbatch --array=3,5`: an
    # array of a list of ids, whose variables describe no evenly spaced tasks): the array is not read then
    if num_workers is not None and num_workers < 1:  # (radar-fid's message named no source: "the  make")
        raise ValueError(f"--num_workers must be >= 1, got {num_workers}")
    both = num_workers is not None and worker_index is not None
    array = None if both else _slurm_array(env)
    procs = _launched_processes(env)
    A, a = array or (1, 0)
    W, r = procs or (1, 0)
    sources = [s for s, present in (("SLURM array", array), ("torchrun/accelerate processes", procs)) if present]
    n, i = A * W, a * W + r
    if num_workers is not None or worker_index is not None:
        if not sources and (num_workers is None or worker_index is None) and (num_workers or 1) > 1:
            raise ValueError("give both --num_workers and --worker_index (no SLURM array or launcher "
                             "process rank to take the other from)")
        if num_workers is not None and worker_index is not None:
            # both: the machine's share (the SLURM array's place), split among this machine's launched processes
            # (without that, every process would write the same shards)
            sources = ["command line"] + [s for s in sources if s != "SLURM array"]
            n, i = num_workers * W, worker_index * W + r
            if not 0 <= worker_index < num_workers:
                raise ValueError(f"--worker_index {worker_index} is outside [0, num_workers={num_workers})")
        elif worker_index is not None:
            # this machine's share of the SLURM array's (in place of the array task's), which the launched processes
            # split again, as with both values (taking the whole index would make every process the same worker)
            sources = ["command line"] + sources
            if not 0 <= worker_index < A:
                raise ValueError(f"--worker_index {worker_index} is outside [0, {A}) (the "
                                 f"{'SLURM array task count' if array else 'one machine without --num_workers'}): "
                                 f"give --num_workers too")
            n, i = A * W, worker_index * W + r
        else:  # the whole count of workers, this one's index from the array and the launcher
            if num_workers < A * W:  # (said by every rank alike, before any of them writes)
                raise ValueError(f"--num_workers {num_workers} is fewer than the {A * W} workers the "
                                 f"{' × '.join(sources)} make: give at least {A * W}, or leave it out")
            sources = ["command line"] + sources
            n = num_workers
    if not 0 <= i < n:
        if "SLURM array" in sources:  # the index came from the array's variables: name them, not an option
            raise ValueError(f"the SLURM array variables make this worker {i} of {n} ({_slurm_variables(env)}): not "
                             f"one of them; give --num_workers and --worker_index, or fix the variables")
        raise ValueError(f"worker_index {i} is outside [0, num_workers={n})")
    return WorkerSplit(n, i, " × ".join(sources) or "single worker", W, r)


def resolve_device(device: str, split: WorkerSplit) -> str:
    """"auto": this process's GPU (local rank) when several processes share a node, else cuda if
    available, else cpu."""
    import torch

    if device != "auto":
        from radar_train.config import check_device

        return str(check_device(device))
    if not torch.cuda.is_available():
        return "cpu"
    if split.process_count > 1:
        from accelerate import PartialState

        return str(PartialState().device)
    return "cuda"


SHORT_PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""radar-generate's spellings of radar-cache's --precision values (the manifest records torch's)."""


def autocast_dtype(precision: str, device: str):
    """The transformer's autocast dtype (None = plain float32) and its name for the manifest."""
    import torch

    precision = SHORT_PRECISIONS.get(precision, precision)
    if precision == "auto":
        precision = "bfloat16" if device.startswith("cuda") else "float32"
    if precision != "float32" and not device.startswith("cuda"):
        log.warning("precision %s on %s is slow and not bitwise reproducible; float32 is advised on the CPU",
                    precision, device)
    return (None if precision == "float32" else getattr(torch, precision)), precision
