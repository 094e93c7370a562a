"""radar-generate: images of vanilla | accelerated | accelerated + adapter for classes × seeds, as PNGs
and one labelled comparison grid."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Optional, Union

from jsonargparse import CLI

from radar_train.config import AccelArgs, ModelArgs, SamplingConfig, format_int_list, parse_int_list
from radar_train.inference.pipeline import Precision


OUTPUT_ENTRIES = ("vanilla", "accelerated", "restored", "grid.png", "generate.json")
FOLDERS = {"vanilla": "vanilla", "accelerated": "accelerated", "accelerated+adapter": "restored"}


MAX_GRID_PIXELS = 2 ** 28
"""The largest grid.png radar-generate draws (768 MiB as RGB in memory): a --grid_scale of 1000 ran the samples, then
ran out of memory drawing the grid (or the kernel killed the process), and the line blamed the batch size."""


def tile_scale(grid_scale: int, image_size: int) -> int:
    """The grid's upscaling of its tiles: --grid_scale, or for 0 the least giving tiles of at least 96 px."""
    return grid_scale or max(1, -(-96 // image_size))


def check_grid_size(samples: int, grid_rows: int, grid_scale: int, columns: int, image_size: int) -> None:
    """ValueError naming --grid_scale / --grid_rows when the grid would be over MAX_GRID_PIXELS (before any model
    loads). Its size as images.grid draws it, titles aside: a row per sample shown, a column per variant."""
    rows = samples if grid_rows == 0 else min(samples, grid_rows)
    tile = image_size * tile_scale(grid_scale, image_size)
    width, height = columns * (tile + 2) + 2, rows * (tile + 2) + 2
    if width * height > MAX_GRID_PIXELS:
        from radar_train.progress import plural

        raise ValueError(f"--grid_scale {grid_scale}, --grid_rows {grid_rows}: the grid of {plural(rows, 'sample')} x "
                         f"{columns} images of {tile} px would be {width} x {height} px, over the {MAX_GRID_PIXELS:,} "
                         f"pixels radar-generate draws; give a smaller --grid_scale or --grid_rows")


def grid_classes_seeds(classes, seeds, preset: str, where: str = "") -> tuple[list[int], list[int]]:
    """--classes and --seeds as lists: readable, none listed twice (one image and file per class and seed),
    seeds within 64 bits, classes within the class count of `preset` (`where`: said after the model)."""
    from radar_train.models import get_preset

    cls_list, seed_list = parse_int_list(classes, "--classes"), parse_int_list(seeds, "--seeds")
    if max(seed_list) >= 2 ** 63:
        raise ValueError(f"--seeds: {max(seed_list)} does not fit in 64 bits")
    for option, values in (("--classes", cls_list), ("--seeds", seed_list)):
        twice = sorted(v for v, n in Counter(values).items() if n > 1)
        if twice:
            raise ValueError(f"{option} lists {', '.join(map(str, twice))} more than once")
    num_classes = get_preset(preset).var.num_classes
    bad = [c for c in cls_list if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"--classes {format_int_list(bad, ',')} outside [0, {num_classes - 1}] for model "
                         f"{preset}{where}")
    return cls_list, seed_list


def generate(model: ModelArgs = ModelArgs(), accel: AccelArgs = AccelArgs(method="fastvar"),
             sampling: SamplingConfig = SamplingConfig(), adapter: Optional[str] = None, merge_adapter: bool = True,
             classes: Union[str, list[int]] = "0-3", seeds: Union[str, list[int]] = "0", output: str = "outputs/generate",
             batch_size: int = 16, grid_scale: int = 0, grid_rows: int = 64, device: str = "auto",
             precision: Precision = "auto", decode_precision: Precision = "fp32", overwrite: bool = False) -> int:
    """Generate vanilla | accelerated | accelerated + adapter images and a comparison grid.

    Generate every (class, seed) pair with the vanilla and the accelerated model, decode the accelerated
    latent also through the adapted decoder, and write PNGs plus a comparison grid (rows = samples).
    The output folder's vanilla/, accelerated/, restored/, grid.png and generate.json of an earlier run are
    replaced only with --overwrite (other files there are left alone). The PNGs are written batch by batch
    under OUTPUT/generate-progress/ and moved in at the end; an interrupted run (Ctrl-C, SIGTERM, an error, a
    kill) leaves them there, and the same command goes on with the batches not yet written.

    Args:
        model: VQ-VAE + VAR.
        accel: acceleration method of the accelerated column.
        sampling: sampler settings (per-sample seeds by default).
        adapter: adapter folder from radar-train (adds the "accelerated + adapter" column).
        merge_adapter: merge the LoRA into the decoder (no overhead).
        classes: class labels, e.g. "0-3,7".
        seeds: per-sample seeds, e.g. "0-1"; every class is generated with every seed.
        output: folder for vanilla/, accelerated/, restored/ PNGs, grid.png and generate.json.
        batch_size: samples per sampling call.
        grid_scale: pixel upscaling of the grid tiles (0 = automatic: tiles of at least 96 px).
        grid_rows: the grid shows the first this many samples (0: all of them; the PNGs are of all).
        device: cuda, cpu, or auto.
        precision: transformer compute dtype (auto: bf16 on CUDA, fp32 on CPU).
        decode_precision: decoder compute dtype (fp32; bf16 / fp16: autocast; auto: bf16 on CUDA, fp32 on CPU).
        overwrite: replace the outputs of an earlier run in the output folder (and start over from the
            progress of a run of other settings in OUTPUT/generate-progress/).
    """
    from radar_train.cli.common import (Stopped, accel_inputs, check_device, check_positive, end_stopped_run,
                                        model_inputs, note_merged_vqvae, signals_ignored_to_the_end, sigterm_stops)
    from radar_train.export import check_adapter, is_label_conditioned
    from radar_train.images import save_grid
    from radar_train.inference import PipelineArgs, RadarPipeline
    from radar_train.inference.generate_progress import LOCK_NAME, GenerateProgress, PngBatches
    from radar_train.inference.pipeline import check_pipeline_args
    from radar_train.models import get_preset
    from radar_train.outputs import check_output_dir, naming
    from radar_train.progress import Progress, plural
    from radar_train.train import run_lock

    cls_list, seed_list = grid_classes_seeds(classes, seeds, model.preset)
    check_positive(batch_size=batch_size)
    check_positive(grid_scale=grid_scale, grid_rows=grid_rows, minimum=0)
    check_grid_size(len(cls_list) * len(seed_list), grid_rows, grid_scale, 2 + (adapter is not None),
                    get_preset(model.preset).image_size)
    check_device(device)
    args = PipelineArgs(model, accel, sampling, adapter, merge_adapter, device, precision, decode_precision)
    check_pipeline_args(args)
    if adapter is not None:  # (a label-conditioned one against the model's class count, before the models load)
        check_adapter(adapter, get_preset(model.preset).var.num_classes)
    check_output_dir(output, OUTPUT_ENTRIES, "--output",
                     {"--adapter": adapter, **model_inputs(model), **accel_inputs(accel)}, overwrite)
    GenerateProgress.check_folder(output)  # a folder of that name that is not radar-generate's, before the models
    # another run in that folder: said before the start line and the models (acquired below, once they are loaded)
    run_lock.check_not_in_use(output, "--output", LOCK_NAME, "radar-generate")
    pairs = [(c, s) for c in cls_list for s in seed_list]
    out = Path(output)
    print(f"radar-generate: {plural(len(pairs), 'sample')} ({plural(len(cls_list), 'class')} x "
          f"{plural(len(seed_list), 'seed')}), model {model.preset}, accel {accel.method}, adapter {adapter or '-'} "
          f"-> {out}")
    pipe = RadarPipeline.from_config(args)
    note_merged_vqvae(pipe, model, "radar-generate", "vanilla/")
    note_trained_pairs(pipe, pairs)
    keys = ["vanilla", "accelerated"] + (["accelerated+adapter"] if pipe.adapted_decoder is not None else [])
    settings = {**pipe.fingerprint(), "model": model.preset, "classes": cls_list, "seeds": seed_list,
                "batch_size": batch_size}
    work = GenerateProgress(out, settings, [FOLDERS[k] for k in keys])
    batches = [pairs[i: i + batch_size] for i in range(0, len(pairs), batch_size)]
    lock = run_lock.acquire(out, "--output", LOCK_NAME, "radar-generate")  # (after every check: it makes the folder)
    made = 0
    try:
        work.open(go_on := work.check(overwrite))
        pending = work.pending(batches)
        before = len(pairs) - sum(len(batches[i]) for i in pending)
        if go_on:
            print(f"radar-generate: going on: {before} of {len(pairs)} samples are in {work.dir}")
        if work.damaged:
            print(f"radar-generate: {len(work.damaged)} damaged PNG(s) in {work.dir} (e.g. {work.damaged[0].name}, "
                  f"empty or cut short) are generated again with their batch")
        saver = PngBatches(work)

        def settle(progress) -> None:  # the previous batch's files written: its samples are made
            nonlocal made
            n = saver.settle()
            made += n
            progress.update(n)

        try:
            with sigterm_stops(), Progress(len(pairs), "radar-generate", "samples", initial=before) as progress, \
                    saver:
                saver.on_late = progress.update  # (a batch written while the run stops counts in its last line)
                for i in pending:
                    chunk = batches[i]
                    imgs = pipe.compare([c for c, _ in chunk], [s for _, s in chunk])
                    # on the host: waits for this batch, while the previous batch's PNGs were written on threads
                    host = {FOLDERS[key]: images.cpu() for key, images in imgs.items()}
                    settle(progress)
                    saver.submit(host, chunk)
                settle(progress)
        except BaseException as e:
            made += saver.late  # (a batch whose files were all written while the run stopped)
            done = before + made
            said = (f"{done} of {len(pairs)} samples are in {work.dir}: run the same command to go on from there"
                    if done else "no sample was done")
            work.release(made_any=made > 0)
            return end_stopped_run("radar-generate", e, said)  # (returns only for SIGTERM)
        shown = pairs if grid_rows == 0 else pairs[:grid_rows]
        try:  # (seconds for thousands of samples: a SIGTERM there ended the run without a word)
            with sigterm_stops():
                rows = [[work.load_png(FOLDERS[k], c, s) for k in keys] for c, s in shown]
                H = rows[0][0].shape[-1]
                scale = tile_scale(grid_scale, H)
                titles = {"vanilla": "vanilla", "accelerated": accel.method,
                          "accelerated+adapter": f"{accel.method}+PAA"}
                with naming(out / "grid.png"):  # (a full disk: said of the file, not of no file)
                    save_grid(rows, work.dir / "grid.png", col_titles=[titles[k] for k in keys],
                              row_titles=[f"c{c} s{s}" for c, s in shown], scale=scale)
        except (Stopped, KeyboardInterrupt) as e:
            work.release(made_any=True)
            return end_stopped_run("radar-generate", e, f"all {len(pairs)} samples are in {work.dir}: run the same "
                                                        f"command to write the grid and put them in place")
        info = {"classes": cls_list, "seeds": seed_list, "columns": keys, "model": model.preset,
                "accel": pipe.accel.describe(), "adapter": adapter, "grid": str(out / "grid.png"),
                "grid_rows": len(shown),
                # what else makes these PNGs (official noise depends on the batch): the run's fingerprint's values
                "label_conditioned": is_label_conditioned(pipe.adapted_decoder),
                **{k: settings.get(k) for k in ("radar_train", "sampling", "batch_size", "precision", "vae", "var")},
                "decode_precision": settings.get("decode_precision", "torch.float32"),
                "merge_adapter": merge_adapter if adapter else None}
        with naming(out / "generate.json"):
            (work.dir / "generate.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        signals_ignored_to_the_end()
        work.finish(OUTPUT_ENTRIES, overwrite)
    finally:
        lock.release()
    more = f" (its first {len(shown)} of {len(pairs)} samples: --grid_rows)" if len(shown) < len(pairs) else ""
    print(f"wrote {len(pairs) * len(keys)} PNGs under {out} and the comparison grid {out / 'grid.png'}{more}")
    return 0


def main(argv: list[str] | None = None) -> None:
    from radar_train.cli.common import run_main

    run_main("radar-generate", lambda args: CLI(generate, args=args, exit_on_error=False), argv)


def note_trained_pairs(pipe, pairs: list[tuple[int, int]]) -> None:
    """A note when samples are pairs the adapter was trained on (`held_out.grid_overlap`): their restored images
    show how it fits its training data, not how it restores new samples."""
    from dataclasses import asdict

    from radar_train.inference.held_out import grid_overlap

    meta, images = pipe.adapter_meta, "their restored/ images are"
    if meta is None and isinstance(getattr(pipe, "merged_vqvae", None), dict) and pipe.merged_vqvae.get("caches"):
        # a VQ-VAE file with the adapter merged in (its record holds the adapter's caches): every folder decodes with it
        meta, images = {"caches": pipe.merged_vqvae["caches"]}, "with the adapter merged into the VQ-VAE file, " \
            "their images are"
    if meta is None:
        return
    var = None if pipe.var_identity is None else pipe.var_identity.value
    hit = grid_overlap(meta, var, asdict(pipe.sampling), [c for c, _ in pairs], [s for _, s in pairs])
    if hit is not None:
        print(f"radar-generate: note: {hit.describe(len(pairs))}: {images} of its training data; seeds from "
              f"{hit.held_out_from} on are held out")


if __name__ == "__main__":
    main()
