"""slurm/fid.sbatch without SLURM (stubs): it runs radar-fid on the config and output folder with the options
given; when radar-fid exits 143 (stopped by SIGTERM before the time limit, its progress saved) it requeues the
job, so that the restarted job goes on; any other status is the job's, with no requeue."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("status,requeued", [(0, False), (143, True), (1, False)])
def test_radar_fid_runs_and_a_sigterm_stop_requeues_the_job(slurm, status, requeued):
    proc = slurm.bash("fid.sbatch", "configs/generate.yaml", "out dir", "--num_samples", "50000", "--save_npz", "true",
                      cwd=slurm.project, RADAR_DIR=str(slurm.project), SLURM_JOB_ID="77", STUB_EXIT=str(status))
    assert proc.returncode == status, proc.stderr
    [run] = slurm.calls("radar-fid")
    assert run["argv"] == ["--config=configs/generate.yaml", "--output=out dir", "--num_samples", "50000",
                           "--save_npz", "true"]
    assert [c["argv"] for c in slurm.calls("scontrol")] == ([["requeue", "77"]] if requeued else [])
    assert ("requeueing the job" in proc.stdout) == requeued


def test_without_config_and_output_it_says_how_to_call_it(slurm):
    proc = slurm.bash("fid.sbatch", "configs/generate.yaml", cwd=slurm.project, RADAR_DIR=str(slurm.project))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: give the config and the output folder: sbatch slurm/fid.sbatch CONFIG "
                                   "OUTPUT [OPTION...]")
    assert slurm.calls() == []
