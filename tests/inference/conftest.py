"""A tiny cache and a briefly trained adapter, made once per session through the real CLIs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", f"radar_train.cli.{module}", *args], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f"radar-{module} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (pytestmark = pytest.mark.usefixtures("one_thread")): its tensors are tiny,
    threads only add overhead (and stall badly when the cores are busy), and a subprocess run with
    OMP_NUM_THREADS=1 gets the same floats."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def cli():
    """run_cli(module, *args, cwd=...): a radar_train CLI in a subprocess; fails the test on a non-zero exit."""
    return run_cli


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> dict:
    """cache/tiny (5 shards of 16 pairs, fastvar) and an adapter trained 40 steps on shards 0-3."""
    work = tmp_path_factory.mktemp("e2e")
    run_cli("cache", "run", "--config", str(ROOT / "configs/cache/tiny.yaml"), "--output", "cache/tiny", cwd=work)
    run_cli("train", "fit", "--config", str(ROOT / "configs/train/tiny.yaml"), "--trainer.max_steps", "40",
            "--trainer.val_check_interval", "40", "--trainer.default_root_dir", "run",
            "--model.monitor.images_every_n_steps", "0", cwd=work)
    return {"work": work, "cache": work / "cache/tiny", "adapter": work / "run/final", "run": work / "run"}
