"""radar-cache: paired HQ/LQ latents in a sharded Zarr cache.

    radar-cache run --config configs/cache/tiny.yaml [--plan.images_per_class 4] [--output DIR]
                    [--num-workers N --worker-index I] [--device cpu] [--batch-size 16] [--print_config]
                    [--check]
    radar-cache status DIR
    radar-cache verify DIR            (exit status 1 if any problem)
    radar-cache export-wds DIR --output DIR2

`run` creates the cache folder or resumes its own (manifest.json of the same config): any other non-empty
folder, a file, or a folder inside an input is refused before anything is written. `export-wds` writes
into a new or empty folder, or resumes an export of the same cache; never into the cache itself.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from jsonargparse import ActionConfigFile, ArgumentParser

from radar_train.cache.config import CacheArgs

# Dashed spellings accepted for the run-level options (jsonargparse names them after the fields).
ALIASES = {"--batch-size": "--batch_size", "--num-workers": "--num_workers", "--worker-index": "--worker_index",
           "--print-config": "--print_config", "--stat-shards": "--stat_shards"}


def _normalise(argv: list[str]) -> list[str]:
    out = []
    for a in argv:
        head, eq, tail = a.partition("=")
        out.append(ALIASES.get(head, head) + eq + tail)
    return out


def build_run_parser() -> ArgumentParser:
    run = ArgumentParser(description="Create or resume a cache (this worker's shards). --output must be new, "
                                     "empty, or this cache (same config: resumed).", exit_on_error=False)
    run.add_argument("--config", action=ActionConfigFile, help="YAML config, e.g. configs/cache/tiny.yaml")
    run.add_class_arguments(CacheArgs, None)
    run.add_argument("--check", action="store_true",
                     help="check the configuration and --output without loading a model, write nothing, and exit "
                          "(status 0: fine, 2: the problems, one line); for a login node before jobs are queued")
    return run


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="radar-cache", description="Paired HQ/LQ latents in a sharded Zarr cache.",
                            exit_on_error=False)
    sub = parser.add_subcommands(dest="command")
    sub.add_subcommand("run", build_run_parser(), help="create or resume a cache")
    status = ArgumentParser(description="Shards done / pending / temporary, samples, bytes, latent statistics.",
                            exit_on_error=False)
    status.add_argument("cache_dir", help="cache folder")
    status.add_argument("--stat_shards", type=int, default=8,
                        help="complete shards to compute latent statistics over (0: none, -1: all)")
    sub.add_subcommand("status", status, help="progress and statistics of a cache")
    verify = ArgumentParser(description="Re-read every complete shard; check counts, checksums, records and "
                                        "that every planned shard exists. Exit status 1 if any problem.",
                            exit_on_error=False)
    verify.add_argument("cache_dir", help="cache folder")
    sub.add_subcommand("verify", verify, help="check a cache (exit status 1 if any problem)")
    export = ArgumentParser(description="Export the complete shards as WebDataset tars (+ index.json) into a new or "
                                        "empty folder, or resume an export of the same cache.", exit_on_error=False)
    export.add_argument("cache_dir", help="cache folder")
    export.add_argument("--output", required=True, help="folder for the tars (not inside the cache)")
    sub.add_subcommand("export-wds", export, help="export to WebDataset tars")
    return parser


def check_run_output(args: CacheArgs) -> None:
    """The cache folder must be new, empty, or a cache (its manifest is compared later, before any shard is
    written); never a WebDataset export, a file, or a folder inside (or holding) an input file."""
    from radar_train.cache.schema import MANIFEST_NAME
    from radar_train.cache.wds import check_not_inside_a_cache, is_export
    from radar_train.cli.common import accel_inputs, model_inputs
    from radar_train.outputs import OutputError, check_resume_dir

    if args.output is None:
        return  # reported with the other config problems
    check_resume_dir(args.output, MANIFEST_NAME, "a radar-cache cache", "--output",
                     {**model_inputs(args.model), **accel_inputs(args.accel)})
    if is_export(args.output):
        raise OutputError(f"--output {args.output} is a WebDataset export, not a cache: choose a new folder")
    check_not_inside_a_cache(args.output, "--output")


def _run(cfg) -> int:
    from radar_train.cache.generate import run_cache

    args = run_args(cfg.run)
    if cfg.run.check:
        return _check(args)
    check_run_output(args)
    from radar_train.cli.common import Stopped, end_stopped_run, sigterm_stops

    try:
        with sigterm_stops():  # (a SLURM time limit, preemption, scancel: the shard handed to the writer is kept)
            run_cache(args)
    except (Stopped, KeyboardInterrupt) as e:
        from radar_train.cache.schema import MANIFEST_NAME

        said = (f"the complete shards are kept in {args.output}: run the same command to go on from there"
                if (Path(args.output) / MANIFEST_NAME).is_file() else "nothing was written")  # (the models loading)
        return end_stopped_run("radar-cache", e, said)
    return 0


def _check(args: CacheArgs) -> int:
    """`run --check`: every problem found without loading a model (the job's device need not be on this
    machine), and the --output folder's; nothing is written."""
    from radar_train.cache.generate import check_existing_cache, validate
    from radar_train.cache.schema import MANIFEST_NAME
    from radar_train.outputs import OutputError

    problems = validate(args, here=False)
    try:
        check_run_output(args)
    except OutputError as e:
        problems.append(str(e))
    if not problems:  # (the weights' identities, the acceleration files and an existing manifest)
        try:
            problems = check_existing_cache(args)
        except ValueError as e:
            problems = [str(e)]
    if problems:
        raise ValueError("invalid radar-cache configuration: " + "; ".join(problems))
    existing = (Path(args.output) / MANIFEST_NAME).is_file()
    print(f"radar-cache run --check: the configuration and --output {args.output} are fine"
          + (" (its manifest matches: the run resumes it)" if existing else "") + "; nothing was written"
          + (" (the precision of device auto is compared when the run starts)"
             if existing and args.precision == "auto" and args.device == "auto" else ""))
    return 0


def run_args(ns) -> CacheArgs:
    """The CacheArgs of a parsed `run` namespace."""
    init = build_run_parser().instantiate(ns)
    return CacheArgs(**{k: init[k] for k in CacheArgs.__dataclass_fields__})


def _check_cache_dir(path: str) -> None:
    from radar_train.cache.wds import is_export
    from radar_train.inputs import InputError, check_dir

    check_dir(path, "cache folder")
    if is_export(path):
        raise InputError(f"{path}: is a WebDataset export, not a radar-cache cache")


def _status(cfg) -> int:
    from radar_train.cache.status import cache_status, format_status
    _check_cache_dir(cfg.status.cache_dir)
    if cfg.status.stat_shards < -1:
        raise ValueError(f"--stat_shards must be a count of shards, or -1 for all, got {cfg.status.stat_shards}")

    print(format_status(cache_status(cfg.status.cache_dir, cfg.status.stat_shards)))
    return 0


def _verify(cfg) -> int:
    from radar_train.cache.status import verify_cache, verify_summary
    _check_cache_dir(cfg.verify.cache_dir)

    problems, counts = verify_cache(cfg.verify.cache_dir, progress=True)
    for p in problems:
        print(f"problem: {p}")
    for p in counts["leftovers"]:
        print(f"note: {p}")
    print(verify_summary(problems, counts, cfg.verify.cache_dir))
    return 1 if problems else 0


def _export(cfg) -> int:
    from radar_train.cache.wds import export_wds
    from radar_train.cli.common import Stopped, end_stopped_run, sigterm_stops

    c = cfg["export-wds"]
    try:
        with sigterm_stops():  # (it died of the signal, no line, where a tar's temporary file could stay behind)
            index = export_wds(c.cache_dir, c.output)
    except (Stopped, KeyboardInterrupt) as e:
        tars = len(list(Path(c.output).glob("pairs-*.tar"))) if Path(c.output).is_dir() else 0
        said = (f"the {tars} tar(s) written whole are kept in {c.output}: run the same command to go on from there"
                if tars else "no tar was written")
        return end_stopped_run("radar-cache export-wds", e, said)
    print(f"export-wds: {len(index['shardlist'])} tars, {index['num_samples']} samples -> {c.output}"
          + ("" if index["complete"] else " (the cache is incomplete: only its complete shards were exported)"))
    return 0


COMMANDS = {"run": _run, "status": _status, "verify": _verify, "export-wds": _export}


def _main(argv: list[str]) -> int:
    from radar_train.cli.common import check_config_files

    if argv[:1] == ["run"]:  # (the other subcommands take no --config: theirs is an unrecognized argument)
        check_config_files(argv)
    cfg = build_parser().parse_args(_normalise(argv))
    return COMMANDS[cfg.command](cfg)


def main(argv: Optional[list[str]] = None) -> None:
    from radar_train.cli.common import WarningPrefix, run_main

    ours = logging.StreamHandler()  # (warnings as every command's own: `warning: <message>`)
    ours.setFormatter(WarningPrefix("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[ours])
    run_main("radar-cache", _main, argv, commands=list(COMMANDS), check_configs=False)


if __name__ == "__main__":
    main()
