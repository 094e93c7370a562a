"""The `model.label_conditioning` config group: label-conditioned PAA (radar_train/export/label_conditioning.py).

kind film adds a per-class FiLM (scale and shift) to the decoder's GroupNorms, trained jointly with the LoRA
from the caches' `label` field; its projections start at zero, so step 0 is the plain LoRA decoder.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Optional

from torch import nn

from radar_train.export.label_conditioning import ClassFiLM, group_norms

__all__ = ["LabelConditioningArgs", "build_label_conditioning"]


@dataclass
class LabelConditioningArgs:
    """Label-conditioned PAA: the decoder also sees the class label of each sample."""

    kind: Literal["none", "film"] = "none"
    """none: a plain LoRA adapter; film: a per-class scale and shift of the decoder's GroupNorm outputs (a
    shared class embedding, one zero-initialised projection per norm), trained with the LoRA."""
    num_classes: Optional[int] = None
    """Number of classes (default: the decoder preset's generator: 1000 for var-d*, 10 for toy and tiny)."""
    embed_dim: int = 64
    """Width of the class embedding shared by every modulated norm."""
    norms: str = "all"
    """Which GroupNorms are modulated: all, or a regex that must match whole module names
    (e.g. 'decoder\\.(mid|up\\.3)\\..+')."""
    lr_scale: float = 1.0
    """Learning rate of the FiLM parameters as a multiple of model.optim.learning_rate."""

    def problems(self) -> list[str]:
        p = []
        if self.num_classes is not None and self.num_classes < 1:
            p.append(f"model.label_conditioning.num_classes must be >= 1, got {self.num_classes}")
        if self.embed_dim < 1:
            p.append(f"model.label_conditioning.embed_dim must be >= 1, got {self.embed_dim}")
        if self.lr_scale <= 0:
            p.append(f"model.label_conditioning.lr_scale must be > 0, got {self.lr_scale}")
        if self.norms != "all":
            try:
                re.compile(self.norms)
            except re.error as e:
                p.append(f"model.label_conditioning.norms: not 'all' nor a valid regex: {e}")
        return p


def build_label_conditioning(decoder: nn.Module, args: LabelConditioningArgs, preset: str) -> Optional[ClassFiLM]:
    """The ClassFiLM for `decoder` (a LatentDecoder, not yet hooked), or None for kind none. ValueError if the
    norms regex matches no GroupNorm."""
    if args.kind == "none":
        return None
    from radar_train.models import get_preset

    num_classes = args.num_classes or get_preset(preset).var.num_classes
    every = group_norms(decoder)
    pattern = re.compile(".*" if args.norms == "all" else args.norms)
    norms = {n: c for n, c in every.items() if pattern.fullmatch(n)}
    if not norms:
        raise ValueError(f"model.label_conditioning.norms {args.norms!r} matches no GroupNorm of the decoder "
                         f"(e.g. {next(iter(every), '?')!r})")
    return ClassFiLM(norms, num_classes, args.embed_dim)
