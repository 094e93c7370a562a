"""The run folder's lock (RUN/.fit.lock): two `radar-train fit` into the same folder at once both passed the
folder's checks and both ran to exit 0, leaving it mixed (config.yaml of one, final/ of the other, two
checkpoints and event files). Now the second is refused while the first runs; a lock whose owner is over
(killed on this host, the same SLURM job requeued, another host's not renewed) is taken over, so a resume is
never blocked; and the lock goes when the fit ends, however it ends."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

from radar_train.outputs import OutputError
from radar_train.train import run_lock
from tiny_training import run_train_cli

ROOT = Path(__file__).resolve().parents[2]
SLURM = ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_NAME", "SLURM_RESTART_COUNT")


@pytest.fixture(autouse=True)
def _no_slurm(monkeypatch):
    """The tests decide the SLURM job id themselves (and may run inside a SLURM job)."""
    for k in SLURM:
        monkeypatch.delenv(k, raising=False)


@pytest.fixture
def sleeper():
    """A live process of this host that is not this one (an owner that still runs)."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def _write_lock(root: Path, host: str, pid: int, job=None, age_s: float = 0.0, restart=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lock = root / ".fit.lock"
    owner = {"host": host, "pid": pid, "slurm_job_id": job, "started": "2025-01-02T03:04:05+00:00"}
    if restart is not None:
        owner["slurm_restart"] = restart
    lock.write_text(json.dumps(owner))
    if age_s:
        os.utime(lock, (time.time() - age_s, time.time() - age_s))
    return lock


def _owner(lock: Path) -> dict:
    return json.loads(lock.read_text())


def _args(cache: str, root: Path, steps: int, *extra: str, callbacks: list | None = None) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs/train/tiny.yaml"), "--trainer.default_root_dir", str(root),
            "--trainer.max_steps", str(steps), "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks", json.dumps(callbacks or []),
            "--data.caches", json.dumps([{"path": cache, "train_shards": "0-1", "val_shards": "14"}]),
            "--data.batch_size", "4", "--data.val_batch_size", "4", "--data.num_workers", "0",
            "--model.output.save_every_n_steps", "1000", "--model.monitor.images_every_n_steps", "0",
            "--model.monitor.train_metrics_every_n_steps", "0", *extra]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_fit_into_a_folder_a_live_fit_holds_is_one_error_line_and_writes_nothing(tiny_cache, tmp_path, sleeper,
                                                                                     capsys):
    root = tmp_path / "run"
    _write_lock(root, socket.gethostname(), sleeper, job="4242")
    before = _tree(root)
    assert run_train_cli(_args(tiny_cache, root, 2)) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --trainer.default_root_dir {root} is in use by radar-train fit {socket.gethostname()}:{sleeper} "
        f"(SLURM job 4242) since 2025-01-02T03:04:05+00:00: wait for it to end, or choose another folder")
    assert _tree(root) == before


def test_a_rank_srun_started_other_than_0_neither_judges_nor_takes_the_lock(tiny_cache, tmp_path, sleeper,
                                                                            monkeypatch):
    """Under srun (slurm/train.sbatch) every rank is started with its SLURM_PROCID and no LOCAL_RANK: rank 1,
    starting after its rank 0 took the lock, refused that lock as another fit's (and the job failed). The fit here
    is one process standing for rank 1 of a two-process job (a real one waits for its rank 0): the refusal of a
    rank variable beside a one-process trainer, a stray one then, is left out."""
    from radar_train.cli import train

    root = tmp_path / "run"
    lock = _write_lock(root, socket.gethostname(), sleeper, job="7", restart=0)  # rank 0 of the same job, alive
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setattr(train, "check_rank_variables", lambda world_size: None)
    assert run_train_cli(_args(tiny_cache, root, 1)) == 0
    assert _owner(lock)["pid"] == sleeper  # rank 0's lock, untouched


def test_a_dead_fits_lock_is_taken_over_held_while_the_fit_runs_and_removed_at_its_end(tiny_cache, tmp_path):
    """A folder holding only the lock of a fit killed on this host counts as empty: the fit runs, holding the
    lock (its own pid) until it ends, and leaves the run folder a fit leaves (no lock)."""
    root = tmp_path / "run"
    _write_lock(root, socket.gethostname(), _dead_pid())
    seen = []
    release = run_lock.RunLock.release

    def spy(self):
        seen.append(_owner(self.path) if self.path.exists() else None)
        release(self)

    with mock.patch.object(run_lock.RunLock, "release", spy):
        assert run_train_cli(_args(tiny_cache, root, 2)) == 0
    assert [s and (s["host"], s["pid"]) for s in seen] == [(socket.gethostname(), os.getpid())]
    assert sorted(p.name for p in root.iterdir()) == ["checkpoints", "config.yaml", "final"]


def test_an_earlier_run_of_our_slurm_job_is_taken_over_a_live_fit_of_the_same_run_is_not(tmp_path, sleeper,
                                                                                           monkeypatch):
    """A requeued job's previous incarnation (same job id, a lower SLURM_RESTART_COUNT) is over, whatever its pid
    (here one that still runs, as a reused pid would): its lock is taken over. A live fit of the same job and run
    (two srun steps, two shells of one salloc) or of another job is refused."""
    root = tmp_path / "run"
    lock = _write_lock(root, socket.gethostname(), sleeper, job="77")  # (a lock without slurm_restart: run 0)
    for job, restart in (("78", "1"), ("77", None), ("77", "0")):
        monkeypatch.setenv("SLURM_JOB_ID", job)
        if restart is None:
            monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
        else:
            monkeypatch.setenv("SLURM_RESTART_COUNT", restart)
        with pytest.raises(OutputError, match=f"in use by radar-train fit .*:{sleeper} \\(SLURM job 77\\)"):
            run_lock.acquire(root, "--trainer.default_root_dir")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    held = run_lock.acquire(root, "--trainer.default_root_dir")
    try:
        assert _owner(lock)["pid"] == os.getpid() and _owner(lock)["slurm_job_id"] == "77"
        assert _owner(lock)["slurm_restart"] == 1
    finally:
        held.release()
    assert sorted(root.iterdir()) == []


def test_a_lock_left_by_this_same_process_is_taken_over(tmp_path):
    """An earlier fit of this process (a notebook, a script calling main twice) that did not remove its lock."""
    root = tmp_path / "run"
    lock = _write_lock(root, socket.gethostname(), os.getpid())
    run_lock.check_not_in_use(root, "--trainer.default_root_dir")
    held = run_lock.acquire(root, "--trainer.default_root_dir")
    assert _owner(lock)["started"] != "2025-01-02T03:04:05+00:00"
    held.release()
    assert not lock.exists()


@pytest.mark.parametrize("target", ["nowhere", ".fit.lock"])  # dangling, and a link to itself
def test_a_lock_that_is_a_link_is_one_line_and_stays(tmp_path, target):
    root = tmp_path / "run"
    root.mkdir()
    (root / ".fit.lock").symlink_to(target)
    run_lock.check_not_in_use(root, "--trainer.default_root_dir")  # (no run's lock: acquire says what it is)
    with pytest.raises(OutputError, match=r"its lock .*\.fit\.lock is a link, which no run makes: remove it"):
        run_lock.acquire(root, "--trainer.default_root_dir")
    assert (root / ".fit.lock").is_symlink() and [p.name for p in root.iterdir()] == [".fit.lock"]


def test_another_hosts_lock_is_refused_while_renewed_and_taken_over_once_stale(tmp_path):
    root = tmp_path / "run"
    lock = _write_lock(root, "elsewhere.example", 12345, age_s=run_lock.STALE_AFTER_S - 60)
    with pytest.raises(OutputError, match="in use by radar-train fit elsewhere.example:12345 since"):
        run_lock.check_not_in_use(root, "--trainer.default_root_dir")
    with pytest.raises(OutputError, match="in use by radar-train fit elsewhere.example:12345 since"):
        run_lock.acquire(root, "--trainer.default_root_dir")
    os.utime(lock, (time.time() - run_lock.STALE_AFTER_S - 60,) * 2)
    run_lock.check_not_in_use(root, "--trainer.default_root_dir")
    held = run_lock.acquire(root, "--trainer.default_root_dir")
    try:
        assert _owner(lock)["host"] == socket.gethostname()
    finally:
        held.release()
    assert not lock.exists()


def test_the_owner_renews_its_locks_mtime(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    held = run_lock.acquire(tmp_path / "run", "--trainer.default_root_dir")
    try:
        old = time.time() - 3600
        os.utime(held.path, (old, old))
        deadline = time.time() + 10
        while held.path.stat().st_mtime == old and time.time() < deadline:
            time.sleep(0.05)
        assert held.path.stat().st_mtime > old + 3000
    finally:
        held.release()
    assert not (tmp_path / "run").exists()  # the folder the lock made, still empty, goes with it


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "scripts"), str(ROOT)]),
            "OMP_NUM_THREADS": "1"}


def _start_fit(cache: str, root: Path, beacon: Path, *extra: str) -> subprocess.Popen:
    """A long fit in a subprocess, reporting its steps in `beacon`; returned once it has trained a step."""
    beacon.unlink(missing_ok=True)
    cb = [{"class_path": "step_beacon.StepBeacon", "init_args": {"path": str(beacon)}}]
    proc = subprocess.Popen([sys.executable, "-m", "radar_train.cli.train",
                             *_args(cache, root, 100000, "--trainer.val_check_interval", "1000", *extra, callbacks=cb)],
                            cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while proc.poll() is None and not beacon.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None and beacon.exists(), proc.stderr.read()[-3000:] if proc.poll() is not None else ""
    return proc


def test_a_running_fit_holds_the_folder_until_sigterm_and_a_killed_ones_lock_does_not_block_its_resume(
        tiny_cache, tmp_path, capsys):
    """The race of two fits, made deterministic: a second fit into a folder a fit is training in is refused
    (the folder then held only config.yaml, which a new fit may replace). A fit killed with SIGKILL leaves its
    lock; `--ckpt_path last` after it takes the lock over; SIGTERM (a save, exit 143) removes it; the run
    then resumes."""
    root, beacon = tmp_path / "run", tmp_path / "beacon"
    first = _start_fit(tiny_cache, root, beacon)
    try:
        assert _owner(root / ".fit.lock")["pid"] == first.pid
        config = (root / "config.yaml").read_bytes()
        assert run_train_cli(_args(tiny_cache, root, 2, "--model.lora.rank", "2")) == 2
        assert "is in use by radar-train fit" in capsys.readouterr().err.strip().splitlines()[-1]
        assert (root / "config.yaml").read_bytes() == config
    finally:
        first.kill()
        first.wait()
    assert _owner(root / ".fit.lock")["pid"] == first.pid  # kill -9: nothing ran at exit

    second = _start_fit(tiny_cache, root, beacon, "--ckpt_path", "last")  # (no checkpoint yet: from step 0)
    try:
        assert _owner(root / ".fit.lock")["pid"] == second.pid
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=120) == 143, second.stderr.read()[-3000:]
    finally:
        second.kill()
    assert not (root / ".fit.lock").exists()
    step = int(beacon.read_text())
    assert run_train_cli(_args(tiny_cache, root, step + 1, "--ckpt_path", "last")) == 0
    assert not (root / ".fit.lock").exists() and (root / "final").is_dir()


@pytest.mark.parametrize("env", [{"RANK": "1", "GROUP_RANK": "1", "LOCAL_RANK": "0"},  # torchrun, node 1
                                 {"SLURM_PROCID": "1"}, {"LOCAL_RANK": "1"}, {"NODE_RANK": "1"}])
def test_only_global_rank_0_checks_and_locks_the_run_folder(env, monkeypatch):
    """torchrun sets no NODE_RANK: local rank 0 of a second node (RANK 1, GROUP_RANK 1) took itself for rank 0,
    checked the folder and refused the lock its global rank 0 held."""
    from radar_train.cli.train import lock_taker

    for k in ("RANK", "LOCAL_RANK", "GROUP_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(k, raising=False)
    assert lock_taker()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert not lock_taker()


def test_a_killed_requeue_saves_temporary_is_the_runs_own(tmp_path):
    """A requeue save killed before the first last.ckpt leaves `.save-hpc_ckpt-1.ckpt.tmp-...` in the run
    folder's root; the restart (a new fit: no checkpoint) must not take the folder for a user's."""
    from radar_train.cli.train import check_run_folder

    root = tmp_path / "run"
    (root / "tb").mkdir(parents=True)
    (root / "checkpoints").mkdir()
    (root / f".save-hpc_ckpt-1.ckpt.tmp-182e8cdb-999999-{socket.gethostname()[:32]}").write_bytes(b"\0")
    check_run_folder(root, None, "fit", {})
