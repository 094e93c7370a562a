"""The SLURM cluster the tests in this folder submit to. A test run never installs packages or starts
daemons unless asked:

- SLURM_CONF set (a cluster of your own, or the one .ci/run started): use that cluster; it must answer, or
  the tests fail. Nothing is installed or started.
- RADAR_TEST_SLURM=start (the opt-in; .ci/run sets it): as root, start a one-node cluster with
  ci/slurm_up.sh (installs slurm, munge and MariaDB with apt when missing, about 50 s; 4 s without) and stop
  it again with ci/slurm_down.sh at the end.
- Otherwise: skip, with one line saying how to enable them.
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
OPT_IN = "RADAR_TEST_SLURM"
OPT_IN_VALUE = "start"
HOW = (f"to run them: export SLURM_CONF=/path/to/slurm.conf of a running cluster, or {OPT_IN}={OPT_IN_VALUE} "
       f"to let the tests start a one-node cluster here (as root; installs slurm, munge and MariaDB with apt and "
       f"starts their daemons, stopped again at the end)")


def _why_no_autostart() -> str:
    """Empty when the tests may and can start a cluster here with ci/slurm_up.sh, else the reason not."""
    if os.environ.get("RADAR_SLURM_UNAVAILABLE"):
        return os.environ["RADAR_SLURM_UNAVAILABLE"]
    if os.environ.get(OPT_IN) != OPT_IN_VALUE:
        return f"SLURM_CONF is not set and {OPT_IN} is not {OPT_IN_VALUE!r}"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return f"{OPT_IN}={OPT_IN_VALUE} but not root (ci/slurm_up.sh runs the daemons as root)"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return f"{OPT_IN}={OPT_IN_VALUE} but SLURM is not installed and there is no apt-get to install it"
    return ""


def pytest_runtest_setup(item):
    """Skip the SLURM tests (marked `slurm`) when there is no cluster to use and none may be started: raised
    here rather than in the fixture, so that the reason is reported once for all of them."""
    if item.get_closest_marker("slurm") and not os.environ.get("SLURM_CONF"):
        why = _why_no_autostart()
        if why:
            pytest.skip(f"no SLURM cluster ({why}); {HOW}")


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
        pytest.skip(f"no SLURM cluster ({why}); {HOW}")
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
