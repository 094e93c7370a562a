"""The SLURM cluster the tests in this folder submit to.

- SLURM_CONF set (CI: .ci/run starts the cluster with ci/slurm_up.sh and exports it): use that cluster;
  it must answer, or the tests fail.
- Otherwise, as root with apt-get (or the packages already installed): start one with ci/slurm_up.sh
  (about 50 s with the apt install, 4 s without) and stop it again with ci/slurm_down.sh at the end.
- Otherwise: skip, saying why and how to get a cluster.
RADAR_SLURM_UNAVAILABLE="reason" (set by .ci/run when it could not start one) skips them with that reason.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from slurm_cluster import REPO, Cluster  # noqa: E402

DEFAULT_SLURM_DIR = "/tmp/slurm-ci"
HOW = ("to run them: `sudo bash ci/slurm_up.sh` (Debian/Ubuntu, needs apt), then "
       f"`export SLURM_CONF={DEFAULT_SLURM_DIR}/slurm.conf`")


def _why_no_autostart() -> str:
    """Empty when ci/slurm_up.sh can start a cluster here, else the reason it cannot."""
    if os.environ.get("RADAR_SLURM_UNAVAILABLE"):
        return os.environ["RADAR_SLURM_UNAVAILABLE"]
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not root (ci/slurm_up.sh runs the daemons as root)"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install it"
    return ""


@pytest.fixture(scope="session")
def slurm_cluster():
    """A Cluster to submit to (see the module docstring); skips the test when there is none."""
    conf = os.environ.get("SLURM_CONF")
    if conf:
        if not shutil.which("sbatch"):
            pytest.fail(f"SLURM_CONF={conf} is set but sbatch is not on PATH")
        cluster = Cluster(conf)
        ping = cluster.run("sinfo", "-h", "-o", "%T", check=False, timeout=30)
        if ping.returncode != 0:
            pytest.fail(f"SLURM_CONF={conf} is set but the cluster does not answer: {ping.stderr.strip()}")
        yield cluster
        return
    why = _why_no_autostart()
    if why:
        pytest.skip(f"no SLURM cluster: SLURM_CONF is not set and none can be started here ({why}); {HOW}")
    slurm_dir = os.environ.get("SLURM_DIR", DEFAULT_SLURM_DIR)
    env = {**os.environ, "SLURM_DIR": slurm_dir, "WITH_DBD": "1"}
    up = subprocess.run(["bash", str(REPO / "ci" / "slurm_up.sh")], env=env, capture_output=True, text=True,
                        timeout=900)
    if up.returncode == 3:  # slurm_up.sh: impossible here (e.g. apt failed)
        pytest.skip(f"no SLURM cluster: {up.stderr.strip()}; {HOW}")
    if up.returncode != 0:
        pytest.fail(f"ci/slurm_up.sh failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
    started = "already running" not in up.stdout
    cluster = Cluster(f"{slurm_dir}/slurm.conf", started_here=started, slurm_dir=slurm_dir)
    try:
        yield cluster
    finally:
        if started:
            subprocess.run(["bash", str(REPO / "ci" / "slurm_down.sh")], env=env, capture_output=True, timeout=120)
