"""Restoration metrics of methods.md §5.1, in torch, on images in [0, 1].

- PSNR: data range 1, per image, then averaged over images.
- SSIM: Wang et al. (2004), in float64, with an 11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, data range 1,
  computed per RGB channel over the 'valid' region (no padding, as scikit-image with
  `gaussian_weights=True, use_sample_covariance=False` does in the interior), averaged over the
  channels and the map, then over images.
- Gap closed: G_mse = 1 − MSE(S, T) / MSE(Q, T) with the MSEs summed over the whole validation set
  (T teacher, Q baseline = frozen decoder on the LQ latent, S student = decoder + LoRA on the LQ latent).
- Harmlessness: PSNR(D_LoRA(f_HQ), T).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["to_unit", "mse_per_image", "psnr_per_image", "ssim_per_image", "high_frequency_energy", "RestorationStats"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def to_unit(img: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images (any range) -> [0, 1], clamped, float32."""
    return img.float().add(1).mul_(0.5).clamp_(0, 1)


def mse_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) x2 -> (N,) mean squared error per image."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)


def psnr_per_image(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """(N, C, H, W) x2 in [0, 1] -> (N,) PSNR in dB (data range 1); identical images give 100 dB."""
    return (10 * torch.log10(1.0 / mse_per_image(a, b).clamp_min(eps))).clamp_max(100.0)


def high_frequency_energy(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N,) mean squared response of the 3x3 Laplacian per channel (no padding): the energy of
    an image's finest detail. A blurred image scores lower; comparing the means of two sets of images drawn
    alike (restored vs vanilla samples of the same labels and seeds) tells whether a decoder smooths."""
    x = images.float()
    c = x.shape[1]
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=x.device)
    lap = F.conv2d(x, k.expand(c, 1, 3, 3), groups=c)
    return lap.pow(2).flatten(1).mean(1)


@lru_cache(maxsize=8)
def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_per_image(a: torch.Tensor, b: torch.Tensor, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """(N, C, H, W) x2 in [0, 1] -> (N,) SSIM averaged over channels and the valid region.
    Images smaller than the window use a window of their size. Computed in float64 (E[x²] − E[x]² cancels
    badly in float32)."""
    a, b = a.double(), b.double()
    N, C, H, W = a.shape
    size = min(window, H, W)
    w = _gaussian_window(size, sigma).to(a.device).expand(C, 1, size, size)

    def filt(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, groups=C)

    mu_a, mu_b = filt(a), filt(b)
    s_aa = filt(a * a) - mu_a**2
    s_bb = filt(b * b) - mu_b**2
    s_ab = filt(a * b) - mu_a * mu_b
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    num = (2 * mu_a * mu_b + c1) * (2 * s_ab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2)
    return (num / den).flatten(1).mean(1).float()


class RestorationStats:
    """Accumulates per-image sums over a validation pass; `compute()` gives the §5.1 metrics.

    Feed [0, 1] images: teacher T, baseline Q, student S, and optionally H = D_LoRA(f_HQ)."""

    KEYS = ("n", "mse_student", "mse_baseline", "psnr_student", "psnr_baseline", "ssim_student", "ssim_baseline",
            "psnr_harmless", "n_harmless")

    def __init__(self, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(len(self.KEYS), dtype=torch.float64, device=device)

    def _add(self, key: str, value: torch.Tensor) -> None:
        self.sums[self.KEYS.index(key)] += value.double().sum()

    @torch.no_grad()
    def update(self, teacher: torch.Tensor, baseline: torch.Tensor, student: torch.Tensor,
               harmless: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Add a batch; returns its per-image values (mse_/psnr_/ssim_student and _baseline, (N,) each)."""
        self.sums[0] += teacher.shape[0]
        per_image = {"mse_student": mse_per_image(student, teacher),
                     "mse_baseline": mse_per_image(baseline, teacher),
                     "psnr_student": psnr_per_image(student, teacher),
                     "psnr_baseline": psnr_per_image(baseline, teacher),
                     "ssim_student": ssim_per_image(student, teacher),
                     "ssim_baseline": ssim_per_image(baseline, teacher)}
        for key, value in per_image.items():
            self._add(key, value)
        if harmless is not None:
            self._add("psnr_harmless", psnr_per_image(harmless, teacher))
            self.sums[self.KEYS.index("n_harmless")] += harmless.shape[0]
        return per_image

    def compute(self, sums: torch.Tensor | None = None) -> dict[str, float]:
        """Metrics from the sums (pass all-reduced sums under DDP). Empty -> {}."""
        s = dict(zip(self.KEYS, (self.sums if sums is None else sums).tolist()))
        n = s["n"]
        if n == 0:
            return {}
        out = {k: s[k] / n for k in ("mse_student", "mse_baseline", "psnr_student", "psnr_baseline",
                                     "ssim_student", "ssim_baseline")}
        out["gap_closed_mse"] = 1 - s["mse_student"] / s["mse_baseline"] if s["mse_baseline"] > 0 else math.nan
        out["delta_psnr"] = out["psnr_student"] - out["psnr_baseline"]
        out["delta_ssim"] = out["ssim_student"] - out["ssim_baseline"]
        if s["n_harmless"] > 0:
            out["psnr_harmless"] = s["psnr_harmless"] / s["n_harmless"]
        return out
