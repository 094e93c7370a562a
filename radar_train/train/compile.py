"""`model.optim.compile`: the decoder's blocks through `torch.compile` while training (regional compilation).

One compiled function, `block(h)`, runs every block of the decoder (resnet blocks, attention blocks,
upsampling; `Decoder.block_call`), LoRA layers and label-conditioning hooks included. Dynamo inlines the
block (its parameters are inputs of the graph, not constants), so blocks of the same shapes share one
compiled graph: a decoder compiles a handful of graphs (per input shape, grad mode, and adapters on or off),
during the first steps. The compiled graphs fuse what eager runs as separate kernels: GroupNorm, SiLU, the
residual sums and LoRA's scaled additions. The frozen decoder of inference is not touched.

Since the function takes the block as an argument, a copy of the module (the weight average of `model.ema`
deep-copies it) runs its own weights through it; the module's state dict keeps its keys (no `_orig_mod.`).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

__all__ = ["COMPILE_BACKEND", "RECOMPILE_LIMIT", "compiled_block_call", "compile_decoder_blocks"]

COMPILE_BACKEND = "inductor"  # tests use "aot_eager" (the same tracing, no code generation)
RECOMPILE_LIMIT = 64  # graphs per decoder: block shapes × grad on / off × adapters on / off


def _call(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return block(h)


def compiled_block_call(backend: Optional[str] = None) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """`block_call(block, h)`: `block(h)` through torch.compile (static shapes; backend default
    COMPILE_BACKEND), with room for one graph per kind of block call (the default limit of 8 recompilations
    of a function would send the rest eager)."""
    compiled = torch.compile(_call, backend=backend or COMPILE_BACKEND, dynamic=False)

    def block_call(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
        # skip_nnmodule_hook_guards=False: the graphs are guarded on the blocks' hooks (a label conditioning's
        # FiLM); by default dynamo would hand a decoder with hooks the graphs traced on one without them
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT,
                                        accumulated_recompile_limit=RECOMPILE_LIMIT * 4,
                                        skip_nnmodule_hook_guards=False):
            return compiled(block, h)

    return block_call


def compile_decoder_blocks(decoder: nn.Module, backend: Optional[str] = None) -> None:
    """Run the blocks of `decoder` (a LatentDecoder or its Decoder) through one compiled function."""
    inner = getattr(decoder, "decoder", decoder)
    if not hasattr(inner, "block_call"):
        raise TypeError(f"{type(inner).__name__} has no block_call: not a VQ-VAE decoder")
    inner.block_call = compiled_block_call(backend)
