"""Class-conditional next-scale sampling with CFG, top-k/top-p, pluggable acceleration and forking.

Noise modes
- `official`: one generator per call, re-seeded with the call's seed; `torch.multinomial` over all rows
  at once (exactly the official `autoregressive_infer_cfg`). A sample depends on its batch.
- `per_sample` (default): every sample's token draws come from a counter-based stream keyed by its own
  seed and the scale index (`radar_train.noise`); a token is the Gumbel-max of the filtered logits. A sample's result does not
  depend on the batch it is in or its position, and an accelerated run sees the same noise as the
  vanilla run of the same seed, which couples HQ/LQ pairs.

The loop is a small state machine (`SamplingState`) so that a run can be advanced to a scale, forked,
and each fork continued with its own acceleration method (`generate_pairs`).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from radar_train.accel.base import AccelMethod, AccelRun, Branch, RunContext, branch_rows
from radar_train import noise
from radar_train.config import Noise, SamplingConfig
from radar_train.models.quantizer import MultiScaleQuantizer
from radar_train.models.var import VAR
from radar_train.seeding import derive_seed, make_generator

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
    labels: torch.Tensor  # (B,)
    seeds: Optional[torch.Tensor]  # (B,) per_sample
    cond_all: torch.Tensor  # (2B, C): conditional rows then unconditional rows
    branch: Branch
    kv: object
    f_hat: torch.Tensor
    next_map: Optional[torch.Tensor]  # (B, pn², Cvae) input of scale `si`, None before scale 0
    si: int
    indices: list[torch.Tensor]
    accel: Optional[AccelRun]
    generator: Optional[torch.Generator]  # official noise
    lvl_pos: torch.Tensor
    skipped_from: Optional[int] = None
    trace: Optional[dict[str, torch.Tensor]] = None
    _mods: dict = field(default_factory=dict)  # CFG branch -> per-block AdaLN modulations

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]


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
        remove[..., -1:] = False
        logits.masked_fill_(remove.scatter(sorted_idx.ndim - 1, sorted_idx, remove), -torch.inf)
    return logits


def gumbel_keys(seeds: Sequence[int], si: int, device) -> torch.Tensor:
    """Keys of the per-sample token-noise streams at scale si."""
    return noise.key_tensor([derive_seed(int(s), si, "token") for s in seeds], device)


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
        remove[..., 0] = False
        vals = vals.masked_fill(remove, -torch.inf)
    pos = torch.arange(l, device=cand.device, dtype=torch.int64).view(1, l, 1) * V
    g = noise.gumbel_at(keys, pos + cand)
    return cand.gather(-1, torch.argmax(vals + g, dim=-1, keepdim=True)).squeeze(-1)


# ---------------------------------------------------------------------------- the sampler
class NextScaleSampler:
    """Runs VAR + the VQ-VAE quantizer (no decoding) scale by scale."""

    def __init__(self, var: VAR, quantizer: MultiScaleQuantizer, config: SamplingConfig = SamplingConfig(),
                 autocast_dtype: Optional[torch.dtype] = None):
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

    @property
    def device(self) -> torch.device:
        return self.var.pos_1LC.device

    def _autocast(self):
        if self.autocast_dtype is None or self.autocast_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    # -------------------------------------------------------------- public API
    @torch.no_grad()
    def start(self, labels: torch.Tensor | int | None, *, batch_size: Optional[int] = None,
              seeds: Optional[torch.Tensor | Sequence[int]] = None, g_seed: Optional[int] = None,
              accel: Optional[AccelMethod] = None, trace: bool = False) -> SamplingState:
        """Prepare a run. per_sample noise needs `seeds` (one per sample); official noise takes `g_seed`
        (None = the global RNG) and accepts `labels` None (drawn uniformly) or an int (negative =
        unconditional)."""
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
        labels = torch.as_tensor(labels, dtype=torch.long, device=dev).reshape(-1)
        B = labels.shape[0]
        if bool(((labels < 0) | (labels > var.num_classes)).any()):
            raise ValueError(f"labels must lie in [0, {var.num_classes}] ({var.num_classes} = unconditional)")
        if self.config.noise == "per_sample":
            if seeds is None:
                raise ValueError("per_sample noise needs one seed per sample (seeds=...)")
            seeds = torch.as_tensor(seeds, dtype=torch.long).reshape(-1).cpu()
            if seeds.shape[0] != B:
                raise ValueError(f"got {seeds.shape[0]} seeds for {B} labels")
        else:
            seeds = None
        accel_run = None
        if accel is not None:
            accel.validate(self.patch_nums, var.depth)
            ctx = RunContext(self.patch_nums, var.depth, B, seeds, g_seed, dev)
            accel_run = accel.start(ctx)
        cond_all = var.class_cond(torch.cat((labels, torch.full_like(labels, var.num_classes))))
        P = self.patch_nums[-1]
        return SamplingState(
            labels=labels, seeds=seeds, cond_all=cond_all, branch="both", kv=var.new_kv_cache(),
            f_hat=torch.zeros(B, self.quantizer.z_channels, P, P, device=dev, dtype=torch.float32),
            next_map=None, si=0, indices=[], accel=accel_run, generator=generator, lvl_pos=var.level_pos(),
            trace={} if trace else None,
        )

    @torch.no_grad()
    def advance(self, state: SamplingState, until: Optional[int] = None) -> SamplingState:
        """Run scales state.si .. until−1 (default: to the end or until the method skips the rest)."""
        K = len(self.patch_nums)
        until = K if until is None else min(until, K)
        while state.si < until and state.skipped_from is None:
            self._scale(state)
        return state

    @torch.no_grad()
    def fork(self, state: SamplingState, accel: Optional[AccelMethod] = None) -> SamplingState:
        """An independent copy of the run. The copy continues with `accel` (None: vanilla); the method's
        state is forked from the original only if it is the same method, else started fresh."""
        other = copy.copy(state)
        other.kv = state.kv.fork()
        other.f_hat = state.f_hat.clone()
        other.indices = list(state.indices)
        other._mods = dict(state._mods)
        other.trace = None if state.trace is None else dict(state.trace)
        if state.generator is not None:
            other.generator = torch.Generator(device=state.generator.device)
            other.generator.set_state(state.generator.get_state())
        if accel is None:
            other.accel = None
        elif state.accel is not None:
            other.accel = state.accel.fork()
        else:
            raise ValueError("cannot fork into an accelerated run from a run without its method state")
        return other

    def output(self, state: SamplingState) -> SampleOutput:
        B = state.batch_size
        idx = list(state.indices)
        for pn in self.patch_nums[len(idx):]:
            idx.append(torch.full((B, pn * pn), -1, dtype=torch.long, device=state.f_hat.device))
        return SampleOutput(state.f_hat, idx, state.skipped_from, state.trace)

    def sample(self, labels, *, seeds=None, g_seed=None, batch_size=None, accel: Optional[AccelMethod] = None,
               trace: bool = False) -> SampleOutput:
        state = self.start(labels, seeds=seeds, g_seed=g_seed, batch_size=batch_size, accel=accel, trace=trace)
        return self.output(self.advance(state))

    # -------------------------------------------------------------- one scale
    def _mods(self, state: SamplingState, cond: torch.Tensor) -> list:
        """AdaLN modulations of the rows that run now (computed once per run and CFG branch)."""
        if state.branch not in state._mods:
            state._mods[state.branch] = self.var.modulations(cond)
        return state._mods[state.branch]

    def _scale(self, state: SamplingState) -> None:
        var, si, B = self.var, state.si, state.batch_size
        K = len(self.patch_nums)
        pn = self.patch_nums[si]
        plan = state.accel.plan(si) if state.accel is not None else None
        if plan is not None and plan.skip:
            state.skipped_from = si
            return
        if plan is not None and plan.branch != state.branch:
            if state.branch != "both":
                raise RuntimeError(f"scale {si}: cannot switch CFG branch from {state.branch} to {plan.branch}")
            rows = branch_rows(plan.branch, B)
            state.kv.select_rows(rows)
            state.accel.select_rows(rows)
            state.branch = plan.branch
        cond = state.cond_all[branch_rows(state.branch, B)]
        with self._autocast():
            if si == 0:
                x = var.first_tokens(cond, state.lvl_pos)
            else:
                x = var.scale_tokens(si, state.next_map, state.lvl_pos)
                if state.branch == "both":
                    x = x.repeat(2, 1, 1)
            hooks = state.accel.begin_scale(si, state.branch) if state.accel is not None else None
            h = var.step(x, self._mods(state, cond), state.kv, hooks)
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
        f_hat, nxt = self.quantizer.next_input(si, state.f_hat, h_map.float(), self.patch_nums)
        state.f_hat = f_hat
        state.next_map = None if nxt is None else nxt.flatten(2).transpose(1, 2)
        if state.trace is not None:
            state.trace[f"f_hat.{si}"] = f_hat.clone()
        state.si += 1

    def _draw(self, state: SamplingState, guided: torch.Tensor, si: int):
        """Token indices (B, l) for the guided logits; also the soft token map for more_smooth."""
        cfg = self.config
        B, l, V = guided.shape
        if cfg.noise == "per_sample" and 0 < cfg.top_k < V:
            keys = gumbel_keys(state.seeds.tolist(), si, guided.device)
            return sample_top_k_per_sample(guided, keys, cfg.top_k, cfg.top_p), None
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
        return gumbel_max(guided, gumbel_keys(state.seeds.tolist(), si, guided.device)), None


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
