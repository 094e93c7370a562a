"""SCA-Mask on class-conditional VAR (RADAR's own acceleration, methods.md §8): block-sparse attention
and KV eviction on the last scales, selected from attention-tile scores calibrated on the model.

Tiles (§8.2a). At scale s (tokens [b_s, e_s) of the flattened sequence) a block's attention is
l_s = e_s − b_s queries × e_s keys. Query tiles are `tile` consecutive tokens of the scale; key tiles are
`tile` consecutive tokens of the whole sequence (key tile j = tokens [j·tile, (j+1)·tile) at every
scale). A (query tile i, key tile j) pair is an attention *block*.

Scores (§8.2b–d), from `radar-accel calibrate --accel.method sca` on vanilla samples: for every active
scale, transformer block and attention block, with P the softmax probabilities (per head, and averaged
over heads) and τ = tau / e_s, Score_Q counts the query rows of the block whose mean over the block's
keys exceeds τ and Score_KV the key columns whose mean over the block's queries exceeds τ, summed over
the calibration samples and both CFG rows.

Selection (§8.2e–g), once per run and static:
- protected blocks: the key tiles overlapping the query tile's own tokens (its diagonal) and the key
  tiles of the first scale (the sink); they are always kept, so no query row is left without keys;
- memory budget m, per block: the share of vanilla's KV cache (the whole sequence, L tokens) the block may
  hold at once (methods.md §8.2g). Of the *evictable* key tiles (complete before the last active scale
  begins, not first-scale), the fewest with the lowest Score_KV (summed over the active scales at which
  the tile would be gone; ties: the older tile first) leave that block's KV cache, each before the first
  active scale that starts after it, so that the most it holds at once is at most floor(m·L) tokens; all of
  them when even that is more (the protected floor: the sink, and the tokens of the last scales);
- compute budget c, per active scale and block (and head with `per_head`): max(floor(c·N), protected)
  of the N blocks are kept: the protected ones, then the available (not evicted) blocks by Score_Q,
  ties by distance to the diagonal, then position. `window` ranks by the distance alone;
- a cached key tile no kept block of this or any later scale reads leaves the cache too (free).
Budgets 1 / 1 keep every block: no mask, no eviction, the vanilla computation bit for bit.

Inference: at an active scale each block first drops the evicted tokens from its KV cache
(`StepHooks.kv_keep`, a fixed index per (scale, block), before the scale's K/V join it), then attends
with the fixed mask (`StepHooks.attention`): FlexAttention with a `BlockMask` of block size `tile` (CUDA),
or SDPA with the equivalent boolean token mask (CPU; the same numbers up to rounding, no speed-up). Every
mask and index is built once per run and device; nothing in the sampling loop depends on the data. The KV
cache is allocated to what the run holds at most (`SCAMask.kv_capacity`, per block), not to the whole
sequence.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from radar_train.accel.base import AccelMethod, AccelRun, Branch, ConfigError, RunContext, flop_constants, other_weights
from radar_train.models.hooks import StepHooks

PRESETS: dict[str, tuple[float, float]] = {  # (compute budget, memory budget), methods.md §8.2f
    "default": (0.5, 0.6),
    "mild": (0.75, 0.8),
    "aggressive": (0.3, 0.5),
}
FORMAT = "radar-sca-mask"
FORMAT_VERSION = 1
MEMORY_BUDGET_OF = "kv_cache"  # describe()'s mark: the memory budget is a share of the whole KV cache
MIN_FLEX_TILE = 16  # the Triton flex kernel's smallest BLOCK_M / BLOCK_N; tiles must be multiples


# ---------------------------------------------------------------------------- geometry
def scale_bounds(patch_nums: Sequence[int]) -> list[tuple[int, int]]:
    """[begin, end) of every scale in the flattened token sequence."""
    out, cur = [], 0
    for pn in patch_nums:
        out.append((cur, cur + pn * pn))
        cur += pn * pn
    return out


def default_scales(patch_nums: Sequence[int]) -> tuple[int, ...]:
    """The last three scales (the last four on a 512px schedule, last side >= 32), methods.md §8.2f."""
    n = 4 if patch_nums[-1] >= 32 else 3
    return tuple(patch_nums[-n:])


def default_tile(patch_nums: Sequence[int], scales: Sequence[int]) -> int:
    """The largest power of two <= 64 that gives the last active scale at least 4 query tiles."""
    tokens = max(scales) ** 2 if scales else patch_nums[-1] ** 2
    t = 64
    while t > 1 and math.ceil(tokens / t) < 4:
        t //= 2
    return t


@dataclass(frozen=True)
class ScaleTiles:
    """Tile geometry of one scale: queries [begin, end), keys [0, end), sink keys [0, sink_end)."""

    begin: int
    end: int
    tile: int
    sink_end: int

    @property
    def l(self) -> int:
        return self.end - self.begin

    @property
    def nq(self) -> int:
        return -(-self.l // self.tile)

    @property
    def nk(self) -> int:
        return -(-self.end // self.tile)

    def q_tile_of(self) -> torch.Tensor:
        """(l,) query tile of every query token."""
        return torch.arange(self.l) // self.tile

    def k_tile_of(self) -> torch.Tensor:
        """(end,) key tile of every key token."""
        return torch.arange(self.end) // self.tile

    def q_sizes(self) -> torch.Tensor:
        return torch.bincount(self.q_tile_of(), minlength=self.nq)

    def k_sizes(self) -> torch.Tensor:
        return torch.bincount(self.k_tile_of(), minlength=self.nk)

    def diagonal(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(first, last) key tile overlapping each query tile's own tokens, (nq,) each."""
        i = torch.arange(self.nq)
        first = (self.begin + i * self.tile) // self.tile
        last = (self.begin + torch.clamp((i + 1) * self.tile, max=self.l) - 1) // self.tile
        return first, last

    def distance(self) -> torch.Tensor:
        """(nq, nk) distance in key tiles from the query tile's diagonal (0 on it)."""
        first, last = self.diagonal()
        j = torch.arange(self.nk).view(1, -1)
        return torch.clamp(first.view(-1, 1) - j, min=0) + torch.clamp(j - last.view(-1, 1), min=0)

    def protected(self) -> torch.Tensor:
        """(nq, nk) blocks never dropped: the query tile's diagonal and the first-scale (sink) keys."""
        sink = torch.arange(self.nk) * self.tile < self.sink_end
        return (self.distance() == 0) | sink.view(1, -1)


def scale_tiles(patch_nums: Sequence[int], si: int, tile: int) -> ScaleTiles:
    bounds = scale_bounds(patch_nums)
    return ScaleTiles(bounds[si][0], bounds[si][1], tile, bounds[0][1])


def tile_counts(p: torch.Tensor, geo: ScaleTiles, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """T^Q and T^KV (§8.2d) of attention probabilities p (rows, heads, l, end), summed over rows:
    (heads, nq, nk) float64 each. T^Q: query rows of the block whose mean over the block's keys
    exceeds tau; T^KV: key columns whose mean over the block's queries exceeds tau."""
    p = p.float()
    q_onehot = F.one_hot(geo.q_tile_of(), geo.nq).to(p)  # (l, nq)
    k_onehot = F.one_hot(geo.k_tile_of(), geo.nk).to(p)  # (end, nk)
    row_mean = (p @ k_onehot) / k_onehot.sum(0)  # (rows, H, l, nk)
    t_q = torch.einsum("li,rhlj->hij", q_onehot.double(), (row_mean > tau).double())
    col_mean = (q_onehot.t() @ p) / q_onehot.sum(0).view(-1, 1)  # (rows, H, nq, end)
    t_kv = ((col_mean > tau).double() @ k_onehot.double()).sum(0)
    return t_q, t_kv


# ---------------------------------------------------------------------------- selection
def _ranked(score: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """Flat indices of (nq, nk) blocks, best first: higher score, then nearer the diagonal, then lower
    (query tile, key tile) position."""
    order = torch.sort(distance.flatten(), stable=True).indices
    return order[torch.sort(-score.flatten()[order], stable=True).indices]


def select_blocks(score: torch.Tensor, geo: ScaleTiles, available: torch.Tensor, budget: float) -> torch.Tensor:
    """Kept blocks (heads, nq, nk) for scores (heads, nq, nk): the protected ones plus the best available
    ones, max(floor(budget·nq·nk), protected) in all per head (fewer if not enough are available)."""
    protected, dist = geo.protected(), geo.distance()
    target = max(math.floor(budget * geo.nq * geo.nk + 1e-9), int(protected.sum()))
    candidate = available.view(1, -1).expand(geo.nq, -1) & ~protected
    keep = protected.unsqueeze(0).repeat(score.shape[0], 1, 1)
    extra = target - int(protected.sum())
    for h in range(score.shape[0]):
        order = _ranked(score[h], dist)
        order = order[candidate.flatten()[order]][:extra]
        keep[h].view(-1)[order] = True
    return keep


@dataclass(frozen=True)
class TileMasks:
    """The selected masks of one configuration: static, CPU tensors, for `depth` blocks (1 = every
    block alike) and `heads` heads (1 = every head alike)."""

    patch_nums: tuple[int, ...]
    tile: int
    active: tuple[int, ...]  # scale indices
    keep: dict[int, torch.Tensor]  # si -> (depth, heads, nq, nk) bool: attention blocks computed
    present: dict[int, torch.Tensor]  # si -> (depth, nk) bool: key tiles in the KV cache at scale si
    evicted: torch.Tensor  # (depth, nk of the whole sequence) bool: dropped by the memory budget

    @property
    def depth(self) -> int:
        return self.evicted.shape[0]

    def geo(self, si: int) -> ScaleTiles:
        return scale_tiles(self.patch_nums, si, self.tile)

    def block(self, b: int) -> int:
        return 0 if self.depth == 1 else b

    def modified(self, si: int, b: int) -> bool:
        return not bool(self.keep[si][self.block(b)].all()) or not bool(self.present[si][self.block(b)].all())

    def token_mask(self, si: int, b: int) -> torch.Tensor:
        """(heads, l, end) bool over the scale's queries and all its key positions."""
        g, t = self.geo(si), self.keep[si][self.block(b)]
        return t[:, g.q_tile_of()][:, :, g.k_tile_of()]

    def kept_positions(self, si: int, b: int) -> torch.Tensor:
        """Key positions (ascending) in block b's KV cache during scale si."""
        g = self.geo(si)
        return torch.nonzero(self.present[si][self.block(b)][g.k_tile_of()]).flatten()

    def block_share(self, si: int) -> float:
        """Share of the scale's attention blocks computed (mean over blocks and heads)."""
        return float(self.keep[si].float().mean())

    def pair_share(self, si: int) -> float:
        """Share of the scale's query·key token pairs computed (the attention FLOP share)."""
        g = self.geo(si)
        w = g.q_sizes().view(-1, 1) * g.k_sizes().view(1, -1)
        return float((self.keep[si].double() * w).sum() / (w.sum() * self.keep[si].shape[0] * self.keep[si].shape[1]))

    def kv_share(self, si: int) -> float:
        """Cached key tokens during scale si (mean over blocks) / vanilla's (every token so far)."""
        g = self.geo(si)
        return float((self.present[si].double() * g.k_sizes()).sum(1).mean() / g.end)

    def summary(self) -> dict[int, dict[str, float]]:
        return {int(self.patch_nums[si]): {"blocks_kept": round(self.block_share(si), 4),
                                           "pairs_kept": round(self.pair_share(si), 4),
                                           "kv_kept": round(self.kv_share(si), 4)} for si in self.active}


def _peak_held(bounds: Sequence[tuple[int, int]], active: Sequence[int], tile: int, gone: Sequence[int]) -> int:
    """The most tokens a block's KV cache holds at once when whole key tiles of `tile` tokens leave it, each
    before the active scale gone[i] (the active scales are a suffix of the schedule): before the first active
    scale every token so far, at active scale si the sequence so far less the tiles gone by then."""
    held = [bounds[si][1] - tile * sum(1 for g in gone if g <= si) for si in active]
    return max(bounds[active[0]][0], *held)


def select_masks(patch_nums: Sequence[int], active: Sequence[int], tile: int, compute: float, memory: float,
                 score_q: Optional[dict[int, torch.Tensor]] = None,
                 score_kv: Optional[dict[int, torch.Tensor]] = None) -> TileMasks:
    """The masks for the budgets (compute: share of each active scale's attention blocks; memory: share of
    vanilla's KV tokens a block holds at once). score_q: si -> (depth, heads, nq, nk) Score_Q (None: window
    selection, one pattern for every block); score_kv: si -> (depth, nq, nk) head-averaged Score_KV (needed
    when the memory budget evicts anything)."""
    pns, active = tuple(patch_nums), tuple(active)
    bounds = scale_bounds(pns)
    L = bounds[-1][1]
    depth = 1 if score_q is None else next(iter(score_q.values())).shape[0]
    n_all = -(-L // tile)
    # memory: evictable tiles, the first active scale at which each one is gone, the evicted set
    last_begin = bounds[active[-1]][0]
    tile_end = torch.clamp((torch.arange(n_all) + 1) * tile, max=L)
    evictable = (tile_end <= last_begin) & (torch.arange(n_all) * tile >= bounds[0][1])
    gone_at = torch.full((n_all,), len(pns), dtype=torch.long)  # scale index from which it is gone
    for si in reversed(active):
        gone_at[tile_end <= bounds[si][0]] = si
    evicted = torch.zeros(depth, n_all, dtype=torch.bool)
    allowed = math.floor(memory * L + 1e-9)  # tokens a block's cache may hold at once
    if bool(evictable.any()) and _peak_held(bounds, active, tile, []) > allowed:
        if score_kv is None:
            raise ValueError("a memory budget below 1 needs Score_KV (selection scores)")
        for b in range(depth):
            kv = torch.zeros(n_all, dtype=torch.float64)
            for si in active:
                s = score_kv[si][b].sum(0)  # (nk,)
                later = gone_at[: s.shape[0]] <= si
                kv[: s.shape[0]] += torch.where(later, s, torch.zeros_like(s))
            cand = torch.nonzero(evictable).flatten()
            order = cand[torch.sort(kv[cand], stable=True).indices].tolist()  # lowest first; ties: older first
            n_drop = next((k for k in range(1, len(order) + 1)
                           if _peak_held(bounds, active, tile, [int(gone_at[j]) for j in order[:k]]) <= allowed),
                          len(order))
            evicted[b, order[:n_drop]] = True
    keep: dict[int, torch.Tensor] = {}
    for si in active:
        g = scale_tiles(pns, si, tile)
        per_block = []
        for b in range(depth):
            available = ~(evicted[b, : g.nk] & (gone_at[: g.nk] <= si))
            score = torch.zeros(1, g.nq, g.nk) if score_q is None else score_q[si][b]
            per_block.append(select_blocks(score, g, available, compute))
        keep[si] = torch.stack(per_block)
    present: dict[int, torch.Tensor] = {}
    needed = torch.zeros(depth, n_all, dtype=torch.bool)
    for si in reversed(active):
        g = scale_tiles(pns, si, tile)
        needed[:, : g.nk] |= keep[si].any(dim=(1, 2))
        present[si] = needed[:, : g.nk].clone()
    return TileMasks(pns, tile, active, keep, present, evicted)


# ---------------------------------------------------------------------------- the mask file
@dataclass(frozen=True)
class MaskFile:
    """A calibration: header (model identity, patch_nums, tile, τ, scales, budgets, calibration seeds and
    count) and the scores and selected masks, per active scale side."""

    path: str
    sha256: str
    header: dict
    tensors: dict[str, torch.Tensor]

    def scores(self, patch_nums: Sequence[int], per_head: bool) -> tuple[dict, dict]:
        """(Score_Q si -> (depth, heads|1, nq, nk), Score_KV si -> (depth, nq, nk)) for the file's scales."""
        pns = list(patch_nums)
        q, kv = {}, {}
        for pn in self.header["scales"]:
            si = pns.index(pn)
            q[si] = self.tensors[f"score_q_head.{pn}"] if per_head else self.tensors[f"score_q.{pn}"].unsqueeze(1)
            kv[si] = self.tensors[f"score_kv.{pn}"]
        return q, kv


def save_mask_file(path: str | Path, header: dict, scores: dict[str, torch.Tensor], masks: TileMasks) -> Path:
    """Write the scores ("score_q.<side>": (depth, nq, nk), "score_q_head.<side>": (depth, heads, nq, nk),
    same for score_kv; float64), the selected masks ("keep.<side>", "evicted") and the JSON header as
    one safetensors file (equal content gives equal bytes)."""
    from radar_train.models.checkpoint import save_weights

    t = {k: v.double() for k, v in scores.items()}
    for si, k in masks.keep.items():
        t[f"keep.{int(masks.patch_nums[si])}"] = k
    t["evicted"] = masks.evicted
    meta = {"format": FORMAT, "header": json.dumps(header, sort_keys=True)}
    return save_weights(t, path, metadata=meta)


def packaged_path(path: str | Path) -> Path:
    """`path`; a relative `radar_train/...` path that does not exist here is taken inside the installed package
    (the docs name the shipped toy masks as radar_train/toyworld/weights/toy_sca_mask.safetensors, a checkout's
    path: from a wheel install, run elsewhere, it named nothing)."""
    p = Path(path)
    if p.exists() or p.is_absolute() or not p.parts or p.parts[0] != "radar_train":
        return p
    inside = Path(__file__).resolve().parents[1].joinpath(*p.parts[1:])
    return inside if inside.exists() else p


def load_mask_file(path: str | Path) -> MaskFile:
    """Read a mask file; FileNotFoundError / ValueError (one line) if it is missing or not one. A relative
    `radar_train/...` path names the installed package's file where there is none here (`packaged_path`)."""
    from safetensors import safe_open
    from radar_train.models.checkpoint import file_sha256

    from radar_train.inputs import check_file

    p = packaged_path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: SCA mask file not found (write one with `radar-accel calibrate "
                                f"--accel.method sca`)")
    check_file(p, "SCA mask file")  # (a folder, an unreadable file: InputError, a ValueError)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        header = json.loads(meta["header"])
        if header.get("version") != FORMAT_VERSION:
            raise ValueError(f"version {header.get('version')!r}, expected {FORMAT_VERSION}")
        _check_contents(header, tensors)
    except Exception as e:  # safetensors, JSON, key, type and shape errors all mean "not a mask file"
        raise ValueError(f"{p}: not an SCA mask file ({type(e).__name__}: {e})") from None
    return MaskFile(str(p), file_sha256(p), header, tensors)


def _count(value, what: str, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{what} {value!r} is not an integer >= {least}")
    return value


def _check_contents(header: dict, tensors: dict[str, torch.Tensor]) -> None:
    """ValueError (one line) unless the header has the fields the masks are built from, with their types, and
    every active scale has its four score tensors: float64 counts (finite, >= 0) of the shapes that the header's
    depth, heads, patch_nums and tile give (a file edited by hand, or written for another tile, is not read as
    another mask)."""
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    for key in ("model", "patch_nums", "tile", "tau", "scales", "num_heads"):
        header[key]  # noqa: B018 — KeyError if missing
    model, pns, scales = header["model"], header["patch_nums"], header["scales"]
    if not isinstance(model, dict):
        raise ValueError(f"header model {model!r} is not an object")
    var = model.get("var")
    if not (isinstance(var, dict) and isinstance(var.get("value"), str)):  # (what model_problems compares)
        raise ValueError(f"header model.var {var!r} is not an object with the value (sha256 or preset seed) of the "
                         f"weights it was calibrated on")
    depth = _count(model.get("depth"), "header model.depth")
    heads = _count(header["num_heads"], "header num_heads")
    if model.get("num_heads", heads) != heads:
        raise ValueError(f"header num_heads {heads} is not its model.num_heads {model.get('num_heads')!r}")
    tile = _count(header["tile"], "header tile")
    if isinstance(header["tau"], bool) or not isinstance(header["tau"], (int, float)) \
            or not math.isfinite(header["tau"]):
        raise ValueError(f"header tau {header['tau']!r} is not a number")
    if not isinstance(pns, list) or not pns or [_count(n, "header patch_nums entry") for n in pns] != \
            sorted(set(pns)):
        raise ValueError(f"header patch_nums {pns!r} is not an increasing list of sides")
    if not isinstance(scales, list) or not scales or any(isinstance(s, bool) or s not in pns[1:] for s in scales) \
            or len(set(scales)) != len(scales):
        raise ValueError(f"header scales {scales!r} are not distinct sides of patch_nums {pns} after the first")
    for pn in scales:
        g = scale_tiles(pns, pns.index(pn), tile)
        for name, shape in (("score_q", (depth, g.nq, g.nk)), ("score_kv", (depth, g.nq, g.nk)),
                            ("score_q_head", (depth, heads, g.nq, g.nk)),
                            ("score_kv_head", (depth, heads, g.nq, g.nk))):
            t = tensors[f"{name}.{pn}"]
            if t.dtype != torch.float64 or tuple(t.shape) != shape:
                raise ValueError(f"{name}.{pn} is {t.dtype} {tuple(t.shape)}, expected torch.float64 {shape} "
                                 f"(depth {depth}, {heads} heads, tile {tile})")
            if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
                raise ValueError(f"{name}.{pn} holds NaN, inf or negative counts")


_BOOLS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _bare_key(word: str) -> Optional[str]:
    """The SCAArgs field a bare word of an sca spec sets (None: not a bare word)."""
    return "preset" if word in PRESETS else "selection" if word in ("window", "scores") else \
        "per_head" if word == "per_head" else None


def args_from_spec(spec: str):
    """An `SCAArgs` from a method spec's options (after 'sca:'), '+'-separated: a preset name, 'window' or
    'scores' (the selection), 'per_head', or key=value for any SCAArgs field (scales as 10/13/16, per_head as
    true/false/1/0/yes/no), e.g. 'aggressive+mask_file=m.safetensors' or 'window+compute_budget=0.4'. One-line
    ValueError naming the spec on anything else (an empty option, a bare 'key=', an unknown key, an unreadable
    number or boolean, a field given twice: a bare word counts as its field, e.g. 'mild' as preset)."""
    from radar_train.config import SCAArgs

    a = SCAArgs()
    kinds = {"compute_budget": float, "memory_budget": float, "tau": float, "tile": int}
    fields = {f.name for f in dataclasses.fields(SCAArgs)}
    seen: dict[str, str] = {}  # field -> the option that set it (the last would win, silently)
    for part in (x.strip() for x in spec.split("+")):
        if not part:
            raise ValueError(f"sca spec {spec!r}: empty option (two '+' in a row, a leading or trailing '+', "
                             f"or nothing at all)")
        key, eq, value = part.partition("=")
        if eq and not (key and value):
            raise ValueError(f"sca spec {spec!r}: option {part!r} is not key=value")
        field_name = (key if key in fields else None) if eq else _bare_key(key)  # None: refused below
        if field_name in seen:
            raise ValueError(f"sca spec {spec!r}: {field_name} is given twice ({seen[field_name]!r} and {part!r})")
        if field_name is not None:
            seen[field_name] = part
        if not eq:
            if key in PRESETS:
                a.preset = key
            elif key in ("window", "scores"):
                a.selection = key
            elif key == "per_head":
                a.per_head = True
            else:
                raise ValueError(f"sca spec {spec!r}: {key!r} is neither a preset ({', '.join(PRESETS)}), a "
                                 f"selection (scores, window), per_head nor key=value")
            continue
        if key not in fields:
            raise ValueError(f"sca spec {spec!r}: unknown option {key!r}")
        if key == "per_head":
            if value.lower() not in _BOOLS:
                raise ValueError(f"sca spec {spec!r}: per_head={value!r}: one of true, false (or 1, 0, yes, no)")
            a.per_head = _BOOLS[value.lower()]
            continue
        try:
            if key in kinds:
                setattr(a, key, kinds[key](value))
            elif key == "scales":
                a.scales = [int(x) for x in value.split("/")]
            else:
                setattr(a, key, None if value.lower() in ("null", "none") else value)
        except ValueError:
            raise ValueError(f"sca spec {spec!r}: cannot read {key}={value!r}") from None
    return a


def calibration_settings(args, patch_nums: Sequence[int], depth: int, scales: Optional[Sequence[int]],
                         num_samples: int, batch_size: int) -> tuple[tuple[int, ...], int, float]:
    """(scale sides, tile, τ) a calibration with these `SCAArgs` measures; ConfigError lists every bad
    value (checked before any model is loaded)."""
    pns = tuple(int(p) for p in patch_nums)
    sides = tuple(int(s) for s in (scales or args.scales or default_scales(pns)))
    _, _, p = resolve_budgets(dataclasses.replace(args, selection="scores"))
    if args.selection != "scores":
        p.append(f"sca.selection {args.selection}: the window mask is handcrafted and needs no calibration; "
                 f"calibrate with selection scores (the default)")
    tile = args.tile if args.tile is not None else default_tile(pns, [s for s in sides if s in pns])
    tau = 1.0 if args.tau is None else float(args.tau)
    if not tau > 0:
        p.append(f"sca.tau must be > 0, got {tau}")
    if tile < 1:
        p.append(f"sca.tile must be a positive number of tokens, got {tile}")
    else:
        p += SCAMask(pns, sides, tile, 1.0, 1.0, selection="window").problems(pns, depth)
        if not p and tile >= max(sides) ** 2:
            p.append(f"sca.tile {tile} is not below the largest active scale's {max(sides) ** 2} tokens")
    if num_samples < 1:
        p.append(f"num_samples must be >= 1, got {num_samples}")
    if batch_size < 1:
        p.append(f"batch_size must be >= 1, got {batch_size}")
    if p:
        raise ConfigError("sca", p)
    return sides, int(tile), tau


# ---------------------------------------------------------------------------- the method
def resolve_budgets(args) -> tuple[Optional[float], Optional[float], list[str]]:
    """(compute, memory, problems) of an `SCAArgs`: the preset's budgets, each overridden when given;
    window selection has no memory budget unless one is given (which is then a problem)."""
    p: list[str] = []
    if args.preset is not None and args.preset not in PRESETS:
        p.append(f"sca.preset {args.preset!r} is unknown; available: {', '.join(PRESETS)}")
    base = PRESETS.get(args.preset or "", (None, None))
    compute = args.compute_budget if args.compute_budget is not None else base[0]
    memory = args.memory_budget if args.memory_budget is not None else base[1]
    if args.selection == "window" and args.memory_budget is None:
        memory = 1.0  # the handcrafted mask has no KV scores; only the compute budget applies
    for what, v in (("compute_budget", compute), ("memory_budget", memory)):
        if v is None:
            p.append(f"sca.{what}: give it or a preset")
        elif not 0.0 < v <= 1.0:
            p.append(f"sca.{what} must be in (0, 1], got {v}")
    return compute, memory, p


@dataclass(frozen=True)
class SCAMask(AccelMethod):
    name = "sca"
    capturable = True
    patch_nums: tuple[int, ...]  # the schedule the configuration was resolved for
    scales: tuple[int, ...]  # active scale sides
    tile: int
    compute_budget: float
    memory_budget: float
    selection: str = "scores"  # scores | window
    per_head: bool = False
    kernel: str = "auto"  # auto | flex | sdpa
    preset: Optional[str] = None
    mask_sha256: Optional[str] = None  # identity of the mask file (selection scores)
    mask: Optional[MaskFile] = field(default=None, compare=False, repr=False)
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    # -------------------------------------------------------------- construction
    @staticmethod
    def from_args(args, patch_nums: Sequence[int]) -> "SCAMask":
        """From an `SCAArgs`, resolved against the model's scales; ConfigError lists every bad value."""
        pns = tuple(int(p) for p in patch_nums)
        compute, memory, p = resolve_budgets(args)
        if args.selection not in ("scores", "window"):
            p.append(f"sca.selection must be scores or window, got {args.selection!r}")
        if args.kernel not in ("auto", "flex", "sdpa"):
            p.append(f"sca.kernel must be auto, flex or sdpa, got {args.kernel!r}")
        if args.tau is not None and not args.tau > 0:
            p.append(f"sca.tau must be > 0, got {args.tau}")
        mask = None
        if args.selection == "scores":
            if args.mask_file is None:
                p.append("sca.mask_file is needed by selection scores (write one with `radar-accel calibrate "
                         "--accel.method sca`, or use selection window)")
            else:
                mask = load_mask_file(args.mask_file)
        elif args.mask_file is not None:
            p.append("sca.mask_file is not used by selection window (drop it)")
        if args.selection == "window" and memory is not None and memory < 1.0:
            p.append(f"sca.memory_budget {memory} needs selection scores (the window mask has no KV scores)")
        if args.selection == "window" and args.per_head:
            p.append("sca.per_head needs selection scores (the window mask is the same for every head)")
        scales = tuple(int(s) for s in args.scales) if args.scales is not None else (
            tuple(mask.header["scales"]) if mask is not None else default_scales(pns))
        tile = args.tile
        if mask is not None:
            h = mask.header
            if tile is not None and tile != h["tile"]:
                p.append(f"sca.tile {tile} differs from the mask file's tile {h['tile']} ({mask.path}; calibrate "
                         f"again with --accel.sca.tile {tile} or drop the option)")
            if args.tau is not None and args.tau != h["tau"]:
                p.append(f"sca.tau {args.tau} differs from the mask file's {h['tau']} (τ is fixed at calibration)")
            missing = [s for s in scales if s not in h["scales"]]
            if missing:
                p.append(f"sca.scales {missing} were not calibrated in {mask.path} (it has {h['scales']})")
            tile = h["tile"]
        elif tile is None:
            tile = default_tile(pns, [s for s in scales if s in pns])
        if tile < 1:
            p.append(f"sca.tile must be a positive number of tokens, got {tile}")
        elif args.kernel == "flex" and (tile < MIN_FLEX_TILE or tile & (tile - 1)):
            p.append(f"sca.tile {tile}: kernel flex needs a power of two >= {MIN_FLEX_TILE}")
        elif scales and all(s in pns for s in scales) and tile >= max(scales) ** 2:
            p.append(f"sca.tile {tile} is not below the largest active scale's {max(scales) ** 2} tokens "
                     f"(nothing could be dropped)")
        if p:
            raise ConfigError("sca", p)
        return SCAMask(patch_nums=pns, scales=scales, tile=int(tile), compute_budget=float(compute),
                       memory_budget=float(memory), selection=args.selection, per_head=bool(args.per_head),
                       kernel=args.kernel, preset=args.preset if args.compute_budget is None and
                       args.memory_budget is None else None, mask_sha256=None if mask is None else mask.sha256,
                       mask=mask)

    # -------------------------------------------------------------- validation
    def problems(self, patch_nums: Sequence[int], depth: int) -> list[str]:
        p, pns = [], list(patch_nums)
        if self.mask is not None:
            h = self.mask.header
            if list(h["patch_nums"]) != pns or h["model"].get("depth") != depth:
                return [f"mask file {self.mask.path} was calibrated for another model ({h['model'].get('preset')}: "
                        f"patch_nums {tuple(h['patch_nums'])}, depth {h['model'].get('depth')}); this one has "
                        f"patch_nums {tuple(pns)}, depth {depth}"]
        missing = [s for s in self.scales if s not in pns]
        if missing:
            p.append(f"sca.scales {missing} are not in the model's patch_nums {tuple(pns)}")
        elif self.scales:
            idx = sorted(pns.index(s) for s in self.scales)
            if idx != list(range(idx[0], len(pns))):
                p.append(f"sca.scales {list(self.scales)} must be the last scales of the schedule {tuple(pns)}")
            elif idx[0] == 0:
                p.append("sca.scales cannot include the first scale")
        else:
            p.append("sca.scales is empty")
        if tuple(pns) != self.patch_nums:
            p.append(f"sca was configured for patch_nums {self.patch_nums}, the model has {tuple(pns)}")
        return p

    def model_problems(self, var_identity) -> list[str]:
        if self.mask is None:
            return []
        h = self.mask.header
        config = (var_identity.to_dict() if hasattr(var_identity, "to_dict") else dict(var_identity)).get("config")
        if isinstance(config, dict) and config.get("num_heads") is not None and (
                h["num_heads"] != config["num_heads"]
                or h["model"].get("embed_dim", config.get("embed_dim")) != config.get("embed_dim")):
            return [f"mask file {self.mask.path} was calibrated for another model ({h['num_heads']} heads, width "
                    f"{h['model'].get('embed_dim')}); this VAR has {config['num_heads']} heads, width "
                    f"{config.get('embed_dim')}: calibrate one for it"]
        mine = h["model"]["var"]
        this = other_weights(mine, var_identity)
        if this is None:
            return []
        return [f"mask file {self.mask.path} was calibrated on other weights ({mine.get('kind')} "
                f"{str(mine.get('value'))[:20]}, preset {self.mask.header['model'].get('preset')}) than this "
                f"VAR ({this}); calibrate one for it"]

    # -------------------------------------------------------------- the masks
    @property
    def active(self) -> tuple[int, ...]:
        return tuple(sorted(self.patch_nums.index(s) for s in self.scales))

    def masks(self) -> TileMasks:
        """The selected masks (computed once per method; selection from the stored scores is
        deterministic, so the file's own budgets give back its stored masks)."""
        if "masks" not in self._cache:
            if self.selection == "window":
                m = select_masks(self.patch_nums, self.active, self.tile, self.compute_budget, 1.0)
            else:
                q, kv = self.mask.scores(self.patch_nums, self.per_head)
                q = {si: q[si] for si in self.active}
                m = select_masks(self.patch_nums, self.active, self.tile, self.compute_budget,
                                 self.memory_budget, q, kv)
            self._cache["masks"] = m
        return self._cache["masks"]

    def first_modified_scale(self, patch_nums: Sequence[int]) -> Optional[int]:
        m = self.masks()
        depth = max(m.depth, 1)
        return next((si for si in m.active if any(m.modified(si, b) for b in range(depth))), None)

    def start(self, ctx: RunContext) -> AccelRun:
        return _SCARun(self, ctx)

    def describe(self) -> dict:
        m = self.masks()
        d = {"method": self.name, "preset": self.preset, "selection": self.selection,
             "compute_budget": self.compute_budget, "memory_budget": self.memory_budget, "tile": self.tile,
             "per_head": self.per_head, "kernel": self.kernel,
             "mask_file": None if self.mask is None else self.mask.path,
             "mask_sha256": self.mask_sha256,
             "tau": None if self.mask is None else self.mask.header["tau"],
             "scales": {int(self.patch_nums[si]): round(m.block_share(si), 4) for si in m.active},
             "per_scale": m.summary()}
        if self.memory_budget < 1.0:  # marks what the budget meant (a radar_train before 2026-12-04: see below)
            d["memory_budget_of"] = MEMORY_BUDGET_OF
        return d

    @staticmethod
    def not_reproducible(described: dict) -> Optional[str]:
        """Why a recorded SCA-Mask (a manifest's `describe()`) is one this version cannot run, if it is: a memory
        budget below 1 recorded without `memory_budget_of`, which radar_train before 2026-12-04 took as the share
        of the *evictable* key tiles kept (fewer tiles evicted than the share of the whole KV cache it is now)."""
        m = described.get("memory_budget")
        if not (type(m) in (int, float) and m < 1) or described.get("memory_budget_of") == MEMORY_BUDGET_OF:
            return None
        return (f"its SCA-Mask memory_budget {m} was made by a radar_train before 2026-12-04, which read it as the "
                "share of the evictable key tiles kept; this version reads it as the share of the whole KV cache "
                "(docs/acceleration.md, Selection), which evicts other tiles, so no configuration reproduces its LQ "
                "latents and it cannot be resumed or extended (it still reads: status, verify, export-wds, "
                "training). Write new pairs into another --output")

    def derived(self, patch_nums: Sequence[int]) -> dict:
        """`kv_allocated`: the KV cache a run allocates (`kv_capacity`, over the blocks) over vanilla's (every block
        the whole sequence): at most the memory budget, or the protected floor where that is more."""
        held = self.kv_capacity(patch_nums, self.masks().depth)
        return {"kv_allocated": round(sum(held) / (scale_bounds(patch_nums)[-1][1] * len(held)), 4)}

    # -------------------------------------------------------------- device tables
    def use_flex(self, device: torch.device) -> bool:
        if self.kernel == "flex":
            return True
        pow2 = self.tile >= MIN_FLEX_TILE and not self.tile & (self.tile - 1)
        return self.kernel == "auto" and device.type == "cuda" and pow2

    def kv_capacity(self, patch_nums: Sequence[int], depth: int) -> tuple[int, ...]:
        """Per block, the most tokens its KV cache holds at once (`held_kv_tokens`): below the whole
        sequence where tiles are evicted before the last scale's K/V join."""
        key = ("kv_capacity", depth)
        if key not in self._cache:
            self._cache[key] = held_kv_tokens(self.masks(), depth)
        return self._cache[key]

    def tables(self, depth: int, device: torch.device) -> dict[int, list["_BlockTable"]]:
        """si -> per block: the KV keep index, the boolean SDPA mask and the flex BlockMask (None where
        nothing changes). Built once per (depth, device)."""
        key = ("tables", depth, str(device))
        if key not in self._cache:
            self._cache[key] = _build_tables(self.masks(), depth, device, self.use_flex(device))
        return self._cache[key]


@dataclass
class _BlockTable:
    keep_idx: Optional[torch.Tensor]  # (n,) int64 into the cache before this scale's K/V join it
    mask: Optional[torch.Tensor]  # (1, heads, l, n) bool for SDPA
    block_mask: object = None  # flex BlockMask over the same (l, n)


def held_kv_tokens(m: TileMasks, depth: int) -> tuple[int, ...]:
    """Per block, the most tokens its KV cache holds at once in a run with these masks (the capacity the
    run needs; static): every token so far before the first active scale; at an active scale the tokens
    present (`kept_positions`: the evicted ones leave before the scale's K/V join); after the last active
    scale every later scale's tokens on top."""
    bounds = scale_bounds(m.patch_nums)
    out = []
    for b in range(depth):
        held = peak = bounds[m.active[0]][0]
        for si in range(m.active[0], len(bounds)):
            if si in m.active:
                held = int((m.present[si][m.block(b)].long() * m.geo(si).k_sizes()).sum())
            else:
                held += bounds[si][1] - bounds[si][0]
            peak = max(peak, held)
        out.append(peak)
    return tuple(out)


def _build_tables(m: TileMasks, depth: int, device: torch.device, flex: bool) -> dict[int, list[_BlockTable]]:
    bounds = scale_bounds(m.patch_nums)
    out: dict[int, list[_BlockTable]] = {}
    cached = [torch.arange(bounds[m.active[0]][0]) for _ in range(depth)]  # positions in each block's cache
    for si in m.active:
        g = m.geo(si)
        rows = []
        for b in range(depth):
            kept = m.kept_positions(si, b)
            old = kept[kept < g.begin]  # the evicted tokens leave before the scale's K/V join the cache
            if kept.shape[0] - old.shape[0] != g.l:  # the scale's own key tiles are protected (its diagonal)
                raise RuntimeError(f"sca: scale {si}, block {b} would evict the scale's own tokens")
            keep_idx = None if old.shape[0] == cached[b].shape[0] else torch.searchsorted(cached[b], old)
            cached[b] = kept
            tok = m.token_mask(si, b)[:, :, kept]  # (heads, l, n)
            mask = block_mask = None
            if not bool(tok.all()):
                mask = tok.unsqueeze(0).to(device)
                if flex:
                    block_mask = _flex_block_mask(m.keep[si][m.block(b)][:, :, m.present[si][m.block(b)]],
                                                  g.l, kept.shape[0], m.tile, device)
            rows.append(_BlockTable(None if keep_idx is None else keep_idx.to(device), mask, block_mask))
        out[si] = rows
    return out


def _flex_block_mask(tiles: torch.Tensor, q_len: int, kv_len: int, tile: int, device: torch.device):
    """BlockMask of block size `tile` from the kept tiles (heads, nq, n cached key tiles). The cached key
    tiles stay tile-aligned after eviction (whole tiles leave), so every kept tile is a *full* block: the
    compiled kernels never evaluate the mask_mod and mask the positions past q_len / kv_len of the last
    tiles themselves; the mask_mod (the same table) serves the eager path. Closures over different tables
    do not make compiled FlexAttention recompile (checked with torch 2.13 on the CPU)."""
    from torch.nn.attention.flex_attention import BlockMask

    tbl = tiles.to(device)
    per_head, nq, nk = tbl.shape[0] > 1, tbl.shape[1], tbl.shape[2]

    def mask_mod(b, h, q_idx, kv_idx):
        return tbl[h if per_head else 0, (q_idx // tile).clamp(max=nq - 1), (kv_idx // tile).clamp(max=nk - 1)]

    t = tiles.to(torch.int32)
    num = t.sum(-1, dtype=torch.int32)[None]  # (1, heads, nq) kept tiles per query tile
    idx = torch.sort(t, dim=-1, descending=True, stable=True).indices.to(torch.int32)[None]  # kept first, ascending
    args = [x.to(device) for x in (torch.zeros_like(num), torch.zeros_like(idx), num, idx)]
    return BlockMask.from_kv_blocks(*args, BLOCK_SIZE=tile, mask_mod=mask_mod, seq_lengths=(q_len, kv_len))


_COMPILED_FLEX = None


def flex_attention_call(q, k, v, block_mask, scale: float, tile: int):
    """FlexAttention: compiled on CUDA, eager elsewhere (compiling on the CPU takes a minute per shape).
    On CUDA the main Triton kernel (not the short-query decoding kernel, which assumes one query block)
    with Triton blocks that divide the tile (the default 128 would not divide a tile of 64)."""
    global _COMPILED_FLEX
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type != "cuda":
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale)
    opts = {"BACKEND": "TRITON", "BLOCK_M": min(tile, 64), "BLOCK_N": min(tile, 64)}
    if torch.compiler.is_compiling():  # inside a compiled sampling step, which compiles it with the rest
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale, kernel_options=opts)
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    # one static graph per (rows, scale) shape: more than dynamo's default 8 would fall back to eager
    with torch._dynamo.config.patch(recompile_limit=64):
        return _COMPILED_FLEX(q, k, v, block_mask=block_mask, scale=scale, kernel_options=opts)


class _SCARun(AccelRun):
    def __init__(self, method: SCAMask, ctx: RunContext):
        super().__init__(ctx)
        self.tile = method.tile
        self.flex = method.use_flex(ctx.device)
        tables = method.tables(ctx.depth, ctx.device)
        self.tables = {si: t for si, t in tables.items()
                       if any(r.keep_idx is not None or r.mask is not None for r in t)}
        self.rows_now: list[_BlockTable] = []

    def begin_scale(self, si: int, rows: Branch) -> Optional[StepHooks]:
        super().begin_scale(si, rows)
        self.rows_now = self.tables.get(si, [])
        return self if si in self.tables else None

    def kv_keep(self, block_idx: int) -> Optional[torch.Tensor]:
        return self.rows_now[block_idx].keep_idx

    def attention(self, block_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        t = self.rows_now[block_idx]
        if t.mask is None:
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        if self.flex:
            return flex_attention_call(q, k, v, t.block_mask, scale, self.tile)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=t.mask, scale=scale)


# ---------------------------------------------------------------------------- accounting helpers
def ideal_speedup(method: SCAMask, cfg) -> dict:
    """FLOP model of a sampling run per CFG row (cfg: the VARConfig). Per token and block the linear
    layers cost (4 + 2·mlp_ratio)·C² multiply-adds (qkv, proj, FFN) and the head C·V; per block the
    attention costs 2·C per query·key pair (q·k and p·v). Returns the vanilla attention share, the
    kept share of attention pairs and the ideal speed-up vanilla/masked (kernels at equal efficiency)."""
    m = method.masks()
    bounds = scale_bounds(m.patch_nums)
    per_token, head, per_pair = flop_constants(cfg)
    depth = cfg.depth
    linear = sum(e - b for b, e in bounds) * (depth * per_token + head)
    attn_van = attn_kept = 0.0
    for si, (b, e) in enumerate(bounds):
        pairs = (e - b) * e
        attn_van += depth * per_pair * pairs
        share = m.pair_share(si) if si in m.active else 1.0
        attn_kept += depth * per_pair * pairs * share
    return {"attention_share": attn_van / (linear + attn_van), "attention_pairs_kept": attn_kept / attn_van,
            "ideal_speedup": (linear + attn_van) / (linear + attn_kept)}


@torch.no_grad()
def measure_kv_bytes(sampler, method: AccelMethod, labels, seeds) -> dict:
    """KV-cache bytes of a vanilla run and of a run with `method`, read from the sampler's cache: held
    after every scale ("vanilla" / "accelerated": lists; all blocks and rows; a block holds the most right
    after a scale's K/V joined, which is also after the scale) and allocated ("allocated": {"vanilla",
    "accelerated"}: the buffers, sized to the run's KV capacity). Ratios accelerated / vanilla of the held
    peaks ("peak_ratio") and of the allocations ("allocated_ratio")."""
    out, allocated = {}, {}
    for name, accel in (("vanilla", None), ("accelerated", method)):
        state = sampler.start(labels, seeds=seeds, accel=accel)
        per_scale, alloc = [], 0
        for si in range(len(sampler.patch_nums)):
            sampler.advance(state, until=si + 1)
            per_scale.append(state.kv.nbytes())
            alloc = max(alloc, state.kv.allocated_bytes())  # (a CFG-half switch leaves views of half the rows)
        out[name] = per_scale
        allocated[name] = alloc
    out["peak_ratio"] = max(out["accelerated"]) / max(out["vanilla"])
    out["allocated"] = allocated
    out["allocated_ratio"] = allocated["accelerated"] / allocated["vanilla"]
    return out


def fastvar_for_attention_budget(budget: float, patch_nums: Sequence[int], scales: Sequence[int]):
    """FastVAR (pivotal token selection + cached restoration) pruning the given scales so that each one's
    attention — kept queries × (cached keys + kept queries' keys), earlier pruned scales having left
    fewer keys — is about `budget` of vanilla's query·key pairs (l·e). Kept queries per scale:
    k = round((−n + √(n² + 4·budget·l·e)) / 2) with n the keys cached before the scale, clamped to
    [1, l]; ratio ρ = (l − k + ½)/l (FastVAR keeps l − ⌊l·ρ⌋ = k); a scale with k = l is left out of the
    FastVAR's ratios (untouched, as the spec's budget= has it). Returns (FastVAR, {side: achieved pair share},
    every given scale). FastVAR also skips the FFN and projections of the pruned
    tokens, so at equal attention share it computes far less than SCA-Mask."""
    from radar_train.accel.fastvar import FastVAR

    if not 0.0 < budget <= 1.0:
        raise ValueError(f"attention budget must be in (0, 1], got {budget}")
    pns = list(patch_nums)
    bounds = scale_bounds(pns)
    idx = sorted({pns.index(s) for s in scales})
    n = bounds[idx[0]][0]  # keys cached before the first pruned scale (all of them)
    prune, share = [], {}
    for si in range(idx[0], idx[-1] + 1):
        b, e = bounds[si]
        l = e - b
        if si not in idx:  # a scale left whole between pruned ones: all its keys are cached
            n += l
            continue
        k = min(l, max(1, round((-n + math.sqrt(n * n + 4 * budget * l * e)) / 2)))
        if k < l:  # k = l: the scale stays whole (vanilla)
            prune.append((pns[si], (l - k + 0.5) / l))
        share[pns[si]] = k * (n + k) / (l * e)
        n += k
    return FastVAR(prune=tuple(prune)), share
