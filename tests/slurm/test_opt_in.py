"""Without the opt-in (RADAR_TEST_SLURM=start) and without SLURM_CONF, the SLURM tests skip with one line
saying how to enable them, install nothing and leave no process behind."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from slurm_cluster import REPO

HERE = Path(__file__).resolve()
DAEMONS = {"slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "mysqld"}


def _packages() -> str | None:
    """The dpkg package list (name, version, status), or None where there is no dpkg."""
    if not shutil.which("dpkg-query"):
        return None
    return subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version} ${Status}\n"], capture_output=True,
                          text=True, check=True).stdout


def _processes() -> dict[int, tuple[str, bytes]]:
    """{pid: (name, environment)} of the processes this user may read (environment b"" if not readable)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            name = (d / "comm").read_text().strip()
        except OSError:
            continue
        try:
            env = (d / "environ").read_bytes()
        except OSError:
            env = b""
        out[int(d.name)] = (name, env)
    return out


def test_slurm_tests_skip_without_the_opt_in_and_change_nothing(tmp_path):
    # every process the run starts (daemons included, whatever their parent becomes) inherits this marker
    assert "RADAR_TEST_PROBE" not in os.environ, "this test must not run inside its own test run"
    marker = f"RADAR_TEST_PROBE={uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_CONF", "RADAR_TEST_SLURM", "RADAR_SLURM_UNAVAILABLE")
           and not k.startswith("PYTEST_XDIST_")}
    env.update(dict([marker.split("=", 1)]), SLURM_DIR=str(tmp_path / "slurm"))
    packages_before = _packages()
    daemons_before = {name for name, _ in _processes().values()} & DAEMONS
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-rs", str(HERE.parent),
                        f"--ignore={HERE}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    summary = out.strip().splitlines()[-1]
    assert re.search(r"\d+ skipped", summary) and "passed" not in summary and "failed" not in summary, summary
    reasons = [ln for ln in out.splitlines() if ln.startswith("SKIPPED")]
    assert len(reasons) == 1, out[-3000:]  # one line for all of them
    assert "RADAR_TEST_SLURM=start" in reasons[0] and "SLURM_CONF" in reasons[0]
    assert "installs" in reasons[0] and "daemons" in reasons[0]
    assert _packages() == packages_before
    left = [f"{pid} {name}" for pid, (name, environ) in _processes().items() if marker.encode() in environ.split(b"\0")]
    assert left == [], f"the test run left processes running: {left}"
    assert {name for name, _ in _processes().values()} & DAEMONS <= daemons_before
    assert not (tmp_path / "slurm").exists()  # ci/slurm_up.sh never ran
