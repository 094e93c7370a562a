"""radar-fid: FID / IS of vanilla, accelerated and accelerated + adapter samples with a local Inception file
(fid.json + fid.md). See radar_train/inference/fid.py for the extractor contract and the protocol caveats."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Union


from jsonargparse import CLI

from radar_train.config import AccelArgs, ModelArgs, SamplingConfig
from radar_train.inference.pipeline import Precision


def fid(inception: Optional[str] = None, model: ModelArgs = ModelArgs(),
        accel: AccelArgs = AccelArgs(method="fastvar"), sampling: SamplingConfig = SamplingConfig(),
        adapter: Optional[str] = None, merge_adapter: bool = True, inception_logits: Optional[str] = None,
        reference: Optional[str] = None, num_samples: int = 50000, batch_size: int = 16, base_seed: int = 0,
        is_splits: int = 10, save_npz: bool = False, output: str = "outputs/fid", device: str = "auto",
        precision: Precision = "auto", classes: Optional[Union[str, int, list[int]]] = None,
        seeds: Optional[Union[str, int, list[int]]] = None, grid_scale: int = 0, save_every_s: float = 300.0,
        overwrite: bool = False) -> int:
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
        base_seed: seed of sample 0.
        is_splits: Inception Score splits.
        save_npz: also write each run's samples as samples_<run>.npz (arr_0: uint8 N x H x W x 3, streamed to
            disk: 9.8 GB per run at 50,000 samples of 256 px), for the guided-diffusion evaluator.
        output: folder for fid.json and fid.md (a radar-generate config's output folder unless given).
        device: cuda, cpu, or auto.
        precision: transformer compute dtype (auto: bf16 on CUDA, fp32 on CPU).
        classes: ignored (radar-generate key, accepted so its configs can be reused).
        seeds: ignored (radar-generate key).
        grid_scale: ignored (radar-generate key).
        save_every_s: seconds between saves of the run's progress into OUTPUT/fid-progress/ (at the end of a
            batch; 0: only when the run stops). A run stopped by SIGTERM (a SLURM time limit or preemption),
            Ctrl-C or an error saves its last complete batch too, and the same command run again goes on from
            there (the numbers and samples are those of an uninterrupted run); the folder goes at the end.
        overwrite: replace fid.json / fid.md (and reference_stats.npz, samples_*.npz) of an earlier run in the
            output folder; an earlier samples_*.npz or reference_stats.npz this run does not write goes (unless
            it is this run's --reference; without --overwrite they are refused; other files there are left alone); with
            the progress of a run of other settings in OUTPUT/fid-progress/, start over (it goes).
    """
    from radar_train.inference import PipelineArgs, RadarPipeline
    from radar_train.inference.fid import (file_sha256, load_inception, markdown_report, reference_key,
                                           reference_stats, write_report)
    from radar_train.inference.fid_progress import LOCK_NAME, PROGRESS_DIR, FidProgress, cached_reference
    from radar_train.train import run_lock
    from radar_train.cli.common import (STOPPED_STATUS, accel_inputs, check_device, check_positive, model_inputs,
                                        sigterm_ignored)
    from radar_train.export import check_adapter
    from radar_train.inference.pipeline import resolve_device
    from radar_train.models import get_preset
    from radar_train.inputs import InputError
    from radar_train.outputs import check_output_dir, staged_entries
    from radar_train.seeding import seed_range_problems

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
    if adapter is not None:
        check_adapter(adapter)
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
    entries = (["fid.json", "fid.md"] + (["reference_stats.npz"] if writes_ref or stale_ref else [])
               + [npz_name(r) for r in ALL_RUNS])
    check_output_dir(output, entries, "--output", {"--inception": inception, "--inception_logits": inception_logits,
                                                   "--reference": reference, "--adapter": adapter,
                                                   **model_inputs(model), **accel_inputs(accel)}, overwrite)
    if inception_logits is not None and is_splits > num_samples:
        raise ValueError(f"--is_splits {is_splits} is more than --num_samples {num_samples}: each split needs samples")
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
    ref = ref_key = None
    if writes_ref:  # a folder: its statistics, unless a run of this output already computed them (fid_progress)
        ref_key = reference_key(reference, sha["inception"])
        ref = cached_reference(output, ref_key)
        if ref is not None:
            print(f"radar-fid: reference statistics of {ref.n} images from {Path(output) / PROGRESS_DIR} (the folder "
                  f"{reference} and --inception are as they were then)")
    if reference is not None and ref is None:
        ref = reference_stats(reference, feats, batch_size=max(batch_size, 32), device=dev)
        if ref.dim != feature_dim:
            raise InputError(f"{reference}: --reference has {ref.dim}-d statistics but --inception {inception} gives "
                             f"{feature_dim}-d features")
    pipe = RadarPipeline.from_config(PipelineArgs(model, accel, sampling, adapter, merge_adapter, device, precision))
    progress = FidProgress(output, fid_fingerprint(pipe, model, sha, num_samples, batch_size, base_seed, save_npz),
                           runs, npz_names, num_samples, size)
    lock = run_lock.acquire(output, "--output", LOCK_NAME, "radar-fid")  # (after every check: it makes the folder)
    try:
        resume_at = progress.check(overwrite)
        tally = progress.open(resume_at)
        if ref_key is not None:
            progress.keep_reference(ref, ref_key)
        if resume_at:
            print(f"radar-fid: going on from sample {resume_at} of {num_samples}, saved in {progress.dir}")
        result = measure(pipe, progress, tally, feats, logit_mod, ref, num_samples, batch_size, base_seed, is_splits,
                         save_every_s)
        if result is None:  # stopped by SIGTERM, its progress saved (measure said so)
            return STOPPED_STATUS
        result["image_size"] = [size, size]
        result["seconds"] = round(progress.seconds_before + result["seconds"], 2)
        result["protocol"] = {
            "model": model.preset, "accel": pipe.accel.describe(),
            "sampling": {"cfg": sampling.cfg, "top_k": sampling.top_k, "top_p": sampling.top_p,
                         "noise": sampling.noise},
            "adapter": adapter, "base_seed": base_seed, "batch_size": batch_size, "device": str(pipe.device),
            "precision": precision,
            "inception": None if inception is None else {"path": inception, "sha256": sha["inception"]},
            "inception_logits": None if inception_logits is None else {"path": inception_logits,
                                                                       "sha256": sha["inception_logits"]},
            "reference": None if reference is None else {"path": reference, "num_images": ref.n or None},
            "resumed_at": progress.resumed_at,
        }
        result["samples_npz"] = npz_names or None
        with sigterm_ignored():  # (seconds of renames: cut off, neither the progress nor the outputs would be left)
            with staged_entries(output, entries) as stage:
                progress.finish_npz(stage)
                write_report(result, stage)
                if writes_ref:
                    ref.save(stage / "reference_stats.npz")
            progress.remove()
    finally:
        progress.release()
        lock.release()
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


def measure(pipe, progress, tally, feats, logit_mod, ref, num_samples: int, batch_size: int, base_seed: int,
            is_splits: int, save_every_s: float) -> Optional[dict]:
    """evaluate_generation from `tally`, its progress saved every `save_every_s` seconds and when it stops:
    the report; None when SIGTERM stopped it (saved, and said on stdout). Ctrl-C and errors are raised again,
    saying what was saved."""
    from radar_train.cli.common import end_stopped_run, sigterm_stops
    from radar_train.inference.fid import evaluate_generation
    from radar_train.progress import Progress

    last = {"tally": tally, "saved": time.monotonic()}
    t0 = time.monotonic()

    def on_batch(t):
        last["tally"] = t
        if save_every_s and time.monotonic() - last["saved"] >= save_every_s:
            progress.save(t, time.monotonic() - t0)
            last["saved"] = time.monotonic()

    try:
        with sigterm_stops(), Progress(num_samples, "radar-fid", "samples", initial=tally.done) as bar:
            return evaluate_generation(pipe, feats, logit_mod, ref, num_samples, batch_size, base_seed, is_splits,
                                       progress=bar.update, start=tally, on_batch=on_batch,
                                       on_images=progress.write_images if progress.writers else None)
    except BaseException as e:
        done = last["tally"].done
        try:
            progress.save(last["tally"], time.monotonic() - t0)
            said = (f"{done} of {num_samples} samples are saved in {progress.dir}: run the same command to go on "
                    f"from there" if done else "no sample was done, nothing saved")
        except Exception as save_error:  # noqa: BLE001 - the first error is the one to raise
            said = f"its progress could not be saved ({type(save_error).__name__}: {save_error})"
        end_stopped_run("radar-fid", e, said)  # (returns only for SIGTERM)
        return None


def npz_name(run: str) -> str:
    """samples_<run>.npz: vanilla, accelerated, accelerated_adapter."""
    return f"samples_{run.replace('+', '_')}.npz"


def main(argv: list[str] | None = None) -> None:
    from radar_train.cli.common import run_main

    run_main("radar-fid", lambda args: CLI(fid, args=args, as_positional=False, exit_on_error=False), argv)


if __name__ == "__main__":
    main()
