"""slurm/env.sh config_value reads the configs' folders from `--print_config` YAML with PyYAML: long values with
spaces, which the YAML wraps onto continuation lines, and quoted ones come back whole (pipeline.sh, train.sbatch)."""
from __future__ import annotations

import shlex

import pytest

LONG = "tiny lora seed 1 with a name long enough for the printed YAML to wrap it onto a second line"
VALUES = {
    "wrapped": f"/tmp/x/checkpoints/{LONG}",
    "quoted and wrapped": f"cache/run #1: {LONG}",
    "short": "cache/tiny",
}


def _dry_run_jobs(stderr: str) -> dict[str, list[str]]:
    """{script name: its arguments} of the sbatch commands that pipeline.sh --dry-run printed."""
    jobs = {}
    for line in stderr.splitlines():
        words = shlex.split(line)
        if "sbatch" not in words:
            continue
        rest = words[words.index("sbatch") + 1:]
        script = next(i for i, w in enumerate(rest) if not w.startswith("-"))
        jobs[rest[script].rsplit("/", 1)[-1]] = rest[script + 1:]
    return jobs


@pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
def test_pipeline_takes_the_configs_folders_whole(slurm, value):
    cache_dir, run_dir = f"{value}/cache", f"{value}/run"
    cache = slurm.config("cache.yaml", f"output: {cache_dir!r}\nbatch_size: 16\n")
    train = slurm.config("train.yaml", f"trainer:\n  max_steps: 10\n  default_root_dir: {run_dir!r}\n  devices: 1\n")
    proc = slurm.bash("pipeline.sh", "--dry-run", CACHE_CONFIG=cache, TRAIN_CONFIG=train)
    assert proc.returncode == 0, proc.stderr
    jobs = _dry_run_jobs(proc.stderr)
    assert jobs["cache.sbatch"][:2] == [cache, cache_dir], proc.stderr
    assert jobs["verify.sbatch"] == [cache_dir], proc.stderr
    assert jobs["train.sbatch"][:2] == [train, run_dir], proc.stderr
    assert f"-> {run_dir}" in proc.stdout or f"/{run_dir}" in proc.stdout, proc.stdout


def test_train_sbatch_takes_the_configs_run_folder_whole(slurm, tmp_path):
    run_dir = tmp_path / "checkpoints" / LONG
    run_dir.mkdir(parents=True)
    train = slurm.config("train.yaml", f"trainer:\n  default_root_dir: {str(run_dir)!r}\n  devices: 1\n")
    proc = slurm.bash("train.sbatch", train, RADAR_DIR=str(slurm.project))
    fits = slurm.calls("radar-train")
    assert len(fits) == 1, proc.stderr
    argv = fits[0]["argv"]
    assert slurm.option(argv, "--trainer.default_root_dir") == str(run_dir), proc.stderr
    assert proc.returncode == 0, proc.stderr
