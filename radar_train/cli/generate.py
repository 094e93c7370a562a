"""radar-generate: images of vanilla | accelerated | accelerated + adapter for classes × seeds, as PNGs
and one labelled comparison grid."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from jsonargparse import CLI

from radar_train.config import AccelArgs, ModelArgs, SamplingConfig, parse_int_list
from radar_train.inference.pipeline import Precision


OUTPUT_ENTRIES = ("vanilla", "accelerated", "restored", "grid.png", "generate.json")


def grid_classes_seeds(classes, seeds, preset: str, where: str = "") -> tuple[list[int], list[int]]:
    """--classes and --seeds as lists: readable, none listed twice (one image and file per class and seed),
    seeds within 64 bits, classes within the class count of `preset` (`where`: said after the model)."""
    from radar_train.models import get_preset

    cls_list, seed_list = parse_int_list(classes, "--classes"), parse_int_list(seeds, "--seeds")
    if max(seed_list) >= 2 ** 63:
        raise ValueError(f"--seeds: {max(seed_list)} does not fit in 64 bits")
    for option, values in (("--classes", cls_list), ("--seeds", seed_list)):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise ValueError(f"{option} lists {', '.join(map(str, twice))} more than once")
    num_classes = get_preset(preset).var.num_classes
    bad = [c for c in cls_list if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"--classes {bad} outside [0, {num_classes - 1}] for model {preset}{where}")
    return cls_list, seed_list


def generate(model: ModelArgs = ModelArgs(), accel: AccelArgs = AccelArgs(method="fastvar"),
             sampling: SamplingConfig = SamplingConfig(), adapter: Optional[str] = None, merge_adapter: bool = True,
             classes: Union[str, list[int]] = "0-3", seeds: Union[str, list[int]] = "0", output: str = "outputs/generate",
             batch_size: int = 16, grid_scale: int = 0, device: str = "auto", precision: Precision = "auto",
             overwrite: bool = False) -> int:
    """Generate vanilla | accelerated | accelerated + adapter images and a comparison grid.

    Generate every (class, seed) pair with the vanilla and the accelerated model, decode the accelerated
    latent also through the adapted decoder, and write PNGs plus a comparison grid (rows = samples).
    The output folder's vanilla/, accelerated/, restored/, grid.png and generate.json of an earlier run are
    replaced only with --overwrite (other files there are left alone); everything is written under a
    temporary folder and moved in at the end.

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
        device: cuda, cpu, or auto.
        precision: transformer compute dtype (auto: bf16 on CUDA, fp32 on CPU).
        overwrite: replace the outputs of an earlier run in the output folder.
    """
    import torch

    from radar_train.cli.common import accel_inputs, check_device, check_positive, model_inputs
    from radar_train.export import check_adapter
    from radar_train.images import save_grid, save_png
    from radar_train.inference import PipelineArgs, RadarPipeline
    from radar_train.outputs import check_output_dir, staged_entries
    from radar_train.progress import Progress

    cls_list, seed_list = grid_classes_seeds(classes, seeds, model.preset)
    check_positive(batch_size=batch_size)
    check_positive(grid_scale=grid_scale, minimum=0)
    check_device(device)
    if adapter is not None:
        check_adapter(adapter)
    check_output_dir(output, OUTPUT_ENTRIES, "--output",
                     {"--adapter": adapter, **model_inputs(model), **accel_inputs(accel)}, overwrite)
    pairs = [(c, s) for c in cls_list for s in seed_list]
    out = Path(output)
    print(f"radar-generate: {len(pairs)} samples ({len(cls_list)} classes x {len(seed_list)} seeds), model "
          f"{model.preset}, accel {accel.method}, adapter {adapter or '-'} -> {out}")
    pipe = RadarPipeline.from_config(PipelineArgs(model, accel, sampling, adapter, merge_adapter, device, precision))
    columns: dict[str, list[torch.Tensor]] = {}
    with Progress(len(pairs), "radar-generate", "samples") as progress:
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i: i + batch_size]
            imgs = pipe.compare([c for c, _ in chunk], [s for _, s in chunk])
            for k, v in imgs.items():
                columns.setdefault(k, []).extend(v)
            progress.update(len(chunk))
    folders = {"vanilla": "vanilla", "accelerated": "accelerated", "accelerated+adapter": "restored"}
    titles = {"vanilla": "vanilla", "accelerated": accel.method, "accelerated+adapter": f"{accel.method}+PAA"}
    keys = list(columns)
    H = columns[keys[0]][0].shape[-1]
    scale = grid_scale or max(1, -(-96 // H))
    rows = [[columns[k][i] for k in keys] for i in range(len(pairs))]
    n_files = 0
    with staged_entries(out, OUTPUT_ENTRIES) as stage:
        for key, imgs in columns.items():
            for (c, s), img in zip(pairs, imgs):
                save_png(img, stage / folders[key] / f"class{c:04d}_seed{s}.png")
                n_files += 1
        save_grid(rows, stage / "grid.png", col_titles=[titles[k] for k in keys],
                  row_titles=[f"c{c} s{s}" for c, s in pairs], scale=scale)
        info = {"classes": cls_list, "seeds": seed_list, "columns": keys, "model": model.preset,
                "accel": pipe.accel.describe(), "adapter": adapter, "grid": str(out / "grid.png")}
        (stage / "generate.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    print(f"wrote {n_files} PNGs under {out} and the comparison grid {out / 'grid.png'}")
    return 0


def main(argv: list[str] | None = None) -> None:
    from radar_train.cli.common import run_main

    run_main("radar-generate", lambda args: CLI(generate, args=args, exit_on_error=False), argv)


if __name__ == "__main__":
    main()
