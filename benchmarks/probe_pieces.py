"""The pieces of FastVAR's pruned sub-layer and of StageVAR's block at a refinement scale, one callable each, for
`python benchmarks/gpu_probes.py fused` to time as kernels alone: which of them make the methods' own scales cost
more than their share of the tokens (at VAR-d16, the 2026-12-04 profile: FastVAR's 16×16 scale 22.8 ms against
35.3 for vanilla while keeping a quarter of the tokens; StageVAR's 12.4 ms for 46 of 256).

Shapes as the sampler has them at batch 32: FastVAR's 64 rows (both CFG halves), the float32 residual stream
x (rows, pn², C), the bf16 cached branch output at the 10×10 cache scale; StageVAR's 32 rows (one CFG half), the
rank ceil(0.176 · pn²) of its fallback ratio, its float32 cache of the previous scale's block output. Kept apart
from gpu_probes.py, which needs a GPU to import, so that a CPU test runs every piece once."""
from __future__ import annotations

import math
from typing import Callable

import torch

from radar_train import noise
from radar_train.accel.fastvar import pivotal_tokens, resize_tokens, restore_tokens

PREVIOUS = {13: 10, 16: 13}  # the scale before, which StageVAR restores from (FastVAR: its cache scale, 10)
FALLBACK_RATIO = 0.176  # StageVAR's rank ratio without a calibration (methods.md §3.2)


def fastvar_pieces(C: int, pn: int, ratio: float, dev: torch.device, rows: int = 64,
                   cache_side: int = 10) -> dict[str, Callable[[], object]]:
    """One pruned sub-layer's work besides the sub-layer itself, at scale side pn with pruning ratio `ratio`."""
    M = pn * pn
    keep = max(1, M - math.floor(M * ratio))
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(rows, M, C, device=dev, generator=g)
    score = torch.rand(rows, M, device=dev, generator=g)
    idx = pivotal_tokens(x, keep)
    cached = torch.randn(rows, cache_side ** 2, C, device=dev, generator=g).to(torch.bfloat16)
    computed = torch.randn(rows, keep, C, device=dev, generator=g).to(torch.bfloat16)
    full = resize_tokens(cached, pn)
    by_matmul = frozenset({torch.bfloat16})
    expand = idx.unsqueeze(-1).expand(-1, -1, C)
    return {
        f"score: mean, x - mean, norm (x {rows}x{M}x{C} float32)": lambda: torch.linalg.vector_norm(
            x - x.mean(dim=1, keepdim=True), dim=-1, dtype=torch.float32),
        f"select: top-{keep} of {M} and sort": lambda: score.topk(keep, dim=1, sorted=False).indices.sort(dim=1),
        "select by a full sort (alternative; the same set for distinct scores)": lambda: score.sort(
            dim=1, descending=True).indices[:, :keep].sort(dim=1),
        "gather the kept tokens": lambda: x.gather(1, expand),
        f"restore {cache_side}->{pn}, area kernel": lambda: resize_tokens(cached, pn),
        f"restore {cache_side}->{pn}, matrix product": lambda: resize_tokens(cached, pn, by_matmul),
        "scatter the computed tokens": lambda: full.clone().scatter_(1, expand, computed),
        "(a clone of the restored grid, the scatter's own copy above)": lambda: full.clone(),
    }


def stagevar_pieces(C: int, pn: int, depth: int, dev: torch.device, rows: int = 32) -> dict[str, Callable[[], object]]:
    """A refinement scale's draws (all blocks at once, as `_StageVARRun._draw`) and one block's work besides the
    block itself: the projection of its input, the RTR draw's keys and top-k, and the restore."""
    M, prev = pn * pn, PREVIOUS[pn]
    r = math.ceil(FALLBACK_RATIO * M)
    g = torch.Generator(device=dev).manual_seed(0)
    keys = noise.key_tensor([[7 * i + j for i in range(rows)] for j in range(2)], dev)
    x = torch.randn(rows, M, C, device=dev, generator=g)
    q = torch.randn(rows, M, r, device=dev, generator=g)
    gumbel = torch.rand(rows, M, device=dev, generator=g)
    cached = torch.randn(rows, prev * prev, C, device=dev, generator=g)
    y_r = torch.randn(rows, r, C, device=dev, generator=g)
    rtr = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32) + gumbel
    idx = rtr.topk(r, dim=1).indices
    by_matmul = frozenset({torch.float32})
    return {
        f"draws: Q ({rows}x{M * r * depth} normals) and Gumbel keys, all {depth} blocks": lambda: (
            noise.normal(keys[0], M * r * depth), noise.gumbel(keys[1], depth * M)),
        f"projection: Q^T x ({rows}x{r}x{M} by {rows}x{M}x{C})": lambda: torch.einsum("bmr,bmc->brc", q.to(x.dtype), x),
        "RTR keys: log of squared norms plus Gumbel": lambda: torch.linalg.vector_norm(
            x, dim=-1, dtype=torch.float32).square_().clamp_min_(1e-30).log_() + gumbel,
        f"RTR top-{r} of {M}": lambda: rtr.topk(r, dim=1),
        f"restore {prev}->{pn} float32, area kernel, and scatter": lambda: restore_tokens(cached, pn, idx, y_r),
        f"restore {prev}->{pn} float32, matrix product, and scatter": lambda: restore_tokens(
            cached, pn, idx, y_r, by_matmul),
    }
