"""radar-train: PAA LoRA training on the frozen VQ-VAE decoder (LightningCLI) and adapter export.

    radar-train fit --config configs/train/tiny.yaml [--trainer.max_steps 100 ...]
    radar-train fit --config configs/train/tiny.yaml --ckpt_path last        # resume the run folder
    radar-train fit --config configs/train/tiny.yaml --print_config
    radar-train validate --config configs/train/tiny.yaml --ckpt_path last
    radar-train export --ckpt checkpoints/tiny/checkpoints/last.ckpt --output adapters/tiny [--overwrite]
    radar-train merge --adapter adapters/tiny --output vae_tiny_radar.pth [--vae_checkpoint FILE] [--overwrite]

The run folder is `trainer.default_root_dir` (e.g. checkpoints/tiny): checkpoints/ (Lightning .ckpt, resume
only), tb/ (TensorBoard), config.yaml (the resolved config), final/ and step-NNNNNN/ (adapter exports).
A new `fit` (also `--ckpt_path last` with no checkpoint to resume) needs a run folder that is absent, empty, or
holds only what an attempt that never reached a checkpoint leaves (config.yaml, tb/), and no --config file
that is its config.yaml; a folder with checkpoints or adapters is resumed with
`--ckpt_path last` (one holding only hpc_ckpt_N.ckpt, Lightning's save when SLURM requeued the job before
its first checkpoint, with `--ckpt_path hpc`), never started over. Every check runs before anything is written.
A fit holds RUN/.fit.lock while it runs (train/run_lock.py): a second fit into the same folder is refused while
the first runs. Precision defaults
to bf16-mixed on a GPU and 32-true on the CPU. Under SLURM the SLURMEnvironment plugin is added with
auto-requeue on SIGUSR1 (its save taken at a step boundary: train/requeue.py).
"""
from __future__ import annotations

import logging
import os
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import Literal, Optional, Sequence

USAGE = """usage: radar-train {fit,validate,export,merge} ...

  fit       train LoRA adapters (LightningCLI; --config FILE, dotted overrides, --print_config, --ckpt_path last);
            a new run needs a new or empty run folder, a run with checkpoints is resumed with --ckpt_path last
  validate  run the validation metrics on a checkpoint (LightningCLI; logs to RUN/tb/validate/version_N/)
  export    write a peft adapter folder from a Lightning checkpoint (--ckpt PATH --output DIR [--overwrite])
  merge     write the adapter merged into its base VQ-VAE as one plain VQ-VAE file, for the official VAR code
            (--adapter DIR --output FILE.pth|.safetensors [--vae_checkpoint FILE] [--dtype] [--overwrite])

`radar-train fit --help` lists every option."""

FIT_SUMMARY = """radar-train fit: train PAA LoRA adapters on the frozen VQ-VAE decoder from radar-cache caches.

  radar-train fit --config configs/train/tiny.yaml [--trainer.max_steps 100 ...]

The options people change (every option follows below; a dotted option overrides the config's value):
  --config FILE                        training config (configs/train/*.yaml); several: later ones win
  --data.caches '[{path: cache/NAME, train_shards: 0-7, val_shards: "8-9"}]'
                                       the caches to train on and which shards train / validate
  --data.batch_size N                  pairs per batch (per device)
  --model.decoder.vae_checkpoint FILE  the VQ-VAE the caches were made with (checked against them)
  --model.lora.rank R                  LoRA rank (also --model.lora.alpha, --model.lora.targets)
  --model.loss.l1_weight W             loss weights: --model.loss.{l1,l2,feature,identity,lpips}_weight
                                       (LPIPS needs --model.loss.lpips_vgg; the heads default to torchmetrics')
  --trainer.max_steps N                optimizer steps of the run
  --model.optim.learning_rate LR       peak learning rate (also --model.optim.warmup_steps, weight_decay)
  --trainer.default_root_dir DIR       the run folder: checkpoints/, tb/, config.yaml, final/
  --ckpt_path last                     resume the run in that folder from checkpoints/last.ckpt
                                       (hpc: from its newest hpc_ckpt_N.ckpt, a SLURM requeue save)
  --trainer.val_check_interval N       validate every N steps (--model.early_stopping.* to stop early)
  --print_config                       print the resolved config and exit
  --check                              check the options and the run folder (not the caches or the models), and
                                       exit: what slurm/pipeline.sh runs before it submits the cache jobs

Progress goes to stderr: a bar on a terminal, otherwise a line every 30 s (RADAR_PROGRESS_INTERVAL=SECONDS,
RADAR_PROGRESS=auto|bar|log|off).

Every option:
"""
VALIDATE_SUMMARY = """radar-train validate: the validation metrics of a run's checkpoint (logged to RUN/tb/validate/).

  radar-train validate --config RUN/config.yaml --ckpt_path last

The options people change (every option follows below):
  --config FILE                        the run's config.yaml (or the training config)
  --ckpt_path last|FILE                the checkpoint (last: RUN/checkpoints/last.ckpt)
  --data.caches '[{path: cache/NAME, val_shards: "8-9"}]'   the shards to validate on

Every option:
"""
LIGHTNING_SUBCOMMANDS = ("fit", "validate")
OTHER_SUBCOMMANDS = ("export", "merge")  # (no Lightning import)
RUN_OPTION = "--trainer.default_root_dir"
# what a fit writes into its run folder before its first checkpoint (a folder holding only these is reused)
EARLY_RUN_ENTRIES = ("config.yaml", "tb", "checkpoints")
# what a fit writes or replaces there
RUN_ENTRIES = ("config.yaml", "tb", "checkpoints", "final")
# ckpt_path values Lightning resolves itself
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")
STEP_EXPORT = re.compile(r"step-(\d+)")  # a step's adapter export, RUN/step-NNNNNN/
# what Lightning's SLURM requeue saves at the run folder's top level (resumed with --ckpt_path hpc)
HPC_CKPT = re.compile(r"hpc_ckpt_(\d+)\.ckpt")


def export(ckpt: str, output: str, overwrite: bool = False, vae_checkpoint: Optional[str] = None) -> int:
    """Export the adapter folder from a radar-train checkpoint.

    Writes a peft adapter folder (adapter_config.json, adapter_model.safetensors, radar_config.yaml)
    from a radar-train Lightning checkpoint. The output must be a new or empty folder; an existing adapter
    folder is replaced only with --overwrite; any other folder, a file, or a folder holding the checkpoint
    (e.g. the run folder) is refused.

    Args:
        ckpt: Lightning checkpoint written by `radar-train fit` (e.g. RUN/checkpoints/last.ckpt).
        output: adapter folder to write.
        overwrite: replace an existing adapter folder at `output`.
        vae_checkpoint: the VQ-VAE file the run was trained on (default: the file as the fit named it, relative to
            the folder it ran in); its identity must be the checkpoint's.
    """
    import json

    from radar_train.cli.common import run_until_stopped, signals_ignored_to_the_end, stopped_status
    from radar_train.outputs import given_output, swaps_end_command
    from radar_train.train.export import export_checkpoint

    given_output(output, "--output")
    # the module rebuilt from the checkpoint logs the LoRA it holds as in training: said once below instead
    module_log = logging.getLogger("radar_train.train.module")
    level = module_log.level
    module_log.setLevel(logging.WARNING)
    try:  # (the start line once the checks passed: a refusal is its one line)
        with swaps_end_command(signals_ignored_to_the_end):  # (the adapter swapped in: it ends)
            path = run_until_stopped("radar-train export", lambda: export_checkpoint(  # (SIGTERM: no line before)
                ckpt, output, overwrite=overwrite, vae_checkpoint=vae_checkpoint,
                on_start=lambda: print(f"radar-train export: {ckpt} -> {output}", flush=True)))
    finally:
        module_log.setLevel(level)
    if path is None:
        return stopped_status()
    cfg = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
    print(f"adapter: {path} (peft LoRA r={cfg.get('r')}, alpha={cfg.get('lora_alpha'):g})")
    return 0


def merge(adapter: str, output: str, vae_checkpoint: Optional[str] = None,
          dtype: Literal["float32", "float16", "bfloat16"] = "float32", overwrite: bool = False) -> int:
    """Write an adapter merged into its base VQ-VAE as one plain VQ-VAE file.

    The LoRA of the adapter folder is folded into the decoder's convolutions of the VQ-VAE it was trained on, and
    the whole VQ-VAE (encoder and quantizer too) is written under the official key names: a .pth that the
    official VAR code loads with `vae.load_state_dict(torch.load(FILE, weights_only=True))`, or a .safetensors;
    `--model.vae_checkpoint FILE` of radar-generate and radar-cache loads either. FILE.json beside it records the
    base VQ-VAE, the adapter and the acceleration it restores. Decode that acceleration's latents with it;
    vanilla latents with the base VQ-VAE. An existing FILE or FILE.json is replaced only with --overwrite; the
    base VQ-VAE file and the adapter folder never are. A label-conditioned adapter cannot be merged (its decoder
    takes the labels).

    Args:
        adapter: adapter folder exported by radar-train (final/, step-NNNNNN/, or radar-train export's).
        output: the merged VQ-VAE file to write (.pth, .pt, .bin or .safetensors).
        vae_checkpoint: the base VQ-VAE file (default: the first file the adapter records that is here, else the
            preset's packaged one); its sha256 must be the adapter's base.
        dtype: the floating tensors' type in the file (the official VQ-VAE file is float32); the quantizer's stay
            float32 (VAR's tokens are made with them).
        overwrite: replace an existing FILE and FILE.json.
    """
    from radar_train.cli.common import Stopped, end_stopped_run, signals_ignored_to_the_end, sigterm_stops
    from radar_train.export.adapter import holds_adapter, read_radar_config
    from radar_train.export.merged import (WEIGHT_SUFFIXES, base_vae_file, check_mergeable, merged_vqvae, sidecar_path,
                                           write_merged)
    from radar_train.inputs import check_dir, check_file
    from radar_train.outputs import OutputError, check_output_file, swaps_end_command

    if Path(output).suffix.lower() not in WEIGHT_SUFFIXES:
        raise ValueError(f"--output {output}: give a file name ending in {', '.join(WEIGHT_SUFFIXES)}")
    check_dir(adapter, "--adapter folder")
    if vae_checkpoint is not None:
        check_file(vae_checkpoint, "--vae_checkpoint file")
    meta = read_radar_config(adapter)
    check_mergeable(adapter, meta, dtype)  # (before the start line: a refusal is its one line)
    vae_file = base_vae_file(adapter, meta, vae_checkpoint)
    inputs = {"--adapter": adapter, "--vae_checkpoint" if vae_checkpoint else "the base VQ-VAE file": vae_file}
    # another adapter folder, the output's or any above it (--overwrite replaced a step export's
    # adapter_model.safetensors: it no longer loaded; a sub-folder made an export no adapter folder); the input
    # adapter's own folder is check_output_file's to name
    holder = next((a for a in Path(output).resolve().parents if holds_adapter(a)), None)
    if holder is not None and holder != Path(adapter).resolve():
        raise OutputError(f"--output {output} is inside the adapter folder {holder}: write the merged VQ-VAE "
                          f"elsewhere")
    check_output_file(output, "--output", inputs, overwrite)
    check_output_file(sidecar_path(output), "--output's record", inputs, overwrite)
    source = "--vae_checkpoint" if vae_checkpoint else "the VQ-VAE file the adapter records,"
    before = {p: _stat(p) for p in (Path(output), sidecar_path(output))}
    try:
        with sigterm_stops(), swaps_end_command(signals_ignored_to_the_end):  # (the renames: its end)
            sd, description = merged_vqvae(adapter, vae_file, dtype, source)  # (the base checked: then the line)
            print(f"radar-train merge: {adapter} into the VQ-VAE {vae_file or meta['base'].get('preset')} -> "
                  f"{output}", flush=True)
            out, side = write_merged(sd, output, description, overwrite)
            signals_ignored_to_the_end()  # (both files in place: a signal now would only change the status)
    except (Stopped, KeyboardInterrupt) as e:  # (a temporary being written is removed on the way out)
        moved = [str(p) for p, st in before.items() if _stat(p) != st]
        said = ("nothing was written" if not moved else
                f"{' and '.join(moved)} written without the other: run the command again with --overwrite")
        return end_stopped_run("radar-train merge", e, said)
    lora = description["adapter"]["lora"]
    restores = ", ".join(sorted({_accel_name(r.get("accel")) for r in description["restores"]})) or "not recorded"
    print(f"merged VQ-VAE: {out} ({dtype}, {out.stat().st_size / 2**20:.1f} MiB; LoRA r={lora.get('rank')} merged "
          f"into {description['adapter']['merged_modules']} convolutions) and {side}")
    print(f"it restores the latents of: {restores}; decode vanilla latents with the base VQ-VAE")
    return 0


def _stat(p: Path) -> Optional[tuple[int, int]]:
    try:
        st = p.lstat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _accel_name(accel) -> str:
    if not isinstance(accel, dict):
        return "?"
    return f"{accel.get('method')}:{accel.get('preset')}" if accel.get("preset") else str(accel.get("method"))


def newest_run_checkpoint(root: str | os.PathLike) -> Optional[Path]:
    """The run's most recently written checkpoint among its newest RUN/hpc_ckpt_<N>.ckpt (`hpc_checkpoint`),
    RUN/checkpoints/last.ckpt and its newest RUN/checkpoints/step-<N>.ckpt (`newest_step_checkpoint`), the first of
    them on a tie, or None: the one slurm/train.sbatch resumes a requeued job from (its newest_checkpoint)."""
    step = newest_step_checkpoint(root)
    found = [hpc_checkpoint(root), Path(root) / "checkpoints" / "last.ckpt", step and step[1]]
    found = [e for e in found if e is not None and e.is_file()]
    return max(found, key=lambda e: e.stat().st_mtime_ns) if found else None


def hpc_checkpoint(root: str | os.PathLike) -> Optional[Path]:
    """The run folder's hpc_ckpt_N.ckpt of the highest N (what Lightning's SLURM requeue saved last, and what
    `--ckpt_path hpc` resumes from; `--ckpt_path last` only looks in checkpoints/), or None."""
    found = [(int(m.group(1)), e) for e in Path(root).glob("hpc_ckpt_*.ckpt")
             if (m := HPC_CKPT.fullmatch(e.name)) and e.is_file()]
    return max(found)[1] if found else None


def _run_dir_entries(root: Path) -> tuple[list[str], list[str]]:
    """(artefacts of an earlier run that a new fit would replace or mix with, foreign entries)."""
    from radar_train.train.checkpoint_io import is_save_temp
    from radar_train.train.run_lock import is_lock_entry

    artefacts, foreign = [], []
    for e in sorted(root.iterdir()):
        if is_lock_entry(e):  # a fit's lock (a running one is refused by the lock itself): not the run's
            continue
        if is_save_temp(e):  # a killed requeue save's temporary (the run's next save removes it): the run's own
            continue
        if e.name == "checkpoints" and e.is_dir():
            artefacts += [f"checkpoints/{c.name}" for c in sorted(e.glob("*.ckpt"))]
        elif e.name == "final" or e.name.startswith("step-") or (HPC_CKPT.fullmatch(e.name) and e.is_file()):
            artefacts.append(e.name)
        elif e.name not in EARLY_RUN_ENTRIES:
            foreign.append(e.name)
    return artefacts, foreign


def last_checkpoints(root: str | os.PathLike) -> list[Path]:
    """[RUN/checkpoints/last.ckpt] if the run has it: what `--ckpt_path last` resumes (with a newer step file,
    newest_step_checkpoint). Never another last*.ckpt: Lightning's own lookup for `last` takes the newest file
    whose name starts with `last` (a user's last-backup.ckpt, or an order a copy of the folder made), so the
    commands hand Lightning the file checked instead."""
    last = Path(root) / "checkpoints" / "last.ckpt"
    return [last] if last.is_file() else []


def resumes(root: str | os.PathLike, ckpt_path: Optional[str]) -> bool:
    """Whether `ckpt_path` resumes a run in the folder `root`: `last` with a RUN/checkpoints/last*.ckpt (or a
    step-NNNNNN.ckpt: newest_step_checkpoint), `hpc` with a RUN/hpc_ckpt_N.ckpt, or a checkpoint file inside RUN.
    `last` without one starts from step 0: a new fit, which must pass the new fit's checks (it would replace
    config.yaml and add checkpoints/, tb/ and final/ to whatever folder it is)."""
    p = Path(root)
    if ckpt_path == "last":  # (a step file without a last.ckpt: check_ckpt_path resumes from it)
        return bool(last_checkpoints(p)) or newest_step_checkpoint(p) is not None
    if ckpt_path == "hpc":
        return hpc_checkpoint(p) is not None
    return (ckpt_path is not None and ckpt_path not in SPECIAL_CKPT_PATHS
            and p.resolve() in Path(ckpt_path).resolve().parents)


def check_config_kept(root: str | os.PathLike, configs: Sequence) -> None:
    """OutputError if a --config file is the RUN/config.yaml a new fit writes its resolved config to (the
    file would be overwritten by the fit it configures). A resume is not checked here: RUN/config.yaml is
    then the run's own saved config, which the resume saves again with its overrides."""
    from radar_train.outputs import OutputError

    target = os.path.realpath(Path(root) / "config.yaml")
    for config in configs:
        if config is not None and os.path.realpath(os.fspath(config)) == target:
            given = getattr(config, "relative", config)  # a jsonargparse Path: as typed
            how = resume_option(Path(root))  # (no checkpoint there: a resume is no way out)
            raise OutputError(f"{RUN_OPTION} {root} would overwrite the input --config {given} (a fit "
                              f"saves its resolved config as {Path(root) / 'config.yaml'}): keep the config outside "
                              f"the run folder" + (f", or resume the run there with {how}" if how else ""))


def resume_option(root: Path) -> Optional[str]:
    """The --ckpt_path that resumes the run in `root`: `last` (checkpoints/last.ckpt or a step file), `hpc` (its
    only checkpoints are SLURM requeue saves), FILE (only checkpoints of other names); None when it holds no
    checkpoint at all (a run with --model.output.checkpoints false, or one that ended before its first save)."""
    if resumes(root, "last"):
        return "--ckpt_path last"
    named = any((root / "checkpoints").glob("*.ckpt")) if (root / "checkpoints").is_dir() else False
    hpc = hpc_checkpoint(root) is not None
    if hpc and not named:
        return "--ckpt_path hpc"
    return "--ckpt_path FILE (a checkpoint of its checkpoints/)" if named or hpc else None


def check_run_folder(root: str | os.PathLike, ckpt_path: Optional[str], subcommand: str, inputs: dict,
                     configs: Sequence = ()) -> None:
    """OutputError unless the run folder may be written: not a file, not inside (or holding) a cache, and
    for a new fit (no --ckpt_path, a checkpoint of another folder, or `last` / `hpc` with nothing there to
    resume) absent, empty or an early leftover, and not holding a --config file (`configs`) as config.yaml."""
    from radar_train.outputs import OutputError, check_no_overlap, check_no_tilde, check_writable

    check_no_tilde(root, RUN_OPTION)
    try:  # (bytes a Latin-1 terminal typed arrive as surrogates: TensorBoard's writer failed after the checks)
        os.fspath(root).encode("utf-8")
    except UnicodeEncodeError:
        raise OutputError(f"{RUN_OPTION} {os.fspath(root)!r} is not a UTF-8 path (typed in a locale of another "
                          f"encoding?), which TensorBoard's writer cannot open: name the run folder in UTF-8") from None
    p = Path(root)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{RUN_OPTION} {p} is an existing file: give a folder")
    check_writable(p, RUN_OPTION)  # (a file above it, a folder we may not write into)
    check_no_overlap(RUN_OPTION, p, inputs, [p / e for e in RUN_ENTRIES])
    if subcommand == "fit" and p.is_dir() and resumes(p, ckpt_path):
        check_final_replaceable(p)
        check_run_entries_writable(p)
    if subcommand != "fit" or not p.is_dir() or resumes(p, ckpt_path):
        return  # nothing there yet, or resuming the run in its own folder
    check_config_kept(p, configs)
    artefacts, foreign = _run_dir_entries(p)
    # `last` / `hpc` given, but no checkpoint there for it: Lightning would start from step 0
    nothing = (f" but no checkpoint for --ckpt_path {ckpt_path} ("
               f"{'checkpoints/last.ckpt' if ckpt_path == 'last' else 'hpc_ckpt_N.ckpt'})"
               if ckpt_path in ("last", "hpc") else "")
    if artefacts:
        # only a SLURM requeue save (no checkpoints/last.ckpt): `last` would not find it, `hpc` does; neither a
        # last.ckpt nor a step file (a checkpoint of the user's own name): only the file itself resumes
        how, held = resume_option(p), ", ".join(artefacts[:3])
        if how is None:  # (adapters only: it saved no checkpoint, so no --ckpt_path resumes it)
            raise OutputError(f"{RUN_OPTION} {p} holds a run already ({held}) but no checkpoint that resumes it (it "
                              f"saved none: --model.output.checkpoints false, or it ended before its first save): "
                              f"choose a new run folder, or move {held} away")
        raise OutputError(f"{RUN_OPTION} {p} holds a run already ({held}){nothing}: resume it with {how}, or "
                          f"choose a new run folder")
    if foreign:
        raise OutputError(f"{RUN_OPTION} {p} is a folder that is not empty and not a run folder (it holds "
                          f"{', '.join(foreign[:3])}){nothing}: choose a new or empty folder")
    check_run_entries_writable(p)  # (an early leftover's tb/ or checkpoints/, which the fit reuses)


def check_run_entries_writable(root: Path) -> None:
    """OutputError for a folder of the run that the fit writes into or replaces (tb/, checkpoints/, final/, the step
    exports) but may not (permission denied): said before it trains, not at its first save, its TensorBoard
    writer's first flush (a traceback from the writer's thread) or the export at its end."""
    from radar_train.outputs import OutputError

    for entry in [root / "tb", root / "checkpoints", root / "final", *sorted(root.glob("step-*"))]:
        if entry.is_dir() and not os.access(entry, os.W_OK | os.X_OK):
            raise OutputError(f"{RUN_OPTION} {root}: cannot write into its {entry.name}/ (permission denied), "
                              f"which the run writes into: make it writable, then run the command again")


def check_final_replaceable(root: Path) -> None:
    """OutputError if the run folder's final/ is something its export at the run's end would not replace (a file, or
    a folder that is not an adapter folder or holds other files too: the user's): said before the resumed run trains,
    not after it (the export failed then, its error taken for a failed training step)."""
    from radar_train.export.adapter import is_adapter_dir
    from radar_train.outputs import OutputError

    final = root / "final"
    if (final.is_symlink() and not final.exists()) or (final.exists() and not final.is_dir()) or \
            (final.is_dir() and any(final.iterdir()) and not is_adapter_dir(final)):
        raise OutputError(f"{RUN_OPTION} {root}: its final/ is not the run's adapter folder (a file, a link to "
                          f"nothing, or a folder holding other files), which the run's export at its end never "
                          f"replaces: move it away, then resume")


def check_step_exports(root: str | os.PathLike, step: int) -> None:
    """OutputError for an entry RUN/step-NNNNNN past `step` (the checkpoint's: the resumed run may export there)
    that is not one of the run's exports: a file, a link, a folder of other files (the export failed on it
    mid-run, hours of training later), or an adapter folder of another step (a user's adapter put there, which the
    export replaced without a word). Said before the resumed run trains."""
    from radar_train.export.adapter import is_adapter_dir, read_radar_config
    from radar_train.outputs import OutputError

    for entry in sorted(Path(root).glob("step-*")):
        m = STEP_EXPORT.fullmatch(entry.name)
        if m is None or int(m.group(1)) <= step:
            continue
        why = None
        if entry.is_symlink() or not entry.is_dir():
            why = "a file or a link"
        elif not any(entry.iterdir()):  # (empty: the export writes it)
            pass
        elif not is_adapter_dir(entry):
            why = "a folder holding other files"
        else:
            try:
                saved = read_radar_config(entry).get("global_step")
            except ValueError:
                saved = None
            if saved != int(m.group(1)):
                why = f"an adapter of {'another step' if isinstance(saved, int) else 'unreadable metadata'}"
        if why is not None:
            raise OutputError(f"{RUN_OPTION} {root}: {entry.name} is not one of the run's step exports ({why}), "
                              f"and the run resumed at step {step} may export step {int(m.group(1))} there: move it "
                              f"away, then resume")


def say_validation_data(meta: dict, datamodule, ckpt_path: str) -> None:
    """radar-train validate, which may measure on any cache: a warning line where its validation shards hold pairs
    the checkpoint (its radar metadata `meta`) was trained on, or where the checkpoint cannot tell, and where a cache's
    latents are of another acceleration or VAR than those it trained on (radar-eval refuses the first and warns of
    the others; these metrics were labelled as a held-out validation without a word)."""
    from radar_train.config import format_int_list
    from radar_train.inference.evaluate import other_latents, train_shard_overlap, unknown_training_shards

    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:  # (every process of a multi-process validate runs this: once, as fit)
        return
    say = logging.getLogger("radar_train").warning
    for c, (_, val) in zip(getattr(datamodule, "caches", []), getattr(datamodule, "splits", [])):
        manifest = datamodule.manifests.get(c.path) if val else None
        if manifest is None:
            continue
        unknown = unknown_training_shards(meta, c.path, manifest)
        overlap = [] if unknown else train_shard_overlap(meta, c.path, manifest, val)
        if unknown:
            say("radar-train validate: checkpoint %s: %s, so whether the validation shards of %s hold pairs it was "
                "trained on is unknown", ckpt_path, unknown, c.path)
        elif overlap:
            say("radar-train validate: shards %s of %s are training shards of the checkpoint %s: these metrics "
                "include pairs it was trained on (not held-out)", format_int_list(overlap, ","), c.path, ckpt_path)
        for other in other_latents(meta, c.path, manifest):
            say("radar-train validate: checkpoint %s was trained on latents of %s", ckpt_path, other)


def check_ckpt_path(ckpt_path: Optional[str], root: str | os.PathLike,
                    subcommand: str = "fit") -> Optional[tuple[Path, dict]]:
    """Read the checkpoint to resume from (InputError naming it if missing or truncated): an explicit path,
    RUN/checkpoints/last.ckpt for `last` when it exists (without one a fit starts from scratch, which is
    refused when RUN holds a SLURM requeue save: that is `hpc`; `validate` is refused: it would report an
    untrained adapter's metrics), or RUN's newest hpc_ckpt_N.ckpt for `hpc`.
    Returns (path, checkpoint), or None when there is none to read."""
    from radar_train.inputs import InputError, load_torch

    if ckpt_path == "hpc":
        path = hpc_checkpoint(root)
        if path is None:
            raise InputError(f"--ckpt_path hpc: {RUN_OPTION} {root} holds no hpc_ckpt_N.ckpt (the checkpoint "
                             f"Lightning saves when SLURM requeues a job); use --ckpt_path last or a file")
        return path, load_torch(path, "--ckpt_path checkpoint")
    if ckpt_path == "best":  # (Lightning's: the best model path of a checkpoint callback in this process, which a
        best = sorted((Path(root) / "checkpoints").glob("best-step-*.ckpt"))  # new process has not got)
        where = f"{best[-1]}" if best else (f"{Path(root) / 'checkpoints'}/best-step-NNNNNN.ckpt, which a run with "
                                            f"--model.early_stopping.final_adapter best, or auto with early "
                                            f"stopping, keeps")
        raise InputError(f"--ckpt_path best: give the best step's checkpoint file ({where}), or last")
    if ckpt_path is None or ckpt_path in SPECIAL_CKPT_PATHS[1:]:
        return None
    path = Path(root) / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    step_file = newest_step_checkpoint(root) if ckpt_path == "last" else None
    if ckpt_path == "last" and not path.exists():
        hpc = hpc_checkpoint(root)
        if hpc is not None and not last_checkpoints(root):
            raise InputError(f"--ckpt_path last: {path} does not exist, but {RUN_OPTION} {root} holds {hpc.name} "
                             f"(saved when SLURM requeued the job; `last` does not look there): resume from it "
                             f"with --ckpt_path hpc")
        if step_file is not None and not last_checkpoints(root):  # (a run killed while saving its first last.ckpt)
            return step_file[1], load_torch(step_file[1], "--ckpt_path checkpoint")
        if subcommand != "fit" and not last_checkpoints(root):
            raise InputError(f"--ckpt_path last: {path} does not exist (no checkpoint to {subcommand} in "
                             f"{RUN_OPTION} {root}): give the run folder that holds it, or a checkpoint file")
        return None
    state = load_torch(path, "--ckpt_path checkpoint")
    if step_file is not None and isinstance(state, dict) and isinstance(state.get("global_step"), int) \
            and step_file[0] > state["global_step"] and step_file[1].stat().st_mtime_ns > path.stat().st_mtime_ns:
        return step_file[1], load_torch(step_file[1], "--ckpt_path checkpoint")  # (killed between the two files)
    return path, state


def newest_step_checkpoint(root: str | os.PathLike) -> Optional[tuple[int, Path]]:
    """RUN/checkpoints/step-NNNNNN.ckpt of the highest step, with its step, or None. A run saves a step's file
    first and last.ckpt after it: a run killed between the two has a step file newer than last.ckpt (or the
    only checkpoint, at its first save), which `--ckpt_path last` resumes from."""
    from radar_train.train.run_checkpoint import STEP_CKPT

    found = [(int(m.group(1)), e) for e in (Path(root) / "checkpoints").glob("step-*.ckpt")
             if (m := STEP_CKPT.fullmatch(e.name)) and e.is_file()]
    return max(found) if found else None


def check_resume_steps(resume: tuple[Path, dict], max_steps: int) -> None:
    """ValueError if the checkpoint to resume is past the run's max_steps: Lightning would train nothing, exit 0
    and rewrite the run's config.yaml with the smaller max_steps. (At max_steps itself the resumed fit ends the
    run: the validation a failed save owed, final/.)"""
    step = resume[1].get("global_step")
    if isinstance(step, int) and 0 <= max_steps < step:
        raise ValueError(f"--ckpt_path {resume[0]} is at step {step}, past --trainer.max_steps {max_steps}: the "
                         f"resumed run would train nothing; give --trainer.max_steps {step} or more")


def check_class_options(cfg) -> None:
    """ValueError for what the module and the datamodule would refuse of their options, found in the parsed config
    before either is built (no model or cache read), in the words they use: --model.decoder.preset, the option groups'
    checks, model.lora.targets and model.label_conditioning.norms against the preset's decoder (built on the meta
    device), the data options. `fit --check` ends before the classes are built: these were not checked there."""
    import inspect

    from radar_train.config import preset_problems
    from radar_train.train.datamodule import CacheSource, PairDataModule
    from radar_train.train.module import RadarLoraModule, layout_problems, option_problems

    def plain(ns) -> dict:  # (without jsonargparse's own keys: `__path__` of a group given as a file)
        d = ns.as_dict() if hasattr(ns, "as_dict") else dict(ns or {})
        return {k: v for k, v in d.items() if not (k.startswith("__") and k.endswith("__"))}

    model, data = cfg.get("model"), cfg.get("data")
    if hasattr(model, "get"):
        decoder = model.get("decoder")
        preset = decoder.get("preset") if hasattr(decoder, "get") else None
        problems = preset_problems("--model.decoder.preset", preset) if preset is not None else []
        if problems:
            raise ValueError(problems[0])
        params = inspect.signature(RadarLoraModule.__init__).parameters
        groups = {k: type(params[k].default)(**plain(model.get(k))) for k in params
                  if k not in ("self", "decoder") and model.get(k) is not None}
        problems = option_problems(*groups.values())
        if not problems and preset is not None and {"lora", "label_conditioning"} <= set(groups):
            problems = layout_problems(preset, groups["lora"], groups["label_conditioning"])
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))
    if hasattr(data, "get") and isinstance(data.get("caches"), list):
        options = plain(data)
        PairDataModule(**{**options, "caches": [CacheSource(**plain(c)) for c in options["caches"]]})


def trainer_problems(trainer, subcommand: str = "fit", model=None, ckpt_path: Optional[str] = None) -> list[str]:
    """What Lightning would refuse only once the run had started (writing config.yaml and tb/ first), or
    not at all: accumulate_grad_batches below 1, a val_check_interval of 0 (both a ZeroDivisionError inside
    the fit), max_steps below -1, max_epochs 0 or (fit) max_steps 0 (a run that trains nothing and exits 0); and
    (fit) settings radar-train's own machinery cannot follow (`_fit_problems`). A `trainer` that is not a mapping
    is left to the parser."""
    p = []
    if not hasattr(trainer, "get"):
        return p
    if subcommand == "fit":
        p += _fit_problems(trainer, model if hasattr(model, "get") else {}, ckpt_path)
    accumulate, interval, max_steps = (trainer.get(k) for k in ("accumulate_grad_batches", "val_check_interval",
                                                                  "max_steps"))
    if isinstance(accumulate, int) and accumulate < 1:
        p.append(f"--trainer.accumulate_grad_batches must be >= 1, got {accumulate}")
    if isinstance(interval, int) and not isinstance(interval, bool) and interval < 1:
        p.append(f"--trainer.val_check_interval must be a step count >= 1 (or a fraction of an epoch in (0, 1]), "
                 f"got {interval}")
    elif isinstance(interval, float) and not 0 < interval <= 1:
        p.append(f"--trainer.val_check_interval must be a fraction of an epoch in (0, 1] (or a step count >= 1), "
                 f"got {interval}")
    if isinstance(max_steps, int) and max_steps < -1:
        p.append(f"--trainer.max_steps must be >= 0, or -1 for no limit, got {max_steps}")
    elif max_steps == 0 and not isinstance(max_steps, bool) and subcommand == "fit":
        p.append("--trainer.max_steps 0 trains nothing: give at least 1, or -1 for no limit")
    if trainer.get("max_epochs") == 0 and not isinstance(trainer.get("max_epochs"), bool) and subcommand == "fit":
        p.append("--trainer.max_epochs 0 trains nothing: give at least 1, or -1 for no limit")
    limit = trainer.get("limit_val_batches")
    if subcommand == "validate" and limit == 0 and not isinstance(limit, bool):  # (a fit may so turn validation off)
        p.append(f"--trainer.limit_val_batches {limit} validates nothing: give a batch count >= 1 or a fraction of "
                 f"the validation data in (0, 1]")
    return p


def _fit_problems(trainer, model, ckpt_path: Optional[str]) -> list[str]:
    """Trainer settings of a fit that radar-train's run folder, loaders and schedule cannot follow, each refused
    before anything is written, naming the option and what to give instead."""
    p = []
    optim, output = model.get("optim") or {}, model.get("output") or {}
    epochs = trainer.get("max_epochs")
    if epochs is None and trainer.get("max_time") is not None:
        epochs = -1  # (Lightning's default beside a max_time; without one it is 1000)
    if trainer.get("max_steps") == -1 and epochs == -1 and not optim.get("schedule_steps"):
        # (Lightning's estimated_stepping_batches is then inf: an OverflowError after config.yaml and tb/)
        p.append("--trainer.max_steps -1 with --trainer.max_epochs -1 (its default beside --trainer.max_time) gives "
                 "the run no length (a --trainer.max_time budget may end it), which the learning-rate schedule "
                 "needs: give --model.optim.schedule_steps")
    overfit = trainer.get("overfit_batches")
    if overfit not in (None, 0, 0.0) and not isinstance(overfit, bool):
        p.append(f"--trainer.overfit_batches {overfit}: not supported (Lightning swaps radar-train's resumable, "
                 f"block-shuffled training sampler for its own); to fit a few pairs, train on one small shard "
                 f"(--data.caches ... train_shards) with --trainer.limit_train_batches")
    if trainer.get("fast_dev_run") not in (None, False, 0) and ckpt_path is not None:
        p.append(f"--trainer.fast_dev_run with --ckpt_path {ckpt_path}: a smoke test of one batch resumes nothing "
                 f"(and writes no checkpoint or adapter): drop --ckpt_path")
    if trainer.get("enable_checkpointing") is False and output.get("checkpoints", True) is not False:
        p.append("--trainer.enable_checkpointing false: the run's checkpoints are radar-train's own "
                 "(model.output.checkpoints): give --model.output.checkpoints false to save none")
    callbacks = trainer.get("callbacks")
    callbacks = [] if callbacks is None else callbacks if isinstance(callbacks, (list, tuple)) else [callbacks]
    names = [str(c.get("class_path", "")) if hasattr(c, "get") else type(c).__name__ for c in callbacks]
    if trainer.get("logger") is False and any(n.split(".")[-1] == "LearningRateMonitor" for n in names):
        p.append("--trainer.callbacks LearningRateMonitor needs a logger, and --trainer.logger is false (the run "
                 "logs its learning rate to TensorBoard itself, as train/lr)")
    return p


def _trainer_options_at_fault(e: Exception, trainer) -> str:
    """The --trainer options a Lightning MisconfigurationException is about: those it names in backticks, else
    the accelerator, strategy or precision whose value it names (`No supported gpu backend found!`, `To use the
    DeepSpeedStrategy ...`), else all of --trainer."""
    # `max_steps` must be ..., `Trainer(devices='0')` value is not ...
    named = [k for k in re.findall(r"`(?:Trainer\()?(\w+)", str(e)) if k in trainer]
    # else a setting it names as a word (`invalid value -1 for limit_val_batches`): those of two words or more, which
    # a message does not use otherwise (`devices`, `precision` it may)
    named = named or [k for k in re.findall(r"\b([a-z]+(?:_[a-z]+)+)\b", str(e)) if k in trainer]
    if named:
        return ", ".join(f"--trainer.{k}" for k in dict.fromkeys(named))
    text = str(e).lower()
    named = [f"--trainer.{k} {v}" for k in ("accelerator", "strategy", "precision")
             if isinstance(v := trainer.get(k), str) and v != "auto" and v.lower() in text]
    return ", ".join(named) or "--trainer"


def _trainer_choices(trainer) -> str:
    """The --trainer choices that can need another package (accelerator, strategy, precision, plugins), as
    given: what a trainer that fails to import one is about."""
    given = [f"--trainer.{k} {trainer.get(k)}" for k in ("accelerator", "strategy", "precision", "plugins")
             if trainer.get(k) not in (None, "auto")]
    return ", ".join(given) or "--trainer"


def lock_taker() -> bool:
    """Whether this process checks the run folder and takes its lock: global rank 0 only. Every launcher's rank
    variables must say 0: torchrun's RANK, LOCAL_RANK and GROUP_RANK (it sets no NODE_RANK: local rank 0 of
    every node would count), Lightning's NODE_RANK, and srun's SLURM_PROCID (srun starts every rank itself,
    without a LOCAL_RANK). Another rank would find the lock its own rank 0 holds, and refuse it."""
    return not stray_rank_variables()


def check_rank_variables(world_size: int) -> None:
    """ValueError where a rank variable says this process is not rank 0 and yet the trainer runs one process (a
    variable left in the shell): such a process checked no run folder and took no lock, as another rank, yet wrote
    as the only one, over the run there (its rank-zero lines muted by Lightning, which reads the same variables)."""
    stray = stray_rank_variables()
    if stray and world_size == 1:
        raise ValueError(f"environment {', '.join(stray)}: that makes this process another rank than 0 of a launch, "
                         f"but the run is one process (world size 1), which checks no run folder then: unset "
                         f"{', '.join(v.split('=')[0] for v in stray)} (left in this shell?), or start every rank "
                         f"with torchrun or srun")


def stray_rank_variables() -> list[str]:
    """`NAME=value` of every launcher rank variable (lock_taker's) that says this process is not rank 0."""
    from radar_train.cache.workers import env_int

    return [f"{k}={os.environ[k]}" for k in ("RANK", "LOCAL_RANK", "GROUP_RANK", "NODE_RANK", "SLURM_PROCID")
            if env_int(os.environ, k, 0) != 0]


def _make_cli_class(subcommand: str):
    """LightningCLI and config-saving classes of radar-train for `subcommand` (fit or validate): the parser
    is built for that one subcommand only (each takes Lightning's whole Trainer signature to build)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    from radar_train.config import init_seed_problems
    from radar_train.train import run_lock

    class RunConfigCallback(SaveConfigCallback):
        """Saves the resolved config as RUN/config.yaml (trainer.default_root_dir), rank zero only."""

        def __init__(self, *args, **kwargs):
            kwargs["save_to_log_dir"] = False
            super().__init__(*args, **kwargs)

        def save_config(self, trainer, pl_module, stage: str) -> None:
            root = Path(trainer.default_root_dir)
            root.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(root / self.config_filename), skip_unset=False, overwrite=True,
                             multifile=self.multifile)

    class RadarTrainCLI(LightningCLI):
        @staticmethod
        def subcommands() -> dict[str, set[str]]:
            return {subcommand: LightningCLI.subcommands()[subcommand]}

        def _root(self, cfg) -> str:
            return (cfg.get("trainer") or {}).get("default_root_dir") or os.getcwd()

        def _parse_ckpt_path(self) -> None:
            # Lightning reads an explicit ckpt_path here (for its hyper-parameters): read it behind the one
            # input error path first, so that a missing or truncated file is one line naming it
            sub = self.config.get("subcommand")
            given = sub and (self.config[sub].get("trainer") or {}).get("default_root_dir")
            if sub and isinstance(given, str) and not given.strip():  # (it trained into the current folder)
                raise ValueError(f"{RUN_OPTION} is empty: name the run folder (. for the current folder)")
            if sub and given is None:  # (so did `=~`, `null` or a blank `default_root_dir:` in a config file)
                from radar_train.inputs import YAML_NULLS

                raise ValueError(f"{RUN_OPTION} is not set ({YAML_NULLS}): name the run folder by its full path (. "
                                 f"for the current folder)")
            if sub:
                self._resume = check_ckpt_path(self.config[sub].get("ckpt_path"), self._root(self.config[sub]), sub)
            super()._parse_ckpt_path()
            # `last` as the file check_ckpt_path resolved it to (last.ckpt, or a newer step file), or none: a fresh
            # start (Lightning's lookup would take any last*.ckpt of the folder, a user's backup among them)
            self._last_is = None
            if sub and self.config[sub].get("ckpt_path") == "last":
                self._last_is = self._resume[0] if self._resume is not None else ""

        def _check_resume(self) -> None:
            # the checkpoint against the module (decoder, LoRA layout) before the trainer writes anything
            # (TensorBoard's event file, config.yaml): Lightning checks it only when restoring, after that
            resume = getattr(self, "_resume", None)
            if resume is not None:
                self.model.check_checkpoint(resume[1], f"--ckpt_path {resume[0]}")
                if self.subcommand == "fit":
                    check_resume_steps(resume, self.trainer.max_steps)
                    if isinstance(resume[1].get("global_step"), int):
                        check_step_exports(self.trainer.default_root_dir, resume[1]["global_step"])
                if self.subcommand == "fit" and hasattr(self.datamodule, "describe"):  # (validate may measure
                    from radar_train.train.checks import check_resume_caches  # on other caches)

                    check_resume_caches(resume[1], self.datamodule.describe(), f"--ckpt_path {resume[0]}")
                if self.subcommand == "validate" and isinstance(resume[1].get("radar"), dict):
                    say_validation_data(resume[1]["radar"], self.datamodule, resume[0])
                self._resume = None  # (the checkpoint's tensors are not kept)

        def before_instantiate_classes(self) -> None:
            cfg = self.config[self.subcommand]
            model = cfg.get("model")
            decoder = model.get("decoder") if hasattr(model, "get") else None
            seed = decoder.get("init_seed") if hasattr(decoder, "get") else None
            problems = trainer_problems(cfg.get("trainer"), self.subcommand, model, cfg.get("ckpt_path")) + \
                init_seed_problems("--model.decoder.init_seed", seed)
            if problems:
                raise ValueError("; ".join(problems))
            check_class_options(cfg)
            global _saves_checkpoints
            output = model.get("output") if hasattr(model, "get") else None
            _saves_checkpoints = not hasattr(output, "get") or output.get("checkpoints") is not False
            caches = [c.get("path") for c in ((cfg.get("data") or {}).get("caches") or []) if hasattr(c, "get")]
            vae = ((cfg.get("model") or {}).get("decoder") or {}).get("vae_checkpoint")
            if lock_taker():
                root, ckpt_path = self._root(cfg), cfg.get("ckpt_path")
                inputs = {"--data.caches": caches, "--model.decoder.vae_checkpoint": vae}
                check = lambda: check_run_folder(root, ckpt_path, self.subcommand, inputs,  # noqa: E731
                                                 cfg.get("config") or ())
                if self.subcommand == "fit":  # another fit writing there: said first, before what it wrote
                    run_lock.check_not_in_use(root, RUN_OPTION)
                check()
                self._run_folder = root, check
            if _check_only:
                resume = getattr(self, "_resume", None)  # (as _check_resume does, without the models)
                if resume is not None and self.subcommand == "fit":
                    max_steps = (cfg.get("trainer") or {}).get("max_steps")
                    check_resume_steps(resume, max_steps if isinstance(max_steps, int) else -1)
                    if isinstance(resume[1].get("global_step"), int):
                        check_step_exports(self._root(cfg), resume[1]["global_step"])
                raise ChecksPassed(self._root(cfg))

        def _lock_run_folder(self) -> None:
            """Take RUN/.fit.lock (global rank 0, once every check has passed, before anything is written) and
            check the folder again under it: a fit into the same folder that started and wrote between our
            first check and now would be mixed with this one. Released by run_lightning, however the fit ends."""
            folder = getattr(self, "_run_folder", None)
            if folder is None or not lock_taker():
                return
            lock = run_lock.acquire(folder[0], RUN_OPTION)
            try:
                folder[1]()
            except BaseException:
                lock.release()
                raise

        def instantiate_trainer(self, **kwargs):
            import torch
            from lightning.pytorch.callbacks import ProgressBar
            from lightning.pytorch.loggers import TensorBoardLogger
            from lightning.pytorch.plugins.environments import SLURMEnvironment

            from radar_train.train.progress import StepProgress

            cfg = self._get(self.config_init, "trainer", default={})
            if cfg.get("precision") is None:
                kwargs["precision"] = "bf16-mixed" if torch.cuda.is_available() else "32-true"
            if cfg.get("logger") in (None, True):
                root = cfg.get("default_root_dir") or os.getcwd()
                if self.subcommand == "fit":
                    kwargs["logger"] = TensorBoardLogger(save_dir=root, name="tb", version="", default_hp_metric=False)
                else:  # a new tb/validate/version_N/ each time, its own: the run's tb/ files are not replaced
                    from radar_train.train.tb_version import OwnVersionTensorBoardLogger

                    kwargs["logger"] = OwnVersionTensorBoardLogger(save_dir=Path(root) / "tb", name=self.subcommand,
                                                                   default_hp_metric=False)
            if SLURMEnvironment.detect() and not cfg.get("plugins"):
                from radar_train.cache.workers import env_int

                env_int(os.environ, "SLURM_NTASKS", 1)  # (Lightning's int() named no variable)
                try:  # (a batch script's --ntasks without srun: Lightning's RuntimeError, a traceback)
                    kwargs["plugins"] = [SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1)]
                    self._slurm_requeue = True
                except RuntimeError as e:
                    raise ValueError(f"the SLURM job's environment (SLURM_NTASKS={os.environ.get('SLURM_NTASKS')}): "
                                     f"{e}") from None
            # the run's ModelCheckpoint must be known before fit(ckpt_path="last") looks for last.ckpt
            # (the module's configure_callbacks attaches the same one later, replacing this)
            ckpt = self.model.checkpoint_callback(cfg.get("default_root_dir") or os.getcwd())
            given = cfg.get("callbacks") or []
            given = given if isinstance(given, list) else [given]
            extra = [] if ckpt is None else [ckpt]
            # progress by step of max_steps, as plain lines in a log (Lightning's bar counts epochs and draws
            # nothing useful without a terminal); a progress bar the user configured is kept
            if cfg.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in given):
                extra.append(StepProgress())
            if extra:
                kwargs["callbacks"] = [*given, *extra]
            try:
                trainer = super().instantiate_trainer(**kwargs)
            except MisconfigurationException as e:  # Lightning's own checks of the trainer settings
                raise ValueError(f"{_trainer_options_at_fault(e, cfg)}: {e}") from None
            except ImportError as e:  # an accelerator, strategy or precision whose package is not installed
                raise ValueError(f"{_trainer_choices(cfg)}: needs a package this environment lacks: {e}") from None
            except (TypeError, ValueError) as e:  # Lightning's other checks (`devices` [0, 1] on the CPU: a TypeError)
                at_fault = _trainer_options_at_fault(e, cfg)
                if at_fault == "--trainer":  # (names no trainer setting: not one of those)
                    raise
                raise ValueError(f"{at_fault}: {e}") from None
            check_rank_variables(trainer.world_size)
            return trainer

        def _check_data(self, fit: bool) -> None:
            """Read the caches and check them against the decoder (and its label conditioning's class count)
            before the trainer writes anything (it creates tb/ and config.yaml before the module's own setup
            would find a mismatch); for a fit, also that the WebDataset tars give every rank of the trainer's
            devices a batch (found out otherwise once the processes were launched)."""
            from radar_train.train.checks import check_cache_matches

            dm = self.datamodule
            if dm is None or not hasattr(dm, "manifests"):
                return
            dm.setup("fit" if fit else "validate")
            if fit and hasattr(dm, "train_batches"):
                world = self.trainer.num_nodes * self.trainer.num_devices
                self._check_epoch(dm.train_batches(world), self._too_few_pairs(dm, world))
            film = getattr(self.model, "label_cond", None)
            classes = None if film is None else film.num_classes
            for path, manifest in dm.manifests.items():
                check_cache_matches(path, manifest, self.model.identity, self.model.latent_shape, classes)

        @staticmethod
        def _too_few_pairs(dm, world: int) -> str:
            """Why an epoch holds no batch before any limit: the training pairs per rank against the batch size."""
            import math

            import torch

            ds = getattr(dm, "train_set", None)
            if ds is None or isinstance(ds, torch.utils.data.IterableDataset) or not len(ds):
                return "an epoch of the training data has no batch"
            ranks = f" over {world} ranks are {math.ceil(len(ds) / world)} per rank" if world > 1 else ""
            return (f"{len(ds)} training pairs{ranks}, fewer than --data.batch_size {dm.batch_size} (the last, partial "
                    f"batch is dropped: --data.drop_last true): an epoch has no batch")

        def _check_epoch(self, batches: Optional[int],
                         too_few: str = "an epoch of the training data has no batch") -> None:
            """The training epoch against the trainer's limits, as Lightning checks them only once the processes
            run (after config.yaml and tb/ are written): a val_check_interval (in batches) longer than an epoch
            while validation is also counted in epochs, and an epoch of no batch (a run that trains nothing and
            exits 0). `batches`: per rank, before limit_train_batches; None (a stream of unknown length): no check.
            `too_few`: what to say when the data itself holds no batch (no limit is at fault then)."""
            t = self.trainer
            if batches is None:
                return
            if batches == 0:
                raise ValueError(f"{too_few}, so nothing would be trained")
            limit = t.limit_train_batches
            whole = batches
            batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
            if batches == 0:
                raise ValueError(f"--trainer.limit_train_batches {limit}: an epoch of the training data has no "
                                 f"batch, so nothing would be trained")
            k = getattr(t, "accumulate_grad_batches", 1)
            self._uneven_epoch = None
            if isinstance(k, int) and k > 1 and batches % k and getattr(t, "global_rank", 0) == 0:
                from radar_train.cli.common import HOLD

                b = getattr(self.datamodule, "batch_size", None)
                fix = (f"give --trainer.limit_train_batches a multiple of {k}" if batches < whole else
                       f"train on a multiple of {k * b if b else k} pairs per rank")
                self._uneven_epoch = batches
                logging.getLogger("radar_train").warning(
                    f"radar-train fit: an epoch holds {batches} batches per rank, not a multiple of "
                    f"--trainer.accumulate_grad_batches {k}: Lightning ends each epoch with an optimizer step of the "
                    f"{batches % k} batch(es) left (a gradient {batches % k}/{k} of a full step's), and a "
                    f"val_check_interval in batches then falls inside a step, where the run saves nothing; for "
                    f"steps of {k} whole batches, {fix}", extra={HOLD: True})
            interval = getattr(t, "val_check_interval", None)  # (not set for a time: "00:01:00:00")
            if isinstance(interval, int) and t.check_val_every_n_epoch is not None and interval > batches:
                raise ValueError(f"--trainer.val_check_interval {interval} is more batches than an epoch holds "
                                 f"({batches} per rank): give at most {batches}, or --trainer.check_val_every_n_epoch "
                                 f"null to count it across epochs")

        def _check_requeue_names(self) -> None:
            """Under SLURM's requeue: a name in the run folder that Lightning's requeue save cannot number past
            (train/requeue.py `unnumbered_names`), refused before the fit writes anything, not at the requeue."""
            from radar_train.outputs import OutputError
            from radar_train.train.requeue import unnumbered_names

            if not getattr(self, "_slurm_requeue", False) or not lock_taker():
                return
            bad = unnumbered_names(self.trainer.default_root_dir)
            if bad:
                raise OutputError(
                    f"{Path(self.trainer.default_root_dir) / bad[0]}: Lightning's SLURM requeue save numbers itself "
                    f"from every name in the run folder holding 'ckpt_' and fails on one without digits after it (the "
                    f"job would end at its requeue instead of requeueing): rename or move it")

        def _restore_settings(self) -> None:
            """How the fit or validation reads its checkpoint: weights_only, and the step file `last` stands for."""
            cfg = self.config_init[self.subcommand]
            if "weights_only" in cfg and cfg.get("weights_only") is None:
                cfg["weights_only"] = True  # torch.load(weights_only=True) when resuming
            last = getattr(self, "_last_is", None)
            if last is not None:
                # the file `last` stands for, given to Lightning by its path (its own lookup takes the newest
                # last*.ckpt, whoever wrote it); "" (none yet): a fresh start. The run's config.yaml keeps `last`.
                # (Not in the parsed config before Lightning's parse of it: that puts an explicit file's
                # hyper-parameters over the config's, which `last` does not.)
                if last and last.name != "last.ckpt":
                    logging.getLogger("radar_train").info(
                        "radar-train %s: --ckpt_path last: %s is the run's newest checkpoint (the run was killed, "
                        "or its save of last.ckpt failed, after saving it), so the run goes on from it",
                        self.subcommand, last)
                cfg["ckpt_path"] = str(last) if last else None

        def before_fit(self) -> None:
            self._check_data(fit=True)
            self._check_resume()
            self._check_requeue_names()
            self._restore_settings()
            self._lock_run_folder()
            _setup_lines.release()
            t = self.trainer
            t.callbacks.append(hand_over_at_training_start())
            logging.getLogger("radar_train").info(
                "radar-train fit: run folder %s, max_steps %s, precision %s, %d device(s) (%s)",
                t.default_root_dir, t.max_steps, t.precision, t.world_size, type(t.strategy).__name__)
            self._say_fresh_start()
            self._say_micro_batches()

        def _say_fresh_start(self) -> None:
            """`--ckpt_path last` with no checkpoint there yet (a first start, a job requeued before its first
            save) starts at step 0: said in our words. Lightning's own warning, dropped by the entry points, advised
            `ModelCheckpoint(save_last=True)`, which the run has. (`hpc` without one: Lightning refuses it.)"""
            root = self.trainer.default_root_dir
            if self.config[self.subcommand].get("ckpt_path") == "last" and not resumes(root, "last"):
                logging.getLogger("radar_train").info(
                    "radar-train fit: --ckpt_path last: no checkpoints/last.ckpt in %s yet, so the fit starts at "
                    "step 0", root)

        def _say_micro_batches(self) -> None:
            """With gradient accumulation, the pairs of an optimizer step and, where validation is counted in
            batches, its cadence in optimizer steps: Lightning's val_check_interval counts micro-batches, so a
            recipe run in smaller micro-batches validates (and early-stops) after fewer steps unless it is raised."""
            t, k = self.trainer, self.trainer.accumulate_grad_batches
            if k <= 1:
                return
            m = self.datamodule.batch_size
            interval = getattr(t, "val_check_interval", None)
            steps = interval / k if isinstance(interval, int) else None
            about = "about " if getattr(self, "_uneven_epoch", None) else ""  # (each epoch's last step: the rest)
            cadence = (f"; validation every {interval} micro-batches = {about}{steps:g} optimizer "
                       f"step{'s' * (steps != 1)} (trainer.val_check_interval counts micro-batches)"
                       ) if steps is not None else ""
            logging.getLogger("radar_train").info(
                "radar-train fit: %d pairs per optimizer step per device, in %d micro-batches of %d "
                "(trainer.accumulate_grad_batches)%s", m * k, k, m, cadence)

        def before_validate(self) -> None:
            self._check_data(fit=False)
            self._check_resume()
            self._restore_settings()
            _setup_lines.release()
            if self.config[self.subcommand].get("ckpt_path") is None:
                logging.getLogger("radar_train").info(
                    "radar-train validate: no --ckpt_path, so the adapter as initialised is validated (LoRA B = 0: "
                    "the frozen decoder; the student's metrics are the baseline's); --ckpt_path last validates the "
                    "run's last checkpoint")

    return RadarTrainCLI, RunConfigCallback


def failure_note() -> Optional[str]:
    """The last line of a fit that raised: the step it saved, or why nothing was (None: it did not train)."""
    from radar_train.train.run_checkpoint import last_failure

    if not last_failure:
        return None
    if last_failure.get("step") is not None and last_failure.get("last_failed"):
        return (f"radar-train: the run failed saving last.ckpt of step {last_failure['step']}; the step is saved in "
                f"{last_failure['last_failed']} (once the cause is fixed, resume with --ckpt_path last: it takes "
                f"that file)")
    if last_failure.get("step") is not None and last_failure.get("export"):
        return (f"radar-train: the run trained to its end, step {last_failure['step']}, which is saved; writing its "
                f"{last_failure['export']} failed (once the cause is fixed, resume with --ckpt_path last: it writes "
                f"{last_failure['export']} without training)")
    if last_failure.get("step") is not None and last_failure.get("validation"):
        return (f"radar-train: the run failed in the validation at step {last_failure['step']}; the step is saved "
                "(once the cause is fixed, resume with --ckpt_path last: the validation runs again first)")
    if last_failure.get("step") is not None:
        return (f"radar-train: the run failed in the step after step {last_failure['step']}, which is saved "
                "(once the cause is fixed, resume with --ckpt_path last)")
    if last_failure.get("diverged"):
        return (f"radar-train: nothing is saved of the diverged weights; the run's last checkpoint stays as it was "
                f"({last_failure['diverged']}: with the settings changed, resume from it with --ckpt_path last)")
    if last_failure.get("diverged") == "":
        return "radar-train: nothing is saved of the diverged weights; the run has no checkpoint"
    return f"radar-train: the run failed; nothing saved since its last checkpoint ({last_failure['why']})"


def memory_note(e: BaseException) -> Optional[str]:
    """For a fit that ran out of memory: what lowers a step's (or a validation's) memory (None: another error)."""
    import torch

    from radar_train.train.run_checkpoint import last_failure

    if not isinstance(e, torch.OutOfMemoryError):
        return None
    validation = ("a validation decodes --data.val_batch_size pairs at once (default: --data.batch_size): lower "
                  "it")
    step = ("a training step keeps the activations of --data.batch_size pairs for the backward. The same update "
            "in less memory: fewer pairs per pass, --data.batch_size M --trainer.accumulate_grad_batches K (M x K "
            "pairs per optimizer step, their gradients summed; --trainer.val_check_interval counts micro-batches), "
            "and/or --model.optim.activation_checkpointing blocks (docs/training.md#memory)")
    if not last_failure:  # (not in a training step or a validation of the fit: the sanity check, say)
        return f"radar-train: out of memory: {validation}; {step}"
    if last_failure.get("validation"):
        return f"radar-train: out of memory in a validation: {validation}"
    return f"radar-train: out of memory in a training step: {step}"


VALIDATE_NOISE = (
    # a checkpoint saved with other save settings (the callbacks' state keys): a fit adopts the state
    # (RunCheckpoint.adopt_saved_state); a validation restores no callback
    r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided",
    # a checkpoint of another run folder than --trainer.default_root_dir: a validation saves nothing
    r"The dirpath has changed from",
)
"""Lightning's warnings about the fit's callbacks, which radar-train validate drops."""

_check_only = False
"""radar-train fit --check: stop once the options and the run folder passed their checks (ChecksPassed)."""

_saves_checkpoints = True
"""Whether this fit saves checkpoints (model.output.checkpoints), for the line of a stop."""


class ChecksPassed(Exception):
    """radar-train fit --check: the options and the run folder passed the checks made before the caches and the
    models are read."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.root = root


_set_up_stop = None
"""SIGTERM and SIGHUP from radar-train fit's start until training starts (a validation's to its end) raise
cli.common.Stopped: one line, status 128 + the signal, the run folder's lock released. By their default action they
ended the process with no line and left RUN/.fit.lock. Lightning's own SIGTERM handler, registered before training,
notes the signal and calls this one too. When training starts (hand_over_at_training_start) the run's handling takes
over: from there this handler does nothing (the saves after training included: their end is the command's)."""

_setup_lines = None
"""The INFO lines of radar-train fit's or validate's set-up, held until its checks pass (cli.common.InfoHold)."""


def hand_over_at_training_start():
    """A callback: when training starts, the run's own handling of SIGTERM and SIGHUP (stop_signal.StepBoundaryStop
    via the run's checkpoint callback, or Lightning's) takes over from the set-up's (run_lightning)."""
    from lightning.pytorch.callbacks import Callback

    class HandOver(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            if _set_up_stop is not None:
                _set_up_stop.hand_over()
                hangup_as_sigterm()

    return HandOver()


def hangup_as_sigterm() -> None:
    """Where nothing of the run took SIGHUP (model.output.checkpoints false: no StepBoundaryStop), a SIGHUP during
    training goes to the SIGTERM handler (Lightning's: the fit stops after its step), noted as SIGHUP for the line and
    the status (129). Its default action ended the process with no line and left RUN/.fit.lock. The handler before
    it is put back when sigterm_stops' block ends; a SIGHUP the shell ignored (nohup) stays ignored."""
    import threading

    hup = getattr(signal, "SIGHUP", None)
    if hup is None or threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(hup) is not signal.SIG_DFL:
        return
    pid = os.getpid()

    def relay(signum, frame):
        from radar_train.train import stop_signal

        term = signal.getsignal(signal.SIGTERM)
        if os.getpid() != pid or not callable(term):  # (a DataLoader worker's copy: the run decides)
            return
        stop_signal.stopped_by = hup
        term(signal.SIGTERM, frame)

    signal.signal(hup, relay)


def run_lightning(argv: list[str]) -> None:
    """LightningCLI over `argv` (subcommand first). `validate` writes no config.yaml (the run's stays).
    Lightning's MisconfigurationException (a setting it refuses) becomes a ValueError: one error line (it is
    not in run_main's errors since importing it takes seconds, which `radar-train export` and --help skip)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from radar_train.cli.common import (InfoHold, Stopped, say, sigterm_stops, stop_name, stopped_status,
                                        tidy_lightning_logging)
    from radar_train.train import run_lock, stop_signal
    from radar_train.train.datamodule import PairDataModule
    from radar_train.train.module import RadarLoraModule
    from radar_train.train.run_checkpoint import last_failure

    tidy_lightning_logging()
    last_failure.clear()
    stop_signal.stopped_by = None  # (an earlier run's in this process: its signal named this one's stop)
    cli_cls, config_cb = _make_cli_class(argv[0])
    global _setup_lines, _set_up_stop
    _setup_lines = InfoHold().start()  # released once the checks pass (before_fit / before_validate)
    # args=None when they are the process's own (LightningCLI warns when given both)
    try:
        with warnings.catch_warnings(), sigterm_stops() as _set_up_stop:
            if argv[0] == "validate":  # (about restoring the fit's callbacks, which a validation does not use)
                for message in VALIDATE_NOISE:
                    warnings.filterwarnings("ignore", message=message)
            cli_cls(RadarLoraModule, PairDataModule, args=None if argv == sys.argv[1:] else argv,
                    save_config_callback=config_cb if argv[0] == "fit" else None,
                    save_config_kwargs={"overwrite": True},
                    trainer_defaults={"use_distributed_sampler": False, "default_root_dir": "checkpoints/run"},
                    parser_kwargs={"default_env": False, "exit_on_error": False, "prog": "radar-train"})
    except MisconfigurationException as e:
        raise ValueError(str(e)) from None
    except ChecksPassed as e:
        print(f"radar-train fit --check: the options and the run folder {e.root} pass the checks made before the "
              f"caches and the models are read", flush=True)
    except Stopped:  # (_set_up_stop: before training started, or during a validation)
        if argv[0] == "validate":
            say(f"radar-train validate: stopped by {stop_name()} before the validation ended; it saves nothing (run "
                "it again)")
        else:
            say(f"radar-train: stopped by {stop_name()} during the fit's set-up, before its first step; nothing was "
                "saved (run the same command again)")
        sys.exit(stopped_status())
    except SIGTERMException:  # a SystemExit without a status: the run did not finish, so not 0
        from radar_train.train import requeue, stop_signal

        signum = stop_signal.stopped_by or signal.SIGTERM
        if requeue.last_requeue:  # SLURM's SIGTERM after the requeue save: the job restarts from that file
            r = requeue.last_requeue
            # (or from a periodic save of a later step, made while the job waited for its SIGTERM)
            newest = newest_run_checkpoint(r["root"]) or Path(r["root"]) / "hpc_ckpt_N.ckpt"
            print(f"radar-train: requeued by SLURM at step {r['step']}: the restarted job resumes from {newest} "
                  f"(slurm/train.sbatch: the run's newest checkpoint; by hand: --ckpt_path {newest})",
                  file=sys.stderr, flush=True)
            sys.exit(128 + signum)
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if argv[0] == "validate":  # (nothing to save, nothing to resume: its checkpoint is as it was)
            say(f"radar-train validate: stopped by {name} before the validation ended; it saves nothing (run it "
                "again)")
        elif not _saves_checkpoints:
            say(f"radar-train: stopped by {name}; this run saves no checkpoints (--model.output.checkpoints false): "
                "nothing was saved")
        else:
            say(f"radar-train: stopped by {name}; a run with checkpoints saved the step it stopped at (resume it "
                "with --ckpt_path last)")
        sys.exit(128 + signum)
    except SystemExit as e:  # (after SIGTERMException, a SystemExit too)
        if e.code == 1 and isinstance(e.__context__, KeyboardInterrupt):  # Lightning's exit(1) after a Ctrl-C it took
            print("radar-train: interrupted (nothing saved since the run's last checkpoint)", file=sys.stderr,
                  flush=True)
            sys.exit(128 + signal.SIGINT)
        raise
    except Exception as e:  # the fit failed: what was saved (run_checkpoint.py: the step before a failed step)
        from radar_train.cli.common import print_error, print_notes
        from radar_train.train.finite import TrainingDiverged

        for note in (failure_note(), memory_note(e)):
            if note is not None:
                e.add_note(note)
        if isinstance(e, TrainingDiverged):  # (the settings' doing, not a bug: one line and what was saved)
            print_error(e)
            print_notes(e)
            sys.exit(1)
        raise
    finally:  # the fit's run folder lock, whether it finished, failed, was stopped or requeued
        run_lock.release_held()
        _setup_lines.end()  # (dropped where a check refused the input: its error line comes alone)


def _body(argv: list[str]) -> int:
    from radar_train.cli.common import CONFIG_OPTIONS, check_config_files

    lock_taker()  # (its rank variables read as whole numbers, naming one that is not, before Lightning reads them)

    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in LIGHTNING_SUBCOMMANDS + OTHER_SUBCOMMANDS:
        raise ValueError(f"unknown command {cmd!r}: radar-train fit, validate, export or merge (`radar-train --help`)")
    if cmd in LIGHTNING_SUBCOMMANDS and any(a in ("-h", "--help") for a in rest):
        print(FIT_SUMMARY if cmd == "fit" else VALIDATE_SUMMARY, flush=True)  # LightningCLI's full list follows
    global _check_only
    _check_only = cmd == "fit" and "--check" in rest
    if _check_only:  # (ours, not LightningCLI's; out of sys.argv too, where LightningCLI reads it when given none)
        own = argv == sys.argv[1:]
        rest = [a for a in rest if a != "--check"]
        argv = [cmd, *rest]
        if own:
            sys.argv[1:] = argv
    check_config_files(rest, CONFIG_OPTIONS if cmd in LIGHTNING_SUBCOMMANDS else ("--config",))  # (-c: LightningCLI's)
    if cmd in OTHER_SUBCOMMANDS:
        from jsonargparse import CLI

        return CLI({"export": export, "merge": merge}[cmd], args=rest, as_positional=False, prog=f"radar-train {cmd}",
                   exit_on_error=False)
    run_lightning(argv)
    return 0


def main(argv: Optional[list[str]] = None) -> None:
    from radar_train.cli.common import RankZeroInfo, WarningPrefix, run_main

    ours = logging.StreamHandler()
    ours.setFormatter(WarningPrefix("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[ours])  # (does nothing where the root logger has handlers)
    for handler in logging.getLogger().handlers:  # our INFO lines once per run, not once per device
        if not any(isinstance(f, RankZeroInfo) for f in handler.filters):
            handler.addFilter(RankZeroInfo())
    if "SLURM_NTASKS" in os.environ:  # before the slow imports: a requeue signal now is noted, not fatal
        from radar_train.train.requeue import hold_requeue_signal

        hold_requeue_signal()
    args = sys.argv[1:] if argv is None else argv
    sub = args[0] if args and args[0] in LIGHTNING_SUBCOMMANDS + OTHER_SUBCOMMANDS else None
    # a parse error's hint names the subcommand's help, which lists its options (`radar-train --help` does not)
    run_main(f"radar-train {sub}" if sub else "radar-train", _body, argv, check_configs=False)


if __name__ == "__main__":
    main()
