"""Talking to a (local, one-node) SLURM cluster from tests: submit, poll squeue / sacct / scontrol with
timeouts, and say what went wrong (job output files included) when a wait runs out."""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, TypeVar

REPO = Path(__file__).resolve().parents[2]
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE"}
T = TypeVar("T")
# radar-train overrides for cheap steps in the SLURM tests (the tiny config otherwise): a smaller batch, no
# image grids, no training-batch metrics, no validation.
FAST_TRAINING = ["--data.batch_size", "4", "--model.monitor.images_every_n_steps", "0",
                 "--model.monitor.train_metrics_every_n_steps", "0", "--trainer.limit_val_batches", "0"]


class SlurmError(RuntimeError):
    """A SLURM command failed or a wait ran out of time."""


@dataclass
class Cluster:
    """A reachable cluster: the environment that points the SLURM commands at it."""

    slurm_conf: str
    started_here: bool = False
    slurm_dir: Optional[str] = None
    env: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = {**os.environ, "SLURM_CONF": self.slurm_conf}

    def run(self, *args: str, check: bool = True, timeout: float = 60, env: Optional[dict] = None,
            cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
        """Run a command against this cluster; text output. Raises SlurmError (with stderr) on failure."""
        proc = subprocess.run(list(args), env={**self.env, **(env or {})}, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise SlurmError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}{proc.stdout.strip()}")
        return proc

    def sbatch(self, *args: str, env: Optional[dict] = None, cwd: Optional[Path] = None) -> str:
        """Submit and return the job id."""
        return self.run("sbatch", "--parsable", *args, env=env, cwd=cwd).stdout.strip().split(";")[0]

    def queued(self, job_ids: Iterable[str]) -> list[str]:
        """`JOBID STATE` lines of the given jobs (array tasks included) still pending or running."""
        out = self.run("squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids), check=False).stdout
        return [line for line in out.splitlines() if line.strip()]

    def show_job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, RunTime, ...)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)

    def accounting(self, job_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """{job id (array tasks as 12_0, 12_1): (state, exit code)} from sacct, allocations only."""
        out = self.run("sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", "JobID,State,ExitCode").stdout
        rows = (line.split("|") for line in out.splitlines() if line.strip())
        return {r[0]: (r[1].split()[0], r[2]) for r in rows}


def wait_for(check: Callable[[], T], timeout: float, what: str, explain: Callable[[], str] = lambda: "",
             interval: float = 0.5) -> T:
    """Poll `check()` until it returns something truthy (returned) or `timeout` seconds pass (SlurmError
    naming `what`, plus `explain()`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SlurmError(f"timed out after {timeout:.0f} s waiting for {what}\n{explain()}")
        time.sleep(interval)


def tail_logs(folder: Path, lines: int = 25) -> str:
    """The last lines of every *.out file under `folder`, for failure messages."""
    parts = []
    for f in sorted(Path(folder).rglob("*.out")):
        text = f.read_text(errors="replace").splitlines()
        parts.append(f"--- {f} (last {lines} lines)\n" + "\n".join(text[-lines:]))
    return "\n".join(parts) or f"(no *.out files under {folder})"


def wait_final_states(cluster: Cluster, job_ids: list[str], expected_records: int, timeout: float,
                      logs: Path) -> dict[str, tuple[str, str]]:
    """Wait until no given job is queued and sacct has `expected_records` records in a final state
    (accounting lags squeue by a second or two); returns sacct's {job id: (state, exit code)}."""
    explain = lambda: f"squeue: {cluster.queued(job_ids)}\nsacct: {cluster.accounting(job_ids)}\n{tail_logs(logs)}"
    wait_for(lambda: not cluster.queued(job_ids), timeout, f"jobs {job_ids} to leave the queue", explain)

    def final():
        acct = cluster.accounting(job_ids)
        done = {k: v for k, v in acct.items() if v[0] in FINAL_STATES}
        return acct if len(done) >= expected_records else None

    return wait_for(final, 30, f"{expected_records} final accounting records of {job_ids}", explain)


def start_requeued_now(cluster: Cluster, job: str, explain: Callable[[], str] = lambda: "") -> None:
    """Start a requeued job without its ~120 s hold, once the node has cleaned up after the job's first run and a
    new second has begun.

    slurmd refuses a launch whose credential was made in the same whole second as the revocation of the job's
    previous credential (``cred->ctime <= revoked``, "Job credential revoked"; the job ends FAILED 1:0 without
    running): a restart allocated 0.4 s after the requeue failed so, and one allocated in the second the node
    went idle failed so on the CI machine. The revocation happens before the node is idle, so starting two whole
    seconds after that is safe."""
    wait_for(lambda: cluster.run("sinfo", "-h", "-o", "%T").stdout.split() == ["idle"], 120,
             "the node to be idle after the first run", explain)
    idle_at = time.time()
    time.sleep(math.floor(idle_at) + 2 - idle_at)
    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")


def cancel(cluster: Cluster, job_ids: Iterable[str]) -> None:
    """Best-effort scancel (test clean-up)."""
    ids = [j for j in job_ids if j]
    if ids and shutil.which("scancel"):
        cluster.run("scancel", *ids, check=False)
