"""Restoration results binned by latent distance: d = ‖f_HQ − f_LQ‖₂ / ‖f_HQ‖₂ per pair (cache.status.latent_distance),
the relative distance between the vanilla and the accelerated latent (`radar-cache status` reports its
percentiles). PAA learns a correction of the decoder; pairs whose accelerated run went somewhere else
altogether (large d: another layout, another object) are beyond what a decoder can restore, so the gap closed
is expected to fall with d. The bins say where an adapter helps, and whether a few collapsed pairs dominate the
averages."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

__all__ = ["distance_bins", "markdown_rows"]


def _mean(x: np.ndarray) -> float:
    return float(x.mean())


def distance_bins(d: np.ndarray, per_image: dict[str, np.ndarray], n_bins: int) -> list[dict]:
    """Equal-count bins of the pairs sorted by d (ties in evaluation order; min(n_bins, N) bins, sizes differing
    by at most one), each with its d range, pair count, mean PSNR / SSIM of the baseline (frozen decoder on the LQ
    latent) and of the adapted decoder against the vanilla decode, ΔPSNR, and the gap closed over the bin
    G_mse = 1 − ΣMSE(adapted) / ΣMSE(baseline) (None where the baseline's MSE is 0)."""
    order = np.argsort(d, kind="stable")
    out = []
    for idx in np.array_split(order, min(n_bins, len(order))):
        mse_q, mse_s = per_image["mse_baseline"][idx].sum(), per_image["mse_student"][idx].sum()
        gap: Optional[float] = 1 - float(mse_s) / float(mse_q) if mse_q > 0 else None
        row = {"d_min": float(d[idx].min()), "d_max": float(d[idx].max()), "num_pairs": int(len(idx)),
               "psnr_baseline": _mean(per_image["psnr_baseline"][idx]),
               "psnr_adapted": _mean(per_image["psnr_student"][idx]),
               "ssim_baseline": _mean(per_image["ssim_baseline"][idx]),
               "ssim_adapted": _mean(per_image["ssim_student"][idx]),
               "gap_closed": None if gap is None or math.isnan(gap) else gap}
        row["delta_psnr"] = row["psnr_adapted"] - row["psnr_baseline"]
        out.append(row)
    return out


def markdown_rows(bins: list[dict]) -> list[str]:
    """The bins as a markdown table (lines)."""
    lines = ["| d = ‖f_HQ − f_LQ‖/‖f_HQ‖ | pairs | PSNR baseline | PSNR adapted | ΔPSNR | SSIM baseline | SSIM adapted "
             "| gap closed G_mse |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for b in bins:
        gap = "–" if b["gap_closed"] is None else f"{b['gap_closed']:.3f}"
        lines.append(f"| {b['d_min']:.4f} – {b['d_max']:.4f} | {b['num_pairs']} | {b['psnr_baseline']:.2f} | "
                     f"{b['psnr_adapted']:.2f} | {b['delta_psnr']:+.2f} | {b['ssim_baseline']:.4f} | "
                     f"{b['ssim_adapted']:.4f} | {gap} |")
    return lines
