"""radar-bench accel: a sampling engine other than eager is checked against eager at the benchmark's size and
precision (tokens and f_hat of one untimed call each), and the tables show it."""

import pytest
import torch

from radar_train import engine
from radar_train.bench.accel import BenchSetup, engine_agreement, format_table, run_accel_benchmark
from radar_train.bench.tables import render
from radar_train.config import SamplingConfig
from radar_train.sampling import NextScaleSampler

LABELS, SEEDS = torch.tensor([1, 2, 3]), [10, 11, 12]


class _Broken:
    def sample(self, *a, **k):
        raise RuntimeError("CUDA out of memory\nmore text")


def test_agreement_counts_equal_tokens_and_the_f_hat_difference(tiny_models):
    vqvae, var = tiny_models
    cfg = SamplingConfig(cfg=1.5, top_k=64, top_p=0.0)
    samplers = {"eager": NextScaleSampler(var, vqvae.quantize, cfg),
                "same": NextScaleSampler(var, vqvae.quantize, cfg),  # another sampler of the same kernels
                "other": NextScaleSampler(var, vqvae.quantize, SamplingConfig(cfg=6.0, top_k=2, top_p=0.0)),
                "broken": _Broken()}
    accels = {"vanilla": None}
    got = engine_agreement(samplers, accels, [("vanilla", "same"), ("vanilla", "other"), ("vanilla", "broken")],
                           LABELS, {"seeds": SEEDS})
    assert got[("vanilla", "same")] == {"tokens_equal_vs_eager": 1.0, "f_hat_max_diff_vs_eager": 0.0}
    # the share is over every token of every scale; computed here from the two outputs directly
    a = samplers["eager"].sample(LABELS, seeds=SEEDS)
    b = samplers["other"].sample(LABELS, seeds=SEEDS)
    equal = sum(int((x == y).sum()) for x, y in zip(a.indices, b.indices))
    total = sum(x.numel() for x in a.indices)
    assert 0 < equal < total
    assert got[("vanilla", "other")]["tokens_equal_vs_eager"] == pytest.approx(equal / total, abs=1e-6)
    assert got[("vanilla", "other")]["f_hat_max_diff_vs_eager"] == pytest.approx(
        float((a.f_hat - b.f_hat).abs().max()), rel=1e-3)
    assert got[("vanilla", "broken")] == {"agreement_failed": "RuntimeError: CUDA out of memory"}


@pytest.mark.slow
def test_the_benchmark_compares_every_other_engine_with_eager(monkeypatch):
    """The compiled engine traced by dynamo with the eager backend (the same ATen calls, seconds instead of
    inductor's minutes): its rows carry the agreement with eager, bit for bit; eager rows carry none."""
    monkeypatch.setattr(engine, "COMPILE_BACKEND", "eager")
    rows = run_accel_benchmark(BenchSetup(preset="tiny", batch_size=2, device="cpu", warmup=0, repeats=1),
                               ["none", "stagevar"], SamplingConfig(top_k=64), log=lambda s: None,
                               engines=["eager", "compiled"], pairs=False)
    by = {(r["method"], r["engine"]): r for r in rows}
    for method in ("vanilla", "stagevar:default"):
        assert by[(method, "compiled")]["tokens_equal_vs_eager"] == 1.0
        assert by[(method, "compiled")]["f_hat_max_diff_vs_eager"] == 0.0
        assert "tokens_equal_vs_eager" not in by[(method, "eager")]
    assert "the same call as eager" in format_table(rows)
    doc = {"date": "d", "device": "cpu", "torch": "t", "commit": "c", "command": "x", "rows": rows}
    lines = render(doc).splitlines()
    assert lines[2].endswith("| tokens = eager | max f̂ diff vs eager |")
    compiled = [line for line in lines if "| vanilla | compiled |" in line]
    assert len(compiled) == 1 and compiled[0].endswith("| 1.0000 | 0 |")


def test_the_tables_show_a_failed_comparison():
    row = {"preset": "var-d16", "method": "vanilla", "engine": "graphs", "noise": "per_sample", "batch_size": 32,
           "images_per_s": 300.0, "agreement_failed": "RuntimeError: out of memory | x"}
    doc = {"date": "d", "device": "gpu", "torch": "t", "commit": "c", "command": "x", "rows": [row]}
    assert render(doc).splitlines()[-1].endswith("| failed: RuntimeError: out of memory / x | - |")
