"""FastVAR on class-conditional VAR: pivotal token selection (PTS) + cached token restoration (CTR).

At the cache scale every block in `layers` stores the full branch output of its attention and FFN
sub-layers (all rows). At a pruned scale with ratio ρ, before each sub-layer the residual stream x is scored
per row (score_i = ‖x_i − mean‖, the square root of FastVAR's Σ_c (x_ic − mean_c)²: the same order, in one
pass over x); the M − ⌊Mρ⌋ highest-scoring tokens go through the sub-layer (only their K/V enter the KV
cache); the branch output of the others is the cached output area-resized to the current grid. FastVAR caches
and restores the branch output after the AdaLN gate γ; here the model gates after the restore (its hooks see
branches before their gates), which is the same map: γ scales each row and channel, and the resize and the
scatter act channel by channel. ρ = 1 skips the scale and every later one (decode f_hat as it is); ρ = 0
leaves the scale untouched (the entry is dropped: the method is that of the other entries).

Presets are defined from the end of the schedule, so they resolve for any model: on the 256px
schedule (…, 10, 13, 16) `default` is {13: 0.5, 16: 0.75} with cache 10, `mild` {13: 0.4, 16: 0.5},
`aggressive` {10: 0.5, 13: 0.75, 16: 0.9} with cache 8; on 512px (…, 18, 24, 32) `default` is
{24: 0.5, 32: 0.75} with cache 18 (methods.md §2.5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from radar_train.accel.base import AccelMethod, AccelRun, Branch, RunContext, ScalePlan, flop_constants
from radar_train.interp import area_matrix, matmul_resize_dtypes
from radar_train.models.hooks import StepHooks, SubLayer

PRESETS: dict[str, tuple[float, ...]] = {
    "default": (0.5, 0.75),
    "mild": (0.4, 0.5),
    "aggressive": (0.5, 0.75, 0.9),
}


def pivotal_tokens(x: torch.Tensor, keep: int) -> torch.Tensor:
    """PTS: indices (rows, keep), ascending, of the tokens of x (rows, M, C) farthest from the row's
    spatial mean (Euclidean distance over channels, computed in float32)."""
    score = torch.linalg.vector_norm(x - x.mean(dim=1, keepdim=True), dim=-1, dtype=torch.float32)
    return score.topk(keep, dim=1, sorted=False).indices.sort(dim=1).values


def resize_tokens(t: torch.Tensor, pn: int, matmul_dtypes: frozenset = frozenset()) -> torch.Tensor:
    """(rows, p², C) token grid -> (rows, pn², C) by area interpolation (a new tensor). The grid is resized
    channels-last (the token layout itself), so neither side is transposed in memory. An upsampling (pn ≥ p) of a
    tensor whose dtype is in `matmul_dtypes` runs as one batched matrix product with `area_matrix` instead of the
    area kernel: the same weights (1, 1/2, 1/4, exact) and float32 sums of at most four terms, so the same values
    up to the order of those sums (`matmul_resize_dtypes`; on CUDA the area kernel was 70-106 µs per FastVAR
    restore at VAR-d16/d24, batch 32, in the 2026-12-04 profile)."""
    rows, m, C = t.shape
    p = math.isqrt(m)
    if pn >= p and t.dtype in matmul_dtypes:
        with torch.autocast(t.device.type, enabled=False):  # (autocast would round float32 operands to bf16)
            return torch.matmul(area_matrix(p, pn, t.dtype, t.device), t)
    grid = t.reshape(rows, p, p, C).permute(0, 3, 1, 2)  # (rows, C, p, p), channels-last strides
    return F.interpolate(grid, size=(pn, pn), mode="area").permute(0, 2, 3, 1).reshape(rows, pn * pn, C)


def restore_tokens(cached: torch.Tensor, pn: int, idx: torch.Tensor, computed: torch.Tensor,
                   matmul_dtypes: frozenset = frozenset()) -> torch.Tensor:
    """CTR: the cached branch output resized to pn×pn (`resize_tokens`), with the computed tokens scattered at idx
    (in place into the resized grid, which is a new tensor: one full-size copy fewer per pruned sub-layer)."""
    full = resize_tokens(cached.to(computed.dtype), pn, matmul_dtypes)
    return full.scatter_(1, idx.unsqueeze(-1).expand(-1, -1, full.shape[-1]), computed)


@dataclass(frozen=True)
class FastVAR(AccelMethod):
    name = "fastvar"
    capturable = True
    prune: tuple[tuple[int, float], ...]  # ((scale side, ratio), ...)
    cache_scale: Optional[int] = None  # side; None = the scale just before the first pruned one
    layers: Optional[tuple[int, ...]] = None  # None = all blocks
    preset: Optional[str] = None

    def __post_init__(self) -> None:
        """Ratio 0 prunes nothing, so such a scale is dropped: it runs as vanilla, as if not listed. Kept, it ran
        the pruning path (keeping every token, at a cost) and counted as pruned: the cache scale, the first
        modified scale and the pair fork moved before it, which changed the latents."""
        object.__setattr__(self, "prune", tuple((pn, r) for pn, r in self.prune if r != 0.0))

    @staticmethod
    def from_preset(preset: str, patch_nums: Sequence[int], **kw) -> "FastVAR":
        if preset not in PRESETS:
            raise ValueError(f"unknown fastvar preset {preset!r}; available: {', '.join(PRESETS)}")
        ratios = PRESETS[preset]
        if len(ratios) >= len(patch_nums):
            raise ValueError(f"fastvar preset {preset!r} prunes {len(ratios)} scales; the model has only {len(patch_nums)}")
        sides = patch_nums[-len(ratios):]
        return FastVAR(prune=tuple(zip(sides, ratios)), preset=preset, **kw)

    @property
    def ratios(self) -> dict[int, float]:
        return dict(self.prune)

    def _cache_side(self, patch_nums: Sequence[int]) -> Optional[int]:
        if self.cache_scale is not None:
            return self.cache_scale
        pruned = [patch_nums.index(pn) for pn, r in self.prune if pn in patch_nums and r < 1.0]
        first = min(pruned, default=None)
        return patch_nums[first - 1] if first else None

    def problems(self, patch_nums: Sequence[int], depth: int) -> list[str]:
        p = []
        pns = list(patch_nums)
        sides = [pn for pn, _ in self.prune]
        if len(set(sides)) != len(sides):
            p.append(f"fastvar.prune lists a scale twice: {sides}")
        for pn, r in self.prune:
            if pn not in pns:
                p.append(f"fastvar.prune: scale {pn} is not in the model's patch_nums {tuple(pns)}")
            if not 0.0 <= r <= 1.0:
                p.append(f"fastvar.prune: ratio {r} for scale {pn} is outside [0, 1]")
        valid = [(pns.index(pn), r) for pn, r in self.prune if pn in pns and 0.0 <= r <= 1.0]
        skip_at = min((i for i, r in valid if r == 1.0), default=None)
        if skip_at is not None:
            if skip_at == 0:
                p.append("fastvar.prune: ratio 1 at the first scale would skip every scale")
            later = [pns[i] for i, r in valid if i > skip_at and r < 1.0]
            if later:
                p.append(f"fastvar.prune: scale {pns[skip_at]} has ratio 1 (skip the rest) but later scales "
                         f"{later} have ratios < 1 (only a suffix can be skipped)")
        pruned_idx = [i for i, r in valid if r < 1.0]
        if 0 in pruned_idx:  # (its tokens have no earlier scale to be restored from)
            p.append(f"fastvar.prune: the first scale ({pns[0]}) cannot be pruned: no earlier scale's output restores "
                     f"its pruned tokens; prune later scales")
        elif pruned_idx:
            cache = self._cache_side(pns)
            if cache is None or cache not in pns:
                p.append(f"fastvar.cache_scale {cache} is not in the model's patch_nums {tuple(pns)}")
            elif pns.index(cache) >= min(pruned_idx):
                p.append(f"fastvar.cache_scale {cache} must come before the first pruned scale {pns[min(pruned_idx)]}")
        if self.layers is not None:
            bad = [b for b in self.layers if not 0 <= b < depth]
            if bad:
                p.append(f"fastvar.layers {bad} out of range for depth {depth}")
        return p

    def first_modified_scale(self, patch_nums: Sequence[int]) -> Optional[int]:
        idx = [list(patch_nums).index(pn) for pn, _ in self.prune if pn in patch_nums]
        return min(idx, default=None)

    def start(self, ctx: RunContext) -> AccelRun:
        return _FastVARRun(self, ctx)

    def derived(self, patch_nums: Sequence[int]) -> dict:
        """The scale whose outputs restore the pruned tokens (cache_scale: null means "the scale before the first
        pruned one", worked out here)."""
        return {"cache_scale_used": self._cache_side(tuple(patch_nums))}

    def describe(self) -> dict:
        return {"method": self.name, "preset": self.preset, "prune": {int(k): float(v) for k, v in self.prune},
                "cache_scale": self.cache_scale, "layers": None if self.layers is None else list(self.layers)}

    @staticmethod
    def not_reproducible(described: dict) -> Optional[str]:
        """Why a recorded FastVAR (a manifest's `describe()`) is one this version cannot run, if it is: ratio-0
        entries, which radar_train kept before 2026-12-03 (counted as pruned: the cache scale moved before them)."""
        prune = described.get("prune")  # (a hand-edited manifest's other values: the field comparison names them)
        prune = prune if isinstance(prune, dict) else {}
        zero = [str(k) for k, v in prune.items() if type(v) in (int, float) and v == 0]
        if not zero:
            return None
        return (f"its FastVAR prune has ratio 0 at scale(s) {', '.join(zero)}: a radar_train before 2026-12-03 made "
                "it, which counted such a scale as pruned; this version drops ratio-0 scales, so no configuration "
                "reproduces its LQ latents and it cannot be resumed or extended (it still reads: status, verify, "
                "export-wds, training). Write new pairs into another --output")


def ideal_speedup(method: FastVAR, cfg) -> dict:
    """FLOP model of a sampling run per CFG row (cfg: the VARConfig; base.flop_constants, as sca.ideal_speedup):
    linear layers per token and block, attention per query·key pair and block, and the head per token of every
    scale computed (restored tokens included: the head sees the whole grid). At a pruned scale the pruning blocks
    (`layers`) run M − ⌊Mρ⌋ query tokens and only their K/V join the cache; a skipped scale (ρ = 1) and the later
    ones cost nothing. Returns the vanilla attention share and the ideal speed-up vanilla / FastVAR (kernels at
    equal efficiency, per-scale overheads free)."""
    per_token, head, per_pair = flop_constants(cfg)
    depth = cfg.depth
    pruning = depth if method.layers is None else len(set(method.layers))

    def cost(ratios: dict[int, float]) -> tuple[float, float]:
        linear = attention = 0.0
        kv_pruned = kv_full = 0
        for pn in cfg.patch_nums:
            r = ratios.get(pn, 0.0)
            if r >= 1.0:
                break
            m = pn * pn
            kept = m - math.floor(m * r)
            kv_pruned, kv_full = kv_pruned + kept, kv_full + m
            linear += (pruning * kept + (depth - pruning) * m) * per_token + m * head
            attention += per_pair * (pruning * kept * kv_pruned + (depth - pruning) * m * kv_full)
        return linear, attention

    van, fast = cost({}), cost(method.ratios)
    return {"attention_share": van[1] / sum(van), "ideal_speedup": sum(van) / sum(fast)}


class _FastVARRun(AccelRun):
    def __init__(self, method: FastVAR, ctx: RunContext):
        super().__init__(ctx)
        self.ratios = method.ratios
        self.cache_side = method._cache_side(ctx.patch_nums)
        self.layers = None if method.layers is None else frozenset(method.layers)
        self.cache: dict[tuple[int, str], torch.Tensor] = {}
        self.mode: Optional[str] = None
        self.pn = 0
        self.matmul_dtypes = matmul_resize_dtypes(ctx.device)

    def plan(self, si: int) -> ScalePlan:
        return ScalePlan(skip=self.ratios.get(self.ctx.patch_nums[si], 0.0) >= 1.0)

    def begin_scale(self, si: int, rows: Branch) -> Optional[StepHooks]:
        super().begin_scale(si, rows)
        self.pn = self.ctx.patch_nums[si]
        if self.pn == self.cache_side:
            self.mode = "cache"
        elif self.pn in self.ratios:
            self.mode = "prune"
        else:
            self.mode = None
        return self if self.mode else None

    def select_rows(self, index: slice) -> None:
        self.cache = {k: v[index] for k, v in self.cache.items()}

    def sublayer(self, block_idx: int, kind: SubLayer, x: torch.Tensor,
                 branch: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.layers is not None and block_idx not in self.layers:
            return branch(x)
        if self.mode == "cache":
            y = branch(x)
            self.cache[(block_idx, kind)] = y
            return y
        M = x.shape[1]
        keep = max(1, M - math.floor(M * self.ratios[self.pn]))
        idx = pivotal_tokens(x, keep)
        x_kept = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return restore_tokens(self.cache[(block_idx, kind)], self.pn, idx, branch(x_kept), self.matmul_dtypes)
