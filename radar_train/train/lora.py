"""LoRA on the frozen VQ-VAE decoder with peft: target selection, injection, parameter counts.

Targets are chosen by a full-match regex over module names of `LatentDecoder` (`post_quant_conv`,
`decoder.conv_in`, `decoder.mid.block_1.conv1`, `decoder.up.2.attn.0.qkv`, ...). Only `nn.Conv2d`
modules among the matches are adapted (the regex may also match GroupNorms or identity shortcuts;
they are skipped). peft receives the resolved names as one exact alternation regex, so the
`adapter_config.json` it writes selects the same modules when loaded onto a fresh decoder.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Optional

from torch import nn

__all__ = ["LoraArgs", "TARGET_PRESETS", "resolve_targets", "build_lora_config", "inject_lora", "parameter_counts",
           "lora_state_dict"]

log = logging.getLogger(__name__)

#: Named target sets (methods.md §4.4). `{last}` is replaced by the index of the latent-resolution up level.
TARGET_PRESETS: dict[str, str] = {
    # every conv of post_quant_conv + decoder except conv_out
    "all": r"post_quant_conv|decoder\.(?!conv_out$).+",
    # ablation: post_quant_conv, conv_in, mid block and the latent-resolution up level
    "early": r"post_quant_conv|decoder\.conv_in|decoder\.mid\..+|decoder\.up\.{last}\..+",
}


@dataclass
class LoraArgs:
    """LoRA adapters on the decoder (methods.md §4.4)."""

    rank: int = 16
    """LoRA rank r (capped per layer at min(r, C_out, C_in·k²))."""
    alpha: float = 16.0
    """LoRA alpha; the update is scaled by alpha / rank (a capped layer: alpha / its capped rank, peft's rule)."""
    dropout: float = 0.0
    """Dropout on the LoRA branch input."""
    targets: str = "all"
    """Target preset (all: every decoder conv + post_quant_conv except conv_out; early: post_quant_conv,
    conv_in, mid block, latent-resolution up level) or a regex that must match whole module names
    (peft rules), e.g. 'post_quant_conv|decoder\\.mid\\..+'. Only nn.Conv2d matches are adapted."""
    cap_rank: bool = True
    """Cap the rank of a layer at min(r, C_out, C_in·k²) (a larger rank adds no expressiveness; the capped
    layer's update is then scaled by alpha / its capped rank, so it trains a little faster than uncapped)."""

    def problems(self) -> list[str]:
        p = []
        if self.rank < 1:
            p.append(f"model.lora.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            p.append(f"model.lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            p.append(f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        if self.targets not in TARGET_PRESETS:
            try:
                re.compile(self.targets)
            except re.error as e:
                p.append(f"model.lora.targets: not a preset ({', '.join(TARGET_PRESETS)}) nor a valid regex: {e}")
        return p


def _pattern(decoder: nn.Module, targets: str) -> str:
    if targets not in TARGET_PRESETS:
        return targets
    n_levels = len(decoder.decoder.up) if hasattr(decoder, "decoder") else 1
    return TARGET_PRESETS[targets].replace("{last}", str(n_levels - 1))


def resolve_targets(decoder: nn.Module, targets: str) -> list[str]:
    """Names of the nn.Conv2d modules of `decoder` whose whole name matches the preset or regex,
    in module order. Raises ValueError if none matches."""
    pattern = re.compile(_pattern(decoder, targets))
    names = [n for n, m in decoder.named_modules() if isinstance(m, nn.Conv2d) and pattern.fullmatch(n)]
    if not names:
        convs = [n for n, m in decoder.named_modules() if isinstance(m, nn.Conv2d)]
        raise ValueError(f"model.lora.targets {targets!r} matches no Conv2d of the decoder "
                         f"(a regex must match whole names, e.g. {convs[1]!r}; presets: {', '.join(TARGET_PRESETS)})")
    return names


def _capped_ranks(decoder: nn.Module, names: list[str], rank: int) -> dict[str, int]:
    modules = dict(decoder.named_modules())
    out = {}
    for n in names:
        conv: nn.Conv2d = modules[n]
        k = conv.kernel_size[0] * conv.kernel_size[1]
        cap = min(rank, conv.out_channels, conv.in_channels // conv.groups * k)
        if cap < rank:
            out[n] = cap
    return out


def build_lora_config(decoder: nn.Module, args: LoraArgs):
    """A peft LoraConfig for `decoder`: exact target names as one regex, capped ranks in rank_pattern."""
    from peft import LoraConfig

    names = resolve_targets(decoder, args.targets)
    rank_pattern = _capped_ranks(decoder, names, args.rank) if args.cap_rank else {}
    # peft matches rank_pattern keys as regexes against name endings: escape the dots
    rank_pattern = {re.escape(n): r for n, r in rank_pattern.items()}
    return LoraConfig(
        r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout, bias="none",
        target_modules="^(" + "|".join(re.escape(n) for n in names) + ")$",
        rank_pattern=rank_pattern, init_lora_weights=True,
    )


def inject_lora(decoder: nn.Module, args: LoraArgs):
    """Freeze every parameter of `decoder`, then wrap it in a peft `PeftModel` with LoRA on the targets.
    Only the LoRA parameters require grad. The decoder is modified in place (its convs become
    `lora.Conv2d` wrappers around the original layers)."""
    from peft import get_peft_model

    decoder.requires_grad_(False)
    model = get_peft_model(decoder, build_lora_config(decoder, args))
    bad = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    assert not bad, f"non-LoRA parameters left trainable: {bad[:3]}"
    return model


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen


def lora_state_dict(model: nn.Module, prefix: Optional[str] = None) -> dict:
    """The LoRA tensors of `model`'s state dict (keys containing 'lora_'), optionally under a key prefix."""
    sd = model.state_dict(prefix=prefix or "")
    return {k: v for k, v in sd.items() if ".lora_" in k}
