"""slurm/pipeline.sh --dry-run prints commands that work as printed from any folder, and that are the ones a
real run submits."""
from __future__ import annotations

import re
import subprocess


def _dry_run(slurm, **env):
    slurm.config("cache.yaml", "output: cache/tiny\n")
    slurm.config("train.yaml", "trainer:\n  default_root_dir: checkpoints/tiny\n")
    settings = dict(CACHE_CONFIG="configs/cache.yaml", TRAIN_CONFIG="configs/train.yaml", **env)
    proc = slurm.bash("pipeline.sh", "--dry-run", **settings)
    assert proc.returncode == 0, proc.stderr
    assert not slurm.calls(), "--dry-run submitted something"
    return proc.stderr, settings


def _fill_in_job_ids(printed: str) -> str:
    return re.sub(r"\\<(cache|verify)\\>", lambda m: {"cache": "1001", "verify": "1002"}[m[1]], printed)


def test_printed_commands_work_from_another_folder(slurm, tmp_path):
    printed, _ = _dry_run(slurm)
    assert not (slurm.project / "logs").exists()
    paste_here = tmp_path / "somewhere else"
    paste_here.mkdir()
    proc = subprocess.run(["bash", "-euc", _fill_in_job_ids(printed)], cwd=paste_here, capture_output=True,
                          text=True, env=slurm.env(), timeout=60)
    assert proc.returncode == 0, f"{printed}\n{proc.stderr}"
    calls = slurm.calls("sbatch")
    assert len(calls) == 3, calls
    assert all(c["RADAR_DIR"] == str(slurm.project) for c in calls), calls   # the jobs find the project
    assert (slurm.project / "logs" / "slurm").is_dir()
    assert all(o.startswith(str(slurm.project) + "/") for c in calls for o in
               [a.split("=", 1)[1] for a in c["argv"] if a.startswith("--output=")]), calls


def test_dry_run_prints_what_a_real_run_submits(slurm):
    printed, settings = _dry_run(slurm, LOG_DIR="my logs")
    subprocess.run(["bash", "-euc", _fill_in_job_ids(printed)], cwd=slurm.elsewhere, env=slurm.env(),
                   check=True, capture_output=True, timeout=60)
    dry = slurm.calls("sbatch")
    slurm.clear()
    proc = slurm.bash("pipeline.sh", **settings)
    assert proc.returncode == 0, proc.stderr
    real = slurm.calls("sbatch")
    assert [[a for a in c["argv"] if a != "--parsable"] for c in real] == [c["argv"] for c in dry]
    assert [c["RADAR_DIR"] for c in real] == [c["RADAR_DIR"] for c in dry]
    assert "jobs: cache=1001 verify=1002 train=1003" in proc.stdout
    assert f"logs:   {slurm.project}/my logs/" in proc.stdout
