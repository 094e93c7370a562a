"""LoRA placement on the tiny decoder: wrapped module names, rank cap, exact identity at init."""
from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from radar_train.models import load_latent_decoder
from radar_train.train.lora import LoraArgs, inject_lora, parameter_counts, resolve_targets


@pytest.fixture
def decoder():
    return load_latent_decoder("tiny")[0]


def _wrapped(model) -> list[str]:
    base = model.get_base_model()
    return [n for n, m in base.named_modules() if isinstance(m, LoraLayer)]


def test_all_preset_wraps_every_decoder_conv_and_post_quant_conv_but_not_conv_out(decoder):
    convs = [n for n, m in decoder.named_modules() if isinstance(m, nn.Conv2d)]
    model = inject_lora(decoder, LoraArgs(targets="all"))
    wrapped = _wrapped(model)
    assert wrapped == [n for n in convs if n != "decoder.conv_out"]
    for name in ("post_quant_conv", "decoder.conv_in", "decoder.mid.attn_1.qkv", "decoder.up.0.block.0.nin_shortcut",
                 "decoder.up.1.upsample.conv", "decoder.up.2.attn.1.proj_out"):
        assert name in wrapped
    assert "decoder.conv_out" not in wrapped and len(wrapped) == 27


def test_early_preset_wraps_only_the_latent_side_layers(decoder):
    wrapped = _wrapped(inject_lora(decoder, LoraArgs(targets="early")))
    assert wrapped[:2] == ["post_quant_conv", "decoder.conv_in"]
    assert all(n.startswith(("post_quant_conv", "decoder.conv_in", "decoder.mid.", "decoder.up.2.")) for n in wrapped)
    assert "decoder.up.2.upsample.conv" in wrapped and "decoder.up.1.block.0.conv1" not in wrapped


def test_a_regex_target_must_match_whole_module_names(decoder):
    with pytest.raises(ValueError, match="matches no Conv2d"):
        resolve_targets(decoder, "conv")
    assert resolve_targets(decoder, r"decoder\.mid\..*conv\d") == [
        "decoder.mid.block_1.conv1", "decoder.mid.block_1.conv2", "decoder.mid.block_2.conv1", "decoder.mid.block_2.conv2"]


def test_rank_is_capped_at_the_layer_size(decoder):
    model = inject_lora(decoder, LoraArgs(rank=16))
    base = model.get_base_model()
    assert base.post_quant_conv.lora_A["default"].out_channels == 8  # 8 -> 8 channels
    assert base.decoder.conv_in.lora_A["default"].out_channels == 16
    assert base.decoder.conv_in.lora_A["default"].kernel_size == (3, 3)
    assert base.decoder.conv_in.lora_B["default"].kernel_size == (1, 1)


def test_only_lora_parameters_are_trainable(decoder):
    total = sum(p.numel() for p in decoder.parameters())
    model = inject_lora(decoder, LoraArgs())
    trainable, frozen = parameter_counts(model)
    assert frozen == total and trainable > 0
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_adapters_at_init_reproduce_the_frozen_decoder_exactly(decoder, make_batch):
    x = make_batch(3)["fhat_lq"]
    with torch.no_grad():
        ref = decoder(x)
        model = inject_lora(decoder, LoraArgs())
        assert torch.equal(model(x), ref)


def test_disabled_adapters_give_the_frozen_decoder_after_the_lora_weights_change(decoder, make_batch):
    x = make_batch(2)["fhat_lq"]
    with torch.no_grad():
        ref = decoder(x)
        model = inject_lora(decoder, LoraArgs())
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
        assert not torch.allclose(model(x), ref, atol=1e-3)
        with model.disable_adapter():
            assert torch.equal(model(x), ref)
