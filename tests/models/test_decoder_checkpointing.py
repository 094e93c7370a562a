"""The decoder's activation checkpointing (`Decoder.checkpointing`): what each mode keeps for the backward.

The tensors autograd saves during a forward are counted through `torch.autograd.graph.saved_tensors_hooks`
(each storage once). "norms" runs every GroupNorm + SiLU again in the backward: the GroupNorm's output (SiLU's
input) and its statistics are then not kept, and nothing else changes; "blocks" keeps each block's input only."""
import pytest
import torch
from torch import nn

from radar_train.models.vae_blocks import Decoder, ResnetBlock


@pytest.fixture()
def decoder(tiny_models):
    dec = tiny_models[0].latent_decoder().decoder
    before = [p.requires_grad for p in dec.parameters()]
    for p in dec.parameters():  # LoRA's stand-in: the convolutions' weights take gradients, so they keep inputs
        p.requires_grad_(isinstance(dec.get_submodule(_owner(dec, p)), nn.Conv2d))
    yield dec
    dec.checkpointing = None
    for p, flag in zip(dec.parameters(), before):
        p.requires_grad_(flag)


def _owner(module: nn.Module, param: nn.Parameter) -> str:
    return next(name.rpartition(".")[0] for name, p in module.named_parameters() if p is param)


def _z(dec: Decoder, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, dec.conv_in.in_channels, 4, 4, generator=torch.Generator().manual_seed(0))


def _saved_bytes(dec: Decoder, z: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward of a forward, each storage once, the parameters (resident anyway:
    GroupNorm keeps its weight) left out."""
    params = {p.untyped_storage().data_ptr() for p in dec.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        dec(z)
    return sum(storages.values())


def _group_norm_outputs(dec: Decoder, z: torch.Tensor, norms: list[nn.GroupNorm]) -> int:
    """Bytes of the outputs of `norms` and of their statistics (mean and 1/std, float32, per sample and group)."""
    sizes: list[int] = []
    hooks = [n.register_forward_hook(lambda m, i, o: sizes.append(o.nbytes + 2 * 4 * o.shape[0] * m.num_groups))
             for n in norms]
    with torch.no_grad():
        dec(z)
    for h in hooks:
        h.remove()
    return sum(sizes)


def test_norms_mode_keeps_everything_but_the_group_norms_outputs(decoder):
    z = _z(decoder)
    full = _saved_bytes(decoder, z)
    decoder.checkpointing = "norms"
    norms = [m for b in decoder.modules() if isinstance(b, ResnetBlock) for m in (b.norm1, b.norm2)]
    norms.append(decoder.norm_out)
    assert _saved_bytes(decoder, z) == full - _group_norm_outputs(decoder, z, norms)


def test_blocks_mode_keeps_less_than_norms_mode(decoder):
    z = _z(decoder)
    full = _saved_bytes(decoder, z)
    decoder.checkpointing = "norms"
    norms = _saved_bytes(decoder, z)
    decoder.checkpointing = "blocks"
    blocks = _saved_bytes(decoder, z)
    assert blocks < norms < full


def test_no_mode_changes_a_decode_without_grad(decoder):
    z = _z(decoder)
    with torch.no_grad():
        ref = decoder(z)
        for mode in ("norms", "blocks"):
            decoder.checkpointing = mode
            assert torch.equal(decoder(z), ref), mode


def test_modes_are_checked_and_reach_every_resnet_block(decoder):
    with pytest.raises(ValueError, match="decoder checkpointing must be one of blocks, norms or None, got 'all'"):
        decoder.checkpointing = "all"
    blocks = [m for m in decoder.modules() if isinstance(m, ResnetBlock)]
    decoder.checkpointing = "norms"
    assert blocks and all(b.recompute_norms for b in blocks)
    decoder.checkpointing = "blocks"
    assert decoder.checkpointing == "blocks" and not any(b.recompute_norms for b in blocks)


@pytest.mark.parametrize("recompute", [False, True])
def test_under_autocast_two_convolutions_of_one_activation_keep_one_copy_of_it(recompute):
    """A float32 GroupNorm + SiLU (as CUDA bf16 autocast runs GroupNorm) feeding a convolution and a LoRA
    branch's: the activation is cast to the autocast dtype once, and both keep that one copy for the backward
    (autocast casts an activation anew for each op, so each kept its own)."""
    from radar_train.models.vae_blocks import group_norm, norm_silu

    torch.manual_seed(0)
    norm, base, adapter = group_norm(64), nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 4, 3, padding=1)
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    kept: dict[int, tuple] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[t.untyped_storage().data_ptr()] = (tuple(t.shape), t.dtype)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", torch.bfloat16):
        y = norm_silu(norm, x, recompute)
        out = base(y) + adapter(y).sum(1, keepdim=True)
    assert y.dtype == torch.bfloat16
    assert list(kept.values()).count(((2, 64, 8, 8), torch.bfloat16)) == 1
    out.float().sum().backward()
    with torch.no_grad():  # the same values as the float32 activation cast by each convolution
        ref = torch.nn.functional.silu(norm(x))
        with torch.autocast("cpu", torch.bfloat16):
            assert torch.equal(base(ref), base(y))
