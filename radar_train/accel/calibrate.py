"""Calibrations measured on the model itself from vanilla samples (one label per class in turn).

StageVAR ranks (methods.md §3.2(c), StageVAR App. A.1): at every refinement scale the input F̃ (M × C)
of every block is recorded for the rows StageVAR runs there (`single_branch`: the conditional rows, the
unconditional ones, or both with `off`), its singular values computed, and the rank r(α) = the smallest r
holding a fraction α of the energy Σσ². The table stores mean r/M (and its std) per (scale, block) and the
branch it was measured on; `StageVARArgs.rank_ratios` loads it.

Both calibrations draw sample i with label i mod num_classes and seed seed + i, with the noise rule of
RadarPipeline (`noise_keys`: with official noise one generator per call, seeded with its first sample's seed),
so the same seed and batch size give the same file.

SCA-Mask tile scores (methods.md §8.2): an observing hook computes the softmax of q·kᵀ at every
active scale and block explicitly and accumulates Score_Q / Score_KV per tile (per head and averaged
over heads); the mask file (`SCAArgs.mask_file`) stores them with the masks selected for the budgets.
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import yaml

from radar_train.accel.base import AccelMethod, AccelRun, Branch, ConfigError, RunContext, branch_rows
from radar_train.accel.sca import FORMAT_VERSION as SCA_FORMAT_VERSION
from radar_train.accel.sca import MaskFile, SCAMask, resolve_budgets, save_mask_file, scale_tiles, tile_counts
from radar_train.accel.stagevar import SINGLE_BRANCHES, rank_for
from radar_train.models.hooks import StepHooks
from radar_train.sampling import NextScaleSampler, noise_keys


class RankProbe(AccelMethod):
    """Observes (never changes) the block inputs at the given scale indices, in the rows of the CFG branch that
    StageVAR with `single_branch` runs there (methods.md §3.2(c): the ranks of the rows it projects)."""

    name = "rank-probe"

    def __init__(self, scale_indices: Sequence[int], alpha: float, single_branch: str = "cond"):
        if single_branch not in SINGLE_BRANCHES:
            raise ValueError(f"single_branch must be one of {', '.join(SINGLE_BRANCHES)}, got {single_branch!r}")
        self.scale_indices, self.alpha = tuple(scale_indices), alpha
        self.branch: Branch = "both" if single_branch == "off" else single_branch
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
        rows = x[branch_rows(self.probe.branch, self.ctx.batch_size)] if self.rows == "both" else x
        sv = torch.linalg.svdvals(rows.float())  # (rows, min(M, C)), uncentred as in the paper
        self.probe.add(self.si, block_idx, rank_for(sv, self.probe.alpha).float() / x.shape[1])
        return run(x)


def _sample_all(sampler: NextScaleSampler, probe: AccelMethod, num_samples: int, batch_size: int, num_classes: int,
                seed: int, progress: Callable[[int], None] | None) -> None:
    """Run `num_samples` vanilla samples under `probe`, `batch_size` per call: sample i has label i mod
    num_classes and seed seed + i, drawn by RadarPipeline's rule (`noise_keys`; with official noise the call's
    generator is seeded with its first sample's seed), so a calibration is repeatable at the same batch size."""
    done = 0
    while done < num_samples:
        n = min(batch_size, num_samples - done)
        labels = torch.arange(done, done + n) % num_classes
        sampler.sample(labels, **noise_keys(sampler.config.noise, range(seed + done, seed + done + n)), accel=probe)
        done += n
        if progress:
            progress(n)


def _scale_indices(sampler: NextScaleSampler, scale_sides: Sequence[int]) -> list[int]:
    """Indices of `scale_sides` in the sampler's schedule (ValueError naming those it lacks)."""
    pns = list(sampler.patch_nums)
    missing = [s for s in scale_sides if s not in pns]
    if missing:
        raise ValueError(f"calibration scales {missing} are not in the model's patch_nums {tuple(pns)}")
    return [pns.index(s) for s in scale_sides]


@torch.no_grad()
def calibrate_ranks(sampler: NextScaleSampler, scale_sides: Sequence[int], alpha: float, num_samples: int,
                    batch_size: int, num_classes: int, seed: int = 0,
                    progress: Callable[[int], None] | None = None, *, single_branch: str = "cond") -> tuple[dict, dict]:
    """Mean and std of r(α)/M per (scale side, block) over `num_samples` vanilla samples, measured on the rows
    StageVAR with `single_branch` runs at those scales (cond / uncond: that half of the CFG batch; off: all)."""
    probe = RankProbe(_scale_indices(sampler, scale_sides), alpha, single_branch)
    _sample_all(sampler, probe, num_samples, batch_size, num_classes, seed, progress)
    return probe.table(list(sampler.patch_nums), sampler.var.depth)


def write_rank_yaml(path: str | Path, means: dict, stds: dict, *, alpha: float, num_samples: int, model: dict,
                    single_branch: str = "cond") -> Path:
    """Write the rank table with the branch it was measured on (its ratios hold for that branch's rows only); a
    temporary file in the same folder, renamed: none left behind on failure."""
    from radar_train.outputs import write_text_atomic

    doc = {"written_by": "radar-accel calibrate", "date": datetime.date.today().isoformat(), "model": model,
           "alpha": alpha, "single_branch": single_branch, "num_samples": num_samples, "ratios": means,
           "std": stds}
    return write_text_atomic(path, yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))


# ---------------------------------------------------------------------------- SCA-Mask tile scores
class SCAProbe(AccelMethod):
    """Observes (never changes) the attention probabilities at the given scale indices and accumulates
    the SCA tile counts (methods.md §8.2b–d), per head and averaged over heads."""

    name = "sca-probe"

    def __init__(self, patch_nums: Sequence[int], scale_indices: Sequence[int], tile: int, tau: float):
        self.patch_nums, self.scale_indices, self.tile, self.tau = tuple(patch_nums), tuple(scale_indices), tile, tau
        self.sums: dict[tuple[str, int, int], torch.Tensor] = {}  # (kind, scale idx, block) -> counts
        self.rows: dict[int, int] = {}  # scale idx -> attention rows seen (samples x CFG rows)

    def start(self, ctx: RunContext) -> AccelRun:
        return _SCAProbeRun(self, ctx)

    def add(self, si: int, block: int, p: torch.Tensor) -> None:
        geo = scale_tiles(self.patch_nums, si, self.tile)
        tau = self.tau / geo.end  # relative to the uniform level 1/n
        if block == 0:
            self.rows[si] = self.rows.get(si, 0) + p.shape[0]
        for kind, probs in (("head", p), ("mean", p.mean(dim=1, keepdim=True))):
            t_q, t_kv = tile_counts(probs, geo, tau)
            for name, t in (("q", t_q), ("kv", t_kv)):
                key = (f"{name}_{kind}", si, block)
                self.sums[key] = self.sums.get(key, 0) + t.cpu()

    def scores(self, depth: int) -> dict[str, dict[int, torch.Tensor]]:
        """{score_q, score_kv: side -> (depth, nq, nk); score_q_head, score_kv_head: (depth, H, nq, nk)}."""
        out: dict[str, dict[int, torch.Tensor]] = {"score_q": {}, "score_kv": {}, "score_q_head": {},
                                                   "score_kv_head": {}}
        for si in self.scale_indices:
            pn = int(self.patch_nums[si])
            for name in ("q", "kv"):
                out[f"score_{name}_head"][pn] = torch.stack([self.sums[(f"{name}_head", si, b)] for b in range(depth)])
                out[f"score_{name}"][pn] = torch.stack([self.sums[(f"{name}_mean", si, b)][0] for b in range(depth)])
        return out


class _SCAProbeRun(AccelRun):
    def __init__(self, probe: SCAProbe, ctx: RunContext):
        super().__init__(ctx)
        self.probe = probe

    def begin_scale(self, si: int, rows: Branch) -> Optional[StepHooks]:
        super().begin_scale(si, rows)
        return self if si in self.probe.scale_indices else None

    def attention(self, block_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        p = torch.softmax(q.float() @ k.float().transpose(-1, -2) * scale, dim=-1)  # explicit, calibration only
        self.probe.add(self.si, block_idx, p)
        return super().attention(block_idx, q, k, v, scale)  # the vanilla attention, unchanged


@torch.no_grad()
def calibrate_sca(sampler: NextScaleSampler, scale_sides: Sequence[int], tile: int, tau: float, num_samples: int,
                  batch_size: int, num_classes: int, seed: int = 0,
                  progress: Callable[[int], None] | None = None) -> tuple[dict[str, dict[int, torch.Tensor]], int]:
    """SCA tile scores over `num_samples` vanilla samples (labels i mod num_classes, seeds seed + i), and
    the number of attention rows (samples x CFG rows) they were summed over."""
    probe = SCAProbe(list(sampler.patch_nums), sorted(_scale_indices(sampler, scale_sides)), tile, tau)
    _sample_all(sampler, probe, num_samples, batch_size, num_classes, seed, progress)
    return probe.scores(sampler.var.depth), probe.rows[probe.scale_indices[-1]]


def write_sca_mask(path: str | Path, args, patch_nums: Sequence[int], scores: dict[str, dict[int, torch.Tensor]],
                   *, tile: int, tau: float, rows: int, num_samples: int, seed: int, batch_size: int, model: dict,
                   sampling: dict) -> tuple[Path, SCAMask]:
    """Write the mask file: the scores, the masks selected on them for the budgets of `args` (an
    `SCAArgs`), and the header; returns the path and the method the file gives with those budgets."""
    compute, memory, problems = resolve_budgets(args)
    if problems:
        raise ConfigError("sca", problems)
    sides = sorted(scores["score_q"], key=list(patch_nums).index)
    tensors = {f"{name}.{pn}": t for name, d in scores.items() for pn, t in d.items()}
    preset = args.preset if args.compute_budget is None and args.memory_budget is None else None
    header = {"version": SCA_FORMAT_VERSION, "written_by": "radar-accel calibrate --accel.method sca",
              "model": model, "patch_nums": [int(p) for p in patch_nums],
              "num_heads": int(scores["score_q_head"][sides[0]].shape[1]), "tile": tile, "tau": tau,
              "scales": sides, "budgets": {"preset": preset, "compute": compute, "memory": memory,
                                           "per_head": bool(args.per_head)},
              "calibration": {"num_samples": num_samples, "seeds": f"{seed}..{seed + num_samples - 1}",
                              "first_seed": seed, "labels": "sample i has label i mod num_classes",
                              "batch_size": batch_size, "attention_rows": rows, "sampling": sampling}}
    method = SCAMask(patch_nums=tuple(int(p) for p in patch_nums), scales=tuple(sides), tile=tile,
                     compute_budget=compute, memory_budget=memory, per_head=bool(args.per_head), preset=preset,
                     mask=MaskFile(str(path), "", header, tensors))
    return save_mask_file(path, header, tensors, method.masks()), method
