"""A merged VQ-VAE: an adapter's LoRA folded into the convolutions of its base VQ-VAE, written as one plain VQ-VAE
state dict in the official key layout, for code that knows nothing of peft or of radar_train (the official VAR
code's `vae.load_state_dict(torch.load(path, weights_only=True))`, FastVAR's, our own `--model.vae_checkpoint`).

    OUTPUT          (.pth, .pt, .bin: torch.save of the state dict; .safetensors) every tensor of the base VQ-VAE
                    (encoder, quantizer, quant_conv, post_quant_conv, decoder) under the base file's names, the
                    LoRA targets' weights merged (W + (alpha / r) * B A), floating tensors in `dtype`
    OUTPUT.json     what it was made from: the base VQ-VAE's identity, the adapter (path, LoRA, step) and the
                    acceleration its caches were made with (the latents it restores), the weights' sha256

The merged decoder restores the latents of the acceleration it was trained for; vanilla latents are decoded
with the base VQ-VAE (an adapter costs a little on latents it was not trained for). A label-conditioned adapter
cannot be merged: its decoder takes the class labels, which a plain VQ-VAE does not.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Optional

import torch

from radar_train.inputs import InputError

from .adapter import ADAPTER_WEIGHTS, RADAR_CONFIG, adapter_version, check_adapter, check_same_adapter, load_adapter
from .label_conditioning import conditioning_section

__all__ = ["MERGED_KIND", "MERGED_VERSION", "WEIGHT_SUFFIXES", "DTYPES", "sidecar_path", "base_vae_file",
           "merged_vqvae", "write_merged", "merged_record"]

MERGED_KIND = "radar_merged_vqvae"
MERGED_VERSION = 1
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def sidecar_path(output: str | os.PathLike) -> Path:
    """The JSON written beside a merged VQ-VAE file: its name with `.json` added."""
    return Path(os.fspath(output) + ".json")


def _recorded_vae_files(meta: dict) -> list[str]:
    """The VQ-VAE file paths an adapter's metadata records (its training config's, its caches'), in that order."""
    def at(d, *keys):  # (a hand-edited section of another shape records nothing)
        for k in keys:
            d = d.get(k) if isinstance(d, dict) else None
        return d

    paths = [at(meta, "training", "model", "decoder", "vae_checkpoint")]
    paths += [at(c, "model", "vae_checkpoint") for c in meta.get("caches") or []]
    return [p for i, p in enumerate(paths) if isinstance(p, str) and p and p not in paths[:i]]


def base_vae_file(adapter_dir: str | os.PathLike, meta: dict, vae_checkpoint: Optional[str]) -> Optional[str]:
    """The base VQ-VAE file to merge into: `vae_checkpoint`, else the first file the metadata records that is
    here, else the file packaged with the preset (the toy world's); None for a randomly initialised VQ-VAE.
    ValueError naming --vae_checkpoint when the adapter's VQ-VAE is a file and none is at hand."""
    from radar_train.models import get_preset

    base = meta["base"]
    vae = _base_vae(adapter_dir, base)
    preset = get_preset(_preset(adapter_dir, base))
    if vae["kind"] != "file":
        if vae_checkpoint is not None:
            raise ValueError(f"--vae_checkpoint {vae_checkpoint}: adapter {adapter_dir} was trained on a randomly "
                             f"initialised VQ-VAE ({vae['kind']}:{vae['value']}), not a file: leave it out")
        return None
    if vae_checkpoint is not None:
        return vae_checkpoint
    recorded = _recorded_vae_files(meta)
    here = [p for p in recorded if Path(p).is_file()]
    if here:
        return here[0]
    if preset.packaged_files is not None:
        return preset.packaged_files[0]
    where = f" (recorded as {', '.join(recorded)}, not here)" if recorded else ""
    raise ValueError(f"adapter {adapter_dir} was trained on the VQ-VAE file with sha256 {vae['value'][:16]}…{where}: "
                     f"pass it with --vae_checkpoint")


def _preset(adapter_dir, base: dict) -> str:
    """The adapter's base model preset, one this radar_train has (InputError naming its radar_config.yaml)."""
    from radar_train.models import get_preset

    preset = base.get("preset")
    if not isinstance(preset, str) or not preset:
        raise InputError(f"{Path(adapter_dir) / RADAR_CONFIG}: adapter metadata names no base model preset "
                         f"(`base.preset`)")
    try:
        get_preset(preset)
    except ValueError as e:
        raise InputError(f"{Path(adapter_dir) / RADAR_CONFIG}: base.preset: {e}") from None
    return preset


def _base_vae(adapter_dir, base: dict) -> dict:
    """The adapter's base VQ-VAE identity: a file's sha256 or a random preset's seed (InputError naming its
    radar_config.yaml for any other kind)."""
    vae = base["vae"]
    if vae["kind"] not in ("file", "random"):
        raise InputError(f"{Path(adapter_dir) / RADAR_CONFIG}: base.vae.kind {vae['kind']!r}: radar_train records "
                         f"'file' (a checkpoint's sha256) or 'random' (a preset's seed)")
    return vae


def check_mergeable(adapter_dir: str | os.PathLike, meta: dict, dtype: str) -> None:
    """ValueError unless the adapter of radar_config.yaml `meta` merges into a VQ-VAE file of `dtype`: not a
    label-conditioned one (its decoder takes the class labels)."""
    if conditioning_section(meta) is not None:  # (as loading reads it: kind none is a plain adapter)
        raise ValueError(f"adapter {adapter_dir} is label-conditioned (a per-class FiLM of the decoder's GroupNorms): "
                         f"its decoder takes the class labels, which a plain VQ-VAE file cannot hold; decode with "
                         f"RadarPipeline, radar-generate or radar-fid and the adapter folder instead")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype}: one of {', '.join(DTYPES)}")


def merged_vqvae(adapter_dir: str | os.PathLike, vae_file: Optional[str] = None, dtype: str = "float32",
                 source: str = "--vae_checkpoint") -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, description): the base VQ-VAE of `adapter_dir` (the file `vae_file`, else its preset's random or
    packaged weights) with the adapter's LoRA merged into its decoder, every floating tensor in `dtype`.
    The base must be the one the adapter was trained on (ValueError naming `source`, what named the file, and
    --vae_checkpoint); a label-conditioned adapter is refused (ValueError)."""
    from radar_train.models import identity_seed, load_models

    version = adapter_version(adapter_dir)  # (the record below describes the weights merged)
    meta = check_adapter(adapter_dir)
    check_mergeable(adapter_dir, meta, dtype)
    base = meta["base"]
    preset, vae = _preset(adapter_dir, base), _base_vae(adapter_dir, base)
    try:
        vqvae, _, ident, _ = load_models(preset, vae_file, init_seed=identity_seed(vae), with_var=False)
    except ValueError as e:
        raise ValueError(f"{source} {vae_file}: {e}" if vae_file else str(e)) from None
    if (ident.kind, ident.value) != (vae["kind"], vae["value"]):
        if vae_file is None:  # (the metadata's preset does not build the base it names)
            raise InputError(f"{Path(adapter_dir) / RADAR_CONFIG}: base.preset {preset} gives the VQ-VAE "
                             f"{ident.kind}:{ident.value[:16]}…, not the base.vae it names, {vae['kind']}:"
                             f"{vae['value'][:16]}…")
        hint = "" if source == "--vae_checkpoint" else "; pass the one it was trained on with --vae_checkpoint"
        raise ValueError(f"{source} {vae_file}: not the VQ-VAE adapter {adapter_dir} was trained on (its "
                         f"sha256 {ident.value[:16]}…, the adapter's {vae['value'][:16]}…){hint}")
    from peft.tuners.lora import LoraLayer

    model = load_adapter(vqvae.latent_decoder(), adapter_dir, identity=ident, merge=False)
    check_same_adapter(adapter_dir, version)
    n_merged = sum(isinstance(m, LoraLayer) for m in model.modules())
    merged = model.merge_and_unload()  # (what load_adapter's merge=True does)
    sd = vqvae.state_dict()
    changed = merged.state_dict()
    strays = sorted(k for k in changed if k not in sd or changed[k].shape != sd[k].shape)
    if strays:  # (peft left a module of its own, or renamed one: the file would not load as a VQ-VAE)
        raise RuntimeError(f"the merged decoder has tensors a VQ-VAE has not: {', '.join(strays[:3])}")
    bad = sorted(k for k, v in changed.items() if v.is_floating_point() and not bool(v.isfinite().all()))
    if bad:  # (the adapter's weights file holds NaN or inf: a decoder of it draws nothing)
        raise InputError(f"{Path(adapter_dir) / ADAPTER_WEIGHTS}: merged into the decoder, its LoRA gives {len(bad)} "
                         f"weight(s) with NaN or inf values (e.g. {bad[0]}): the adapter is damaged")
    sd.update(changed)
    want = DTYPES[dtype]
    # (the quantizer's codebook and phi convolutions stay float32: VAR's tokens and f_hat are made with them, so
    # rounded they changed the generator's samples, not only the decode's precision)
    sd = {k: (v.to(want) if v.is_floating_point() and not k.startswith("quantize.") else v).detach().contiguous()
          for k, v in sd.items()}
    lora = meta.get("lora") or {}
    description = {
        "format_version": MERGED_VERSION,
        "kind": MERGED_KIND,
        "dtype": dtype,
        "base": {"preset": preset, "vae": {"kind": vae["kind"], "value": vae["value"]},
                 "vae_checkpoint": None if vae_file is None else str(Path(vae_file).resolve())},
        "adapter": {"path": str(Path(adapter_dir).resolve()), "global_step": meta.get("global_step"),
                    "lora": {k: lora.get(k) for k in ("rank", "alpha", "targets") if k in lora},
                    "merged_modules": n_merged},
        "restores": [{"cache": c.get("path"), "accel": c.get("accel"), "sampling": c.get("sampling")}
                     for c in meta.get("caches") or []],
        # the adapter's cache records as its radar_config.yaml holds them (plans, training shards, VAR, sampler):
        # radar-fid and radar-generate tell from them which samples are its training pairs (inference/held_out.py)
        "caches": list(meta.get("caches") or []),
    }
    return sd, description


def write_merged(sd: dict[str, torch.Tensor], output: str | os.PathLike, description: dict,
                 overwrite: bool = True) -> tuple[Path, Path]:
    """Write `sd` to `output` (torch.save for .pth / .pt / .bin, else safetensors) and the description, with the
    file's name and sha256, to `sidecar_path(output)`. Both are written in full under temporary names first and
    then renamed one right after the other, the weights first, with SIGTERM and Ctrl-C held back until both are
    (`outputs.signals_deferred`): each file is whole or absent, and a stop leaves both or neither. The caller has
    checked that both may be written (`radar_train.outputs.check_output_file`); without `overwrite`, a file or record that appeared there while
    these were written is not replaced (OutputError): another run writing there finished first."""
    from radar_train.models.checkpoint import file_sha256, save_weights
    from radar_train.outputs import atomic_file, check_none_appeared, naming, normal_file_mode, signals_deferred

    out, side = Path(output), sidecar_path(output)
    hold = contextlib.ExitStack()  # (entered last, left after both renames: a signal waits for the second)
    with hold, atomic_file(side) as tmp_side:
        with atomic_file(out) as tmp:
            if out.suffix.lower() == ".safetensors":
                save_weights(sd, tmp, atomic=False)
            else:
                # into memory, then one write: torch's zip writer on a full disk raised its own RuntimeError
                # ("unexpected pos ..."), a traceback, where the write's OSError names the file (atomic_file)
                buf = io.BytesIO()
                torch.save(sd, buf)  # (a file object: the archive's inner name is fixed, not the temporary's)
                with open(tmp, "wb") as f:
                    f.write(buf.getbuffer())
                del buf
            normal_file_mode(tmp, like=out)
            record = {**description, "weights": out.name, "sha256": file_sha256(tmp)}
            with naming(side):  # (said of the record, not of the weights whose temporary this block holds)
                tmp_side.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
            if not overwrite:  # (the command's check was before the merge: just before the renames, again)
                check_none_appeared(out.parent, [out.name, side.name])
            hold.enter_context(signals_deferred())
    return out, side


def merged_record(vae_checkpoint: Optional[str | os.PathLike], sha256: str) -> Optional[dict]:
    """The record beside a VQ-VAE file that `radar-train merge` wrote, if the file is still the one it describes
    (`sha256`, the file's identity); None for any other file (no record, one that does not read, another kind,
    or the weights replaced since). InputError naming the record when it is this file's but edited so that it no
    longer reads (its restores) or of a newer format."""
    if vae_checkpoint is None:
        return None
    try:
        record = json.loads(sidecar_path(vae_checkpoint).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ours = isinstance(record, dict) and record.get("kind") == MERGED_KIND and record.get("sha256") == sha256
    if not ours:
        return None
    problem = _record_problem(record)
    if problem:  # (the record of this very file, edited or of a newer radar_train: its warnings would be wrong)
        raise InputError(f"{sidecar_path(vae_checkpoint)}: {problem}")
    return record


def _record_problem(record: dict) -> Optional[str]:
    """What makes a merged file's record (its kind and sha256 already this file's) unreadable here, or None."""
    version = record.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        return f"format_version must be a whole number, got {version!r}"
    if version > MERGED_VERSION:
        return f"format_version {version} is newer than this radar_train reads ({MERGED_VERSION}): upgrade radar_train"
    restores = record.get("restores")
    if restores is not None and not isinstance(restores, list):
        return f"restores must be a list of the adapter's caches, got {restores!r:.60}"
    for i, r in enumerate(restores or []):
        if not isinstance(r, dict) or not isinstance(r.get("accel"), (dict, type(None))):
            return f"restores[{i}] must be an object whose accel is an object or null, got {r!r:.60}"
    caches = record.get("caches")  # (a file merged before 2026-12-07 has none)
    if caches is not None and not isinstance(caches, list):
        return f"caches must be a list of the adapter's cache records, got {caches!r:.60}"
    return None
