"""The config.yaml a fit saves in its run folder is a config radar-train takes back: `radar-train validate --config
RUN/config.yaml --ckpt_path last` (the first example of `radar-train validate --help`) and a resume with
`fit --config RUN/config.yaml --ckpt_path last`. Lightning saves `optimizer: null` and `lr_scheduler: null`
there (the module configures its own optimizer): null is what those Optional options take, not a group that
is not a mapping."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from cli_checks import build_small_cache, call_cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _fit_args(cache: Path, run: Path, steps: int) -> list[str]:
    caches = json.dumps([{"path": str(cache), "train_shards": "0", "val_shards": "1"}])
    return ["fit", "--config", str(CONFIGS / "train" / "tiny.yaml"), "--data.caches", caches,
            "--trainer.default_root_dir", str(run), "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", str(steps), "--trainer.enable_progress_bar", "false",
            "--model.monitor.images_every_n_steps", "0", "--model.monitor.train_metrics_every_n_steps", "0",
            "--data.batch_size", "4", "--data.val_batch_size", "16"]


def test_the_run_s_own_config_yaml_validates_and_resumes(tmp_path, build_cache):
    cache = build_small_cache(build_cache, tmp_path / "cache")
    run = tmp_path / "run"
    assert call_cli("train", _fit_args(cache, run, 2), tmp_path)[0] == 0
    saved = (run / "config.yaml").read_text()
    assert "optimizer: null" in saved and "lr_scheduler: null" in saved  # what the rule is about

    code, err = call_cli("train", ["validate", "--config", "run/config.yaml", "--ckpt_path", "last"], tmp_path)
    assert code == 0, err
    assert list((run / "tb" / "validate").glob("version_*"))
    # a cache of validation shards alone ('no training shards in data.caches' refused it)
    caches = f'[{{path: {cache}, train_shards: [], val_shards: "0-1"}}]'
    code, err = call_cli("train", ["validate", "--config", "run/config.yaml", "--ckpt_path", "last",
                                   "--data.caches", caches], tmp_path)
    assert code == 0, err

    code, err = call_cli("train", ["fit", "--config", "run/config.yaml", "--ckpt_path", "last",
                                   "--trainer.max_steps", "3"], tmp_path)
    assert code == 0, err
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 3
    assert "max_steps: 3" in (run / "config.yaml").read_text()  # the resume's resolved config, saved again
