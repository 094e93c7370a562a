"""VQ-VAE decoder: SiLU, the resnet blocks' residual sums and the output clamp in place only when no autograd
graph is recorded; channels-last inside on the CPU, NCHW out.

The in-place path must give the same decode bit for bit, and training must see the same gradients as a
reference computed with out-of-place SiLU."""
import pytest
import torch
import torch.nn.functional as F

from radar_train.models import LatentDecoder

_silu = F.silu


def _out_of_place(x, inplace=False):
    return _silu(x, inplace=False)


@pytest.fixture()
def decoder(tiny_models):
    return tiny_models[0].latent_decoder().eval()


@pytest.fixture()
def f_hat(decoder):
    cfg = decoder.config
    P = cfg.patch_nums[-1]
    return torch.randn(2, cfg.z_channels, P, P, generator=torch.Generator().manual_seed(0))


def _silu_calls(monkeypatch, fn):
    calls = []

    def spy(x, inplace=False):
        calls.append(inplace)
        return _silu(x, inplace=inplace)

    monkeypatch.setattr(F, "silu", spy)
    fn()
    monkeypatch.setattr(F, "silu", _silu)
    return calls


def test_silu_is_in_place_exactly_when_no_grad_is_recorded(monkeypatch, decoder, f_hat):
    with torch.no_grad():
        no_grad = _silu_calls(monkeypatch, lambda: decoder.to_image(f_hat))
    with torch.inference_mode():
        inference = _silu_calls(monkeypatch, lambda: decoder.to_image(f_hat))
    grad = _silu_calls(monkeypatch, lambda: decoder.to_image(f_hat))
    n_blocks = sum(1 for m in decoder.modules() if type(m).__name__ == "ResnetBlock")
    assert len(no_grad) == 2 * n_blocks + 1  # two per resnet block, one before conv_out
    assert all(no_grad) and all(inference)
    assert len(grad) == len(no_grad) and not any(grad)


def test_no_grad_decode_is_bit_identical_to_the_out_of_place_decode(monkeypatch, tiny_models, decoder, f_hat):
    with torch.no_grad():
        fast = decoder.to_image(f_hat)
        fast_vqvae = tiny_models[0].fhat_to_img(f_hat)
        monkeypatch.setattr(F, "silu", _out_of_place)
        ref = decoder.forward(f_hat).clamp(-1, 1)
    assert torch.equal(fast, ref)
    assert torch.equal(fast_vqvae, ref)
    monkeypatch.setattr(F, "silu", _silu)
    with_grad = decoder.to_image(f_hat)  # out-of-place path
    assert torch.equal(with_grad.detach(), ref)


def test_forward_equals_forward_features_output(decoder, f_hat):
    with torch.no_grad():
        out = decoder(f_hat)
        feat_out, feats = decoder.forward_features(f_hat)
    assert torch.equal(out, feat_out)
    assert len(feats) == 1 + decoder.decoder.num_resolutions


def test_training_gradients_equal_the_out_of_place_reference(monkeypatch, decoder, f_hat):
    def grads(model: LatentDecoder):
        model.zero_grad(set_to_none=True)
        x = f_hat.clone().requires_grad_(True)
        out, feats = model.forward_features(x)
        loss = out.clamp(-1, 1).square().mean() + sum(f.abs().mean() for f in feats)
        loss.backward()
        return [x.grad.clone()] + [p.grad.clone() for p in model.parameters()]

    dec = decoder.train().requires_grad_(True)
    got = grads(dec)
    monkeypatch.setattr(F, "silu", _out_of_place)
    ref = grads(dec)
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


def test_decoded_images_are_contiguous_with_and_without_grad(decoder, f_hat):
    # the decoder runs channels-last inside on the CPU; callers get the usual NCHW layout back (views work)
    with torch.inference_mode():
        img = decoder.to_image(f_hat)
        feats_out, _ = decoder.forward_features(f_hat)
    assert img.is_contiguous() and feats_out.is_contiguous()
    assert decoder.to_image(f_hat).is_contiguous()
    img.view(img.shape[0], -1)


@pytest.mark.parametrize("setting, expect_nhwc", [(None, True), (False, False), (True, True)])
def test_the_decoders_layout_setting_decides_the_activations_layout(decoder, f_hat, setting, expect_nhwc):
    """Decoder.channels_last: None runs channels-last on the CPU only (this device), False NCHW, True
    channels-last; the output is NCHW either way and the same image up to float rounding."""
    from layout_checks import decode_with_layout

    seen, ref, img = decode_with_layout(decoder.decoder, decoder.to_image, f_hat, setting)
    assert seen == [True, expect_nhwc]
    assert img.is_contiguous() and torch.allclose(img, ref, atol=1e-5)
