"""User-facing configuration groups shared by every entry point (YAML sections `model`, `sampling`,
`accel`). Defaults live here only. Stage-specific groups live beside their stage (cache/, train/, ...).
"""
from __future__ import annotations

import math
import numbers
import operator
import re
from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence, Union

__all__ = ["ModelArgs", "SamplingConfig", "FastVARArgs", "StageVARArgs", "SCAArgs", "AccelArgs", "parse_int_list",
           "check_device", "check_positive", "init_seed_problems"]

Noise = Literal["official", "per_sample"]
Engine = Literal["auto", "eager", "graphs", "compiled"]


@dataclass
class ModelArgs:
    """Which VQ-VAE + VAR to use."""

    preset: str = "tiny"
    """Model preset: var-d16, var-d20, var-d24, var-d30, var-d36, tiny (random weights), toy (trained toy world)."""
    vae_checkpoint: Optional[str] = None
    """VQ-VAE weights (.pth or .safetensors), e.g. checkpoints/vae_ch160v4096z32.pth. Required for var-d*."""
    var_checkpoint: Optional[str] = None
    """VAR weights (.pth or .safetensors), e.g. checkpoints/var_d16.pth. Required for var-d*."""
    init_seed: Optional[int] = None
    """Random presets only: seed of the random weights (default: the preset's)."""

    def problems(self) -> list[str]:
        # (said here, where the option is known, not by the model loader after the command started)
        return init_seed_problems("model.init_seed", self.init_seed) + preset_problems("model.preset", self.preset)

    def __post_init__(self) -> None:
        # checked when built: every entry point builds its ModelArgs from the options before a model is
        # loaded (an init_seed past 64 bits overflowed in torch's manual_seed there, a message naming nothing)
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class SamplingConfig:
    """Sampler settings. Defaults are the VAR README's FID protocol with this project's noise mode."""

    cfg: float = 1.5  # guidance at the last scale; ramps linearly from 0 at the first
    top_k: int = 900  # 0 = off
    top_p: float = 0.96  # 0 = off
    noise: Noise = "per_sample"
    more_smooth: bool = False  # official visualisation trick (soft codebook mix); official noise only
    engine: Engine = "auto"
    """How the sampling loop runs (the tokens do not depend on it): eager (plain PyTorch calls), graphs
    (each scale's step captured once as a CUDA graph and replayed; CUDA, per_sample noise), compiled
    (torch.compile of each scale's step; on CUDA captured as CUDA graphs too; per_sample noise), or auto:
    graphs on CUDA with per_sample noise, else eager. Not part of a cache's identity."""

    def problems(self) -> list[str]:
        p = []
        real = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)  # noqa: E731 ("2" from Python)
        if not (real(self.cfg) and math.isfinite(self.cfg) and self.cfg >= 0):  # NaN / inf: every guided logit NaN
            p.append(f"sampling.cfg must be a finite number >= 0, got {self.cfg!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, numbers.Integral) or self.top_k < 0:  # (an int k)
            p.append(f"sampling.top_k must be a whole number >= 0, got {self.top_k!r}")
        if not (real(self.top_p) and 0.0 <= self.top_p < 1.0):
            p.append(f"sampling.top_p must be in [0, 1), got {self.top_p!r}")
        if self.noise not in ("official", "per_sample"):
            p.append(f"sampling.noise must be 'official' or 'per_sample', got {self.noise!r}")
        if self.more_smooth and self.noise != "official":
            p.append("sampling.more_smooth needs noise='official'")
        if self.engine not in ("auto", "eager", "graphs", "compiled"):
            p.append(f"sampling.engine must be auto, eager, graphs or compiled, got {self.engine!r}")
        elif self.engine in ("graphs", "compiled") and self.noise != "per_sample":
            p.append(f"sampling.engine {self.engine} needs noise='per_sample' (official noise draws from torch "
                     f"generators; it runs with engine eager or auto)")
        return p


@dataclass
class FastVARArgs:
    """FastVAR: pivotal token selection + cached token restoration on the last scales."""

    preset: Optional[str] = "default"
    """default | mild | aggressive (resolved against the model's scales: the last 2 or 3 scales), or
    null to use `prune` and `cache_scale`."""
    prune: Optional[dict[int, float]] = None
    """{scale side: pruning ratio} (fraction of tokens dropped, 0..1; 1 = skip that scale and the rest).
    Overrides the preset."""
    cache_scale: Optional[int] = None
    """Side of the scale whose branch outputs are cached for restoration (default: the scale just
    before the first pruned one)."""
    layers: Optional[list[int]] = None
    """Blocks where pruning applies (default: all)."""


@dataclass
class StageVARArgs:
    """StageVAR settings.

    Single-branch (no CFG) fidelity-refinement scales with random projection + token restoration,
    suffix skipping."""

    preset: Optional[str] = "default"
    """default (last 2 scales, RP at α=0.96) | paper (last 3: RP at α=0.96, then skip), or null to
    use `scales`."""
    scales: Optional[dict[int, float]] = None
    """{scale side: α} for the fidelity-refinement scales; α > 0: random projection with the rank
    measured at energy α (α must be the rank_ratios file's for a scale it holds, 0.96 for one it lacks or
    without a file); α = 0: skip this scale and the rest. Overrides the preset."""
    single_branch: Literal["cond", "uncond", "off"] = "cond"
    """CFG half kept in the refinement scales (the class branch by default)."""
    rank_ratios: Optional[str] = None
    """YAML written by `radar-accel calibrate` (rank ratio per scale and block)."""
    default_rank_ratio: float = 0.176
    """Rank ratio where no calibrated value exists (StageVAR's average at α=0.96)."""
    min_rank: int = 8
    """Lower bound of the projected token count r."""
    rp_scale: Literal["paper", "token_norm"] = "paper"
    """Projection scaling: N(0, 1/r) as the paper, or rescaled to keep token norms."""


@dataclass
class SCAArgs:
    """SCA-Mask (RADAR's own method): block-sparse attention and KV eviction on the last scales, from
    attention-tile scores calibrated on the model (`radar-accel calibrate --accel.method sca`)."""

    preset: Optional[str] = "default"
    """default (compute 0.5 / memory 0.6) | mild (0.75 / 0.8) | aggressive (0.3 / 0.5), or null to give
    both budgets."""
    compute_budget: Optional[float] = None
    """Share of the attention tiles (query tile x key tile) kept per active scale and block, in (0, 1];
    overrides the preset's. Protected tiles (own diagonal, first-scale keys) are always kept."""
    memory_budget: Optional[float] = None
    """Share of vanilla's KV cache (the whole sequence) each block may hold at once, in (0, 1]: the key
    tiles with the lowest KV scores leave it (never the first scale's, nor the last scale's or the tile it
    begins in; a budget below those gives them); overrides the preset's. Needs selection scores."""
    mask_file: Optional[str] = None
    """Mask file written by `radar-accel calibrate --accel.method sca` (needed by selection scores)."""
    selection: Literal["scores", "window"] = "scores"
    """scores: the calibrated tiles (SCA-Mask); window: as many tiles, those nearest each query tile's
    own diagonal (LiteVAR-style handcrafted mask; no calibration, no memory budget)."""
    scales: Optional[list[int]] = None
    """Active scale sides, a suffix of the schedule (default: the last three; the last four on the
    512px schedule)."""
    tile: Optional[int] = None
    """Tile side in tokens (default: the mask file's; without one, the largest power of two <= 64 that
    gives the last scale at least 4 query tiles: 64 on VAR-d*, 16 on tiny/toy)."""
    tau: Optional[float] = None
    """Calibration threshold as a multiple of the uniform attention level 1/n (n: keys at the scale);
    default 1. Inference uses the mask file's."""
    per_head: bool = False
    """One mask per attention head (else one per block, from the scores averaged over heads)."""
    kernel: Literal["auto", "flex", "sdpa"] = "auto"
    """auto: FlexAttention on CUDA (tile a power of two >= 16), else SDPA with the equivalent boolean
    mask (same result); sdpa: always the masked SDPA; flex: FlexAttention on any device (CPU: eager)."""


@dataclass
class AccelArgs:
    """Acceleration method of the accelerated run and its settings."""

    method: Literal["none", "fastvar", "stagevar", "sca"] = "none"
    fastvar: FastVARArgs = field(default_factory=FastVARArgs)
    stagevar: StageVARArgs = field(default_factory=StageVARArgs)
    sca: SCAArgs = field(default_factory=SCAArgs)


MAX_INT_LIST = 10_000_000  # values parse_int_list makes at most (a range typed by mistake: '0-9000000000000000000')


def parse_int_list(spec: Union[str, int, Sequence[int]], what: str) -> list[int]:
    """'0-3,7' (ranges inclusive) / 5 / [1, 2] -> a list of non-negative ints, in the given order, of at most
    MAX_INT_LIST values. ValueError names `what` (the option at fault)."""
    if not isinstance(spec, str):
        values = [spec] if not isinstance(spec, Sequence) else list(spec)
        try:  # (int() took 1.5 as 1 and True as 1; a Python caller gets what the command line refuses)
            if any(isinstance(x, bool) for x in values):
                raise TypeError("a bool")
            out = [operator.index(x) for x in values]
        except TypeError:
            raise ValueError(f"{what}: {spec!r:.80} is not whole numbers (use e.g. '0-3,7' or a list of "
                             f"ints)") from None
        if len(out) > MAX_INT_LIST:
            raise ValueError(f"{what}: lists more than {MAX_INT_LIST:,} values")
        if not out:
            raise ValueError(f"{what} is empty")
        if min(out) < 0:
            raise ValueError(f"{what}: {min(out)} is negative")
        return out
    out = []
    zeros = re.findall(r"(?<![\w.])0\d+", spec)
    if spec.strip().startswith("[") and zeros:  # (a YAML list the command line's loader left as text: see inputs.py)
        raise ValueError(f"{what}: {spec!r}: {zeros[0]}, a number with a leading zero, reads in YAML as another "
                         f"number (octal); write it without the zero ({int(zeros[0])})")
    for part in filter(None, (q.strip() for q in spec.split(","))):
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise ValueError(f"{what}: cannot read {part!r} in {spec!r} (use e.g. '0-3,7' or a list)")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise ValueError(f"{what}: empty range {part!r}")
        if len(out) + (b - a + 1) > MAX_INT_LIST:
            raise ValueError(f"{what}: {spec!r} lists more than {MAX_INT_LIST:,} values")
        out += range(a, b + 1)
    if not out:
        raise ValueError(f"{what} is empty")
    return out


def format_int_list(ids: Sequence[int], sep: str = ", ") -> str:
    """parse_int_list's inverse, for messages: [0, 1, 2, 5] -> "0-2, 5" (sorted; "none" when empty)."""
    out, ids = [], sorted(ids)
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return sep.join(out) or "none"


def check_device(name: str, option: str = "--device", here: bool = True):
    """The torch.device `name` stands for ("auto": cuda if available, else cpu); ValueError naming the option
    if it is not a device, or (`here`: the device is for this machine) a CUDA device that is not there."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):  # mps, xpu, meta...: names torch knows, not devices we run on
        raise ValueError(f"{option} {name!r} is not a device (cpu, cuda, cuda:N or auto)")
    if dev.type == "cuda" and here:
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {name}: CUDA is not available here (use {option} cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{option} {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def init_seed_problems(option: str, seed: Optional[int]) -> list[str]:
    """The problem with a model's init_seed (torch seeds its random weights with it), named `option`: []
    when it is not given or lies in [0, 2**63)."""
    if seed is None or 0 <= seed < 2 ** 63:
        return []
    return [f"{option} must be in [0, 2**63) (the seed of the random weights), got {seed}"]


def preset_problems(option: str, preset: str) -> list[str]:
    """The problem with a model preset's name, named `option`: [] for a known preset."""
    from radar_train.models.configs import get_preset

    try:
        get_preset(preset)
    except ValueError as e:
        return [f"{option}: {e}"]
    return []


def check_positive(minimum: int = 1, **values: Optional[float]) -> None:
    """ValueError naming the option if a given value is below `minimum` (None: not given)."""
    for name, value in values.items():
        if value is not None and value < minimum:
            raise ValueError(f"--{name} must be >= {minimum}, got {value}")
