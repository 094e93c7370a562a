"""Multi-scale residual quantizer of VAR's VQ-VAE, with the shared φ ("quant_resi") convolutions.

Shapes: a token map of scale `si` has side `pn = patch_nums[si]`; index lists are (B, pn²) in row-major
(h, w) order; `f_hat` is always the full-resolution (B, Cvae, P, P) map with P = patch_nums[-1].
Upsampling of a token map to P×P is bicubic, downsampling of f_hat / f_rest is `area` (adaptive average).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Phi(nn.Conv2d):
    """φ(h) = (1 − r)·h + r·conv3×3(h), r = |quant_resi|."""

    def __init__(self, channels: int, quant_resi: float):
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.resi_ratio) + super().forward(h).mul_(self.resi_ratio)


def phi_ticks(num_phi: int) -> np.ndarray:
    """Tick positions of the φ convolutions on [0, 1] (float64, as the official code computes them)."""
    if num_phi == 4:
        return np.linspace(1 / 3 / num_phi, 1 - 1 / 3 / num_phi, num_phi)
    return np.linspace(1 / 2 / num_phi, 1 - 1 / 2 / num_phi, num_phi)


def phi_index(si: int, num_scales: int, num_phi: int) -> int:
    """Index of the φ used at scale `si`: the one whose tick is nearest to si/(SN−1) in float64.

    The float64 rounding matters: for 10 scales and 4 φ's, si=2 and si=7 are exact ties in real
    arithmetic and float64 decides them ([0,0,1,1,1,2,2,3,3,3])."""
    if num_phi == 1:
        return 0
    at = si / (num_scales - 1) if num_scales > 1 else 0.0
    return int(np.argmin(np.abs(phi_ticks(num_phi) - at)).item())


class _PhiShared(nn.Module):
    """share_quant_resi=1: one φ for every scale (key `quant_resi.qresi`)."""

    def __init__(self, phi: nn.Module):
        super().__init__()
        self.qresi = phi

    def get(self, si: int, num_scales: int) -> nn.Module:
        return self.qresi


class _PhiPartiallyShared(nn.Module):
    """share_quant_resi=K≥2: K φ's (keys `quant_resi.qresi_ls.{k}`)."""

    def __init__(self, phis: list[nn.Module]):
        super().__init__()
        self.qresi_ls = nn.ModuleList(phis)

    def get(self, si: int, num_scales: int) -> nn.Module:
        return self.qresi_ls[phi_index(si, num_scales, len(self.qresi_ls))]


class _PhiNonShared(nn.ModuleList):
    """share_quant_resi=0: one φ per scale (keys `quant_resi.{k}`)."""

    def get(self, si: int, num_scales: int) -> nn.Module:
        return self[phi_index(si, num_scales, len(self))]


class MultiScaleQuantizer(nn.Module):
    """VAR's `VectorQuantizer2`: codebook + φ convolutions, and the multi-scale residual operations."""

    def __init__(self, vocab_size: int, z_channels: int, patch_nums: Sequence[int], *, using_znorm: bool = False,
                 beta: float = 0.25, quant_resi: float = 0.5, share_quant_resi: int = 4,
                 default_qresi_counts: int = 0):
        super().__init__()
        self.vocab_size, self.z_channels = vocab_size, z_channels
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.using_znorm, self.beta = using_znorm, beta

        def make_phi() -> nn.Module:
            return Phi(z_channels, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity()

        if share_quant_resi == 0:
            self.quant_resi = _PhiNonShared([make_phi() for _ in range(default_qresi_counts or len(self.patch_nums))])
        elif share_quant_resi == 1:
            self.quant_resi = _PhiShared(make_phi())
        else:
            self.quant_resi = _PhiPartiallyShared([make_phi() for _ in range(share_quant_resi)])
        # codebook usage statistics of the official training; kept only so official files load strictly
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))
        self.embedding = nn.Embedding(vocab_size, z_channels)

    # ---------------------------------------------------------------- helpers
    def phi(self, si: int, num_scales: int | None = None) -> nn.Module:
        return self.quant_resi.get(si, num_scales or len(self.patch_nums))

    @property
    def num_phi(self) -> int:
        if isinstance(self.quant_resi, _PhiShared):
            return 1
        if isinstance(self.quant_resi, _PhiPartiallyShared):
            return len(self.quant_resi.qresi_ls)
        return len(self.quant_resi)

    def phi_indices(self, num_scales: int | None = None) -> list[int]:
        """Which φ each scale uses."""
        K = num_scales or len(self.patch_nums)
        return [phi_index(si, K, self.num_phi) for si in range(K)]

    def _pns(self, patch_nums: Sequence[int] | None) -> tuple[int, ...]:
        return tuple(patch_nums) if patch_nums is not None else self.patch_nums

    def indices_to_map(self, idx_Bl: torch.Tensor, pn: int) -> torch.Tensor:
        """(B, pn²) indices -> (B, Cvae, pn, pn) codebook vectors."""
        B = idx_Bl.shape[0]
        return self.embedding(idx_Bl).transpose(1, 2).reshape(B, self.z_channels, pn, pn)

    def nearest(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Nearest codeword index for each row of z (N, Cvae)."""
        weight = self.embedding.weight.data
        if self.using_znorm:
            return torch.argmax(F.normalize(z_NC, dim=-1) @ F.normalize(weight.T, dim=0), dim=1)
        d = torch.sum(z_NC.square(), dim=1, keepdim=True) + torch.sum(weight.square(), dim=1, keepdim=False)
        d.addmm_(z_NC, weight.T, alpha=-2, beta=1)
        return torch.argmin(d, dim=1)

    def residual_step(self, si: int, h_BChw: torch.Tensor, patch_nums: Sequence[int] | None = None) -> torch.Tensor:
        """φ(upsample(h)) for scale si: the contribution of scale si's token map to f_hat."""
        pns = self._pns(patch_nums)
        P, SN = pns[-1], len(pns)
        if si != SN - 1:
            h_BChw = F.interpolate(h_BChw, size=(P, P), mode="bicubic")
        return self.phi(si, SN)(h_BChw)

    # ---------------------------------------------------------------- encoding
    def f_to_indices(self, f_BChw: torch.Tensor, patch_nums: Sequence[int] | None = None,
                     to_fhat: bool = False) -> list[torch.Tensor]:
        """Residual quantization of f (B, Cvae, P, P): per-scale indices (B, pn²), or with `to_fhat`
        the cumulative f_hat after each scale."""
        pns = self._pns(patch_nums)
        B, C, H, W = f_BChw.shape
        if pns[-1] != H or H != W:
            raise ValueError(f"latent of shape {tuple(f_BChw.shape)} does not match patch_nums ending in {pns[-1]}")
        f_rest = f_BChw.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        out = []
        SN = len(pns)
        for si, pn in enumerate(pns):
            z = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != SN - 1 else f_rest
            idx_N = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, C))
            h = self.residual_step(si, self.embedding(idx_N.view(B, pn, pn)).permute(0, 3, 1, 2).contiguous(), pns)
            f_hat.add_(h)
            f_rest.sub_(h)
            out.append(f_hat.clone() if to_fhat else idx_N.reshape(B, pn * pn))
        return out

    # ---------------------------------------------------------------- decoding from indices
    def indices_to_fhat(self, idx_list: Sequence[torch.Tensor], patch_nums: Sequence[int] | None = None,
                        cumulative: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Σ_s φ_s(upsample(embed(idx_s))). Scales beyond len(idx_list) (skipped) contribute nothing.
        With `cumulative`, returns f_hat after every given scale."""
        pns = self._pns(patch_nums)
        B, P = idx_list[0].shape[0], pns[-1]
        f_hat = torch.zeros(B, self.z_channels, P, P, dtype=torch.float32, device=idx_list[0].device)
        outs = []
        for si, idx in enumerate(idx_list):
            f_hat.add_(self.residual_step(si, self.indices_to_map(idx, pns[si]), pns))
            if cumulative:
                outs.append(f_hat.clone())
        return outs if cumulative else f_hat

    def indices_to_var_input(self, idx_list: Sequence[torch.Tensor],
                             patch_nums: Sequence[int] | None = None) -> torch.Tensor:
        """Teacher-forcing input of VAR: for si < SN−1, area_down(f_hat after si, pn_{si+1}) flattened,
        concatenated -> (B, L − first_l, Cvae). The last scale's indices are not used."""
        pns = self._pns(patch_nums)
        B, P, SN = idx_list[0].shape[0], pns[-1], len(pns)
        f_hat = torch.zeros(B, self.z_channels, P, P, dtype=torch.float32, device=idx_list[0].device)
        nxt = []
        for si in range(SN - 1):
            f_hat.add_(self.residual_step(si, self.indices_to_map(idx_list[si], pns[si]), pns))
            pn_next = pns[si + 1]
            nxt.append(F.interpolate(f_hat, size=(pn_next, pn_next), mode="area").view(B, self.z_channels, -1).transpose(1, 2))
        return torch.cat(nxt, dim=1)

    def next_input(self, si: int, f_hat: torch.Tensor, h_BChw: torch.Tensor,
                   patch_nums: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One sampling step: f_hat += φ(up(h)) (in place); returns (f_hat, next scale's input map
        (B, Cvae, pn', pn') or None after the last scale)."""
        pns = self._pns(patch_nums)
        f_hat.add_(self.residual_step(si, h_BChw, pns))
        if si == len(pns) - 1:
            return f_hat, None
        pn = pns[si + 1]
        return f_hat, F.interpolate(f_hat, size=(pn, pn), mode="area")

    # ---------------------------------------------------------------- training (straight-through)
    def quantize_ste(self, f_BChw: torch.Tensor, patch_nums: Sequence[int] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Training forward: (f_hat with straight-through gradient to f, VQ loss, indices).

        VQ loss = mean over scales of beta·|sg(f_hat) − f|² + |f_hat − sg(f)|² (codebook + φ learn
        through the second term, the encoder through the first)."""
        pns = self._pns(patch_nums)
        B, C, H, W = f_BChw.shape
        f = f_BChw.float()
        f_no_grad = f.detach()
        f_rest = f_no_grad.clone()
        f_hat = torch.zeros_like(f_rest)
        loss = f.new_zeros(())
        SN = len(pns)
        idx_out = []
        for si, pn in enumerate(pns):
            z = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != SN - 1 else f_rest
            idx_N = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, C))
            h = self.residual_step(si, self.embedding(idx_N.view(B, pn, pn)).permute(0, 3, 1, 2), pns)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            loss = loss + F.mse_loss(f_hat.detach(), f).mul(self.beta) + F.mse_loss(f_hat, f_no_grad)
            idx_out.append(idx_N.reshape(B, pn * pn))
        loss = loss / SN
        f_hat_ste = (f_hat.detach() - f_no_grad) + f
        return f_hat_ste, loss, idx_out
