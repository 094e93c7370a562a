"""`radar-train export`: a radar-train Lightning checkpoint (LoRA + training state) -> an adapter folder.

Lives with training (it rebuilds the RadarLoraModule); `radar_train.export` only knows the folder format.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from radar_train.export.adapter import is_adapter_dir, save_adapter
from radar_train.inputs import InputError, load_torch
from radar_train.outputs import check_replace_dir

__all__ = ["read_checkpoint", "export_checkpoint"]


def read_checkpoint(path: str | Path) -> dict:
    """A radar-train Lightning checkpoint (torch.load, weights_only=True); InputError naming the file if it is
    missing, truncated, or not written by radar-train."""
    state = load_torch(path, "radar-train checkpoint")
    if not isinstance(state, dict) or not all(k in state for k in ("hyper_parameters", "radar", "state_dict")):
        raise InputError(f"{path}: not a radar-train checkpoint (no hyper_parameters / radar metadata / state_dict)")
    if not all(isinstance(state[k], dict) for k in ("hyper_parameters", "radar", "state_dict")):
        raise InputError(f"{path}: not a radar-train checkpoint (hyper_parameters / radar / state_dict not mappings)")
    return state


def export_checkpoint(ckpt: str | Path, output: str | Path, overwrite: bool = False,
                      on_start: Optional[Callable[[], None]] = None,
                      vae_checkpoint: Optional[str | Path] = None) -> Path:
    """Write the adapter folder `output` from the checkpoint `ckpt`. Rebuilds the base decoder from the
    checkpoint's hyper-parameters: its VQ-VAE file, as the fit named it (relative to the folder the fit ran in),
    or `vae_checkpoint` (which must be the one it was trained on). `output` must be new or empty, or an adapter
    folder replaced only with `overwrite`; it may not hold the checkpoint or the VQ-VAE file. `on_start` is called
    once every check has passed, before the adapter is written."""
    from radar_train.inputs import check_file
    from radar_train.train.module import module_from_hparams

    p = Path(ckpt)
    state = read_checkpoint(p)
    hparams = state["hyper_parameters"]
    decoder = hparams.get("decoder") if isinstance(hparams.get("decoder"), dict) else {}
    vae = decoder.get("vae_checkpoint")
    if vae_checkpoint is not None:
        check_file(vae_checkpoint, "--vae_checkpoint file")
        vae, hparams = str(vae_checkpoint), {**hparams, "decoder": {**decoder, "vae_checkpoint": str(vae_checkpoint)}}
    elif isinstance(vae, str) and not Path(vae).is_file():  # (named relative to the folder the fit ran in)
        raise InputError(f"--ckpt {ckpt}: the VQ-VAE file it was trained with, {vae} (as the fit named it: relative "
                         f"to the folder it ran in), is not here: run the export from that folder, or name the file "
                         f"with --vae_checkpoint")
    check_replace_dir(output, is_adapter_dir, "an adapter folder", "--output",
                      {"--ckpt": p, "the checkpoint's VQ-VAE file": vae}, overwrite)
    from radar_train.train.run_lock import check_not_in_use

    # a run folder's final/ or step-NNNNNN/ while its fit runs: the fit replaces its own exports at its end
    check_not_in_use(Path(output).resolve().parent, "--output's run folder")
    module = module_from_hparams(hparams, training=False)
    base = state["radar"].get("base")
    trained = base.get("vae") if isinstance(base, dict) else None
    if vae_checkpoint is not None and isinstance(trained, dict) and \
            (trained.get("kind"), trained.get("value")) != (module.identity.kind, module.identity.value):
        raise InputError(f"--vae_checkpoint {vae_checkpoint}: not the VQ-VAE --ckpt {ckpt} was trained on (its "
                         f"{module.identity.kind}:{module.identity.value}, the checkpoint's "
                         f"{trained.get('kind')}:{trained.get('value')})")
    module.check_checkpoint(state, str(p))
    if on_start is not None:
        on_start()
    module.load_state_dict(state["state_dict"], strict=False)
    meta = dict(state["radar"])
    meta["source_checkpoint"] = str(p.resolve())  # (as radar-train merge records its adapter: not relative to the cwd)
    return save_adapter(module.net, output, meta, conditioning=module.label_cond, overwrite=overwrite,
                        option="--output", checked=True)
