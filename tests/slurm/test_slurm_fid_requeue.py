"""slurm/fid.sbatch under a real SLURM: the SIGTERM that `--signal=TERM@120` sends before the time limit makes
radar-fid save its progress and exit 143, the script requeues the job, and the restarted job goes on from the
saved sample (not from 0), finishes COMPLETED and ends with the report and samples of an uninterrupted run."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from slurm_cluster import REPO, cancel, start_requeued_now, tail_logs, wait_final_states, wait_for

sys.path.insert(0, str(REPO / "tests"))
from fid_helpers import save_extractors  # noqa: E402

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]

BIN = Path(sys.executable).parent
JOB_TIMEOUT_S = 420
NUM_SAMPLES, BATCH = 240, 2


def _options(extractors: dict) -> list[str]:
    return ["--device", "cpu", "--num_samples", str(NUM_SAMPLES), "--batch_size", str(BATCH), "--inception",
            str(extractors["features"]), "--inception_logits", str(extractors["logits"]), "--is_splits", "3",
            "--save_npz", "true"]


def _outputs(out: Path) -> dict:
    report = json.loads((out / "fid.json").read_text())
    report.pop("seconds")
    report["protocol"].pop("resumed_at")
    return {"report": report, **{p.name: p.read_bytes() for p in sorted(out.glob("samples_*.npz"))}}


def _samples_done(log: Path) -> int:
    """The largest sample count of the job's progress lines so far."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return max((int(n) for n in re.findall(r"radar-fid: samples (\d+)/", text)), default=0)


def test_sigterm_before_the_time_limit_requeues_radar_fid_which_goes_on(slurm_cluster, tmp_path):
    extractors = save_extractors(tmp_path)
    out, log = tmp_path / "fid", tmp_path / "fid.out"
    env = {"RADAR_BIN": str(BIN), "OMP_NUM_THREADS": "1", "RADAR_PROGRESS": "log", "RADAR_PROGRESS_INTERVAL": "0"}
    job = slurm_cluster.sbatch("--gres=none", "--cpus-per-task=1", "--time=00:15:00", f"--output={log}",
                               "slurm/fid.sbatch", "configs/generate/tiny.yaml", str(out), *_options(extractors),
                               env=env, cwd=REPO)
    explain = lambda: f"scontrol: {slurm_cluster.show_job(job)}\n{tail_logs(tmp_path)}"
    try:
        wait_for(lambda: _samples_done(log) >= 10, JOB_TIMEOUT_S, "radar-fid to sample", explain)
        slurm_cluster.run("scancel", "--signal=TERM", job)  # what --signal=TERM@120 sends to the job's steps
        wait_for(lambda: (info := slurm_cluster.show_job(job)).get("Restarts") == "1"
                 and info.get("JobState") == "PENDING", 120, "the job to be requeued", explain)
        assert (out / "fid-progress" / "state.safetensors").is_file()
        start_requeued_now(slurm_cluster, job, explain)
        states = wait_final_states(slurm_cluster, [job], 1, JOB_TIMEOUT_S, tmp_path)
    finally:
        cancel(slurm_cluster, [job])

    assert states[job] == ("COMPLETED", "0:0"), explain()
    text = log.read_text()  # both runs (--open-mode=append)
    stopped = re.search(r"radar-fid: stopped by SIGTERM; (\d+) of 240 samples are saved in ", text)
    assert stopped and "requeueing the job" in text, text[-3000:]
    saved = int(stopped.group(1))
    assert 10 <= saved < NUM_SAMPLES
    assert re.search(rf"restart 1 on .*\n(.*\n)*radar-fid: going on from sample {saved} of 240", text), text[-3000:]
    assert json.loads((out / "fid.json").read_text())["protocol"]["resumed_at"] == [saved]
    assert sorted(p.name for p in out.iterdir()) == ["fid.json", "fid.md", "samples_accelerated.npz",
                                                     "samples_vanilla.npz"]
    # the same command, uninterrupted, here (one thread, as the job)
    from radar_train.cli.fid import main

    whole = tmp_path / "whole"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(SystemExit) as e:
            main(["--config", str(REPO / "configs/generate/tiny.yaml"), "--output", str(whole), *_options(extractors)])
    finally:
        torch.set_num_threads(threads)
    assert e.value.code == 0
    assert _outputs(out) == _outputs(whole)
