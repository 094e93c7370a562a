"""The real slurm/ job scripts on a real (local, one-node, CPU-only) SLURM cluster, with the tiny configs:
the whole pipeline, resuming a cache array, a failing cache array cancelling what depends on it, and a
training job requeued by USR1 that resumes from its checkpoint at the saved step."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slurm_cluster import FAST_TRAINING, REPO, Cluster, cancel, tail_logs, wait_final_states

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]

BIN = Path(sys.executable).parent  # the venv running the tests holds radar-cache / radar-train
CACHE_CONFIG = "configs/cache/tiny.yaml"
TRAIN_CONFIG = "configs/train/tiny.yaml"
NUM_WORKERS = 2
# CPU only: no GPUs (--gres=none), one CPU per task, so that the two array tasks run side by side on 2 cores,
# and so do the two training ranks (DDP over gloo, started by srun like one rank per GPU).
TRAIN_RANKS = 2
CPU = {"GPUS_PER_TASK": "0", "GPUS_PER_NODE": "0", "RANKS_PER_NODE": str(TRAIN_RANKS), "CACHE_CPUS": "1",
       "TRAIN_CPUS": "1", "CACHE_TIME": "00:15:00", "TRAIN_TIME": "00:15:00", "RADAR_BIN": str(BIN)}
PIPELINE_STEPS = 4
# folders as a user may name them: sbatch splits --export at a comma, and reads a "%" of --output as a pattern
CACHE, LOGS = "cache,v2", "logs 100%u"
JOB_TIMEOUT_S = 420


def _pipeline_env(out: Path, **extra: str) -> dict[str, str]:
    return {**CPU, "CACHE_CONFIG": CACHE_CONFIG, "TRAIN_CONFIG": TRAIN_CONFIG, "NUM_WORKERS": str(NUM_WORKERS),
            "CACHE_DIR": str(out / CACHE), "RUN_DIR": str(out / "run"), "LOG_DIR": str(out / LOGS),
            "TRAIN_ARGS": " ".join(["--trainer.max_steps", str(PIPELINE_STEPS), *FAST_TRAINING]), **extra}


def _job_ids(stdout: str) -> dict[str, str]:
    m = re.search(r"^jobs: cache=(\d+) verify=(\d+) train=(\d+)$", stdout, re.M)
    assert m, f"pipeline.sh printed no job ids:\n{stdout}"
    return dict(zip(("cache", "verify", "train"), m.groups()))


def _submit_pipeline(cluster: Cluster, out: Path, **extra: str):
    proc = cluster.run("bash", str(REPO / "slurm" / "pipeline.sh"), env=_pipeline_env(out, **extra), cwd=out)
    ids = _job_ids(proc.stdout)
    try:
        states = wait_final_states(cluster, list(ids.values()), NUM_WORKERS + 2, JOB_TIMEOUT_S, out / LOGS)
    finally:
        cancel(cluster, ids.values())
    return proc.stdout, ids, states


@pytest.fixture(scope="module")
def pipeline(slurm_cluster, tmp_path_factory):
    """slurm/pipeline.sh run once to the end: (folder, pipeline.sh stdout, job ids, sacct states)."""
    out = tmp_path_factory.mktemp("pipeline")
    stdout, ids, states = _submit_pipeline(slurm_cluster, out)
    return out, stdout, ids, states


def test_pipeline_jobs_all_complete(pipeline):
    out, stdout, ids, states = pipeline
    expected = {f"{ids['cache']}_{i}" for i in range(NUM_WORKERS)} | {ids["verify"], ids["train"]}
    assert set(states) == expected, tail_logs(out / LOGS)
    bad = {job: s for job, s in states.items() if s != ("COMPLETED", "0:0")}
    assert not bad, f"jobs not COMPLETED: {bad}\n{tail_logs(out / LOGS)}"


def test_pipeline_prints_where_the_outputs_will_be(pipeline):
    out, stdout, ids, _ = pipeline
    assert f"-> {out / CACHE}" in stdout
    assert f"-> {out / 'run'}" in stdout
    assert f"adapter: {out / 'run'}/final/" in stdout
    assert f"squeue -j {ids['cache']},{ids['verify']},{ids['train']}" in stdout


def test_pipeline_cache_verifies(pipeline):
    out = pipeline[0]
    proc = subprocess.run([str(BIN / "radar-cache"), "verify", str(out / CACHE)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in (out / CACHE).glob("shard-*.zarr"))  # and it is not empty


def test_pipeline_training_exports_an_adapter_and_leaves_no_requeue_checkpoint(pipeline):
    from safetensors.torch import load_file

    run = pipeline[0] / "run"
    final = run / "final"
    assert (final / "adapter_config.json").is_file(), sorted(p.name for p in run.iterdir())
    tensors = load_file(final / "adapter_model.safetensors")
    assert tensors and all("lora_" in k for k in tensors), list(tensors)[:5]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == PIPELINE_STEPS
    assert not list(run.glob("hpc_ckpt_*.ckpt"))


def _shard_files(cache: Path) -> dict[str, int]:
    """{path inside the cache: modification time (ns)} of every file of every shard."""
    return {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in cache.glob("shard-*.zarr/**/*") if p.is_file()}


def test_pipeline_training_runs_one_rank_per_srun_task(pipeline):
    out, _, ids, _ = pipeline
    text = (out / LOGS / f"radar-train-{ids['train']}.out").read_text()
    ranks = set(re.findall(rf"GLOBAL_RANK: (\d+), MEMBER: \d+/{TRAIN_RANKS}", text))  # Lightning, one line per rank
    assert ranks == {str(r) for r in range(TRAIN_RANKS)}, text[-3000:]
    assert f"cache {out / CACHE} (zarr)" in text, text[-3000:]  # (the cache written, whose name holds a comma)


def test_resubmitted_cache_array_skips_the_finished_shards(slurm_cluster, pipeline):
    out, _, ids, _ = pipeline
    cache = out / CACHE
    before = _shard_files(cache)
    logs = out / "resubmit"
    logs.mkdir()
    job = slurm_cluster.sbatch(f"--array=0-{NUM_WORKERS - 1}", "--gres=none", "--cpus-per-task=1",
                               f"--output={logs}/%x-%A_%a.out", "slurm/cache.sbatch", CACHE_CONFIG, str(cache),
                               env=CPU, cwd=REPO)
    states = wait_final_states(slurm_cluster, [job], NUM_WORKERS, JOB_TIMEOUT_S, logs)
    assert all(s == ("COMPLETED", "0:0") for s in states.values()), f"{states}\n{tail_logs(logs)}"
    assert _shard_files(cache) == before  # not one shard file rewritten
    text = "\n".join(p.read_text() for p in logs.glob("*.out"))
    assert len(re.findall(r"wrote 0 shards", text)) == NUM_WORKERS, text


def test_failing_cache_array_cancels_verify_and_training(slurm_cluster, tmp_path):
    # an invalid plan is refused on the login node before anything is submitted (radar-cache run --check) ...
    before = slurm_cluster.run("squeue", "-h", "-o", "%i").stdout.split()
    proc = slurm_cluster.run("bash", str(REPO / "slurm" / "pipeline.sh"), check=False, cwd=tmp_path,
                             env=_pipeline_env(tmp_path, CACHE_ARGS="--plan.shard_size 0"))
    assert proc.returncode == 2 and "plan.shard_size must be >= 1" in proc.stderr, proc.stderr
    # (no job that was not queued before: a job of an earlier test may have left the queue since)
    assert set(slurm_cluster.run("squeue", "-h", "-o", "%i").stdout.split()) <= set(before)
    # ... and with that check off, every array task exits with status 2, so nothing after it may run
    _, ids, states = _submit_pipeline(slurm_cluster, tmp_path, CACHE_ARGS="--plan.shard_size 0", CHECK="0")
    assert {states[f"{ids['cache']}_{i}"][0] for i in range(NUM_WORKERS)} == {"FAILED"}, states
    assert states[ids["verify"]][0] == "CANCELLED", states
    assert states[ids["train"]][0] == "CANCELLED", states
    assert not (tmp_path / "run").exists()


def test_cluster_runs_an_array_with_srun_steps(slurm_cluster, tmp_path):
    # the cluster itself, apart from our scripts: an array of srun steps, job output files, accounting
    job = slurm_cluster.sbatch("--array=0-1", "--ntasks=1", "--cpus-per-task=1", f"--output={tmp_path}/a_%A_%a.out",
                               "--wrap", "srun echo task=$SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT")
    states = wait_final_states(slurm_cluster, [job], 2, 120, tmp_path)
    assert states == {f"{job}_0": ("COMPLETED", "0:0"), f"{job}_1": ("COMPLETED", "0:0")}
    assert (tmp_path / f"a_{job}_1.out").read_text().strip() == "task=1 of 2"


def test_resubmitted_training_resumes_from_the_last_checkpoint_of_its_run_folder(slurm_cluster, pipeline):
    out = pipeline[0]
    run, logs = out / "run", out / "resubmit-train"
    logs.mkdir()
    more = PIPELINE_STEPS + 2  # the finished run, given 2 more steps
    job = slurm_cluster.sbatch("--gres=none", "--cpus-per-task=1", f"--output={logs}/train.out",
                               "slurm/train.sbatch", TRAIN_CONFIG, str(run), "--trainer.max_steps", str(more),
                               *FAST_TRAINING, env={**CPU, "CACHE_DIR": str(out / CACHE)}, cwd=REPO)
    states = wait_final_states(slurm_cluster, [job], 1, JOB_TIMEOUT_S, logs)
    assert states[job] == ("COMPLETED", "0:0"), tail_logs(logs)
    text = (logs / "train.out").read_text()
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'}" in text, text[-3000:]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == more
