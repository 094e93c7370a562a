"""radar-demo: the whole product on a small model, end to end on a CPU, with the real commands:

    radar-cache run      paired vanilla / accelerated latents into a sharded Zarr cache
    radar-train fit      LoRA on the frozen decoder from that cache (TensorBoard logs, checkpoints)
    radar-train export   the adapter folder from the last checkpoint
    radar-generate       vanilla | accelerated | accelerated + adapter comparison grid
    radar-eval           restoration metrics on the held-out shards

Every step runs in the output folder, so the configs' relative paths (cache/<name>, checkpoints/<name>)
land there. Each command is printed before it runs, then its own output (progress, the eval table) once.
Rerunning resumes: the cache resumes, training resumes from its last.ckpt (or is skipped once final/
exists), and the demo's own adapter/, generate/ and eval/ are redone. The output folder must be new, empty, or a demo folder (holding nothing but what the demo
writes): any other folder, or a file, is refused before anything runs, and so is a training or generate config
that its command would not parse (an unknown key, a value of the wrong type).
"""
from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Union

from jsonargparse import CLI

CHECKOUT_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
"""The configs/ of the checkout the package is in (an editable install, `pip install -e .`)."""


def default_configs() -> Path:
    """The checkout's configs/ beside the package, else ./configs: a checkout the demo runs in, with the package
    installed from it into site-packages (`pip install .`), where nothing is beside the package (a configs/ some
    other package put into site-packages is not taken for the checkout's)."""
    from radar_train import is_source_checkout

    if CHECKOUT_CONFIGS.is_dir() and is_source_checkout(CHECKOUT_CONFIGS.parent):
        return CHECKOUT_CONFIGS
    here = Path("configs").resolve()
    return here if here.is_dir() else CHECKOUT_CONFIGS


def _run(cmd: list[str], cwd: Path, done: list[str]) -> None:
    """Run one step (the demo's SIGTERM handler, `sigterm_stops`, is in place: demo). SIGTERM (`kill`, a
    scheduler's stop) is handed to the step, which saves what it has and stops (a step that had it already, from a
    signal to the process group, ignores the second one), and the demo waits for it before it stops
    (Stopped(step)): it no longer ended at once, leaving the step to save, or to run on, alone. A step that
    finished all the same is done (Stopped(step, True)). `done`: the steps finished, this one appended."""
    import signal

    from radar_train.cli.common import Stopped

    print(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    step = _step_name(cmd)
    t0 = time.time()
    proc = None
    try:
        proc = subprocess.Popen(cmd, cwd=cwd)
        code = proc.wait()
    except Stopped:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # (while the step saves: SIGKILL ends both anyway)
        if proc is None:  # (stopped as it started the step: none is running)
            raise Stopped() from None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        finished = proc.wait() == 0
        if finished:
            done.append(step)
        raise Stopped(step, finished) from None
    except KeyboardInterrupt:  # the step got the terminal's Ctrl-C too: let it save and stop (radar-train fit
        if proc is not None:  # saves the step it is in), however long that takes; a second Ctrl-C ends it at once
            print(f"radar-demo: waiting for {step} to stop (a terminal's Ctrl-C reached it too; after one to the demo "
                  f"alone, `kill -INT {proc.pid}` stops it; a second Ctrl-C ends it at once)", file=sys.stderr,
                  flush=True)
            try:
                proc.wait()
            except KeyboardInterrupt:
                proc.kill()
                proc.wait()
        raise KeyboardInterrupt(f"interrupted during {step}; the same command goes on from there") from None
    if code != 0:
        raise RuntimeError(f"step failed (exit {code}): {step} — see the output above")
    done.append(step)
    print(f"  ({step}: {time.time() - t0:.0f} s)", flush=True)


def _step_name(cmd: list[str]) -> str:
    """`radar-train export` for [python, -m, radar_train.cli.train, export, ...]."""
    name = "radar-" + cmd[2].rsplit(".", 1)[-1]
    return f"{name} {cmd[3]}" if len(cmd) > 3 and not cmd[3].startswith("-") else name


def check_demo_folder(out: Path, entries: set[str]) -> None:
    """OutputError unless `out` is absent, empty, or holds nothing but the demo's `entries` (a rerun) and the
    temporaries of its steps' writes to them (a step killed mid-write, e.g. the export's `.adapter.tmp-*`:
    the step's next run clears it)."""
    from radar_train.outputs import OutputError, is_temp_of

    if out.exists() and not out.is_dir():
        raise OutputError(f"--output {out} is an existing file: give a folder")

    def ours(name: str) -> bool:
        return name in entries or any(is_temp_of(name, e, kind) for e in entries for kind in ("tmp", "old"))

    foreign = sorted(e.name for e in out.iterdir() if not ours(e.name)) if out.is_dir() else []
    if foreign:
        raise OutputError(f"--output {out} is a folder that is not a radar-demo folder (it holds "
                          f"{', '.join(foreign[:3])}): choose a new or empty folder (a demo folder is resumed)")


def check_step_configs(checks: list[tuple[list[str], Path]]) -> list[dict]:
    """InputError naming the config file and the option at fault unless each step's command parses its
    config (`--print_config`: jsonargparse checks every key and type, runs nothing and writes nothing), so
    that a typo in the training or generate config stops the demo before the cache step writes anything.
    Returns each command's config as it printed it: what it runs with, its `config:` and group files read."""
    import yaml

    from radar_train.inputs import InputError

    procs: list[tuple[subprocess.Popen, Path]] = []
    printed = []
    try:  # started together (each is seconds of a fresh interpreter's imports), reported in order
        for cmd, config in checks:
            procs.append((subprocess.Popen(cmd + ["--print_config"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True), config))
        for p, config in procs:
            out, err = p.communicate()
            if p.returncode != 0:
                lines = [line for line in err.strip().splitlines() if line.strip()]
                why = lines[-1].removeprefix("error: ") if lines else f"exit {p.returncode}"
                raise InputError(why if why.startswith(f"{config}:") else f"{config}: {why}")  # (once, not twice)
            printed.append(yaml.safe_load(out) or {})
        return printed
    finally:
        for p, _ in procs:  # (a check still running after an earlier one failed)
            if p.poll() is None:
                p.kill()
                p.communicate()


def check_grid(classes: Union[str, list[int]], seeds: Union[str, list[int]],
               generate_cfg: Path, generate: dict) -> tuple[list[int], list[int]]:
    """The comparison grid's classes and seeds, checked as radar-generate checks them (readable, no repeats,
    seeds within 64 bits, classes within the class count of the generate config's model: `generate`, the config
    radar-generate printed for `generate_cfg`), before the demo runs the steps ahead of it."""
    from radar_train.cli.generate import grid_classes_seeds
    from radar_train.config import ModelArgs, preset_problems

    model = generate.get("model") or {}
    preset = model.get("preset", ModelArgs.preset) if isinstance(model, dict) else ModelArgs.preset
    problems = preset_problems(f"{generate_cfg}: model.preset", preset)  # (the file and its option named)
    if problems:
        raise ValueError(problems[0])
    return grid_classes_seeds(classes, seeds, preset, f" ({generate_cfg})")


def demo(output: str = "outputs/demo", model: str = "toy", configs: Optional[str] = None,
         classes: Union[str, list[int]] = "0-9", seeds: Union[str, list[int]] = "1000000-1000001",
         train_steps: Optional[int] = None) -> int:
    """Run cache -> train -> export -> generate -> eval on a small model.

    Args:
        output: folder for everything the demo writes.
        model: configs/cache/<model>.yaml, configs/train/<model>.yaml and configs/generate/<model>.yaml are used
            (toy: the shipped toy-world model; tiny: random weights).
        configs: the configs folder (default: the configs/ of the checkout the package is in, else ./configs).
        classes: classes of the comparison grid, e.g. "0-3,7" (within the model's class count).
        seeds: seeds of the comparison grid, e.g. "1000000-1000001" (held out: the cache's samples, some of
            them the adapter's training pairs, have seeds from 0).
        train_steps: override the training config's max_steps.

    The output folder must be new, empty, or an earlier demo's (which is resumed). Every option is checked
    before anything is written.
    """
    from radar_train.inputs import InputError
    from radar_train.cli.common import Stopped, say, sigterm_stops, stop_name, stopped_status
    from radar_train.outputs import given_output, make_folders, remove_made_folders

    cfg_dir = Path(configs).resolve() if configs else default_configs()  # (the steps run in the output folder)
    if not configs and not cfg_dir.is_dir():  # an install from a wheel: the configs come with a checkout only
        raise FileNotFoundError("no configs/ folder: the demo reads configs/{cache,train,generate}/<model>.yaml of a "
                                "radar_train checkout (git clone; pip install -e .), found neither beside the package "
                                "nor in this folder; run it in a checkout, or pass --configs CHECKOUT/configs")
    cache_cfg, train_cfg = cfg_dir / "cache" / f"{model}.yaml", cfg_dir / "train" / f"{model}.yaml"
    generate_cfg = cfg_dir / "generate" / f"{model}.yaml"
    for f in (cache_cfg, train_cfg, generate_cfg):
        if not f.is_file():
            models = sorted(p.stem for p in (cfg_dir / "cache").glob("*.yaml")
                            if (cfg_dir / "train" / p.name).is_file() and (cfg_dir / "generate" / p.name).is_file())
            raise FileNotFoundError(f"{f} not found (--model {model}: the demo needs its cache, train and generate "
                                    f"configs; models with all three here: {', '.join(models) or 'none'}; "
                                    f"--configs: the configs/ folder of a radar_train checkout"
                                    f"{'' if configs else ', looked for beside the package and in this folder'})")
    if train_steps is not None and train_steps < 1:
        raise ValueError(f"--train_steps must be >= 1, got {train_steps}")
    out = given_output(output, "--output").resolve()
    py = [sys.executable, "-m"]
    made: list[Path] = []
    done: list[str] = []  # the steps finished
    try:  # (one SIGTERM handler from the checks to the end: between steps, or in the checks, SIGTERM ended the demo
        with sigterm_stops():  # without a line, a step it had just started, or the checks, running on alone)
            # (the configs as their commands read them: a `config:` key or a group file may hold these settings)
            train, generate = check_step_configs([
                (_fit_command(py, train_cfg, train_steps), train_cfg),
                (py + ["radar_train.cli.generate", "--config", str(generate_cfg)], generate_cfg)])
            cls_list, seed_list = check_grid(classes, seeds, generate_cfg, generate)
            try:
                run_dir = Path(train["trainer"]["default_root_dir"])
                cache_dir = Path(train["data"]["caches"][0]["path"])
            except (KeyError, IndexError, TypeError):
                raise InputError(f"{train_cfg}: training config lacks trainer.default_root_dir or "
                                 f"data.caches[0].path") from None
            check_demo_folder(out, {run_dir.parts[0], cache_dir.parts[0], "adapter", "generate", "eval"})
            made = make_folders(out)
            _steps(out, model, cache_cfg, train_cfg, generate_cfg, run_dir, cache_dir, cls_list, seed_list,
                   train_steps, done)
    except BaseException as e:
        remove_made_folders(made)  # a first step that failed wrote nothing: the folders made for it go again
        if isinstance(e, Stopped):
            if not e.args and done:  # (between two steps)
                e = Stopped(done[-1], True)
            where = ("before its first step; nothing was written" if not e.args else
                     f"after {e.args[0]}; the same command goes on from there" if len(e.args) > 1 and e.args[1] else
                     f"during {e.args[0]}; the same command goes on from there")
            say(f"radar-demo: stopped by {stop_name()} {where}")
            return stopped_status()
        raise
    return 0


def _fit_command(py: list[str], train_cfg: Path, train_steps: Optional[int]) -> list[str]:
    fit = py + ["radar_train.cli.train", "fit", "--config", str(train_cfg)]
    return fit + ["--trainer.max_steps", str(train_steps)] if train_steps else fit


def _steps(out: Path, model: str, cache_cfg: Path, train_cfg: Path, generate_cfg: Path, run_dir: Path,
           cache_dir: Path, cls_list: list[int], seed_list: list[int], train_steps: Optional[int],
           done: list[str]) -> None:
    """The demo's five steps, each a command run in `out` (`done`: those finished)."""
    from radar_train.cli.common import Stopped, signals_ignored_to_the_end

    py = [sys.executable, "-m"]
    print(f"radar-demo: model {model}; everything goes to {out}")
    _run(py + ["radar_train.cli.cache", "run", "--config", str(cache_cfg)], out, done)
    fit = _fit_command(py, train_cfg, train_steps)
    checkpoints = out / run_dir / "checkpoints"
    if (out / run_dir / "final").is_dir() and (checkpoints / "last.ckpt").is_file():
        print(f"\n(skipping training: {out / run_dir / 'final'} exists)")
    elif checkpoints.is_dir() and any(checkpoints.glob("*.ckpt")):
        # an interrupted run resumes (`last`: its newest checkpoint, a step file where last.ckpt's save failed, which
        # the resumed fit puts at last.ckpt, the file the export reads)
        _run(fit + ["--ckpt_path", "last"], out, done)
    else:
        _run(fit, out, done)
    # adapter/, generate/ and eval/ are the demo's own: a rerun replaces them
    _run(py + ["radar_train.cli.train", "export", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"),
               "--output", "adapter", "--overwrite"], out, done)
    _run(py + ["radar_train.cli.generate", "--config", str(generate_cfg), "--adapter", "adapter", "--classes",
               ",".join(map(str, cls_list)), "--seeds", ",".join(map(str, seed_list)), "--output", "generate",
               "--overwrite"], out, done)
    try:
        _run(py + ["radar_train.cli.eval", "--cache", str(cache_dir), "--adapter", "adapter", "--output", "eval",
                   "--overwrite"], out, done)
    except Stopped as e:  # (the last step finished as the signal came: the demo is done; it said it was stopped)
        if e.args[1:2] != (True,):
            raise
    signals_ignored_to_the_end()  # (every step done: the lines below end it)
    print("\nradar-demo done:")
    print(f"  comparison grid:  {out / 'generate' / 'grid.png'}")
    tb = out / run_dir / "tb"
    print(f"  TensorBoard logs: {tb}   (tensorboard --logdir {shlex.quote(str(tb))})")
    print(f"  eval table:       {out / 'eval' / 'eval.md'}")
    print(f"  adapter:          {out / 'adapter'}")


def main(argv: list[str] | None = None) -> None:
    from radar_train.cli.common import run_main

    run_main("radar-demo", lambda args: CLI(demo, args=args, exit_on_error=False), argv, errors=(RuntimeError,))


if __name__ == "__main__":
    main()
