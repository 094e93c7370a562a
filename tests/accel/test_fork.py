"""generate_pairs: HQ = a standalone vanilla run, LQ = a standalone accelerated run, shared prefix."""
import pytest
import torch

from radar_train.accel import build_accel
from radar_train.config import AccelArgs, FastVARArgs, SamplingConfig, StageVARArgs
from radar_train.sampling import NextScaleSampler, generate_pairs

METHODS = [
    AccelArgs("fastvar"),
    AccelArgs("fastvar", FastVARArgs(preset="aggressive")),
    AccelArgs("stagevar"),
    AccelArgs("stagevar", stagevar=StageVARArgs(preset="paper")),
]


@pytest.mark.parametrize("noise", ["per_sample", "official"])
@pytest.mark.parametrize("args", METHODS, ids=lambda a: f"{a.method}-{a.fastvar.preset if a.method == 'fastvar' else a.stagevar.preset}")
def test_fork_equals_standalone_runs(tiny_models, args, noise):
    vqvae, var = tiny_models
    s = NextScaleSampler(var, vqvae.quantize, SamplingConfig(cfg=1.5, top_k=100, top_p=0.95, noise=noise))
    method = build_accel(args, var.patch_nums, var.depth)
    labels, seeds = torch.tensor([0, 4, 9]), [11, 12, 13]
    kw = dict(seeds=seeds) if noise == "per_sample" else dict(g_seed=5)
    pair = generate_pairs(s, labels, method, **kw)
    van = s.sample(labels, **kw)
    acc = s.sample(labels, accel=method, **kw)
    assert all(torch.equal(a, b) for a, b in zip(pair.hq.indices, van.indices))
    assert all(torch.equal(a, b) for a, b in zip(pair.lq.indices, acc.indices))
    torch.testing.assert_close(pair.hq.f_hat, van.f_hat, atol=1e-6, rtol=0)
    torch.testing.assert_close(pair.lq.f_hat, acc.f_hat, atol=1e-6, rtol=0)
    # identical before the first accelerated scale, and the fork happens exactly there
    assert pair.fork_scale == method.first_modified_scale(var.patch_nums)
    for si in range(pair.fork_scale):
        assert torch.equal(pair.hq.indices[si], pair.lq.indices[si])
    assert not torch.equal(pair.hq.f_hat, pair.lq.f_hat)


def test_a_fork_continues_vanilla_or_its_own_method_and_refuses_another(tiny_models):
    vqvae, var = tiny_models
    s = NextScaleSampler(var, vqvae.quantize, SamplingConfig(cfg=1.5, top_k=100, top_p=0.95))
    fastvar = build_accel(AccelArgs("fastvar"), var.patch_nums, var.depth)
    stagevar = build_accel(AccelArgs("stagevar"), var.patch_nums, var.depth)
    labels, seeds = torch.tensor([0, 4]), [11, 12]
    state = s.advance(s.start(labels, seeds=seeds, accel=fastvar), until=2)
    for other in (stagevar, build_accel(AccelArgs("fastvar"), var.patch_nums, var.depth)):  # another one, same kind
        with pytest.raises(ValueError, match="not with this"):
            s.fork(state, accel=other)
    with pytest.raises(ValueError, match="started vanilla"):
        s.fork(s.advance(s.start(labels, seeds=seeds), until=2), accel=fastvar)
    own = s.advance(s.fork(state, accel=fastvar))
    assert all(torch.equal(a, b) for a, b in zip(s.output(own).indices, s.sample(labels, seeds=seeds, accel=fastvar).indices))
