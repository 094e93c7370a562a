"""The extension points of VAR's per-scale step, and the KV cache the step reads and extends.

The model calls `StepHooks.block` around every transformer block and `StepHooks.sublayer` around the
attention and FFN branches inside it; inside the attention, after this scale's K/V joined the cache, it
asks `StepHooks.kv_keep` which cached tokens stay (for this and every later scale) and lets
`StepHooks.attention` compute the attention itself. The defaults run everything unchanged. An
acceleration method overrides them to run a block or a branch on fewer (or mixed) tokens and restore
the full token map, or to attend sparsely and evict keys; the model itself knows nothing about any method.
"""
from __future__ import annotations

from typing import Callable, Literal, Optional

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
        over the cached keys/values k, v (rows, heads, n, head_dim), softmax scale `scale`."""
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


class KVCache:
    """Keys and values of every token processed so far, per block: (rows, heads, tokens, head_dim).

    Tensors are never modified in place (extension concatenates), so `fork()` is a cheap shallow copy
    and two forks can be extended independently.
    """

    def __init__(self, depth: int):
        self.k: list[torch.Tensor | None] = [None] * depth
        self.v: list[torch.Tensor | None] = [None] * depth

    def extend(self, block_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[block_idx] is not None:
            k = torch.cat((self.k[block_idx], k), dim=2)
            v = torch.cat((self.v[block_idx], v), dim=2)
        self.k[block_idx], self.v[block_idx] = k, v
        return k, v

    def keep(self, block_idx: int, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep only the cached tokens at `index` (1-D, into the token axis) of one block."""
        self.k[block_idx] = self.k[block_idx].index_select(2, index)
        self.v[block_idx] = self.v[block_idx].index_select(2, index)
        return self.k[block_idx], self.v[block_idx]

    def select_rows(self, index: torch.Tensor | slice) -> None:
        """Keep only the given batch rows (e.g. one CFG half) in every block."""
        self.k = [None if t is None else t[index] for t in self.k]
        self.v = [None if t is None else t[index] for t in self.v]

    def fork(self) -> "KVCache":
        other = KVCache(0)
        other.k, other.v = list(self.k), list(self.v)
        return other

    def num_tokens(self, block_idx: int = 0) -> int:
        t = self.k[block_idx]
        return 0 if t is None else t.shape[2]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v if t is not None)
