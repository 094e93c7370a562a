"""StageVAR on class-conditional VAR (methods.md §3): the fidelity-refinement scales run one CFG branch
(the class branch by default), and each block there sees r ≪ M randomly projected tokens.

At a refinement scale with α > 0, block j gets F̂ = Qᵀ F̃ (Q: M × r, entries N(0, 1/r)) instead of the
M-token input F̃, runs it as an ordinary token map (the r mixed tokens' K/V enter the KV cache), and its
output is restored (RTR): the block's output at the previous scale, area-resized to the current grid,
with r positions — drawn without replacement with probability ∝ ‖F̃_i‖² — replaced by the r outputs.
α = 0 skips the scale and every later one. r = ceil(ratio·M) with the ratio calibrated per (scale,
block) (`radar-accel calibrate`), else `default_rank_ratio`; at least `min_rank`, at most M.

Randomness (Q and the RTR draws) comes from generators derived from (sample seed, scale, purpose,
branch), separate from the token-sampling stream.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, NamedTuple, Optional, Sequence

import torch
import yaml

from radar_train.accel.base import AccelMethod, AccelRun, Branch, RunContext, ScalePlan, flop_constants, other_weights
from radar_train.accel.fastvar import restore_tokens
from radar_train.interp import matmul_resize_dtypes
from radar_train.models.hooks import StepHooks
from radar_train import noise
from radar_train.seeding import derive_seed

PRESETS: dict[str, tuple[float, ...]] = {
    "default": (0.96, 0.96),  # last two scales, RP + RTR
    "paper": (0.96, 0.0, 0.0),  # last three: RP at the first, skip the other two (Infinity's layout)
}


PAPER_ALPHA = 0.96  # the energy threshold of the paper's rank ratios (and of the 0.176 fallback, methods §3.2c)
SINGLE_BRANCHES = ("cond", "uncond", "off")  # the CFG rows a refinement scale runs: one half, or both (off)


class RankFile(NamedTuple):
    """A calibration YAML's rank table, the α it was measured at and the weights it was measured on (each None
    where the file does not say: a hand-written table)."""

    ratios: dict[int, list[float]]  # {scale side: [ratio per block]}
    alpha: Optional[float]
    var: Optional[tuple[Optional[str], str]]  # (identity kind or None in older files, identity value)
    single_branch: Optional[str]  # whose rows were measured (cond in older calibrations; None: hand-written)


def load_rank_file(path: str | Path) -> RankFile:
    """The rank table of a calibration YAML (`radar-accel calibrate --accel.method stagevar`); its `model.var` is
    {kind, value} as the calibration writes it, or the bare value in files written before it recorded the kind."""
    from radar_train.inputs import check_file

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: stagevar rank-ratio file not found (write one with `radar-accel calibrate`)")
    check_file(p, "stagevar rank-ratio file")  # (a folder, an unreadable file: InputError, a ValueError)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
        ratios = {_side(k): [_ratio(r) for r in v] for k, v in data["ratios"].items()}
        alpha = data.get("alpha")
        out = RankFile(ratios, None if alpha is None else float(alpha), _var_of(data.get("model")), _branch_of(data))
    except (yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{p}: not a stagevar rank-ratio file ({type(e).__name__}: {e})") from None
    bad = [k for k, v in ratios.items() if not all(0.0 < r <= 1.0 for r in v)]  # (NaN fails too)
    if bad:
        raise ValueError(f"{p}: stagevar rank ratios for scale(s) {', '.join(map(str, bad))} must lie in (0, 1] "
                         f"(a damaged or hand-edited rank-ratio file; calibrate again with `radar-accel calibrate`)")
    return out


def _side(key: object) -> int:
    """A scale side as a rank file keys it: an integer, or its digits quoted (not 6.5, which int() would make 6,
    nor true)."""
    if isinstance(key, str) and key.strip().isdigit():
        return int(key)
    if isinstance(key, bool) or not isinstance(key, int):
        raise TypeError(f"scale {key!r} is not a side (an integer)")
    return key


def _ratio(value: object) -> float:
    """A rank ratio: a number (not true, which float() would make 1.0, nor a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"rank ratio {value!r} is not a number")
    return float(value)


def _var_of(model: object) -> Optional[tuple[Optional[str], str]]:
    """(kind, value) of a rank file's `model.var`: None without one; kind None for a bare value (older files).
    TypeError for anything else (the caller reports the file)."""
    if model is not None and not isinstance(model, dict):
        raise TypeError(f"model {model!r} is not a mapping")
    var = None if model is None else model.get("var")
    if var is None:
        return None
    if isinstance(var, dict):
        kind = var.get("kind")
        return (None if kind is None else str(kind)), str(var["value"])
    if isinstance(var, str):
        return None, var
    raise TypeError(f"model.var {var!r} is neither {{kind, value}} nor a value")


def _branch_of(data: dict) -> Optional[str]:
    """The single_branch whose rows a rank file measured: its `single_branch`; `cond` in a file `radar-accel
    calibrate` wrote before it recorded the field (it measured the conditional rows then); None for a hand-written
    table (nothing measured, nothing to compare). ValueError for another value (the caller reports the file)."""
    branch = data.get("single_branch")
    if branch is None:
        return "cond" if data.get("written_by") == "radar-accel calibrate" else None
    if branch not in SINGLE_BRANCHES:
        raise ValueError(f"single_branch {branch!r} is not one of {', '.join(SINGLE_BRANCHES)}")
    return branch


def rank_for(alpha_energy: torch.Tensor, alpha: float) -> torch.Tensor:
    """Smallest r with Σ_{i≤r} σ_i² ≥ α Σ σ_i², for singular values σ (…, n) sorted descending."""
    e = alpha_energy.float().pow(2)
    cum = e.cumsum(dim=-1)
    return (cum < alpha * cum[..., -1:]).sum(dim=-1) + 1


@dataclass(frozen=True)
class StageVAR(AccelMethod):
    name = "stagevar"
    capturable = True
    scales: tuple[tuple[int, float], ...]  # ((scale side, α), ...)
    single_branch: Literal["cond", "uncond", "off"] = "cond"
    rank_ratios: tuple[tuple[int, tuple[float, ...]], ...] = ()  # ((side, (ratio per block)), ...)
    rank_ratios_file: Optional[str] = None
    rank_ratios_alpha: Optional[float] = None  # the α the file's ratios were calibrated at (checked in problems)
    # the weights the file was calibrated on, (kind or None, value) (checked in model_problems; not in describe,
    # so cache manifests are unchanged)
    rank_ratios_var: Optional[tuple[Optional[str], str]] = field(default=None, compare=False)
    # the single_branch whose rows the file's ratios were measured on (None: not recorded, not compared; checked in
    # problems; not in describe, so cache manifests are unchanged)
    rank_ratios_branch: Optional[str] = field(default=None, compare=False)
    default_rank_ratio: float = 0.176
    min_rank: int = 8
    rp_scale: Literal["paper", "token_norm"] = "paper"
    preset: Optional[str] = None

    @staticmethod
    def from_preset(preset: str, patch_nums: Sequence[int], **kw) -> "StageVAR":
        if preset not in PRESETS:
            raise ValueError(f"unknown stagevar preset {preset!r}; available: {', '.join(PRESETS)}")
        alphas = PRESETS[preset]
        if len(alphas) >= len(patch_nums):
            raise ValueError(f"stagevar preset {preset!r} needs more than {len(alphas)} scales; the model has {len(patch_nums)}")
        return StageVAR(scales=tuple(zip(patch_nums[-len(alphas):], alphas)), preset=preset, **kw)

    @property
    def alphas(self) -> dict[int, float]:
        return dict(self.scales)

    def ratio(self, pn: int, block: int) -> float:
        table = dict(self.rank_ratios).get(pn)
        return table[block] if table is not None and block < len(table) else self.default_rank_ratio

    def rank(self, pn: int, block: int) -> int:
        """r of block `block` at scale side `pn`: ceil(ratio·M), at least min_rank, at most M = pn²."""
        M = pn * pn
        return min(M, max(self.min_rank, math.ceil(self.ratio(pn, block) * M)))

    def problems(self, patch_nums: Sequence[int], depth: int, rank_table: bool = True) -> list[str]:
        """Every problem of the configuration for this model; `rank_table` False leaves out α against the rank-ratio
        table (a calibration at the scales' α is what makes that table)."""
        p, pns = [], list(patch_nums)
        idx = []
        for pn, a in self.scales:
            if pn not in pns:
                p.append(f"stagevar.scales: scale {pn} is not in the model's patch_nums {tuple(pns)}")
            else:
                idx.append(pns.index(pn))
            if not 0.0 <= a <= 1.0:
                p.append(f"stagevar.scales: α {a} for scale {pn} is outside [0, 1]")
        if idx:
            if sorted(idx) != list(range(min(idx), len(pns))):
                p.append(f"stagevar.scales {sorted(pns[i] for i in idx)} must be the last scales of the schedule "
                         f"(a contiguous suffix of {tuple(pns)})")
            if min(idx) == 0:
                p.append("stagevar.scales cannot include the first scale")
            alphas = [dict(self.scales)[pns[i]] for i in sorted(idx)]
            if 0.0 in alphas and any(a > 0 for a in alphas[alphas.index(0.0):]):
                p.append("stagevar.scales: after a skipped scale (α = 0) every later scale is skipped too")
        p += self._alpha_problems() if rank_table else []
        if self.single_branch not in SINGLE_BRANCHES:
            p.append(f"stagevar.single_branch must be cond, uncond or off, got {self.single_branch!r}")
        p += self._branch_problems()
        if not 0.0 < self.default_rank_ratio <= 1.0:
            p.append(f"stagevar.default_rank_ratio {self.default_rank_ratio} is outside (0, 1]")
        if self.min_rank < 1:
            p.append(f"stagevar.min_rank must be >= 1, got {self.min_rank}")
        if self.rp_scale not in ("paper", "token_norm"):
            p.append(f"stagevar.rp_scale must be paper or token_norm, got {self.rp_scale!r}")
        for pn, ratios in self.rank_ratios:
            if pn not in pns:
                p.append(f"stagevar rank ratios {self.rank_ratios_file or ''} hold scale {pn}, which is not in the "
                         f"model's patch_nums {tuple(pns)}: a calibration of another model")
            if len(ratios) != depth:
                p.append(f"stagevar rank ratios for scale {pn} have {len(ratios)} blocks; the model has {depth}")
            if any(not 0.0 < r <= 1.0 for r in ratios):
                p.append(f"stagevar rank ratios for scale {pn} must lie in (0, 1]")
        return p

    def model_problems(self, var_identity) -> list[str]:
        """A rank table is measured on one set of weights (methods.md §3.2c): a file calibrated on others is
        refused, as an SCA mask file is. A file without `model.var` (hand-written) cannot be compared and passes;
        an older file's bare value is compared without the kind (a sha256 and a `preset:seed=N` never meet)."""
        if self.rank_ratios_var is None:
            return []
        kind, value = self.rank_ratios_var
        this = other_weights({"kind": kind, "value": value}, var_identity)
        if this is None:
            return []
        return [f"stagevar rank ratios {self.rank_ratios_file} were calibrated on other weights ({kind or 'value'} "
                f"{value[:20]}) than this VAR ({this}); calibrate one for it (`radar-accel calibrate --accel.method "
                f"stagevar`)"]

    def first_modified_scale(self, patch_nums: Sequence[int]) -> Optional[int]:
        idx = [list(patch_nums).index(pn) for pn, _ in self.scales if pn in patch_nums]
        return min(idx, default=None)

    def start(self, ctx: RunContext) -> AccelRun:
        return _StageVARRun(self, ctx)

    def _branch_problems(self) -> list[str]:
        """A rank table holds the ranks of the rows it was measured on (methods.md §3.2(c): the single-branch rows):
        the unconditional rows, or both halves (off), have other ranks, so a file measured on another branch than
        the one this method runs is refused, as a file of other weights is."""
        got = self.rank_ratios_branch
        if got is None or got == self.single_branch or not self.rank_ratios:
            return []
        return [f"stagevar rank ratios {self.rank_ratios_file or ''} were calibrated on the rows of single_branch "
                f"{got}, not {self.single_branch}; calibrate them with `radar-accel calibrate --accel.method stagevar "
                f"--accel.stagevar.single_branch {self.single_branch}`"]

    def _alpha_problems(self) -> list[str]:
        """α of a random-projection scale picks its rank only through the rank-ratio table that supplies that
        scale's ratios: the file's where it holds the scale (when it records its α), else the fallback ratio's
        (the paper's average at α 0.96), also for a scale a file lacks. A scale whose α is another would run the
        table's ranks while its caches and logs say otherwise."""
        out = []
        for pn, a in self.scales:
            table, where = self._table_of(pn)
            if a > 0 and table is not None and abs(a - table) > 1e-9:
                out.append(f"stagevar.scales: α {a} at scale {pn}, but the rank of a random-projection scale comes "
                           f"from a rank-ratio table and {where}: set α {table}, or calibrate ratios at α {a} "
                           f"(`radar-accel calibrate --accel.method stagevar --alpha {a}`) and give them as "
                           f"stagevar.rank_ratios")
        return out

    def _table_of(self, pn: int) -> tuple[Optional[float], str]:
        """(α of the table that gives scale `pn` its ratios, or None if the file does not say; where it comes
        from, for messages)."""
        fallback = f"the rank is default_rank_ratio x M (0.176 is the paper's average at α {PAPER_ALPHA})"
        if pn in dict(self.rank_ratios):
            return self.rank_ratios_alpha, (f"the rank ratios of {self.rank_ratios_file or 'stagevar.rank_ratios'} "
                                            f"were calibrated at α {self.rank_ratios_alpha}")
        if self.rank_ratios:
            return PAPER_ALPHA, (f"{self.rank_ratios_file or 'stagevar.rank_ratios'} holds no ratios for scale "
                                 f"{pn}, so {fallback}")
        return PAPER_ALPHA, f"without stagevar.rank_ratios {fallback}"

    def describe(self) -> dict:
        return {"method": self.name, "preset": self.preset, "scales": {int(k): float(v) for k, v in self.scales},
                "single_branch": self.single_branch, "rank_ratios_file": self.rank_ratios_file,
                "rank_ratios": {int(k): list(v) for k, v in self.rank_ratios} or None,
                "default_rank_ratio": self.default_rank_ratio, "min_rank": self.min_rank, "rp_scale": self.rp_scale}


def ideal_speedup(method: StageVAR, cfg) -> dict:
    """FLOP model of a sampling run per CFG row (cfg: the VARConfig; base.flop_constants, as
    fastvar.ideal_speedup): linear layers per token and block, attention per query·key pair and block, the
    head per token. At an RP scale (α > 0) the rows of one branch (half of the CFG batch; all with
    single_branch off) run, per block j, r_j mixed tokens through the block, whose K/V join that block's
    cache, plus the projection Qᵀ F̃ (M·r_j·C); the head sees the whole restored grid (M tokens). A skipped
    scale (α = 0) and the later ones cost nothing. The draws, the RTR top-k, resize and scatter are left out
    (overheads, as FastVAR's token selection). Returns the vanilla attention share and the ideal speed-up
    vanilla / StageVAR (kernels at equal efficiency, per-scale overheads free)."""
    per_token, head, per_pair = flop_constants(cfg)
    C, depth = cfg.embed_dim, cfg.depth
    rows = 1.0 if method.single_branch == "off" else 0.5

    def cost(alphas: dict[int, float]) -> tuple[float, float]:
        linear = attention = 0.0
        kv = [0] * depth  # keys in each block's cache (of the rows still running)
        for pn in cfg.patch_nums:
            M, alpha = pn * pn, alphas.get(pn)
            if alpha == 0.0:
                break
            if alpha is None:
                kv = [k + M for k in kv]
                linear += M * (depth * per_token + head)
                attention += per_pair * M * sum(kv)
                continue
            for j in range(depth):
                r = method.rank(pn, j)
                kv[j] += r
                linear += rows * r * (per_token + M * C)
                attention += rows * per_pair * r * kv[j]
            linear += rows * M * head
        return linear, attention

    van, stage = cost({}), cost(method.alphas)
    return {"attention_share": van[1] / sum(van), "ideal_speedup": sum(van) / sum(stage)}


class _StageVARRun(AccelRun):
    def __init__(self, method: StageVAR, ctx: RunContext):
        super().__init__(ctx)
        self.m = method
        self.alphas = method.alphas
        first = method.first_modified_scale(ctx.patch_nums)
        self.observe_si = None if first is None else first - 1
        self.cache: dict[int, torch.Tensor] = {}  # block -> its full output at the previous scale
        self.mode: Optional[str] = None
        self.draws: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.rp_scales = [si for si, pn in enumerate(ctx.patch_nums) if self.alphas.get(pn, 0.0) > 0]
        self.keys = self._keys()  # (RP scales, 2 purposes, rows) int64 on the device, or None
        self.matmul_dtypes = matmul_resize_dtypes(ctx.device)

    def plan(self, si: int) -> ScalePlan:
        pn = self.ctx.patch_nums[si]
        if pn not in self.alphas:
            return ScalePlan()
        if self.alphas[pn] == 0.0:
            return ScalePlan(skip=True)
        return ScalePlan(branch=self._branch())

    def _branch(self) -> Branch:
        return "both" if self.m.single_branch == "off" else self.m.single_branch

    def begin_scale(self, si: int, rows: Branch) -> Optional[StepHooks]:
        super().begin_scale(si, rows)
        pn = self.ctx.patch_nums[si]
        self.mode = "rp" if self.alphas.get(pn, 0.0) > 0 else "observe" if si == self.observe_si else None
        if self.mode == "rp":
            self.draws = self._draw(si, pn)
        return self if self.mode else None

    def select_rows(self, index: slice) -> None:
        self.cache = {k: v[index] for k, v in self.cache.items()}

    def inputs(self) -> dict[str, torch.Tensor]:
        return {} if self.keys is None else {"keys": self.keys}

    # -------------------------------------------------------------- randomness
    def _keys(self) -> Optional[torch.Tensor]:
        """Keys of every random stream the run draws from: per RP scale, for the projection and the RTR
        draw, one per row the transformer sees there ((seed, branch tag) rows, conditional rows first);
        derived on the host once per call and moved to the device in one copy."""
        if not self.rp_scales:
            return None
        B = self.ctx.batch_size
        if self.ctx.seeds is not None:
            base = [int(s) for s in self.ctx.seeds]
        else:  # official noise: per call, so rows are identified by their position
            base = [derive_seed(self.ctx.call_seed or 0, b) for b in range(B)]
        branch = self._branch()
        tags = ("cond", "uncond") if branch == "both" else (branch,)
        rows = [(s, tag) for tag in tags for s in base]
        return noise.key_tensor([[[derive_seed(s, si, purpose, tag) for s, tag in rows]
                                  for purpose in ("stagevar-rp", "stagevar-rtr")] for si in self.rp_scales],
                                self.ctx.device)

    def _draw(self, si: int, pn: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per block: Q (rows, M, r) and Gumbel keys (rows, M) for the RTR draw. One stream per row and
        purpose; all blocks are drawn in one call each."""
        M, depth = pn * pn, self.ctx.depth
        keys_q, keys_rtr = self.keys[self.rp_scales.index(si)].unbind(0)
        ranks = [self.m.rank(pn, j) for j in range(depth)]
        q_all = noise.normal(keys_q, M * sum(ranks))
        g_all = noise.gumbel(keys_rtr, depth * M).view(-1, depth, M)
        out, off = {}, 0
        for j, r in enumerate(ranks):
            scale = 1.0 / math.sqrt(r) if self.m.rp_scale == "paper" else 1.0 / math.sqrt(M)
            out[j] = (q_all[:, off: off + M * r].view(-1, M, r).mul(scale), g_all[:, j])
            off += M * r
        return out

    # -------------------------------------------------------------- the block hook
    def block(self, block_idx: int, x: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.mode == "observe":
            y = run(x)
            self.cache[block_idx] = y
            return y
        q, gumbel = self.draws[block_idx]
        M, r = q.shape[1], q.shape[2]
        mixed = torch.einsum("bmr,bmc->brc", q.to(x.dtype), x)  # F̂ = Qᵀ F̃
        y_r = run(mixed)
        # RTR: r distinct rows drawn with probability ∝ ‖F̃_i‖² (Gumbel-top-k = sampling w/o replacement)
        keys = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32).square_().clamp_min_(1e-30).log_() + gumbel
        idx = keys.topk(r, dim=1).indices
        out = restore_tokens(self.cache[block_idx], int(math.isqrt(M)), idx, y_r, self.matmul_dtypes)  # FastVAR's CTR
        self.cache[block_idx] = out
        return out
