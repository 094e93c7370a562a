"""slurm/pipeline.sh: SBATCH_ARGS go before the pipeline's own sbatch options, so that PARTITION / ACCOUNT and the
other settings win over them as its header says (sbatch keeps the last value of an option given twice)."""
from __future__ import annotations

import shlex


def _printed_sbatch_options(stderr: str) -> list[list[str]]:
    """The options (the words before the job script) of each sbatch command that pipeline.sh --dry-run printed."""
    lines = []
    for line in stderr.splitlines():
        words = shlex.split(line)
        if "sbatch" in words:
            rest = words[words.index("sbatch") + 1:]
            lines.append(rest[:next(i for i, w in enumerate(rest) if not w.startswith("-"))])
    return lines


def _last(options: list[str], name: str) -> str | None:
    values = [o.split("=", 1)[1] for o in options if o.startswith(f"--{name}=")]
    return values[-1] if values else None


def test_partition_and_account_win_over_sbatch_args(slurm):
    slurm.config("cache.yaml", "output: cache/tiny\n")
    slurm.config("train.yaml", "trainer:\n  default_root_dir: checkpoints/tiny\n")
    proc = slurm.bash("pipeline.sh", "--dry-run", CACHE_CONFIG="configs/cache.yaml", TRAIN_CONFIG="configs/train.yaml",
                      PARTITION="gpu", ACCOUNT="myproject", CACHE_TIME="02:00:00",
                      SBATCH_ARGS="--partition=debug --account=other --qos=high --time=00:10:00")
    assert proc.returncode == 0, proc.stderr
    jobs = _printed_sbatch_options(proc.stderr)
    assert len(jobs) == 3, proc.stderr
    for options in jobs:
        assert _last(options, "partition") == "gpu", options
        assert _last(options, "account") == "myproject", options
        assert _last(options, "qos") == "high", options       # the other extra options still reach every job
    assert _last(jobs[0], "time") == "02:00:00", jobs[0]      # CACHE_TIME, a setting above SBATCH_ARGS, wins too
    assert _last(jobs[1], "time") == "00:10:00", jobs[1]      # verify has no time setting of its own
