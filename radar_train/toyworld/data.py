"""The toy world: a procedural image set made in code, deterministic from a seed.

Ten classes of shapes (the class is the shape alone) on a background, each image with its own colours,
position, size, rotation (within ±30°), texture (plain, stripes, checker, dots: fine detail that the
last VAR scales carry) and background (a two-colour gradient, sometimes with soft waves). Image `i`
of the set with seed `s` is a pure function of (s, i): its parameters come from a generator seeded with
`derive_seed("toyworld", s, i)`, so an image does not depend on the batch it is rendered in, and sets
with different seeds are disjoint draws (the training set uses seed 0, held-out images other seeds).

Shapes are rendered with `supersample`² samples per pixel (anti-aliased edges) in float32 on the CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from radar_train.seeding import derive_seed

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "heart", "crescent",
                                "arrow", "dumbbell")
NUM_CLASSES = len(CLASS_NAMES)
TEXTURES: tuple[str, ...] = ("plain", "stripes", "checker", "dots")

TRAIN_SEED = 0  # the training set
HELDOUT_SEED = 1  # held-out images (measurements, tests)


@dataclass(frozen=True)
class WorldConfig:
    """What varies in the toy world, and how much."""

    image_size: int = 64
    """Side of the square images in pixels."""
    supersample: int = 4
    """Samples per pixel along each axis (anti-aliasing)."""
    size_range: tuple[float, float] = (0.30, 0.40)
    """Shape radius as a fraction of the image side."""
    rotation_range_deg: tuple[float, float] = (-30.0, 30.0)
    """Range of the shape's rotation in degrees (each class keeps a recognisable upright pose, so the
    small VAR learns corners and points instead of averaging them out over all orientations)."""
    center_range: tuple[float, float] = (0.42, 0.58)
    """Range of the shape centre's x and y as a fraction of the image side."""
    period_range_px: tuple[float, float] = (10.0, 16.0)
    """Texture period in pixels."""
    texture_amount_range: tuple[float, float] = (0.15, 0.35)
    """How far the texture colour moves from the shape colour towards black or white."""
    wave_probability: float = 0.3
    """Share of backgrounds with soft waves on the gradient."""
    wave_amp_range: tuple[float, float] = (0.03, 0.06)
    """Amplitude of the background waves (image values in [0, 1])."""
    wave_period_range_px: tuple[float, float] = (16.0, 28.0)
    """Period of the background waves in pixels."""

    def problems(self, prefix: str = "world.") -> list[str]:
        """Every setting out of range, named `prefix` + field (the image size is the model's business:
        `radar_train.toyworld.recipe.ToyTrainConfig.problems`)."""
        from radar_train.toyworld.checks import at_least, share, value_range

        p = at_least(prefix, self, 1, "image_size", "supersample") + share(prefix, self, "wave_probability")
        p += value_range(prefix, self, "size_range", 0.0, open_low=True)
        p += value_range(prefix, self, "rotation_range_deg")
        p += value_range(prefix, self, "center_range", 0.0, 1.0)
        p += value_range(prefix, self, "period_range_px", 0.0, open_low=True)
        p += value_range(prefix, self, "texture_amount_range", 0.0, 1.0)
        p += value_range(prefix, self, "wave_amp_range", 0.0)
        p += value_range(prefix, self, "wave_period_range_px", 0.0, open_low=True)
        return p


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all in [0, 1]; returns (..., 3)."""
    k = np.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], axis=-1)
    return v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1)


def sample_params(seed: int, indices: Sequence[int], world: WorldConfig = WorldConfig()) -> dict[str, torch.Tensor]:
    """Parameters of images `indices` of the set `seed`: a dict of float32/int64 tensors with leading
    dimension len(indices). The label of image i is i mod 10 (balanced classes)."""
    rows = []
    for i in indices:
        rng = np.random.default_rng(derive_seed("toyworld", int(seed), int(i)))
        bright_shape = rng.random() < 0.5
        shape_hsv = (rng.random(), rng.uniform(0.55, 1.0),
                     rng.uniform(0.65, 1.0) if bright_shape else rng.uniform(0.35, 0.7))
        bg_v = (0.12, 0.42) if bright_shape else (0.72, 0.95)
        bg_hsv = np.array([[rng.random(), rng.uniform(0.15, 0.6), rng.uniform(*bg_v)] for _ in range(2)])
        rows.append(dict(
            label=int(i) % NUM_CLASSES,
            center=rng.uniform(*world.center_range, size=2),
            size=rng.uniform(*world.size_range),
            angle=math.radians(rng.uniform(*world.rotation_range_deg)),
            texture=int(rng.integers(len(TEXTURES))),
            period=rng.uniform(*world.period_range_px),
            texture_amount=rng.uniform(*world.texture_amount_range) * (1.0 if rng.random() < 0.5 else -1.0),
            shape_hsv=np.array(shape_hsv),
            bg_hsv=bg_hsv,
            bg_angle=rng.uniform(0, 2 * math.pi),
            wave_amp=rng.uniform(*world.wave_amp_range) if rng.random() < world.wave_probability else 0.0,
            wave_period=rng.uniform(*world.wave_period_range_px),
            wave_angle=rng.uniform(0, 2 * math.pi),
        ))
    out: dict[str, torch.Tensor] = {}
    for key in rows[0]:
        arr = np.stack([np.asarray(r[key]) for r in rows])
        dtype = torch.int64 if key in ("label", "texture") else torch.float32
        out[key] = torch.as_tensor(arr, dtype=dtype)
    hsv = out.pop("shape_hsv").numpy()
    out["shape_rgb"] = torch.as_tensor(_hsv_to_rgb(hsv[:, 0], hsv[:, 1], hsv[:, 2]), dtype=torch.float32)
    bg = out.pop("bg_hsv").numpy()
    out["bg_rgb"] = torch.as_tensor(_hsv_to_rgb(bg[..., 0], bg[..., 1], bg[..., 2]), dtype=torch.float32)
    return out


# ------------------------------------------------------------------------------------------ shapes
def _inside(label: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside test of shape `label` in its unit frame (radius about 1, v pointing down); bool tensor."""
    name = CLASS_NAMES[label]
    r2 = u * u + v * v
    if name == "circle":
        return r2 <= 1.0
    if name == "square":
        return torch.maximum(u.abs(), v.abs()) <= 0.8
    if name == "triangle":  # equilateral, circumradius 1, inradius 0.5
        ins = torch.ones_like(u, dtype=torch.bool)
        for k in range(3):
            a = -math.pi / 2 + 2 * math.pi * k / 3 + math.pi
            ins &= (u * math.cos(a) + v * math.sin(a)) <= 0.5
        return ins
    if name == "star":  # five points, radius 1 at the tips, 0.42 between them
        theta = torch.atan2(v, u) + math.pi / 2
        tri = (theta * 5 / (2 * math.pi)).remainder(1.0).sub(0.5).abs().mul(2)  # 1 at tips, 0 between
        return r2.sqrt() <= 0.42 + 0.58 * tri
    if name == "cross":
        return ((u.abs() <= 0.3) & (v.abs() <= 0.92)) | ((v.abs() <= 0.3) & (u.abs() <= 0.92))
    if name == "ring":
        return (r2 <= 1.0) & (r2 >= 0.58 ** 2)
    if name == "heart":
        x, y = u * 1.15, -(v * 1.15) + 0.15
        return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
    if name == "crescent":
        return (r2 <= 1.0) & ((u - 0.5) ** 2 + v * v >= 0.8 ** 2)
    if name == "arrow":
        shaft = (v.abs() <= 0.22) & (u >= -0.95) & (u <= 0.15)
        head = (u >= 0.05) & (u <= 0.95) & (v.abs() <= (0.95 - u) * 0.8)
        return shaft | head
    if name == "dumbbell":
        return ((u - 0.55) ** 2 + v * v <= 0.42 ** 2) | ((u + 0.55) ** 2 + v * v <= 0.42 ** 2) | \
            ((u.abs() <= 0.55) & (v.abs() <= 0.12))
    raise ValueError(f"unknown shape class {label}")


def _texture(kind: int, x: torch.Tensor, y: torch.Tensor, period: torch.Tensor) -> torch.Tensor:
    """Texture mask (bool, True = texture colour) of kind `kind` from shape-frame pixel coordinates."""
    name = TEXTURES[kind]
    px, py = x / period, y / period
    if name == "stripes":
        return px.remainder(1.0) < 0.5
    if name == "checker":
        return (px.floor() + py.floor()).remainder(2.0) < 0.5
    if name == "dots":
        dx, dy = px - px.round(), py - py.round()
        return dx * dx + dy * dy <= 0.32 ** 2
    return torch.zeros_like(px, dtype=torch.bool)


def _pixel_grid(n: int, step: float, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y pixel coordinates (batch, n, n) of n×n sample points spaced `step` pixels apart."""
    coords = (torch.arange(n, dtype=torch.float32) + 0.5) * step
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    return xx.expand(batch, n, n), yy.expand(batch, n, n)


def _background(params: dict[str, torch.Tensor], S: int) -> torch.Tensor:
    """Gradient along bg_angle between the two background colours plus soft waves (B, 3, S, S); smooth,
    so it is evaluated at pixel centres."""
    B = params["label"].shape[0]
    xx, yy = _pixel_grid(S, 1.0, B)

    def col(t: torch.Tensor) -> torch.Tensor:
        return t.view(B, 1, 1)

    ba, wa = params["bg_angle"], params["wave_angle"]
    proj = ((xx - S / 2) * col(ba.cos()) + (yy - S / 2) * col(ba.sin())) / (S * 0.72) + 0.5
    t = proj.clamp(0, 1).unsqueeze(1)
    c0, c1 = params["bg_rgb"][:, 0].view(B, 3, 1, 1), params["bg_rgb"][:, 1].view(B, 3, 1, 1)
    phase = ((xx * col(wa.cos()) + yy * col(wa.sin())) / col(params["wave_period"])) * (2 * math.pi)
    return c0 * (1 - t) + c1 * t + (col(params["wave_amp"]) * torch.sin(phase)).unsqueeze(1)


def _coverage(params: dict[str, torch.Tensor], S: int, ss: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel, the share of its ss×ss samples inside the shape, and inside the shape's texture
    marks: two (B, 1, S, S) maps."""
    B = params["label"].shape[0]
    xx, yy = _pixel_grid(S * ss, 1.0 / ss, B)

    def col(t: torch.Tensor) -> torch.Tensor:
        return t.view(B, 1, 1)

    # shape frame: rotate by −angle around the centre; unit = shape radius
    dx, dy = xx - col(params["center"][:, 0] * S), yy - col(params["center"][:, 1] * S)
    ca, sa = col(params["angle"].cos()), col(params["angle"].sin())
    x_px, y_px = dx * ca + dy * sa, -dx * sa + dy * ca
    rad = col(params["size"] * S)
    inside = torch.zeros(B, S * ss, S * ss, dtype=torch.bool)
    marks = torch.zeros_like(inside)
    for label in params["label"].unique().tolist():
        rows = params["label"] == label
        inside[rows] = _inside(int(label), x_px[rows] / rad[rows], y_px[rows] / rad[rows])
    for kind in params["texture"].unique().tolist():
        rows = params["texture"] == kind
        marks[rows] = _texture(int(kind), x_px[rows], y_px[rows], col(params["period"])[rows])
    cover = F.avg_pool2d(inside.float().unsqueeze(1), ss)
    cover_marks = F.avg_pool2d((inside & marks).float().unsqueeze(1), ss)
    return cover, cover_marks


def render(params: dict[str, torch.Tensor], world: WorldConfig = WorldConfig()) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] for the parameters of `sample_params`: the background, then the
    shape colour and its texture colour by their anti-aliased coverage of each pixel."""
    S, B = world.image_size, params["label"].shape[0]
    bg = _background(params, S)
    cover, cover_marks = _coverage(params, S, world.supersample)
    amount = params["texture_amount"].view(B, 1, 1, 1)
    base = params["shape_rgb"].view(B, 3, 1, 1)
    target = (amount > 0).float().expand_as(base)
    marks_rgb = base + (target - base) * amount.abs()
    img = bg * (1 - cover) + base * (cover - cover_marks) + marks_rgb * cover_marks
    return img.clamp_(0, 1)


class ToyWorld:
    """The image set with seed `seed`: image i and its label are fixed functions of (seed, i)."""

    def __init__(self, seed: int = TRAIN_SEED, world: WorldConfig = WorldConfig()):
        self.seed, self.world = int(seed), world

    def labels(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.as_tensor([int(i) % NUM_CLASSES for i in indices], dtype=torch.long)

    def images(self, indices: Sequence[int], chunk: int = 64) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1], rendered in chunks of `chunk` images."""
        indices = list(indices)
        out = [render(sample_params(self.seed, indices[i:i + chunk], self.world), self.world)
               for i in range(0, len(indices), chunk)]
        return torch.cat(out) if out else torch.zeros(0, 3, self.world.image_size, self.world.image_size)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(images in [0, 1], labels)."""
        return self.images(indices), self.labels(indices)
