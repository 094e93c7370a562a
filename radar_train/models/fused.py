"""Elementwise steps of VAR's block written as single passes over memory (inference without autograd).

At the sizes VAR samples at, a block's time is largely its elementwise passes over (rows, tokens, C) tensors, not
its matrix products (GPU profile of VAR-d16, batch 32, bf16: docs/benchmarks.md "Acceleration, GPU"). Each
function here computes what the official block computes with fewer passes:

- `modulate`: LN(x)·(1+s)+b as one `addcmul` instead of a multiply, an add and (under autocast) a cast to the
  autocast dtype: it writes that dtype itself, so the next linear layer casts nothing;
- `gated_add`: x + γ·y as one `addcmul` instead of a multiply and an add;
- `adaln`: a branch's AdaLN input, the layer norm (no affine) then `modulate`;
- `l2_normalize_qk`: the attention's L2 normalisation of q and k (q times its per-head multiplier) from the packed
  qkv projection in one reduction and one multiply, instead of a reduction, a divide (and a multiply) per tensor
  over their head-major views.

They use `out=` tensors, which autocast leaves alone (a promoting op such as `addcmul` would otherwise first cast
its bf16 operands to float32 in separate passes); the operands' dtypes mix inside the one kernel. The arithmetic is
that of the official code up to float rounding: a fused multiply-add rounds once where the official rounds after
the multiply too, and q is multiplied by (multiplier / norm) rather than divided by the norm and then multiplied.
With autograd recording, each falls back to the official sequence of operations (out= is not differentiable).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch

NORM_EPS = 1e-12  # F.normalize's default: the norm is clamped to at least this


def _recording(*ts: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


def _promoted(*ts: torch.Tensor) -> torch.dtype:
    return functools.reduce(torch.promote_types, (t.dtype for t in ts))


def _out_dtype(*ts: torch.Tensor) -> torch.dtype:
    """What the next linear layer computes in: the autocast dtype where autocast is on, else the operands'
    promoted dtype."""
    dev = ts[0].device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return _promoted(*ts)


def modulate(h: torch.Tensor, scale1p: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """h·scale1p + shift (AdaLN: h the layer-normed tokens (rows, l, C), scale1p = 1+s and shift (rows, 1, C)), in
    the autocast dtype under autocast."""
    if _recording(h, scale1p, shift):
        return h.mul(scale1p).add(shift)
    out = torch.empty(h.shape, dtype=_out_dtype(h, scale1p, shift), device=h.device)
    return torch.addcmul(shift, h, scale1p, out=out)


def gated_add(x: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """x + gamma·y (the residual stream x (rows, l, C), a branch output y of x's shape, its gate gamma (rows, 1, C)),
    a new tensor in the promoted dtype of the three (float32 for the float32 residual stream under autocast)."""
    if _recording(x, y, gamma):
        return x + y.mul(gamma)
    return torch.addcmul(x, y, gamma, out=torch.empty(x.shape, dtype=_promoted(x, y, gamma), device=x.device))


def adaln(x: torch.Tensor, scale1p: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    """A branch's AdaLN input: layer norm of the residual stream x (rows, l, C) over C (no affine, `eps`), then
    `modulate` (scale1p = 1+s and shift (rows, 1, C); the autocast dtype under autocast)."""
    return modulate(torch.nn.functional.layer_norm(x, (x.shape[-1],), eps=eps), scale1p, shift)


def l2_normalize_qk_packed(qkv: torch.Tensor, qk_mul: Optional[torch.Tensor]) -> torch.Tensor:
    """q and k L2-normalised over head_dim (the norm clamped to at least 1e-12, as F.normalize) and multiplied by
    qk_mul ((2, heads, 1): q's per-head multiplier, then k's; None: 1), from qkv (rows, l, 3, heads, head_dim),
    packed as one new tensor (rows, l, 2, heads, head_dim): q at [:, :, 0], k at [:, :, 1]. Written in the autocast
    dtype under autocast (the attention's operand dtype), else in qkv's; norms and factors in float32."""
    qk = qkv[:, :, :2]
    if _recording(*(t for t in (qkv, qk_mul) if t is not None)):
        out = torch.nn.functional.normalize(qk, dim=-1)
        return out if qk_mul is None else out * qk_mul
    norm = torch.linalg.vector_norm(qk, dim=-1, keepdim=True, dtype=torch.float32)  # (rows, l, 2, heads, 1)
    norm = norm.clamp_min_(NORM_EPS)
    factor = norm.reciprocal_() if qk_mul is None else torch.div(qk_mul, norm, out=norm)
    return torch.mul(qk, factor, out=torch.empty(qk.shape, dtype=_out_dtype(qkv), device=qkv.device))


def unpack_qk(qk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k, each (rows, heads, l, head_dim), as views of a packed (rows, l, 2, heads, head_dim) tensor."""
    q, k = qk.unbind(2)
    return q.transpose(1, 2), k.transpose(1, 2)


def l2_normalize_qk(qkv: torch.Tensor, qk_mul: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """`l2_normalize_qk_packed`, as q and k, each (rows, heads, l, head_dim)."""
    return unpack_qk(l2_normalize_qk_packed(qkv, qk_mul))


@dataclass(frozen=True)
class BlockOps:
    """The pieces of a block's step that its caller chooses: `adaln` and `qk_normalize` (as `adaln` and
    `l2_normalize_qk_packed`: the same signatures and results, up to float rounding). They are functions of tensors
    only (no module, KV cache or hook state), so a sampling engine can run compiled versions of them
    (`VAR.step(..., ops=)`; radar_train.engine) while the model knows nothing of compilers."""

    adaln: Callable[..., torch.Tensor] = adaln
    qk_normalize: Callable[..., torch.Tensor] = l2_normalize_qk_packed


EAGER_OPS = BlockOps()
