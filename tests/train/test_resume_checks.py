"""What a resume checks and keeps: the caches it trains on (the checkpoint's pairs), the checkpoint's format
version, and a run folder moved (or copied) before it resumes."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from radar_train.export import ADAPTER_WEIGHTS, read_radar_config
from radar_train.train.checks import carry_trained_shards, check_resume_caches
from radar_train.train.datamodule import CacheSource, PairDataModule
from radar_train.train.module import META_VERSION, MonitorArgs, OutputArgs, RadarLoraModule, is_trained_key
from radar_train.train.optim import OptimArgs
from radar_train.train.run_checkpoint import state_in_dirpath
from tiny_training import HARMLESS, LabelledPairs, run_train_cli, tiny_fit_argv

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"


# ---------------------------------------------------------------- the caches of a resumed run
def _describe(cache: str, train: str = "0-1", val: str = "14") -> list[dict]:
    dm = PairDataModule([CacheSource(path=cache, train_shards=train, val_shards=val)], batch_size=4)
    dm.setup("fit")
    return dm.describe()


def _checkpoint(caches: list[dict]) -> dict:
    return {"radar": {"caches": copy.deepcopy(caches)}}


def _refusal(stored: list[dict], current: list[dict]) -> str:
    with pytest.raises(ValueError) as e:
        check_resume_caches(_checkpoint(stored), current, "--ckpt_path run/checkpoints/last.ckpt")
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_resume_on_a_cache_of_another_acceleration_method_is_refused(tiny_cache):
    stored = _describe(tiny_cache)
    other = copy.deepcopy(stored)
    other[0]["accel"]["method"] = "stagevar"
    msg = _refusal(stored, other)
    assert msg.startswith("--data.caches differs from the caches of the run, compared in the run's order: ")
    assert "accel.method fastvar -> stagevar" in msg
    assert msg.endswith("the checkpoint was trained on other pairs; start a new run folder")


@pytest.mark.parametrize("field,value,shown", [
    (("sampling", "top_k"), 32, "sampling.top_k 64 -> 32"),
    (("model", "vae", "value"), "tiny:seed=1", "model.vae.value tiny:seed=0 -> tiny:seed=1"),
    (("latent_dtype",), "float32", "latent_dtype float16 -> float32"),
    (("latent_shape",), [8, 16, 16], "latent_shape [8, 8, 8] -> [8, 16, 16]"),
    # (the transformer's precision draws other tokens for the same seeds: not compared until 2026-12-06)
    (("precision",), "float16", "precision float32 -> float16"),
    # (the plan's rule is the same text in every cache: the seeds, classes and shard size were not compared, and
    # a resume on other pairs went on without a word, its adapter recording trained pairs as held out)
    (("plan", "base_seed"), 1000, "plan.base_seed 0 -> 1000"),
    (("plan", "shard_size"), 8, "plan.shard_size 16 -> 8"),
    (("plan", "classes"), [0, 1, 2], "plan.classes [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] -> [0, 1, 2]"),
])
def test_a_resume_on_a_cache_made_otherwise_names_the_field(tiny_cache, field, value, shown):
    stored = _describe(tiny_cache)
    other = copy.deepcopy(stored)
    node = other[0]
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value
    assert shown in _refusal(stored, other)


def test_a_resume_on_a_larger_plan_of_the_same_pairs_is_accepted(tiny_cache):
    """A cache that only grew (more images per class, so more shards) holds the same pairs in the same shards."""
    stored = _describe(tiny_cache)
    grown = copy.deepcopy(stored)
    plan = grown[0]["plan"]
    plan.update(num_samples=2 * plan["num_samples"], num_shards=2 * plan["num_shards"])
    check_resume_caches(_checkpoint(stored), grown, "c")


def test_a_resume_that_validates_on_shards_it_trained_on_is_refused(tiny_cache):
    """The same pairs split otherwise: shard 0, trained on before the checkpoint, now held out. The adapter would
    record it among its val_shards, on which radar-eval scores it by default (it resumed without a word)."""
    stored = _describe(tiny_cache, train="0-3", val="4")
    msg = _refusal(stored, _describe(tiny_cache, train="1-4", val="0"))
    assert msg == ("--data.caches: data.caches[0] val_shards 0 (trained on: --ckpt_path run/checkpoints/last.ckpt's "
                   "train_shards 0-3): the adapter would record pairs it was trained on as held out (radar-eval "
                   "scores an adapter on its val_shards); keep them out of val_shards")
    check_resume_caches(_checkpoint(stored), _describe(tiny_cache, train="1-4", val="5"), "c")  # (another split: ok)


def test_a_resumed_run_records_the_shards_it_trained_on_before_and_after(tiny_cache):
    stored, current = _describe(tiny_cache, train="0-3", val="14"), _describe(tiny_cache, train="2-5", val="14")
    carry_trained_shards(_checkpoint(stored), current)
    assert current[0]["train_shards"] == [0, 1, 2, 3, 4, 5] and current[0]["val_shards"] == [14]


def test_a_resume_on_another_number_of_caches_is_refused(tiny_cache):
    stored = _describe(tiny_cache)
    msg = _refusal(stored, stored + stored)
    assert msg.startswith("--data.caches names 2 cache(s) but --ckpt_path run/checkpoints/last.ckpt was trained "
                          "on 1") and msg.endswith("start a new run folder")


def test_a_checkpoint_of_before_the_precision_was_recorded_is_not_compared_on_it(tiny_cache):
    stored = _describe(tiny_cache)
    del stored[0]["precision"]
    other = _describe(tiny_cache)
    other[0]["precision"] = "bfloat16"
    check_resume_caches(_checkpoint(stored), other, "c")


def test_a_moved_grown_or_resplit_cache_of_the_same_pairs_resumes(tiny_cache):
    stored = _describe(tiny_cache)
    grown = _describe(tiny_cache, train="0-5", val="15")
    grown[0]["path"] = "/elsewhere/tiny"
    grown[0]["plan"] = dict(grown[0]["plan"], num_samples=512, num_shards=32, images_per_class=None)
    grown[0]["model"] = dict(grown[0]["model"], vae_checkpoint="/elsewhere/vae.pth")
    grown[0]["sampling"] = dict(grown[0]["sampling"], engine="eager")
    check_resume_caches(_checkpoint(stored), grown)
    check_resume_caches({"radar": {"caches": []}}, grown)  # trained on loaders of its own: nothing to compare


def _edited_copy(cache: str, to: Path, **accel) -> str:
    shutil.copytree(cache, to)
    manifest = json.loads((to / "manifest.json").read_text())
    manifest["accel"].update(accel)
    (to / "manifest.json").write_text(json.dumps(manifest))
    return str(to)


def _fit_on(cache: str, root: Path, steps: int, ckpt_path=None):
    torch.manual_seed(0)
    module = RadarLoraModule(monitor=MonitorArgs(images_every_n_steps=0, num_image_samples=0,
                                                 train_metrics_every_n_steps=0),
                             output=OutputArgs(save_every_n_steps=2))
    dm = PairDataModule([CacheSource(path=cache, train_shards="0-1", val_shards="14")], batch_size=4)
    trainer = pl.Trainer(default_root_dir=str(root), accelerator="cpu", devices=1, precision="32-true",
                         max_steps=steps, val_check_interval=2, check_val_every_n_epoch=None,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         logger=False, use_distributed_sampler=False)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def test_trainer_fit_refuses_to_resume_on_other_pairs(tiny_cache, tmp_path):
    """Without the CLI, too: the module compares the checkpoint's caches when Lightning restores it."""
    _fit_on(tiny_cache, tmp_path / "run", 2)
    other = _edited_copy(tiny_cache, tmp_path / "other", method="stagevar")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"accel\.method fastvar -> stagevar: the checkpoint was trained on other"):
        _fit_on(other, tmp_path / "run", 4, ckpt_path=str(last))
    moved = tmp_path / "moved"
    shutil.copytree(tiny_cache, moved)
    assert _fit_on(str(moved), tmp_path / "run", 4, ckpt_path=str(last)).global_step == 4


def test_the_cli_refuses_to_resume_on_other_pairs_before_writing(tiny_cache, tmp_path, capsys):
    root = tmp_path / "run"
    assert run_train_cli(tiny_fit_argv(tiny_cache, root, 2)) == 0
    other = _edited_copy(tiny_cache, tmp_path / "other", method="stagevar")
    before = {p: p.read_bytes() if p.is_file() else None for p in root.rglob("*")}
    capsys.readouterr()
    assert run_train_cli(tiny_fit_argv(other, root, 4, "--ckpt_path", "last")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --data.caches ") and "accel.method fastvar -> stagevar" in err[-1]
    assert {p: p.read_bytes() if p.is_file() else None for p in root.rglob("*")} == before


# ---------------------------------------------------------------- the checkpoint's format version
@pytest.mark.parametrize("version,message", [
    (META_VERSION + 98, f"has format version {META_VERSION + 98}; this radar_train reads up to {META_VERSION} "
                        "(upgrade radar_train)"),
    ("1", "is not a radar-train checkpoint: radar.format_version '1'"),
    (None, "is not a radar-train checkpoint: radar.format_version None"),
])
def test_a_checkpoint_of_an_unknown_format_version_is_refused(tmp_path, version, message):
    module = RadarLoraModule()
    state = {"radar": dict(module.radar_meta(), format_version=version),
             "state_dict": {k: v for k, v in module.state_dict().items() if is_trained_key(k)}}
    module.check_checkpoint(dict(state, radar=module.radar_meta()), "x.ckpt")  # the version it writes: read
    with pytest.raises(ValueError) as e:
        module.check_checkpoint(state, str(tmp_path / "last.ckpt"))
    assert str(e.value) == f"{tmp_path / 'last.ckpt'} {message}"


def test_export_refuses_a_checkpoint_of_a_newer_format_version(tmp_path):
    from radar_train.train.export import export_checkpoint

    module = RadarLoraModule()
    ckpt = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "radar": dict(module.radar_meta(), format_version=99),
                "state_dict": {k: v for k, v in module.state_dict().items() if is_trained_key(k)}}, ckpt)
    with pytest.raises(ValueError, match=f"^{ckpt} has format version 99; this radar_train reads up to"):
        export_checkpoint(ckpt, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


# ---------------------------------------------------------------- a run folder moved before its resume
def _fit(root: Path, max_steps: int, ckpt_path=None):
    torch.manual_seed(0)
    module = RadarLoraModule(optim=OptimArgs(learning_rate=2e-2, warmup_steps=1, schedule_steps=40),
                             monitor=MonitorArgs(images_every_n_steps=0, train_metrics_every_n_steps=0),
                             output=OutputArgs(save_every_n_steps=2), early_stopping=HARMLESS)
    trainer = pl.Trainer(default_root_dir=str(root), accelerator="cpu", devices=1, precision="32-true",
                         max_steps=max_steps, val_check_interval=2, check_val_every_n_epoch=None,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         logger=False)
    data = LabelledPairs(32)
    train = DataLoader(torch.utils.data.Subset(data, range(24)), batch_size=4, shuffle=False)
    val = DataLoader(torch.utils.data.Subset(data, range(24, 32)), batch_size=8)
    trainer.fit(module, train, val, ckpt_path=ckpt_path)
    return trainer


def _outcome(root: Path) -> tuple:
    sel = read_radar_config(root / "final")["selection"]
    return (sel["step"], sel["final_adapter"], sorted(p.name for p in (root / "checkpoints").iterdir()),
            (root / "final" / ADAPTER_WEIGHTS).read_bytes())


def test_a_moved_run_folder_resumes_as_it_would_in_place(tmp_path):
    place, copied, moved = tmp_path / "run", tmp_path / "copy", tmp_path / "moved"
    _fit(place, 4)  # validations at 2 and 4; the best is step 2
    shutil.copytree(place, copied)
    _fit(place, 40, ckpt_path=str(place / "checkpoints" / "last.ckpt"))  # stops early at step 6
    copied.rename(moved)
    trainer = _fit(moved, 40, ckpt_path=str(moved / "checkpoints" / "last.ckpt"))
    assert trainer.global_step == 6
    assert _outcome(place)[:3] == (2, "best", ["best-step-000002.ckpt", "last.ckpt", "step-000006.ckpt"])
    assert _outcome(moved) == _outcome(place)
    assert read_radar_config(moved / "final")["selection"]["checkpoint"] == \
        str((moved / "checkpoints" / "best-step-000002.ckpt").resolve())


def test_only_the_paths_under_the_saved_checkpoint_folder_move_and_only_where_their_files_are(tmp_path):
    a, c = str(tmp_path / "a" / "run" / "checkpoints"), str(tmp_path / "c" / "checkpoints")
    state = {"dirpath": a, "best_model_path": f"{a}/best-step-000002.ckpt",
             "kth_best_model_path": "/a/run/checkpoints2/x.ckpt", "last_model_path": "",
             "best_k_models": {f"{a}/best-step-000002.ckpt": 1.0, "/b/y.ckpt": 2.0}}
    assert state_in_dirpath(state, c) is state  # no file of it in c: another folder's checkpoint (a new fit)
    Path(c).mkdir(parents=True)
    (Path(c) / "best-step-000002.ckpt").write_bytes(b"")
    out = state_in_dirpath(state, c)
    assert out == {"dirpath": c, "best_model_path": f"{c}/best-step-000002.ckpt",
                   "kth_best_model_path": "/a/run/checkpoints2/x.ckpt", "last_model_path": "",
                   "best_k_models": {f"{c}/best-step-000002.ckpt": 1.0, "/b/y.ckpt": 2.0}}
    assert state_in_dirpath(state, a) is state


def test_a_new_fit_from_another_run_folders_checkpoint_keeps_its_best_step(tmp_path):
    """A fit into a new folder from another (still existing) run's last.ckpt: that run's best file is not
    looked for in the new folder (it is not there), so the new run keeps a best validation of its own, and
    final/ is that step's adapter (before: no best file was kept, and final/ fell back to the last step's)."""
    _fit(tmp_path / "a", 4)  # validations at 2 and 4; the best is step 2
    trainer = _fit(tmp_path / "b", 40, ckpt_path=str(tmp_path / "a" / "checkpoints" / "last.ckpt"))
    assert trainer.global_step == 6
    sel = read_radar_config(tmp_path / "b" / "final")["selection"]
    assert (sel["step"], sel["final_adapter"]) == (6, "best")
    assert sel["checkpoint"] == str((tmp_path / "b" / "checkpoints" / "best-step-000006.ckpt").resolve())
    assert (tmp_path / "b" / "checkpoints" / "best-step-000006.ckpt").is_file()