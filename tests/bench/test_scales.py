"""radar_train.bench.scales: the profile section's measurements leave the models as they found them."""
import pytest
import torch

from radar_train.bench.scales import decode_layouts, scale_times
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
