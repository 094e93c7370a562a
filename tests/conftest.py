"""Shared fixtures: tiny models on the CPU, fixture paths, deterministic defaults."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
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
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_models():
    """(vqvae, var) of the `tiny` preset, random weights from its fixed seed, eval mode, CPU fp32."""
    from radar_train.models import load_models

    vqvae, var, _, _ = load_models("tiny")
    return vqvae, var
