"""The official VAR code (a local checkout of FoundationVision/VAR that the user names), for timing its
sampler against ours on the same weights.

Nothing of the official code lives in this project: `load_official_code(DIR)` imports `DIR/models` and
`DIR/dist.py` (absolute top-level imports inside the official files) with `DIR` put first on sys.path only
while importing, and afterwards takes the official modules out of `sys.modules` again and puts back whatever
was registered under those names before, so an unrelated `models` or `dist` module elsewhere is not
disturbed. `build_vae_var` is never called (it switches off `reset_parameters` of torch layers for the whole
process); the classes are built directly and our random state dicts loaded into them strictly (the key
layout is the official one).
"""
from __future__ import annotations

import contextlib
import importlib
import io
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

from radar_train.models.configs import VARConfig, VQVAEConfig

# The official VQVAE builds its encoder/decoder with these fixed values (vq-f16), whatever its arguments.
OFFICIAL_FIXED_VQVAE = {"ch_mult": (1, 1, 2, 2, 4), "num_res_blocks": 2, "in_channels": 3, "norm_groups": 32}

# Constructor arguments of the reference fixture tiny_a (tests/fixtures/tiny_a/config.json): the smallest
# models the official classes can build. Used by the CPU proxy for host overhead (`--setup.preset tiny`),
# since our own tiny preset's VQ-VAE (ch_mult (1, 2, 2)) is not expressible with the official VQVAE.
TINY_A_KWARGS = {
    "VQVAE_kwargs": {"vocab_size": 64, "z_channels": 8, "ch": 32, "dropout": 0.0, "beta": 0.25, "using_znorm": False,
                     "quant_conv_ks": 3, "quant_resi": 0.5, "share_quant_resi": 4, "default_qresi_counts": 0,
                     "v_patch_nums": [1, 2, 3, 4], "test_mode": True},
    "VAR_kwargs": {"num_classes": 10, "depth": 2, "embed_dim": 64, "num_heads": 4, "mlp_ratio": 4.0, "drop_rate": 0.0,
                   "attn_drop_rate": 0.0, "drop_path_rate": 0.008333333333333333, "norm_eps": 1e-06,
                   "shared_aln": False, "cond_drop_rate": 0.1, "attn_l2_norm": True, "patch_nums": [1, 2, 3, 4],
                   "flash_if_available": True, "fused_if_available": True},
}

_OWN_NAMES = ("models", "dist")


@dataclass(frozen=True)
class OfficialCode:
    """The official classes, imported from `root`."""

    root: Path
    VQVAE: type
    VAR: type


_LOADED: dict[Path, OfficialCode] = {}


def _is_official_name(name: str) -> bool:
    return name in _OWN_NAMES or name.startswith("models.")


def load_official_code(path: str | Path, option: str = "--official_var") -> OfficialCode:
    """Import the official `models.VQVAE` / `models.VAR` from the checkout at `path` (isolated, see the
    module docstring). Raises FileNotFoundError / ValueError naming `option` when the folder is wrong."""
    root = Path(path).expanduser().resolve()
    missing = [f for f in ("models/__init__.py", "models/var.py", "models/vqvae.py", "dist.py") if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{option} {path}: not a checkout of FoundationVision/VAR (missing {', '.join(missing)})")
    if root in _LOADED:
        return _LOADED[root]
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if _is_official_name(k)}
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            models: ModuleType = importlib.import_module("models")
        code = OfficialCode(root, models.VQVAE, models.VAR)
    except Exception as e:  # noqa: BLE001 - any import problem of foreign code becomes one line
        raise ValueError(f"{option} {path}: importing its models package failed: {type(e).__name__}: {e}") from e
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if _is_official_name(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
    _LOADED[root] = code
    return code


# ------------------------------------------------------------------------------------------ configurations
def official_kwargs(vae: VQVAEConfig, var: VARConfig) -> Optional[dict]:
    """Our configurations as the official constructor arguments ({"VQVAE_kwargs", "VAR_kwargs"}), or None
    when the official classes cannot build them (their VQ-VAE has a fixed channel layout)."""
    if any(getattr(vae, k) != v for k, v in OFFICIAL_FIXED_VQVAE.items()):
        return None
    if (var.vocab_size, var.z_channels) != (vae.vocab_size, vae.z_channels) or tuple(var.patch_nums) != tuple(vae.patch_nums):
        return None
    vae_kw = {f.name: getattr(vae, f.name) for f in fields(vae) if f.name not in OFFICIAL_FIXED_VQVAE}
    vae_kw["v_patch_nums"] = list(vae_kw.pop("patch_nums"))
    vae_kw["test_mode"] = True
    var_kw = {f.name: getattr(var, f.name) for f in fields(var) if f.name not in ("vocab_size", "z_channels")}
    var_kw["patch_nums"] = list(var_kw["patch_nums"])
    var_kw.update(flash_if_available=True, fused_if_available=True)
    return {"VQVAE_kwargs": vae_kw, "VAR_kwargs": var_kw}


def configs_from_official(kwargs: dict, source: str) -> tuple[VQVAEConfig, VARConfig]:
    """Our configurations equal to official constructor arguments (the fixture config.json format)."""
    try:
        vae = VQVAEConfig.from_official(kwargs["VQVAE_kwargs"])
        return vae, VARConfig.from_official(kwargs["VAR_kwargs"], vae)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{source}: needs 'VQVAE_kwargs' and 'VAR_kwargs' with the official constructor "
                         f"arguments ({type(e).__name__}: {e})") from e


def comparison_configs(preset_name: str, official_config: Optional[str]) -> tuple[VQVAEConfig, VARConfig, dict, str]:
    """(VQ-VAE config, VAR config, official kwargs, where they come from) for an official comparison:
    the file `official_config` if given, else the preset when the official classes can build it, else
    (preset `tiny`) the tiny_a fixture's configuration."""
    from radar_train.models import get_preset

    if official_config is not None:
        from radar_train.inputs import read_json

        kwargs = read_json(official_config, "--official_config file")  # one line: missing, folder, not JSON, ...
        vae, var = configs_from_official(kwargs, f"--official_config {official_config}")
        official = official_kwargs(vae, var)
        if official is None:
            raise ValueError(f"--official_config {official_config}: the official classes cannot build this model "
                             f"(VAR_kwargs and VQVAE_kwargs must agree on patch_nums, vocab_size and z_channels, and "
                             f"the VQVAE layout is fixed to {OFFICIAL_FIXED_VQVAE})")
        return vae, var, official, f"{official_config}"
    preset = get_preset(preset_name)
    vae = preset.vae.with_patch_nums(preset.var.patch_nums)
    kwargs = official_kwargs(vae, preset.var)
    if kwargs is not None:
        return vae, preset.var, kwargs, f"preset {preset_name}"
    if preset_name == "tiny":
        vae, var = configs_from_official(TINY_A_KWARGS, "tiny_a")
        return vae, var, official_kwargs(vae, var), "tiny_a (tests/fixtures/tiny_a/config.json)"
    raise ValueError(f"--setup.preset {preset_name}: the official VQVAE cannot build this model (its encoder/decoder "
                     f"layout is fixed to {OFFICIAL_FIXED_VQVAE}); give --official_config with official constructor arguments")


# ------------------------------------------------------------------------------------------ models
def build_official(code: OfficialCode, kwargs: dict, vae_state: dict, var_state: dict, device: torch.device):
    """The official VQVAE + VAR on `device` holding our weights (strict loads), eval mode, no grad."""
    def args(kw: dict) -> dict:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}

    with torch.device(device), contextlib.redirect_stdout(io.StringIO()):
        vae = code.VQVAE(**args(kwargs["VQVAE_kwargs"]))
        var = code.VAR(vae_local=vae, **args(kwargs["VAR_kwargs"]))
    vae.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in vae_state.items()}, strict=True)
    var.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in var_state.items()}, strict=True)
    # made at construction on the device official `dist` guessed (cuda when available): follow ours
    var.rng = torch.Generator(device=device)
    var.uniform_prob = var.uniform_prob.to(device)
    return vae.eval().requires_grad_(False), var.eval().requires_grad_(False)


def official_kernels(var) -> dict:
    """Which optional fast paths the official blocks picked (flash-attn / xformers / fused kernels when
    installed; otherwise torch's SDPA and unfused layers)."""
    blocks = list(getattr(var, "blocks", []))
    count = lambda f: sum(1 for b in blocks if f(b))  # noqa: E731
    return {"flash_attn": count(lambda b: getattr(b.attn, "using_flash", False)),
            "xformers": count(lambda b: getattr(b.attn, "using_xform", False)),
            "fused_add_norm": count(lambda b: getattr(b, "fused_add_norm_fn", None) is not None),
            "fused_mlp": count(lambda b: getattr(getattr(b, "ffn", None), "fused_mlp_func", None) is not None),
            "blocks": len(blocks)}


class OfficialRun:
    """Times one `VAR.autoregressive_infer_cfg` call, with its decode (`vae_proxy[0].fhat_to_img`) timed
    apart by a wrapper set on the VQVAE instance for the call (CUDA-synchronised before and after the
    decode), so the transformer loop = whole call − decode. The official code is not edited."""

    def __init__(self, var, autocast_dtype: Optional[torch.dtype], device: torch.device):
        self.var, self.amp, self.device = var, autocast_dtype, device

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, labels: torch.Tensor, g_seed: Optional[int], cfg: float, top_k: int, top_p: float,
                 more_smooth: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
        vae = self.var.vae_proxy[0]
        original = vae.fhat_to_img
        spent = {}

        def timed_decode(f_hat):
            self._sync()
            t0 = time.perf_counter()
            out = original(f_hat)
            self._sync()
            spent["decode"] = time.perf_counter() - t0
            return out

        ctx = torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext()
        had_own = "fhat_to_img" in vae.__dict__
        vae.fhat_to_img = timed_decode
        try:
            self._sync()
            t0 = time.perf_counter()
            with ctx:
                img = self.var.autoregressive_infer_cfg(labels.shape[0], labels, g_seed=g_seed, cfg=cfg, top_k=top_k,
                                                        top_p=top_p, more_smooth=more_smooth)
            self._sync()
            total = time.perf_counter() - t0
        finally:
            if had_own:
                vae.fhat_to_img = original
            else:
                del vae.fhat_to_img  # back to the class method
        return img, {"loop": total - spent["decode"], "e2e": total, "decode": spent["decode"]}
