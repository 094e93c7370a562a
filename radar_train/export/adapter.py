"""Adapter folders: what `radar-train` exports and inference loads.

    DIR/adapter_config.json          peft LoraConfig (exact target names as one regex)
    DIR/adapter_model.safetensors    the LoRA tensors (`base_model.model.<module>.lora_A.weight`, `...lora_B.weight`)
    DIR/radar_config.yaml            base VQ-VAE identity, LoRA settings, the caches' model / accel / sampling,
                                     training config, final validation metrics
    DIR/label_conditioning.safetensors  label-conditioned adapters only: the per-class FiLM of the decoder's
                                     GroupNorms (`label_conditioning.py`; radar_config.yaml `label_conditioning`)

The folder loads with plain peft onto our `LatentDecoder` (`PeftModel.from_pretrained(decoder, DIR)`);
`load_adapter` does that after checking the base decoder's identity, and merges by default (no overhead); for
a label-conditioned adapter it gives back a `LabelConditionedDecoder` (forward(f_hat, labels)).
A folder is written under a temporary name and renamed, so it is either whole or absent. Converting a
radar-train Lightning checkpoint into a folder is training's business (`radar_train.train.export`).
"""
from __future__ import annotations

import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Optional

from torch import nn

from radar_train.cache.schema import readable_versions, version_problem
from radar_train.inputs import (InputError, _one_line, check_dir, check_finite, check_floating, load_safetensors,
                               nonfinite_keys, read_json, read_yaml)
from radar_train.outputs import (OutputError, check_replace_dir, clear_stale_temps, make_folders, naming,
                                 normal_file_mode, recover_replaced, remove_made_folders, replace_dir,
                                 safetensors_os_error, temp_name)

from .label_conditioning import LABEL_CONDITIONING_WEIGHTS, LabelConditionedDecoder, load_label_conditioning

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "RADAR_CONFIG", "ADAPTER_FILES", "RADAR_CONFIG_VERSION", "save_adapter",
           "read_radar_config", "check_adapter", "is_adapter_dir", "load_adapter", "adapter_version",
           "check_same_adapter", "run_step_of", "holds_adapter"]

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
RADAR_CONFIG = "radar_config.yaml"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, RADAR_CONFIG)
# radar_config.yaml's format_version: the newest this radar_train writes and reads (radar_train.train.module's
# META_VERSION writes the same number; tests/inference/test_adapter_versions.py keeps the two equal)
RADAR_CONFIG_VERSION = 1


def save_adapter(peft_model, out_dir: str | Path, meta: dict, conditioning=None, overwrite: bool = True,
                 option: str = "out_dir", checked: bool = False) -> Path:
    """Write `peft_model`'s adapter (safetensors) and `meta` to `out_dir`, replacing an adapter folder there
    (the commands check beforehand, with their --overwrite, that they may replace it:
    `radar_train.outputs.check_replace_dir`); any other non-empty folder, or a file, is an OutputError here
    too, so that a caller of the API never loses a folder of its own.
    conditioning: a ClassFiLM, written to label_conditioning.safetensors and described in the metadata.
    `meta` without a format_version gets RADAR_CONFIG_VERSION (readers refuse metadata without one).
    Every file gets the mode a plain open() gives (0o666 less the umask). Without `overwrite` (the command's
    check found no adapter there), an adapter folder that appeared at `out_dir` while this one was written is
    not replaced (OutputError naming `option`): another run writing there finished first; `checked`: the caller
    checked `out_dir` when it started, so that a folder found there now appeared since (said so: the words of a
    folder there at the start advised --overwrite, which would replace the other run's adapter)."""
    _check_finite_weights(peft_model, conditioning, out_dir)
    out = Path(out_dir).resolve()  # "." or "..": the folder's own name, for its temporary sibling
    made = make_folders(out.parent)
    try:
        return _save_adapter(peft_model, out, meta, conditioning, overwrite, option, checked)
    except BaseException:
        remove_made_folders(made)  # (the folders made for it: a failed export leaves none behind)
        raise


def _save_adapter(peft_model, out: Path, meta: dict, conditioning, overwrite: bool, option: str,
                  checked: bool) -> Path:
    import yaml
    from safetensors.torch import save_file

    recover_replaced(out)  # a killed export's previous folder, left at its hidden name

    def check_again() -> None:
        try:
            check_replace_dir(out, is_adapter_dir, "an adapter folder", option, overwrite=False)
        except OutputError:
            what = "an adapter folder" if is_adapter_dir(out) else "a file or folder"
            raise OutputError(f"{option} {out}: {what} appeared there while this run ran (another run writing into "
                              f"the same folder?): not replaced, and this run's adapter is not written; choose "
                              f"another folder") from None

    if checked and not overwrite:
        check_again()
    else:
        check_replace_dir(out, is_adapter_dir, "an adapter folder", option, overwrite=overwrite)
    clear_stale_temps(out.parent, out.name)  # a killed export's half-written folder
    tmp = temp_name(out)
    import radar_train

    meta = {"format_version": RADAR_CONFIG_VERSION, "radar_train": radar_train.__version__, **meta}  # (who wrote it)
    try:
        with naming(out):  # (an OSError naming no file, peft's write on a full disk: said of the folder)
            peft_model.save_pretrained(str(tmp), safe_serialization=True)
            (tmp / "README.md").unlink(missing_ok=True)  # peft's generic model card
            if conditioning is not None:
                save_file(conditioning.file_tensors(), str(tmp / LABEL_CONDITIONING_WEIGHTS))
                meta = {**meta, "label_conditioning": conditioning.describe()}
            (tmp / RADAR_CONFIG).write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
            for f in tmp.iterdir():
                normal_file_mode(f)  # safetensors writes its file 0600
            if not overwrite:  # (again, just before the rename: the first check was before the weights were written)
                check_again()
            return replace_dir(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        os_error = safetensors_os_error(e)  # (safetensors' own error names no file)
        if os_error is not None:
            raise OSError(os_error.errno, os_error.strerror, str(out)) from e
        raise


def _check_finite_weights(peft_model, conditioning, out_dir) -> None:
    """ValueError (one line) before anything is written if a trained tensor holds NaN or inf: every reader
    refuses such an adapter (check_adapter), so it is not written as one (a fit whose weights went NaN)."""
    trained = {n: p.detach() for n, p in peft_model.named_parameters() if "lora_" in n}
    if conditioning is not None:
        trained.update({f"label_conditioning.{k}": v for k, v in conditioning.file_tensors().items()})
    bad = nonfinite_keys(trained)
    if bad:
        raise ValueError(f"{out_dir}: not written: {len(bad)} of the adapter's trained tensors hold NaN or inf "
                         f"(e.g. {bad[0]}): the weights diverged")


def run_step_of(adapter_dir: str | Path) -> Optional[int]:
    """The run step an adapter folder was exported at (a fit's final/ holding its best step's adapter: the step
    the run had reached, `selection.last_step`); None when it holds no adapter or unreadable metadata."""
    if not is_adapter_dir(adapter_dir):
        return None
    try:
        meta = read_radar_config(adapter_dir)
    except (ValueError, OSError):
        return None
    selection = meta.get("selection") if isinstance(meta.get("selection"), dict) else {}
    step = selection.get("last_step", meta.get("global_step"))
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def is_adapter_dir(path: str | Path) -> bool:
    """True if `path` is a folder holding an adapter's files and nothing else (so it may be replaced)."""
    p = Path(path)
    if not p.is_dir():
        return False
    names = {e.name for e in p.iterdir()}
    return ADAPTER_CONFIG in names and names <= set(ADAPTER_FILES) | {"README.md", LABEL_CONDITIONING_WEIGHTS}


def holds_adapter(path: str | Path) -> bool:
    """True if `path` is a folder with an adapter's files in it (its adapter_config.json and its weights), whatever
    else it holds: a folder no output of another command goes into (`is_adapter_dir`: one that may be replaced)."""
    p = Path(path)
    return (p / ADAPTER_CONFIG).is_file() and (p / ADAPTER_WEIGHTS).is_file()


def _check_files(adapter_dir: Path) -> None:
    check_dir(adapter_dir, "adapter folder")
    missing = [f for f in ADAPTER_FILES if not (adapter_dir / f).is_file()]
    if missing:
        # (a run folder: its adapter is final/; another folder holding files: the export refuses it as its output)
        hint = (f"a run folder's adapter is {adapter_dir / 'final'}" if holds_adapter(adapter_dir / "final") else
                "export one with `radar-train export --ckpt ... --output NEW_FOLDER`" if any(adapter_dir.iterdir())
                else f"export one with `radar-train export --ckpt ... --output {adapter_dir}`")
        raise InputError(f"{adapter_dir}: adapter folder lacks {', '.join(missing)} ({hint})")


def read_radar_config(adapter_dir: str | Path) -> dict:
    """The radar metadata of an adapter folder (InputError naming the file if it is unusable)."""
    d = Path(adapter_dir)
    _check_files(d)
    meta = read_yaml(d / RADAR_CONFIG, "adapter metadata")
    versioned = "format_version" in meta
    if versioned:  # first: metadata of another format may lay out the rest otherwise
        _check_version(meta, d / RADAR_CONFIG)
    if "base" not in meta or not isinstance(meta["base"], dict) or "vae" not in meta["base"]:
        raise InputError(f"{d / RADAR_CONFIG}: is not radar adapter metadata (no `base.vae` section)")
    if not versioned:  # (adapter metadata that names no version: refused, saying so)
        _check_version(meta, d / RADAR_CONFIG)
    problem = _metadata_problem(meta)
    if problem:
        raise InputError(f"{d / RADAR_CONFIG}: adapter metadata {problem}")
    return meta


def _check_version(meta: dict, path: Path) -> None:
    """InputError naming `path` unless the metadata's format_version is one this radar_train reads (1 to
    RADAR_CONFIG_VERSION): a newer adapter may need what this code does not load (loading it anyway would decode
    wrongly without a word), and one without a version, or with 0, a negative number or a non-integer, was not
    written by radar_train."""
    if "format_version" not in meta:
        raise InputError(f"{path}: adapter metadata has no format_version (radar_train writes one; this "
                         f"radar_train reads {readable_versions(RADAR_CONFIG_VERSION)})")
    problem = version_problem(meta["format_version"], RADAR_CONFIG_VERSION)
    if problem:
        raise InputError(f"{path}: adapter metadata {problem}")


def _metadata_problem(meta: dict) -> Optional[str]:
    """What is wrong with the parts of the metadata that loading and evaluation read; None if nothing."""
    vae = meta["base"]["vae"]
    if not isinstance(vae, dict) or not all(isinstance(vae.get(k), str) for k in ("kind", "value")):
        return "has a `base.vae` that is not a mapping with `kind` and `value` strings"
    caches = meta.get("caches")
    if caches is None:
        return None
    if not isinstance(caches, list) or not all(isinstance(c, dict) for c in caches):
        return "has `caches` that is not a list of mappings"
    for i, c in enumerate(caches):
        for key in ("train_shards", "val_shards"):
            ids = c.get(key)
            if ids is not None and not (isinstance(ids, list) and all(type(x) is int and x >= 0 for x in ids)):
                return f"has a `caches[{i}].{key}` that is not a list of shard numbers"
        if not isinstance(c.get("path", ""), str) or not isinstance(c.get("accel", {}) or {}, dict):
            return f"has a `caches[{i}]` whose `path` is not a string or whose `accel` is not a mapping"
    return None


def adapter_version(adapter_dir: str | Path) -> Optional[tuple[int, int]]:
    """Which folder `adapter_dir` names now: (device, inode); None when there is none. An export swaps a finished
    folder in whole (`replace_dir`: `radar-train export --overwrite`, a fit's end replacing RUN/final), so a folder
    of the same version throughout a command's reads gave it one adapter's files."""
    try:
        st = os.stat(adapter_dir)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_same_adapter(adapter_dir: str | Path, version: Optional[tuple[int, int]]) -> None:
    """InputError when `adapter_dir` is no longer the folder of `version` (adapter_version, taken before its first
    read): the command read the metadata of one adapter and the weights of another (an eval's shards chosen and
    called held-out by the first adapter's record, a merged VQ-VAE recorded as the other's), without a word."""
    if version is not None and adapter_version(adapter_dir) != version:
        raise InputError(f"adapter {adapter_dir} was replaced while it was read (another run's `radar-train export "
                         f"--overwrite` into it, or its fit ending): run the command again")


def check_adapter(adapter_dir: str | Path, num_classes: Optional[int] = None) -> dict:
    """Read every file of an adapter folder (config JSON, weights, metadata); its metadata. InputError naming
    the file that is missing, truncated or not what it should be; ValueError when `num_classes` (the model's, if
    given) is not a label-conditioned adapter's class count."""
    d = Path(adapter_dir)
    meta = read_radar_config(d)
    _check_lora_config(read_json(d / ADAPTER_CONFIG, "peft adapter config"), d / ADAPTER_CONFIG)
    tensors = load_safetensors(d / ADAPTER_WEIGHTS, "adapter weights file")
    if not tensors:
        raise InputError(f"{d / ADAPTER_WEIGHTS}: adapter weights file holds no tensors")
    check_floating(tensors, d / ADAPTER_WEIGHTS, "LoRA weights radar-train wrote")  # (peft would copy them in)
    check_finite(tensors, d / ADAPTER_WEIGHTS, "adapter")
    load_label_conditioning(d, meta, num_classes)  # a conditioned adapter's section and weights file
    return meta


def _check_lora_config(cfg: dict, path: Path) -> None:
    """InputError naming `path` unless `cfg` has what peft needs to put a LoRA adapter on a decoder (peft
    itself fails on a missing key with a bare KeyError)."""
    if cfg.get("peft_type") != "LORA":
        raise InputError(f"{path}: not a peft LoRA config (peft_type {cfg.get('peft_type')!r}, expected 'LORA')")
    missing = [k for k in ("r", "lora_alpha", "target_modules") if cfg.get(k) in (None, "", [])]
    if missing:
        raise InputError(f"{path}: not a peft LoRA config: no {', '.join(missing)}")
    if not (isinstance(cfg["r"], int) and cfg["r"] > 0):
        raise InputError(f"{path}: not a peft LoRA config: r is {cfg['r']!r}, expected a positive integer")


def load_adapter(decoder: nn.Module, adapter_dir: str | Path, identity=None, merge: bool = True,
                 trainable: bool = False, num_classes: Optional[int] = None):
    """Put the adapter of `adapter_dir` onto `decoder` (a LatentDecoder; modified in place).

    identity: the decoder's ModelIdentity; if given, a different base VQ-VAE than the adapter's is refused.
    merge: fold the LoRA update into the convs and return the plain decoder (no inference overhead);
    otherwise return the peft PeftModel (trainable=True to continue training it).
    A label-conditioned adapter comes back as a LabelConditionedDecoder around either (forward(f_hat, labels));
    num_classes: the generator's class count; if given, a conditioned adapter of another count is refused."""
    d = Path(adapter_dir)
    version = adapter_version(d)
    meta = check_adapter(d)
    if identity is not None:
        want = meta["base"]["vae"]
        if (want["kind"], want["value"]) != (identity.kind, identity.value):
            raise ValueError(f"adapter {d} was trained for the VQ-VAE {want['kind']}:{want['value']}, "
                             f"not {identity.kind}:{identity.value}")
    film = load_label_conditioning(d, meta, num_classes)
    problem = None if film is None else film.mismatch(decoder)
    if problem:  # (before peft touches the decoder)
        raise InputError(f"{d / RADAR_CONFIG}: label_conditioning: {problem}: the adapter was made for another "
                         f"decoder")
    model = _from_pretrained(decoder, d, trainable)
    check_same_adapter(d, version)
    model = model.merge_and_unload() if merge else model
    return model if film is None else LabelConditionedDecoder(model, film.to(next(model.parameters()).device))


def _from_pretrained(decoder: nn.Module, d: Path, trainable: bool):
    """peft's PeftModel.from_pretrained (torch's global RNG left as it was), with the weights file checked to hold exactly the LoRA tensors that
    adapter_config.json puts on this decoder (peft loads a file missing some of them, only warning, and those
    layers then do nothing; a rank other than the config's fails deep inside it): InputError naming the file."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    import torch

    weights = d / ADAPTER_WEIGHTS
    dev = next(decoder.parameters()).device
    try:  # peft initialises the LoRA layers (from torch's global RNG) before it loads them: a caller's later
        # draws must not depend on whether an adapter was loaded
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            warnings.filterwarnings("ignore", "Found missing adapter keys", UserWarning)  # (said below, naming it)
            model = PeftModel.from_pretrained(decoder, str(d), is_trainable=trainable)
    except (RuntimeError, ValueError) as e:  # e.g. a size mismatch: weights of another rank or layer
        raise InputError(f"{weights}: does not fit {ADAPTER_CONFIG} on this decoder "
                         f"({_one_line(str(e).strip().splitlines()[-1], 200)})") from None
    except (KeyError, TypeError, AttributeError) as e:  # a config field peft reads and cannot use
        raise InputError(f"{d / ADAPTER_CONFIG}: peft cannot build the adapter from it "
                         f"({type(e).__name__}: {str(e)[:160]})") from None
    want = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
    have = {k: tuple(v.shape) for k, v in load_safetensors(weights, "adapter weights file").items()}
    missing, unknown = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or unknown or wrong:
        parts = [f"{len(x)} {what} (e.g. {x[0]})" for x, what in
                 ((missing, "LoRA tensors missing"), (unknown, "tensors that are not this adapter's"),
                  (wrong, "tensors of another shape")) if x]
        raise InputError(f"{weights}: does not hold the LoRA tensors {ADAPTER_CONFIG} describes: " + "; ".join(parts))
    return model
