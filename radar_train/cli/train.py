"""radar-train: PAA LoRA training on the frozen VQ-VAE decoder (LightningCLI) and adapter export.

    radar-train fit --config configs/train/tiny.yaml [--trainer.max_steps 100 ...]
    radar-train fit --config configs/train/tiny.yaml --ckpt_path last        # resume the run folder
    radar-train fit --config configs/train/tiny.yaml --print_config
    radar-train validate --config configs/train/tiny.yaml --ckpt_path last
    radar-train export --ckpt checkpoints/tiny/checkpoints/last.ckpt --output checkpoints/tiny/final

The run folder is `trainer.default_root_dir` (e.g. checkpoints/tiny): checkpoints/ (Lightning .ckpt, resume
only), tb/ (TensorBoard), config.yaml (the resolved config), final/ and step-NNNNNN/ (adapter exports).
Precision defaults to bf16-mixed on a GPU and 32-true on the CPU. Under SLURM the SLURMEnvironment
plugin is added with auto-requeue on SIGUSR1.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Optional

USAGE = """usage: radar-train {fit,validate,export} ...

  fit       train LoRA adapters (LightningCLI; --config FILE, dotted overrides, --print_config, --ckpt_path last)
  validate  run the validation metrics on a checkpoint (LightningCLI)
  export    write a peft adapter folder from a Lightning checkpoint (--ckpt PATH --output DIR)

`radar-train fit --help` lists every option."""

LIGHTNING_SUBCOMMANDS = ("fit", "validate")
_ONE_LINE_ERRORS = (ValueError, FileNotFoundError)


def export(ckpt: str, output: str) -> int:
    """Export the adapter folder from a radar-train checkpoint.

    Writes a peft adapter folder (adapter_config.json, adapter_model.safetensors, radar_config.yaml)
    from a radar-train Lightning checkpoint.

    Args:
        ckpt: Lightning checkpoint written by `radar-train fit` (e.g. RUN/checkpoints/last.ckpt).
        output: adapter folder to write (replaced if it exists).
    """
    from radar_train.export.adapter import export_checkpoint

    print(f"radar-train export: {ckpt} -> {output}")
    path = export_checkpoint(ckpt, output)
    print(f"adapter: {path}")
    return 0


def _make_cli_class():
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    class RunConfigCallback(SaveConfigCallback):
        """Saves the resolved config as RUN/config.yaml (trainer.default_root_dir), rank zero only."""

        def __init__(self, *args, **kwargs):
            kwargs["save_to_log_dir"] = False
            super().__init__(*args, **kwargs)

        def save_config(self, trainer, pl_module, stage: str) -> None:
            root = Path(trainer.default_root_dir)
            root.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(root / self.config_filename), skip_none=False, overwrite=True,
                             multifile=self.multifile)

    class RadarTrainCLI(LightningCLI):
        def instantiate_trainer(self, **kwargs):
            import torch
            from lightning.pytorch.loggers import TensorBoardLogger
            from lightning.pytorch.plugins.environments import SLURMEnvironment

            cfg = self._get(self.config_init, "trainer", default={})
            if cfg.get("precision") is None:
                kwargs["precision"] = "bf16-mixed" if torch.cuda.is_available() else "32-true"
            if cfg.get("logger") in (None, True):
                root = cfg.get("default_root_dir") or os.getcwd()
                kwargs["logger"] = TensorBoardLogger(save_dir=root, name="tb", version="", default_hp_metric=False)
            if SLURMEnvironment.detect() and not cfg.get("plugins"):
                kwargs["plugins"] = [SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1)]
            # the run's ModelCheckpoint must be known before fit(ckpt_path="last") looks for last.ckpt
            # (the module's configure_callbacks attaches the same one later, replacing this)
            ckpt = self.model.checkpoint_callback(cfg.get("default_root_dir") or os.getcwd())
            if ckpt is not None:
                given = cfg.get("callbacks") or []
                kwargs["callbacks"] = [*(given if isinstance(given, list) else [given]), ckpt]
            return super().instantiate_trainer(**kwargs)

        def before_fit(self) -> None:
            t = self.trainer
            logging.getLogger("radar_train").info(
                "radar-train fit: run folder %s, max_steps %s, precision %s, %d device(s) (%s)",
                t.default_root_dir, t.max_steps, t.precision, t.world_size, type(t.strategy).__name__)

    return RadarTrainCLI, RunConfigCallback


def run_lightning(argv: Optional[list[str]]) -> None:
    """LightningCLI over `argv` (None: sys.argv[1:])."""
    from radar_train.train.datamodule import PairDataModule
    from radar_train.train.module import RadarLoraModule

    cli_cls, config_cb = _make_cli_class()
    cli_cls(RadarLoraModule, PairDataModule, args=argv, save_config_callback=config_cb,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"use_distributed_sampler": False, "default_root_dir": "checkpoints/run"},
            parser_kwargs={"default_env": False})


def main(argv: Optional[list[str]] = None) -> None:
    explicit = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    cmd, rest = argv[0], argv[1:]
    if cmd not in LIGHTNING_SUBCOMMANDS + ("export",):
        print(f"error: unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    from radar_train.models.checkpoint import CheckpointError

    try:
        if cmd == "export":
            from jsonargparse import CLI

            sys.exit(CLI(export, args=rest, as_positional=False, prog="radar-train export"))
        run_lightning(argv if explicit else None)
    except (*_ONE_LINE_ERRORS, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)


if __name__ == "__main__":
    main()
