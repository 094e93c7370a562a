"""--setup.attention math: every SDPA call on the math kernel (RADAR's non-flash timing baseline), in
radar-bench accel and pipeline (the GPU suite's paper section: tests/bench/test_gpu_suite.py)."""
import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from radar_train.bench.accel import BenchSetup, attention_context, run_accel_benchmark
from radar_train.bench.pipeline import run_pipeline_benchmark
from radar_train.config import SamplingConfig


def _sdpa_kernels(name: str) -> set[str]:
    q = torch.randn(1, 2, 64, 32)
    with attention_context(name), profile(activities=[ProfilerActivity.CPU]) as prof:
        F.scaled_dot_product_attention(q, q, q)
    return {e.key for e in prof.key_averages() if "attention" in e.key or e.key in ("aten::bmm", "aten::_softmax")}


def test_math_takes_sdpa_off_the_flash_kernel():
    auto, math = _sdpa_kernels("auto"), _sdpa_kernels("math")
    assert any("flash" in k for k in auto)  # on the CPU, PyTorch picks its flash kernel for fp32
    assert not any("flash" in k for k in math) and "aten::_scaled_dot_product_attention_math" in math
    with pytest.raises(ValueError, match="--setup.attention must be auto or math, got 'flashy'"):
        attention_context("flashy")


def test_benchmarks_record_the_setting(monkeypatch):
    seen = []
    real = F.scaled_dot_product_attention

    def spy(*a, **k):
        seen.append(torch.backends.cuda.flash_sdp_enabled())
        return real(*a, **k)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    rows = run_accel_benchmark(BenchSetup(preset="tiny", batch_size=1, device="cpu", attention="math", warmup=0,
                                          repeats=1), ["none"], SamplingConfig(top_k=64), log=lambda s: None, pairs=False)
    assert seen and not any(seen)  # every call of the timed run saw flash disabled
    assert {r["attention"] for r in rows} == {"math"}
    assert torch.backends.cuda.flash_sdp_enabled()  # and the setting ends with the run
    seen.clear()
    rows = run_pipeline_benchmark(BenchSetup(preset="tiny", batch_size=1, device="cpu", attention="math", warmup=0,
                                             repeats=1), ["none"], SamplingConfig(top_k=64), log=lambda s: None)
    assert seen and not any(seen) and {r["attention"] for r in rows} == {"math"}
