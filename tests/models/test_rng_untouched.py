"""Loading models and adapters leaves torch's global RNG as it was (a caller's later draws, e.g. a training run
seeded before it loads a model, must not depend on what was loaded), and random presets keep their weights: those
of `init_random_` with the preset's seed, whatever the global RNG holds."""
from __future__ import annotations

import pytest
import torch

from radar_train.config import AccelArgs, ModelArgs
from radar_train.models import build_var, build_vqvae, get_preset, load_latent_decoder, load_models
from radar_train.models.init import init_random_


def _keeps_global_rng(fn) -> bool:
    """Whether torch's global CPU RNG draws the same after fn() as without it."""
    torch.manual_seed(1234)
    want = torch.rand(8)
    torch.manual_seed(1234)
    fn()
    return torch.equal(torch.rand(8), want)


@pytest.fixture(scope="module", params=["plain", "label-conditioned"])
def adapter(request, tmp_path_factory):
    """A tiny-preset adapter with random LoRA weights (and a random FiLM: its loading builds the class embedding,
    whose random start drew from the global RNG)."""
    from radar_train.bench.pipeline import random_adapter, random_conditioned
    from radar_train.export.adapter import save_adapter

    vqvae, _, vae_id, _ = load_models("tiny", with_var=False)
    peft_model, merged = random_adapter(vqvae.latent_decoder(), rank=2, seed=0)
    film = None
    if request.param == "label-conditioned":
        film = random_conditioned(merged, num_classes=get_preset("tiny").var.num_classes, embed_dim=4).film
    return save_adapter(peft_model, tmp_path_factory.mktemp("adapter") / "final", {"base": {"vae": vae_id.to_dict()}},
                        conditioning=film)


def test_load_models_of_a_random_preset_keeps_the_global_rng():
    assert _keeps_global_rng(lambda: load_models("tiny"))
    assert _keeps_global_rng(lambda: load_models("tiny", init_seed=5, with_var=False))
    assert _keeps_global_rng(lambda: load_latent_decoder("tiny"))


@pytest.mark.parametrize("init_seed", [None, 5])
def test_random_preset_weights_are_init_random_of_the_seed_whatever_the_global_rng(init_seed):
    preset = get_preset("tiny")
    seed = preset.init_seed if init_seed is None else init_seed
    vae_cfg = preset.vae.with_patch_nums(preset.var.patch_nums)
    want_vae, want_var = init_random_(build_vqvae(vae_cfg), seed), init_random_(build_var(preset.var), seed + 1)
    for global_seed in (0, 99):
        torch.manual_seed(global_seed)
        vqvae, var, _, _ = load_models("tiny", init_seed=init_seed)
        dec, _ = load_latent_decoder("tiny", init_seed=init_seed)
        for got, want in ((vqvae, want_vae), (var, want_var), (dec, want_vae)):
            sd, ref = got.state_dict(), want.state_dict()
            assert all(torch.equal(v, ref[k]) for k, v in sd.items())
        assert sd.keys() < ref.keys()  # the decoder: a part of the VQ-VAE's keys


def test_latent_decoder_is_a_copy_made_without_drawing(tiny_models):
    vqvae = tiny_models[0]
    holder = {}
    assert _keeps_global_rng(lambda: holder.setdefault("dec", vqvae.latent_decoder()))
    dec, own = holder["dec"], vqvae.state_dict()
    for k, v in dec.state_dict().items():
        assert not v.is_meta and torch.equal(v, own[k])
        assert v.data_ptr() != own[k].data_ptr()  # new tensors: changing the copy leaves the VQ-VAE alone
    assert all(p.requires_grad for p in dec.parameters())  # as a freshly built module's (what peft expects)
    x = torch.randn(1, vqvae.config.z_channels, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(dec.eval()(x), vqvae.decoder(vqvae.post_quant_conv(x)), rtol=0, atol=0)


def test_the_pipeline_loading_an_adapter_keeps_the_global_rng(adapter):
    from radar_train.inference import PipelineArgs, RadarPipeline

    args = PipelineArgs(model=ModelArgs("tiny"), accel=AccelArgs("fastvar"), device="cpu")
    pipe = RadarPipeline.from_config(args)
    assert _keeps_global_rng(lambda: pipe.load_adapter(str(adapter)))
    assert pipe.adapted_decoder is not None
    args.adapter = str(adapter)
    assert _keeps_global_rng(lambda: RadarPipeline.from_config(args))


def test_loading_an_adapter_without_the_pipeline_keeps_the_global_rng(adapter):
    """export.load_adapter itself (radar-eval, the toy world's measurement, a user's script), merged or not."""
    from radar_train.export.adapter import load_adapter

    for merge in (True, False):
        decoder, _ = load_latent_decoder("tiny")
        assert _keeps_global_rng(lambda: load_adapter(decoder, adapter, merge=merge))
