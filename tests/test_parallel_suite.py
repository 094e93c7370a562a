"""The suite in parallel (pytest-xdist, pyproject.toml's addopts): the SLURM tests, which submit to one cluster, run in
one worker, one after another (tests/conftest.py's scheduler); the other tests are shared among the workers."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_slurm_tests_run_in_one_worker_and_the_others_in_any():
    env = {k: v for k, v in os.environ.items()
           if k not in ("SLURM_CONF", "RADAR_TEST_SLURM") and not k.startswith("PYTEST_")}  # (they skip here)
    r = subprocess.run([sys.executable, "-m", "pytest", "-v", "-n", "2", "-p", "no:cacheprovider", "tests/slurm",
                        "tests/test_noise.py", "-k", "not opt_in"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ran = re.findall(r"^\[(gw\d+)\] .*? (tests/\S+)", r.stdout, flags=re.M)
    slurm = {worker for worker, test in ran if test.startswith("tests/slurm/")}
    assert len([t for _, t in ran if t.startswith("tests/slurm/")]) >= 10 and len(slurm) == 1, r.stdout[-3000:]
    assert any(t.startswith("tests/test_noise.py") for _, t in ran), r.stdout[-3000:]
