"""slurm/pipeline.sh checks the jobs' settings before it submits anything (radar-cache run --check, and the
training config parsed with TRAIN_ARGS): a wrong config, CACHE_ARGS or TRAIN_ARGS is refused on the login node,
not after a wait in the queue."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

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
