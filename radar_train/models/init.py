"""Weight initialisation from a seed: random weights for the `tiny` preset (every parameter non-trivial,
so that acceleration visibly changes results) and the official-style init for training from scratch."""
from __future__ import annotations

import math

import torch
from torch import nn

from .var import VAR


@torch.no_grad()
def init_random_(model: nn.Module, seed: int) -> nn.Module:
    """Seeded random weights with the distributions of the reference fixtures: conv / linear weights
    N(0, gain²/fan_in) (gain 2 for the VAR head, 0.5 for AdaLN projections), biases N(0, 0.05²),
    GroupNorm 1+N(0, 0.1²) / N(0, 0.1²), codebook N(0, 0.5²), embeddings N(0, 0.3²) (class: N(0, 1)),
    attention scale multipliers log U[2, 30]. Deterministic for a given seed and architecture."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))

    def normal_(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float32).mul_(std).add_(mean).to(t.dtype))

    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "scale_mul_1H11":
            p.copy_(torch.empty(p.shape).uniform_(2.0, 30.0, generator=g).log_())
        elif leaf in ("q_bias", "v_bias"):
            normal_(p, 0.2)
        elif leaf in ("pos_start", "pos_1LC", "ada_gss") or name.startswith("lvl_embed"):
            normal_(p, 0.3)
        elif name.startswith("class_emb"):
            normal_(p, 1.0)
        elif name.endswith("embedding.weight"):
            normal_(p, 0.5)
        elif ".norm" in name or name.startswith("norm"):  # GroupNorm affine
            normal_(p, 0.1, 1.0 if leaf == "weight" else 0.0)
        elif leaf == "bias":
            normal_(p, 0.05)
        elif p.ndim >= 2:
            fan_in = p[0].numel()
            gain = 2.0 if name == "head.weight" else 0.5 if "ada_lin" in name else 1.0
            normal_(p, gain / math.sqrt(fan_in))
        else:
            normal_(p, 0.1)
    if isinstance(model, VAR):
        model.reset_constant_buffers()
    for name, b in model.named_buffers():
        if name.endswith("ema_vocab_hit_SV"):
            b.zero_()
    return model


@torch.no_grad()
def init_var_for_training_(var: VAR, seed: int, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5,
                           init_head: float = 0.02) -> VAR:
    """Init for training a VAR from scratch in the spirit of the official `VAR.init_weights`: truncated normal
    std √(1/(3C)) for linear and embedding weights, zero biases, AdaLN projections scaled by `init_adaln`
    (the γ rows by `init_adaln_gamma`, so blocks start near identity), head scaled by `init_head`.
    It is not the official init: the truncation is at ±2σ (the official one at ±2, i.e. none), attention
    and FFN output projections are not divided by √(2·depth), and with shared AdaLN (`ada_gss`) all rows
    take `init_adaln`. The toy world's shipped VAR was trained from this init, so it stays as it is."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    C = var.C
    std = math.sqrt(1 / C / 3)

    def tn_(t: torch.Tensor, s: float) -> None:
        t.copy_(torch.nn.init.trunc_normal_(torch.empty(t.shape), std=s, a=-2 * s, b=2 * s, generator=g))

    for name, p in var.named_parameters():
        if name.endswith("bias"):
            p.zero_()
        elif name.endswith("scale_mul_1H11"):
            p.fill_(math.log(4.0))
        elif p.ndim >= 2 or name in ("pos_start", "pos_1LC"):
            tn_(p, std)
    var.head.weight.mul_(init_head)
    for blk in var.blocks:
        if hasattr(blk, "ada_lin"):
            w = blk.ada_lin[1].weight
            w.mul_(init_adaln)
            w[: 2 * C].mul_(init_adaln_gamma / init_adaln)
        else:
            blk.ada_gss.mul_(init_adaln)
    var.head_nm.ada_lin[1].weight.mul_(init_adaln)
    var.reset_constant_buffers()
    return var
