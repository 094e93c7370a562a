"""StageVAR: single-branch scales, random projection + representative token restoration, skipping,
rank selection, presets and validation."""
import math

import pytest
import torch
import yaml

from radar_train.accel import ConfigError, StageVAR, build_accel
from radar_train.accel.stagevar import rank_for
from radar_train.config import AccelArgs, SamplingConfig, StageVARArgs
from radar_train.models.configs import PATCH_NUMS_256, PATCH_NUMS_512
from radar_train.sampling import NextScaleSampler


def _s(tiny_models, **kw):
    vqvae, var = tiny_models
    return NextScaleSampler(var, vqvae.quantize, SamplingConfig(**{"cfg": 2.0, "top_k": 0, "top_p": 0.0, **kw}))


def test_no_late_scales_equals_vanilla(tiny_models):
    s = _s(tiny_models)
    labels, seeds = torch.tensor([1, 4]), [3, 9]
    van = s.sample(labels, seeds=seeds)
    none = s.sample(labels, seeds=seeds, accel=StageVAR(scales=()))
    assert all(torch.equal(a, b) for a, b in zip(van.indices, none.indices))
    assert torch.equal(van.f_hat, none.f_hat)


def test_single_branch_halves_the_rows_and_slices_the_kv_cache(tiny_models):
    vqvae, var = tiny_models
    rows = []
    for blk in var.blocks[:1]:
        blk.attn.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    try:
        _s(tiny_models).sample(torch.tensor([1, 2, 3]), seeds=[0, 1, 2], accel=StageVAR(scales=((6, 0.96), (8, 0.96))))
    finally:
        var.blocks[0].attn._forward_hooks.clear()
    assert rows == [6, 6, 6, 6, 3, 3]  # 2B rows with CFG, then B rows in the refinement scales


def test_projected_token_count_follows_the_rank_ratio(tiny_models):
    vqvae, var = tiny_models
    seen = []
    var.blocks[0].attn.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
    try:
        _s(tiny_models).sample(torch.tensor([1]), seeds=[0],
                               accel=StageVAR(scales=((6, 0.96), (8, 0.96)), default_rank_ratio=0.3, min_rank=4))
    finally:
        var.blocks[0].attn._forward_hooks.clear()
    assert seen[-2:] == [math.ceil(0.3 * 36), math.ceil(0.3 * 64)]


def test_uncond_branch_and_off_are_selectable(tiny_models):
    s = _s(tiny_models)
    labels, seeds = torch.tensor([1, 2]), [0, 1]
    outs = {b: s.sample(labels, seeds=seeds, accel=StageVAR(scales=((8, 0.96),), single_branch=b))
            for b in ("cond", "uncond", "off")}
    assert not torch.equal(outs["cond"].indices[-1], outs["uncond"].indices[-1])
    assert not torch.equal(outs["cond"].indices[-1], outs["off"].indices[-1])


def test_alpha_zero_skips_the_suffix(tiny_models):
    res = _s(tiny_models).sample(torch.tensor([1]), seeds=[0], accel=StageVAR.from_preset("paper", (1, 2, 3, 4, 6, 8)))
    assert res.skipped_from == 4 and (res.indices[4] == -1).all() and (res.indices[3] >= 0).all()


def test_per_sample_projection_is_batch_invariant(tiny_models):
    s = _s(tiny_models)
    m = StageVAR(scales=((6, 0.96), (8, 0.96)))
    alone = s.sample(torch.tensor([5]), seeds=[77], accel=m)
    batch = s.sample(torch.tensor([1, 5, 2]), seeds=[3, 77, 4], accel=m)
    assert all(torch.equal(a[0], b[1]) for a, b in zip(alone.indices, batch.indices))


def test_rank_for_energy_threshold():
    sv = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1, 0 of 14
    assert rank_for(sv, 0.5).item() == 1  # 9/14 = 0.64 >= 0.5
    assert rank_for(sv, 0.9).item() == 2  # 13/14 = 0.93
    assert rank_for(sv, 0.99).item() == 3


def test_presets_resolve():
    assert StageVAR.from_preset("default", PATCH_NUMS_256).alphas == {13: 0.96, 16: 0.96}
    assert StageVAR.from_preset("paper", PATCH_NUMS_256).alphas == {10: 0.96, 13: 0.0, 16: 0.0}
    assert StageVAR.from_preset("paper", PATCH_NUMS_512).alphas == {18: 0.96, 24: 0.0, 32: 0.0}


def test_rank_ratio_file_is_used(tmp_path):
    f = tmp_path / "ranks.yaml"
    f.write_text(yaml.safe_dump({"alpha": 0.96, "ratios": {13: [0.1] * 16, 16: [0.05] * 16}}))
    m = build_accel(AccelArgs("stagevar", stagevar=StageVARArgs(rank_ratios=str(f))), PATCH_NUMS_256, 16)
    assert m.ratio(13, 3) == 0.1 and m.ratio(16, 0) == 0.05
    with pytest.raises(ConfigError, match="have 16 blocks; the model has 24"):
        build_accel(AccelArgs("stagevar", stagevar=StageVARArgs(rank_ratios=str(f))), PATCH_NUMS_256, 24)
    with pytest.raises(ConfigError, match="hold scale 16, which is not in the model's patch_nums"):  # a 512 model
        build_accel(AccelArgs("stagevar", stagevar=StageVARArgs(rank_ratios=str(f))), PATCH_NUMS_512, 16)
    with pytest.raises(FileNotFoundError, match="missing.yaml: stagevar rank-ratio file not found"):
        build_accel(AccelArgs("stagevar", stagevar=StageVARArgs(rank_ratios=str(tmp_path / "missing.yaml"))),
                    PATCH_NUMS_256, 16)


@pytest.mark.parametrize("var,refused", [
    ({"kind": "random", "value": "tiny:seed=7"}, True),
    ({"kind": "random", "value": "tiny:seed=0"}, False),
    ({"kind": "file", "value": "tiny:seed=0"}, True),
    ("tiny:seed=7", True),  # an older file: the value alone
    ("tiny:seed=0", False),
    (None, False),  # no model block (a hand-written table): nothing to compare
])
def test_a_rank_file_calibrated_on_other_weights_is_refused(tmp_path, var, refused):
    """A rank table measures one set of weights (methods.md §3.2c); before, one of other weights ran silently,
    while an SCA mask file of other weights is refused."""
    from radar_train.models import ModelIdentity

    doc = {"alpha": 0.96, "ratios": {6: [0.3] * 4, 8: [0.3] * 4}}
    if var is not None:
        doc["model"] = {"preset": "tiny", "var": var, "depth": 4, "patch_nums": [1, 2, 3, 4, 6, 8]}
    f = tmp_path / "ranks.yaml"
    f.write_text(yaml.safe_dump(doc))
    args = AccelArgs("stagevar", stagevar=StageVARArgs(rank_ratios=str(f)))
    ident = ModelIdentity("random", "tiny:seed=0", {})
    if refused:
        with pytest.raises(ConfigError, match="ranks.yaml were calibrated on other weights") as e:
            build_accel(args, (1, 2, 3, 4, 6, 8), 4, ident)
        assert "\n" not in str(e.value)
    else:
        assert build_accel(args, (1, 2, 3, 4, 6, 8), 4, ident).rank_ratios == ((6, (0.3,) * 4), (8, (0.3,) * 4))
    build_accel(args, (1, 2, 3, 4, 6, 8), 4)  # without the weights' identity (radar-accel show) nothing is compared


def test_calibrate_records_the_weights_the_ranks_were_measured_on(tmp_path):
    from radar_train.cli.accel import main
    from radar_train.models import ModelIdentity

    out = tmp_path / "ranks.yaml"
    with pytest.raises(SystemExit) as e:
        main(["calibrate", "--model.preset", "tiny", "--model.init_seed", "7", "--num_samples", "2", "--batch_size",
              "2", "--sampling.top_k", "0", "--sampling.top_p", "0", "--device", "cpu", "--output", str(out)])
    assert e.value.code == 0
    assert yaml.safe_load(out.read_text())["model"]["var"] == {"kind": "random", "value": "tiny:seed=7"}
    args = AccelArgs("stagevar", stagevar=StageVARArgs(rank_ratios=str(out)))
    build_accel(args, (1, 2, 3, 4, 6, 8), 4, ModelIdentity("random", "tiny:seed=7", {}))
    with pytest.raises(ConfigError, match="calibrated on other weights"):
        build_accel(args, (1, 2, 3, 4, 6, 8), 4, ModelIdentity("random", "tiny:seed=0", {}))


@pytest.mark.parametrize("scales,kw,expected", [
    ({7: 0.96}, {}, "scale 7 is not in the model's patch_nums"),
    ({13: 0.96}, {}, "must be the last scales of the schedule"),
    ({16: 1.2}, {}, "α 1.2 for scale 16 is outside [0, 1]"),
    ({13: 0.0, 16: 0.96}, {}, "after a skipped scale (α = 0) every later scale is skipped too"),
    ({16: 0.96}, {"default_rank_ratio": 0.0}, "default_rank_ratio 0.0 is outside (0, 1]"),
    ({16: 0.96}, {"min_rank": 0}, "min_rank must be >= 1"),
])
def test_invalid_configs_are_reported(scales, kw, expected):
    with pytest.raises(ConfigError) as e:
        build_accel(AccelArgs("stagevar", stagevar=StageVARArgs(preset=None, scales=scales, **kw)), PATCH_NUMS_256, 16)
    assert expected in str(e.value)


# ---------------------------------------------------------------------------- FLOP model
def test_ideal_speedup_flop_model_in_closed_form():
    from types import SimpleNamespace

    from radar_train.accel.stagevar import ideal_speedup

    # C 1, depth 1, mlp_ratio 1, V 1, scales 1 and 2: per token 6 (linear) + 1 (head), per q·k pair 2.
    # vanilla: scale 1: 6 + 1 + 2·1·1 = 9; scale 2 (4 queries, 5 keys): 24 + 4 + 2·4·5 = 68 -> 77
    cfg = SimpleNamespace(embed_dim=1, depth=1, mlp_ratio=1, vocab_size=1, patch_nums=(1, 2))
    # α 0.5 at scale 2 with ratio 0.5: r = 2 mixed tokens, one CFG row of two (weight 1/2): linear 2·6, the
    # projection Qᵀ F̃ M·r·C = 8, attention 2 queries × 3 keys · 2 = 12, the head on all 4 tokens = 4;
    # halved: 18 -> 9 + 18 = 27
    half = dict(default_rank_ratio=0.5, min_rank=1)
    r = ideal_speedup(StageVAR(scales=((2, 0.5),), **half), cfg)
    assert r["ideal_speedup"] == pytest.approx(77 / 27)
    assert r["attention_share"] == pytest.approx((2 + 40) / 77)
    # both CFG rows (single_branch off): 36 -> 9 + 36 = 45
    assert ideal_speedup(StageVAR(scales=((2, 0.5),), single_branch="off", **half), cfg)["ideal_speedup"] == \
        pytest.approx(77 / 45)
    # min_rank 8 > M: r = M = 4: (24 + 16 + 2·4·5 + 4) / 2 = 42 -> 9 + 42 = 51
    assert ideal_speedup(StageVAR(scales=((2, 0.5),), default_rank_ratio=0.5, min_rank=8), cfg)["ideal_speedup"] == \
        pytest.approx(77 / 51)
    # α 0 skips the scale: only scale 1 is left
    assert ideal_speedup(StageVAR(scales=((2, 0.0),), **half), cfg)["ideal_speedup"] == pytest.approx(77 / 9)


def test_ideal_speedup_counts_keys_per_block_across_rp_scales():
    from types import SimpleNamespace

    from radar_train.accel.stagevar import ideal_speedup

    # C 1, depth 2, mlp_ratio 1, V 1, scales 1, 2 and 3; per token and block 6, head 1, per pair 2.
    # vanilla: scale 1: 2·6 + 1 + 2·2·(1·1) = 17; scale 2: 4·(12 + 1) + 2·2·(4·5) = 132;
    # scale 3: 9·(12 + 1) + 2·2·(9·14) = 621 -> 770
    cfg = SimpleNamespace(embed_dim=1, depth=2, mlp_ratio=1, vocab_size=1, patch_nums=(1, 2, 3))
    # RP at 2 and 3, block 0 ratio 0.5, block 1 ratio 1.0 (min_rank 1), one CFG row of two:
    # scale 2 (M 4): block 0 r 2, keys 1 + 2 = 3: 2·6 + 4·2 + 2·2·3 = 32; block 1 r 4, keys 5: 24 + 16 + 40 = 80;
    #   head 4 -> 116; scale 3 (M 9): block 0 r 5 (ceil 4.5), keys 3 + 5 = 8: 30 + 45 + 80 = 155;
    #   block 1 r 9, keys 5 + 9 = 14: 54 + 81 + 252 = 387; head 9 -> 551; (116 + 551) / 2 = 333.5
    m = StageVAR(scales=((2, 0.9), (3, 0.9)), rank_ratios=((2, (0.5, 1.0)), (3, (0.5, 1.0))), min_rank=1)
    assert [m.rank(2, 0), m.rank(2, 1), m.rank(3, 0), m.rank(3, 1)] == [2, 4, 5, 9]
    assert ideal_speedup(m, cfg)["ideal_speedup"] == pytest.approx(770 / (17 + 333.5))


def test_an_alpha_that_is_not_the_rank_tables_is_refused(tmp_path):
    """α of a random-projection scale picks its rank only through a rank-ratio table calibrated at that α:
    before, any α > 0 ran the 0.96 ranks (or the file's) while the cache manifest recorded the α given."""
    import yaml

    from radar_train.accel import ConfigError, build_accel
    from radar_train.config import AccelArgs, StageVARArgs

    pns = (1, 2, 3, 4, 6, 8)
    with pytest.raises(ConfigError, match=r"α 0\.5 at scale 6.*paper's average at α 0\.96.*--alpha 0\.5"):
        build_accel(AccelArgs("stagevar", stagevar=StageVARArgs(preset=None, scales={6: 0.5, 8: 0.5})), pns, 4)
    table = tmp_path / "ranks.yaml"
    table.write_text(yaml.safe_dump({"alpha": 0.5, "ratios": {6: [0.3] * 4, 8: [0.3] * 4}}))
    with pytest.raises(ConfigError, match=r"α 0\.96 at scale 8.*ranks\.yaml were calibrated at α 0\.5"):
        build_accel(AccelArgs("stagevar", stagevar=StageVARArgs(preset="default", rank_ratios=str(table))), pns, 4)
    ok = build_accel(AccelArgs("stagevar", stagevar=StageVARArgs(preset=None, scales={6: 0.5, 8: 0.5},
                                                                 rank_ratios=str(table))), pns, 4)
    assert ok.rank_ratios_alpha == 0.5 and ok.describe()["scales"] == {6: 0.5, 8: 0.5}
    skip = build_accel(AccelArgs("stagevar", stagevar=StageVARArgs(preset=None, scales={6: 0.96, 8: 0.0})), pns, 4)
    assert skip.describe()["scales"] == {6: 0.96, 8: 0.0}  # α 0 skips: no table involved


def test_a_scale_the_rank_file_lacks_is_checked_against_the_fallbacks_alpha(tmp_path):
    """A scale the rank-ratio file does not hold runs default_rank_ratio (the paper's α 0.96 average): before, its
    α was checked against the file's, so α 0.9 there ran 0.96 ranks while the manifest said 0.9."""
    pns = (1, 2, 3, 4, 6, 8)
    table = tmp_path / "ranks.yaml"
    table.write_text(yaml.safe_dump({"alpha": 0.9, "ratios": {6: [0.3] * 4}}))

    def build(scales):
        return build_accel(AccelArgs("stagevar", stagevar=StageVARArgs(preset=None, scales=scales,
                                                                       rank_ratios=str(table))), pns, 4)

    with pytest.raises(ConfigError, match=r"α 0\.9 at scale 8.*ranks\.yaml holds no ratios for scale 8.*α 0\.96") \
            as e:
        build({6: 0.9, 8: 0.9})
    assert "scale 6" not in str(e.value)  # the file's own scale, at the file's α, is fine
    m = build({6: 0.9, 8: 0.96})  # each scale at the α of the table that gives its ratios
    assert m.rank(6, 0) == math.ceil(0.3 * 36) and m.rank(8, 0) == math.ceil(0.176 * 64)
    with pytest.raises(ConfigError, match=r"α 0\.96 at scale 6.*calibrated at α 0\.9"):
        build({6: 0.96, 8: 0.96})
