"""Toy FID: the Fréchet distance between Gaussians fitted to the toy classifier's penultimate features.

The toy world's stand-in for FID (methods.md §5.2): features are `ToyClassifier.embed` (the last block's
mean- and max-pooled channels that the classifier's head reads; 128-d for the shipped width-16 classifier),
the distance is `radar_train.inference.fid.frechet_distance` on `GaussianStats` of two image sets. Two
references:

- real toy renders: a bank of `num_reference` images of the toy-world set `FID_REFERENCE_SEED` (2; the
  training set is seed 0, the held-out images of the reconstruction PSNR and the tests seed 1), rendered
  in code, so nothing is downloaded;
- the vanilla samples of the same run (same labels and seeds): how far acceleration moves the output
  distribution; the vanilla FID is 0 by construction.

Sample-count bias: a Fréchet distance from n samples is biased upwards by roughly a constant over n (the
covariance estimates' noise adds to the traces), and below D + 1 samples the sample covariance is
rank-deficient. Values compare only at the same sample count (and the same reference bank);
`ToyFID.baselines` gives the value a perfect generator would get at that count: n other real renders
against the reference (the floor).
"""
from __future__ import annotations

from typing import Optional

import torch

from radar_train.inference.fid import GaussianStats, fid_gap_closed, frechet_distance
from radar_train.toyworld.classifier import ToyClassifier
from radar_train.toyworld.common import ImageBank, make_bank

__all__ = ["FID_REFERENCE_SEED", "FLOOR_SEED", "ToyFID", "toy_features", "feature_stats", "toy_fid", "fid_gap_closed",
           "bank01", "sample_count_notes"]

FID_REFERENCE_SEED = 2
"""Toy-world set of the real renders the toy FID is measured against (disjoint from training, seed 0, and the
held-out images, seed 1)."""
FLOOR_SEED = 1
"""Toy-world set whose first n renders give the floor: real images against the reference at the run's count."""


@torch.no_grad()
def toy_features(classifier: ToyClassifier, images01: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images in [0, 1] (N, 3, 64, 64) -> the classifier's penultimate features (N, D), float32 on the CPU."""
    dev = next(classifier.parameters()).device
    return torch.cat([classifier.embed(images01[i:i + batch_size].to(dev).float()).float().cpu()
                      for i in range(0, images01.shape[0], batch_size)])


def feature_stats(classifier: ToyClassifier, images01: torch.Tensor) -> GaussianStats:
    """Mean and covariance of the images' toy features."""
    stats = GaussianStats()
    stats.update(toy_features(classifier, images01))
    return stats


def toy_fid(a: GaussianStats, b: GaussianStats) -> float:
    """Fréchet distance between two sets' feature statistics."""
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def bank01(bank: ImageBank) -> torch.Tensor:
    """A bank's uint8 images as floats in [0, 1]."""
    return bank.images.float().div(255)


def sample_count_notes(num_samples: int, dim: int) -> list[str]:
    """What the sample count means for the values (stated in every report)."""
    notes = [f"toy FID from {num_samples} samples per run in {dim}-d features: biased upwards by an amount that "
             f"shrinks roughly as 1/{num_samples}; compare only values with the same sample count and reference"]
    if num_samples < dim + 1:
        notes.append(f"{num_samples} samples < feature dimension {dim} + 1: the sample covariances are "
                     f"rank-deficient and the distance is dominated by that; use at least {dim + 1} samples")
    return notes


class ToyFID:
    """Toy FID of image sets against real renders and, once `set_vanilla` is called, against the vanilla
    samples of the run."""

    def __init__(self, classifier: ToyClassifier, num_reference: int, reference_seed: int = FID_REFERENCE_SEED):
        if num_reference < 2:
            raise ValueError(f"fid_reference_images must be at least 2, got {num_reference}")
        self.classifier = classifier
        self.num_reference, self.reference_seed = num_reference, reference_seed
        self.reference = feature_stats(classifier, bank01(make_bank(reference_seed, num_reference)))
        self.vanilla: Optional[GaussianStats] = None

    @property
    def dim(self) -> int:
        return int(self.reference.dim)

    def set_vanilla(self, images01: torch.Tensor) -> dict[str, float]:
        """Take these images as the vanilla reference; their toy FID against the real renders."""
        self.vanilla = feature_stats(self.classifier, images01)
        return {"toy_fid": toy_fid(self.vanilla, self.reference)}

    def measure(self, images01: torch.Tensor) -> dict[str, float]:
        """{'toy_fid': vs the real renders, 'toy_fid_vs_vanilla': vs the vanilla samples (if set)}."""
        stats = feature_stats(self.classifier, images01)
        out = {"toy_fid": toy_fid(stats, self.reference)}
        if self.vanilla is not None:
            out["toy_fid_vs_vanilla"] = toy_fid(stats, self.vanilla)
        return out

    def baselines(self, num_samples: int, vqvae=None, seed: int = FLOOR_SEED,
                  device: torch.device | str = "cpu") -> dict[str, float]:
        """Toy FID against the reference of `num_samples` real renders of the set `seed` ('real_renders': the
        floor, what a perfect generator would get at this count) and, given the VQ-VAE, of their
        reconstructions ('vqvae_reconstructions': what a generator would get whose token maps were the
        encoder's), reconstructed on `device` (the VQ-VAE's)."""
        bank = make_bank(seed, num_samples)
        out = {"real_renders": toy_fid(feature_stats(self.classifier, bank01(bank)), self.reference)}
        if vqvae is not None:
            from radar_train.toyworld.train_vqvae import reconstruct_bank

            recon = bank01(reconstruct_bank(vqvae, bank, device=device))
            out["vqvae_reconstructions"] = toy_fid(feature_stats(self.classifier, recon), self.reference)
        return out

    def describe(self, num_samples: int) -> dict:
        """What the values mean: feature, reference, counts, notes."""
        return {"features": f"toy classifier penultimate features (mean + max pooled), {self.dim}-d",
                "reference": {"kind": "toy renders", "world_seed": self.reference_seed,
                              "num_images": self.num_reference},
                "num_samples": num_samples, "notes": sample_count_notes(num_samples, self.dim)}
