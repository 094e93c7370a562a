"""radar-fid: FID / IS of vanilla, accelerated and accelerated + adapter samples with a local Inception file
(fid.json + fid.md). See radar_train/inference/fid.py for the extractor contract and the protocol caveats."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional, Union


from jsonargparse import CLI

from radar_train.config import AccelArgs, ModelArgs, SamplingConfig
from radar_train.inference.held_out import HELD_OUT_BASE_SEED
from radar_train.inference.pipeline import Precision


def fid(inception: Optional[str] = None, model: ModelArgs = ModelArgs(),
        accel: AccelArgs = AccelArgs(method="fastvar"), sampling: SamplingConfig = SamplingConfig(),
        adapter: Optional[str] = None, merge_adapter: bool = True, inception_logits: Optional[str] = None,
        reference: Optional[str] = None, num_samples: int = 50000, batch_size: int = 16,
        base_seed: int = HELD_OUT_BASE_SEED,
        is_splits: int = 10, save_npz: bool = False, output: str = "outputs/fid", device: str = "auto",
        precision: Precision = "auto", decode_precision: Precision = "fp32",
        classes: Optional[Union[str, int, list[int]]] = None,
        seeds: Optional[Union[str, int, list[int]]] = None, grid_scale: int = 0, save_every_s: float = 300.0,
        num_workers: Optional[int] = None, worker_index: Optional[int] = None, overwrite: bool = False) -> int:
    """FID / IS of the vanilla, accelerated and accelerated + adapter samples (sample i: class i mod
    num_classes, seed base_seed + i), and / or the samples as the .npz files that OpenAI's guided-diffusion
    evaluator reads (--save_npz: the papers' protocol). Takes radar-generate configs (--config
    configs/generate/<x>.yaml). The FID here is for internal comparisons: it matches published numbers only with
    the guided-diffusion evaluator's Inception graph and reference statistics, 50,000 samples and the same
    sampler settings.

    Args:
        inception: TorchScript (or torch.export .pt2) file: uint8 (N, 3, H, W) images -> (N, D) features (FID;
            optional with --save_npz).
        model: VQ-VAE + VAR.
        accel: acceleration method of the accelerated runs.
        sampling: sampler settings (compare only runs with the same cfg / top-k / top-p).
        adapter: adapter folder from radar-train (adds the "accelerated+adapter" run).
        merge_adapter: merge the LoRA into the decoder (no overhead).
        inception_logits: optional file with the same input contract returning (N, C) class logits (for IS).
        reference: .npz with mu / sigma from the same extractor, or a folder of reference images.
        num_samples: samples per run, at least 2 (the paper protocol uses 50,000 = 50 per ImageNet class).
        batch_size: samples per sampling call.
        base_seed: seed of sample 0 (default 10,000,000: past the seeds of any cache of fewer samples made with
            the default plan.base_seed 0, so that an adapter is not scored on its training pairs; a run whose
            samples include pairs the adapter was trained on is refused).
        is_splits: Inception Score splits.
        save_npz: also write each run's samples as samples_<run>.npz (arr_0: uint8 N x H x W x 3, streamed to
            disk: 9.8 GB per run at 50,000 samples of 256 px), for the guided-diffusion evaluator.
        output: folder for fid.json and fid.md (a radar-generate config's output folder unless given).
        device: cuda, cpu, or auto.
        precision: transformer compute dtype (auto: bf16 on CUDA, fp32 on CPU).
        decode_precision: decoder compute dtype (fp32; bf16 / fp16: autocast; auto: bf16 on CUDA, fp32 on CPU).
        classes: ignored (radar-generate key, accepted so its configs can be reused).
        seeds: ignored (radar-generate key).
        grid_scale: ignored (radar-generate key).
        save_every_s: seconds between saves of the run's progress into OUTPUT/fid-progress/ (at the end of a
            batch; 0: only when the run stops). A run stopped by SIGTERM (a SLURM time limit or preemption),
            Ctrl-C or an error saves its last complete batch too, and the same command run again goes on from
            there (the numbers and samples are those of an uninterrupted run); the folder goes at the end.
        num_workers: workers that share the samples, each a contiguous share of the batches (default: the SLURM
            array's tasks times the torchrun / accelerate processes, as radar-cache; 1 without them). Each
            worker keeps its share's progress in OUTPUT/fid-progress/part-I-of-N/; the last one to finish merges
            the shares into the outputs of one run (the same samples files; the statistics' sums in another
            order: FID equal to ~1e-12).
        worker_index: this worker's index (default: from the SLURM array and the launcher's process rank; one
            whole run inside an array task: --num_workers 1 --worker_index 0).
        overwrite: replace fid.json / fid.md (and reference_stats.npz, samples_*.npz) of an earlier run in the
            output folder; an earlier samples_*.npz or reference_stats.npz this run does not write goes (unless
            it is this run's --reference; without --overwrite they are refused; other files there are left alone); with
            the progress of a run of other settings in OUTPUT/fid-progress/, start over (it goes).
    """
    from radar_train.inference import PipelineArgs, RadarPipeline
    from radar_train.cache.workers import resolve_workers
    from radar_train.inference.fid import file_sha256, load_inception, markdown_report, reference_key, summarize
    from radar_train.inference.fid_progress import FidProgress, part_name, part_range, run_lock_name
    from radar_train.train import run_lock
    from radar_train.cli.common import (Stopped, accel_inputs, check_device, check_positive, end_stopped_run,
                                        model_inputs, note_merged_vqvae, signals_ignored_to_the_end, sigterm_stops,
                                        stopped_status)
    from radar_train.export import check_adapter
    from radar_train.inference.pipeline import check_pipeline_args, resolve_device
    from radar_train.models import get_preset
    from radar_train.inputs import InputError
    from radar_train.outputs import check_none_appeared, check_output_dir
    from radar_train.seeding import seed_range_problems

    earlier_report = _stat(Path(output) / "fid.json")  # (first: one another worker's merge writes later is new)

    check_positive(2, num_samples=num_samples)  # a covariance needs two samples (evaluate_generation's rule, up front)
    check_positive(batch_size=batch_size, is_splits=is_splits)
    check_positive(save_every_s=save_every_s, minimum=0)
    if problems := seed_range_problems("--base_seed", base_seed, num_samples):
        raise ValueError(problems[0])
    if inception is None and inception_logits is None and not save_npz:
        raise ValueError("--inception (FID), --inception_logits (IS) or --save_npz true (samples for the "
                         "guided-diffusion evaluator): give at least one, or there is nothing to measure or write")
    if reference is not None and inception is None:
        raise ValueError(f"--reference {reference} needs --inception: the reference statistics are of its features")
    check_device(device)
    split = resolve_workers(num_workers, worker_index)
    if split.process_count > 1 and device == "auto":  # (torchrun / accelerate: this process's GPU)
        from radar_train.cache.workers import resolve_device as worker_device

        device = worker_device(device, split)
    pipe_args = PipelineArgs(model, accel, sampling, adapter, merge_adapter, device, precision, decode_precision)
    check_pipeline_args(pipe_args)  # (precision, acceleration: before the extractors and the models load)
    if adapter is not None:  # (a label-conditioned one against the model's class count)
        check_adapter(adapter, get_preset(model.preset).var.num_classes)
    if reference is not None and not Path(reference).exists():
        raise InputError(f"{reference}: --reference not found (an .npz of mu / sigma, or a folder of images)")
    runs = ["vanilla", "accelerated"] + (["accelerated+adapter"] if adapter is not None else [])
    npz_names = {r: npz_name(r) for r in runs} if save_npz else {}
    writes_ref = reference is not None and Path(reference).is_dir()
    # an earlier run's reference_stats.npz goes too (with --overwrite), unless it is this run's --reference
    earlier_ref = Path(output) / "reference_stats.npz"
    stale_ref = not writes_ref and earlier_ref.is_file() and not (
        reference is not None and Path(reference).resolve() == earlier_ref.resolve())
    # every run's samples file, this run's or not: an earlier run's (e.g. of an adapter this run has not) is
    # replaced or removed with --overwrite, never left beside this run's output as if it were part of it
    # a worker that more workers than batches leave without one: its part counts as done for the others, so it
    # writes nothing (a late one found the merged run's outputs and was refused), after the checks every worker makes
    share = part_range(num_samples, batch_size, split.worker_index, split.num_workers)
    idle = split.num_workers > 1 and share[0] == share[1]
    entries = [] if idle else (["fid.json", "fid.md"] + (["reference_stats.npz"] if writes_ref or stale_ref else [])
                               + [npz_name(r) for r in ALL_RUNS])
    check_output_dir(output, entries, "--output", {"--inception": inception, "--inception_logits": inception_logits,
                                                   "--reference": reference, "--adapter": adapter,
                                                   **model_inputs(model), **accel_inputs(accel)}, overwrite)
    if inception_logits is not None and is_splits > num_samples:
        raise ValueError(f"--is_splits {is_splits} is more than --num_samples {num_samples}: each split needs samples")
    # another run of these samples in that folder: said before the start line and the models (acquired once the
    # models are loaded)
    part = None if split.num_workers == 1 else (split.worker_index, split.num_workers)
    run_lock.check_not_in_use(output, "--output", run_lock_name(part), "radar-fid")
    feats = None if inception is None else load_inception(inception, "--inception")
    logit_mod = None if inception_logits is None else load_inception(inception_logits, "--inception_logits")
    size, dev = get_preset(model.preset).image_size, resolve_device(device)
    # before hours of sampling: the extractors run on this model's images
    feature_dim = None if feats is None else feats.probe(size, dev)
    if logit_mod is not None:
        logit_mod.probe(size, dev)
    if classes is not None or seeds is not None:
        print("radar-fid: note: classes/seeds of the config are ignored; sample i has class i mod num_classes "
              f"and seed {base_seed} + i")
    print(f"radar-fid: {num_samples} samples per run, model {model.preset}, accel {accel.method}, "
          f"adapter {adapter or '-'}, inception {inception or '-'}, reference {reference or '-'}"
          f"{', samples as .npz' if save_npz else ''} -> {output}")
    sha = {role: None if path is None else file_sha256(path)
           for role, path in (("inception", inception), ("inception_logits", inception_logits))}
    # (before a folder's reference statistics, minutes, and the models)
    if adapter is not None:
        from radar_train.export import read_radar_config

        check_held_out(model, sampling, read_radar_config(adapter), base_seed, num_samples,
                       "the accelerated+adapter FID would score its training data")
    elif (merged := merged_training_caches(model.vae_checkpoint)) is not None:
        check_held_out(model, sampling, {"caches": merged}, base_seed, num_samples,
                       f"--model.vae_checkpoint {model.vae_checkpoint} has that adapter merged in (radar-train merge), "
                       f"so every FID of the run would score its training data")
    if idle:
        print(f"radar-fid: worker {split.worker_index} of {split.num_workers} has no batch (the {num_samples} samples "
              f"in batches of {batch_size} go to the other workers): nothing to do", flush=True)
        return 0
    ref = ref_key = None
    if split.num_workers == 1 or not writes_ref:  # (a folder's statistics: read by the workers' merge, once)
        ref, ref_key = fid_reference(reference, writes_ref, output, feats, sha, batch_size, dev, feature_dim,
                                     inception, size)
    pipe = RadarPipeline.from_config(pipe_args)
    note_merged_vqvae(pipe, model, "radar-fid", "the vanilla run (its FID, the gap closed's baseline)")
    fingerprint = {**fid_fingerprint(pipe, model, sha, num_samples, batch_size, base_seed, save_npz),
                   "num_workers": split.num_workers}
    if split.num_workers > 1:  # (the merge's settings: every worker must give the ones the merging worker uses;
        # by content, wherever each node finds the reference; left out at their defaults, as progress saved before
        # they were part of it was)
        if reference is not None:
            fingerprint["reference"] = (reference_key(reference, sha["inception"], size) if writes_ref
                                        else file_sha256(reference))
        if inception_logits is not None and is_splits != 10:
            fingerprint["is_splits"] = is_splits
    first, stop = (0, num_samples) if part is None else part_range(num_samples, batch_size, *part)
    progress = FidProgress(output, fingerprint, runs, npz_names, stop - first, size, part)
    what = "radar-fid" if part is None else f"radar-fid {part_name(*part)} (samples {first}-{stop - 1})"

    def complete(result: dict, ref, resumed_at) -> dict:
        """The report's record of the run: image size, protocol, samples files."""
        import torch

        result["image_size"] = [size, size]
        result["protocol"] = {
            "model": model.preset, "accel": pipe.accel.describe(),
            "sampling": {"cfg": sampling.cfg, "top_k": sampling.top_k, "top_p": sampling.top_p,
                         "noise": sampling.noise},
            "adapter": adapter, "base_seed": base_seed, "batch_size": batch_size, "device": str(pipe.device),
            # (as used, not as given: "auto" resolved to the device's; named as generate.json names them)
            "precision": str(pipe.autocast_dtype or torch.float32),
            "decode_precision": str(pipe.decode_dtype or torch.float32),
            "inception": None if inception is None else {"path": inception, "sha256": sha["inception"]},
            "inception_logits": None if inception_logits is None else {"path": inception_logits,
                                                                       "sha256": sha["inception_logits"]},
            "reference": None if reference is None else {"path": reference, "num_images": ref.n or None},
            "resumed_at": resumed_at, "workers": split.num_workers,
        }
        result["samples_npz"] = npz_names or None
        return result

    lock = run_lock.acquire(output, "--output", progress.lock_name, "radar-fid")  # (after every check: it makes
    try:                                                                             # the folder)
        resume_at = progress.check(overwrite)
        tally = progress.open(resume_at)
        if ref_key is not None:
            progress.keep_reference(ref, ref_key)
        if resume_at:
            print(f"{what}: going on from sample {first + resume_at} of {num_samples}, saved in {progress.dir}")
        measured = measure(pipe, progress, tally, feats, logit_mod, first, stop, batch_size, base_seed, save_every_s,
                           what)
        if measured is None:  # stopped by SIGTERM, its progress saved (measure said so)
            return stopped_status()
        tally, seconds = measured  # (every sample saved: a worker's share is done, the merge takes it from its folder)
        result = None
        if part is None:
            try:
                with sigterm_stops():
                    result = summarize(tally, runs, ref, feats, is_splits, num_samples, batch_size,
                                       int(pipe.var.num_classes), base_seed, sampling.noise)
            except (Stopped, KeyboardInterrupt) as e:
                return end_stopped_run(what, e, f"all {num_samples} samples are saved in {progress.dir}: run the "
                                                f"same command to make the report from them")
            result["seconds"] = round(progress.seconds_before + seconds, 2)
            complete(result, ref, progress.resumed_at)
            if not overwrite:  # another run's outputs appeared meanwhile: this run's samples are saved to go on from
                check_none_appeared(output, entries)
            signals_ignored_to_the_end()  # (seconds of renames: cut off, neither progress nor outputs would be left)
            write_fid_outputs(result, output, entries, progress.finish_npz, ref if writes_ref else None, overwrite)
            _say_left(progress.remove, progress.root)
    finally:
        progress.release()
        lock.release()
    if result is None:
        parts = [FidProgress(output, fingerprint, runs, npz_names, b - a, size, (j, split.num_workers))
                 for j, (a, b) in enumerate(part_range(num_samples, batch_size, j, split.num_workers)
                                            for j in range(split.num_workers))]
        result = merge_parts(parts, output, entries, num_samples, lambda: fid_reference(
            reference, writes_ref, output, feats, sha, batch_size, dev, feature_dim, inception, size), feats, is_splits,
            batch_size, int(pipe.var.num_classes), base_seed, sampling.noise, complete, earlier_report)
        if not isinstance(result, dict):  # (another worker's turn, or stopped by SIGTERM)
            return result
        ref = result.pop("_reference")
    print(markdown_report(result))
    if writes_ref:
        print(f"reference statistics of {ref.n} images saved to {Path(output) / 'reference_stats.npz'} "
              f"(reusable as --reference)")
    for name in npz_names.values():
        print(f"samples for the guided-diffusion evaluator: {Path(output) / name} (arr_0, uint8 "
              f"{num_samples} x {size} x {size} x 3)")
    print(f"wrote {Path(output) / 'fid.json'} and {Path(output) / 'fid.md'}")
    return 0


ALL_RUNS = ("vanilla", "accelerated", "accelerated+adapter")


def fid_fingerprint(pipe, model, sha: dict, num_samples, batch_size, base_seed, save_npz) -> dict:
    """The settings an interrupted run's progress must share with the run that goes on with it: whatever
    changes a sample (RadarPipeline.fingerprint), a statistic or the samples files."""
    return {**pipe.fingerprint(), "model": model.preset, "num_samples": num_samples, "batch_size": batch_size,
            "base_seed": base_seed, "save_npz": save_npz, **sha}


def merged_training_caches(vae_checkpoint) -> Optional[list]:
    """The adapter's cache records in the record of a VQ-VAE file `radar-train merge` wrote (None for any other
    file, and for one merged before the record held them): the file is hashed only when such a record is there."""
    from radar_train.export.merged import merged_record, sidecar_path
    from radar_train.models.checkpoint import file_sha256

    if vae_checkpoint is None or not sidecar_path(vae_checkpoint).is_file() or not Path(vae_checkpoint).is_file():
        return None
    record = merged_record(vae_checkpoint, file_sha256(vae_checkpoint))
    return None if record is None else record.get("caches")


def check_held_out(model, sampling, meta: dict, base_seed: int, num_samples: int, why: str) -> None:
    """ValueError (one line, ending in `why`) when the run would score pairs the adapter of `meta` (its
    radar_config.yaml, or {"caches": ...} of a merged VQ-VAE's record) was trained on (`held_out.fid_overlap`: the
    same VAR, sampler, class and seed as a sample of its training shards). The VAR file is hashed only when the
    adapter's records meet the samples (seeds and classes) at all."""
    from dataclasses import asdict

    from radar_train.inference.held_out import fid_overlap
    from radar_train.models import get_preset, var_identity_value

    settings = asdict(sampling)
    num_classes = get_preset(model.preset).var.num_classes
    hit = fid_overlap(meta, None, settings, num_classes, base_seed, num_samples)  # (any VAR)
    if hit is not None:
        var = var_identity_value(model.preset, model.vae_checkpoint, model.var_checkpoint, model.init_seed)
        hit = fid_overlap(meta, var, settings, num_classes, base_seed, num_samples)
    if hit is not None:
        raise ValueError(f"--base_seed {base_seed}: {hit.describe(num_samples)}: {why}; give a --base_seed of "
                         f"{hit.held_out_from} or more (past every seed of those caches)")


def fid_reference(reference, writes_ref, output, feats, sha, batch_size, dev, feature_dim, inception, size):
    """(the reference statistics, their key in the progress folder (None unless a folder)); a folder's images are
    brought to the generator's `size` (`reference_stats`); its statistics are taken from the progress folder
    while it, the extractor and the size are unchanged."""
    from radar_train.inference.fid import reference_key, reference_stats
    from radar_train.inference.fid_progress import PROGRESS_DIR, cached_reference
    from radar_train.inputs import InputError

    ref = ref_key = None
    if writes_ref:  # a folder: its statistics, unless a run of this output already computed them (fid_progress)
        ref_key = reference_key(reference, sha["inception"], size)
        ref = cached_reference(output, ref_key)
        if ref is not None:
            print(f"radar-fid: reference statistics of {ref.n} images from {Path(output) / PROGRESS_DIR} (the folder "
                  f"{reference} and --inception are as they were then)")
    if reference is not None and ref is None:
        ref = reference_stats(reference, feats, batch_size=max(batch_size, 32), device=dev, image_size=size)
        if ref.dim != feature_dim:
            raise InputError(f"{reference}: --reference has {ref.dim}-d statistics but --inception {inception} gives "
                             f"{feature_dim}-d features")
    return ref, ref_key


def write_fid_outputs(result: dict, output, entries, fill_npz, ref_to_save, overwrite: bool = True) -> None:
    """fid.json / fid.md (and the samples files `fill_npz(stage)` puts in the staging folder, and the reference
    statistics of a folder) moved into the output folder, replacing an earlier run's."""
    from radar_train.inference.fid import write_report
    from radar_train.outputs import naming, staged_entries, staged_name

    with staged_entries(output, entries, overwrite) as stage:
        # the small files first: a failure there (a full disk) leaves the samples in the progress folder (moved into
        # the staging folder, they went with it, the run's saved progress too)
        write_report(result, stage)
        if ref_to_save is not None:
            with naming(staged_name(stage, "reference_stats.npz")):
                ref_to_save.save(stage / "reference_stats.npz")
        fill_npz(stage)


def _stat(path: Path):
    """(inode, mtime_ns, size) of a file (a report put in place by a rename has a new inode), None when none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _say_left(remove, root: Path) -> None:
    """Run `remove` (the progress folder's removal, the outputs being in place) and note the files it left, which
    radar-fid did not write (never removed); a failure is a note too: the run's outputs are complete."""
    try:
        left = remove()
    except OSError as e:
        print(f"radar-fid: note: {root} could not be removed ({e}); the outputs are complete", file=sys.stderr)
        return
    if left:
        print(f"radar-fid: note: left {', '.join(left[:3])}{' ...' if len(left) > 3 else ''} in {root}: not "
              f"radar-fid's", file=sys.stderr)


def merge_parts(parts, output, entries, num_samples, reference, feats, is_splits, batch_size, num_classes,
                base_seed, noise, complete, earlier_report=None) -> dict | int:
    """After a worker's share: with every part finished, their tallies and samples as one run's outputs (the
    report, completed by `complete(result, ref, resumed_at)`, with `_reference` the statistics used); else the
    command's exit status: 0 when a part is not finished yet (said so: the last worker to finish merges), 143
    when SIGTERM stopped the merge of the samples (which goes on when any worker runs again). Waits while another
    worker merges. `earlier_report`: `_stat` of OUTPUT/fid.json when this worker started (an earlier run's, which
    --overwrite replaces, is not one another worker merged)."""
    from radar_train.cli.common import Stopped, end_stopped_run, signals_ignored_to_the_end, sigterm_stops
    from radar_train.inference.fid import merge_tallies, summarize
    from radar_train.inference.fid_progress import LOCK_NAME, part_name
    from radar_train.inference.fid_merge import MERGE_DIR, link_samples, merge_samples
    from radar_train.outputs import OutputError
    from radar_train.train import run_lock

    n = len(parts)
    waited = False
    while True:
        try:
            lock = run_lock.acquire(output, "--output", LOCK_NAME, "radar-fid")
            break
        except OutputError:
            if not waited:
                print("radar-fid: waiting for another worker's merge", flush=True)
                waited = True
            time.sleep(2.0)
    try:
        if _stat(Path(output) / "fid.json") not in (None, earlier_report):
            print(f"radar-fid: another worker merged the {n} parts into {Path(output) / 'fid.json'}")
            return 0
        finished = [p.finished() for p in parts]
        left = [part_name(j, n) for j, f in enumerate(finished) if f is None]
        if left:
            more = " ..." if len(left) > 4 else ""
            print(f"radar-fid: {n - len(left)} of {n} parts done ({', '.join(left[:4])}{more} not yet): the last "
                  f"worker to finish writes {Path(output) / 'fid.json'}")
            for j, p in enumerate(parts):  # (a worker run with other settings would never let the merge happen)
                if finished[j] is None and (diffs := p.other_settings()):
                    print(f"radar-fid: note: {p.dir} holds progress of other settings ({'; '.join(diffs)}, saved "
                          f"vs this worker's): every worker must run with the same settings (worker {j} with these, "
                          f"or this one with those; a part an earlier run left goes when its worker runs with "
                          f"--overwrite)")
            return 0
        print(f"radar-fid: every one of the {n} parts is done: merging them into {output}")
        try:  # (the statistics: seconds to minutes; a SIGTERM there ended the merge without a word)
            with sigterm_stops():
                tally = merge_tallies([t for t, _ in finished])
                ref, ref_key = reference()
                result = summarize(tally, parts[0].runs, ref, feats, is_splits, num_samples, batch_size, num_classes,
                                   base_seed, noise)
        except (Stopped, KeyboardInterrupt) as e:
            return end_stopped_run("radar-fid", e, f"every one of the {n} parts is kept in {parts[0].root}: run any "
                                                   f"worker again to merge them")
        result["seconds"] = round(sum(float(meta.get("seconds", 0.0)) for _, meta in finished), 2)
        complete(result, ref, {part_name(j, n): json.loads(meta.get("resumed_at", "[]"))
                               for j, (_, meta) in enumerate(finished)})
        try:  # (minutes for 50,000 samples a run: SIGTERM stops it, and it goes on from the parts it merged)
            with sigterm_stops():
                archives = merge_samples(parts[0].root, parts, parts[0].npz_names, num_samples, parts[0].image_size,
                                         parts[0].fingerprint)
        except OutputError:  # (a part's archive missing: it says what to do)
            raise
        except (Stopped, KeyboardInterrupt, Exception) as e:
            return end_stopped_run("radar-fid", e, f"the samples merged so far are kept in {parts[0].root / MERGE_DIR}, "
                                                   f"the others in the parts: run any worker again to go on")
        signals_ignored_to_the_end()  # (seconds of renames)
        write_fid_outputs(result, output, entries, lambda stage: link_samples(archives, parts[0].npz_names, stage),
                          ref if ref_key is not None else None)
        _say_left(parts[0].remove, parts[0].root)
        result["_reference"] = ref
        return result
    finally:
        lock.release()


def measure(pipe, progress, tally, feats, logit_mod, first: int, stop: int, batch_size: int, base_seed: int,
            save_every_s: float, what: str = "radar-fid"):
    """The tally of samples first .. stop - 1 from `tally`, its progress saved every `save_every_s` seconds, when
    it stops, and after the last batch (before the report's statistics: a signal in that save, outside the handler,
    killed the run with the samples since the last periodic save lost): (the tally, the seconds this run took); None
    when SIGTERM stopped it (saved, and said on stdout). Ctrl-C and errors are raised again, saying what was
    saved."""
    from radar_train.cli.common import end_stopped_run, sigterm_stops
    from radar_train.inference.fid import tally_samples
    from radar_train.progress import Progress

    last = {"tally": tally, "saved": time.monotonic()}
    t0 = time.monotonic()
    count = stop - first

    def on_batch(t):
        last["tally"] = t
        if save_every_s and time.monotonic() - last["saved"] >= save_every_s:
            progress.save(t, time.monotonic() - t0)
            last["saved"] = time.monotonic()

    try:
        with sigterm_stops(), Progress(count, "radar-fid", "samples", initial=tally.done) as bar:
            done, _ = tally_samples(pipe, feats, logit_mod, first, stop, batch_size, base_seed, progress=bar.update,
                                    start=tally, on_batch=on_batch,
                                    on_images=progress.write_images if progress.writers else None)
            last["tally"] = done
            progress.save(done, time.monotonic() - t0)
        return done, time.monotonic() - t0
    except BaseException as e:
        done = last["tally"].done
        try:
            progress.save(last["tally"], time.monotonic() - t0)
            said = (f"{done} of {count} samples are saved in {progress.dir}: run the same command to go on "
                    f"from there" if done else "no sample was done, nothing saved")
        except Exception as save_error:  # noqa: BLE001 - the first error is the one to raise
            said = f"its progress could not be saved ({type(save_error).__name__}: {save_error})"
            if progress.saved_done:
                said += (f"; the last save, of {progress.saved_done} of {count} samples, is in {progress.dir}: "
                         f"run the same command to go on from there")
        end_stopped_run(what, e, said)  # (returns only for SIGTERM)
        return None


def npz_name(run: str) -> str:
    """samples_<run>.npz: vanilla, accelerated, accelerated_adapter."""
    return f"samples_{run.replace('+', '_')}.npz"


def main(argv: list[str] | None = None) -> None:
    from radar_train.cli.common import run_main

    run_main("radar-fid", lambda args: CLI(fid, args=args, as_positional=False, exit_on_error=False), argv)


if __name__ == "__main__":
    main()
