"""Adapter folders: what `radar-train` exports and inference loads.

    DIR/adapter_config.json          peft LoraConfig (exact target names as one regex)
    DIR/adapter_model.safetensors    the LoRA tensors (`<module>.lora_A.weight`, `<module>.lora_B.weight`)
    DIR/radar_config.yaml            base VQ-VAE identity, LoRA settings, the caches' model / accel / sampling,
                                     training config, final validation metrics

The folder loads with plain peft onto our `LatentDecoder` (`PeftModel.from_pretrained(decoder, DIR)`);
`load_adapter` does that after checking the base decoder's identity, and merges by default (no overhead).
A folder is written under a temporary name and renamed, so it is either whole or absent.
"""
from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import Optional

import yaml
from torch import nn

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "RADAR_CONFIG", "save_adapter", "read_radar_config", "load_adapter",
           "export_checkpoint"]

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
RADAR_CONFIG = "radar_config.yaml"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, RADAR_CONFIG)


def save_adapter(peft_model, out_dir: str | Path, meta: dict) -> Path:
    """Write `peft_model`'s adapter (safetensors) and `meta` to `out_dir` (replaced if it exists)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    peft_model.save_pretrained(str(tmp), safe_serialization=True)
    (tmp / "README.md").unlink(missing_ok=True)  # peft's generic model card
    (tmp / RADAR_CONFIG).write_text(yaml.safe_dump(meta, sort_keys=False))
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def _check_dir(adapter_dir: Path) -> None:
    if not adapter_dir.is_dir():
        raise FileNotFoundError(f"adapter folder {adapter_dir} does not exist")
    missing = [f for f in ADAPTER_FILES if not (adapter_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"adapter folder {adapter_dir} lacks {', '.join(missing)} "
                                f"(export one with `radar-train export --ckpt ... --output {adapter_dir}`)")


def read_radar_config(adapter_dir: str | Path) -> dict:
    """The radar metadata of an adapter folder."""
    d = Path(adapter_dir)
    _check_dir(d)
    meta = yaml.safe_load((d / RADAR_CONFIG).read_text())
    if not isinstance(meta, dict) or "base" not in meta:
        raise ValueError(f"{d / RADAR_CONFIG} is not radar adapter metadata (no `base` section)")
    return meta


def load_adapter(decoder: nn.Module, adapter_dir: str | Path, identity=None, merge: bool = True,
                 trainable: bool = False):
    """Put the adapter of `adapter_dir` onto `decoder` (a LatentDecoder; modified in place).

    identity: the decoder's ModelIdentity; if given, a different base VQ-VAE than the adapter's is refused.
    merge: fold the LoRA update into the convs and return the plain decoder (no inference overhead);
    otherwise return the peft PeftModel (trainable=True to continue training it)."""
    from peft import PeftModel

    d = Path(adapter_dir)
    meta = read_radar_config(d)
    if identity is not None:
        want = meta["base"]["vae"]
        if (want["kind"], want["value"]) != (identity.kind, identity.value):
            raise ValueError(f"adapter {d} was trained for the VQ-VAE {want['kind']}:{want['value']}, "
                             f"not {identity.kind}:{identity.value}")
    model = PeftModel.from_pretrained(decoder, str(d), is_trainable=trainable)
    return model.merge_and_unload() if merge else model


def export_checkpoint(ckpt: str | Path, output: str | Path) -> Path:
    """Convert a radar-train Lightning checkpoint (LoRA + training state) into an adapter folder.
    Rebuilds the base decoder from the checkpoint's hyper-parameters (its VQ-VAE file must exist)."""
    import torch

    from radar_train.train.module import RadarLoraModule, module_from_hparams

    p = Path(ckpt)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} not found")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is one line naming the file
        raise ValueError(f"{p}: not a readable radar-train checkpoint ({str(e).splitlines()[0][:120]})") from None
    if "hyper_parameters" not in state or "radar" not in state:
        raise ValueError(f"{p}: not a radar-train checkpoint (no hyper_parameters / radar metadata)")
    module: RadarLoraModule = module_from_hparams(state["hyper_parameters"])
    module.check_checkpoint(state, str(p))
    module.load_state_dict(state["state_dict"], strict=False)
    meta = dict(state["radar"])
    meta["source_checkpoint"] = str(p)
    return save_adapter(module.net, output, meta)
