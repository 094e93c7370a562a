"""One-off GPU probes (2026-12-04, H200; logs in benchmarks/gpu/2026-12-04c-nvidia-h200-probe-*.log):

    python benchmarks/gpu_probes.py bicubic    # F.interpolate bicubic (B 32, C 32, pn -> 16) against a separable
                                               # matrix product of the same weights: ms per call and max difference
    python benchmarks/gpu_probes.py bicubic_layout  # the same on the sampler's channels-last-strided token map
                                               # against a contiguous copy: ms per call, bit-equal or not
    python benchmarks/gpu_probes.py compiled   # VAR-d16, batch 32, bf16, vanilla: first call and median call of the
                                               # graphs and compiled engines (run under `timeout`: compiling is long)
"""
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # (the checkout, not installed on a lent machine)
dev = torch.device("cuda")

def bench(fn, n=20):
    fn(); torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e3

def cubic_matrix(n_in, n_out, A=-0.75):
    scale = n_in / n_out
    W = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        x = (o + 0.5) * scale - 0.5
        x0 = int(torch.floor(torch.tensor(x)))
        t = x - x0
        def c1(v): return ((A + 2) * v - (A + 3)) * v * v + 1
        def c2(v): return ((A * v - 5 * A) * v + 8 * A) * v - 4 * A
        cs = [c2(t + 1), c1(t), c1(1 - t), c2(2 - t)]
        for k, c in enumerate(cs):
            W[o, min(max(x0 - 1 + k, 0), n_in - 1)] += c
    return W

if sys.argv[1] == "bicubic":
    for pn in (1, 2, 3, 4, 5, 6, 8, 10, 13):
        h = torch.randn(32, 32, pn, pn, device=dev)
        Wm = cubic_matrix(pn, 16).float().to(dev)
        ref = F.interpolate(h, size=(16, 16), mode="bicubic")
        sep = torch.einsum("oi,bcij,pj->bcop", Wm, h, Wm)
        t_ref = bench(lambda: F.interpolate(h, size=(16, 16), mode="bicubic"))
        t_sep = bench(lambda: torch.einsum("oi,bcij,pj->bcop", Wm, h, Wm))
        print(f"bicubic pn {pn:2d}: F.interpolate {t_ref:.3f} ms, separable {t_sep:.3f} ms, max diff {(ref - sep).abs().max().item():.2e}", flush=True)

if sys.argv[1] == "bicubic_layout":
    # the sampler's token map is the embedding's transpose: channels-last strides (as in the official code). Is the
    # upsampling of a contiguous copy faster, and bit for bit the same (output returned in the input's layout)?
    for pn in (1, 2, 4, 8, 13):
        h = torch.randn(32, pn * pn, 32, device=dev).transpose(1, 2).reshape(32, 32, pn, pn)  # channels-last strided
        ref = F.interpolate(h, size=(16, 16), mode="bicubic")
        alt = F.interpolate(h.contiguous(), size=(16, 16), mode="bicubic").contiguous(
            memory_format=torch.channels_last if ref.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
        t_ref = bench(lambda: F.interpolate(h, size=(16, 16), mode="bicubic"))
        t_alt = bench(lambda: F.interpolate(h.contiguous(), size=(16, 16), mode="bicubic").contiguous(
            memory_format=torch.channels_last))
        print(f"bicubic layout pn {pn:2d}: strided input {t_ref:.3f} ms, contiguous copy {t_alt:.3f} ms, "
              f"equal {torch.equal(ref, alt)}, out strides {ref.stride()} / {alt.stride()}", flush=True)

if sys.argv[1] == "compiled":
    from radar_train.bench.accel import build_random_models
    from radar_train.config import SamplingConfig
    from radar_train.sampling import NextScaleSampler
    var, quant, _ = build_random_models("var-d16", dev, 0)
    var.cast_body_(torch.bfloat16)
    labels = torch.arange(32, device=dev) % 1000
    seeds = list(range(32))
    out = {}
    for engine in ("graphs", "compiled"):
        s = NextScaleSampler(var, quant, SamplingConfig(engine=engine), autocast_dtype=torch.bfloat16)
        t = time.perf_counter()
        out[engine] = s.sample(labels, seeds=seeds)
        torch.cuda.synchronize()
        print(f"{engine}: first call {time.perf_counter() - t:.1f} s", flush=True)
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            s.sample(labels, seeds=seeds)
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
        ts.sort()
        print(f"{engine}: median call {ts[2] * 1e3:.1f} ms ({32 / ts[2]:.1f} images/s)", flush=True)
    same = torch.cat([(a == b).flatten() for a, b in zip(out["graphs"].indices, out["compiled"].indices)]).float().mean()
    print(f"compiled vs graphs: tokens equal {same.item():.4f}", flush=True)
