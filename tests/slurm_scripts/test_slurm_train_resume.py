"""train.sbatch resumes from the newest checkpoint of its run folder: the requeue save, last.ckpt, or a step's file
written after last.ckpt (a job killed between a save's two files, or at its first save, before any last.ckpt)."""
from __future__ import annotations

import os

import pytest


def _ckpt_path(slurm, files: dict[str, float]) -> str | None:
    """The --ckpt_path train.sbatch gives radar-train for a run folder holding `files` (name: mtime)."""
    slurm.config("train.yaml", "trainer:\n  default_root_dir: run\n")
    for name, mtime in files.items():
        path = slurm.project / "run" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"checkpoint")
        os.utime(path, (mtime, mtime))
    (slurm.project / "run").mkdir(exist_ok=True)
    proc = slurm.bash("train.sbatch", "configs/train.yaml", "run", cwd=slurm.project, RADAR_DIR=str(slurm.project))
    assert proc.returncode == 0, proc.stderr
    [call] = [c for c in slurm.calls() if c["prog"] == "radar-train"]
    argv = call["argv"]
    return slurm.option(argv, "--ckpt_path")


@pytest.mark.parametrize("files, chosen", [
    ({}, None),
    ({"checkpoints/last.ckpt": 200, "checkpoints/step-000004.ckpt": 100}, "run/checkpoints/last.ckpt"),
    ({"checkpoints/last.ckpt": 100, "checkpoints/step-000006.ckpt": 200}, "run/checkpoints/step-000006.ckpt"),
    ({"checkpoints/step-000002.ckpt": 100}, "run/checkpoints/step-000002.ckpt"),
    ({"checkpoints/last.ckpt": 100, "hpc_ckpt_3.ckpt": 300, "checkpoints/step-000006.ckpt": 200},
     "run/hpc_ckpt_3.ckpt"),
    ({"checkpoints/last.ckpt": 200, "checkpoints/best-step-000008.ckpt": 300}, "run/checkpoints/last.ckpt"),
    # a user's copy of an older last.ckpt, newest after a `cp -r` of the folder: never the run's checkpoint
    ({"checkpoints/last.ckpt": 200, "checkpoints/last-backup.ckpt": 300}, "run/checkpoints/last.ckpt"),
    # nor a user's step or requeue file of another name: step-*.ckpt and hpc_ckpt_*.ckpt took them
    ({"checkpoints/last.ckpt": 200, "checkpoints/step-000006-old.ckpt": 300}, "run/checkpoints/last.ckpt"),
    ({"checkpoints/last.ckpt": 200, "hpc_ckpt_backup.ckpt": 300}, "run/checkpoints/last.ckpt"),
])
def test_train_sbatch_resumes_from_the_newest_checkpoint(slurm, files, chosen):
    assert _ckpt_path(slurm, files) == chosen


def test_a_job_requeued_before_its_first_save_goes_on_from_the_checkpoint_it_was_given(slurm):
    """RESUME=FILE, requeued (SLURM_RESTART_COUNT 1) before the run saved anything in its folder: before, the
    requeue looked only in the run folder and started the run over from step 0."""
    slurm.config("train.yaml", "trainer:\n  default_root_dir: run\n")
    (slurm.project / "other" / "checkpoints").mkdir(parents=True)
    (slurm.project / "other" / "checkpoints" / "last.ckpt").write_bytes(b"checkpoint")
    (slurm.project / "run").mkdir()
    for restart in ("0", "1"):
        slurm.clear()
        proc = slurm.bash("train.sbatch", "configs/train.yaml", "run", cwd=slurm.project, RADAR_DIR=str(slurm.project),
                          RESUME="other/checkpoints/last.ckpt", SLURM_RESTART_COUNT=restart)
        assert proc.returncode == 0, proc.stderr
        [call] = [c for c in slurm.calls() if c["prog"] == "radar-train"]
        assert call["argv"][-1] == "--ckpt_path=other/checkpoints/last.ckpt", call


def test_a_run_folder_named_with_a_leading_dash_is_a_folder(slurm):
    """(`find` took -run/... for one of its tests: the job failed before radar-train ran.)"""
    slurm.config("train.yaml", "trainer:\n  default_root_dir: run\n")
    (slurm.project / "-run").mkdir()
    (slurm.project / "-run" / "hpc_ckpt_1.ckpt").write_bytes(b"checkpoint")
    proc = slurm.bash("train.sbatch", "configs/train.yaml", "-run", cwd=slurm.project, RADAR_DIR=str(slurm.project))
    assert proc.returncode == 0, proc.stderr
    argv = [c for c in slurm.calls() if c["prog"] == "radar-train"][-1]["argv"]
    assert slurm.option(argv, "--ckpt_path") == "-run/hpc_ckpt_1.ckpt"
    assert not (slurm.project / "-run" / "hpc_ckpt_1.ckpt").exists()  # (removed after the run, as in any folder)


def test_the_end_of_the_job_removes_only_lightnings_requeue_saves(slurm):
    """`hpc_ckpt_*.ckpt` removed a user's hpc_ckpt_backup.ckpt and hpc_ckpt_notes.ckpt too."""
    slurm.config("train.yaml", "trainer:\n  default_root_dir: run\n")
    (slurm.project / "run").mkdir()
    for name in ("hpc_ckpt_2.ckpt", "hpc_ckpt_backup.ckpt", "hpc_ckpt_notes.ckpt"):
        (slurm.project / "run" / name).write_bytes(name.encode())
    proc = slurm.bash("train.sbatch", "configs/train.yaml", "run", cwd=slurm.project, RADAR_DIR=str(slurm.project))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (slurm.project / "run").iterdir()) == ["hpc_ckpt_backup.ckpt", "hpc_ckpt_notes.ckpt"]
    assert (slurm.project / "run" / "hpc_ckpt_notes.ckpt").read_bytes() == b"hpc_ckpt_notes.ckpt"


def test_an_argument_naming_the_cache_wins_over_an_exported_cache_dir(slurm):
    """The header says the arguments win; an exported CACHE_DIR (left from an earlier pipeline submission, sbatch's
    --export=ALL) came after them and replaced the cache the job named."""
    slurm.config("train.yaml", "trainer:\n  default_root_dir: run\n")
    proc = slurm.bash("train.sbatch", "configs/train.yaml", "run", "--data.caches.path=mine", cwd=slurm.project,
                      RADAR_DIR=str(slurm.project), CACHE_DIR="old")
    assert proc.returncode == 0, proc.stderr
    argv = [c for c in slurm.calls() if c["prog"] == "radar-train"][-1]["argv"]
    paths = [a for a in argv if a.startswith("--data.caches.path=")]
    assert paths[-1] == "--data.caches.path=mine", argv
