"""radar_train.bench.scales: the profile section's measurements leave the models as they found them."""
import pytest
import torch

from radar_train.bench.scales import decode_layouts, scale_kernels, scale_times
from radar_train.sampling import NextScaleSampler


@pytest.mark.parametrize("before", [None, True, False])
def test_decode_layouts_restores_the_decoders_setting_also_after_a_failure(tiny_models, before):
    vqvae = tiny_models[0]
    cfg = vqvae.config
    f_hat = torch.randn(1, cfg.z_channels, cfg.patch_nums[-1], cfg.patch_nums[-1])
    vqvae.decoder.channels_last = before
    try:
        rows = decode_layouts(vqvae, f_hat, None, repeats=1)
        assert [r["layout"] for r in rows] == ["nchw", "channels_last"] and vqvae.decoder.channels_last is before
        with pytest.raises(RuntimeError):
            decode_layouts(vqvae, f_hat[:, :1], None, repeats=1)  # (wrong channel count)
        assert vqvae.decoder.channels_last is before
    finally:
        vqvae.decoder.channels_last = None


def test_scale_times_leaves_the_samples_as_a_plain_call_gives_them(tiny_models):
    vqvae, var = tiny_models[0], tiny_models[1]
    sampler = NextScaleSampler(var, vqvae.quantize)
    labels, seeds = torch.tensor([1, 2]), [5, 6]
    ref = sampler.sample(labels, seeds=seeds)
    t = scale_times(sampler, labels, seeds, repeats=1)
    assert len(t["scale_ms"]) == len(sampler.patch_nums) and t["total_ms"] > 0
    again = sampler.sample(labels, seeds=seeds)
    assert torch.equal(ref.f_hat, again.f_hat)


def test_scale_kernels_has_a_row_per_scale_and_puts_the_models_step_back_also_after_a_failure(tiny_models):
    vqvae, var = tiny_models[0], tiny_models[1]
    sampler = NextScaleSampler(var, vqvae.quantize, engine="eager")
    labels, seeds = torch.tensor([1, 2]), [5, 6]
    ref = sampler.sample(labels, seeds=seeds)
    rows = scale_kernels(sampler, labels, seeds)
    assert [(r["scale"], r["pn"]) for r in rows] == list(enumerate(sampler.patch_nums))
    assert all(r["cpu_ms"] > 0 for r in rows) and "step" not in vars(var)
    assert torch.equal(ref.f_hat, sampler.sample(labels, seeds=seeds).f_hat)
    with pytest.raises(ValueError):
        scale_kernels(sampler, labels, seeds[:1])  # (one seed for two labels)
    assert "step" not in vars(var)


@pytest.mark.gpu
def test_scale_kernels_counts_the_kernels_of_the_blocks_and_of_the_rest_of_each_scale_on_cuda(tiny_models):
    vqvae, var = (m.to("cuda") for m in tiny_models[:2])
    try:
        sampler = NextScaleSampler(var, vqvae.quantize, engine="eager")
        rows = scale_kernels(sampler, torch.tensor([1, 2], device="cuda"), [5, 6])
        assert all(r["blocks_kernels"] >= var.depth and r["rest_kernels"] > 0 for r in rows)
        assert all(r["blocks_kernel_ms"] > 0 and r["rest_kernel_ms"] > 0 for r in rows)
    finally:
        for m in tiny_models[:2]:
            m.to("cpu")
