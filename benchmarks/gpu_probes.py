"""One-off GPU probes (2026-12-04, H200; logs in benchmarks/gpu/2026-12-04c-nvidia-h200-probe-*.log):

    python benchmarks/gpu_probes.py bicubic    # the sampler's bicubic upsampling (B 32, C 32, pn -> 16, 24 -> 32):
                                               # the kernel on the token map's channels-last strides (as the official
                                               # code), on a contiguous copy (radar_train before 2026-12-05), and the
                                               # matrix product radar_train runs since (radar_train.interp): kernels
                                               # alone and wall time, max difference; with OUT set,
                                               # $OUT/probes.json (the 2026-12-04 log timed the kernel and an
                                               # einsum by wall time only: the einsum's host time)
    python benchmarks/gpu_probes.py bicubic_layout  # the same on the sampler's channels-last-strided token map
                                               # against a contiguous copy: ms per call, bit-equal or not
    python benchmarks/gpu_probes.py compiled   # VAR-d16, batch 32, bf16, vanilla: first call and median call of the
                                               # graphs and compiled engines (the first call compiles: the whole step
                                               # until 2026-12-05, unfinished after 165 s; the blocks' pieces since)
    python benchmarks/gpu_probes.py fused      # the block's and FastVAR's elementwise steps at the last scale's shapes
                                               # (64 rows, 256 tokens, C of d16 / d24, bf16 autocast): the official
                                               # formulation (radar_train up to 111e1f3) against radar_train's
                                               # (models/fused.py, FastVAR's one-pass score and channels-last restore),
                                               # an untried alternative score (cdist), and the restore by the area
                                               # kernel against the matrix product (the CUDA default since 2026-12-05,
                                               # fastvar.resize_tokens; bf16, and StageVAR's float32): ms per call
                                               # (wall time of eager calls, and the kernels alone: each side captured
                                               # as a CUDA graph and replayed), the largest difference; then the
                                               # pieces of FastVAR's pruned sub-layer and of StageVAR's block
                                               # (benchmarks/probe_pieces.py) at 13x13 and 16x16, timed so; with OUT
                                               # set, also $OUT/probes.json
    python benchmarks/gpu_probes.py decode [compiled]  # the VQ-VAE decode of VAR-d16 (random weights, batch 32):
                                               # float32 (as RadarPipeline decodes; cuDNN's TF32 as torch sets it), bf16
                                               # autocast (as radar-train and the suite's decode rows), the same
                                               # with the attention blocks by SDPA (as before 2026-12-05; also one
                                               # attention block alone, both ways), bf16 with
                                               # GroupNorm in bf16 (autocast runs it in float32), and with `compiled`
                                               # bf16 with the blocks through torch.compile (model.optim.compile's
                                               # function: GroupNorm, SiLU and the sums fused; compiling takes a minute
                                               # or more: PROBE_TIMEOUT=240); ms per call, the first call apart, the
                                               # largest difference from float32; with OUT set, $OUT/probes.json
"""
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # (the checkout, not installed on a lent machine)
if not torch.cuda.is_available():  # (run_gpu_suite.sh's CPU smoke test runs the probes too)
    print(f"gpu_probes.py {' '.join(sys.argv[1:])}: needs a CUDA device; nothing measured")
    sys.exit(0)
dev = torch.device("cuda")

def bench(fn, n=20):
    """ms per call of fn: wall time of n calls between two synchronisations, bound by the host where fn's kernels
    are shorter than their launches (the 2026-12-04 probes were timed so)."""
    fn(); torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e3

def device_ms(fn, n=20):
    """ms per call of fn's kernels alone, as the captured sampler runs them: fn captured once as a CUDA graph (under
    the caller's autocast), n replays between CUDA events; None where fn cannot be captured."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except RuntimeError as e:
        print(f"  (not capturable: {str(e).splitlines()[0][:120]})", flush=True)
        torch.cuda.synchronize()
        return None
    graph.replay(); torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        graph.replay()
    end.record(); torch.cuda.synchronize()
    return start.elapsed_time(end) / n

def write_rows(probe, rows):
    """The probe's rows into $OUT/probes.json (benchmarks/probe_output.py), when OUT is set."""
    import os

    from probe_output import write_probe_rows

    if os.environ.get("OUT"):
        write_probe_rows(os.environ["OUT"], probe, rows,
                         {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda},
                         run=os.environ.get("PROBES_RUN"))

if sys.argv[1] == "bicubic":
    # the sampler's upsampling of a token map (B 32, C 32, pn -> the last grid): CUDA's bicubic kernel on the map as the
    # official code passes it (channels-last strides), on a contiguous copy (radar_train before 2026-12-05) and the
    # matrix product radar_train runs since (radar_train.interp.upsample_bicubic, TF32 off): kernels alone (captured)
    # and wall time, the largest difference from the kernel
    from radar_train.interp import upsample_bicubic

    torch.backends.cuda.matmul.allow_tf32 = False
    rows_out = []
    for pn, P in ((1, 16), (2, 16), (3, 16), (4, 16), (5, 16), (6, 16), (8, 16), (10, 16), (13, 16), (24, 32)):
        h = torch.randn(32, pn * pn, 32, device=dev).transpose(1, 2).reshape(32, 32, pn, pn)
        ref = F.interpolate(h, size=(P, P), mode="bicubic")
        cases = {"kernel, strided map": lambda: F.interpolate(h, size=(P, P), mode="bicubic"),
                 "kernel, contiguous copy": lambda: F.interpolate(h.contiguous(), size=(P, P), mode="bicubic"),
                 "matrix product": lambda: upsample_bicubic(h, P)}
        row = {"probe": "bicubic", "pn": pn, "out": P, "batch_size": 32, "channels": 32,
               "max_abs_diff": (upsample_bicubic(h, P) - ref).abs().max().item()}
        for name, fn in cases.items():
            row[name] = {"device_ms": device_ms(fn), "wall_ms": bench(fn)}
        rows_out.append(row)
        print(f"bicubic {pn:2d}->{P}: " + ", ".join(f"{k} {v['device_ms']:.4f} ms (wall {v['wall_ms']:.3f})"
                                                  for k, v in row.items() if isinstance(v, dict) and v["device_ms"] is not None)
              + f"; max diff {row['max_abs_diff']:.2e}", flush=True)
    write_rows("bicubic", rows_out)

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

if sys.argv[1] == "fused":
    import math

    from radar_train.accel.fastvar import pivotal_tokens, resize_tokens
    from radar_train.models.fused import gated_add, l2_normalize_qk, modulate

    def old_pts(x, keep):
        score = (x - x.mean(dim=1, keepdim=True)).float().pow(2).sum(dim=-1)
        return score.topk(keep, dim=1, sorted=False).indices.sort(dim=1).values

    def cdist_pts(x, keep):  # alternative: one read of x for the distances
        d = torch.cdist(x, x.mean(dim=1, keepdim=True), compute_mode="donot_use_mm_for_euclid_dist").squeeze(-1)
        return d.topk(keep, dim=1, sorted=False).indices.sort(dim=1).values

    def old_resize(t, pn):
        rows, m, C = t.shape
        p = math.isqrt(m)
        grid = t.transpose(1, 2).reshape(rows, C, p, p)
        return F.interpolate(grid, size=(pn, pn), mode="area").reshape(rows, C, pn * pn).transpose(1, 2).contiguous()

    bf = torch.bfloat16
    rows_out = []
    for C in (1024, 1536):
        R, L, H = 64, 256, C // 64
        x = torch.randn(R, L, C, device=dev)
        s1, b1, g1 = (torch.randn(R, 1, C, device=dev, dtype=bf) for _ in range(3))
        y = torch.randn(R, L, C, device=dev, dtype=bf)
        qkv = torch.randn(R, L, 3, H, 64, device=dev, dtype=bf)
        mul = torch.rand(1, H, 1, 1, device=dev).add(1).to(bf)
        qk_mul = torch.cat((mul.float().view(1, H, 1), torch.ones(1, H, 1, device=dev)))
        cached = torch.randn(R, 100, C, device=dev, dtype=bf)
        block_out = torch.randn(R // 2, 169, C, device=dev)  # StageVAR's cache: a block's float32 output, one CFG half
        by_matmul = frozenset({bf})
        ln = F.layer_norm(x, (C,))
        cases = {
            "modulate + cast": (lambda: ln.mul(s1).add_(b1).to(bf), lambda: modulate(ln, s1, b1)),
            "gated residual add": (lambda: x + y.mul(g1), lambda: gated_add(x, y, g1)),
            "q, k L2 norm": (lambda: (F.normalize(qkv.permute(2, 0, 3, 1, 4)[0], dim=-1).mul(mul).to(bf),
                                      F.normalize(qkv.permute(2, 0, 3, 1, 4)[1], dim=-1).to(bf)),
                             lambda: l2_normalize_qk(qkv, qk_mul)),
            "FastVAR score (keep 64)": (lambda: old_pts(x, 64), lambda: pivotal_tokens(x, 64)),
            "FastVAR score, cdist (alternative)": (lambda: pivotal_tokens(x, 64), lambda: cdist_pts(x, 64)),
            "FastVAR restore 10->16": (lambda: old_resize(cached, 16), lambda: resize_tokens(cached, 16)),
            "FastVAR restore: area kernel -> matrix product": (lambda: resize_tokens(cached, 16),
                                                               lambda: resize_tokens(cached, 16, by_matmul)),
            "StageVAR restore 13->16, float32: area kernel -> matrix product": (
                lambda: resize_tokens(block_out, 16), lambda: resize_tokens(block_out, 16, frozenset({torch.float32}))),
        }
        for name, (old, new) in cases.items():
            with torch.autocast("cuda", dtype=bf):
                t_old, t_new = bench(old), bench(new)
                d_old, d_new = device_ms(old), device_ms(new)
                a, b = old(), new()
            a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
            diff = max((u.float() - v.float()).abs().max().item() for u, v in zip(a, b))
            dev_note = (f"; kernels alone (graph replay) {d_old:.3f} -> {d_new:.3f} ms" if d_old and d_new else "")
            print(f"C {C} {name}: before {t_old:.3f} ms, after {t_new:.3f} ms ({t_old / t_new:.2f}x){dev_note}, "
                  f"max diff {diff:.2e}", flush=True)
            rows_out.append({"C": C, "rows": R, "tokens": L, "step": name, "before_ms": t_old, "after_ms": t_new,
                             "before_device_ms": d_old, "after_device_ms": d_new,
                             "max_diff": diff})
    # the methods' own work per sub-layer / block, piece by piece (benchmarks/probe_pieces.py), as kernels alone
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from probe_pieces import fastvar_pieces, stagevar_pieces

    for C, depth in ((1024, 16), (1536, 24)):
        for method, pn, pieces in (("fastvar", 13, fastvar_pieces(C, 13, 0.5, dev)),
                                   ("fastvar", 16, fastvar_pieces(C, 16, 0.75, dev)),
                                   ("stagevar", 13, stagevar_pieces(C, 13, depth, dev)),
                                   ("stagevar", 16, stagevar_pieces(C, 16, depth, dev))):
            for name, fn in pieces.items():
                with torch.autocast("cuda", dtype=bf):
                    wall, kernels = bench(fn), device_ms(fn)
                print(f"C {C} {method} {pn}x{pn} piece {name}: {wall:.3f} ms per eager call, kernels alone "
                      f"{'-' if kernels is None else f'{kernels:.3f} ms'}", flush=True)
                rows_out.append({"C": C, "depth": depth, "method": method, "scale": pn, "piece": name,
                                 "wall_ms": wall, "device_ms": kernels})
    write_rows("fused", rows_out)

if sys.argv[1] == "decode":
    import copy

    from radar_train.models import build_vqvae, get_preset
    from radar_train.models.init import init_random_
    from radar_train.train.compile import compiled_block_call

    torch.manual_seed(0)
    vq = build_vqvae(get_preset("var-d16").vae).to(dev).eval()
    init_random_(vq, 0)
    f_hat = torch.randn(32, vq.config.z_channels, 16, 16, device=dev)
    plain = vq.latent_decoder().eval()
    fused = copy.deepcopy(plain)
    fused.decoder.block_call = compiled_block_call("inductor")

    class NarrowGroupNorm(torch.nn.GroupNorm):
        """GroupNorm in its input's dtype (its weight and bias rounded to it), where autocast runs it in float32:
        under bf16 autocast the norm, and the SiLU after it, then read and write bf16 (half the bytes of the
        float32 activations the official decode passes between them), and the float32 copies in and out go."""

        def forward(self, x):
            with torch.autocast("cuda", enabled=False):
                return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)

    narrow = copy.deepcopy(plain)
    for module in narrow.modules():
        if type(module) is torch.nn.GroupNorm:
            module.__class__ = NarrowGroupNorm

    from radar_train.models.vae_blocks import AttnBlock

    class SdpaAttnBlock(AttnBlock):
        """The block's attention as radar_train ran it up to 2026-12-05: one SDPA call over the transposed views (one
        head of C channels, which on CUDA only the memory-efficient kernel takes)."""

        def forward(self, x):
            B, C, H, W = x.shape
            q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)
            h = F.scaled_dot_product_attention(q.transpose(1, 2).unsqueeze(1), k.transpose(1, 2).unsqueeze(1),
                                               v.transpose(1, 2).unsqueeze(1), scale=C**-0.5)
            return x + self.proj_out(h.squeeze(1).transpose(1, 2).reshape(B, C, H, W))

    sdpa = copy.deepcopy(plain)
    attn_blocks = [m for m in sdpa.modules() if type(m) is AttnBlock]
    for module in attn_blocks:
        module.__class__ = SdpaAttnBlock
    attention_rows = []
    if attn_blocks:  # one attention block alone, at the decoder's attention shape (the mid block's input)
        block = attn_blocks[0]
        x_attn = torch.randn(32, block.channels, 16, 16, device=dev)
        for name, cls in (("two products (radar_train since 2026-12-05)", AttnBlock), ("SDPA (before)", SdpaAttnBlock)):
            block.__class__ = cls
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                wall, kernels = bench(lambda: block(x_attn)), device_ms(lambda: block(x_attn))
            print(f"decode attention block, C {block.channels}, 16x16, batch 32, bf16 autocast, {name}: {wall:.3f} ms "
                  f"per eager call, kernels alone {'-' if kernels is None else f'{kernels:.3f} ms'}", flush=True)
            attention_rows.append({"variant": f"attention block alone: {name}", "batch_size": 32,
                                   "channels": block.channels, "wall_ms": wall, "device_ms": kernels})
        block.__class__ = SdpaAttnBlock
    variants = {"float32": (plain, None), "bf16 autocast": (plain, torch.bfloat16),
                "bf16 autocast, attention by SDPA (before 2026-12-05)": (sdpa, torch.bfloat16),
                "bf16 autocast, GroupNorm in bf16": (narrow, torch.bfloat16)}
    if "compiled" in sys.argv[2:]:  # (compiling takes a minute or more)
        variants["bf16 autocast, compiled blocks"] = (fused, torch.bfloat16)
    rows_out, ref = attention_rows, None
    for name, (dec, dtype) in variants.items():
        def call(dec=dec, dtype=dtype):
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                return dec.to_image(f_hat).float()
        t = time.perf_counter()
        out = call()
        torch.cuda.synchronize()
        first = time.perf_counter() - t
        ms = bench(call, n=10)
        ref = out if ref is None else ref
        diff = (out - ref).abs().max().item()
        print(f"decode {name}: first call {first:.1f} s, {ms:.1f} ms per call ({32e3 / ms:.1f} images/s), "
              f"max |diff| from float32 {diff:.2e}", flush=True)
        rows_out.append({"variant": name, "batch_size": 32, "first_call_s": first, "ms": ms,
                         "images_per_s": 32e3 / ms, "max_abs_diff_vs_float32": diff})
    write_rows("decode", rows_out)
