"""RADAR's recipe configs (configs/train/*_radar.yaml): without local LPIPS weights a fit stops with one line
naming the options to pass, before anything is written; the toy versions run the recipe without LPIPS."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from tiny_training import run_train_cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"
REAL = sorted(p for p in CONFIGS.glob("d*_radar.yaml"))
TOY = sorted(CONFIGS.glob("toy_large*_radar.yaml"))


def test_there_are_recipe_configs_for_the_real_models_and_the_toy_world():
    assert {p.name for p in REAL} >= {"d16_fastvar_radar.yaml", "d16_stagevar_radar.yaml", "d36_fastvar_radar.yaml"}
    assert {p.name for p in TOY} == {"toy_large_radar.yaml", "toy_large_stagevar_default_radar.yaml",
                                     "toy_large_stagevar_paper_radar.yaml"}


@pytest.mark.parametrize("config", REAL, ids=[p.name for p in REAL])
def test_without_lpips_weights_a_recipe_fit_is_one_line_naming_what_to_pass(config, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_train_cli(["fit", "--config", str(config)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1
    assert "--model.loss.lpips_vgg" in err[0] and "--model.loss.lpips_weight 0" in err[0]  # (the heads: shipped)
    assert list(tmp_path.iterdir()) == []
    assert "--model.loss.lpips_vgg" in config.read_text().splitlines()[1]  # the header's command passes it


@pytest.mark.parametrize("config", REAL + TOY, ids=[p.name for p in REAL + TOY])
def test_recipe_configs_hold_the_main_text_recipe(config):
    cfg = yaml.safe_load(config.read_text())
    model, trainer = cfg["model"], cfg["trainer"]
    assert model["optim"]["learning_rate"] == 3e-6 and model["optim"]["weight_decay"] == 1e-5
    assert model["loss"]["l2_weight"] == 1.0 and model["loss"]["l1_weight"] == 0.0
    assert model["loss"]["lpips_weight"] == (0.0 if config in TOY else 1.0)
    assert trainer["max_steps"] == 10000 and model["early_stopping"]["enabled"]
    assert cfg["data"]["batch_size"] * trainer["accumulate_grad_batches"] == 16


REAL_TRAIN = sorted(CONFIGS.glob("d*.yaml"))


@pytest.mark.parametrize("config", REAL_TRAIN, ids=[p.name for p in REAL_TRAIN])
def test_the_real_recipes_train_and_validate_on_the_split_of_the_paa_recipe(config):
    """10,000 training pairs at 256 px (5,000 at 512 px), every class equally often, and 2,000 held-out pairs, 2
    per class, of other seeds: the split of the PAA recipe. (The caches of 10 shards of 1024 gave 9,216 training
    pairs, 216 classes once more than the others, and 784 validation pairs of classes 216-999 only.)"""
    import collections
    import re

    from radar_train.cache.plan import Plan
    from radar_train.cli.cache import build_run_parser, run_args
    from radar_train.models import get_preset
    from radar_train.train.datamodule import parse_shards

    cache_config = re.search(r"radar-cache run --config (configs/cache/\S+\.yaml)", config.read_text())[1]
    args = run_args(build_run_parser().parse_args(["--config", str(CONFIGS.parents[1] / cache_config)]))
    preset = get_preset(args.model.preset)
    plan = Plan.from_args(args.plan, preset.var.num_classes)
    (source,) = yaml.safe_load(config.read_text())["data"]["caches"]

    def pairs(shards):
        labels, seeds = zip(*(plan.labels_seeds(*plan.shard_range(s)) for s in parse_shards(shards, "shards")))
        return collections.Counter(np.concatenate(labels).tolist()), set(np.concatenate(seeds).tolist())

    (train, train_seeds), (val, val_seeds) = pairs(source["train_shards"]), pairs(source["val_shards"])
    per_class = 10 if preset.image_size == 256 else 5
    assert len(train) == 1000 and set(train.values()) == {per_class}
    assert len(val) == 1000 and set(val.values()) == {2}
    assert not train_seeds & val_seeds and max(map(max, (parse_shards(source[k], k) for k in source if
                                                         k.endswith("_shards")))) == plan.num_shards - 1
