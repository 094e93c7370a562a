"""radar-bench: methods timed side by side (accel), speed against quality (tradeoff), and the stage benchmarks."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional, Union

from jsonargparse import CLI

from radar_train.bench.accel import BenchSetup
from radar_train.bench.tradeoff import TradeoffConfig
from radar_train.cli.common import stopped_status
from radar_train.train.bench import TrainBenchArgs
from radar_train.config import SamplingConfig


def _check_json(path: Optional[str], overwrite: bool, inputs: Optional[dict] = None) -> None:
    """Refuse a --json file that exists (unless --overwrite), is a folder, or is an input, before measuring."""
    from radar_train.outputs import check_output_file

    if path is not None:  # ("" is refused: a script's unset variable would lose the results)
        check_output_file(path, "--json", inputs, overwrite)


def _method_inputs(methods: list[str], var_cfg) -> dict:
    """The files the method specs name (mask_file=, rank_ratios=), by option (--methods[i].sca.mask_file); a spec
    is read against the model's scales (`var_cfg`: budget= needs them)."""
    from radar_train.accel.spec import parse_spec
    from radar_train.cli.common import accel_inputs

    inputs = {}
    for i, spec in enumerate(methods):
        inputs.update(accel_inputs(parse_spec("none" if spec == "vanilla" else spec, var_cfg.patch_nums),
                                   f"--methods[{i}]"))
    return inputs


def _check_methods(methods: list[str], var_cfg) -> None:
    """Every method spec built against the model's scales (`var_cfg`: its patch_nums and depth), its files read,
    before any work: ValueError naming the spec (`fastvar:prune=7:0.5` on a model without a 7×7 scale was refused
    only after the runs before it were timed)."""
    from radar_train.accel.spec import build_specs

    for i, spec in enumerate(methods):
        spec = "none" if spec == "vanilla" else spec
        build_specs([spec], var_cfg, None, f"--methods[{i}] {spec}")


def _check_sampling(sampling: SamplingConfig) -> None:
    problems = sampling.problems()
    if problems:
        raise ValueError(f"--{problems[0]}")


def _log(line: str) -> None:
    """A progress line (docs/cli.md, Progress): on stderr, as every command's; none with RADAR_PROGRESS=off."""
    from radar_train.progress import log_mode

    if log_mode() != "off":
        print(line, file=sys.stderr, flush=True)


def _measured(prog: str, measure: Callable[[], list[dict]]) -> Optional[list[dict]]:
    """The rows `measure()` makes; None when SIGTERM stopped it (it ended without a line, its temporary files
    left behind). From there on the table and the --json file are the command's end."""
    from radar_train.cli.common import run_until_stopped

    return run_until_stopped(prog, measure, ends_command=True)


def _write_json(rows: list[dict], path: Optional[str], device: str = "auto", overwrite: bool = True) -> None:
    """The rows as a result file of the benchmarks' shape (radar_train.bench.record.ResultFile, as accel
    writes). `device`: where they were measured ('auto': CUDA if any). Without `overwrite` (the command's check
    found no file there), a file that appeared there while the benchmark ran is not replaced."""
    from radar_train.bench.accel import resolve_device
    from radar_train.bench.record import ResultFile, environment
    from radar_train.outputs import OutputError

    if path:
        if not overwrite and (Path(path).exists() or Path(path).is_symlink()):
            raise OutputError(f"--json {path} appeared while this run ran (another run writing the same file?): not "
                              f"replaced, and this run's rows (above) are not written; pass --overwrite to replace "
                              f"it, or choose another file")
        ResultFile(path, environment(resolve_device(device, "auto")[0])).add_rows(rows)
        print(f"wrote {path}")


def accel(setup: BenchSetup = BenchSetup(), methods: list[str] = ["none", "fastvar", "stagevar"],
          sampling: SamplingConfig = SamplingConfig(), json: Optional[str] = None,
          official_var: Optional[str] = None, official_config: Optional[str] = None,
          engines: Optional[list[str]] = None, pairs: bool = True, overwrite: bool = False) -> int:
    """Images/s per acceleration method, speed-up vs vanilla, forked pair cost, and the official sampler.

    Images/s of the sampling loop (transformer + quantizer) and end to end (decode included) per method
    and engine, speed-up vs vanilla, a forked HQ/LQ pair vs the two runs done separately, the VQ-VAE decode,
    and with --official_var the official VAR sampler and decode on the same weights; all interleaved.

    Args:
        setup: model preset (random weights), batch size, device, dtype, warm-up and timed rounds.
        methods: method specs (radar_train.accel.spec): none, fastvar, stagevar, fastvar:aggressive,
            stagevar:paper, fastvar:budget=0.5, sca:window+default (random weights: no calibration),
            sca:default+mask_file=FILE; SCA-Mask rows add the FLOP model's ideal speed-up beside the measured.
        sampling: sampler settings (FID protocol by default; its engine stays auto here: the engines timed are
            --engines).
        json: also write the result to this JSON file ({device, torch, cuda, commit, date, command, rows}).
        official_var: folder of a FoundationVision/VAR checkout (models/ and dist.py, e.g. a copy of the pinned
            snapshot): times its autoregressive_infer_cfg and decode against ours on the same weights.
        official_config: JSON with the official constructor arguments (VQVAE_kwargs, VAR_kwargs) to build
            both sides from (an argument left out takes the official constructor's default: VQVAE ch 128, VAR
            attn_l2_norm false); default: the preset (tiny: the tiny_a fixture's configuration, the smallest the
            official classes can build).
        engines: our sampling engines to time (default: eager, and graphs and compiled on CUDA).
        pairs: also time a forked HQ/LQ pair per method (false: skip those rows, e.g. on large models).
        overwrite: replace an existing --json file.
    """
    from radar_train.bench.accel import check_engines, check_setup, format_table, run_accel_benchmark

    check_setup(setup)
    check_engines(engines)
    _check_sampling(sampling)
    if sampling.engine != "auto":  # the engines timed are --engines (each row says its engine)
        raise ValueError(f"--sampling.engine {sampling.engine}: radar-bench accel times the engines of --engines "
                         f"(e.g. --engines [{sampling.engine}])")
    if official_config is not None and official_var is None:
        raise ValueError(f"--official_config {official_config}: it builds the official sampler's model, which runs "
                         f"only with --official_var (the official code's folder)")
    if official_var is not None:  # not a checkout: that first (cached: the benchmark reuses it)
        from radar_train.bench.official import comparison_configs, load_official_code

        load_official_code(official_var)
        var_cfg = comparison_configs(setup.preset, official_config)[1]
    else:
        from radar_train.models import get_preset

        var_cfg = get_preset(setup.preset).var
    inputs = {"--official_config": official_config, "--official_var": official_var,
              **_method_inputs(methods, var_cfg)}
    _check_json(json, overwrite, inputs)
    _check_methods(methods, var_cfg)
    engines = list(dict.fromkeys(engines)) if engines else engines  # (each once: a repeat was an unsaid warm-up)
    rows = _measured("radar-bench accel", lambda: run_accel_benchmark(
        setup, methods, sampling, log=_log, official_var=official_var, official_config=official_config,
        engines=engines, pairs=pairs))
    if rows is None:
        return stopped_status()
    print(format_table(rows))
    if json:
        _write_json(rows, json, setup.device, overwrite)
    return 0


def pipeline(setup: BenchSetup = BenchSetup(preset="tiny", batch_size=8), methods: list[str] = ["none", "fastvar", "stagevar"],
             sampling: SamplingConfig = SamplingConfig(), json: Optional[str] = None, overwrite: bool = False) -> int:
    """Adapter cost at inference and end-to-end images/s per method.

    Adapter cost at inference (merged / unmerged decode vs the base decoder) and end-to-end images/s
    per method with and without a merged adapter.

    Args:
        setup: model preset (random weights), batch size, device, dtype, warm-up and repeats.
        methods: method specs: none, fastvar, stagevar, fastvar:aggressive, stagevar:paper, ...
        sampling: sampler settings.
        json: also write the result to this JSON file ({device, torch, cuda, commit, date, command, rows}).
        overwrite: replace an existing --json file.
    """
    from radar_train.bench.accel import check_setup
    from radar_train.bench.pipeline import format_table, run_pipeline_benchmark
    from radar_train.models import get_preset

    check_setup(setup)
    _check_sampling(sampling)
    var_cfg = get_preset(setup.preset).var
    _check_json(json, overwrite, _method_inputs(methods, var_cfg))
    _check_methods(methods, var_cfg)

    rows = _measured("radar-bench pipeline", lambda: run_pipeline_benchmark(setup, methods, sampling, log=_log))
    if rows is None:
        return stopped_status()
    print(format_table(rows))
    _write_json(rows, json, setup.device, overwrite)
    return 0


def cache(cache_config: str = "configs/cache/tiny.yaml", overrides: list[str] = [], num_pairs: int = 8192,
          workers: Union[str, list[int]] = [0, 2], repeats: int = 3, parts: list[str] = ["generation", "reader"],
          json: Optional[str] = None, overwrite: bool = False) -> int:
    """radar-cache: write overhead vs bare pair generation, reader throughput, bytes per pair.

    Wall time vs bare pair generation of the same samples, reader pairs/s with 0 and 2
    DataLoader workers (256px-shaped fp16 latents), bytes per pair.

    Args:
        cache_config: cache config whose samples are generated for the overhead ratio (generation part only:
            the reader part does not read it).
        overrides: extra radar-cache options for that run, e.g. ["--plan.num_samples", "512"].
        num_pairs: pairs of the synthetic 32x16x16 cache the reader is timed on (> 64: the first batch of 64
            is not timed).
        workers: DataLoader worker counts to time (0: the main process), e.g. "0,2" or [0, 2].
        repeats: repetitions of the generation part (the best is kept), >= 1.
        parts: generation and/or reader.
        json: also write the result to this JSON file ({device, torch, cuda, commit, date, command, rows}).
        overwrite: replace an existing --json file.
    """
    from radar_train.cache.bench import check_options, check_overrides, format_rows, run_cache_benchmark
    from radar_train.config import parse_int_list
    from radar_train.inputs import read_yaml

    if isinstance(workers, str):  # (the spelling of radar-generate's --classes and the caches' shards: "0,2")
        workers = parse_int_list(workers, "--workers")
    check_options(num_pairs, workers, repeats, parts)
    generation = "generation" in parts
    if generation:  # the reader part times a synthetic cache: it reads no config
        read_yaml(cache_config, "--cache_config file")  # missing, binary, not a mapping: one line naming it
        check_overrides(cache_config, overrides)
    _check_json(json, overwrite, {"--cache_config": cache_config} if generation else {})

    what = {"generation": f"generation = bare pair generation and radar-cache run of {cache_config}, best of "
                          f"{repeats} (a line per repeat)",
            "reader": f"reader = {num_pairs} synthetic pairs with {', '.join(map(str, workers))} workers (a line "
                      f"per row)"}
    _log(f"radar-bench cache: {'; '.join(what[p] for p in dict.fromkeys(parts))}")
    rows = _measured("radar-bench cache", lambda: run_cache_benchmark(cache_config, overrides, num_pairs, workers,
                                                                       repeats, None, parts, log=_log))
    if rows is None:
        return stopped_status()
    print(format_rows(rows))
    _write_json(rows, json, overwrite=overwrite)
    return 0


def train(args: TrainBenchArgs = TrainBenchArgs(), json: Optional[str] = None,
          overwrite: bool = False) -> int:  # noqa: F821
    """Training: Lightning vs bare PyTorch step throughput, data loading, peak memory.

    Lightning step throughput vs a bare PyTorch loop (target >= 0.95), data loading vs a step,
    peak memory of a training step vs VAR sampling of the same batch (target <= 0.5); a step in micro-batches
    with --args.micro_batch_size (Lightning's gradient accumulation), every checkpointing mode at several
    micro-batch sizes with --args.checkpointing_rows true --args.micro_batch_sizes '[16, 2]'.

    Args:
        args: preset (random weights unless a VQ-VAE checkpoint is given), batch size, steps, device, precision.
        json: also write the result to this JSON file ({device, torch, cuda, commit, date, command, rows}).
        overwrite: replace an existing --json file.
    """
    from radar_train.train.bench import check_args, format_table, micro_batch, run_train_benchmark

    check_args(args)
    _check_json(json, overwrite, {"--args.vae_checkpoint": args.vae_checkpoint, "--args.cache": args.cache})

    m = micro_batch(args)
    micro = f" in micro-batches of {m}" if m < args.batch_size else ""
    _log(f"radar-bench train: {args.preset}, batch {args.batch_size}{micro}, {args.warmup} + {args.steps} steps per "
         f"loop: bare PyTorch loop, Lightning loop, data loading{', peak memory' if args.memory else ''} "
         f"(an estimate after the bare loop, then each row as it finishes)")
    rows = _measured("radar-bench train", lambda: run_train_benchmark(args, log=_log))
    if rows is None:
        return stopped_status()
    print(format_table(rows))
    _write_json(rows, json, args.device, overwrite)
    return 0


def tradeoff(setup: TradeoffConfig = TradeoffConfig(), output: str = "outputs/tradeoff", overwrite: bool = False) -> int:
    """Speed against quality per acceleration setting, with and without PAA: JSON, markdown table, PNG chart.

    Speed (loop and end-to-end images/s, speed-up over vanilla, timed interleaved in the same run) and
    quality against vanilla (PSNR / SSIM / latent distance to the vanilla sample of the same class and seed;
    toy world: class accuracy and toy FID as well; with adapters: G_mse, ΔPSNR, FID gap closed) of vanilla,
    each setting and each adapter; the chart puts the speed-up on x and --setup.quality_metric on y and marks
    the Pareto front.

    Args:
        setup: settings, adapters, model, samples, timing and the chart's axes (--setup.settings, ...).
        output: folder for tradeoff.json, tradeoff.md and tradeoff.png.
        overwrite: replace those files if the folder holds them already.
    """
    from radar_train.bench.tradeoff import run_tradeoff
    from radar_train.cli.common import run_until_stopped, signals_ignored_to_the_end
    from radar_train.outputs import swaps_end_command

    # (SIGTERM ended it without a line; from its outputs' move into place on, a signal ended it as stopped)
    with swaps_end_command(signals_ignored_to_the_end):
        doc = run_until_stopped("radar-bench tradeoff", lambda: run_tradeoff(setup, output, overwrite=overwrite,
                                                                            log=_log))
    if doc is None:
        return stopped_status()
    print(doc["markdown"])
    print(f"wrote {output}/tradeoff.json, tradeoff.md, tradeoff.png")
    return 0


def main(argv: list[str] | None = None) -> None:
    from radar_train.cli.common import run_main

    commands = {"accel": accel, "pipeline": pipeline, "cache": cache, "train": train, "tradeoff": tradeoff}
    run_main("radar-bench", lambda args: CLI(commands, args=args, exit_on_error=False), argv, commands=list(commands))


if __name__ == "__main__":
    main()
