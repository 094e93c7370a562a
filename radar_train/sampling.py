"""Class-conditional next-scale sampling with CFG, top-k/top-p, pluggable acceleration and forking.

Noise modes
- `official`: one generator per call, re-seeded with the call's seed; `torch.multinomial` over all rows
  at once (exactly the official `autoregressive_infer_cfg`). A sample depends on its batch.
- `per_sample` (default): every sample's token draws come from a counter-based stream keyed by its own
  seed and the scale index (`radar_train.noise`); a token is the Gumbel-max of the filtered logits. A sample's result does not
  depend on the batch it is in or its position, and an accelerated run sees the same noise as the
  vanilla run of the same seed, which couples HQ/LQ pairs.

The loop is a small state machine (`SamplingState`) so that a run can be advanced to a scale, forked,
and each fork continued with its own acceleration method (`generate_pairs`). Each scale is a host-side
plan (`_plan`: skip, CFG-half switch; Python only) and a device step (`_compute`: transformer, guidance,
token draw, f_hat update) whose shapes, offsets and inputs are fixed by the configuration, the batch size
and tensors made once per call (per-sample noise keys for every scale), so the step has no host
synchronisation and can be captured. The engine (`sampling.engine`, `radar_train.engine`) decides how
the step runs: eagerly, replayed as CUDA graphs, or compiled; the tokens do not depend on it.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from radar_train.accel.base import AccelMethod, AccelRun, Branch, RunContext, branch_rows
from radar_train import noise
from radar_train.config import SamplingConfig
from radar_train.engine import ENGINES, engines_for, make_engine, resolve_engine
from radar_train.interp import upsample_bicubic
from radar_train.models.fused import EAGER_OPS, BlockOps
from radar_train.models.quantizer import MultiScaleQuantizer
from radar_train.models.var import VAR
from radar_train.seeding import derive_seed, make_generator

__all__ = ["ENGINES", "NextScaleSampler", "PairOutput", "SampleOutput", "SamplingState", "decode_images",
           "engines_for", "filter_top_k_top_p_", "generate_pairs", "gumbel_keys", "gumbel_max",
           "sample_top_k_per_sample", "token_keys"]


@dataclass
class SampleOutput:
    f_hat: torch.Tensor  # (B, Cvae, P, P) float32
    indices: list[torch.Tensor]  # per scale (B, pn²) int64; −1 for scales that were skipped
    skipped_from: Optional[int] = None  # first skipped scale, if any
    trace: Optional[dict[str, torch.Tensor]] = None  # f_hat.{si}, x_in.{si}, raw_logits.{si}, guided_logits.{si}


@dataclass
class PairOutput:
    hq: SampleOutput  # vanilla branch
    lq: SampleOutput  # accelerated branch
    fork_scale: int  # scales before this index were run once and shared


@dataclass
class SamplingState:
    labels: torch.Tensor  # (B,) on the device
    seeds: Optional[torch.Tensor]  # (B,) per_sample, on the host
    cond_all: Optional[torch.Tensor]  # (2B, C): conditional rows then unconditional rows
    branch: Branch
    kv: object  # KVCache
    f_hat: Optional[torch.Tensor]
    next_map: Optional[torch.Tensor]  # (B, pn², Cvae) input of scale `si`, None before scale 0
    si: int
    indices: list[torch.Tensor]
    accel: Optional[AccelRun]
    generator: Optional[torch.Generator]  # official noise
    lvl_pos: Optional[torch.Tensor]
    skipped_from: Optional[int] = None
    trace: Optional[dict[str, torch.Tensor]] = None
    _mods: dict = field(default_factory=dict)  # CFG branch -> per-block AdaLN modulations
    token_keys: Optional[torch.Tensor] = None  # (K, B) per_sample noise keys of every scale, on the device
    handle: object = None  # a captured engine's hold on the workspace the run lives in (None: eager)
    eager: bool = False  # runs eagerly under every engine (trace, or a method that cannot be captured)
    kv_capacity: tuple[int, ...] = ()  # per-block KV capacity (tokens): the method's, else the whole sequence
    method: Optional[AccelMethod] = None  # the method `accel` is a run of (None: vanilla)

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]


def copy_state(state: SamplingState) -> SamplingState:
    """A copy sharing the tensors but with its own containers and bookkeeping (KV fill counts and row
    views, index list, modulation dict, method state), so advancing one does not change the other's view.
    Tensors written in place (the KV buffers, f_hat) are shared: use `NextScaleSampler.fork` for a run
    that continues independently."""
    other = copy.copy(state)
    other.kv = None if state.kv is None else state.kv.shallow_copy()
    other.indices = list(state.indices)
    other._mods = dict(state._mods)
    other.trace = None if state.trace is None else dict(state.trace)
    other.accel = None if state.accel is None else state.accel.fork()
    return other


# ---------------------------------------------------------------------------- token selection
def filter_top_k_top_p_(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """In place, as the official sampler: top-k keeps every logit ≥ the k-th largest (ties survive);
    top-p removes the ascending-sorted entries whose cumulative probability is ≤ 1 − p, never the
    largest. Removed entries become −inf."""
    V = logits.shape[-1]
    if 0 < top_k < V:
        kth = logits.topk(top_k, largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits.masked_fill_(logits < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        remove[..., -1:].fill_(False)  # (a Python scalar assigned by indexing would become a tensor first)
        logits.masked_fill_(remove.scatter(sorted_idx.ndim - 1, sorted_idx, remove), -torch.inf)
    return logits


def gumbel_keys(seeds: Sequence[int], si: int, device) -> torch.Tensor:
    """Keys of the per-sample token-noise streams at scale si."""
    return noise.key_tensor([derive_seed(int(s), si, "token") for s in seeds], device)


def token_keys(seeds: Sequence[int] | torch.Tensor, num_scales: int, device) -> torch.Tensor:
    """(num_scales, B) keys of the per-sample token-noise streams of every scale: derived on the host once
    per call and moved to the device in one copy (row si = `gumbel_keys(seeds, si)`)."""
    seeds = [int(s) for s in seeds]
    return noise.key_tensor([[derive_seed(s, si, "token") for s in seeds] for si in range(num_scales)], device)


def gumbel_max(logits_BlV: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """argmax(logits + Gumbel noise) per position; the noise of row b at (position p, token v) is value
    p·V + v of stream keys[b]."""
    B, l, V = logits_BlV.shape
    g = noise.gumbel(keys, l * V).view(B, l, V)
    return torch.argmax(logits_BlV + g, dim=-1)


def sample_top_k_per_sample(logits_BlV: torch.Tensor, keys: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Gumbel-max over the top-k candidates only, with the official top-k/top-p semantics and the same
    noise as `gumbel_max` (keyed by token index), so the result equals filtering the full vocabulary
    and calling `gumbel_max` — except when several tokens tie exactly at the k-th logit, where the
    full filter keeps all of them and this keeps k. Work is B·l·k instead of B·l·V."""
    B, l, V = logits_BlV.shape
    vals, cand = logits_BlV.topk(top_k, dim=-1, sorted=True)  # descending
    if top_p > 0:
        # the official rule on the ascending order: drop entries whose cumulative probability (them and
        # everything smaller) is <= 1 - p, never the largest
        cum_from_small = vals.softmax(dim=-1).flip(-1).cumsum(dim=-1).flip(-1)
        remove = cum_from_small <= (1 - top_p)
        remove[..., 0].fill_(False)
        vals = vals.masked_fill(remove, -torch.inf)
    pos = torch.arange(l, device=cand.device, dtype=torch.int64).view(1, l, 1) * V
    g = noise.gumbel_at(keys, pos + cand)
    return cand.gather(-1, torch.argmax(vals + g, dim=-1, keepdim=True)).squeeze(-1)


# ---------------------------------------------------------------------------- the sampler
def noise_keys(noise: str, seeds: Sequence[int]) -> dict:
    """The keywords of `NextScaleSampler.sample` that draw one call's samples from their seeds. per_sample noise:
    the samples' seeds. official noise: one generator for the call, seeded with the first sample's seed (the
    official sampler's g_seed), so the call is reproducible, but a sample then depends on the batch it is drawn
    in. One rule for every caller (the pipeline, the calibrations), so that a seed means the same noise."""
    seeds = [int(s) for s in seeds]
    if noise == "official":
        return {"g_seed": seeds[0] if seeds else None}
    return {"seeds": seeds}


class NextScaleSampler:
    """Runs VAR + the VQ-VAE quantizer (no decoding) scale by scale.

    `engine` (default: `config.engine`) selects how the per-scale step runs; see `radar_train.engine`."""

    def __init__(self, var: VAR, quantizer: MultiScaleQuantizer, config: SamplingConfig = SamplingConfig(),
                 autocast_dtype: Optional[torch.dtype] = None, engine: Optional[str] = None):
        if engine is not None:
            config = dataclasses.replace(config, engine=engine)
        problems = config.problems()
        if problems:
            raise ValueError("invalid sampling configuration: " + "; ".join(problems))
        if var.config.vocab_size != quantizer.vocab_size or var.config.z_channels != quantizer.z_channels:
            raise ValueError(
                f"VAR (V={var.config.vocab_size}, Cvae={var.config.z_channels}) and VQ-VAE "
                f"(V={quantizer.vocab_size}, Cvae={quantizer.z_channels}) do not belong together")
        if var.body_dtype != torch.float32 and autocast_dtype is None:
            raise ValueError(f"the VAR body is {var.body_dtype}; sampling it needs autocast_dtype (e.g. torch.bfloat16)")
        self.var, self.quantizer, self.config = var, quantizer, config
        self.patch_nums = tuple(var.patch_nums)
        self.autocast_dtype = autocast_dtype
        K = len(self.patch_nums)
        self._phis = [quantizer.phi(si, K) for si in range(K)]  # resolved once: the step runs no numpy
        self.engine_name = resolve_engine(config.engine, self.device, config.noise)
        if self.device.type == "cuda":  # (the noise's one-kernel hash built and checked here, not in the loop: the
            noise.fused_hash(self.device)  # token draws use it, and StageVAR's draws under either noise mode)
        self._engine = make_engine(self.engine_name, self)

    @property
    def device(self) -> torch.device:
        return self.var.pos_1LC.device

    @property
    def engine(self) -> str:
        """The engine in use (`auto` resolved; eager after a failed capture under auto)."""
        return self._engine.name

    @property
    def kv_dtype(self) -> torch.dtype:
        """Storage dtype of the KV cache: the compute dtype (the autocast dtype, else float32)."""
        return self.autocast_dtype or torch.float32

    def _autocast(self):
        if self.autocast_dtype is None or self.autocast_dtype == torch.float32:
            return contextlib.nullcontext()
        # no cast cache: the cached casts would be allocated inside a capture and outlive it
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype, cache_enabled=False)

    # -------------------------------------------------------------- public API
    @torch.no_grad()
    def start(self, labels: torch.Tensor | int | None, *, batch_size: Optional[int] = None,
              seeds: Optional[torch.Tensor | Sequence[int]] = None, g_seed: Optional[int] = None,
              accel: Optional[AccelMethod] = None, trace: bool = False) -> SamplingState:
        """Prepare a run. per_sample noise needs `seeds` (one per sample, best given on the host);
        official noise takes `g_seed` (None = the global RNG) and accepts `labels` None (drawn uniformly)
        or an int (negative = unconditional). Labels given on the host are checked there; labels already on
        a CUDA device are checked by a device-side assertion (no host synchronisation)."""
        dev, var = self.device, self.var
        generator = None
        if self.config.noise == "official":
            if g_seed is not None:
                generator = make_generator(g_seed, dev)
            if labels is None:
                if batch_size is None:
                    raise ValueError("labels=None needs batch_size")
                uniform = torch.full((1, var.num_classes), 1.0 / var.num_classes, device=dev)
                labels = torch.multinomial(uniform, batch_size, replacement=True, generator=generator).reshape(batch_size)
        if isinstance(labels, int):
            if batch_size is None:
                raise ValueError("an int label needs batch_size")
            labels = torch.full((batch_size,), var.num_classes if labels < 0 else labels, device=dev, dtype=torch.long)
        if labels is None:
            raise ValueError("per_sample noise needs explicit labels")
        labels = self._labels(labels)
        B = labels.shape[0]
        if self.config.noise == "per_sample":
            if seeds is None:
                raise ValueError("per_sample noise needs one seed per sample (seeds=...)")
            if not isinstance(seeds, torch.Tensor):
                big = [int(x) for x in seeds if not -2 ** 63 <= int(x) < 2 ** 63]
                if big:
                    raise ValueError(f"seed {big[0]} does not fit in 64 bits")
            seeds = torch.as_tensor(seeds, dtype=torch.long).reshape(-1).cpu()
            if seeds.shape[0] != B:
                raise ValueError(f"got {seeds.shape[0]} seeds for {B} labels")
        else:
            seeds = None
        if accel is not None:
            accel.validate(self.patch_nums, var.depth)
        state = self._new_state(labels, seeds, g_seed, accel, trace, generator)
        self._engine.begin(state, accel)
        return state

    @torch.no_grad()
    def advance(self, state: SamplingState, until: Optional[int] = None) -> SamplingState:
        """Run scales state.si .. until−1 (default: to the end or until the method skips the rest)."""
        K = len(self.patch_nums)
        until = K if until is None else min(until, K)
        self._engine.advance(state, until)
        return state

    @torch.no_grad()
    def fork(self, state: SamplingState, accel: Optional[AccelMethod] = None) -> SamplingState:
        """An independent copy of the run. The copy continues vanilla (`accel` None) or with the run's own
        method (`accel` the method the run started with; its state is forked). Another method cannot take
        over a run midway: its state would lack the scales it observes before it acts (ValueError). The
        copy's KV cache has the run's capacity when it continues with the method and the whole sequence's
        when vanilla."""
        if accel is not None and accel is not state.method:
            started = "vanilla" if state.method is None else f"with the {state.method.name!r} method object"
            raise ValueError(f"a fork continues vanilla (accel=None) or with the method object its run started with; "
                             f"this run started {started}, not with this {accel.name!r} one")
        return self._engine.fork(state, accel)

    def output(self, state: SamplingState) -> SampleOutput:
        """The run's result. With a captured engine the tensors are copies (the engine's buffers are
        reused by the next call)."""
        B = state.batch_size
        idx = list(state.indices)
        for pn in self.patch_nums[len(idx):]:
            idx.append(torch.full((B, pn * pn), -1, dtype=torch.long, device=state.f_hat.device))
        f_hat = state.f_hat
        if state.handle is not None:
            f_hat, idx = f_hat.clone(), [t.clone() for t in idx]
        return SampleOutput(f_hat, idx, state.skipped_from, state.trace)

    def sample(self, labels, *, seeds=None, g_seed=None, batch_size=None, accel: Optional[AccelMethod] = None,
               trace: bool = False) -> SampleOutput:
        state = self.start(labels, seeds=seeds, g_seed=g_seed, batch_size=batch_size, accel=accel, trace=trace)
        return self.output(self.advance(state))

    # -------------------------------------------------------------- host side
    def _labels(self, labels) -> torch.Tensor:
        """Labels as a (B,) int64 tensor on the device, checked without a host synchronisation."""
        nc, dev = self.var.num_classes, self.device
        msg = f"labels must lie in [0, {nc}] ({nc} = unconditional)"
        if isinstance(labels, torch.Tensor) and labels.device.type == "cuda":
            labels = labels.to(dev, torch.long).reshape(-1)
            torch._assert_async(((labels >= 0) & (labels <= nc)).all(), msg)
            return labels
        host = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if host.device.type == "cpu":
            if bool(((host < 0) | (host > nc)).any()):
                raise ValueError(msg)
            return noise.to_device(host, dev)
        host = host.to(dev)
        if bool(((host < 0) | (host > nc)).any()):
            raise ValueError(msg)
        return host

    def _new_state(self, labels: torch.Tensor, seeds: Optional[torch.Tensor], g_seed: Optional[int],
                   accel: Optional[AccelMethod], trace: bool, generator: Optional[torch.Generator] = None
                   ) -> SamplingState:
        """A run before its device work: the method's run state and the noise keys of every scale."""
        dev = self.device
        accel_run, capacity = None, None
        if accel is not None:
            accel_run = accel.start(RunContext(self.patch_nums, self.var.depth, labels.shape[0], seeds, g_seed, dev))
            capacity = accel.kv_capacity(self.patch_nums, self.var.depth)
        return SamplingState(
            labels=labels, seeds=seeds, cond_all=None, branch="both", kv=None, f_hat=None, next_map=None, si=0,
            indices=[], accel=accel_run, generator=generator, lvl_pos=None, trace={} if trace else None,
            token_keys=None if seeds is None else token_keys(seeds, len(self.patch_nums), dev),
            kv_capacity=self.var.kv_capacity(capacity), method=accel)

    def _plan(self, state: SamplingState) -> bool:
        """The host-side part of a scale: ask the method whether to skip (False: the run stops here) or
        to switch to one CFG half (the KV cache and the method's state keep that half's rows, as views)."""
        si, B = state.si, state.batch_size
        plan = state.accel.plan(si) if state.accel is not None else None
        if plan is not None and plan.skip:
            state.skipped_from = si
            return False
        if plan is not None and plan.branch != state.branch:
            if state.branch != "both":
                raise RuntimeError(f"scale {si}: cannot switch CFG branch from {state.branch} to {plan.branch}")
            rows = branch_rows(plan.branch, B)
            state.kv.select_rows(rows)
            state.accel.select_rows(rows)
            state.branch = plan.branch
        return True

    def _fork_capacity(self, state: SamplingState, accel: Optional[AccelMethod]) -> tuple[int, ...]:
        """KV capacity of a fork of `state`: the run's own if the fork continues with a method (its method
        state is forked), the whole sequence if it continues vanilla."""
        return state.kv_capacity if accel is not None else self.var.kv_capacity()

    def _fork_state(self, state: SamplingState, accel: Optional[AccelMethod], kv_buffers: Optional[list] = None,
                    kv_capacity: Optional[tuple[int, ...]] = None) -> SamplingState:
        """The forked run (KV cache and f_hat copied, into `kv_buffers` if given), its KV cache of
        `kv_capacity` tokens per block (None: `_fork_capacity`)."""
        other = copy.copy(state)
        other.kv_capacity = self._fork_capacity(state, accel) if kv_capacity is None else kv_capacity
        other.kv = state.kv.fork(kv_buffers, other.kv_capacity)
        other.f_hat = state.f_hat.clone()
        other.indices = list(state.indices)
        other._mods = dict(state._mods)
        other.trace = None if state.trace is None else dict(state.trace)
        other.handle = None
        if state.generator is not None:
            other.generator = torch.Generator(device=state.generator.device)
            other.generator.set_state(state.generator.get_state())
        other.accel = None if accel is None else state.accel.fork()
        other.method = accel
        return other

    # -------------------------------------------------------------- device side (captured by the engines)
    def _begin(self, state: SamplingState, kv_buffers: Optional[list] = None) -> None:
        """The device work of `start`: class embeddings of both CFG halves, position embeddings, f_hat = 0
        and the KV cache of the run's capacity (in `kv_buffers` if given)."""
        var, B = self.var, state.batch_size
        P = self.patch_nums[-1]
        state.cond_all = var.class_cond(torch.cat((state.labels, torch.full_like(state.labels, var.num_classes))))
        state.lvl_pos = var.level_pos()
        state.f_hat = torch.zeros(B, self.quantizer.z_channels, P, P, device=state.labels.device, dtype=torch.float32)
        state.kv = var.new_kv_cache(self.kv_dtype, kv_buffers, state.kv_capacity)

    def _mods(self, state: SamplingState, cond: torch.Tensor) -> list:
        """AdaLN modulations of the rows that run now (computed once per run and CFG branch)."""
        if state.branch not in state._mods:
            state._mods[state.branch] = self.var.modulations(cond)
        return state._mods[state.branch]

    def _run(self, state: SamplingState, until: int, ops: BlockOps = EAGER_OPS, step=None) -> None:
        """Scales state.si .. until−1, one `step(state)` each (default `_scale`), until the method skips the rest.
        The engines advance through it; the CPU's compiled engine traces the whole loop into one graph."""
        while state.si < until and state.skipped_from is None:
            if step is None:
                self._scale(state, ops)
            else:
                step(state)

    def _scale(self, state: SamplingState, ops: BlockOps = EAGER_OPS) -> None:
        """Scale state.si: planned on the host (`_plan`: a skip ends the run), then computed (`_compute`)."""
        if self._plan(state):
            self._compute(state, ops)

    def _compute(self, state: SamplingState, ops: BlockOps = EAGER_OPS) -> None:
        """The device part of scale state.si (after `_plan`): transformer step (its blocks' pieces by `ops`),
        CFG, token draw, f_hat update. Shapes and offsets follow from the configuration and the batch size, inputs
        are tensors: no host synchronisation, no data-dependent Python."""
        var, si, B = self.var, state.si, state.batch_size
        K = len(self.patch_nums)
        pn = self.patch_nums[si]
        cond = state.cond_all[branch_rows(state.branch, B)]
        with self._autocast():
            if si == 0:
                x = var.first_tokens(cond, state.lvl_pos)
            else:
                x = var.scale_tokens(si, state.next_map, state.lvl_pos)
                if state.branch == "both":
                    x = x.repeat(2, 1, 1)
            hooks = state.accel.begin_scale(si, state.branch) if state.accel is not None else None
            h = var.step(x, self._mods(state, cond), state.kv, hooks, ops)
            logits = var.logits(h, cond)
        if state.branch == "both":
            t = self.config.cfg * (si / (K - 1) if K > 1 else 0.0)
            guided = (1 + t) * logits[:B] - t * logits[B:]
        else:
            guided = logits
        if state.trace is not None:
            state.trace[f"x_in.{si}"] = x.float().clone()
            state.trace[f"raw_logits.{si}"] = logits.clone()
            state.trace[f"guided_logits.{si}"] = guided.clone()
        idx, h_map = self._draw(state, guided, si)
        state.indices.append(idx)
        if h_map is None:
            h_map = self.quantizer.indices_to_map(idx, pn)
        nxt = self._add_scale(si, state.f_hat, h_map.float())
        state.next_map = None if nxt is None else nxt.flatten(2).transpose(1, 2)
        if state.trace is not None:
            state.trace[f"f_hat.{si}"] = state.f_hat.clone()
        state.si += 1

    def _add_scale(self, si: int, f_hat: torch.Tensor, h_BChw: torch.Tensor) -> Optional[torch.Tensor]:
        """`MultiScaleQuantizer.next_input` with the scale's φ resolved up front: f_hat += φ(up(h)) in
        place; returns the next scale's input map (B, Cvae, pn', pn') or None after the last scale."""
        K, P = len(self.patch_nums), self.patch_nums[-1]
        if si != K - 1:  # (on CUDA one matrix product: the bicubic kernel is slow there, radar_train.interp)
            h_BChw = upsample_bicubic(h_BChw, P)
        f_hat.add_(self._phis[si](h_BChw))
        if si == K - 1:
            return None
        pn = self.patch_nums[si + 1]
        return F.interpolate(f_hat, size=(pn, pn), mode="area")

    def _draw(self, state: SamplingState, guided: torch.Tensor, si: int):
        """Token indices (B, l) for the guided logits; also the soft token map for more_smooth."""
        cfg = self.config
        B, l, V = guided.shape
        if cfg.noise == "per_sample" and 0 < cfg.top_k < V:
            return sample_top_k_per_sample(guided, state.token_keys[si], cfg.top_k, cfg.top_p), None
        filter_top_k_top_p_(guided, cfg.top_k, cfg.top_p)
        if cfg.noise == "official":
            probs = guided.softmax(dim=-1).view(-1, V)
            idx = torch.multinomial(probs, num_samples=1, replacement=True, generator=state.generator).view(B, l)
            if not cfg.more_smooth:
                return idx, None
            K = len(self.patch_nums)
            ratio = si / (K - 1) if K > 1 else 0.0
            tau = max(0.27 * (1 - ratio * 0.95), 0.005)
            scaled = guided.mul(1 + ratio)
            e = torch.empty_like(scaled, memory_format=torch.legacy_contiguous_format)
            if state.generator is not None:
                e.exponential_(generator=state.generator)
            else:
                e.exponential_()
            soft = ((scaled - e.log()) / tau).softmax(dim=-1)
            pn = self.patch_nums[si]
            h = soft @ self.quantizer.embedding.weight.unsqueeze(0)  # (B, l, Cvae)
            return idx, h.transpose(1, 2).reshape(B, self.quantizer.z_channels, pn, pn)
        return gumbel_max(guided, state.token_keys[si]), None


# ---------------------------------------------------------------------------- pairs
@torch.no_grad()
def generate_pairs(sampler: NextScaleSampler, labels, accel: AccelMethod, *, seeds=None, g_seed=None,
                   batch_size=None) -> PairOutput:
    """HQ (vanilla) and LQ (accelerated) results for the same labels and seeds.

    The scales before the method's first modified scale run once (with the method observing, e.g.
    filling its caches); the state is then forked into a vanilla branch and an accelerated branch,
    which see the same per-sample draws. HQ equals a standalone vanilla run and LQ a standalone
    accelerated run with the same seeds."""
    fork_at = accel.first_modified_scale(sampler.patch_nums)
    K = len(sampler.patch_nums)
    fork_at = K if fork_at is None else fork_at
    state = sampler.start(labels, seeds=seeds, g_seed=g_seed, batch_size=batch_size, accel=accel)
    sampler.advance(state, until=fork_at)
    hq = sampler.fork(state, accel=None)
    sampler.advance(hq)
    sampler.advance(state)
    return PairOutput(hq=sampler.output(hq), lq=sampler.output(state), fork_scale=fork_at)


def decode_images(decoder, f_hat: torch.Tensor) -> torch.Tensor:
    """f_hat -> images in [0, 1] (B, 3, H, W) with a VQVAE or LatentDecoder (clamped like the official)."""
    return decoder.fhat_to_img(f_hat).add(1).mul(0.5) if hasattr(decoder, "fhat_to_img") \
        else decoder.to_image(f_hat).add(1).mul(0.5)
