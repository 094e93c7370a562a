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


def _textbook_attention(block, x: torch.Tensor) -> torch.Tensor:
    """x + proj(softmax(qᵀk / √C) applied to v), one head of C channels, in float64 from the block's weights."""
    B, C, H, W = x.shape
    x = x.double()
    h = F.group_norm(x, block.norm.num_groups, block.norm.weight.double(), block.norm.bias.double(), block.norm.eps)
    q, k, v = F.conv2d(h, block.qkv.weight.double(), block.qkv.bias.double()).reshape(B, 3, C, H * W).unbind(1)
    attn = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / C**0.5, dim=-1)  # (B, query, key)
    out = torch.einsum("bij,bcj->bci", attn, v).reshape(B, C, H, W)
    return x + F.conv2d(out, block.proj_out.weight.double(), block.proj_out.bias.double())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_attention_block_is_one_head_of_softmax_attention_in_the_layout_of_its_input(channels_last, device):
    """Float32 (on CUDA with TF32 off, torch's default for matrix products), and on CUDA also under bf16 autocast, as
    radar-train and the GPU benchmarks decode: there within bf16's rounding of the products' operands."""
    from radar_train.models.vae_blocks import AttnBlock

    torch.manual_seed(0)
    block = AttnBlock(64).to(device)
    for p in block.parameters():  # (GroupNorm starts at weight 1, bias 0: random affine terms check their use)
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 64, 5, 7, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = block(x)
    ref = _textbook_attention(block, x)
    assert torch.allclose(out.double(), ref, atol=1e-5, rtol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last and out.is_contiguous() != channels_last
    assert torch.equal(block(x).detach(), out)  # with grad: the same bits
    if device == "cuda":
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            low = block(x)
        assert (low.double() - ref).abs().max() < 0.05 * ref.abs().max()


def test_the_attention_block_is_two_matrix_products_without_copies_of_q_k_or_v():
    """The block's attention is two batched products over the transposed views of q, k and v (the official block's
    kernels, without its contiguous copies), not SDPA, which on CUDA runs one head of 640 channels only in its
    memory-efficient kernel (vae_blocks.AttnBlock)."""
    from op_names import OpNames

    from radar_train.models.vae_blocks import AttnBlock

    block = AttnBlock(64)
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 64, 4, 4).contiguous(memory_format=layout)
        with torch.no_grad(), OpNames() as ops:
            block(x)
        assert ops.names.count("baddbmm") == 1 and ops.names.count("bmm") == 1, ops.names
        assert not [n for n in ops.names if "attention" in n or n in ("clone", "copy_", "contiguous")], ops.names


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_fp16_attention_logits_do_not_overflow_where_the_unscaled_sums_would(device):
    """Under fp16 autocast (`--decode_precision fp16`) the products' sums q·k here reach 640 × 14² = 125,440, past
    fp16's 65,504; the block scales them inside the product (in its float32 accumulator), so its logits (4,958) stay
    finite and the output equals float32's."""
    from radar_train.models.vae_blocks import AttnBlock

    block = AttnBlock(640).to(device)
    with torch.no_grad():
        block.norm.weight.zero_()  # (GroupNorm's output is then its bias: 1 everywhere)
        block.norm.bias.fill_(1.0)
        block.qkv.weight.zero_()
        block.qkv.bias.fill_(14.0)  # q = k = v = 14
        torch.nn.init.normal_(block.proj_out.weight, std=0.05)
        x = torch.randn(1, 640, 4, 4, device=device)
        ref = block(x)
        with torch.autocast(device, dtype=torch.float16):
            low = block(x)
    assert torch.isfinite(low).all()
    assert torch.allclose(low.float(), ref, atol=0.05, rtol=0.01)
