"""The block's one-pass elementwise steps (models/fused.py): the official arithmetic up to float rounding, the
autocast dtype written directly, the autograd fallback, and a sampling step without the separate passes."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from radar_train.models.fused import adaln, gated_add, l2_normalize_qk, l2_normalize_qk_packed, modulate


def _close(got, want, dtype=torch.float32):
    tol = {torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]  # one rounding of `dtype`, relative
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


def test_modulate_is_h_times_scale_plus_shift():
    torch.manual_seed(0)
    h, s, b = torch.randn(3, 7, 16), torch.randn(3, 1, 16), torch.randn(3, 1, 16)
    out = modulate(h, s, b)
    assert out.dtype == torch.float32
    _close(out, h * s + b)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]  # (autocast and out= dtypes differ per backend)


@pytest.mark.parametrize("device", DEVICES)
def test_modulate_writes_the_autocast_dtype_from_mixed_operands(device):
    """Under autocast the float32 normed tokens and the bf16 modulation make a bf16 result in one call (what the
    next linear layer reads), with the float32 product's value."""
    torch.manual_seed(0)
    h = torch.randn(2, 5, 32, device=device)
    s, b = torch.randn(2, 1, 32, device=device).bfloat16(), torch.randn(2, 1, 32, device=device).bfloat16()
    with torch.autocast(device, dtype=torch.bfloat16):
        out = modulate(h, s, b)
    assert out.dtype == torch.bfloat16
    _close(out, (h * s.float() + b.float()).bfloat16(), torch.bfloat16)


@pytest.mark.parametrize("device", DEVICES)
def test_gated_add_is_the_residual_plus_the_gated_branch_in_float32(device):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 32, device=device)
    y, g = torch.randn(2, 5, 32, device=device).bfloat16(), torch.randn(2, 1, 32, device=device).bfloat16()
    with torch.autocast(device, dtype=torch.bfloat16):
        out = gated_add(x, y, g)
    assert out.dtype == torch.float32 and out.data_ptr() != x.data_ptr()
    _close(out, x + y.float() * g.float())


@pytest.mark.parametrize("with_mul", [True, False])
def test_l2_normalize_qk_is_f_normalize_of_q_and_k(with_mul):
    torch.manual_seed(0)
    rows, l, H, c = 2, 6, 4, 8
    qkv = torch.randn(rows, l, 3, H, c)
    qkv[0, 0, 1, 0] = 0.0  # a zero key: the clamped norm gives 0, as F.normalize
    mul = torch.rand(H) + 1
    qk_mul = torch.stack((mul, torch.ones(H))).view(2, H, 1) if with_mul else None
    q, k = l2_normalize_qk(qkv, qk_mul)
    q_ref, k_ref, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    q_ref = F.normalize(q_ref, dim=-1) * (mul.view(1, H, 1, 1) if with_mul else 1)
    assert q.shape == k.shape == (rows, H, l, c)
    _close(q, q_ref)
    _close(k, F.normalize(k_ref, dim=-1))
    assert torch.equal(k[0, 0, 0], torch.zeros(c))


@pytest.mark.parametrize("device", DEVICES)
def test_l2_normalize_qk_under_autocast_writes_bf16(device):
    torch.manual_seed(0)
    qkv = torch.randn(2, 6, 3, 4, 8, device=device).bfloat16()
    qk_mul = torch.stack((torch.rand(4, device=device) + 1, torch.ones(4, device=device))).view(2, 4, 1)
    with torch.autocast(device, dtype=torch.bfloat16):
        q, k = l2_normalize_qk(qkv, qk_mul)
    assert q.dtype == k.dtype == torch.bfloat16
    ref = F.normalize(qkv.float(), dim=-1)
    _close(q, (ref[:, :, 0] * qk_mul[0]).transpose(1, 2), torch.bfloat16)
    _close(k, ref[:, :, 1].transpose(1, 2), torch.bfloat16)


def test_adaln_is_the_layer_norm_then_modulate_bit_for_bit():
    """The pieces a compiled engine may replace: as eager, exactly the block's former sequence (its LayerNorm
    module, then `modulate`), under autocast too."""
    torch.manual_seed(0)
    x, s, b = torch.randn(2, 5, 32) * 3 + 1, torch.randn(2, 1, 32), torch.randn(2, 1, 32)
    ln = torch.nn.LayerNorm(32, eps=1e-6, elementwise_affine=False)
    assert torch.equal(adaln(x, s, b, 1e-6), modulate(ln(x), s, b))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = adaln(x, s.bfloat16(), b.bfloat16(), 1e-6), modulate(ln(x), s.bfloat16(), b.bfloat16())
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_packed_qk_holds_q_then_k():
    """The packed layout (rows, l, 2, heads, head_dim): q normalised and multiplied at [:, :, 0], k at [:, :, 1],
    against F.normalize of qkv's own q and k."""
    torch.manual_seed(0)
    qkv = torch.randn(2, 6, 3, 4, 8)
    mul = torch.rand(4) + 1
    qk_mul = torch.stack((mul, torch.ones(4))).view(2, 4, 1)
    packed = l2_normalize_qk_packed(qkv, qk_mul)
    assert packed.shape == (2, 6, 2, 4, 8)
    _close(packed[:, :, 0], F.normalize(qkv[:, :, 0], dim=-1) * mul.view(4, 1))
    _close(packed[:, :, 1], F.normalize(qkv[:, :, 1], dim=-1))


def test_recording_autograd_falls_back_to_differentiable_operations():
    """out= is not differentiable: with gradients required the same values come from the official sequence, and
    gradients reach every operand."""
    torch.manual_seed(0)
    h, s, b = (torch.randn(2, 3, 8, requires_grad=True), torch.randn(2, 1, 8, requires_grad=True),
               torch.randn(2, 1, 8, requires_grad=True))
    qkv = torch.randn(2, 3, 3, 2, 4, requires_grad=True)
    qk_mul = torch.ones(2, 2, 1, requires_grad=True)
    outs = (modulate(h, s, b), gated_add(h, h * 2, s), *l2_normalize_qk(qkv, qk_mul))
    sum(o.sum() for o in outs).backward()
    assert all(t.grad is not None for t in (h, s, b, qkv, qk_mul))
    with torch.no_grad():
        free = (modulate(h, s, b), gated_add(h, h * 2, s), *l2_normalize_qk(qkv, qk_mul))
    for a, c in zip(outs, free):
        _close(a.detach(), c)


class _FullSizeOps(TorchDispatchMode):
    """Names of the operators that write a tensor of at least `numel` elements."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if any(isinstance(o, torch.Tensor) and o.numel() >= self.numel for o in outs):
            self.ops.append(func.__name__)
        return out


@pytest.mark.parametrize("autocast", [False, True])
def test_a_sampling_step_makes_no_separate_multiply_add_divide_or_cast_pass(tiny_models, autocast):
    """In a block's KV-cached step every elementwise step over the (rows, tokens, C) stream is one fused pass:
    no plain multiply, add, divide or dtype cast of a full-size tensor."""
    _, var = tiny_models
    if autocast:  # (the sampler's setting: the body's weights in the autocast dtype, so no weight is cast per call)
        var = copy.deepcopy(var).cast_body_(torch.bfloat16)
    blk = var.blocks[0]
    rows, l = 4, 16
    x = torch.randn(rows, l, var.C)
    kv = var.new_kv_cache()
    probe = _FullSizeOps(rows * l * var.C)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        mod = blk.modulation(var.ada_cond(var.class_cond(torch.arange(rows))))
        with probe:
            out = blk(x, None, None, kv, mod=mod)
    assert out.shape == x.shape and out.dtype == torch.float32
    unfused = [op for op in probe.ops  # (the fused passes are the out= calls)
               if op.split(".")[0] in ("mul", "add", "add_", "div", "_to_copy", "sub") and not op.endswith(".out")]
    assert unfused == [], probe.ops
    assert sum(op.startswith("addcmul") for op in probe.ops) == 4, probe.ops  # 2 modulations, 2 gated adds
