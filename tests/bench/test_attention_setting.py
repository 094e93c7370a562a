"""--setup.attention math: every SDPA call on the math kernel (RADAR's non-flash timing baseline), in
radar-bench accel / pipeline and the GPU suite's paper section."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from radar_train.bench.accel import BenchSetup, attention_context, run_accel_benchmark
from radar_train.bench.gpu_suite import main
from radar_train.bench.pipeline import run_pipeline_benchmark
from radar_train.bench.tables import render
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


def test_the_gpu_suites_paper_section(tmp_path):
    out = tmp_path / "run.json"
    assert main(["--device", "cpu", "--presets", "tiny", "--batch_size", "1", "--warmup", "0", "--min_repeats", "1",
                 "--sections", "paper", "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["rows"] == [] and doc["status"]["paper"].startswith("ok")
    rows = doc["sections"]["paper"]["rows"]
    assert [r["method"] for r in rows] == ["vanilla", "sca:window+default", "decode"]
    assert all(r["attention"] == "math" and r["dtype"] == "fp32" and r["engine"] == "eager" for r in rows)
    assert doc["sections"]["paper"]["matmul_tf32"] is torch.backends.cuda.matmul.allow_tf32
    text = render(doc)
    assert "RADAR's timing setting (fp32, SDPA on the math kernel):" in text and "| tiny | sca:window+default |" in text
    # not enough budget left: recorded as skipped, nothing measured
    out2 = tmp_path / "run2.json"
    assert main(["--device", "cpu", "--presets", "tiny", "--sections", "paper", "--paper_reserve_s", "1e9",
                 "--output", str(out2)]) == 0
    doc2 = json.loads(out2.read_text())
    assert doc2["sections"]["paper"]["skipped"].endswith("s of the budget left (< 1000000000 s)")
    assert render(doc2).endswith("RADAR's timing setting: skipped (" + doc2["sections"]["paper"]["skipped"] + ")")
