"""Image helpers: [0,1] floats to uint8 (rounded), PNG files, labelled comparison grids and scatter charts
(PIL)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] float images (N, 3, H, W) -> uint8 with rounding (not truncation), clamped to [0, 255]."""
    return images01.detach().float().mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu()


def to_pil(image_u8: torch.Tensor) -> Image.Image:
    return Image.fromarray(image_u8.permute(1, 2, 0).numpy())


def load_rgb(path: str | Path, size: Optional[int] = None) -> torch.Tensor:
    """An image file as uint8 (3, H, W), RGB (the inverse of save_png); with `size`, brought to size × size by
    `center_crop_resize` (an image of that size already is left as it is)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None and im.size != (size, size):
            im = center_crop_resize(im, size)
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


def center_crop_resize(im: Image.Image, size: int) -> Image.Image:
    """The ImageNet reference preprocessing of guided-diffusion (ADM), which VAR's FID protocol uses: halve the
    image with a box filter while its short side is at least 2 × size, resize it bicubically so that the short
    side is `size`, then crop the centre size × size."""
    while min(im.size) >= 2 * size:
        im = im.resize(tuple(x // 2 for x in im.size), resample=Image.BOX)
    scale = size / min(im.size)
    im = im.resize(tuple(round(x * scale) for x in im.size), resample=Image.BICUBIC)
    left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
    return im.crop((left, top, left + size, top + size))


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


# ------------------------------------------------------------------------------------------ charts
CHART_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75))
CHART_MARKERS = ("circle", "square", "triangle", "diamond")
_HLINE_COLOURS = ((40, 40, 40), (120, 120, 120), (170, 120, 60))


@dataclass
class ChartPoint:
    """One labelled point of `scatter_chart`; points of the same `series` share colour and marker."""

    x: float
    y: float
    label: str
    series: str
    yerr: Optional[float] = None  # half-length of a vertical error bar


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 × 10^k) covering [lo, hi]."""
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int(math.floor((hi - first) / step + 1e-9)) + 1)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _tick_text(v: float, step: float) -> str:
    """A tick value with as many decimals as the step needs (0.25 -> 2, 0.5 -> 1, 20 -> 0)."""
    digits = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 2
    scaled = step * 10 ** digits
    return f"{v:.{min(digits + (1 if abs(scaled - round(scaled)) > 1e-6 else 0), 6)}f}"


def _marker(draw: ImageDraw.ImageDraw, kind: str, x: float, y: float, r: float, fill, outline=None) -> None:
    if kind == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=fill, outline=outline)
    elif kind == "triangle":
        draw.polygon([(x, y - r * 1.2), (x - r * 1.1, y + r * 0.8), (x + r * 1.1, y + r * 0.8)], fill=fill,
                     outline=outline)
    elif kind == "diamond":
        draw.polygon([(x, y - r * 1.3), (x + r * 1.3, y), (x, y + r * 1.3), (x - r * 1.3, y)], fill=fill,
                     outline=outline)
    else:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=outline)


def _dashed(draw: ImageDraw.ImageDraw, a: tuple[float, float], b: tuple[float, float], fill, width: int = 2,
            dash: float = 8.0) -> None:
    length = math.dist(a, b)
    n = max(1, int(length // dash))
    for i in range(0, n, 2):
        t0, t1 = i / n, min(1.0, (i + 1) / n)
        draw.line([(a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0),
                   (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)], fill=fill, width=width)


def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def scatter_chart(points: Sequence[ChartPoint], x_label: str, y_label: str, title: str = "",
                  invert_y: bool = False, front: Sequence[int] = (), links: Sequence[tuple[int, int]] = (),
                  vline: Optional[float] = None, styles: Optional[dict[str, tuple[tuple[int, int, int], str]]] = None,
                  size: tuple[int, int] = (960, 640), lines: Sequence[str] = (),
                  hlines: Sequence[tuple[float, str]] = ()) -> Image.Image:
    """A labelled scatter chart (Pillow only): axes with round ticks, one colour and marker per series
    (`styles`: series -> (RGB, circle | square | triangle | diamond); others in order of appearance; legend on
    the right), a vertical error bar where a point has `yerr`, thin lines between the point pairs `links`,
    the points `front` (indices) ringed and joined by a dashed line in the given order, an optional dotted
    vertical line at x = `vline`. `invert_y` puts small values at the top (for lower-is-better metrics, so
    that up is better). `lines`: series whose points are joined in x order by a line of their colour (a line
    chart); `hlines`: (y, name) dotted horizontal reference lines, named in the legend. Points with an empty
    label get none."""
    W, H = size
    left, right, top, bottom = 90, 230, 46 if title else 24, 64
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font, small = _font(14), _font(12)
    if not points:
        draw.text((left, H // 2), "no points to draw", fill=(0, 0, 0), font=font)
        return img
    xs = [p.x for p in points] + ([vline] if vline is not None else [])
    ys = [v for p in points for v in ((p.y - (p.yerr or 0)), (p.y + (p.yerr or 0)))] + [y for y, _ in hlines]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    x_pad, y_pad = 0.08 * ((x_hi - x_lo) or 1.0), 0.1 * ((y_hi - y_lo) or abs(y_hi) or 1.0)
    x_lo, x_hi, y_lo, y_hi = x_lo - x_pad, x_hi + 2 * x_pad, y_lo - y_pad, y_hi + y_pad  # room for labels
    pw, ph = W - left - right, H - top - bottom

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * pw

    def py(y: float) -> float:
        t = (y - y_lo) / (y_hi - y_lo)
        return top + (t if invert_y else 1 - t) * ph

    grid_c, axis_c = (228, 228, 228), (60, 60, 60)
    xt, yt = nice_ticks(x_lo, x_hi), nice_ticks(y_lo, y_hi)
    for v in xt:
        draw.line([(px(v), top), (px(v), top + ph)], fill=grid_c)
        s = _tick_text(v, xt[1] - xt[0] if len(xt) > 1 else 1.0)
        draw.text((px(v), top + ph + 6), s, fill=axis_c, font=small, anchor="mt")
    for v in yt:
        draw.line([(left, py(v)), (left + pw, py(v))], fill=grid_c)
        s = _tick_text(v, yt[1] - yt[0] if len(yt) > 1 else 1.0)
        draw.text((left - 6, py(v)), s, fill=axis_c, font=small, anchor="rm")
    draw.rectangle([left, top, left + pw, top + ph], outline=axis_c)
    if vline is not None:
        for y0 in range(top, top + ph, 6):
            draw.line([(px(vline), y0), (px(vline), min(y0 + 2, top + ph))], fill=(150, 150, 150))
    if title:
        draw.text((left + pw / 2, 12), title, fill=(0, 0, 0), font=font, anchor="mt")
    draw.text((left + pw / 2, H - 22), x_label, fill=(0, 0, 0), font=font, anchor="mt")
    lab = Image.new("RGB", (ph, 20), (255, 255, 255))
    ImageDraw.Draw(lab).text((ph / 2, 2), y_label, fill=(0, 0, 0), font=font, anchor="mt")
    img.paste(lab.rotate(90, expand=True), (8, top))

    series = list(dict.fromkeys(p.series for p in points))
    style = {s: (CHART_COLOURS[i % len(CHART_COLOURS)], CHART_MARKERS[i % len(CHART_MARKERS)])
             for i, s in enumerate(series)} | {s: v for s, v in (styles or {}).items() if s in series}
    for k, (y_ref, _) in enumerate(hlines):
        for x0 in range(left, left + pw, 8):
            draw.line([(x0, py(y_ref)), (min(x0 + 4, left + pw), py(y_ref))], fill=_HLINE_COLOURS[k % 3], width=2)
    for s in lines:
        pts = sorted(((px(p.x), py(p.y)) for p in points if p.series == s), key=lambda t: t[0])
        if len(pts) > 1 and s in style:
            draw.line(pts, fill=style[s][0], width=2)
    for a, b in links:
        draw.line([(px(points[a].x), py(points[a].y)), (px(points[b].x), py(points[b].y))], fill=(185, 185, 185))
    if len(front) > 1:
        for a, b in zip(front, front[1:]):
            _dashed(draw, (px(points[a].x), py(points[a].y)), (px(points[b].x), py(points[b].y)), (110, 110, 110))
    for i in front:
        x, y = px(points[i].x), py(points[i].y)
        draw.ellipse([x - 10, y - 10, x + 10, y + 10], outline=(90, 90, 90), width=2)
    taken = [(px(p.x) - 11, py(p.y) - 11, px(p.x) + 11, py(p.y) + 11) for p in points]  # markers (rings), labels
    for p in points:
        colour, kind = style[p.series]
        x, y = px(p.x), py(p.y)
        if p.yerr:
            y0, y1 = py(p.y - p.yerr), py(p.y + p.yerr)
            draw.line([(x, y0), (x, y1)], fill=colour, width=2)
            draw.line([(x - 4, y0), (x + 4, y0)], fill=colour, width=2)
            draw.line([(x - 4, y1), (x + 4, y1)], fill=colour, width=2)
        _marker(draw, kind, x, y, 6, colour, (0, 0, 0))
    for p in points:  # each label at the first place beside its point that overlaps nothing drawn so far
        if not p.label:
            continue
        x, y = px(p.x), py(p.y)
        places = [((x + 12, y - 4), "ls"), ((x + 12, y + 4), "lt"), ((x - 12, y - 4), "rs"), ((x - 12, y + 4), "rt"),
                  ((x, y - 13), "ms"), ((x, y + 13), "mt"), ((x + 12, y - 18), "ls"), ((x + 12, y + 18), "lt")]
        boxes = [(xy, anchor, draw.textbbox(xy, p.label, font=small, anchor=anchor)) for xy, anchor in places]
        inside = [b for b in boxes if b[2][0] >= 2 and b[2][2] <= left + pw + 10 and b[2][1] >= 0 and b[2][3] <= H]
        xy, anchor, box = next((b for b in inside if not any(_overlap(b[2], t) for t in taken)),
                               (inside or boxes)[0])  # a label never leaves the image or runs into the legend
        taken.append(box)
        draw.text(xy, p.label, fill=(30, 30, 30), font=small, anchor=anchor)

    lx, ly = left + pw + 16, top + 4
    for s in series:
        colour, kind = style[s]
        _marker(draw, kind, lx + 7, ly + 8, 6, colour, (0, 0, 0))
        draw.text((lx + 20, ly + 8), s, fill=(0, 0, 0), font=small, anchor="lm")
        ly += 22
    for k, (_, name) in enumerate(hlines):
        _dashed(draw, (lx, ly + 8), (lx + 16, ly + 8), _HLINE_COLOURS[k % 3], dash=4)
        draw.text((lx + 20, ly + 8), name, fill=(0, 0, 0), font=small, anchor="lm")
        ly += 22
    if front:
        draw.ellipse([lx - 3, ly - 2, lx + 17, ly + 18], outline=(90, 90, 90), width=2)
        _dashed(draw, (lx + 22, ly + 8), (lx + 46, ly + 8), (110, 110, 110), dash=5)
        draw.text((lx + 50, ly + 8), "Pareto front", fill=(0, 0, 0), font=small, anchor="lm")
    return img
