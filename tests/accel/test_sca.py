"""SCA-Mask: tile scores, selection under budgets, masked attention and KV eviction, the mask file,
refusals, and the helpers for benchmarks (FLOP model, KV bytes, FastVAR at an attention budget)."""
import copy
import math
import re
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from radar_train.accel import AccelMethod, AccelRun, ConfigError, SCAMask, build_accel
from radar_train.accel.calibrate import calibrate_sca, write_sca_mask
from radar_train.accel.sca import (ScaleTiles, fastvar_for_attention_budget, flex_attention_call, ideal_speedup,
                                   held_kv_tokens, load_mask_file, measure_kv_bytes, scale_tiles, select_masks,
                                   tile_counts)
from radar_train.config import AccelArgs, SamplingConfig, SCAArgs
from radar_train.models import ModelIdentity
from radar_train.models.configs import PATCH_NUMS_256
from radar_train.models.hooks import StepHooks
from radar_train.sampling import NextScaleSampler, generate_pairs

TINY_ID = {"kind": "random", "value": "tiny:seed=0"}
SAMPLING = SamplingConfig(cfg=1.5, top_k=100, top_p=0.95)


def _sampler(tiny_models, **kw):
    vqvae, var = tiny_models
    return NextScaleSampler(var, vqvae.quantize, replace(SAMPLING, **kw))


@pytest.fixture(scope="module")
def mask_file(tiny_models, tmp_path_factory):
    """A mask file calibrated on the tiny model (4 vanilla samples, default budgets)."""
    vqvae, var = tiny_models
    s = NextScaleSampler(var, vqvae.quantize, SAMPLING)
    scores, rows = calibrate_sca(s, (4, 6, 8), 16, 1.0, num_samples=4, batch_size=2, num_classes=var.num_classes)
    path = tmp_path_factory.mktemp("sca") / "tiny_sca.safetensors"
    model = {"preset": "tiny", "var": TINY_ID, "depth": var.depth, "num_heads": 4, "embed_dim": 64}
    write_sca_mask(path, SCAArgs(), var.patch_nums, scores, tile=16, tau=1.0, rows=rows, num_samples=4, seed=0,
                   batch_size=2, model=model, sampling=asdict(SAMPLING))
    return path


def _sca(tiny_models, identity=None, **kw) -> SCAMask:
    _, var = tiny_models
    return build_accel(AccelArgs("sca", sca=SCAArgs(**kw)), var.patch_nums, var.depth, identity)


# ---------------------------------------------------------------------------- tile scores
def test_tile_counts_on_a_hand_made_pattern():
    # scales 1, 2, 3: the last has queries [5, 14), keys [0, 14); tile 4 -> query tiles of 4, 4, 1 tokens,
    # key tiles [0,4) [4,8) [8,12) [12,14); τ = 1/14 (the uniform level)
    geo = ScaleTiles(5, 14, 4, 1)
    p = torch.zeros(2, 2, 9, 14)  # 2 rows, 2 heads
    p[:, 0, 0:4, 0] = 1.0  # head 0: query tile 0 looks at key 0 only
    p[:, 0, 4:8, 8:12] = 0.25  # query tile 1 spreads over key tile 2
    p[:, 0, 8, 12:14] = 0.5  # query tile 2 over key tile 3
    p[:, 1, :, 13] = 1.0  # head 1: every query on the last key
    t_q, t_kv = tile_counts(p, geo, 1 / 14)
    want_q = torch.zeros(2, 3, 4, dtype=torch.float64)
    want_q[0, 0, 0], want_q[0, 1, 2], want_q[0, 2, 3] = 4, 4, 1  # rows of the tile above τ, per row (x2 rows)
    want_q[1, :, 3] = torch.tensor([4.0, 4.0, 1.0])
    want_kv = torch.zeros(2, 3, 4, dtype=torch.float64)
    want_kv[0, 0, 0], want_kv[0, 1, 2], want_kv[0, 2, 3] = 1, 4, 2  # key columns above τ
    want_kv[1, :, 3] = 1  # only key 13
    assert torch.equal(t_q, 2 * want_q) and torch.equal(t_kv, 2 * want_kv)
    # averaged over heads: head 0's entries halve (still above τ except ...), head 1's key 13 halves too
    t_q_mean, _ = tile_counts(p.mean(1, keepdim=True), geo, 1 / 14)
    assert t_q_mean.shape == (1, 3, 4) and t_q_mean[0, 0, 0] == 8 and t_q_mean[0, 0, 3] == 8


def test_protected_blocks_on_the_256px_schedule():
    # tile 64: scale 16 = queries [424, 680) in 4 tiles, 11 key tiles; each query tile overlaps 2 key tiles,
    # plus the sink (key tile 0) for each: 12. Scale 13 = [255, 424): 3 tiles x 2 + 3 = 9. Scale 10: 3 + 2.
    assert int(scale_tiles(PATCH_NUMS_256, 9, 64).protected().sum()) == 12
    assert int(scale_tiles(PATCH_NUMS_256, 8, 64).protected().sum()) == 9
    assert int(scale_tiles(PATCH_NUMS_256, 7, 64).protected().sum()) == 5


@pytest.mark.parametrize("compute,memory", [(0.5, 0.6), (0.3, 0.5), (0.75, 0.8), (0.62, 1.0)])
def test_selection_respects_budgets_and_keeps_protected(compute, memory):
    active, depth, heads = (7, 8, 9), 3, 2
    g = torch.Generator().manual_seed(0)
    score_q = {si: torch.rand(depth, heads, scale_tiles(PATCH_NUMS_256, si, 64).nq,
                              scale_tiles(PATCH_NUMS_256, si, 64).nk, generator=g) for si in active}
    # Score_KV = j for key tile j from every query tile (2, 3, 4 query tiles at scales 10, 13, 16)
    score_kv = {si: torch.arange(scale_tiles(PATCH_NUMS_256, si, 64).nk, dtype=torch.float64).expand(
        depth, scale_tiles(PATCH_NUMS_256, si, 64).nq, -1).clone() for si in active}
    m = select_masks(PATCH_NUMS_256, active, 64, compute, memory, score_q, score_kv)
    # evictable: tiles complete before 424 (the last scale's start) other than the sink: 1..5. Each one's
    # score sums the scales from which it would be gone: tile 1 (ends 128, gone from scale 10 at 155):
    # (2+3+4)·1 = 9; tile 2 (ends 192, gone from 13 at 255): (3+4)·2 = 14; tile 3 (ends 256 > 255, gone
    # from 16): 4·3 = 12; tile 4: 16; tile 5: 20 -> eviction order 1, 3, 2, 4, 5. The memory budget is a
    # share of vanilla's 680 cached tokens; the cache holds the most at the last scale, 680 - 64·k with k
    # tiles evicted: 0.8 allows 544 tokens -> k = 3 (608 > 544 with 2); 0.6 allows 408 -> 5 (424 with 4);
    # 0.5 allows 340, below the protected 360 -> all 5; 1.0 -> none
    n_drop = {0.8: 3, 0.6: 5, 0.5: 5, 1.0: 0}[memory]
    for b in range(depth):
        assert torch.nonzero(m.evicted[b]).flatten().tolist() == sorted([1, 3, 2, 4, 5][:n_drop])
    assert all(h <= 680 - 64 * n_drop for h in held_kv_tokens(m, depth))  # (unread tiles may leave too)
    for si in active:
        geo = scale_tiles(PATCH_NUMS_256, si, 64)
        prot = geo.protected()
        target = max(math.floor(compute * geo.nq * geo.nk + 1e-9), int(prot.sum()))
        ends = torch.clamp((torch.arange(geo.nk) + 1) * 64, max=680)
        for b in range(depth):
            gone = m.evicted[b, : geo.nk] & (ends <= geo.begin)  # evicted before this scale
            for h in range(heads):
                keep = m.keep[si][b, h]
                assert int(keep.sum()) == min(target, geo.nq * int((~gone).sum()))  # fewer where too few are left
                assert bool(keep[prot].all())
                assert not bool(keep[:, m.evicted[b, : geo.nk] & ~m.present[si][b]].any())
                # the best-scoring available blocks are the kept ones
                free = ~prot & m.present[si][b].view(1, -1)
                if bool((free & ~keep).any()) and bool((free & keep).any()):
                    assert score_q[si][b, h][free & keep].min() >= score_q[si][b, h][free & ~keep].max()
            assert bool(m.token_mask(si, b).any(-1).all())  # no query row without keys


def test_window_keeps_the_tiles_nearest_the_diagonal():
    m = select_masks(PATCH_NUMS_256, (7, 8, 9), 64, 0.5, 1.0)
    for si in (7, 8, 9):
        geo = scale_tiles(PATCH_NUMS_256, si, 64)
        keep, dist = m.keep[si][0, 0], geo.distance()
        assert int(keep.sum()) == max(math.floor(0.5 * geo.nq * geo.nk), int(geo.protected().sum()))
        free = ~geo.protected()
        if bool((free & ~keep).any()) and bool((free & keep).any()):
            assert dist[free & keep].max() <= dist[free & ~keep].min()


# ---------------------------------------------------------------------------- sampling
def test_full_budgets_reproduce_vanilla_bit_for_bit(tiny_models, mask_file):
    s = _sampler(tiny_models)
    method = _sca(tiny_models, mask_file=str(mask_file), compute_budget=1.0, memory_budget=1.0)
    assert method.first_modified_scale(s.patch_nums) is None
    labels, seeds = torch.tensor([1, 4, 7]), [3, 9, 27]
    van, acc = s.sample(labels, seeds=seeds), s.sample(labels, seeds=seeds, accel=method)
    assert all(torch.equal(a, b) for a, b in zip(van.indices, acc.indices))
    assert torch.equal(van.f_hat, acc.f_hat)


def test_masked_run_changes_only_the_active_scales_and_is_batch_independent(tiny_models, mask_file):
    s = _sampler(tiny_models)
    method = _sca(tiny_models, mask_file=str(mask_file), preset="aggressive")
    first = method.first_modified_scale(s.patch_nums)
    assert first == s.patch_nums.index(6)  # scale 4 is fully protected at tile 16
    labels, seeds = torch.tensor([0, 4, 9]), [11, 12, 13]
    van, acc = s.sample(labels, seeds=seeds), s.sample(labels, seeds=seeds, accel=method)
    assert all(torch.equal(van.indices[si], acc.indices[si]) for si in range(first))
    assert not torch.equal(van.f_hat, acc.f_hat)
    for i in range(3):
        one = s.sample(labels[i:i + 1], seeds=seeds[i:i + 1], accel=method)
        assert all(torch.equal(a[i:i + 1], b) for a, b in zip(acc.indices, one.indices))
        torch.testing.assert_close(one.f_hat, acc.f_hat[i:i + 1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("noise", ["per_sample", "official"])
@pytest.mark.parametrize("kw", [dict(preset="default"), dict(selection="window", compute_budget=0.4)],
                         ids=["scores", "window"])
def test_fork_equals_standalone_runs(tiny_models, mask_file, noise, kw):
    s = _sampler(tiny_models, noise=noise)
    if kw.get("selection") != "window":
        kw = dict(kw, mask_file=str(mask_file))
    method = _sca(tiny_models, **kw)
    labels = torch.tensor([0, 4, 9])
    call = dict(seeds=[11, 12, 13]) if noise == "per_sample" else dict(g_seed=5)
    pair = generate_pairs(s, labels, method, **call)
    van, acc = s.sample(labels, **call), s.sample(labels, accel=method, **call)
    assert all(torch.equal(a, b) for a, b in zip(pair.hq.indices, van.indices))
    assert all(torch.equal(a, b) for a, b in zip(pair.lq.indices, acc.indices))
    assert torch.equal(pair.hq.f_hat, van.f_hat) and torch.equal(pair.lq.f_hat, acc.f_hat)
    assert pair.fork_scale == method.first_modified_scale(s.patch_nums)


class _NaiveReference(StepHooks):
    """The same masks without eviction: the full cache, the mask in original key positions (evicted
    tiles are never kept), and an explicit softmax."""

    def __init__(self, masks):
        self.masks, self.si = masks, None

    def attention(self, block_idx, q, k, v, scale):
        if self.si not in self.masks.active:
            return super().attention(block_idx, q, k, v, scale)
        allowed = self.masks.token_mask(self.si, block_idx)  # (heads, l, end)
        logits = (q.double() @ k.double().transpose(-1, -2)) * scale
        logits = logits.masked_fill(~allowed.unsqueeze(0), float("-inf"))
        return (logits.softmax(-1) @ v.double()).to(q.dtype)


def test_cpu_masked_path_equals_a_naive_reference_with_the_full_cache(tiny_models, mask_file):
    s = _sampler(tiny_models)
    method = _sca(tiny_models, mask_file=str(mask_file), preset="aggressive", per_head=True)
    m = method.masks()
    assert bool(m.evicted.any())  # the memory budget evicts tiles, so the bookkeeping is exercised
    ref_hooks = _NaiveReference(m)

    class RefRun(AccelRun):
        def begin_scale(self, si, rows):
            ref_hooks.si = si
            return ref_hooks

    class Ref(AccelMethod):
        def start(self, ctx):
            return RefRun(ctx)

    labels, seeds = torch.tensor([2, 5]), [7, 8]
    out = s.sample(labels, seeds=seeds, accel=method, trace=True)
    ref = s.sample(labels, seeds=seeds, accel=Ref(), trace=True)
    for si in range(len(s.patch_nums)):
        torch.testing.assert_close(out.trace[f"raw_logits.{si}"], ref.trace[f"raw_logits.{si}"], atol=1e-4, rtol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(out.indices, ref.indices))


def test_flex_attention_equals_masked_sdpa_on_cpu(tiny_models, mask_file):
    pytest.importorskip("torch.nn.attention.flex_attention")
    sdpa = _sca(tiny_models, mask_file=str(mask_file), preset="aggressive", per_head=True, kernel="sdpa")
    flex = _sca(tiny_models, mask_file=str(mask_file), preset="aggressive", per_head=True, kernel="flex")
    dev = torch.device("cpu")
    ts, tf = sdpa.tables(4, dev), flex.tables(4, dev)
    g = torch.Generator().manual_seed(0)
    checked = 0
    for si in (4, 5):
        for b in (0, 3):
            a, f = ts[si][b], tf[si][b]
            if a.mask is None:
                continue
            _, H, l, n = a.mask.shape
            q, k, v = (torch.randn(2, 4, length, 16, generator=g) for length in (l, n, n))
            want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=a.mask, scale=1.0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # flex on the CPU warns that it is not compiled
                got = flex_attention_call(q, k, v, f.block_mask, 1.0, flex.tile)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            checked += 1
    assert checked >= 2


@pytest.mark.gpu
def test_flex_attention_equals_sdpa_path_on_cuda(tiny_models, mask_file):
    vqvae, var = tiny_models
    dev = torch.device("cuda")
    vq, v = copy.deepcopy(vqvae).to(dev), copy.deepcopy(var).to(dev)
    s = NextScaleSampler(v, vq.quantize, SAMPLING)
    labels, seeds = torch.tensor([1, 2, 3], device=dev), [4, 5, 6]
    outs = {}
    for kernel in ("flex", "sdpa"):
        method = _sca(tiny_models, mask_file=str(mask_file), preset="aggressive", per_head=True, kernel=kernel)
        assert method.use_flex(dev) == (kernel == "flex")
        outs[kernel] = s.sample(labels, seeds=seeds, accel=method, trace=True)
    first = method.first_modified_scale(s.patch_nums)  # the same inputs there; later tokens may differ by a tie
    for si in range(first + 1):
        torch.testing.assert_close(outs["flex"].trace[f"raw_logits.{si}"], outs["sdpa"].trace[f"raw_logits.{si}"],
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_flex_attention_equals_sdpa_on_d16_shapes_in_bf16():
    """Tile 64 on the real 256px schedule (random d16 weights), bf16 autocast as the sampler runs on CUDA."""
    from radar_train.models import build_var, get_preset
    from radar_train.models.init import init_random_
    from radar_train.models.quantizer import MultiScaleQuantizer

    dev, preset = torch.device("cuda"), get_preset("var-d16")
    var = init_random_(build_var(preset.var), 0).to(dev).eval().requires_grad_(False).cast_body_(torch.bfloat16)
    vc = preset.vae.with_patch_nums(preset.var.patch_nums)
    quant = MultiScaleQuantizer(vc.vocab_size, vc.z_channels, vc.patch_nums, quant_resi=vc.quant_resi,
                                share_quant_resi=vc.share_quant_resi)
    quant = init_random_(quant, 1).to(dev).eval().requires_grad_(False)
    s = NextScaleSampler(var, quant, SAMPLING, autocast_dtype=torch.bfloat16)
    logits = {}
    for kernel in ("flex", "sdpa"):
        method = build_accel(AccelArgs("sca", sca=SCAArgs(selection="window", preset="aggressive", kernel=kernel)),
                             var.patch_nums, var.depth)
        assert method.tile == 64 and method.use_flex(dev) == (kernel == "flex")
        out = s.sample(torch.tensor([1, 2], device=dev), seeds=[0, 1], accel=method, trace=True)
        logits[kernel] = out.trace[f"raw_logits.{method.first_modified_scale(var.patch_nums)}"]
    diff = (logits["flex"] - logits["sdpa"]).abs().mean()
    assert diff < 0.02 * logits["sdpa"].abs().mean()  # bf16 rounding only


def test_kv_eviction_measured_equals_the_plan(tiny_models, mask_file):
    s = _sampler(tiny_models)
    method = _sca(tiny_models, mask_file=str(mask_file), preset="default")
    kv = measure_kv_bytes(s, method, torch.tensor([1, 2]), [0, 1])
    m = method.masks()
    last = m.active[-1]
    assert kv["vanilla"][:last] == kv["accelerated"][:last]
    assert kv["peak_ratio"] == pytest.approx(m.kv_share(last), abs=1e-12) and kv["peak_ratio"] < 1.0


def test_kv_capacity_is_the_most_tokens_a_run_holds(tiny_models, mask_file, monkeypatch):
    """The per-block capacity SCA-Mask computes from its masks (no data) against a real run with memory budget
    0.5: the most tokens each block's cache holds after any append, and after any scale (the evicted tokens
    leave before a scale's K/V join), equal it; the buffers have exactly that size. Budgets 1 / 1 and the
    other methods need the whole sequence."""
    from radar_train.accel import FastVAR
    from radar_train.models.hooks import KVCache

    s = _sampler(tiny_models)
    _, var = tiny_models
    L, depth = var.config.num_tokens, var.depth
    method = _sca(tiny_models, mask_file=str(mask_file), memory_budget=0.5)
    cap = method.kv_capacity(s.patch_nums, depth)
    assert len(cap) == depth and max(cap) < L  # the budget saves memory in every block
    held: list[list[int]] = [[] for _ in range(depth)]
    extend = KVCache.extend

    def spy(self, b, k, v):
        out = extend(self, b, k, v)
        held[b].append(self.n[b])
        return out

    monkeypatch.setattr(KVCache, "extend", spy)
    state = s.start(torch.tensor([1, 2]), seeds=[0, 1], accel=method)
    after_scale = []
    for si in range(len(s.patch_nums)):
        s.advance(state, until=si + 1)
        after_scale.append(list(state.kv.n))
    assert [len(h) for h in held] == [len(s.patch_nums)] * depth
    assert tuple(max(h) for h in held) == cap
    assert tuple(max(n[b] for n in after_scale) for b in range(depth)) == cap
    assert tuple(t.shape[2] for t in state.kv.k) == cap
    full = _sca(tiny_models, mask_file=str(mask_file), compute_budget=1.0, memory_budget=1.0)
    assert full.kv_capacity(s.patch_nums, depth) == (L,) * depth
    assert FastVAR(prune=((8, 0.5),)).kv_capacity(s.patch_nums, depth) is None
    van = s.advance(s.start(torch.tensor([1, 2]), seeds=[0, 1]))
    assert [t.shape[2] for t in van.kv.k] == [L] * depth and van.kv.n == [L] * depth


def test_memory_budget_allocates_less_kv_for_the_same_tokens(tiny_models, mask_file, monkeypatch):
    """measure_kv_bytes: the buffers of a run with memory budget 0.5 are its capacity (below vanilla's whole
    sequence); the tokens and f_hat equal those of the same run in whole-sequence buffers."""
    s = _sampler(tiny_models)
    _, var = tiny_models
    L, depth = var.config.num_tokens, var.depth
    method = _sca(tiny_models, mask_file=str(mask_file), memory_budget=0.5)
    cap = method.kv_capacity(s.patch_nums, depth)
    labels, seeds = torch.tensor([1, 2, 5]), [0, 1, 2]
    kv = measure_kv_bytes(s, method, labels, seeds)
    per_token = 2 * (2 * 3) * var.config.embed_dim * 4  # k and v, 2B rows, heads x head_dim, float32
    assert kv["allocated"] == {"vanilla": per_token * L * depth, "accelerated": per_token * sum(cap)}
    assert kv["allocated_ratio"] == sum(cap) / (L * depth) < 1
    assert max(kv["vanilla"]) == kv["allocated"]["vanilla"] and max(kv["accelerated"]) <= kv["allocated"]["accelerated"]
    out = s.sample(labels, seeds=seeds, accel=method)
    monkeypatch.setattr(SCAMask, "kv_capacity", lambda self, patch_nums, depth: None)  # the whole sequence
    state = s.advance(s.start(labels, seeds=seeds, accel=method))
    assert [t.shape[2] for t in state.kv.k] == [L] * depth
    ref = s.output(state)
    assert all(torch.equal(a, b) for a, b in zip(out.indices, ref.indices)) and torch.equal(out.f_hat, ref.f_hat)


@pytest.mark.parametrize("memory", [0.95, 0.85, 0.75])
def test_the_memory_budget_caps_the_whole_kv_cache(tiny_models, mask_file, memory):
    """methods.md §8.2g: the memory budget is the share of vanilla's KV cache kept. A real run's KV buffers
    (measure_kv_bytes) stay within it, and the selection evicts no more tiles than it needs: keeping one of its
    evicted tiles back in every block would exceed the budget."""
    s = _sampler(tiny_models)
    _, var = tiny_models
    L, depth = var.config.num_tokens, var.depth
    method = _sca(tiny_models, mask_file=str(mask_file), compute_budget=1.0, memory_budget=memory)
    kv = measure_kv_bytes(s, method, torch.tensor([1, 2]), [0, 1])
    assert kv["allocated_ratio"] <= memory
    assert kv["allocated_ratio"] == pytest.approx(method.derived(s.patch_nums)["kv_allocated"], abs=5e-5)
    m = method.masks()
    assert bool(m.evicted.any())
    tile = m.tile
    for b in range(depth):  # compute budget 1: every tile not evicted is read, so the peak is L - evicted tokens
        assert L - tile * int(m.evicted[b].sum()) <= math.floor(memory * L)
        assert L - tile * (int(m.evicted[b].sum()) - 1) > math.floor(memory * L)


def test_a_memory_budget_below_the_protected_floor_evicts_every_evictable_tile(tiny_models, mask_file):
    """The sink, the last scale's tokens and the tiles not complete before it stay: a budget below what they hold
    gives that floor (radar-accel show's kv_allocated says so), as a compute budget below the protected blocks."""
    s = _sampler(tiny_models)
    _, var = tiny_models
    low = _sca(tiny_models, mask_file=str(mask_file), compute_budget=1.0, memory_budget=0.05)
    lower = _sca(tiny_models, mask_file=str(mask_file), compute_budget=1.0, memory_budget=0.01)
    assert torch.equal(low.masks().evicted, lower.masks().evicted)
    assert low.derived(s.patch_nums)["kv_allocated"] > 0.05


def test_an_sca_memory_budget_recorded_before_it_meant_the_whole_kv_cache_is_not_reproducible(tiny_models, mask_file):
    """A manifest's SCA-Mask with a memory budget below 1 and no memory_budget_of was written when the budget was
    a share of the evictable tiles: no configuration reproduces it now. Budget 1 meant the same then and now."""
    from radar_train.accel import not_reproducible

    d = _sca(tiny_models, mask_file=str(mask_file), memory_budget=0.6).describe()
    assert d["memory_budget_of"] == "kv_cache" and not_reproducible(d) is None
    old = {k: v for k, v in d.items() if k != "memory_budget_of"}
    assert "memory_budget 0.6 was made by a radar_train before 2026-12-04" in not_reproducible(old)
    full = _sca(tiny_models, mask_file=str(mask_file), memory_budget=1.0).describe()
    assert "memory_budget_of" not in full and not_reproducible(full) is None


def test_forks_get_the_kv_capacity_of_their_branch(tiny_models, mask_file):
    """Forked at the first modified scale: the vanilla branch gets whole-sequence buffers, the accelerated one
    its method's capacity; each equals its standalone run."""
    s = _sampler(tiny_models)
    _, var = tiny_models
    L, depth = var.config.num_tokens, var.depth
    method = _sca(tiny_models, mask_file=str(mask_file), memory_budget=0.5)
    cap = method.kv_capacity(s.patch_nums, depth)
    labels, seeds = torch.tensor([0, 4, 9]), [11, 12, 13]
    state = s.advance(s.start(labels, seeds=seeds, accel=method), until=method.first_modified_scale(s.patch_nums))
    hq, lq = s.fork(state), s.fork(state, accel=method)
    assert hq.kv.capacity == tuple(t.shape[2] for t in hq.kv.k) == (L,) * depth
    assert lq.kv.capacity == tuple(t.shape[2] for t in lq.kv.k) == state.kv.capacity == cap
    van, acc = s.sample(labels, seeds=seeds), s.sample(labels, seeds=seeds, accel=method)
    for run, want in ((hq, van), (lq, acc), (state, acc)):
        got = s.output(s.advance(run))
        assert all(torch.equal(a, b) for a, b in zip(got.indices, want.indices)) and torch.equal(got.f_hat, want.f_hat)


def test_a_kv_capacity_below_what_the_run_holds_is_refused(tiny_models, mask_file, monkeypatch):
    s = _sampler(tiny_models)
    _, var = tiny_models
    method = _sca(tiny_models, mask_file=str(mask_file), memory_budget=0.5)
    cap = method.kv_capacity(s.patch_nums, var.depth)
    short = tuple(c - 1 if b == 2 else c for b, c in enumerate(cap))
    monkeypatch.setattr(SCAMask, "kv_capacity", lambda self, patch_nums, depth: short)
    with pytest.raises(ValueError, match=rf"^KV cache of block 2 holds \d+ of {short[2]} tokens; cannot append \d+$"):
        s.sample(torch.tensor([1]), seeds=[0], accel=method)
    monkeypatch.setattr(SCAMask, "kv_capacity", lambda self, patch_nums, depth: cap[:2])
    with pytest.raises(ValueError, match=r"^KV capacity must be one token count >= 0 or one per block \(4 blocks\)"):
        s.sample(torch.tensor([1]), seeds=[0], accel=method)


# ---------------------------------------------------------------------------- the mask file
def test_mask_file_round_trip(tiny_models, mask_file):
    from radar_train.models.checkpoint import file_sha256

    mf = load_mask_file(mask_file)
    h = mf.header
    assert (h["tile"], h["tau"], h["scales"], h["patch_nums"]) == (16, 1.0, [4, 6, 8], [1, 2, 3, 4, 6, 8])
    assert h["model"]["var"] == TINY_ID and h["calibration"]["num_samples"] == 4
    assert h["calibration"]["first_seed"] == 0 and h["budgets"]["compute"] == 0.5 and h["budgets"]["memory"] == 0.6
    assert h["calibration"]["attention_rows"] == 8  # 4 samples x 2 CFG rows
    method = _sca(tiny_models, mask_file=str(mask_file))
    m = method.masks()  # re-selected from the stored scores at the file's budgets = the stored masks
    for si in m.active:
        assert torch.equal(m.keep[si], mf.tensors[f"keep.{m.patch_nums[si]}"])
    assert torch.equal(m.evicted, mf.tensors["evicted"])
    assert method.describe()["mask_sha256"] == file_sha256(mask_file)
    # Score_Q over a query tile's rows cannot exceed rows x (query tokens) per block
    q8 = mf.tensors["score_q.8"]
    assert float(q8.max()) <= 8 * 16 and float(q8.min()) >= 0


def test_mask_for_another_model_is_refused(tiny_models, mask_file):
    with pytest.raises(ConfigError, match="calibrated on other weights") as e:
        _sca(tiny_models, ModelIdentity("random", "tiny:seed=1", {}), mask_file=str(mask_file))
    assert "\n" not in str(e.value)
    _sca(tiny_models, ModelIdentity("random", "tiny:seed=0", {}), mask_file=str(mask_file))  # its own: fine
    with pytest.raises(ConfigError, match="calibrated for another model"):
        build_accel(AccelArgs("sca", sca=SCAArgs(mask_file=str(mask_file))), PATCH_NUMS_256, 16)


@pytest.mark.parametrize("kw,match", [
    (dict(compute_budget=0.0), "compute_budget must be in"),
    (dict(memory_budget=1.5), "memory_budget must be in"),
    (dict(preset="fast"), "preset 'fast' is unknown"),
    (dict(tau=0.0), "tau must be > 0"),
    (dict(tile=8), "differs from the mask file's tile 16"),
    (dict(scales=[3, 4]), "were not calibrated"),
])
def test_bad_options_give_one_line_errors(tiny_models, mask_file, kw, match):
    with pytest.raises(ConfigError, match=match) as e:
        _sca(tiny_models, mask_file=str(mask_file), **kw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kw,match", [
    (dict(tile=0), "tile must be a positive"),
    (dict(tile=64), "not below the largest active scale"),
    (dict(tile=8, kernel="flex"), "power of two"),
    (dict(memory_budget=0.5), "needs selection scores"),
    (dict(scales=[2, 4]), "must be the last scales"),
])
def test_bad_window_options_give_one_line_errors(tiny_models, kw, match):
    with pytest.raises(ConfigError, match=match):
        _sca(tiny_models, selection="window", **kw)


def test_missing_or_foreign_mask_file(tiny_models, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        _sca(tiny_models, mask_file=str(tmp_path / "nope.safetensors"))
    with pytest.raises(ConfigError, match="mask_file is needed"):
        _sca(tiny_models)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not an SCA mask file") as e:
        _sca(tiny_models, mask_file=str(bad))
    assert "\n" not in str(e.value)


def _edited_mask(src: Path, dst: Path, header=None, tensors=None) -> Path:
    """A copy of the mask file `src` with `header(h)` and `tensors(t)` applied (each edits in place)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        meta, t = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    h = json.loads(meta["header"])
    if header:
        header(h)
    if tensors:
        tensors(t)
    meta["header"] = json.dumps(h)
    save_file(t, str(dst), metadata=meta)
    return dst


def _each_score(fn):
    def edit(t):
        for k in [k for k in t if k.startswith("score")]:
            t[k] = fn(t[k])
    return edit


@pytest.mark.parametrize("header, tensors, reason", [
    (None, _each_score(lambda x: x[..., :3].contiguous()), r"score_q\.\d+ is torch.float64 \(4, \d+, 3\), expected"),
    (None, lambda t: t.update({k: v[:2].contiguous() for k, v in t.items()}), r"expected torch.float64 \(4, "),
    (lambda h: h.update(tile="8"), None, "header tile '8' is not an integer >= 1"),
    (lambda h: h.update(tile=8), None, r"\(depth 4, 4 heads, tile 8\)"),
    (lambda h: h["model"].update(depth=2), None, r"\(depth 2, 4 heads"),
    (lambda h: (h.update(num_heads=2), h["model"].update(num_heads=2)), None,
     r"score_q_head\.\d+ is torch.float64 \(4, 4, \d+, \d+\), expected torch.float64 \(4, 2, "),
    (lambda h: h.update(model=[1, 2]), None, r"header model \[1, 2\] is not an object"),
    # (a string: a rank-ratio file's older form; every command that knew the weights raised an AttributeError)
    (lambda h: h["model"].update(var="tiny:seed=0"), None, r"header model.var 'tiny:seed=0' is not an object with "
                                                           r"the value \(sha256 or preset seed\) of the weights"),
    (lambda h: h["model"].pop("var"), None, r"header model.var None is not an object"),
    (lambda h: h["model"].update(num_heads=8), None, r"header num_heads 4 is not its model.num_heads 8"),
    (lambda h: h.update(patch_nums=None), None, "header patch_nums None is not an increasing list"),
    (lambda h: h.update(scales=[]), None, r"header scales \[\] are not distinct sides"),
    (lambda h: h.update(scales=["8"]), None, "header scales"),
    (lambda h: h.update(tau="1"), None, "header tau '1' is not a number"),
    (None, _each_score(lambda x: torch.full_like(x, float("nan"))), "holds NaN, inf or negative counts"),
    (None, _each_score(lambda x: -x - 1), "holds NaN, inf or negative counts"),
    (None, _each_score(lambda x: x.long()), r"is torch.int64 .* expected torch.float64"),
])
def test_a_mask_file_edited_by_hand_is_refused_in_one_line(tiny_models, mask_file, tmp_path, header, tensors, reason):
    """A mask file whose header fields have other types, or whose scores have other shapes or dtypes than its depth,
    heads, patch_nums and tile give, or hold NaN or negative counts, is not an SCA mask file: one line naming it.
    (Before, it failed deep in the selection with a traceback, or NaN scores ranked blocks in an arbitrary order
    and every command went on with exit 0.)"""
    bad = _edited_mask(mask_file, tmp_path / "edited.safetensors", header, tensors)
    with pytest.raises(ValueError, match=f"^{re.escape(str(bad))}: not an SCA mask file \\(.*{reason}") as e:
        _sca(tiny_models, mask_file=str(bad))
    assert "\n" not in str(e.value)
    _sca(tiny_models, mask_file=str(_edited_mask(mask_file, tmp_path / "same.safetensors")))  # (the copy itself reads)


def test_a_mask_file_of_another_head_count_or_width_is_refused_against_the_model(tiny_models, mask_file, tmp_path):
    """A file consistent in itself (2 heads: its per-head scores sliced to match) on the 4-head tiny VAR: accepted,
    then per_head sampling failed inside attention with a traceback (radar-cache had written its manifest)."""
    def two_heads(h):
        h["num_heads"] = 2
        h["model"]["num_heads"] = 2

    heads = _edited_mask(mask_file, tmp_path / "heads2.safetensors", two_heads,
                         lambda t: t.update({k: v[:, :2].contiguous() for k, v in t.items() if "_head." in k}))
    wide = _edited_mask(mask_file, tmp_path / "wide.safetensors", lambda h: h["model"].update(embed_dim=999))
    for bad, found in ((heads, "2 heads, width 64"), (wide, "4 heads, width 999")):
        _sca(tiny_models, mask_file=str(bad), per_head=True)  # (the file alone reads: `radar-accel show`)
        with pytest.raises(ConfigError) as e:
            _sca(tiny_models, {**TINY_ID, "config": tiny_models[1].config.to_dict()}, mask_file=str(bad),
                 per_head=True)
        assert f"mask file {bad} was calibrated for another model ({found}); this VAR has 4 heads, width 64: " \
               f"calibrate one for it" in str(e.value)
    _sca(tiny_models, {**TINY_ID, "config": tiny_models[1].config.to_dict()}, mask_file=str(mask_file))


# ---------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("method,option", [("sca", "--accel.sca.mask_file"),
                                           ("stagevar", "--accel.stagevar.rank_ratios")])
def test_calibrate_refuses_the_file_a_method_reads_at_use(tmp_path, method, option):
    """It was taken and ignored: the calibration wrote sca_mask.safetensors (ranks.yaml), not the file named."""
    from cli_checks import assert_refused

    default = {"sca": "sca_mask.safetensors", "stagevar": "ranks.yaml"}[method]
    assert_refused("accel", ["calibrate", "--accel.method", method, "--model.preset", "tiny", "--num_samples", "2",
                             "--batch_size", "2", "--device", "cpu", option, "mine.file"], tmp_path, (tmp_path,),
                   [f"{option} mine.file: a calibration reads no such file, it writes one to --output ({default}): "
                    f"drop it (or give that file as --output)"])


def test_calibrate_and_show_commands(tmp_path, capsys):
    from radar_train.cli.accel import main

    out = tmp_path / "m.safetensors"
    args = ["calibrate", "--accel.method", "sca", "--model.preset", "tiny", "--num_samples", "2", "--batch_size", "2",
            "--device", "cpu", "--output", str(out)]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0 and out.is_file()
    before = out.read_bytes()
    with pytest.raises(SystemExit) as e:  # an existing file is never replaced
        main(args)
    assert e.value.code == 2 and out.read_bytes() == before
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["show", "--accel.method", "sca", "--accel.sca.mask_file", str(out), "--model.preset", "tiny"])
    assert e.value.code == 0
    shown = capsys.readouterr().out
    assert "per_scale:" in shown and '"8": {"blocks_kept": 0.5' in shown
    with pytest.raises(SystemExit) as e:
        main(["show", "--accel.method", "sca", "--accel.sca.mask_file", str(out), "--model.preset", "var-d16"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error:") and err.count("\n") == 1


# ---------------------------------------------------------------------------- accounting helpers
def test_ideal_speedup_flop_model(tiny_models):
    _, var = tiny_models
    full = _sca(tiny_models, selection="window", compute_budget=1.0)
    r = ideal_speedup(full, var.config)
    # tiny: C 64, depth 4, mlp 4, V 256, 130 tokens; attention pairs Σ l·e = 11323
    linear, attn = 130 * (4 * 12 * 64 * 64 + 64 * 256), 4 * 2 * 64 * 11323
    assert r["attention_share"] == pytest.approx(attn / (linear + attn))
    assert r["ideal_speedup"] == 1.0 and r["attention_pairs_kept"] == 1.0
    half = ideal_speedup(_sca(tiny_models, selection="window", compute_budget=0.4), var.config)
    assert 0 < half["attention_pairs_kept"] < 1 and half["ideal_speedup"] > 1


def test_fastvar_at_an_attention_budget(tiny_models):
    _, var = tiny_models
    for scales in ((4, 6, 8), (4, 8), (2, 8)):  # a scale left whole in between caches all its keys
        method, share = fastvar_for_attention_budget(0.5, var.patch_nums, scales)
        method.validate(var.patch_nums, var.depth)
        ratios = method.ratios
        assert set(ratios) == set(scales) and set(share) == set(scales)
        first = var.patch_nums.index(scales[0])
        n = sum(p * p for p in var.patch_nums[:first])  # keys before the first pruned scale
        for pn in var.patch_nums[first:]:
            l = pn * pn
            k = l - math.floor(l * ratios.get(pn, 0.0))  # FastVAR's kept query count
            e = sum(p * p for p in var.patch_nums[: var.patch_nums.index(pn) + 1])
            if pn in scales:
                assert share[pn] == pytest.approx(k * (n + k) / (l * e)), (scales, pn)
                assert abs(share[pn] - 0.5) <= (n + 2 * k + 1) / (l * e), (scales, pn)  # within one query
            n += k
    s = _sampler(tiny_models)
    out = s.sample(torch.tensor([1]), seeds=[0], accel=method)
    assert out.skipped_from is None


def test_the_docs_path_of_the_shipped_toy_masks_works_outside_a_checkout(tmp_path, monkeypatch):
    """`--accel.sca.mask_file radar_train/toyworld/weights/toy_sca_mask.safetensors` (docs/acceleration.md) is a
    checkout's path: run elsewhere (a wheel install), it named nothing and the error advised calibrating."""
    from radar_train.accel.sca import load_mask_file, packaged_path

    monkeypatch.chdir(tmp_path)
    name = "radar_train/toyworld/weights/toy_sca_mask.safetensors"
    assert packaged_path(name).is_absolute() and packaged_path(name).is_file()
    assert load_mask_file(name).tensors
    with pytest.raises(FileNotFoundError, match="weights/none.safetensors: SCA mask file not found"):
        load_mask_file("radar_train/toyworld/weights/none.safetensors")
