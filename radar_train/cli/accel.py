"""radar-accel: inspect acceleration configs for a model, and calibrate StageVAR's rank ratios."""
from __future__ import annotations

import json
from typing import Optional, Union

from jsonargparse import CLI

from radar_train.cli.common import stopped_status
from radar_train.config import AccelArgs, ModelArgs, SamplingConfig


def _device(name: str):
    from radar_train.cli.common import check_device

    return check_device(name)


def show(model: ModelArgs = ModelArgs(), accel: AccelArgs = AccelArgs()) -> int:
    """Print the acceleration method resolved for the model's scales, its FLOP model, or every problem.

    Presets are expanded. The FLOP model: the share of vanilla's multiply-adds in attention, and the speed-up over
    vanilla at equal kernel efficiency, per-scale overheads free (what `radar-bench accel` reports as `ideal`).

    Args:
        model: the model (only its preset's shapes are used; no weights are loaded).
        accel: the acceleration method.
    """
    from radar_train.accel import build_accel
    from radar_train.bench.accel import method_accounting
    from radar_train.models import get_preset

    preset = get_preset(model.preset)
    method = build_accel(accel, preset.var.patch_nums, preset.var.depth)
    flops = method_accounting(method, preset.var)
    info = {"model": model.preset, "patch_nums": list(preset.var.patch_nums), "depth": preset.var.depth,
            "first_modified_scale": method.first_modified_scale(preset.var.patch_nums), **method.describe(),
            **method.derived(preset.var.patch_nums),
            **{k: round(flops[k], 4) for k in ("attention_share", "ideal_speedup") if k in flops}}
    for key, value in info.items():
        print(f"{key}: {json.dumps(value)}")
    return 0


_DEFAULT_OUTPUT = {"sca": "sca_mask.safetensors", "stagevar": "ranks.yaml"}  # (calibrate's --output)


def calibrate(model: ModelArgs = ModelArgs(), sampling: SamplingConfig = SamplingConfig(),
              accel: AccelArgs = AccelArgs(method="stagevar"), scales: Optional[Union[str, list[int]]] = None,
              alpha: float = 0.96, num_samples: int = 1000, batch_size: int = 16, seed: int = 0,
              device: str = "auto", output: Optional[str] = None, overwrite: bool = False) -> int:
    """Measure StageVAR rank ratios r(α)/M per refinement scale and block, or SCA-Mask tile scores.

    Measures them on a model and writes a YAML that `--accel.stagevar.rank_ratios FILE` loads, or
    (with `--accel.method sca`) a mask file that `--accel.sca.mask_file FILE` loads.

    Args:
        model: the model to measure.
        sampling: sampler settings of the vanilla runs (engine eager or auto: a calibration reads every attention
            call through hooks, which a captured run cannot).
        accel: the stagevar config whose refinement scales (α > 0) are measured (ignored if `scales` is given), in
            the rows of its `single_branch` (cond / uncond: that CFG half; off: both).
        scales: scale sides to measure instead of the stagevar config's, e.g. "13,16" or [13, 16].
        alpha: energy threshold (StageVAR uses 0.96).
        num_samples: vanilla samples (labels cycle through the classes; seeds seed, seed+1, ...).
        batch_size: samples per sampling call.
        seed: first seed.
        device: cuda, cpu, or auto.
        output: file to write (default ranks.yaml; sca_mask.safetensors for sca); checked before measuring.
        overwrite: replace an existing output file (without it, an existing one is refused).
    """
    from radar_train.cli.common import check_positive
    from radar_train.seeding import seed_range_problems

    from radar_train.config import parse_int_list

    check_positive(num_samples=num_samples, batch_size=batch_size)
    if isinstance(scales, str):  # (the spelling of radar-generate's --classes and the caches' shards: "13,16")
        scales = parse_int_list(scales, "--scales")
    problems = seed_range_problems("--seed", seed, num_samples) + [f"--{p}" for p in sampling.problems()]
    if scales is not None and not scales:
        problems.append("--scales is empty: name the scales to calibrate, or leave it out for the method's")
    if sampling.engine in ("graphs", "compiled"):
        problems.append(f"--sampling.engine {sampling.engine}: a calibration reads every attention call through "
                        f"hooks, which a captured run cannot; use engine eager or auto")
    # (the file a method reads at use: a calibration reads none and writes --output; it was taken and ignored)
    given = {"sca": ("--accel.sca.mask_file", accel.sca.mask_file),
             "stagevar": ("--accel.stagevar.rank_ratios", accel.stagevar.rank_ratios)}.get(accel.method)
    if given is not None and given[1] is not None:
        problems.append(f"{given[0]} {given[1]}: a calibration reads no such file, it writes one to --output "
                        f"({output if output is not None else _DEFAULT_OUTPUT[accel.method]}): drop it (or give "
                        f"that file as --output)")
    if not 0 < alpha <= 1:
        problems.append(f"--alpha must be in (0, 1], got {alpha}")
    elif accel.method == "sca" and alpha != 0.96:  # (it was taken and ignored: the mask has no energy threshold)
        problems.append(f"--alpha {alpha}: StageVAR's rank threshold; an SCA-Mask calibration (--accel.method sca) "
                        f"does not use it")
    if problems:
        raise ValueError("; ".join(problems))
    if accel.method == "sca":
        return _calibrate_sca(model, sampling, accel, scales, num_samples, batch_size, seed, device,
                              _DEFAULT_OUTPUT["sca"] if output is None else output, overwrite)
    output = _DEFAULT_OUTPUT["stagevar"] if output is None else output  # ("" is refused by the output check)
    import torch

    from radar_train.accel.calibrate import calibrate_ranks, write_rank_yaml
    from radar_train.cli.common import accel_inputs, model_inputs
    from radar_train.models import get_preset, load_models
    from radar_train.outputs import check_output_file
    from radar_train.sampling import NextScaleSampler

    patch_nums = get_preset(model.preset).var.patch_nums
    if scales is not None and [s for s in scales if s not in patch_nums]:
        raise ValueError(f"--scales {[s for s in scales if s not in patch_nums]} are not scales of {model.preset} "
                         f"{tuple(patch_nums)}")
    if scales is not None and patch_nums[0] in scales:
        raise ValueError(f"--scales {patch_nums[0]}: the first scale is never approximated by StageVAR (nothing to "
                         f"calibrate there)")
    check_output_file(output, "--output", {**model_inputs(model), **accel_inputs(accel)}, overwrite)
    dev = _device(device)
    vqvae, var, _, var_id = load_models(model.preset, model.vae_checkpoint, model.var_checkpoint, dev, model.init_seed)
    branch = accel.stagevar.single_branch
    if scales is None:
        method = _stagevar_to_calibrate(accel, var.patch_nums, var.depth)
        scales = [pn for pn, a in getattr(method, "scales", ()) if a > 0]
        branch = getattr(method, "single_branch", branch)
        if not scales:
            raise ValueError("accel: no stagevar refinement scale with α > 0 to calibrate (give --scales)")
    print(f"calibrating rank ratios: model {model.preset}, scales {scales}, α={alpha}, single_branch {branch} rows, "
          f"{num_samples} samples, device {dev} -> {output}")
    autocast = torch.bfloat16 if dev.type == "cuda" else None
    if autocast is not None:
        var.cast_body_(autocast)  # the transformer as radar-cache and the pipeline run it
    sampler = NextScaleSampler(var, vqvae.quantize, sampling, autocast_dtype=autocast)
    measured = _measured(lambda bar: calibrate_ranks(sampler, scales, alpha, num_samples, batch_size, var.num_classes,
                                                     seed, bar.update, single_branch=branch), num_samples)
    if measured is None:
        return stopped_status()
    means, stds = measured
    info = {"preset": model.preset, "var": {"kind": var_id.kind, "value": var_id.value}, "depth": var.depth,
            "patch_nums": list(var.patch_nums)}
    path = write_rank_yaml(output, means, stds, alpha=alpha, num_samples=num_samples, model=info,
                           single_branch=branch)
    for pn in means:
        print(f"scale {pn}: mean ratio {sum(means[pn]) / len(means[pn]):.3f} (per block {means[pn]})")
    print(f"wrote {path}")
    return 0


def _measured(measure, num_samples: int):
    """`measure(bar)` with its progress bar; None when SIGTERM stopped it (run_until_stopped: it ended without a
    line). From here on SIGTERM and Ctrl-C are ignored: the file written is the command's end."""
    from radar_train.cli.common import run_until_stopped
    from radar_train.progress import Progress

    def with_bar():
        with Progress(num_samples, "radar-accel calibrate", "samples") as bar:
            return measure(bar)

    return run_until_stopped("radar-accel calibrate", with_bar, ends_command=True)


def _stagevar_to_calibrate(accel: AccelArgs, patch_nums, depth: int):
    """The configured method whose refinement scales (α > 0) a calibration measures, checked as build_accel checks
    it but for a scale's α against the rank-ratio table: the refusal of an α without a table of that α sends the
    user here, to make one (`radar-accel calibrate --alpha A`), and refused that calibration in turn."""
    from radar_train.accel import ACCEL_METHODS, build_accel
    from radar_train.accel.base import ConfigError

    if accel.method != "stagevar":
        return build_accel(accel, patch_nums, depth)
    method = ACCEL_METHODS["stagevar"](accel, patch_nums)
    problems = method.problems(tuple(patch_nums), depth, rank_table=False)
    if problems:
        raise ConfigError(method.name, problems)
    return method


def _calibrate_sca(model: ModelArgs, sampling: SamplingConfig, accel: AccelArgs, scales: Optional[list[int]],
                   num_samples: int, batch_size: int, seed: int, device: str, output: str,
                   overwrite: bool = False) -> int:
    """SCA-Mask calibration: tile scores of vanilla samples -> mask file (checked before any work)."""
    from dataclasses import asdict

    import torch

    from radar_train.accel.calibrate import calibrate_sca, write_sca_mask
    from radar_train.accel.sca import calibration_settings
    from radar_train.cli.common import accel_inputs, model_inputs
    from radar_train.models import get_preset, load_models
    from radar_train.outputs import check_output_file
    from radar_train.sampling import NextScaleSampler

    preset = get_preset(model.preset)
    sides, tile, tau = calibration_settings(accel.sca, preset.var.patch_nums, preset.var.depth, scales,
                                            num_samples, batch_size)
    check_output_file(output, "--output", {**model_inputs(model), **accel_inputs(accel)}, overwrite=overwrite)
    dev = _device(device)
    vqvae, var, _, var_id = load_models(model.preset, model.vae_checkpoint, model.var_checkpoint, dev, model.init_seed)
    print(f"calibrating SCA-Mask tile scores: model {model.preset}, scales {list(sides)}, tile {tile}, τ={tau}/n, "
          f"{num_samples} samples (seeds {seed}..{seed + num_samples - 1}), device {dev} -> {output}")
    autocast = torch.bfloat16 if dev.type == "cuda" else None
    if autocast is not None:
        var.cast_body_(autocast)  # the transformer as radar-cache and the pipeline run it
    sampler = NextScaleSampler(var, vqvae.quantize, sampling, autocast_dtype=autocast)
    measured = _measured(lambda bar: calibrate_sca(sampler, sides, tile, tau, num_samples, batch_size,
                                                   var.num_classes, seed, bar.update), num_samples)
    if measured is None:
        return stopped_status()
    scores, rows = measured
    info = {"preset": model.preset, "var": {"kind": var_id.kind, "value": var_id.value}, "depth": var.depth,
            "num_heads": var.config.num_heads, "embed_dim": var.config.embed_dim}
    path, method = write_sca_mask(output, accel.sca, var.patch_nums, scores, tile=tile, tau=tau, rows=rows,
                                  num_samples=num_samples, seed=seed, batch_size=batch_size, model=info,
                                  sampling=asdict(sampling))
    for pn, row in method.masks().summary().items():
        print(f"scale {pn}: {row} (compute {method.compute_budget}, memory {method.memory_budget})")
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> None:
    from radar_train.cli.common import run_main

    commands = [show, calibrate]
    run_main("radar-accel", lambda args: CLI(commands, args=args, exit_on_error=False), argv,
             commands=[c.__name__ for c in commands])


if __name__ == "__main__":
    main()
