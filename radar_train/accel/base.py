"""The one interface an acceleration method implements inside VAR's next-scale loop.

Per generation call the sampler asks the method for an `AccelRun` (its state: caches, generators).
Per scale the sampler asks the run for a `ScalePlan` — which CFG branches run, whether to stop — and
for the `StepHooks` the transformer consults per block and per sub-layer (which tokens are computed and
how the others are restored). A new method is one file with an `AccelMethod` subclass and one registry
entry in `radar_train.accel`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional, Sequence

import torch

from radar_train.models.hooks import StepHooks

Branch = Literal["both", "cond", "uncond"]


@dataclass(frozen=True)
class ScalePlan:
    branch: Branch = "both"  # "cond"/"uncond": run one CFG half only, from this scale to the end
    skip: bool = False  # True: this scale and all later ones are not run; f_hat is decoded as it is


@dataclass(frozen=True)
class RunContext:
    """What a method may know about the generation call it accelerates."""

    patch_nums: tuple[int, ...]
    depth: int
    batch_size: int  # B (images); the transformer sees 2B rows while both CFG halves run
    seeds: torch.Tensor | None  # (B,) per-sample seeds (per_sample noise), else None
    call_seed: int | None  # the call's seed (official noise), else None
    device: torch.device


class ConfigError(ValueError):
    """An invalid acceleration configuration; the message lists every problem found."""

    def __init__(self, method: str, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__(f"invalid {method} configuration: " + "; ".join(self.problems))


class AccelRun(StepHooks):
    """State of one accelerated generation call. Default: vanilla everywhere."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.si = -1
        self.rows: Branch = "both"

    def plan(self, si: int) -> ScalePlan:
        return ScalePlan()

    def begin_scale(self, si: int, rows: Branch) -> StepHooks | None:
        """Called before the transformer runs scale `si` on `rows`; returns the hooks to use (None =
        plain blocks)."""
        self.si, self.rows = si, rows
        return None

    def select_rows(self, index: slice) -> None:
        """The sampler dropped a CFG half: slice any per-row state the same way."""

    def inputs(self) -> dict[str, torch.Tensor]:
        """The per-call device tensors this run reads while sampling (e.g. random-stream keys derived from
        the seeds), all made when the run starts (on the host, moved once). A captured engine replays the
        scales of an earlier run of the same method and batch size after copying these into that run's
        tensors, so a capturable method computes everything else from the configuration alone."""
        return {}

    def fork(self) -> "AccelRun":
        """An independent copy of the state (tensors are shared; they are never written in place)."""
        other = copy.copy(self)
        other.__dict__ = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
                          for k, v in self.__dict__.items()}
        return other


class AccelMethod:
    """A configured acceleration method (immutable); `start` makes the per-call state."""

    name: ClassVar[str] = "none"
    capturable: ClassVar[bool] = False
    """True if a run can be captured and replayed (CUDA graphs, torch.compile): no host synchronisation and
    no data-dependent Python in `plan`/`begin_scale`/the hooks, per-call randomness only in
    `AccelRun.inputs`, Python state that follows from the configuration and batch size alone. Methods
    that observe on the host (calibration probes) leave it False and always run eagerly."""

    def problems(self, patch_nums: Sequence[int], depth: int) -> list[str]:
        """Every problem of this configuration for a model with these scales and depth."""
        return []

    def model_problems(self, var_identity) -> list[str]:
        """Problems of using this method with the VAR of this identity (a `ModelIdentity` or its dict),
        e.g. a calibration made on other weights."""
        return []

    def validate(self, patch_nums: Sequence[int], depth: int) -> None:
        problems = self.problems(patch_nums, depth)
        if problems:
            raise ConfigError(self.name, problems)

    def first_modified_scale(self, patch_nums: Sequence[int]) -> int | None:
        """Index of the first scale whose computation differs from vanilla (None: none does). Scales
        before it may observe (store caches) but must produce exactly the vanilla result."""
        return None

    def kv_capacity(self, patch_nums: Sequence[int], depth: int) -> Optional[tuple[int, ...]]:
        """The KV cache a run needs, per block: the most tokens the block's cache holds at once (after a
        scale's K/V joined it) over the whole run, computed from the configuration alone (it sizes buffers
        before anything runs). None: the whole sequence, as vanilla. A method that evicts tokens
        (`StepHooks.kv_keep`) returns less; the sampler refuses (ValueError) a run that would overflow it."""
        return None

    def start(self, ctx: RunContext) -> AccelRun:
        return AccelRun(ctx)

    def describe(self) -> dict:
        """The resolved configuration, for manifests and logs."""
        return {"method": self.name}

    def derived(self, patch_nums: Sequence[int]) -> dict:
        """What the method works out for a model's scales beyond `describe` (shown by `radar-accel show`; not in
        manifests, which compare `describe` only)."""
        return {}


def other_weights(recorded: Optional[dict], var_identity) -> Optional[str]:
    """None if a calibration file's recorded VAR identity ({kind, value}; kind None in older files: compared by
    value) is that of `var_identity` (a `ModelIdentity` or its dict); else this VAR as 'kind value' (shortened),
    for the refusal. What a calibration measured (mask tiles, rank ratios) holds for its own weights only."""
    ident = var_identity.to_dict() if hasattr(var_identity, "to_dict") else dict(var_identity)
    kind, value = (recorded or {}).get("kind"), (recorded or {}).get("value")
    if value is not None and value == ident.get("value") and kind in (None, ident.get("kind")):
        return None
    return f"{ident.get('kind')} {str(ident.get('value'))[:20]}"


def flop_constants(cfg) -> tuple[float, float, float]:
    """Multiply-adds per CFG row of the FLOP models (sca.ideal_speedup, fastvar.ideal_speedup), cfg a VARConfig:
    (linear layers per token and block: (4 + 2·mlp_ratio)·C² for qkv, proj and FFN; the head per token: C·V;
    attention per query·key pair and block: 2·C for q·k and p·v)."""
    C = cfg.embed_dim
    return (4 + 2 * cfg.mlp_ratio) * C * C, C * cfg.vocab_size, 2 * C


def is_capturable(method: "AccelMethod | None") -> bool:
    """Whether runs of `method` (None: vanilla) may be captured: vanilla, or a method that declares it."""
    return method is None or type(method) is AccelMethod or method.capturable


def branch_rows(branch: Branch, batch_size: int) -> slice:
    """Rows of the 2B CFG batch that a branch keeps (conditional rows first)."""
    if branch == "cond":
        return slice(0, batch_size)
    if branch == "uncond":
        return slice(batch_size, 2 * batch_size)
    return slice(None)
