"""Convolutional encoder and decoder of VAR's VQ-VAE (the taming/LDM "f16" design).

Module names follow the official checkpoints (`conv_in`, `down.{i}.block.{j}`, `mid.block_1`,
`up.{i}.attn.{j}`, `nin_shortcut`, ...), so official state dicts load strictly.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


def overwrite_ok() -> bool:
    """Whether a block may compute in place on tensors it made itself (the SiLU over the GroupNorm's
    output, a resnet block's residual sum into its conv2 output): only when no autograd graph is recorded (no_grad /
    inference mode). Each such activation is written twice instead of allocated twice: on the CPU a fresh
    multi-MB tensor is fresh pages from the OS (the residual sums alone take about a tenth off the page faults
    of a VAR-d16 decode; the halving comes with the channels-last layout, `Decoder._decode`). With grad
    enabled (training, activation checkpointing) every step stays out of place, so the saved activations
    stay intact."""
    return not torch.is_grad_enabled()


def _call_block(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return block(h)


CHECKPOINTING = ("blocks", "norms")
"""Activation checkpointing of the decoder (`Decoder.checkpointing`): "blocks" recomputes each block (resnet,
attention, upsampling) in the backward and keeps only its input; "norms" recomputes each GroupNorm + SiLU in the
backward and keeps its input, so the convolutions never run twice."""


def _norm_silu(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = F.silu(norm(x), inplace=overwrite_ok())
    kind = y.device.type
    if torch.is_autocast_enabled(kind) and y.dtype != (dtype := torch.get_autocast_dtype(kind)):
        # a convolution takes it next, which autocast runs in its dtype; cast once here, since autocast casts an
        # activation anew for each op (a LoRA convolution's base and adapter branch each kept their own copy for
        # the backward: under CUDA bf16 autocast GroupNorm, and so SiLU, run in float32). The same values.
        y = y.to(dtype)
    return y


def norm_silu(norm: nn.Module, x: torch.Tensor, recompute: bool) -> torch.Tensor:
    """SiLU(GroupNorm(x)). With `recompute` (and grad enabled) the two run again in the backward instead of
    keeping their activations: the GroupNorm's input and output are then not saved (under CUDA bf16 autocast
    both in float32, as autocast runs GroupNorm in float32), only x and the output the next convolution saves
    anyway. Same values and gradients: the recomputation is the same computation on the same input."""
    if recompute and torch.is_grad_enabled():
        return checkpoint(_norm_silu, norm, x, use_reentrant=False)
    return _norm_silu(norm, x)


class Upsample2x(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample2x(nn.Module):
    """Zero-pad right and bottom by one, then a 3×3 stride-2 convolution without padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, norm_groups: int = 32):
        super().__init__()
        self.norm1 = group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = group_norm(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)
        else:
            self.nin_shortcut = nn.Identity()
        self.recompute_norms = False
        """Recompute GroupNorm + SiLU in the backward (`norm_silu`); set by `Decoder.checkpointing`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inplace = overwrite_ok()
        h = self.conv1(norm_silu(self.norm1, x, self.recompute_norms))
        h = self.conv2(self.dropout(norm_silu(self.norm2, h, self.recompute_norms)))
        # without autograd the sum goes into conv2's fresh output (one large allocation less per block; the
        # float sum is the same either way round)
        return h.add_(self.nin_shortcut(x)) if inplace else self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1×1 convolutions (fused qkv)."""

    def __init__(self, channels: int, norm_groups: int = 32):
        super().__init__()
        self.channels = channels
        self.norm = group_norm(channels, norm_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1, stride=1, padding=0)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)  # (B, C, HW) views, no copies
        # One head of C channels (640 in VAR's VQ-VAE): two batched matrix products and a softmax, as in the official
        # block (without its four contiguous copies: the products take the transposed views). SDPA runs such a head
        # on CUDA only in its memory-efficient kernel (flash and cuDNN stop at 256 channels), the one part where our
        # decode ran other kernels than the official one (`python benchmarks/gpu_probes.py decode` times both).
        # The logits (B, HW of q, HW of k) are scaled inside the first product (alpha: in its float32 accumulator,
        # before the rounding to the autocast dtype), so fp16 logits do not overflow where the unscaled sums would;
        # with beta 0 the product ignores its first argument.
        w = torch.baddbmm(q.new_empty(()), q.transpose(1, 2), k, beta=0.0, alpha=C**-0.5).softmax(dim=-1)
        if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
            h = torch.bmm(v, w.transpose(1, 2))  # (B, C, HW): NCHW
        else:  # (B, HW, C) seen as (B, C, HW): channels-last, like x (the CPU's layout: Decoder.channels_last)
            h = torch.bmm(w, v.transpose(1, 2)).transpose(1, 2)
        # out of place: x + proj_out(h) is laid out like x, so the convolutions after it see the same layout (and
        # give the same bits) with and without grad
        return x + self.proj_out(h.reshape(B, C, H, W))


class Encoder(nn.Module):
    def __init__(self, *, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int,
                 in_channels: int = 3, dropout: float = 0.0, using_sa: bool = True, using_mid_sa: bool = True,
                 norm_groups: int = 32):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        in_ch_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        block_in = ch
        for level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in = ch * in_ch_mult[level]
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks):
                block.append(ResnetBlock(block_in, block_out, dropout, norm_groups))
                block_in = block_out
                if level == self.num_resolutions - 1 and using_sa:
                    attn.append(AttnBlock(block_in, norm_groups))
            down = nn.Module()
            down.block, down.attn = block, attn
            if level != self.num_resolutions - 1:
                down.downsample = Downsample2x(block_in)
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout, norm_groups)
        self.mid.attn_1 = AttnBlock(block_in, norm_groups) if using_mid_sa else nn.Identity()
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout, norm_groups)
        self.norm_out = group_norm(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, down in enumerate(self.down):
            for i, blk in enumerate(down.block):
                h = blk(h)
                if len(down.attn) > 0:
                    h = down.attn[i](h)
            if level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h), inplace=overwrite_ok()))


class Decoder(nn.Module):
    """z (B, Cvae, h, w) -> image (B, 3, h·2^(levels-1), ...), unclamped."""

    def __init__(self, *, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int,
                 out_channels: int = 3, dropout: float = 0.0, using_sa: bool = True, using_mid_sa: bool = True,
                 norm_groups: int = 32):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self._checkpointing: Optional[str] = None
        self.channels_last: Optional[bool] = None
        """Run the activations channels-last (NHWC strides; the output is NCHW either way): True, False, or None:
        on the CPU only (where oneDNN works in NHWC natively). Same layout with and without grad."""
        self.block_call: Optional[Callable[[nn.Module, torch.Tensor], torch.Tensor]] = None
        """How each block (resnet, attention, upsampling) is run: `block_call(block, h)`, e.g. one compiled
        function for all blocks; None: `block(h)`. It takes the block as an argument, so a copy of the decoder
        (deepcopy) runs its own blocks through it."""
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout, norm_groups)
        self.mid.attn_1 = AttnBlock(block_in, norm_groups) if using_mid_sa else nn.Identity()
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout, norm_groups)
        ups: list[nn.Module] = []
        for level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                block.append(ResnetBlock(block_in, block_out, dropout, norm_groups))
                block_in = block_out
                if level == self.num_resolutions - 1 and using_sa:
                    attn.append(AttnBlock(block_in, norm_groups))
            up = nn.Module()
            up.block, up.attn = block, attn
            if level != 0:
                up.upsample = Upsample2x(block_in)
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = group_norm(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, out_channels, kernel_size=3, stride=1, padding=1)

    @property
    def checkpointing(self) -> Optional[str]:
        """Activation checkpointing for training through the decoder (see `CHECKPOINTING`): None (keep every
        activation), "blocks" (keep each block's input: the least memory, about one more decoder forward of
        compute) or "norms" (keep what the convolutions save: GroupNorm + SiLU run twice, the convolutions once).
        Same values and gradients in each mode; without grad (inference) none applies."""
        return self._checkpointing

    @checkpointing.setter
    def checkpointing(self, mode: Optional[str]) -> None:
        if mode is not None and mode not in CHECKPOINTING:
            raise ValueError(f"decoder checkpointing must be one of {', '.join(CHECKPOINTING)} or None, got {mode!r}")
        self._checkpointing = mode
        for m in self.modules():
            if isinstance(m, ResnetBlock):
                m.recompute_norms = mode == "norms"

    def forward_features(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output plus the intermediate features after the mid block and after each up level
        (coarse to fine) — used by the internal-feature distillation loss."""
        feats: list[torch.Tensor] = []
        return self._decode(z, feats), feats

    def _decode(self, z: torch.Tensor, feats: Optional[list[torch.Tensor]]) -> torch.Tensor:
        """The decoder; appends the intermediate features to `feats` when given (else none are kept
        alive, so their memory is reused during the pass)."""
        run = self._run
        if self.channels_last or (self.channels_last is None and z.device.type == "cpu"):
            # channels-last on the CPU: oneDNN runs the convolutions in NHWC natively (no layout reorder of
            # every activation in and out) and GroupNorm, SiLU, the upsampling and the sums keep the layout;
            # at VAR-d16 the decode takes about a tenth less time and half the page faults. Same layout with
            # and without grad, so training and inference decode the same bits.
            z = z.contiguous(memory_format=torch.channels_last)
        h = run(self.mid.block_2, run(self.mid.attn_1, run(self.mid.block_1, self.conv_in(z))))
        if feats is not None:
            feats.append(h)
        for level in reversed(range(self.num_resolutions)):
            up = self.up[level]
            for i, blk in enumerate(up.block):
                h = run(blk, h)
                if len(up.attn) > 0:
                    h = run(up.attn[i], h)
            if level != 0:
                h = run(up.upsample, h)
            if feats is not None:
                feats.append(h)
        return self.conv_out(norm_silu(self.norm_out, h, self._checkpointing is not None)).contiguous()

    def _run(self, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
        call = self.block_call or _call_block
        if self._checkpointing == "blocks" and torch.is_grad_enabled():
            return checkpoint(call, block, h, use_reentrant=False)
        return call(block, h)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self._decode(z, None)
