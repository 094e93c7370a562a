"""The sampler: official-loop equivalence, per-sample batch invariance, filtering semantics, precision."""
import math

import numpy as np
import pytest
import torch

from radar_train.accel import AccelMethod
from radar_train.config import SamplingConfig
from radar_train.reference import Fixture
from radar_train.sampling import NextScaleSampler, filter_top_k_top_p_, gumbel_max
from radar_train import noise
from radar_train.seeding import derive_seed


@pytest.fixture(scope="module")
def tiny_a(fixtures_dir):
    fx = Fixture.load(fixtures_dir / "tiny_a")
    vqvae, var = fx.build_models(torch.device("cpu"))
    return fx, vqvae, var


@pytest.mark.parametrize("case", ["e_cfg1", "e_cfg4", "f_topk_topp"])
def test_none_method_equals_official_loop_on_fixture(tiny_a, case):
    fx, vqvae, var = tiny_a
    kw = fx.cases[case]["kwargs"]
    sampler = NextScaleSampler(var, vqvae.quantize, SamplingConfig(cfg=kw["cfg"], top_k=kw["top_k"], top_p=kw["top_p"],
                                                                   noise="official"))
    res = sampler.sample(fx.tensors["e.in.label"], g_seed=kw["g_seed"], accel=AccelMethod())
    for si, idx in enumerate(res.indices):
        assert torch.equal(idx, fx.tensors[f"{case}.out.idx.{si}"]), si
    torch.testing.assert_close(res.f_hat, fx.tensors[f"{case}.out.final_f_hat"], atol=4e-6, rtol=0)


def _sampler(tiny_models, **kw):
    vqvae, var = tiny_models
    cfg = dict(cfg=2.0, top_k=64, top_p=0.9)
    cfg.update(kw)
    return NextScaleSampler(var, vqvae.quantize, SamplingConfig(**cfg))


def test_per_sample_result_is_independent_of_batch_and_position(tiny_models):
    s = _sampler(tiny_models)
    alone = s.sample(torch.tensor([7]), seeds=[1234])
    for pos in range(4):
        labels = torch.tensor([1, 2, 3, 4])
        seeds = [5, 6, 7, 8]
        labels[pos], seeds[pos] = 7, 1234
        batch = s.sample(labels, seeds=seeds)
        for si, idx in enumerate(batch.indices):
            assert torch.equal(idx[pos], alone.indices[si][0]), (pos, si)
        torch.testing.assert_close(batch.f_hat[pos], alone.f_hat[0], atol=1e-6, rtol=0)


def test_per_sample_depends_on_seed_and_label(tiny_models):
    s = _sampler(tiny_models)
    a = s.sample(torch.tensor([3, 3, 4]), seeds=[1, 2, 1])
    assert not torch.equal(a.indices[-1][0], a.indices[-1][1])  # other seed
    assert not torch.equal(a.indices[-1][0], a.indices[-1][2])  # other label


def test_official_noise_depends_on_batch(tiny_models):
    """The contrast that motivates per_sample noise: with one generator per call, sample 0 changes when
    the batch grows."""
    s = _sampler(tiny_models, noise="official")
    one = s.sample(torch.tensor([7]), g_seed=3)
    two = s.sample(torch.tensor([1, 7]), g_seed=3)
    assert not all(torch.equal(a[0], b[1]) for a, b in zip(one.indices, two.indices))


def test_top_k_keeps_ties_and_top_p_keeps_the_largest():
    logits = torch.tensor([[[1.0, 3.0, 3.0, 2.0, 0.0]]])
    out = filter_top_k_top_p_(logits.clone(), top_k=2, top_p=0.0)
    assert torch.isfinite(out).tolist() == [[[False, True, True, False, False]]]  # tie at the 2nd value survives
    probs = torch.tensor([[[0.05, 0.6, 0.3, 0.05]]]).log()
    out = filter_top_k_top_p_(probs.clone(), top_k=0, top_p=0.5)
    assert torch.isfinite(out).tolist() == [[[False, True, False, False]]]  # 0.6 alone covers p=0.5
    out = filter_top_k_top_p_(probs.clone(), top_k=0, top_p=0.8)
    assert torch.isfinite(out).tolist() == [[[False, True, True, False]]]
    tiny = torch.tensor([[[0.0, 10.0]]])
    assert torch.isfinite(filter_top_k_top_p_(tiny.clone(), 0, 0.01)).sum() == 1  # never removes the largest


def test_gumbel_max_samples_the_softmax_distribution():
    logits = torch.tensor([0.0, 1.0, 2.0]).log_softmax(0).expand(2, 20000, 3).contiguous()
    idx = gumbel_max(logits, noise.key_tensor([derive_seed(1), derive_seed(2)], "cpu"))
    for row in idx:
        freq = torch.bincount(row, minlength=3).float() / row.numel()
        torch.testing.assert_close(freq, logits[0, 0].exp(), atol=0.015, rtol=0)
    assert not torch.equal(idx[0], idx[1])


def test_derive_seed_is_stable_and_separates_purposes():
    assert derive_seed(1, 2, "token") == derive_seed(1, 2, "token")
    seeds = {derive_seed(s, si, p) for s in range(50) for si in range(10) for p in ("token", "stagevar")}
    assert len(seeds) == 1000
    assert derive_seed(1, 23) != derive_seed(12, 3)


def test_invalid_sampling_config_lists_every_problem(tiny_models):
    with pytest.raises(ValueError) as e:
        _sampler(tiny_models, cfg=-1.0, top_k=-2, top_p=1.5)
    msg = str(e.value)
    assert "sampling.cfg" in msg and "sampling.top_k" in msg and "sampling.top_p" in msg
    for cfg in (math.nan, math.inf):  # a NaN guidance weight makes every token the same
        with pytest.raises(ValueError, match="sampling.cfg must be a finite number"):
            _sampler(tiny_models, cfg=cfg)


def test_a_sampling_setting_of_the_wrong_type_is_named_not_a_bare_type_error():
    """From Python (the CLI parses its types first): `cfg="2"` was `TypeError: must be real number, not str`."""
    from radar_train.config import SamplingConfig

    assert SamplingConfig(cfg="2", top_p="0.5", top_k=True).problems() == [
        "sampling.cfg must be a finite number >= 0, got '2'", "sampling.top_k must be a whole number >= 0, got True",
        "sampling.top_p must be in [0, 1), got '0.5'"]
    assert SamplingConfig(cfg=np.float32(2), top_p=0).problems() == []


def test_per_sample_needs_one_seed_per_label(tiny_models):
    s = _sampler(tiny_models)
    with pytest.raises(ValueError, match="got 1 seeds for 2 labels"):
        s.sample(torch.tensor([1, 2]), seeds=[1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\]"):
        s.sample(torch.tensor([11]), seeds=[1])
    with pytest.raises(ValueError, match="seed 18446744073709551616 does not fit in 64 bits"):
        s.sample(torch.tensor([1]), seeds=[2 ** 64])


def test_bf16_autocast_runs_and_stays_close(tiny_models):
    vqvae, var = tiny_models
    cfg = SamplingConfig(cfg=1.0, top_k=1, top_p=0.0)
    fp32 = NextScaleSampler(var, vqvae.quantize, cfg).sample(torch.tensor([1, 2]), seeds=[0, 1])
    bf16 = NextScaleSampler(var, vqvae.quantize, cfg, autocast_dtype=torch.bfloat16).sample(torch.tensor([1, 2]), seeds=[0, 1])
    assert bf16.f_hat.dtype == torch.float32 and torch.isfinite(bf16.f_hat).all()
    # greedy decoding: the first scales agree (later ones may flip on near-ties in bf16)
    assert torch.equal(fp32.indices[0], bf16.indices[0])


def test_top_k_candidate_path_equals_full_vocabulary_filter():
    """The fast per-sample path (noise on the top-k candidates only) picks exactly what filtering the
    whole vocabulary and adding the same noise picks."""
    from radar_train.sampling import sample_top_k_per_sample

    torch.manual_seed(0)
    logits = torch.randn(3, 50, 300) * 3
    keys = noise.key_tensor([derive_seed(s) for s in (1, 2, 3)], "cpu")
    for k, p in ((20, 0.0), (20, 0.9), (120, 0.5), (299, 0.96)):
        full = gumbel_max(filter_top_k_top_p_(logits.clone(), k, p), keys)
        fast = sample_top_k_per_sample(logits.clone(), keys, k, p)
        assert torch.equal(full, fast), (k, p)


def test_bf16_body_needs_autocast_and_matches_autocast_of_fp32_weights():
    from radar_train.models import load_models

    vqvae, var, _, _ = load_models("tiny")
    cfg = SamplingConfig(cfg=1.0, top_k=1, top_p=0.0)
    ref = NextScaleSampler(var, vqvae.quantize, cfg, autocast_dtype=torch.bfloat16).sample(torch.tensor([1, 2]), seeds=[0, 1])
    logs = [blk.attn.scale_mul_1H11.detach().clone() for blk in var.blocks]
    var.cast_body_(torch.bfloat16)
    assert var.class_emb.weight.dtype == torch.float32 and var.blocks[0].attn.mat_qkv.weight.dtype == torch.bfloat16
    for blk, log in zip(var.blocks, logs):  # the temperature: exp of the float32 log, rounded once (official)
        assert blk.attn.scale_mul_1H11.dtype == torch.float32 and torch.equal(blk.attn.scale_mul_1H11, log)
        with torch.no_grad():
            mul = blk.attn._constants()[1]
        q_mul = log.clamp_max(math.log(100)).exp().to(torch.bfloat16).float().view(1, -1, 1)
        assert mul.dtype == torch.float32 and torch.equal(mul, torch.cat((q_mul, torch.ones_like(q_mul))))
    with pytest.raises(ValueError, match="needs autocast_dtype"):
        NextScaleSampler(var, vqvae.quantize, cfg)
    out = NextScaleSampler(var, vqvae.quantize, cfg, autocast_dtype=torch.bfloat16).sample(torch.tensor([1, 2]), seeds=[0, 1])
    assert torch.equal(out.indices[0], ref.indices[0]) and torch.isfinite(out.f_hat).all()


def test_noise_keys_of_every_scale_are_made_once_per_call_with_the_per_scale_values():
    """The keys of all scales come from one host-side batch (one copy to the device per call); row si is what
    the per-scale derivation gives, so samples are those of earlier versions."""
    from radar_train.sampling import gumbel_keys, token_keys

    seeds = [3, 2**40 + 1, 0]
    keys = token_keys(torch.tensor(seeds), 6, "cpu")
    assert keys.shape == (6, 3) and keys.dtype == torch.int64
    for si in range(6):
        assert torch.equal(keys[si], gumbel_keys(seeds, si, "cpu"))
        assert keys[si, 1].item() == derive_seed(2**40 + 1, si, "token")
