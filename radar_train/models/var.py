"""VAR: class-conditional next-scale prediction transformer (AdaLN blocks, attn_l2_norm, KV-cached step).

State-dict names equal the official `var_d{16,20,24,30,36}.pth` files, buffers included (`lvl_1L`,
`attn_bias_for_masking`, `blocks.{i}.attn.zero_k_bias`).

Two ways to run it:
- `forward(labels, x_BLCv)` — teacher forcing over all L tokens with the scale-causal mask (training,
  reference checks);
- `step(x, cond, kv, hooks)` — one scale of sampling: the scale's K/V are appended to the KV cache and
  the scale's tokens attend to everything in it. The sampler owns the cache and chooses the
  rows (both CFG halves or one); `hooks` let an acceleration method run blocks/branches on subsets,
  evict cached tokens or compute the attention itself (e.g. block-sparse).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .configs import VARConfig
from .fused import EAGER_OPS, BlockOps, gated_add, modulate, unpack_qk
from .hooks import KVCache, StepHooks, kv_capacities

PASS_THROUGH = StepHooks()


class DropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep.div_(1 - self.p)


class SelfAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, attn_l2_norm: bool, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        assert embed_dim % num_heads == 0
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.attn_drop = attn_drop

    def _constants(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(qkv bias, per-head multipliers of the normalised q and k (2, heads, 1), float32). Without autograd they
        are cached until a parameter changes (in-place updates bump the tensors' version counters), saving kernels
        at every sampling step.
        Parameters made under torch.inference_mode() have no version counter: those are never cached."""
        def compute():
            bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
            mul = None
            if self.attn_l2_norm:  # exp of the float32 log (cast_body_ keeps it), rounded once to the body's dtype
                q_mul = self.scale_mul_1H11.float().clamp_max(self.max_scale_mul).exp().to(self.mat_qkv.weight.dtype)
                q_mul = q_mul.float().view(1, self.num_heads, 1)
                mul = torch.cat((q_mul, torch.ones_like(q_mul)))  # (2, heads, 1): q's multiplier, then k's
            return bias, mul

        params = (self.q_bias, self.v_bias, self.zero_k_bias) + ((self.scale_mul_1H11,) if self.attn_l2_norm else ())
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or any(p.is_inference() for p in params):
            return compute()
        key = tuple((id(p), p._version, p.dtype, p.device) for p in params)
        if getattr(self, "_const_key", None) != key:
            self._const_key, self._const_val = key, compute()
        return self._const_val

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                kv: Optional[KVCache] = None, block_idx: int = 0, hooks: Optional[StepHooks] = None,
                ops: BlockOps = EAGER_OPS) -> torch.Tensor:
        """Teacher forcing (attn_mask), or one sampling step (kv; `hooks` may evict cached tokens and
        compute the attention itself). `ops.qk_normalize` normalises q and k."""
        B, L, C = x.shape
        bias, qk_mul = self._constants()
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)
        if self.attn_l2_norm:
            q, k = unpack_qk(ops.qk_normalize(qkv, qk_mul))  # (B, H, L, c)
            v = qkv[:, :, 2].transpose(1, 2)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if kv is not None:
            # evicted tokens leave before this scale's K/V join, so the cache never holds both (its
            # capacity is the most tokens it holds after an append). It stores K/V in the compute dtype
            # (under autocast: the autocast dtype, which the attention casts every operand to anyway), so
            # no scale re-casts the cached tokens
            keep = hooks.kv_keep(block_idx) if hooks is not None else None
            if keep is not None:
                kv.keep(block_idx, keep)
            k, v = kv.extend(block_idx, k, v)
            q = q.to(k.dtype)
            out = hooks.attention(block_idx, q, k, v, self.scale) if hooks is not None else \
                F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        elif hooks is not None:
            out = hooks.attention(block_idx, q, k.to(q.dtype), v.to(q.dtype), self.scale)
        else:
            if attn_mask is not None:
                attn_mask = attn_mask.to(q.dtype)
            out = F.scaled_dot_product_attention(
                q, k.to(q.dtype), v.to(q.dtype), attn_mask=attn_mask,
                dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale,
            )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, L, C)))


class FFN(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class SharedAdaLin(nn.Linear):
    def forward(self, cond_BD: torch.Tensor) -> torch.Tensor:
        C = self.weight.shape[0] // 6
        return super().forward(cond_BD).view(-1, 1, 6, C)


class AdaLNSelfAttn(nn.Module):
    """x += γ1·Attn(LN(x)(1+s1)+b1);  x += γ2·FFN(LN(x)(1+s2)+b2)."""

    def __init__(self, cfg: VARConfig, block_idx: int, drop_path: float):
        super().__init__()
        C = cfg.embed_dim
        self.block_idx, self.C, self.shared_aln = block_idx, C, cfg.shared_aln
        self.attn = SelfAttention(C, cfg.num_heads, cfg.attn_l2_norm, cfg.attn_drop_rate, cfg.drop_rate)
        self.ffn = FFN(C, round(C * cfg.mlp_ratio), cfg.drop_rate)
        self.ln_wo_grad = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        if cfg.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(C, 6 * C))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(γ1, γ2, 1+s1, 1+s2, b1, b2), each (rows, 1, C). `cond` is the class embedding (rows, C), or
        with shared AdaLN the shared projection (rows, 1, 6, C). Depends only on the condition, so a
        sampler computes it once per run (`VAR.modulations`)."""
        if self.shared_aln:
            g1, g2, s1, s2, b1, b2 = (self.ada_gss + cond).unbind(2)
        else:
            g1, g2, s1, s2, b1, b2 = self.ada_lin(cond).view(-1, 1, 6, self.C).unbind(2)
        return g1, g2, s1.add(1), s2.add(1), b1, b2

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor], attn_mask: Optional[torch.Tensor] = None,
                kv: Optional[KVCache] = None, hooks: Optional[StepHooks] = None,
                mod: Optional[tuple[torch.Tensor, ...]] = None, ops: BlockOps = EAGER_OPS) -> torch.Tensor:
        """`ops`: the implementations of the AdaLN inputs and the q/k normalisation (`fused.BlockOps`)."""
        gamma1, gamma2, scale1p, scale2p, shift1, shift2 = self.modulation(cond) if mod is None else mod
        eps = self.ln_wo_grad.eps

        def attn_branch(t: torch.Tensor) -> torch.Tensor:
            return self.attn(ops.adaln(t, scale1p, shift1, eps), attn_mask, kv, self.block_idx, hooks, ops)

        def ffn_branch(t: torch.Tensor) -> torch.Tensor:
            return self.ffn(ops.adaln(t, scale2p, shift2, eps))

        if hooks is None and self.training and isinstance(self.drop_path, DropPath):
            x = x + self.drop_path(attn_branch(x).mul(gamma1))
            return x + self.drop_path(ffn_branch(x).mul(gamma2))
        # the hooks get the branches before their gates (γ is per row and channel, so a method that restores
        # tokens channel by channel gives the same result gating before or after); the gate joins the residual add
        sub = PASS_THROUGH if hooks is None else hooks
        x = gated_add(x, sub.sublayer(self.block_idx, "attn", x, attn_branch), gamma1)
        return gated_add(x, sub.sublayer(self.block_idx, "ffn", x, ffn_branch), gamma2)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, eps: float):
        super().__init__()
        self.C = C
        self.ln_wo_grad = nn.LayerNorm(C, eps=eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(C, 2 * C))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.C).unbind(2)
        return modulate(self.ln_wo_grad(x), scale.add(1), shift)


class VAR(nn.Module):
    def __init__(self, cfg: VARConfig):
        super().__init__()
        self.config = cfg
        C, L = cfg.embed_dim, cfg.num_tokens
        self.patch_nums = tuple(cfg.patch_nums)
        self.num_classes, self.depth, self.C = cfg.num_classes, cfg.depth, C
        self.first_l = cfg.first_l
        self.begin_ends = []
        cur = 0
        for pn in self.patch_nums:
            self.begin_ends.append((cur, cur + pn * pn))
            cur += pn * pn

        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, L, C))
        self.register_buffer("lvl_1L", torch.empty(1, L, dtype=torch.long))
        self.register_buffer("attn_bias_for_masking", torch.empty(1, 1, L, L))
        self.word_embed = nn.Linear(cfg.z_channels, C)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)
        self.lvl_embed = nn.Embedding(len(self.patch_nums), C)
        self.shared_ada_lin = (nn.Sequential(nn.SiLU(inplace=False), SharedAdaLin(C, 6 * C))
                               if cfg.shared_aln else nn.Identity())
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu").tolist()
        self.blocks = nn.ModuleList([AdaLNSelfAttn(cfg, i, dpr[i]) for i in range(cfg.depth)])
        self.head_nm = AdaLNBeforeHead(C, cfg.norm_eps)
        self.head = nn.Linear(C, cfg.vocab_size)
        if self.lvl_1L.device.type != "meta":
            self.reset_constant_buffers()

    @torch.no_grad()
    def reset_constant_buffers(self) -> None:
        """Scale index of every token, and the additive scale-causal mask (0 / −inf)."""
        dev = self.lvl_1L.device
        lvl = torch.cat([torch.full((pn * pn,), i, device=dev) for i, pn in enumerate(self.patch_nums)]).view(1, -1)
        self.lvl_1L.copy_(lvl)
        d = lvl.view(1, -1, 1)
        mask = torch.where(d >= d.transpose(1, 2), 0.0, -torch.inf).reshape(1, 1, lvl.shape[1], lvl.shape[1])
        self.attn_bias_for_masking.copy_(mask)
        for b in self.blocks:
            b.attn.zero_k_bias.zero_()

    # ------------------------------------------------------------------ embeddings
    def class_cond(self, labels: torch.Tensor) -> torch.Tensor:
        """labels in [0, num_classes] (num_classes = unconditional) -> (rows, C)."""
        return self.class_emb(labels)

    def ada_cond(self, cond: torch.Tensor) -> torch.Tensor:
        """What the blocks' AdaLN consumes: the class embedding, or the shared projection of it."""
        return self.shared_ada_lin(cond)

    def level_pos(self) -> torch.Tensor:
        """(1, L, C) level + absolute position embedding."""
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC

    def first_tokens(self, cond: torch.Tensor, lvl_pos: torch.Tensor) -> torch.Tensor:
        rows = cond.shape[0]
        return (cond.unsqueeze(1).expand(rows, self.first_l, -1) + self.pos_start.expand(rows, self.first_l, -1)
                + lvl_pos[:, : self.first_l])

    def scale_tokens(self, si: int, map_BlCv: torch.Tensor, lvl_pos: torch.Tensor) -> torch.Tensor:
        """Input tokens of scale si (si ≥ 1) from the (rows, pn², Cvae) downsampled f_hat."""
        b, e = self.begin_ends[si]
        return self.word_embed(map_BlCv) + lvl_pos[:, b:e]

    # ------------------------------------------------------------------ transformer
    def modulations(self, cond: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Every block's AdaLN modulation for the class embedding `cond` (rows, C)."""
        ada = self.ada_cond(cond)
        return [blk.modulation(ada) for blk in self.blocks]

    def step(self, x: torch.Tensor, mods: list[tuple[torch.Tensor, ...]], kv: KVCache,
             hooks: Optional[StepHooks] = None, ops: BlockOps = EAGER_OPS) -> torch.Tensor:
        """Run every block on one scale's tokens x (rows, l, C) with KV caching; returns hidden states.
        `mods` = `self.modulations(cond)` for the same rows; `ops`: the blocks' `fused.BlockOps`."""
        for blk, mod in zip(self.blocks, mods):
            if hooks is None:
                x = blk(x, None, None, kv, mod=mod, ops=ops)
            else:
                x = hooks.block(blk.block_idx, x,
                                lambda t, blk=blk, mod=mod: blk(t, None, None, kv, hooks, mod=mod, ops=ops))
        return x

    def logits(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(rows, l, C) -> float32 logits (rows, l, V)."""
        return self.head(self.head_nm(h.float(), cond)).float()

    def forward(self, labels: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, L, V). Class dropout (cond_drop_rate) applies in training mode only."""
        B = x_BLCv_wo_first_l.shape[0]
        if self.training and self.config.cond_drop_rate > 0:
            drop = torch.rand(B, device=labels.device) < self.config.cond_drop_rate
            labels = torch.where(drop, self.num_classes, labels)
        cond = self.class_cond(labels)
        with torch.autocast(device_type=cond.device.type, enabled=False):
            lvl_pos = self.level_pos()
            x = torch.cat((self.first_tokens(cond, lvl_pos),
                           self.word_embed(x_BLCv_wo_first_l.float()) + lvl_pos[:, self.first_l:]), dim=1)
        mask = self.attn_bias_for_masking[:, :, : x.shape[1], : x.shape[1]]
        ada = self.ada_cond(cond)
        for blk in self.blocks:
            x = blk(x, ada, mask)
        return self.logits(x, cond)

    def kv_capacity(self, capacity: int | Sequence[int] | None = None) -> tuple[int, ...]:
        """Per-block KV capacity in tokens: `capacity` (one count, or one per block) or, None, the whole
        sequence for every block."""
        return kv_capacities(self.config.num_tokens if capacity is None else capacity, self.depth)

    def new_kv_cache(self, dtype: Optional[torch.dtype] = None,
                     buffers: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None,
                     capacity: int | Sequence[int] | None = None) -> KVCache:
        """An empty KV cache for one sampling run: `capacity` tokens per block (one count or one per block;
        None: the whole sequence), K/V stored in `dtype` (the compute dtype; None: as the attention produces
        them), in `buffers` if given (see `kv_buffers`)."""
        return KVCache(self.depth, self.kv_capacity(capacity), dtype, buffers)

    def kv_buffers(self, rows: int, dtype: torch.dtype,
                   capacity: int | Sequence[int] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Uninitialised K/V buffers for `rows` rows, one (k, v) pair per block of `capacity` tokens (as in
        `new_kv_cache`; None: the whole sequence)."""
        a = self.blocks[0].attn
        dev = self.pos_1LC.device
        out = []
        for cap in self.kv_capacity(capacity):
            shape = (rows, a.num_heads, cap, a.head_dim)
            out.append((torch.empty(shape, dtype=dtype, device=dev), torch.empty(shape, dtype=dtype, device=dev)))
        return out

    def cast_body_(self, dtype: torch.dtype) -> "VAR":
        """Cast the blocks, AdaLN projections and head to `dtype` for autocast inference, so autocast
        does not re-cast every weight at every call. The embeddings stay float32, so the residual
        stream stays float32 as in the official fp16-autocast inference. The attention's per-head log
        temperature (scale_mul_1H11) stays float32 too: its exp, computed in float32 as the official code does
        under autocast, would otherwise come from a log rounded to `dtype` (up to 1.6 % off in bf16). Returns
        self."""
        logs = {blk.attn: blk.attn.scale_mul_1H11.data for blk in self.blocks if blk.attn.attn_l2_norm}
        for m in (self.blocks, self.head_nm, self.head, self.shared_ada_lin):
            m.to(dtype)  # (gives each parameter a new tensor: the ones in `logs` keep their dtype)
        for attn, log in logs.items():
            attn.scale_mul_1H11.data = log
        return self

    @property
    def body_dtype(self) -> torch.dtype:
        return self.head.weight.dtype
