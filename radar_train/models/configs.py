"""Model configurations: the VQ-VAE and VAR hyper-parameters, named presets, and the mapping from the
official constructor keyword arguments (as found in reference fixtures) to ours.

Every official checkpoint is described by a named preset here; the `tiny` preset is a small random
model (fixed seed) for tests and the demo.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


@dataclass(frozen=True)
class VQVAEConfig:
    """Multi-scale residual VQ-VAE (VAR's `VQVAE`)."""

    vocab_size: int = 4096
    z_channels: int = 32  # Cvae
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # official value; smaller for the tiny/toy models
    num_res_blocks: int = 2  # encoder; the decoder uses num_res_blocks + 1
    dropout: float = 0.0
    beta: float = 0.25
    using_znorm: bool = False
    quant_conv_ks: int = 3
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    default_qresi_counts: int = 0
    patch_nums: tuple[int, ...] = PATCH_NUMS_256
    in_channels: int = 3
    norm_groups: int = 32  # GroupNorm groups (official 32); the toy model's 32-channel levels use fewer

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def image_size(self) -> int:
        return self.patch_nums[-1] * self.downsample

    def with_patch_nums(self, patch_nums) -> "VQVAEConfig":
        return dataclasses.replace(self, patch_nums=tuple(int(p) for p in patch_nums))

    @classmethod
    def from_official(cls, kwargs: dict[str, Any]) -> "VQVAEConfig":
        """Build from the official `VQVAE(**kwargs)` keyword arguments (reference fixtures, --official_config):
        an argument left out takes the official constructor's default, not ours."""
        kw = {**OFFICIAL_VQVAE_DEFAULTS, **kwargs}
        kw.pop("test_mode", None)
        if "v_patch_nums" in kw:
            kw["patch_nums"] = kw.pop("v_patch_nums")
        return _from_dict(cls, kw, "VQVAE_kwargs")

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


# The official constructors' defaults where ours differ (ours are those of the released checkpoints, i.e. of
# the official build_vae_var: ch 160, attn_l2_norm True); every other default is the same.
OFFICIAL_VQVAE_DEFAULTS: dict[str, Any] = {"ch": 128}
OFFICIAL_VAR_DEFAULTS: dict[str, Any] = {"attn_l2_norm": False}


@dataclass(frozen=True)
class VARConfig:
    """VAR transformer (`VAR`). `vocab_size` and `z_channels` must equal the VQ-VAE's."""

    num_classes: int = 1000
    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6
    shared_aln: bool = False
    cond_drop_rate: float = 0.1
    attn_l2_norm: bool = True
    patch_nums: tuple[int, ...] = PATCH_NUMS_256
    vocab_size: int = 4096
    z_channels: int = 32

    @property
    def num_tokens(self) -> int:  # L
        return sum(p * p for p in self.patch_nums)

    @property
    def first_l(self) -> int:
        return self.patch_nums[0] ** 2

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @classmethod
    def from_official(cls, kwargs: dict[str, Any], vae: VQVAEConfig) -> "VARConfig":
        """Build from the official `VAR(vae_local, **kwargs)` keyword arguments: an argument left out takes the
        official constructor's default, not ours."""
        kw = {**OFFICIAL_VAR_DEFAULTS, **kwargs}
        for k in ("flash_if_available", "fused_if_available", "vae_local"):
            kw.pop(k, None)
        kw.setdefault("vocab_size", vae.vocab_size)
        kw.setdefault("z_channels", vae.z_channels)
        return _from_dict(cls, kw, "VAR_kwargs")

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


def _from_dict(cls, kw: dict[str, Any], what: str):
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(kw) - set(names))
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {unknown}; known: {sorted(names)}")
    out, bad = {}, []
    for k, v in kw.items():
        default = names[k].default
        if isinstance(default, tuple):  # a list of ints (patch_nums, ch_mult)
            ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(x) and x > 0 for x in v)
            value, kind = (tuple(v) if ok else None), "a non-empty list of positive integers"
        elif isinstance(default, bool):
            ok, value, kind = isinstance(v, bool), v, "true or false"
        elif isinstance(default, int):
            ok, value, kind = _is_int(v), v, "an integer"
        else:  # float
            ok = (_is_int(v) or isinstance(v, float)) and v == v
            value, kind = (float(v) if ok else None), "a number"
        if ok:
            out[k] = value
        else:
            bad.append(f"{k} must be {kind}, got {v!r}")
    positive = ("vocab_size", "z_channels", "ch", "num_res_blocks", "norm_groups", "in_channels", "num_classes",
                "depth", "embed_dim", "num_heads", "mlp_ratio")
    bad += [f"{k} must be > 0, got {out[k]!r}" for k in positive if k in out and not out[k] > 0]
    bad += [f"{k} must be >= 0, got {out[k]!r}" for k in ("dropout", "drop_rate", "attn_drop_rate", "drop_path_rate",
                                                           "quant_resi", "default_qresi_counts", "share_quant_resi")
            if k in out and not out[k] >= 0]
    if not bad and "num_heads" in names:  # (a VAR config)
        dim, heads = (out.get(k, names[k].default) for k in ("embed_dim", "num_heads"))
        if dim % heads:
            bad.append(f"embed_dim {dim} is not a multiple of num_heads {heads}")
    if not bad and "ch_mult" in names:  # (a VQ-VAE config: its GroupNorms split each level's channels in groups)
        ch, mult, groups = (out.get(k, names[k].default) for k in ("ch", "ch_mult", "norm_groups"))
        odd = sorted({ch * m for m in (1, *mult) if ch * m % groups})
        if odd:
            bad.append(f"ch {ch} x ch_mult {list(mult)} gives {odd[0]} channels, not a multiple of norm_groups "
                       f"{groups}")
    pns = out.get("patch_nums")
    if not bad and pns is not None and any(b <= a for a, b in zip(pns, pns[1:])):
        bad.append(f"patch_nums must increase (coarse to fine, one side per scale), got {list(pns)}")
    if bad:
        raise ValueError(f"{what}: {'; '.join(bad)}")
    return cls(**out)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _to_dict(cfg) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def official_var_config(depth: int) -> VARConfig:
    """The configuration `build_vae_var` uses for the released checkpoints (d36: 512px, shared AdaLN)."""
    is_512 = depth == 36
    return VARConfig(
        num_classes=1000,
        depth=depth,
        embed_dim=64 * depth,
        num_heads=depth,
        drop_path_rate=0.1 * depth / 24,
        shared_aln=is_512,
        attn_l2_norm=True,
        patch_nums=PATCH_NUMS_512 if is_512 else PATCH_NUMS_256,
    )


@dataclass(frozen=True)
class ModelPreset:
    """A named pair of model configurations and, for random presets, the seed of their weights."""

    name: str
    vae: VQVAEConfig
    var: VARConfig
    description: str
    checkpoint_files: tuple[str, str] | None = None  # official file names (vae, var): a download hint
    init_seed: int | None = None  # random-weight presets only
    packaged_files: tuple[str, str] | None = None  # weights shipped inside the package (toy world)

    @property
    def image_size(self) -> int:
        return self.vae.with_patch_nums(self.var.patch_nums).image_size


_VAE = VQVAEConfig()
_TINY_PATCH_NUMS = (1, 2, 3, 4, 6, 8)
_TINY_VAE = VQVAEConfig(
    vocab_size=256, z_channels=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, share_quant_resi=4,
    patch_nums=_TINY_PATCH_NUMS,
)
_TINY_VAR = VARConfig(
    num_classes=10, depth=4, embed_dim=64, num_heads=4, patch_nums=_TINY_PATCH_NUMS,
    vocab_size=256, z_channels=8, drop_path_rate=0.0,
)


def _official(depth: int) -> ModelPreset:
    var = official_var_config(depth)
    res = 512 if depth == 36 else 256
    return ModelPreset(
        name=f"var-d{depth}",
        vae=_VAE.with_patch_nums(var.patch_nums),
        var=var,
        description=f"official VAR-d{depth} ({res}px) + VQ-VAE ch160 V4096 Cvae32",
        checkpoint_files=("vae_ch160v4096z32.pth", f"var_d{depth}.pth"),
    )


MODEL_PRESETS: dict[str, ModelPreset] = {
    **{f"var-d{d}": _official(d) for d in (16, 20, 24, 30, 36)},
    "tiny": ModelPreset(
        name="tiny",
        vae=_TINY_VAE,
        var=_TINY_VAR,
        description="tiny random-weight VQ-VAE + VAR (32px, 6 scales) for tests and the demo",
        init_seed=0,
    ),
}

# The VQ-VAE alone, by name (its patch_nums follow the VAR it is paired with).
VAE_PRESETS: dict[str, VQVAEConfig] = {"vae": _VAE, "tiny": _TINY_VAE}


def _import_preset_packages() -> None:
    """Import the packages that define presets outside the model layer (`radar_train.PRESET_PACKAGES`, e.g. the
    toy world): each registers its presets with `register_preset` on import. The model layer names none."""
    import importlib

    import radar_train

    for package in getattr(radar_train, "PRESET_PACKAGES", ()):
        importlib.import_module(package)


def get_preset(name: str) -> ModelPreset:
    if name not in MODEL_PRESETS:
        _import_preset_packages()
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; available: {', '.join(sorted(MODEL_PRESETS))}")
    return MODEL_PRESETS[name]


def register_preset(preset: ModelPreset) -> None:
    MODEL_PRESETS[preset.name] = preset

