"""radar-generate: images of vanilla | accelerated | accelerated + adapter for classes × seeds, as PNGs
and one labelled comparison grid."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Union

from jsonargparse import CLI

from radar_train.config import AccelArgs, ModelArgs, SamplingConfig, parse_int_list
from radar_train.inference.pipeline import Precision


def generate(model: ModelArgs = ModelArgs(), accel: AccelArgs = AccelArgs(method="fastvar"),
             sampling: SamplingConfig = SamplingConfig(), adapter: Optional[str] = None, merge_adapter: bool = True,
             classes: Union[str, list[int]] = "0-3", seeds: Union[str, list[int]] = "0", output: str = "outputs/generate",
             batch_size: int = 16, grid_scale: int = 0, device: str = "auto", precision: Precision = "auto") -> int:
    """Generate vanilla | accelerated | accelerated + adapter images and a comparison grid.

    Generate every (class, seed) pair with the vanilla and the accelerated model, decode the accelerated
    latent also through the adapted decoder, and write PNGs plus a comparison grid (rows = samples).

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
    """
    import torch

    from radar_train.images import save_grid, save_png
    from radar_train.inference import PipelineArgs, RadarPipeline

    cls_list, seed_list = parse_int_list(classes, "--classes"), parse_int_list(seeds, "--seeds")
    pairs = [(c, s) for c in cls_list for s in seed_list]
    out = Path(output)
    print(f"radar-generate: {len(pairs)} samples ({len(cls_list)} classes x {len(seed_list)} seeds), model "
          f"{model.preset}, accel {accel.method}, adapter {adapter or '-'} -> {out}")
    pipe = RadarPipeline.from_config(PipelineArgs(model, accel, sampling, adapter, merge_adapter, device, precision))
    bad = [c for c in cls_list if not 0 <= c < pipe.var.num_classes]
    if bad:
        raise ValueError(f"--classes {bad} outside [0, {pipe.var.num_classes - 1}] for model {model.preset}")
    columns: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i: i + batch_size]
        imgs = pipe.compare([c for c, _ in chunk], [s for _, s in chunk])
        for k, v in imgs.items():
            columns.setdefault(k, []).extend(v)
    folders = {"vanilla": "vanilla", "accelerated": "accelerated", "accelerated+adapter": "restored"}
    files = []
    for key, imgs in columns.items():
        for (c, s), img in zip(pairs, imgs):
            files.append(str(save_png(img, out / folders[key] / f"class{c:04d}_seed{s}.png")))
    titles = {"vanilla": "vanilla", "accelerated": accel.method, "accelerated+adapter": f"{accel.method}+PAA"}
    keys = list(columns)
    H = columns[keys[0]][0].shape[-1]
    scale = grid_scale or max(1, -(-96 // H))
    rows = [[columns[k][i] for k in keys] for i in range(len(pairs))]
    grid_path = save_grid(rows, out / "grid.png", col_titles=[titles[k] for k in keys],
                          row_titles=[f"c{c} s{s}" for c, s in pairs], scale=scale)
    (out / "generate.json").write_text(json.dumps({"classes": cls_list, "seeds": seed_list, "columns": keys,
                                                   "model": model.preset, "accel": pipe.accel.describe(),
                                                   "adapter": adapter, "grid": str(grid_path)}, indent=2))
    print(f"wrote {len(files)} PNGs under {out} and the comparison grid {grid_path}")
    return 0


def main(argv: list[str] | None = None) -> None:
    from radar_train.accel import ConfigError
    from radar_train.models.checkpoint import CheckpointError

    try:
        sys.exit(CLI(generate, args=argv))
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
