"""The extension points of VAR's per-scale step, and the KV cache the step reads and extends.

The model calls `StepHooks.block` around every transformer block and `StepHooks.sublayer` around the
attention and FFN branches inside it; inside the attention, before this scale's K/V join the cache, it
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
        """Return the branch output for residual stream `x`, before the gate: the block adds γ ⊙ (this) to `x`
        (γ per row and channel). `branch(tokens)` computes SubLayer(AdaLN(tokens)) for any subset of tokens."""
        return branch(x)

    def kv_keep(self, block_idx: int) -> Optional[torch.Tensor]:
        """Token positions (1-D int64 index into the block's cache as it is before this scale's K/V join
        it) that stay in the cache; the others leave it before this scale's attention, so they are neither
        attended to nor held from now on (this scale's own K/V always join). None keeps everything."""
        return None

    def attention(self, block_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  scale: float) -> torch.Tensor:
        """Attention output (rows, heads, l, head_dim) of this scale's queries q (rows, heads, l, head_dim)
        over the cached keys/values k, v (rows, heads, n, head_dim), softmax scale `scale`. All three come in
        the KV cache's dtype (the compute dtype: bf16 under bf16 autocast); k, v are views of its buffers."""
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


def kv_capacities(capacity: int | Sequence[int], depth: int) -> tuple[int, ...]:
    """Per-block KV capacity (tokens) from one int for every block or one int per block."""
    caps = (int(capacity),) * depth if isinstance(capacity, int) else tuple(int(c) for c in capacity)
    if len(caps) != depth or any(c < 0 for c in caps):
        raise ValueError(f"KV capacity must be one token count >= 0 or one per block ({depth} blocks), got "
                         f"{capacity!r}")
    return caps


class KVCache:
    """Keys and values of the tokens cached so far, per block, in buffers preallocated to the block's
    capacity (tokens; vanilla sampling: the whole sequence, a method that evicts tokens may need fewer):
    block b holds `k[b][:, :, :n[b]]` (rows, heads, tokens, head_dim), and a scale's K/V are written in
    place after them, so a scale never copies the tokens cached before it and every offset is a Python int
    fixed by the configuration (static shapes: the step can be captured as a CUDA graph). A cache never
    grows past its capacity: `extend` and `fork` refuse (ValueError naming the block and the sizes).

    `capacity` is one token count for every block or one per block. A block's buffers are made at its first
    `extend` (rows, heads and head_dim taken from those K/V) unless `buffers` gives them: one (k, v) pair per
    block, each (rows, heads, >= capacity, head_dim), e.g. the static buffers of a captured engine (capacity
    None: the buffers' lengths). `dtype` is the storage (= compute) dtype; None keeps the K/V's own.
    """

    def __init__(self, depth: int, capacity: int | Sequence[int] | None = 0, dtype: Optional[torch.dtype] = None,
                 buffers: Optional[Sequence[tuple[torch.Tensor, torch.Tensor]]] = None):
        if capacity is None:
            capacity = 0 if buffers is None else [k.shape[2] for k, _ in buffers]
        self.capacity: tuple[int, ...] = kv_capacities(capacity, depth)
        self.dtype = dtype
        self.k: list[torch.Tensor | None] = [None] * depth if buffers is None else [k for k, _ in buffers]
        self.v: list[torch.Tensor | None] = [None] * depth if buffers is None else [v for _, v in buffers]
        self.n: list[int] = [0] * depth
        if buffers is not None:
            for b, (k, cap) in enumerate(zip(self.k, self.capacity)):
                if k.shape[2] < cap:
                    raise ValueError(f"KV buffers of block {b} hold {k.shape[2]} tokens, below the block's "
                                     f"capacity {cap}")

    def _alloc(self, block_idx: int, k: torch.Tensor) -> None:
        rows, heads, _, head_dim = k.shape
        shape, dtype = (rows, heads, self.capacity[block_idx], head_dim), self.dtype or k.dtype
        self.k[block_idx] = torch.empty(shape, dtype=dtype, device=k.device)
        self.v[block_idx] = torch.empty(shape, dtype=dtype, device=k.device)

    def extend(self, block_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this scale's k, v (rows, heads, m, head_dim); returns views of everything cached."""
        n, m, cap = self.n[block_idx], k.shape[2], self.capacity[block_idx]
        if n + m > cap:
            raise ValueError(f"KV cache of block {block_idx} holds {n} of {cap} tokens; cannot append {m}")
        if self.k[block_idx] is None:
            self._alloc(block_idx, k)
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

    def fork(self, buffers: Optional[Sequence[tuple[torch.Tensor, torch.Tensor]]] = None,
             capacity: int | Sequence[int] | None = None) -> "KVCache":
        """An independent copy: the cached tokens copied into new buffers of `capacity` (None: this cache's),
        or into `buffers` (one (k, v) per block, rows like this cache's, >= capacity tokens), so the two can
        be extended independently. ValueError if a block holds more tokens than its new capacity."""
        caps = self.capacity if capacity is None else kv_capacities(capacity, len(self.k))
        for b, (n, cap) in enumerate(zip(self.n, caps)):
            if n > cap:
                raise ValueError(f"KV cache of block {b} holds {n} tokens; a copy of capacity {cap} cannot take "
                                 f"them")
        other = KVCache(len(self.k), caps, self.dtype, buffers)
        for b, (k, v) in enumerate(zip(self.k, self.v)):
            if k is None:
                continue
            if buffers is None:
                shape = (k.shape[0], k.shape[1], caps[b], k.shape[3])
                other.k[b] = torch.empty(shape, dtype=k.dtype, device=k.device)
                other.v[b] = torch.empty(shape, dtype=v.dtype, device=v.device)
            n = self.n[b]
            other.k[b][:, :, :n].copy_(k[:, :, :n])
            other.v[b][:, :, :n].copy_(v[:, :, :n])
            other.n[b] = n
        return other

    def shallow_copy(self) -> "KVCache":
        """The same buffers with their own fill counts and row views (for snapshots of the bookkeeping)."""
        other = KVCache(len(self.k), self.capacity, self.dtype)
        other.k, other.v, other.n = list(self.k), list(self.v), list(self.n)
        return other

    def num_tokens(self, block_idx: int = 0) -> int:
        return self.n[block_idx]

    def nbytes(self) -> int:
        """Bytes of the cached K/V (the tokens held, not the buffers' capacity)."""
        return sum(2 * t.shape[0] * t.shape[1] * n * t.shape[3] * t.element_size()
                   for t, n in zip(self.k, self.n) if t is not None)

    def allocated_bytes(self) -> int:
        """Bytes of the buffers (their whole capacity; after `select_rows`, of the rows kept)."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v if t is not None)
