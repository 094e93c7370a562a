"""Distillation loss of methods.md §4.5.

Student s = decoder_LoRA(f_LQ) (unclamped), teacher t = clamp(decoder(f_HQ), -1, 1) (no grad).

| term     | definition                                              | weight option  |
| pixel L1 | mean |s − t|                                           | l1_weight (1)  |
| pixel L2 | mean (s − t)²                                           | l2_weight (0)  |
| feature  | Σ_ℓ mean (φ_ℓ(s-path) − φ_ℓ(t-path))² (= per-channel-normalised squared distance) over the decoder features after the mid block and after each up level | feature_weight (0) |
| identity | mean |decoder_LoRA(f_HQ) − t|                           | identity_weight (0) |
| LPIPS    | mean LPIPS-VGG(s, t); local weight files only            | lpips_weight (0) |
| spectrum | mean ||F(s)| − |F(t)||, F the orthonormal 2-D FFT per channel: the amplitude spectra only, so the
             energy at each spatial frequency must match wherever the detail sits (phase-free: a blur is
             penalised, a circular shift not at all)  | spectrum_weight (0) |

The adversarial term (a patch discriminator) is its own config group: adversarial.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LossArgs", "DistillLoss", "amplitude_spectrum"]


@dataclass
class LossArgs:
    """Weights of the distillation loss terms (methods.md §4.5)."""

    l1_weight: float = 1.0
    """Pixel L1 between the student (unclamped) and the teacher image."""
    l2_weight: float = 0.0
    """Pixel L2 (mean squared error)."""
    feature_weight: float = 0.0
    """Internal-feature loss over decoder features (after the mid block and each up level); try 0.1."""
    identity_weight: float = 0.0
    """L1 of decoder+LoRA on the HQ latent vs the teacher (keeps LoRA harmless); try 0.1. Costs one more
    decoder forward + backward per step."""
    lpips_weight: float = 0.0
    """LPIPS-VGG (1.0 with real weights, VQGAN convention). Needs lpips_vgg."""
    lpips_vgg: Optional[str] = None
    """Local torchvision VGG16 weights file (vgg16-397923af.pth) for LPIPS."""
    lpips_heads: Optional[str] = None
    """Local LPIPS v0.1 linear heads file (vgg.pth of the lpips package); default: torchmetrics' copy of it."""
    spectrum_weight: float = 0.0
    """L1 between the student's and the teacher's amplitude spectra (per channel, orthonormal FFT): rewards
    the teacher's amount of fine detail wherever it sits; try 1.0."""

    def problems(self) -> list[str]:
        p = [f"model.loss.{k} must be >= 0, got {getattr(self, k)}" for k in
             ("l1_weight", "l2_weight", "feature_weight", "identity_weight", "lpips_weight", "spectrum_weight")
             if getattr(self, k) < 0]
        if self.l1_weight + self.l2_weight + self.feature_weight + self.lpips_weight + self.spectrum_weight == 0:
            p.append("model.loss: every weight of a student term (l1, l2, feature, lpips, spectrum) is 0")
        if self.lpips_weight > 0:
            if self.lpips_vgg is None:
                p.append("model.loss.lpips_weight > 0 needs model.loss.lpips_vgg (a local weights file; nothing is "
                         "downloaded): pass --model.loss.lpips_vgg <torchvision's vgg16-397923af.pth>, or "
                         "--model.loss.lpips_weight 0")
            for key in ("lpips_vgg", "lpips_heads"):
                path = getattr(self, key)
                if path is not None and not Path(path).is_file():
                    p.append(f"model.loss.{key} {path}: file not found (LPIPS weights must be available locally)")
            if self.lpips_heads is None:
                from .lpips import _shipped_heads_checked

                try:
                    _shipped_heads_checked("model.loss.lpips_heads")
                except (OSError, ValueError) as e:
                    p.append(str(e))
        return p

    @property
    def needs_features(self) -> bool:
        return self.feature_weight > 0


def amplitude_spectrum(x: torch.Tensor) -> torch.Tensor:
    """|orthonormal 2-D FFT| of (..., H, W) over the last two axes (Parseval: its squared sum is x's)."""
    return torch.fft.fft2(x.float(), norm="ortho").abs()


class DistillLoss(nn.Module):
    """Weighted sum of the configured terms; returns (total, {term: value}) with detached term values."""

    def __init__(self, args: LossArgs):
        super().__init__()
        self.args = args
        self.lpips = None
        if args.lpips_weight > 0:
            from .lpips import load_lpips

            self.lpips = load_lpips(args.lpips_vgg, args.lpips_heads)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor,
                student_feats: Optional[list[torch.Tensor]] = None, teacher_feats: Optional[list[torch.Tensor]] = None,
                identity: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """student, teacher, identity: (B, 3, H, W) in [-1, 1]; feats: lists of (B, C_ℓ, H_ℓ, W_ℓ)."""
        a = self.args
        terms: dict[str, tuple[float, torch.Tensor]] = {}
        s, t = student.float(), teacher.float()
        if a.l1_weight > 0:
            terms["l1"] = (a.l1_weight, F.l1_loss(s, t))
        if a.l2_weight > 0:
            terms["l2"] = (a.l2_weight, F.mse_loss(s, t))
        if a.feature_weight > 0:
            assert student_feats is not None and teacher_feats is not None
            feat = sum(F.mse_loss(fs.float(), ft.float()) for fs, ft in zip(student_feats, teacher_feats))
            terms["feature"] = (a.feature_weight, feat)
        if a.identity_weight > 0:
            assert identity is not None
            terms["identity"] = (a.identity_weight, F.l1_loss(identity.float(), t))
        if self.lpips is not None:
            terms["lpips"] = (a.lpips_weight, self.lpips(s, t).mean())
        if a.spectrum_weight > 0:
            terms["spectrum"] = (a.spectrum_weight, F.l1_loss(amplitude_spectrum(s), amplitude_spectrum(t)))
        total = sum(w * v for w, v in terms.values())
        return total, {k: v.detach() for k, (_, v) in terms.items()}
