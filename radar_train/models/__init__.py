"""VQ-VAE and VAR models (official checkpoint layout), named presets and loaders.

The models know nothing of caches, Lightning or LoRA.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

import torch

from .checkpoint import (CheckpointError, check_checkpoint_path, file_sha256, load_var_weights, load_vqvae_weights,
                         read_state_dict, save_weights)
from .configs import MODEL_PRESETS, ModelPreset, VARConfig, VQVAEConfig, get_preset
from .hooks import KVCache, StepHooks
from .init import init_random_
from .var import VAR
from .vqvae import VQVAE, LatentDecoder

__all__ = [
    "VAR", "VQVAE", "LatentDecoder", "VARConfig", "VQVAEConfig", "ModelPreset", "MODEL_PRESETS", "get_preset",
    "KVCache", "StepHooks", "CheckpointError", "build_vqvae", "build_var", "load_models", "load_latent_decoder",
    "ModelIdentity", "identity_seed", "save_weights", "read_state_dict",
]


def build_vqvae(cfg: VQVAEConfig, device: torch.device | str = "cpu") -> VQVAE:
    with torch.device(device):
        return VQVAE(cfg)


def build_var(cfg: VARConfig, device: torch.device | str = "cpu") -> VAR:
    with torch.device(device):
        return VAR(cfg)


@dataclass(frozen=True)
class ModelIdentity:
    """What identifies a set of weights: sha256 of the checkpoint file, or a random preset + its seed."""

    kind: str  # "file" | "random"
    value: str  # sha256 hex, or "<preset>:seed=<n>"
    config: dict

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value, "config": self.config}

    @staticmethod
    def from_dict(d: dict) -> "ModelIdentity":
        return ModelIdentity(d["kind"], d["value"], d["config"])


def _random_model(build, cfg, seed: int) -> torch.nn.Module:
    """`build(cfg)` (on the CPU) with the seeded random weights of `init_random_`, leaving torch's global RNG as it
    was: the modules' default init draws from it before `init_random_` overwrites every weight from its own
    generator, and a caller's later sampling (or training) would otherwise depend on whether a model was loaded.
    The weights are those of `init_random_(build(cfg), seed)`."""
    with torch.random.fork_rng(devices=[]):
        return init_random_(build(cfg), seed)


def _identity(preset: ModelPreset, checkpoint: Optional[str], seed: Optional[int], cfg) -> ModelIdentity:
    """A checkpoint file's sha256, or (no file) the random preset and its seed."""
    if checkpoint is not None:
        return ModelIdentity("file", file_sha256(checkpoint), cfg.to_dict())
    return ModelIdentity("random", f"{preset.name}:seed={seed}", cfg.to_dict())


def _file_state(path: Optional[str]) -> Optional[tuple]:
    """(inode, size, modification time) of a weights file about to be read; None without a file."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:  # (not there, or not a path: the loader says so)
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _unchanged_since(path: Optional[str], before: Optional[tuple]) -> None:
    """CheckpointError if the file was written or replaced since `before` (its weights were read, then the file
    hashed for its identity: the two must be the same bytes, or a cache would record another file's identity)."""
    if path is not None and _file_state(path) != before:
        raise CheckpointError(f"{path}: changed while it was being read (written or replaced meanwhile): run again "
                              f"once it is complete")


def identity_seed(identity: dict) -> Optional[int]:
    """The seed of a random preset's identity as recorded ({"kind": "random", "value": "<preset>:seed=<n>"},
    `_identity`'s form); None for a file's."""
    m = re.search(r"seed=(\d+)", str(identity.get("value", "")))
    return int(m.group(1)) if identity.get("kind") == "random" and m else None


def _resolve(preset: ModelPreset, vae_checkpoint, var_checkpoint, init_seed, need_var: bool = True):
    """(vae file, var file, seed): files win; random presets fall back to their seed, packaged presets
    (toy) to their packaged files; official presets need the files."""
    if preset.packaged_files is not None:
        vae_checkpoint = vae_checkpoint or preset.packaged_files[0]
        var_checkpoint = var_checkpoint or preset.packaged_files[1]
    seed = init_seed if init_seed is not None else preset.init_seed
    missing = [name for name, f in (("model.vae_checkpoint", vae_checkpoint), ("model.var_checkpoint", var_checkpoint))
               if f is None and (need_var or name == "model.vae_checkpoint")]
    if missing and seed is None:
        hint = f" (download {' and '.join(preset.checkpoint_files)} yourself; no code path downloads anything)" \
            if preset.checkpoint_files else ""
        raise ValueError(f"model preset {preset.name!r} needs {' and '.join(missing)}{hint}")
    return vae_checkpoint, var_checkpoint, seed


def var_identity_value(preset_name: str, vae_checkpoint: Optional[str] = None, var_checkpoint: Optional[str] = None,
                       init_seed: Optional[int] = None) -> str:
    """The `value` of the VAR identity `load_models` gives for these arguments (the file's sha256, or
    '<preset>:seed=<n>'), without building the model."""
    preset = get_preset(preset_name)
    _, var_checkpoint, seed = _resolve(preset, vae_checkpoint, var_checkpoint, init_seed)
    if var_checkpoint is not None:  # (named as the loading names it: not an OS error of the hashing)
        check_checkpoint_path(var_checkpoint)
    return _identity(preset, var_checkpoint, seed, preset.var).value


def load_models(preset_name: str, vae_checkpoint: Optional[str] = None, var_checkpoint: Optional[str] = None,
                device: torch.device | str = "cpu", init_seed: Optional[int] = None, with_var: bool = True,
                ) -> tuple[VQVAE, Optional[VAR], ModelIdentity, Optional[ModelIdentity]]:
    """Build the preset's VQ-VAE (and VAR) with weights from the named files or, for random presets,
    from the seed. Big models are built on the meta device and the checkpoint tensors assigned, so
    nothing is allocated twice. Returns (vqvae, var, vqvae identity, var identity), in eval mode."""
    preset = get_preset(preset_name)
    vae_checkpoint, var_checkpoint, seed = _resolve(preset, vae_checkpoint, var_checkpoint, init_seed, with_var)
    vae_cfg = preset.vae.with_patch_nums(preset.var.patch_nums)
    before = _file_state(vae_checkpoint)
    if vae_checkpoint is not None:
        vqvae = load_vqvae_weights(build_vqvae(vae_cfg, "meta"), vae_checkpoint)
    else:
        vqvae = _random_model(build_vqvae, vae_cfg, seed)
    vae_id = _identity(preset, vae_checkpoint, seed, vae_cfg)
    _unchanged_since(vae_checkpoint, before)
    var = var_id = None
    if with_var:
        before = _file_state(var_checkpoint)
        if var_checkpoint is not None:
            var = load_var_weights(build_var(preset.var, "meta"), var_checkpoint)
        else:
            var = _random_model(build_var, preset.var, seed + 1)
        var_id = _identity(preset, var_checkpoint, seed, preset.var)
        _unchanged_since(var_checkpoint, before)
        var = var.to(device).eval().requires_grad_(False)
    return vqvae.to(device).eval().requires_grad_(False), var, vae_id, var_id


def load_latent_decoder(preset_name: str, vae_checkpoint: Optional[str] = None, init_seed: Optional[int] = None,
                        device: torch.device | str = "cpu") -> tuple[LatentDecoder, ModelIdentity]:
    """Only post_quant_conv + decoder of the preset's VQ-VAE (no encoder / quantizer in memory)."""
    preset = get_preset(preset_name)
    vae_checkpoint, _, seed = _resolve(preset, vae_checkpoint, None, init_seed, need_var=False)
    vae_cfg = preset.vae.with_patch_nums(preset.var.patch_nums)
    before = _file_state(vae_checkpoint)
    if vae_checkpoint is not None:
        with torch.device("meta"):
            dec = LatentDecoder(vae_cfg)
        load_vqvae_weights(dec, vae_checkpoint)
    else:
        dec = _random_model(build_vqvae, vae_cfg, seed).latent_decoder()
    identity = _identity(preset, vae_checkpoint, seed, vae_cfg)
    _unchanged_since(vae_checkpoint, before)
    return dec.to(device).eval(), identity


def check_checkpoint_files(preset_name: str, vae_checkpoint: Optional[str] = None,
                           var_checkpoint: Optional[str] = None) -> None:
    """What `load_models` checks of the named checkpoint files (readable, the right model, its shapes and keys),
    reading only what the format allows without the values (a login node checking a job);
    CheckpointError naming the file."""
    preset = get_preset(preset_name)
    if vae_checkpoint is not None:
        load_vqvae_weights(build_vqvae(preset.vae.with_patch_nums(preset.var.patch_nums), "meta"), vae_checkpoint,
                           check_only=True)
    if var_checkpoint is not None:
        load_var_weights(build_var(preset.var, "meta"), var_checkpoint, check_only=True)


def model_identities(preset_name: str, vae_checkpoint: Optional[str] = None, var_checkpoint: Optional[str] = None,
                     init_seed: Optional[int] = None) -> tuple[ModelIdentity, ModelIdentity]:
    """The (VQ-VAE, VAR) identities `load_models` reports, without building a model: the files' sha256, or
    the preset and seed (a login node checking a job against an existing cache)."""
    preset = get_preset(preset_name)
    vae_checkpoint, var_checkpoint, seed = _resolve(preset, vae_checkpoint, var_checkpoint, init_seed)
    vae_cfg = preset.vae.with_patch_nums(preset.var.patch_nums)
    return _identity(preset, vae_checkpoint, seed, vae_cfg), _identity(preset, var_checkpoint, seed, preset.var)

