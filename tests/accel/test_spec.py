"""Method specs (radar_train.accel.spec): every form, the budget resolution, one-line errors naming the spec,
and the callers that use it (radar-bench, radar-toy measure)."""
from __future__ import annotations

import pytest

from radar_train.accel import FastVAR, SCAMask, StageVAR
from radar_train.accel.spec import build_spec, parse_spec
from radar_train.models.configs import PATCH_NUMS_256

TOY = (1, 2, 3, 4, 6, 8)


def test_none_and_presets():
    assert parse_spec("none").method == "none" and parse_spec("vanilla").method == "none"
    a = parse_spec("fastvar")
    assert a.method == "fastvar" and a.fastvar.preset == "default" and a.fastvar.prune is None
    assert parse_spec("fastvar:aggressive").fastvar.preset == "aggressive"
    assert parse_spec("stagevar").stagevar.preset == "default"
    assert parse_spec("stagevar:paper").stagevar.preset == "paper"


def test_fastvar_explicit_ratios_and_options():
    a = parse_spec("fastvar:prune=4:0.3/6:0.5/8:0.6").fastvar
    assert a.preset is None and a.prune == {4: 0.3, 6: 0.5, 8: 0.6}
    a = parse_spec("fastvar:aggressive+cache_scale=3+layers=0/2").fastvar
    assert (a.preset, a.cache_scale, a.layers) == ("aggressive", 3, [0, 2])
    m = build_spec("fastvar:prune=6:0.5/8:0.25", TOY, 4)
    assert isinstance(m, FastVAR) and m.prune == ((6, 0.5), (8, 0.25)) and m.first_modified_scale(TOY) == 4


def test_fastvar_at_an_attention_budget_resolves_against_the_model():
    # toy scales 4, 6, 8: l = 16, 36, 64 queries; e = 30, 66, 130 keys; keys cached before scale 4: n = 14.
    # budget 0.5: k = round((-n + sqrt(n^2 + 2 l e)) / 2) kept queries: 10 (sqrt 1156 = 34), then n = 24:
    # 24 (sqrt 5328 = 72.99), then n = 48: 45 (sqrt 18944 = 137.64); ratio = (l - k + 1/2) / l
    a = parse_spec("fastvar:budget=0.5", TOY).fastvar
    assert a.preset is None and a.cache_scale is None
    assert a.prune == pytest.approx({4: 6.5 / 16, 6: 12.5 / 36, 8: 19.5 / 64})
    m = build_spec("fastvar:budget=0.5", TOY, 4)
    assert [l - int(l * r) for l, (_, r) in zip((16, 36, 64), m.prune)] == [10, 24, 45]  # FastVAR's kept count
    # other scales; a budget of 1 prunes nothing (a vanilla run)
    assert set(parse_spec("fastvar:budget=0.5+scales=6/8", TOY).fastvar.prune) == {6, 8}
    full = build_spec("fastvar:budget=1", TOY, 4)
    assert full.prune == () and full.first_modified_scale(TOY) is None
    # on the 256px schedule the default scales are the last three
    assert set(parse_spec("fastvar:budget=0.25", PATCH_NUMS_256).fastvar.prune) == {10, 13, 16}


def test_stagevar_options():
    a = parse_spec("stagevar:scales=6:0.96/8:0+single_branch=off+min_rank=4+rp_scale=token_norm").stagevar
    assert (a.preset, a.scales, a.single_branch, a.min_rank, a.rp_scale) == (None, {6: 0.96, 8: 0.0}, "off", 4,
                                                                            "token_norm")
    assert isinstance(build_spec("stagevar:paper", TOY, 4), StageVAR)


def test_sca_specs():
    a = parse_spec("sca:window+aggressive").sca
    assert (a.selection, a.preset) == ("window", "aggressive")
    a = parse_spec("sca:default+mask_file=m.safetensors").sca
    assert (a.preset, a.mask_file) == ("default", "m.safetensors")
    assert parse_spec("sca:per_head").sca.per_head and parse_spec("sca:per_head=True").sca.per_head
    assert not parse_spec("sca:per_head=false").sca.per_head and not parse_spec("sca:per_head=0").sca.per_head
    m = build_spec("sca:window+compute_budget=0.5+tile=8", TOY, 4)
    assert isinstance(m, SCAMask) and (m.tile, m.compute_budget, m.memory_budget) == (8, 0.5, 1.0)


def test_callers_use_the_shared_parser():
    from radar_train.bench.accel import method_from_spec
    from radar_train.toyworld.measure import parse_method

    assert method_from_spec("fastvar:aggressive", PATCH_NUMS_256, 16) == FastVAR.from_preset("aggressive",
                                                                                            PATCH_NUMS_256)
    assert method_from_spec("fastvar:budget=0.5", TOY, 4) == build_spec("fastvar:budget=0.5", TOY, 4)
    assert parse_method("fastvar:budget=0.5", TOY) == parse_spec("fastvar:budget=0.5", TOY)


@pytest.mark.parametrize("spec, match", [
    ("", "empty"),
    ("fast", "unknown method 'fast'"),
    ("fastvar:", "nothing after ':'"),
    ("none:x", "none takes no options"),
    ("fastvar:huge", "'huge' is not a fastvar preset"),
    ("fastvar:aggressive++mild", "empty option"),
    ("fastvar:budget=", "not key=value"),
    ("fastvar:budget=half", "cannot read budget='half'"),
    ("fastvar:budget=1.5", "budget 1.5 is not an attention share"),
    ("fastvar:budget=0", "budget 0.0 is not an attention share"),
    ("fastvar:aggressive+budget=0.5", "not a preset and budget"),
    ("fastvar:prune=4:0.3+budget=0.5", "not prune and budget"),
    ("fastvar:prune=4-0.3", "cannot read prune='4-0.3'"),
    ("fastvar:prune=4:0.3/4:0.5", "lists scale 4 twice"),
    ("fastvar:scales=4/6", "scales= goes with budget="),
    ("fastvar:budget=0.5+scales=5/8", r"scales \[5\] are not in the model's patch_nums"),
    ("fastvar:budget=0.5+scales=1/8", "cannot include the first scale"),
    ("fastvar:budget=0.5+scales=4/4", "names the side 4 twice"),
    ("fastvar:budget=0.5+budget=0.3", "option 'budget' is given twice"),
    ("fastvar:mild+aggressive", "give one preset, not mild and aggressive"),
    ("stagevar:default+paper", "give one preset or scales=, not default and paper"),
    ("stagevar:scales=8:0.5+paper", "give one preset or scales=, not paper and scales="),
    ("fastvar:cache_scale=big", "cannot read cache_scale"),
    ("fastvar:speed=2", "unknown fastvar option 'speed'"),
    ("stagevar:fast", "'fast' is not a stagevar preset"),
    ("stagevar:single_branch=both", "one of cond, uncond, off"),
    ("stagevar:min_rank=x", "cannot read min_rank"),
    ("sca:window+foo", "'foo' is neither a preset"),
    ("sca:budget=0.4", "unknown option 'budget'"),
    ("sca:window++aggressive", "empty option"),
    ("sca:window+", "empty option"),
    ("sca:+window", "empty option"),
    ("sca:tile=", "not key=value"),
    ("sca:per_head=ture", "per_head='ture': one of true, false"),
    # an sca option given twice, as in fastvar and stagevar specs (before, the last won, silently)
    ("sca:mild+aggressive+window", r"preset is given twice \('mild' and 'aggressive'\)"),
    ("sca:window+scores", r"selection is given twice \('window' and 'scores'\)"),
    ("sca:window+compute_budget=0.3+compute_budget=0.9", "compute_budget is given twice"),
    ("sca:window+per_head+per_head=false", r"per_head is given twice \('per_head' and 'per_head=false'\)"),
    ("sca:window+preset=aggressive+mild", r"preset is given twice \('preset=aggressive' and 'mild'\)"),
    ("sca:selection=window+window", "selection is given twice"),
])
def test_bad_specs_are_one_line_errors_naming_the_spec(spec, match):
    with pytest.raises(ValueError, match=match) as e:
        parse_spec(spec, TOY)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"method spec {spec!r}: ")


def test_a_budget_needs_the_model():
    with pytest.raises(ValueError, match="budget= is resolved against the model's scales"):
        parse_spec("fastvar:budget=0.5")
