"""The extension points of VAR's per-scale step, and the KV cache the step reads and extends.

The model calls `StepHooks.block` around every transformer block and `StepHooks.sublayer` around the
attention and FFN branches inside it; inside the attention, after this scale's K/V joined the cache, it
asks `StepHooks.kv_keep` which cached tokens stay (for this and every later scale) and lets
`StepHooks.attention` compute the attention itself. The defaults run everything unchanged. An
acceleration method overrides them to run a block or a branch on fewer (or mixed) tokens and restore
the full token map, or to attend sparsely and evict keys; the model itself knows nothing about any method.
"""
from __future__ import annotations

from typing import Callable, Literal, Optional, Sequence

import torch
import torch.nn.functional as F

SubLayer = Literal["attn", "ffn"]


class StepHooks:
    """Pass-through hooks. Shapes: x (rows, tokens, C)."""

    def block(self, block_idx: int, x: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Return the block's output for input `x`; `run(tokens)` runs the block on any token map
        (its attention appends the K/V of exactly the tokens it is given)."""
        return run(x)

    def sublayer(self, block_idx: int, kind: SubLayer, x: torch.Tensor,
                 branch: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Return the gated branch output (to be added to `x`) for residual stream `x`;
        `branch(tokens)` computes γ ⊙ SubLayer(AdaLN(tokens)) for any subset of tokens."""
        return branch(x)

    def kv_keep(self, block_idx: int) -> Optional[torch.Tensor]:
        """Token positions (1-D int64 index into the block's cache, which already holds this scale's K/V)
        that stay in the cache; the others leave it for this scale's attention and every later one.
        None keeps everything."""
        return None

    def attention(self, block_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  scale: float) -> torch.Tensor:
        """Attention output (rows, heads, l, head_dim) of this scale's queries q (rows, heads, l, head_dim)
        over the cached keys/values k, v (rows, heads, n, head_dim), softmax scale `scale`. All three come in
        the KV cache's dtype (the compute dtype: bf16 under bf16 autocast); k, v are views of its buffers."""
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


class KVCache:
    """Keys and values of every token processed so far, per block, in buffers preallocated to the whole
    sequence: block b holds `k[b][:, :, :n[b]]` (rows, heads, tokens, head_dim), and a scale's K/V are
    written in place after them, so a scale never copies the tokens cached before it and every offset is
    a Python int fixed by the configuration (static shapes: the step can be captured as a CUDA graph).

    A block's buffers are made at its first `extend` (rows, heads and head_dim taken from those K/V) unless
    `buffers` gives them: one (k, v) pair per block, each (rows, heads, capacity, head_dim), e.g. the static
    buffers of a captured engine. `dtype` is the storage (= compute) dtype; None keeps the K/V's own.
    """

    def __init__(self, depth: int, capacity: int = 0, dtype: Optional[torch.dtype] = None,
                 buffers: Optional[Sequence[tuple[torch.Tensor, torch.Tensor]]] = None):
        self.capacity, self.dtype = capacity, dtype
        self.k: list[torch.Tensor | None] = [None] * depth if buffers is None else [k for k, _ in buffers]
        self.v: list[torch.Tensor | None] = [None] * depth if buffers is None else [v for _, v in buffers]
        self.n: list[int] = [0] * depth

    def _alloc(self, block_idx: int, k: torch.Tensor) -> None:
        rows, heads, m, head_dim = k.shape
        if m > self.capacity:
            raise ValueError(f"KV cache of capacity {self.capacity} tokens cannot take {m}")
        shape, dtype = (rows, heads, self.capacity, head_dim), self.dtype or k.dtype
        self.k[block_idx] = torch.empty(shape, dtype=dtype, device=k.device)
        self.v[block_idx] = torch.empty(shape, dtype=dtype, device=k.device)

    def extend(self, block_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this scale's k, v (rows, heads, m, head_dim); returns views of everything cached."""
        if self.k[block_idx] is None:
            self._alloc(block_idx, k)
        n, m = self.n[block_idx], k.shape[2]
        if n + m > self.k[block_idx].shape[2]:
            raise ValueError(f"KV cache of block {block_idx} holds {n} of {self.k[block_idx].shape[2]} tokens; "
                             f"cannot append {m}")
        self.k[block_idx][:, :, n: n + m].copy_(k)
        self.v[block_idx][:, :, n: n + m].copy_(v)
        self.n[block_idx] = n + m
        return self.k[block_idx][:, :, : n + m], self.v[block_idx][:, :, : n + m]

    def keep(self, block_idx: int, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep only the cached tokens at `index` (1-D, into the token axis; its length is static) of one
        block, compacted in place to the front of its buffers."""
        m = index.shape[0]
        for buf in (self.k[block_idx], self.v[block_idx]):
            buf[:, :, :m].copy_(buf[:, :, : self.n[block_idx]].index_select(2, index))
        self.n[block_idx] = m
        return self.k[block_idx][:, :, :m], self.v[block_idx][:, :, :m]

    def select_rows(self, index: torch.Tensor | slice) -> None:
        """Keep only the given batch rows (e.g. one CFG half) in every block (a slice: views of the buffers)."""
        self.k = [None if t is None else t[index] for t in self.k]
        self.v = [None if t is None else t[index] for t in self.v]

    def fork(self, buffers: Optional[Sequence[tuple[torch.Tensor, torch.Tensor]]] = None) -> "KVCache":
        """An independent copy: the cached tokens copied into new buffers (or into `buffers`, one (k, v) per
        block shaped like this cache's), so the two can be extended independently."""
        other = KVCache(len(self.k), self.capacity, self.dtype, buffers)
        for b, (k, v) in enumerate(zip(self.k, self.v)):
            if k is None:
                continue
            if buffers is None:
                other.k[b], other.v[b] = torch.empty_like(k), torch.empty_like(v)
            n = self.n[b]
            other.k[b][:, :, :n].copy_(k[:, :, :n])
            other.v[b][:, :, :n].copy_(v[:, :, :n])
            other.n[b] = n
        return other

    def shallow_copy(self) -> "KVCache":
        """The same buffers with their own fill counts and row views (for snapshots of the bookkeeping)."""
        other = KVCache(0, self.capacity, self.dtype)
        other.k, other.v, other.n = list(self.k), list(self.v), list(self.n)
        return other

    def num_tokens(self, block_idx: int = 0) -> int:
        return self.n[block_idx]

    def nbytes(self) -> int:
        """Bytes of the cached K/V (the tokens held, not the buffers' capacity)."""
        return sum(2 * t.shape[0] * t.shape[1] * n * t.shape[3] * t.element_size()
                   for t, n in zip(self.k, self.n) if t is not None)

    def allocated_bytes(self) -> int:
        """Bytes of the buffers (their whole capacity)."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v if t is not None)
