"""radar-demo: the whole product on a small model, end to end on a CPU, with the real commands:

    radar-cache run      paired vanilla / accelerated latents into a sharded Zarr cache
    radar-train fit      LoRA on the frozen decoder from that cache (TensorBoard logs, checkpoints)
    radar-train export   the adapter folder from the last checkpoint
    radar-generate       vanilla | accelerated | accelerated + adapter comparison grid
    radar-eval           restoration metrics on the held-out shards

Every step runs in the output folder, so the configs' relative paths (cache/<name>, checkpoints/<name>)
land there. Each command is printed before it runs; rerunning resumes the cache and skips what exists.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from jsonargparse import CLI

DEFAULT_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _run(cmd: list[str], cwd: Path) -> None:
    print(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    t0 = time.time()
    r = subprocess.run(cmd, cwd=cwd)
    if r.returncode != 0:
        raise RuntimeError(f"step failed (exit {r.returncode}): {' '.join(cmd[:3])} — see the output above")
    print(f"  ({time.time() - t0:.0f} s)", flush=True)


def demo(output: str = "outputs/demo", model: str = "toy", configs: Optional[str] = None, classes: str = "0-9",
         seeds: str = "0-1", train_steps: Optional[int] = None) -> int:
    """Run cache -> train -> export -> generate -> eval on a small model.

    Args:
        output: folder for everything the demo writes.
        model: configs/cache/<model>.yaml and configs/train/<model>.yaml are used (toy: the shipped toy-world
            model; tiny: random weights).
        configs: the configs folder (default: the checkout's configs/).
        classes: classes of the comparison grid.
        seeds: seeds of the comparison grid.
        train_steps: override the training config's max_steps.
    """
    cfg_dir = Path(configs) if configs else DEFAULT_CONFIGS
    cache_cfg, train_cfg = cfg_dir / "cache" / f"{model}.yaml", cfg_dir / "train" / f"{model}.yaml"
    for f in (cache_cfg, train_cfg):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found (pass --configs, the configs/ folder of a radar_train checkout)")
    out = Path(output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    import yaml

    train = yaml.safe_load(train_cfg.read_text())
    run_dir = Path(train["trainer"]["default_root_dir"])
    cache_dir = Path(train["data"]["caches"][0]["path"])
    py = [sys.executable, "-m"]
    print(f"radar-demo: model {model}; everything goes to {out}")
    _run(py + ["radar_train.cli.cache", "run", "--config", str(cache_cfg)], out)
    fit = py + ["radar_train.cli.train", "fit", "--config", str(train_cfg)]
    if train_steps:
        fit += ["--trainer.max_steps", str(train_steps)]
    if (out / run_dir / "final").is_dir():
        print(f"\n(skipping training: {out / run_dir / 'final'} exists)")
    else:
        _run(fit, out)
    _run(py + ["radar_train.cli.train", "export", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"),
               "--output", "adapter"], out)
    _run(py + ["radar_train.cli.generate", "--config", str(cfg_dir / "generate" / f"{model}.yaml"),
               "--adapter", "adapter", "--classes", classes, "--seeds", seeds, "--output", "generate"], out)
    _run(py + ["radar_train.cli.eval", "--cache", str(cache_dir), "--adapter", "adapter", "--output", "eval"], out)
    print("\nradar-demo done:")
    print(f"  comparison grid:  {out / 'generate' / 'grid.png'}")
    print(f"  TensorBoard logs: {out / run_dir / 'tb'}   (tensorboard --logdir {out / run_dir / 'tb'})")
    print(f"  eval table:       {out / 'eval' / 'eval.md'}")
    print(f"  adapter:          {out / 'adapter'}")
    print((out / "eval" / "eval.md").read_text())
    return 0


def main(argv: list[str] | None = None) -> None:
    try:
        sys.exit(CLI(demo, args=argv))
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
