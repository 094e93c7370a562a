"""Acceleration methods for VAR sampling, by name, and the factory from the `accel` config section."""
from __future__ import annotations

from typing import Optional, Sequence

from radar_train.accel.base import AccelMethod, AccelRun, ConfigError, RunContext, ScalePlan
from radar_train.accel.fastvar import FastVAR
from radar_train.accel.sca import SCAMask
from radar_train.accel.stagevar import StageVAR, load_rank_file
from radar_train.config import AccelArgs, FastVARArgs, StageVARArgs

__all__ = ["ACCEL_METHODS", "AccelMethod", "AccelRun", "ConfigError", "RunContext", "ScalePlan", "FastVAR",
           "SCAMask", "StageVAR", "build_accel", "not_reproducible"]


def _none(args: AccelArgs, patch_nums: Sequence[int]) -> AccelMethod:
    return AccelMethod()


def _fastvar(args: AccelArgs, patch_nums: Sequence[int]) -> FastVAR:
    a: FastVARArgs = args.fastvar
    layers = None if a.layers is None else tuple(int(b) for b in a.layers)
    if a.prune is not None:
        prune = tuple((int(k), float(v)) for k, v in sorted(a.prune.items()))
        return FastVAR(prune=prune, cache_scale=a.cache_scale, layers=layers)
    if a.preset is None:
        raise ValueError("accel.fastvar: give a preset or prune")
    return FastVAR.from_preset(a.preset, tuple(patch_nums), cache_scale=a.cache_scale, layers=layers)


def _stagevar(args: AccelArgs, patch_nums: Sequence[int]) -> StageVAR:
    a: StageVARArgs = args.stagevar
    ratios, alpha, var, branch = (), None, None, None
    if a.rank_ratios is not None:
        table, alpha, var, branch = load_rank_file(a.rank_ratios)
        ratios = tuple((pn, tuple(r)) for pn, r in sorted(table.items()))
    kw = dict(single_branch=a.single_branch, rank_ratios=ratios, rank_ratios_file=a.rank_ratios,
              rank_ratios_alpha=alpha, rank_ratios_var=var, rank_ratios_branch=branch,
              default_rank_ratio=a.default_rank_ratio,
              min_rank=a.min_rank, rp_scale=a.rp_scale)
    if a.scales is not None:
        return StageVAR(scales=tuple((int(k), float(v)) for k, v in sorted(a.scales.items())), **kw)
    if a.preset is None:
        raise ValueError("accel.stagevar: give a preset or scales")
    return StageVAR.from_preset(a.preset, tuple(patch_nums), **kw)


def _sca(args: AccelArgs, patch_nums: Sequence[int]) -> SCAMask:
    return SCAMask.from_args(args.sca, patch_nums)


ACCEL_METHODS = {"none": _none, "fastvar": _fastvar, "stagevar": _stagevar, "sca": _sca}


def not_reproducible(described: dict) -> Optional[str]:
    """Why a method recorded by an older radar_train (a cache manifest's `accel` section) cannot be run by this
    one, or None."""
    check = {"fastvar": FastVAR.not_reproducible, "sca": SCAMask.not_reproducible}.get(described.get("method"))
    return None if check is None else check(described)


def build_accel(args: AccelArgs, patch_nums: Sequence[int], depth: int, var_identity=None) -> AccelMethod:
    """The configured method, validated against the model (every problem reported at once) and, when
    `var_identity` (the VAR's `ModelIdentity`) is given, against its weights (e.g. a calibration file
    made for another model)."""
    if args.method not in ACCEL_METHODS:
        raise ValueError(f"unknown accel.method {args.method!r}; available: {', '.join(ACCEL_METHODS)}")
    method = ACCEL_METHODS[args.method](args, patch_nums)
    problems = method.problems(tuple(patch_nums), depth)
    if var_identity is not None:
        problems += method.model_problems(var_identity)
    if problems:
        raise ConfigError(method.name, problems)
    return method
