"""FastVAR: PTS / CTR semantics on hand-made tensors, equivalence at ratio 0, validation, presets."""
import math

import pytest
import torch

from radar_train.accel import ConfigError, FastVAR, build_accel
from radar_train.accel.fastvar import area_matrix, matmul_resize_dtypes, pivotal_tokens, resize_tokens, restore_tokens
from radar_train.config import AccelArgs, FastVARArgs, SamplingConfig
from radar_train.models.configs import PATCH_NUMS_256, PATCH_NUMS_512
from radar_train.sampling import NextScaleSampler


def test_pts_keeps_the_tokens_farthest_from_the_mean():
    x = torch.zeros(2, 9, 3)
    x[0, 4] = torch.tensor([5.0, 0, 0])  # outliers in row 0: tokens 4 and 7
    x[0, 7] = torch.tensor([0, -4.0, 0])
    x[1, 0] = torch.tensor([1.0, 1.0, 1.0])  # row 1: token 0 and 8
    x[1, 8] = torch.tensor([-2.0, 0, 0])
    idx = pivotal_tokens(x, keep=2)
    assert idx.tolist() == [[4, 7], [0, 8]]  # per row, ascending


def test_pts_score_is_squared_distance_to_the_spatial_mean():
    torch.manual_seed(0)
    x = torch.randn(1, 16, 4)
    score = ((x - x.mean(1, keepdim=True)) ** 2).sum(-1)[0]
    assert pivotal_tokens(x, 5)[0].tolist() == sorted(score.topk(5).indices.tolist())


def test_ctr_area_restores_from_the_cached_grid_and_scatters_computed_tokens():
    cached = torch.arange(4.0).view(1, 4, 1)  # 2x2 grid [[0,1],[2,3]]
    up = resize_tokens(cached, 4)  # area upsampling of 2x2 -> 4x4 repeats each cell
    assert up.view(4, 4).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    down = resize_tokens(torch.arange(16.0).view(1, 16, 1), 2)
    assert down.view(2, 2).tolist() == [[2.5, 4.5], [10.5, 12.5]]  # area = mean over each window
    idx = torch.tensor([[1, 5]])
    out = restore_tokens(cached, 4, idx, torch.tensor([[[9.0], [8.0]]]))
    expect = up.clone()
    expect[0, 1], expect[0, 5] = 9.0, 8.0
    assert torch.equal(out, expect)


def test_kept_count_is_m_minus_floor_m_rho(tiny_models):
    """At a pruned scale each attention call sees M − ⌊Mρ⌋ query tokens (and appends that many K/V)."""
    vqvae, var = tiny_models
    method = FastVAR(prune=((6, 0.5), (8, 0.75)))
    seen = []  # query tokens of every attention call, in call order (depth calls per scale)
    for blk in var.blocks:
        blk.attn.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
    try:
        s = NextScaleSampler(var, vqvae.quantize, SamplingConfig(top_k=0, top_p=0.0))
        s.sample(torch.tensor([1]), seeds=[0], accel=method)
    finally:
        for blk in var.blocks:
            blk.attn._forward_hooks.clear()
    per_scale = [set(seen[i: i + var.depth]) for i in range(0, len(seen), var.depth)]
    kept = {6: 36 - math.floor(36 * 0.5), 8: 64 - math.floor(64 * 0.75)}
    assert per_scale == [{kept.get(pn, pn * pn)} for pn in var.patch_nums]


def test_all_ratios_zero_equals_vanilla_bitwise(tiny_models):
    vqvae, var = tiny_models
    s = NextScaleSampler(var, vqvae.quantize, SamplingConfig(cfg=2.0, top_k=32, top_p=0.9))
    labels, seeds = torch.tensor([0, 3, 5]), [4, 5, 6]
    van = s.sample(labels, seeds=seeds)
    zero = s.sample(labels, seeds=seeds, accel=FastVAR(prune=((4, 0.0), (6, 0.0), (8, 0.0))))
    assert all(torch.equal(a, b) for a, b in zip(van.indices, zero.indices))
    assert torch.equal(van.f_hat, zero.f_hat)


def test_a_ratio_zero_scale_is_vanilla_as_if_not_listed(tiny_models):
    """Ratio 0 prunes nothing: before, the scale ran the pruning path and counted as pruned, so the cache scale
    and the first modified scale moved before it and {6: 0, 8: 0.75} sampled other latents than {8: 0.75}."""
    from radar_train.accel.sca import fastvar_for_attention_budget
    from radar_train.accel.spec import build_spec
    from radar_train.sampling import generate_pairs

    vqvae, var = tiny_models
    pns = var.patch_nums
    s = NextScaleSampler(var, vqvae.quantize, SamplingConfig(cfg=2.0, top_k=0, top_p=0.0))
    labels, seeds = torch.tensor([1, 2, 3]), [5, 6, 7]
    zero, plain = FastVAR(prune=((6, 0.0), (8, 0.75))), FastVAR(prune=((8, 0.75),))
    assert zero == plain and zero.describe() == plain.describe()
    assert zero.first_modified_scale(pns) == pns.index(8) and zero.derived(pns) == {"cache_scale_used": 6}
    a, b = (s.sample(labels, seeds=seeds, accel=m).f_hat for m in (zero, plain))
    assert torch.equal(a, b)
    assert generate_pairs(s, labels, zero, seeds=seeds).fork_scale == pns.index(8)
    build_spec("fastvar:prune=6:0/8:0.75+cache_scale=6", pns, var.depth)  # 6 is before the first pruned scale
    assert FastVAR(prune=((6, -0.0),)).first_modified_scale(pns) is None
    method, share = fastvar_for_attention_budget(0.97, pns, [4, 6, 8])  # scale 4 stays whole at this budget
    assert set(share) == {4, 6, 8} and [pn for pn, _ in method.prune] == [6, 8]


def test_pruning_changes_the_result_only_from_the_first_pruned_scale(tiny_models):
    vqvae, var = tiny_models
    s = NextScaleSampler(var, vqvae.quantize, SamplingConfig(cfg=2.0, top_k=0, top_p=0.0))
    labels, seeds = torch.tensor([0, 3, 5, 7]), [4, 5, 6, 7]
    van = s.sample(labels, seeds=seeds)
    acc = s.sample(labels, seeds=seeds, accel=build_accel(AccelArgs("fastvar"), var.patch_nums, var.depth))
    first = var.patch_nums.index(6)
    assert all(torch.equal(a, b) for a, b in zip(van.indices[:first], acc.indices[:first]))
    assert not torch.equal(van.indices[-1], acc.indices[-1])


def test_ratio_one_skips_the_rest(tiny_models):
    vqvae, var = tiny_models
    s = NextScaleSampler(var, vqvae.quantize, SamplingConfig(top_k=0, top_p=0.0))
    res = s.sample(torch.tensor([2]), seeds=[1], accel=FastVAR(prune=((6, 0.5), (8, 1.0))))
    assert res.skipped_from == len(var.patch_nums) - 1
    assert (res.indices[-1] == -1).all() and (res.indices[-2] >= 0).all()
    partial = s.sample(torch.tensor([2]), seeds=[1], accel=FastVAR(prune=((6, 0.5),)))
    assert not torch.equal(partial.f_hat, res.f_hat)


def test_presets_resolve_to_the_methods_tables():
    d = FastVAR.from_preset("default", PATCH_NUMS_256)
    assert d.ratios == {13: 0.5, 16: 0.75} and d._cache_side(PATCH_NUMS_256) == 10
    a = FastVAR.from_preset("aggressive", PATCH_NUMS_256)
    assert a.ratios == {10: 0.5, 13: 0.75, 16: 0.9} and a._cache_side(PATCH_NUMS_256) == 8
    assert FastVAR.from_preset("mild", PATCH_NUMS_256).ratios == {13: 0.4, 16: 0.5}
    e = FastVAR.from_preset("default", PATCH_NUMS_512)
    assert e.ratios == {24: 0.5, 32: 0.75} and e._cache_side(PATCH_NUMS_512) == 18
    with pytest.raises(ValueError, match="unknown fastvar preset 'fast'"):
        FastVAR.from_preset("fast", PATCH_NUMS_256)


@pytest.mark.parametrize("prune,cache,layers,expected", [
    ({7: 0.5}, None, None, ["scale 7 is not in the model's patch_nums"]),
    ({16: 1.5}, None, None, ["ratio 1.5 for scale 16 is outside [0, 1]"]),
    ({13: 0.5, 16: 0.5}, 13, None, ["cache_scale 13 must come before the first pruned scale 13"]),
    ({13: 0.5}, 11, None, ["cache_scale 11 is not in the model's patch_nums"]),
    ({13: 1.0, 16: 0.5}, None, None, ["scale 13 has ratio 1 (skip the rest) but later scales [16]"]),
    ({1: 1.0}, None, None, ["ratio 1 at the first scale would skip every scale"]),
    ({1: 0.5}, None, None, ["fastvar.prune: the first scale (1) cannot be pruned"]),  # (not the cache_scale unasked)
    ({16: 0.5}, None, [0, 99], ["fastvar.layers [99] out of range for depth 16"]),
])
def test_invalid_configs_are_reported(prune, cache, layers, expected):
    args = AccelArgs("fastvar", FastVARArgs(preset=None, prune=prune, cache_scale=cache, layers=layers))
    with pytest.raises(ConfigError) as e:
        build_accel(args, PATCH_NUMS_256, 16)
    for msg in expected:
        assert msg in str(e.value)


def test_every_problem_is_reported_at_once():
    args = AccelArgs("fastvar", FastVARArgs(preset=None, prune={7: 0.5, 16: 2.0}, layers=[40]))
    with pytest.raises(ConfigError) as e:
        build_accel(args, PATCH_NUMS_256, 16)
    assert len(e.value.problems) == 3


# ---------------------------------------------------------------------------- FLOP model
def test_ideal_speedup_flop_model_in_closed_form():
    from types import SimpleNamespace

    from radar_train.accel.fastvar import FastVAR, ideal_speedup

    # C 1, depth 1, mlp_ratio 1, V 1, scales 1 and 2: per token 6 (linear) + 1 (head), per q·k pair 2.
    # vanilla: scale 1: 6 + 1 + 2·1·1 = 9; scale 2 (4 queries, 5 keys): 24 + 4 + 2·4·5 = 68 -> 77
    cfg = SimpleNamespace(embed_dim=1, depth=1, mlp_ratio=1, vocab_size=1, patch_nums=(1, 2))
    # ρ 0.5 at scale 2: 2 queries, 3 keys, the head on all 4 tokens: 12 + 4 + 2·2·3 = 28 -> 9 + 28 = 37
    r = ideal_speedup(FastVAR(prune=((2, 0.5),)), cfg)
    assert r["ideal_speedup"] == pytest.approx(77 / 37)
    assert r["attention_share"] == pytest.approx((2 + 40) / 77)
    assert ideal_speedup(FastVAR(prune=((2, 1.0),)), cfg)["ideal_speedup"] == pytest.approx(77 / 9)  # skipped
    # pruning in no block (layers empty) leaves the work unchanged
    assert ideal_speedup(FastVAR(prune=((2, 0.5),), layers=()), cfg)["ideal_speedup"] == pytest.approx(1.0)


def test_ideal_speedup_of_the_default_preset_on_var_d16():
    from radar_train.accel.fastvar import FastVAR, ideal_speedup
    from radar_train.models import get_preset

    var = get_preset("var-d16").var
    r = ideal_speedup(FastVAR.from_preset("default", var.patch_nums), var)
    # {13: 0.5, 16: 0.75}: 404 of 680 query tokens; the head and the attention's quadratic part move it to ~1.71
    assert 1.65 < r["ideal_speedup"] < 1.75 and 0.05 < r["attention_share"] < 0.08


def test_radar_accel_show_prints_the_cache_scale_a_preset_works_out(capsys):
    """cache_scale: null in the resolved method (and manifests) means "the scale before the first pruned one":
    show prints the scale that is used (13 for VAR-d36 aggressive, whose first pruned scale is 18)."""
    from radar_train.cli.accel import main

    with pytest.raises(SystemExit) as e:
        main(["show", "--model.preset", "var-d36", "--accel.method", "fastvar", "--accel.fastvar.preset", "aggressive"])
    assert e.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert "cache_scale: null" in out and "cache_scale_used: 13" in out


@pytest.mark.parametrize("method,module", [("fastvar", "fastvar"), ("stagevar", "stagevar")])
def test_radar_accel_show_prints_the_flop_model(capsys, method, module):
    """What the method can give at best at these shapes (`radar-bench accel`'s `ideal` column), before any run."""
    import importlib

    from radar_train.accel import build_accel
    from radar_train.cli.accel import main
    from radar_train.config import AccelArgs
    from radar_train.models import get_preset

    with pytest.raises(SystemExit) as e:
        main(["show", "--model.preset", "var-d16", "--accel.method", method])
    assert e.value.code == 0
    shown = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    cfg = get_preset("var-d16").var
    want = importlib.import_module(f"radar_train.accel.{module}").ideal_speedup(
        build_accel(AccelArgs(method=method), cfg.patch_nums, cfg.depth), cfg)
    assert float(shown["ideal_speedup"]) == round(want["ideal_speedup"], 4) > 1.5
    assert float(shown["attention_share"]) == round(want["attention_share"], 4)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_the_channels_last_resize_equals_the_area_resize_of_the_transposed_grid(device):
    """CTR resizes the cached tokens in their own layout (channels-last); the values are those of the NCHW grid's
    area resize (FastVAR's formulation), up to the kernels' summation order."""
    torch.manual_seed(0)
    t = torch.randn(3, 100, 64, device=device)
    for pn in (13, 16):
        grid = t.transpose(1, 2).reshape(3, 64, 10, 10).contiguous()
        ref = torch.nn.functional.interpolate(grid, size=(pn, pn), mode="area").reshape(3, 64, pn * pn).transpose(1, 2)
        torch.testing.assert_close(resize_tokens(t, pn), ref, rtol=1e-6, atol=1e-6)


# (cache side, restored side) of the presets' restores: FastVAR's cache scale to each pruned scale, StageVAR's
# previous scale to its own (256 px, 512 px, tiny)
UPSAMPLINGS = [(10, 13), (10, 16), (13, 16), (8, 10), (8, 13), (18, 24), (18, 32), (24, 32), (13, 18), (3, 4), (4, 6),
               (4, 8), (6, 8), (1, 2), (5, 5)]


@pytest.mark.parametrize("p,pn", UPSAMPLINGS)
def test_the_area_matrix_holds_the_area_kernels_weights_1_half_and_quarter(p, pn):
    a = area_matrix(p, pn, torch.float64, torch.device("cpu"))
    assert a.shape == (pn * pn, p * p)
    assert set(a.unique().tolist()) <= {0.0, 0.25, 0.5, 1.0}  # exact in every float dtype
    assert torch.equal(a.sum(dim=1), torch.ones(pn * pn, dtype=torch.float64))
    t = torch.randn(2, p * p, 5, dtype=torch.float64)
    grid = t.transpose(1, 2).reshape(2, 5, p, p)
    ref = torch.nn.functional.interpolate(grid, size=(pn, pn), mode="area").reshape(2, 5, pn * pn).transpose(1, 2)
    torch.testing.assert_close(a @ t, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_resize_as_a_matrix_product_gives_the_area_kernels_values_up_to_the_order_of_its_sums(device, dtype):
    """An upsampling by the matrix product gives the area kernel's values: each output is a sum of at most four
    inputs times 1, 1/2 or 1/4 (exact weights), accumulated in float32 by both, each in the order its library picks.
    Both orders often agree (every output equal with MKL on an Intel Xeon), but need not: with MKL's AVX2 kernels on
    an AMD EPYC the 24×24 → 32×32 product gave other float32 bits in about 1 % of its outputs. So each side is
    checked against the exact sum (float64): at most three float32 roundings of the sum of the terms' magnitudes
    away (a sum of four terms), plus half a step of a 16-bit output's dtype. A 16-bit accumulation, or a wrong
    weight, is far outside that. Tokens of one magnitude (as a layer's outputs) and tokens whose neighbours differ
    by up to 2^24 in magnitude (sums that cancel)."""
    g = torch.Generator().manual_seed(0)
    u32 = 2.0 ** -24  # float32's unit roundoff
    for p, pn in UPSAMPLINGS:
        plain = torch.randn(4, p * p, 96, generator=g) * torch.rand(1, 1, 96, generator=g).mul(4)
        wide = torch.randn(4, p * p, 96, generator=g) * torch.exp2(torch.randint(-12, 12, (4, p * p, 96), generator=g))
        for data in (plain, wide):
            t = data.to(device=device, dtype=dtype)
            by_kernel = resize_tokens(t, pn)
            by_matmul = resize_tokens(t, pn, frozenset({dtype}))
            assert by_matmul.shape == by_kernel.shape and by_matmul.dtype == dtype and by_matmul.is_contiguous()
            exact = resize_tokens(t.double(), pn)
            sum_error = 3 * u32 * resize_tokens(t.double().abs(), pn)
            for name, got in (("kernel", by_kernel), ("matmul", by_matmul)):
                x = got.double()
                if dtype == torch.float32:
                    half_step = torch.zeros_like(x)
                else:
                    info = torch.finfo(dtype)
                    magnitude = torch.exp2(x.abs().log2().floor())
                    half_step = (info.eps * magnitude).clamp_min(info.smallest_normal * info.eps) / 2
                excess = (x - exact).abs() - (sum_error + half_step)
                assert (excess <= 0).all(), (name, p, pn, dtype, excess.max().item())
    down = torch.randn(2, 256, 8, device=device, dtype=dtype)  # a downsampling keeps the area kernel (1/k weights)
    assert torch.equal(resize_tokens(down, 10, frozenset({dtype})), resize_tokens(down, 10))


def test_the_matrix_product_resize_is_for_cuda_and_for_float32_only_without_tf32():
    assert matmul_resize_dtypes(torch.device("cpu")) == frozenset()
    cuda = torch.device("cuda")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert matmul_resize_dtypes(cuda) == {torch.bfloat16, torch.float16, torch.float32}
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 operands would be rounded to TF32
        assert matmul_resize_dtypes(cuda) == {torch.bfloat16, torch.float16}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


@pytest.mark.parametrize("device, bf16", [("cpu", False), pytest.param("cuda", False, marks=pytest.mark.gpu),
                                           pytest.param("cuda", True, marks=pytest.mark.gpu)])
@pytest.mark.parametrize("method", ["fastvar", "fastvar-aggressive", "stagevar"])
def test_sampling_with_the_matrix_product_restore_gives_the_area_kernels_tokens(monkeypatch, method, device, bf16):
    """FastVAR's and StageVAR's restores through the matrix product give the tokens and f_hat of the area kernel, bit
    for bit: on the CPU in float32, forced onto the CUDA path; on CUDA in float32 and with the body in bf16 under
    bf16 autocast (as the pipeline samples there), its default path against the area kernel."""
    import radar_train.accel.fastvar as fastvar_module
    import radar_train.accel.stagevar as stagevar_module
    from radar_train.config import StageVARArgs
    from radar_train.models import load_models

    vqvae, var, _, _ = load_models("tiny", device=device)
    if bf16:
        var.cast_body_(torch.bfloat16)
    args = {"fastvar": AccelArgs("fastvar"),
            "fastvar-aggressive": AccelArgs("fastvar", FastVARArgs(preset="aggressive")),
            "stagevar": AccelArgs("stagevar", stagevar=StageVARArgs(preset="default"))}[method]
    m = build_accel(args, var.patch_nums, var.depth)
    s = NextScaleSampler(var, vqvae.quantize, SamplingConfig(cfg=1.5, top_k=64, top_p=0.95),
                         autocast_dtype=torch.bfloat16 if bf16 else None)
    labels, seeds = torch.tensor([1, 5, 9, 2, 7, 0]), [3, 4, 5, 6, 7, 8]
    products = []
    real = fastvar_module.area_matrix
    monkeypatch.setattr(fastvar_module, "area_matrix", lambda *a: products.append(a) or real(*a))
    by_matmul_dtypes = (lambda d: frozenset({torch.float32})) if device == "cpu" else fastvar_module.matmul_resize_dtypes
    runs = {}
    for path, dtypes in (("kernel", lambda d: frozenset()), ("matmul", by_matmul_dtypes)):
        for module in (fastvar_module, stagevar_module):
            monkeypatch.setattr(module, "matmul_resize_dtypes", dtypes)
        runs[path] = s.sample(labels, seeds=seeds, accel=m)
    assert products  # (the restores went through the matrix product)
    same = torch.cat([(a == b).flatten() for a, b in zip(runs["kernel"].indices, runs["matmul"].indices)])
    print(f"{method}, {device}, {'bf16' if bf16 else 'float32'}: tokens equal {same.float().mean().item():.4f}")
    assert same.all() and torch.equal(runs["kernel"].f_hat, runs["matmul"].f_hat)
