"""Shared fixtures: tiny models on the CPU, fixture paths, deterministic defaults."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"

MAX_WORKERS = 8  # `-n auto`'s cap: a worker holds torch, Lightning and its tests' models (0.6-1 GiB resident in CI)


def _cores() -> int:
    """The cores this process may run on (a SLURM allocation or a container's share, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _threads() -> int:
    """torch threads per test process: at most 2 (the tiny models gain nothing from more), and under pytest-xdist the
    cores shared among its workers, so that they do not oversubscribe them (two workers of two threads each on two
    cores ran the suite slower than one process)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, min(2, _cores() // workers))


@pytest.hookimpl(optionalhook=True)  # (pytest-xdist's hook: without it, `pytest -o addopts= -p no:xdist` runs)
def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker per core, at most MAX_WORKERS."""
    return max(1, min(_cores(), MAX_WORKERS))


SERIAL_FOLDER = "tests/slurm/"  # its tests submit to one SLURM cluster: one worker runs them, one after another


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` (pyproject.toml's addopts) with the tests of SERIAL_FOLDER as one group. (Not with an
    `xdist_group` mark: pytest-xdist 3.8 appends a mark's group to `item._nodeid`, which pytest 9.2 no longer reads,
    so its groups are split across workers.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class Scheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return SERIAL_FOLDER if nodeid.startswith(SERIAL_FOLDER) else super()._split_scope(nodeid)

    return Scheduling(config, log)


torch.set_num_threads(_threads())
if "PYTEST_XDIST_WORKER" in os.environ:
    # the commands the tests run in subprocesses take the same share, unless the user set one
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads()))


def pytest_collection_modifyitems(config, items):
    # the SLURM tests first (a stable sort): under pytest-xdist their group, minutes of jobs, starts in one worker while
    # the other workers take the rest, instead of coming late and leaving the others idle at the end
    items.sort(key=lambda item: not item.nodeid.startswith(SERIAL_FOLDER))
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def _build_cache(args) -> str:
    """Run radar-cache with `args` (a CacheArgs) quietly, restoring torch's thread count after it."""
    from radar_train.cache.generate import run_cache

    threads = torch.get_num_threads()
    try:
        run_cache(args, print_fn=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    return str(args.output)


@pytest.fixture(scope="session")
def build_cache():
    """The function that writes a cache from a CacheArgs for a test (returns its path)."""
    return _build_cache


@pytest.fixture(autouse=True)
def _reset_torch_defaults():
    """A test's default dtype and thread count do not leak into the next ones (radar-toy train's recipe, for one,
    sets its num_threads: the tests after one that ran it with one thread ran on one thread, until another set
    two). The thread count of the test's setup is kept, so a module's `one_thread` fixture holds for its tests."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    yield
    torch.set_default_dtype(dtype)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def noted():
    """A SIGTERM (and SIGHUP) handler of our own around the test (a signal a command lets through is noted, not
    pytest's end): the signals it noted."""
    import signal

    seen = []
    previous = {sig: signal.signal(sig, lambda signum, frame: seen.append(signum))
                for sig in (signal.SIGTERM, signal.SIGHUP)}
    yield seen
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_models():
    """(vqvae, var) of the `tiny` preset, random weights from its fixed seed, eval mode, CPU fp32."""
    from radar_train.models import load_models

    vqvae, var, _, _ = load_models("tiny")
    return vqvae, var
