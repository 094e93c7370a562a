"""slurm/pipeline.sh checks the jobs' settings before it submits anything (radar-cache run --check, and the
training config parsed with TRAIN_ARGS): a wrong config, CACHE_ARGS or TRAIN_ARGS is refused on the login node,
not after a wait in the queue."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _settings(slurm, **env):
    slurm.config("train.yaml", "trainer:\n  default_root_dir: checkpoints/tiny\n")
    return dict(CACHE_CONFIG="configs/cache.yaml", TRAIN_CONFIG="configs/train.yaml", CACHE_DIR="cache/tiny",
                RUN_DIR="checkpoints/tiny", **env)


def test_a_refused_check_submits_nothing_and_creates_no_log_folder(slurm):
    slurm.config("cache.yaml", "output: cache/tiny\n")
    proc = slurm.bash("pipeline.sh", **_settings(slurm, STUB_CHECK_ERROR="invalid radar-cache configuration: x"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: invalid radar-cache configuration: x"]
    assert slurm.calls("sbatch") == [] and not (slurm.project / "logs").exists()
    proc = slurm.bash("pipeline.sh", **_settings(slurm, STUB_CHECK_ERROR="x", CHECK="0"))  # skipped: submitted
    assert proc.returncode == 0, proc.stderr
    assert len(slurm.calls("sbatch")) == 3


def test_the_real_radar_cache_check_refuses_bad_cache_args_before_any_submission(slurm):
    """With the project's own radar-cache: CACHE_ARGS that give a plan both of its sizes are refused with
    radar-cache's one line; the same settings without them are submitted."""
    shutil.copy(REPO / "configs" / "cache" / "tiny.yaml", slurm.project / "configs" / "cache.yaml")
    real_bin = str(Path(sys.executable).parent)
    bad = _settings(slurm, RADAR_BIN=real_bin, NUM_WORKERS="2", CACHE_ARGS="--plan.num_samples 64")
    proc = slurm.bash("pipeline.sh", **bad)
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "plan.images_per_class and plan.num_samples" in err[0], proc.stderr
    assert slurm.calls("sbatch") == []
    assert not (slurm.project / "cache").exists()  # the check writes nothing
    proc = slurm.bash("pipeline.sh", **{**bad, "CACHE_ARGS": ""})
    assert proc.returncode == 0, proc.stderr
    assert len(slurm.calls("sbatch")) == 3
    assert not (slurm.project / "cache").exists()


def test_the_real_radar_train_refuses_an_unknown_train_arg_before_any_submission(slurm):
    shutil.copy(REPO / "configs" / "cache" / "tiny.yaml", slurm.project / "configs" / "cache.yaml")
    shutil.copy(REPO / "configs" / "train" / "tiny.yaml", slurm.project / "configs" / "train.yaml")
    settings = dict(CACHE_CONFIG="configs/cache.yaml", TRAIN_CONFIG="configs/train.yaml", CACHE_DIR="cache/tiny",
                    RUN_DIR="checkpoints/tiny", RADAR_BIN=str(Path(sys.executable).parent),
                    TRAIN_ARGS="--trainer.max_stepz 5")
    proc = slurm.bash("pipeline.sh", **settings)
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(err) == 1 and "--trainer.max_stepz" in err[0], proc.stderr
    assert slurm.calls("sbatch") == []


def test_arguments_after_the_option_and_a_run_dir_that_is_a_file_are_refused_before_any_submission(slurm):
    """(NUM_WORKERS=8 after the option was dropped without a word; a RUN_DIR that is a file was refused only in the
    training job, after the cache array and verify had run for it.)"""
    slurm.config("cache.yaml", "output: cache/tiny\n")
    proc = slurm.bash("pipeline.sh", "", "NUM_WORKERS=8", **_settings(slurm))
    assert proc.returncode == 2 and proc.stderr.startswith("usage: slurm/pipeline.sh [--dry-run]"), proc.stderr
    (slurm.project / "a_file").write_text("mine\n")
    proc = slurm.bash("pipeline.sh", **_settings(slurm) | {"RUN_DIR": "a_file"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: RUN_DIR a_file is an existing file: give a folder"]
    assert slurm.calls("sbatch") == [] and (slurm.project / "a_file").read_text() == "mine\n"


def test_a_radar_bin_without_the_commands_is_one_error_line(slurm, tmp_path):
    """(The folders were read through `$(radar_exe ...)` inside another command substitution: its failure went on
    to run a command named "", exit 127.)"""
    slurm.config("cache.yaml", "output: cache/tiny\n")
    settings = _settings(slurm, RADAR_BIN=str(tmp_path / "nothing_here"))
    del settings["CACHE_DIR"]
    proc = slurm.bash("pipeline.sh", "--dry-run", **settings)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: radar-cache not found"), proc.stderr
    # (CHECK=0 is documented for a login node that cannot run the commands: it needs both folders set)
    assert lines[1] == ("  (the pipeline reads the unset CACHE_DIR / RUN_DIR from the configs with the commands: set "
                        "both to submit from a machine without them, with CHECK=0)")
    proc = slurm.bash("pipeline.sh", "--dry-run", **settings, CACHE_DIR="cache/tiny", CHECK="0")
    assert proc.returncode == 0, proc.stderr


def test_counts_that_bash_arithmetic_would_misread_are_refused_naming_the_setting(slurm):
    """GPUS_PER_TASK=08 (octal to bash: an error inside a test, which read as false) submitted the cache array with
    --gres=none; GPUS_PER_NODE=08 stopped on an unbound variable naming nothing; NODES=0 or TRAIN_CPUS=0 passed."""
    slurm.config("cache.yaml", "output: cache/tiny\n")
    for env, said in [
            (dict(GPUS_PER_TASK="08"), "GPUS_PER_TASK=08 is not a whole number (digits, without a leading zero)"),
            (dict(GPUS_PER_NODE="08"), "GPUS_PER_NODE=08 is not a whole number (digits, without a leading zero)"),
            (dict(GPUS_PER_NODE="4x"), "GPUS_PER_NODE=4x is not a whole number (digits, without a leading zero)"),
            (dict(NUM_WORKERS="08"), "NUM_WORKERS=08 is not a whole number (digits, without a leading zero)"),
            (dict(NODES="0"), "NODES=0: it must be at least 1"),
            (dict(TRAIN_CPUS="0"), "TRAIN_CPUS=0: it must be at least 1")]:
        proc = slurm.bash("pipeline.sh", **_settings(slurm, CHECK="0", **env))
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"error: {said}"], (env, proc.stderr)
    assert slurm.calls("sbatch") == []
    proc = slurm.bash("pipeline.sh", **_settings(slurm, CHECK="0", GPUS_PER_TASK="0", GPUS_PER_NODE="2"))
    assert proc.returncode == 0, proc.stderr
    cache, _, train = (call["argv"] for call in slurm.calls("sbatch"))
    assert "--gres=none" in cache and "--gres=gpu:2" in train and "--ntasks-per-node=2" in train


def test_the_real_radar_train_refuses_a_run_dir_of_a_users_files_before_any_submission(slurm):
    """(The pipeline only parsed the training config: a RUN_DIR holding a user's files was refused by the training
    job, after the cache array and verify had run for it.) A RUN_DIR holding a run to resume is the job's to check."""
    shutil.copy(REPO / "configs" / "cache" / "tiny.yaml", slurm.project / "configs" / "cache.yaml")
    shutil.copy(REPO / "configs" / "train" / "tiny.yaml", slurm.project / "configs" / "train.yaml")
    run = slurm.project / "checkpoints" / "tiny"
    run.mkdir(parents=True)
    (run / "plan.md").write_text("mine\n")
    settings = dict(CACHE_CONFIG="configs/cache.yaml", TRAIN_CONFIG="configs/train.yaml", CACHE_DIR="cache/tiny",
                    RUN_DIR="checkpoints/tiny", RADAR_BIN=str(Path(sys.executable).parent))
    proc = slurm.bash("pipeline.sh", **settings)
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert "is a folder that is not empty and not a run folder (it holds plan.md)" in err[0]
    assert slurm.calls("sbatch") == [] and sorted(p.name for p in run.iterdir()) == ["plan.md"]
    assert (run / "plan.md").read_text() == "mine\n"
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"a run to resume")
    proc = slurm.bash("pipeline.sh", **settings)  # (the checkpoint the job would resume from is damaged)
    assert proc.returncode == 2 and "last.ckpt" in proc.stderr and slurm.calls("sbatch") == [], proc.stderr
    import torch

    torch.save({"global_step": 3}, run / "checkpoints" / "last.ckpt")
    proc = slurm.bash("pipeline.sh", **settings)
    assert proc.returncode == 0, proc.stderr
    assert len(slurm.calls("sbatch")) == 3


@pytest.mark.parametrize("name", ["hpc_ckpt_backup.ckpt", "checkpoints/last-backup.ckpt"])
def test_a_users_checkpoint_copy_in_a_run_dir_to_resume_is_refused_before_any_submission(slurm, name):
    """The pipeline took any RUN_DIR/hpc_ckpt_*.ckpt or checkpoints/*.ckpt for a run to resume and only parsed the
    config; the training job, which resumes from the run's own hpc_ckpt_<N>, step-<N> and last.ckpt only, then
    refused the folder after the cache array had run."""
    import torch

    shutil.copy(REPO / "configs" / "cache" / "tiny.yaml", slurm.project / "configs" / "cache.yaml")
    shutil.copy(REPO / "configs" / "train" / "tiny.yaml", slurm.project / "configs" / "train.yaml")
    run = slurm.project / "checkpoints" / "tiny"
    (run / name).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": 3}, run / name)
    proc = slurm.bash("pipeline.sh", CACHE_CONFIG="configs/cache.yaml", TRAIN_CONFIG="configs/train.yaml",
                      CACHE_DIR="cache/tiny", RUN_DIR="checkpoints/tiny", RADAR_BIN=str(Path(sys.executable).parent))
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert Path(name).name in err[0] and slurm.calls("sbatch") == []
