"""verify.sbatch hands its folder to radar-cache verify after `--`: a cache folder named --help (or -x) is checked
as a folder. (radar-cache printed its help and exited 0: the verify job succeeded without checking anything, and
the training job its success releases went on.)"""
from __future__ import annotations

import sys
from pathlib import Path


def test_a_cache_folder_named_like_an_option_is_verified_as_a_folder(slurm):
    proc = slurm.bash("verify.sbatch", "--help", cwd=slurm.project, RADAR_DIR=str(slurm.project))
    assert proc.returncode == 0, proc.stderr
    [call] = [c for c in slurm.calls() if c["prog"] == "radar-cache"]
    assert call["argv"] == ["verify", "--", "--help"]
    real = slurm.bash("verify.sbatch", "--help", cwd=slurm.project, RADAR_DIR=str(slurm.project),
                      RADAR_BIN=str(Path(sys.executable).parent))
    assert real.returncode == 2 and real.stderr.strip().splitlines()[-1] == "error: --help: cache folder not found"
