"""StageVAR rank calibration (methods.md §3.2(c), StageVAR App. A.1) measured on the model itself.

Vanilla samples are generated (one label per class in turn); at every refinement scale the input F̃
(M × C) of every block is recorded for the conditional rows, its singular values computed, and the
rank r(α) = the smallest r holding a fraction α of the energy Σσ². The table stores mean r/M (and
its std) per (scale, block); `StageVARArgs.rank_ratios` loads it.
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import yaml

from radar_train.accel.base import AccelMethod, AccelRun, Branch, RunContext
from radar_train.accel.stagevar import rank_for
from radar_train.models.hooks import StepHooks
from radar_train.sampling import NextScaleSampler


class RankProbe(AccelMethod):
    """Observes (never changes) the block inputs at the given scale indices."""

    name = "rank-probe"

    def __init__(self, scale_indices: Sequence[int], alpha: float):
        self.scale_indices, self.alpha = tuple(scale_indices), alpha
        self.sums: dict[tuple[int, int], torch.Tensor] = {}  # (scale idx, block) -> [Σ ratio, Σ ratio², n]

    def start(self, ctx: RunContext) -> AccelRun:
        return _ProbeRun(self, ctx)

    def add(self, si: int, block: int, ratios: torch.Tensor) -> None:
        acc = self.sums.setdefault((si, block), torch.zeros(3, dtype=torch.float64))
        r = ratios.double().cpu()
        acc += torch.stack([r.sum(), r.pow(2).sum(), torch.tensor(float(r.numel()), dtype=torch.float64)])

    def table(self, patch_nums: Sequence[int], depth: int) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
        means, stds = {}, {}
        for si in self.scale_indices:
            m, s = [], []
            for j in range(depth):
                tot, sq, n = self.sums[(si, j)].tolist()
                mean = tot / n
                m.append(round(mean, 5))
                s.append(round(max(sq / n - mean * mean, 0.0) ** 0.5, 5))
            means[int(patch_nums[si])], stds[int(patch_nums[si])] = m, s
        return means, stds


class _ProbeRun(AccelRun):
    def __init__(self, probe: RankProbe, ctx: RunContext):
        super().__init__(ctx)
        self.probe = probe

    def begin_scale(self, si: int, rows: Branch) -> Optional[StepHooks]:
        super().begin_scale(si, rows)
        return self if si in self.probe.scale_indices else None

    def block(self, block_idx: int, x: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        cond_rows = x[: self.ctx.batch_size] if self.rows == "both" else x
        sv = torch.linalg.svdvals(cond_rows.float())  # (B, min(M, C)), uncentred as in the paper
        self.probe.add(self.si, block_idx, rank_for(sv, self.probe.alpha).float() / x.shape[1])
        return run(x)


@torch.no_grad()
def calibrate_ranks(sampler: NextScaleSampler, scale_sides: Sequence[int], alpha: float, num_samples: int,
                    batch_size: int, num_classes: int, seed: int = 0,
                    progress: Callable[[int], None] | None = None) -> tuple[dict, dict]:
    """Mean and std of r(α)/M per (scale side, block) over `num_samples` vanilla samples."""
    pns = list(sampler.patch_nums)
    missing = [s for s in scale_sides if s not in pns]
    if missing:
        raise ValueError(f"calibration scales {missing} are not in the model's patch_nums {tuple(pns)}")
    probe = RankProbe([pns.index(s) for s in scale_sides], alpha)
    done = 0
    while done < num_samples:
        n = min(batch_size, num_samples - done)
        labels = torch.arange(done, done + n) % num_classes
        sampler.sample(labels, seeds=[seed + i for i in range(done, done + n)], accel=probe)
        done += n
        if progress:
            progress(n)
    return probe.table(pns, sampler.var.depth)


def write_rank_yaml(path: str | Path, means: dict, stds: dict, *, alpha: float, num_samples: int, model: dict) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = {"written_by": "radar-accel calibrate", "date": datetime.date.today().isoformat(), "model": model,
           "alpha": alpha, "num_samples": num_samples, "ratios": means, "std": stds}
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))
    tmp.replace(p)
    return p
