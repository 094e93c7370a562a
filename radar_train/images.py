"""Image helpers: [0,1] floats to uint8 (rounded), PNG files and labelled comparison grids (PIL)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw


def to_uint8(images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] float images (N, 3, H, W) -> uint8 with rounding (not truncation), clamped to [0, 255]."""
    return images01.detach().float().mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu()


def to_pil(image_u8: torch.Tensor) -> Image.Image:
    return Image.fromarray(image_u8.permute(1, 2, 0).numpy())


def save_png(image_u8: torch.Tensor, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image_u8).save(p)
    return p


def grid(rows: Sequence[Sequence[torch.Tensor]], col_titles: Sequence[str] | None = None,
         row_titles: Sequence[str] | None = None, scale: int = 1, pad: int = 2) -> Image.Image:
    """A grid of uint8 images (3, H, W), rows × columns, with optional column/row titles."""
    H, W = rows[0][0].shape[1:]
    H, W = H * scale, W * scale
    ncol = max(len(r) for r in rows)
    top = 14 if col_titles else 0
    left = 0
    if row_titles:
        left = 8 + 6 * max(len(t) for t in row_titles)
    canvas = Image.new("RGB", (left + ncol * (W + pad) + pad, top + len(rows) * (H + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(col_titles or []):
        draw.text((left + pad + c * (W + pad), 1), title, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        y = top + pad + r * (H + pad)
        if row_titles:
            draw.text((2, y + H // 2 - 5), row_titles[r], fill=(0, 0, 0))
        for c, img in enumerate(row):
            tile = to_pil(img)
            if scale != 1:
                tile = tile.resize((W, H), Image.NEAREST)
            canvas.paste(tile, (left + pad + c * (W + pad), y))
    return canvas


def save_grid(rows, path: str | Path, **kw) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    grid(rows, **kw).save(p)
    return p


def as_numpy_hwc(image_u8: torch.Tensor) -> np.ndarray:
    return image_u8.permute(1, 2, 0).numpy()
