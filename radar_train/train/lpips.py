"""LPIPS (VGG variant, v0.1) from local weight files, for the distillation loss.

Nothing is downloaded. It needs two files:
- `vgg`: torchvision's VGG16 ImageNet weights (`vgg16-397923af.pth`; keys `features.{i}.weight|bias`,
  classifier keys are ignored), which the user provides, and
- `heads`: the LPIPS linear heads (`vgg.pth` of the `lpips` package, v0.1; keys `lin{k}.model.1.weight`). By
  default the copy that torchmetrics (a dependency) ships: it is byte-identical to the lpips 0.1.4 package's
  `weights/v0.1/vgg.pth` (sha256 below), and it is checked against that hash before it is used.

Inputs are images in [-1, 1] (N, 3, H, W); the output is the per-image distance (N,), as `lpips.LPIPS(net="vgg")`:
scale the input, take VGG16 features after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, normalise each over
channels, weight squared differences by the 1×1 heads, average over space, sum over layers.
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Optional

import torch
from torch import nn

__all__ = ["LPIPS", "load_lpips", "shipped_heads", "SHIPPED_HEADS_SHA256"]

# VGG16 `features` layout: conv channels, "M" = max-pool; LPIPS taps after the ReLU before each pool
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAP_CHANNELS = (64, 128, 256, 512, 512)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _vgg_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=False)]
            c_in = v
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """LPIPS-VGG distance; frozen, eval mode."""

    def __init__(self):
        super().__init__()
        self.features = _vgg_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _TAP_CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (x - self.shift) / self.scale
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                out.append(h)
            h = layer(h)
        out.append(h)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b: (N, 3, H, W) in [-1, 1] -> (N,) distances."""
        total = 0
        for lin, fa, fb in zip(self.lins, self._taps(a), self._taps(b)):
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((na - nb).pow(2)).mean(dim=(1, 2, 3))
        return total

    def train(self, mode: bool = True) -> "LPIPS":  # stays in eval mode
        return super().train(False)


# sha256 of the lpips 0.1.4 package's weights/v0.1/vgg.pth (and of torchmetrics' lpips_models/vgg.pth)
SHIPPED_HEADS_SHA256 = "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"


def shipped_heads() -> Path:
    """Where torchmetrics keeps its copy of the LPIPS v0.1 VGG heads; found without importing torchmetrics'
    LPIPS module (which needs torchvision)."""
    spec = importlib.util.find_spec("torchmetrics")
    root = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    return (root or Path("torchmetrics")) / "functional" / "image" / "lpips_models" / "vgg.pth"


def _shipped_heads_checked(option: str) -> str:
    """The shipped heads' path once its bytes are the lpips package's; otherwise a one-line error that says to
    pass the heads file."""
    p = shipped_heads()
    if not p.is_file():
        raise FileNotFoundError(f"{option} not given and torchmetrics' copy of the LPIPS v0.1 heads ({p}) is missing: "
                                f"pass {option} <the lpips package's weights/v0.1/vgg.pth>")
    if hashlib.sha256(p.read_bytes()).hexdigest() != SHIPPED_HEADS_SHA256:
        raise ValueError(f"{option} not given and torchmetrics' copy of the LPIPS heads ({p}) is not the lpips "
                         f"0.1.4 package's weights/v0.1/vgg.pth (sha256 differs): pass {option} <that file>")
    return str(p)


def _read(path: str, what: str) -> dict[str, torch.Tensor]:
    from radar_train.models.checkpoint import read_state_dict

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p}: file not found (LPIPS needs local weights; nothing is downloaded)")
    return read_state_dict(p)


def load_lpips(vgg: str, heads: Optional[str] = None,
               options: tuple[str, str] = ("model.loss.lpips_vgg", "model.loss.lpips_heads")) -> LPIPS:
    """Build LPIPS-VGG from the two local files (see the module docstring; `heads` None: torchmetrics' copy of
    the lpips package's heads). One-line errors name the file and the option that gave it (`options`: the VGG's,
    the heads')."""
    model = LPIPS()
    if heads is None:
        heads = _shipped_heads_checked(options[1])
    vgg_sd = _read(vgg, options[0])
    feats = {k[len("features."):]: v for k, v in vgg_sd.items() if k.startswith("features.")}
    try:
        model.features.load_state_dict(feats, strict=True)
    except RuntimeError as e:  # (torch's first line only says "Error(s) in loading state_dict for Sequential:")
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__
        raise ValueError(f"{options[0]} {vgg}: not torchvision VGG16 weights ({detail[:160]})") from None
    head_sd = _read(heads, options[1])
    lins = {}
    for k, v in head_sd.items():
        if k.startswith("lin") and k.endswith(".weight"):  # lin{k}.model.1.weight -> {k}.weight
            lins[f"{k[3:].split('.', 1)[0]}.weight"] = v
    try:
        model.lins.load_state_dict(lins, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{options[1]} {heads}: not the LPIPS v0.1 VGG heads "
                         f"({str(e).splitlines()[0][:120]})") from None
    return model
