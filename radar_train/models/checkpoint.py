"""Reading, checking and writing model weights.

Official `.pth` files are read with `torch.load(..., weights_only=True)` (no arbitrary unpickling);
safetensors (optionally `.xz`-compressed) are read directly. Every failure is a `CheckpointError`
whose one-line message names the file and says what is wrong.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import lzma
import re
from pathlib import Path
from typing import Literal

import safetensors.torch
from safetensors.torch import load as safetensors_from_bytes
import torch
from torch import nn

from radar_train.inputs import InputError, NotWeights, failure_reason, nonfinite_keys, torch_load_weights
from radar_train.outputs import atomic_file

from .configs import MODEL_PRESETS, VARConfig, VQVAEConfig

Kind = Literal["var", "vqvae", "latent_decoder", "unknown"]


class CheckpointError(InputError):
    """A checkpoint that cannot be used; the message is one line and names the file (an InputError: the
    entry points' one error path for files handed in)."""


def _path(path: str | Path) -> Path:
    if str(path) == "":  # (Path("") is the working folder: "is a directory" named no file)
        raise CheckpointError("an empty path was given as a checkpoint file")
    return Path(path)


def check_checkpoint_path(path: str | Path) -> Path:
    """The path of a checkpoint file that exists and is a regular file; CheckpointError (one line naming it)
    otherwise: before it is read or hashed."""
    p = _path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint file not found")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory, expected a checkpoint file")
    if not p.is_file():  # (/dev/zero was read until the memory ran out)
        raise CheckpointError(f"{p}: is not a regular file (a device, pipe or socket), expected a checkpoint file")
    return p


def read_state_dict(path: str | Path, role: Literal["var", "vqvae"] | None = None,
                    shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file (.pth/.pt/.bin via torch, .safetensors, .safetensors.xz). `role` picks
    the model inside a file that holds both: an official trainer checkpoint keeps the VAR under
    'var_wo_ddp' and the VQ-VAE under 'vae_local'; without a role the VAR is taken. `shapes_only`: for the
    checks alone, reading as little as the format allows (a .safetensors file's header: meta tensors; a torch
    zip file memory-mapped); the values must not be used."""
    p = check_checkpoint_path(path)
    name = p.name.lower()
    try:
        if name.endswith(".safetensors.xz"):
            with lzma.open(p) as f:
                sd = safetensors_from_bytes(f.read())
        elif name.endswith(".safetensors"):
            sd = _safetensors_shapes(p) if shapes_only else safetensors.torch.load_file(str(p))
        else:
            sd = torch_load_weights(p, mmap=shapes_only)
    except NotWeights as e:
        raise CheckpointError(f"{p}: checkpoint {e}") from None
    except OSError as e:  # (permission denied, an I/O error: not the file's format)
        raise CheckpointError(f"{p}: checkpoint {failure_reason(e)}") from None
    except Exception as e:  # noqa: BLE001 - every reader failure becomes one clear line
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{p}: not a readable checkpoint (truncated, or not a zip/pickle/safetensors "
                              f"file): {reason}") from None
    return _unwrap(sd, p, role)


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def _safetensors_shapes(p: Path) -> dict[str, torch.Tensor]:
    """A .safetensors file's tensors as meta tensors of their shapes and dtypes (its header only)."""
    with safetensors.safe_open(str(p), framework="pt") as f:
        return {k: torch.empty(f.get_slice(k).get_shape(),
                               dtype=_SAFETENSORS_DTYPES.get(f.get_slice(k).get_dtype(), torch.float32), device="meta")
                for k in f.keys()}


_WRAPPER_KEYS = ("state_dict", "model", "module", "trainer")
_MODEL_KEYS = {"var": ("var_wo_ddp",), "vqvae": ("vae_local", "vae_wo_ddp"),
               None: ("var_wo_ddp", "vae_local", "vae_wo_ddp")}


def _unwrap(obj, p: Path, role: str | None = None) -> dict[str, torch.Tensor]:
    """Find the state dict inside common wrappers ({'state_dict': ...}, {'model': ...},
    the official trainer checkpoints {'trainer': {'var_wo_ddp': ..., 'vae_local': ...}}, the model of `role`; each
    wrapper key in turn, down to three levels) and drop a 'module.' (DDP) or '_orig_mod.' (torch.compile) prefix."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: holds a {type(obj).__name__}, not a state dict")
    found = _state_dict_in(obj, role, 3)
    if found is None:
        raise CheckpointError(f"{p}: no state dict found (top-level keys: {sorted(map(str, obj))[:6]})")
    prefixes = ("module.", "_orig_mod.")
    while (prefix := next((x for x in prefixes if all(isinstance(k, str) and k.startswith(x) for k in found)), None)):
        found = {k[len(prefix):]: v for k, v in found.items()}
    return found


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _state_dict_in(obj, role: str | None, depth: int) -> dict[str, torch.Tensor] | None:
    if _is_state_dict(obj):
        return obj
    if depth == 0 or not isinstance(obj, dict):
        return None
    for key in (*_WRAPPER_KEYS, *_MODEL_KEYS[role], "ema"):
        if isinstance(obj.get(key), dict) and (found := _state_dict_in(obj[key], role, depth - 1)) is not None:
            return found
    return None


def detect_kind(sd: dict[str, torch.Tensor]) -> Kind:
    if "class_emb.weight" in sd or any(k.startswith("blocks.") for k in sd):
        return "var"
    if "quantize.embedding.weight" in sd or "encoder.conv_in.weight" in sd:
        return "vqvae"
    if "decoder.conv_in.weight" in sd and "post_quant_conv.weight" in sd:
        return "latent_decoder"
    return "unknown"


_KIND_NAMES = {"var": "a VAR transformer checkpoint", "vqvae": "a VQ-VAE checkpoint",
               "latent_decoder": "a VQ-VAE decoder checkpoint", "unknown": "neither a VAR nor a VQ-VAE checkpoint"}


# ------------------------------------------------------------------------------ shape inference
def var_shape_summary(sd: dict[str, torch.Tensor]) -> dict:
    depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    emb = sd.get("class_emb.weight")
    return {
        "depth": depth,
        "embed_dim": int(emb.shape[1]) if emb is not None else None,
        "num_classes": int(emb.shape[0]) - 1 if emb is not None else None,
        "num_tokens": int(sd["pos_1LC"].shape[1]) if "pos_1LC" in sd else None,
        "shared_aln": "shared_ada_lin.1.weight" in sd,
    }


def _preset_for(summary: dict) -> str | None:
    for name, preset in MODEL_PRESETS.items():
        c = preset.var
        if (c.depth, c.embed_dim, c.num_classes, c.num_tokens, c.shared_aln) == (
                summary["depth"], summary["embed_dim"], summary["num_classes"], summary["num_tokens"],
                summary["shared_aln"]):
            return name
    return None


def _describe_var(summary: dict) -> str:
    preset = _preset_for(summary)
    s = f"depth {summary['depth']}, width {summary['embed_dim']}"
    return f"{s} — the {preset} config" if preset else s


def vqvae_shape_summary(sd: dict[str, torch.Tensor]) -> dict:
    out = {}
    if "quantize.embedding.weight" in sd:
        out["vocab_size"], out["z_channels"] = (int(x) for x in sd["quantize.embedding.weight"].shape)
    if "decoder.conv_out.weight" in sd:
        out["ch"] = int(sd["decoder.conv_out.weight"].shape[1])
    elif "encoder.conv_in.weight" in sd:
        out["ch"] = int(sd["encoder.conv_in.weight"].shape[0])
    if "z_channels" not in out and "post_quant_conv.weight" in sd:
        out["z_channels"] = int(sd["post_quant_conv.weight"].shape[0])
    return out


# ------------------------------------------------------------------------------ checks and loading
def _check_kind(sd, p: Path, want: tuple[Kind, ...], role: str) -> Kind:
    kind = detect_kind(sd)
    if kind not in want:
        raise CheckpointError(f"{p}: is {_KIND_NAMES[kind]}, but was given as the {role}")
    return kind


def _strict_check(model: nn.Module, sd: dict[str, torch.Tensor], p: Path, ignore_shape: tuple[str, ...] = ()) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {', '.join(missing[:4])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {', '.join(unexpected[:4])}")
        raise CheckpointError(f"{p}: does not match the model: " + "; ".join(parts))
    bad = [f"{k} {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
           if tuple(sd[k].shape) != tuple(v.shape) and k not in ignore_shape]
    if bad:
        raise CheckpointError(f"{p}: {len(bad)} tensor shape mismatch(es), e.g. " + "; ".join(bad[:3]))
    # (an integer tensor where the model keeps floats failed in load_state_dict, a traceback after the checks)
    params = {k for k, _ in model.named_parameters()}  # (a buffer of counts, VQ-VAE's ema_vocab_hit_SV, loads cast)
    bad = [f"{k} holds {sd[k].dtype} values where the model keeps {v.dtype}" for k, v in own.items()
           if k in params and v.is_floating_point() and not sd[k].is_floating_point()]
    if bad:
        raise CheckpointError(f"{p}: {len(bad)} tensor(s) not of a floating-point type where the model's are, e.g. "
                              + "; ".join(bad[:3]))


def load_var_weights(var: nn.Module, path: str | Path, sd: dict | None = None, check_only: bool = False) -> nn.Module:
    """Strictly load a VAR checkpoint into `var` (which may live on the meta device). `check_only`: the checks
    (kind, shapes, keys) without reading the values where the format allows; `var` is left as it is."""
    p = _path(path)
    sd = read_state_dict(p, "var", shapes_only=check_only) if sd is None else sd
    _check_kind(sd, p, ("var",), "VAR transformer")
    cfg: VARConfig = var.config
    got = var_shape_summary(sd)
    want = {"depth": cfg.depth, "embed_dim": cfg.embed_dim, "num_classes": cfg.num_classes,
            "num_tokens": cfg.num_tokens, "shared_aln": cfg.shared_aln}
    if got != want:
        preset = _preset_for(want)
        asked = f"depth {cfg.depth}, width {cfg.embed_dim}" + (f" ({preset})" if preset else "")
        diff = ", ".join(f"{k} {got[k]} vs {want[k]}" for k in want if got[k] != want[k])
        raise CheckpointError(f"{p}: is a VAR with {_describe_var(got)}; the config asks for {asked} ({diff})")
    _strict_check(var, sd, p)
    if not check_only:
        _assign(var, sd, p)
    return var


def load_vqvae_weights(model: nn.Module, path: str | Path, sd: dict | None = None,
                       check_only: bool = False) -> nn.Module:
    """Strictly load a VQ-VAE checkpoint into a `VQVAE` or a `LatentDecoder` (decoder keys only). `check_only`:
    as in load_var_weights."""
    from .vqvae import LatentDecoder

    p = _path(path)
    sd = read_state_dict(p, "vqvae", shapes_only=check_only) if sd is None else sd
    is_dec = isinstance(model, LatentDecoder)
    _check_kind(sd, p, ("vqvae", "latent_decoder") if is_dec else ("vqvae",), "VQ-VAE")
    cfg: VQVAEConfig = model.config
    got = vqvae_shape_summary(sd)
    want = {"vocab_size": cfg.vocab_size, "z_channels": cfg.z_channels, "ch": cfg.ch}
    diff = [f"{k} {got[k]} vs {want[k]}" for k in got if got[k] != want.get(k)]
    if diff:
        raise CheckpointError(f"{p}: VQ-VAE shapes do not match the config ({', '.join(diff)})")
    if is_dec:
        sd = {k: v for k, v in sd.items() if k.startswith(("decoder.", "post_quant_conv."))}
    else:
        hit = sd.get("quantize.ema_vocab_hit_SV")
        own = model.quantize.ema_vocab_hit_SV
        if hit is not None and tuple(hit.shape) != tuple(own.shape):
            # official behaviour: usage statistics of another scale count are replaced, not loaded
            sd = dict(sd)
            sd["quantize.ema_vocab_hit_SV"] = torch.zeros(own.shape, dtype=hit.dtype)
    _strict_check(model, sd, p)
    if not check_only:
        _assign(model, sd, p)
    return model


def nonfinite_weights(sd: dict[str, torch.Tensor]) -> list[str]:
    """`inputs.nonfinite_keys` of a model's weights, but VAR's causal mask (`attn_bias_for_masking`: 0 and -inf by
    design, in the official files too) only for NaN."""
    mask = "attn_bias_for_masking"
    nan_masks = [k for k, v in sd.items() if k.endswith(mask) and v.is_floating_point() and bool(v.isnan().any())]
    return sorted(nonfinite_keys({k: v for k, v in sd.items() if not k.endswith(mask)}) + nan_masks)


def _assign(model: nn.Module, sd: dict[str, torch.Tensor], p: Path) -> None:
    own = model.state_dict()
    # floating tensors take the model's dtype (e.g. fp16 files such as the toy world's into fp32 models)
    # (and a buffer of counts kept as integers, _strict_check having refused such a parameter)
    sd = {k: v.to(own[k].dtype) if own[k].is_floating_point() and not v.is_complex() else v for k, v in sd.items()}
    # integer buffers of a file converted wholesale to fp16/bf16 (e.g. VAR's lvl_1L) go back to integers, as
    # a copying load_state_dict does, when their values are whole numbers
    for k, v in sd.items():
        if v.is_floating_point() and not own[k].is_floating_point():
            if not (v.isfinite().all() and torch.equal(v, v.round())):
                raise CheckpointError(f"{p}: {k} holds {v.dtype} values that are not whole numbers, but the "
                                      f"model keeps it as {own[k].dtype}")
            sd[k] = v.to(own[k].dtype)
    bad = nonfinite_weights(sd)
    if bad:  # (every output would be NaN or black, with no word: a model file damaged, or saved from a diverged run)
        raise CheckpointError(f"{p}: {len(bad)} tensor(s) hold NaN or inf values (e.g. {bad[0]}): the weights are "
                              f"damaged")
    meta = any(t.is_meta for t in own.values())
    if meta:
        model.load_state_dict(sd, strict=True, assign=True)
    else:
        model.load_state_dict(sd, strict=True)


def save_weights(model: nn.Module | dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None,
                 atomic: bool = True) -> Path:
    """Write a state dict as safetensors (atomic: temp file + rename; `atomic` False: straight into `path`, for a
    caller writing a temporary of its own). Equal tensors and metadata give
    equal bytes, so a file's sha256 (the weights' identity) does not depend on the run that wrote it:
    safetensors writes the metadata in hash-map order, which changes from process to process, so the
    header is re-serialised with sorted keys (tensor offsets are relative to the data and stay valid)."""
    p = Path(path)
    sd = model.state_dict() if isinstance(model, nn.Module) else model
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    raw = safetensors.torch.save(sd, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # keep the data 8-byte aligned, as safetensors does
    with (atomic_file(p) if atomic else contextlib.nullcontext(p)) as tmp, open(tmp, "wb") as f:
        # (atomic: a temporary sibling, renamed; removed on failure)
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        f.write(raw[8 + n:])
    return p


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
