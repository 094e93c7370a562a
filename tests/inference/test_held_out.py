"""An adapter is not scored on its training pairs: radar-fid refuses a --base_seed whose samples (class i mod C,
seed base_seed + i) include pairs of the adapter's training shards (same VAR and sampler), radar-generate notes
them; validation shards, other VARs and other sampler settings do not count."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from cli_checks import assert_one_line_error, call_cli
from radar_train.cache.plan import Plan
from radar_train.inference.held_out import HELD_OUT_BASE_SEED, fid_overlap, grid_overlap

ROOT = Path(__file__).resolve().parents[2]
SAMPLING = {"cfg": 1.5, "top_k": 64, "top_p": 0.96, "noise": "per_sample", "more_smooth": False, "engine": "auto"}


def _meta(classes=tuple(range(10)), train=(0, 1, 2, 3), val=(4,), var="tiny:seed=0", sampling=SAMPLING,
          base_seed=0) -> dict:
    """An adapter record of one cache: 80 samples in shards of 16 (the tiny cache config's plan)."""
    plan = Plan(tuple(classes), 8 if len(classes) == 10 else None, None if len(classes) == 10 else 80, base_seed, 16)
    record = {"path": "cache/tiny", "train_shards": list(train), "val_shards": list(val), "plan": plan.to_dict()}
    if var is not None:
        record["model"] = {"preset": "tiny", "var": {"kind": "random", "value": var}}
    if sampling is not None:
        record["sampling"] = dict(sampling)
    return {"caches": [record]}


def test_radar_fid_samples_meet_the_training_shards_only_where_class_and_seed_agree():
    hit = fid_overlap(_meta(), "tiny:seed=0", SAMPLING, 10, 0, 100)
    assert (hit.count, hit.example_class, hit.example_seed, hit.caches, hit.held_out_from) == (
        64, 0, 0, ("cache/tiny",), 80)  # samples 0-63 are shards 0-3's, class and seed alike
    assert fid_overlap(_meta(), "tiny:seed=0", SAMPLING, 10, 10, 100).count == 54  # seeds 10-63, classes agree
    assert fid_overlap(_meta(), "tiny:seed=0", SAMPLING, 10, 63, 100) is None  # seed 63 is class 3, sample 0 class 0
    assert fid_overlap(_meta(), "tiny:seed=0", SAMPLING, 10, 64, 100) is None  # the validation shard's seeds
    assert fid_overlap(_meta(), "tiny:seed=0", SAMPLING, 10, 0, 5).count == 5  # only the run's own samples
    # a plan of other classes: its sample j is class (3, 7)[j mod 2]; radar-fid's sample i is class i mod 10
    hit = fid_overlap(_meta(classes=(3, 7)), "tiny:seed=0", SAMPLING, 10, -3, 100)
    assert (hit.count, hit.example_class, hit.example_seed) == (7, 3, 0)  # seeds 0, 10, ..., 60: class 3 both


def test_other_vars_and_sampler_settings_do_not_count_and_records_without_them_do():
    assert fid_overlap(_meta(), "tiny:seed=1", SAMPLING, 10, 0, 100) is None
    assert fid_overlap(_meta(), "tiny:seed=0", {**SAMPLING, "cfg": 4.0}, 10, 0, 100) is None
    assert fid_overlap(_meta(), "tiny:seed=0", {**SAMPLING, "engine": "eager"}, 10, 0, 100).count == 64
    assert fid_overlap(_meta(var=None, sampling=None), "tiny:seed=1", {**SAMPLING, "cfg": 4.0}, 10, 0, 100).count == 64
    assert fid_overlap({"caches": [{"path": "x", "train_shards": [0]}]}, None, SAMPLING, 10, 0, 100) is None  # no plan
    assert fid_overlap({}, None, SAMPLING, 10, 0, 100) is None


def test_a_grid_of_classes_and_seeds_meets_the_training_pairs_it_holds():
    labels = [c for c in range(4) for _ in range(2)]
    seeds = [s for _ in range(4) for s in range(2)]
    hit = grid_overlap(_meta(), "tiny:seed=0", SAMPLING, labels, seeds)
    assert (hit.count, hit.example_class, hit.example_seed, hit.held_out_from) == (2, 0, 0, 80)  # (0, 0) and (1, 1)
    assert grid_overlap(_meta(), "tiny:seed=0", SAMPLING, [3], [73]) is None  # shard 4: validation
    assert grid_overlap(_meta(), "tiny:seed=0", SAMPLING, [3], [63]).count == 1
    assert HELD_OUT_BASE_SEED > 1_281_167


def test_radar_fid_refuses_a_base_seed_of_training_pairs_and_its_default_is_held_out(trained_run, tmp_path):
    argv = ["--config", str(ROOT / "configs/generate/tiny.yaml"), "--adapter", str(trained_run["adapter"]), "--device",
            "cpu", "--num_samples", "2", "--batch_size", "2", "--save_npz", "true"]
    code, err = call_cli("fid", [*argv, "--base_seed", "0", "--output", "fid0"], tmp_path)
    assert code == 2
    line = assert_one_line_error(err)
    assert line == ("error: --base_seed 0: 2 of the 2 samples (class, seed) are pairs the adapter was trained on "
                    "(e.g. class 0 seed 0, in cache/tiny): the accelerated+adapter FID would score its training "
                    "data; give a --base_seed of 80 or more (past every seed of those caches)")
    assert not (tmp_path / "fid0").exists()
    code, err = call_cli("fid", [*argv, "--output", "fid1"], tmp_path)  # the default base seed
    assert code == 0, err
    assert (tmp_path / "fid1" / "samples_accelerated_adapter.npz").is_file()


@pytest.mark.parametrize("seeds, noted", [("0-1", True), ("100-101", False)])
def test_radar_generate_notes_samples_that_are_training_pairs(seeds, noted, trained_run, tmp_path):
    from radar_train.cli.generate import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        main(["--config", str(ROOT / "configs/generate/tiny.yaml"), "--adapter", str(trained_run["adapter"]),
              "--device", "cpu", "--classes", "0-1", "--seeds", seeds, "--output", str(tmp_path / "gen")])
    assert e.value.code in (0, None)
    note = ("radar-generate: note: 2 of the 4 samples (class, seed) are pairs the adapter was trained on (e.g. class 0 "
            "seed 0, in cache/tiny): their restored/ images are of its training data; seeds from 80 on are held out")
    assert (note in out.getvalue()) is noted


def test_radar_fid_hashes_the_var_only_when_seeds_meet_and_another_var_is_not_refused(trained_run, tmp_path,
                                                                                      monkeypatch):
    import radar_train.models

    asked = []

    def another_var(*a, **k):
        asked.append(a)
        return "tiny:seed=7"

    monkeypatch.setattr(radar_train.models, "var_identity_value", another_var)
    from radar_train.cli.fid import check_held_out
    from radar_train.config import ModelArgs, SamplingConfig

    from radar_train.export import read_radar_config

    sampling, meta = SamplingConfig(cfg=1.5, top_k=64, top_p=0.96), read_radar_config(trained_run["adapter"])
    check_held_out(ModelArgs(preset="tiny"), sampling, meta, HELD_OUT_BASE_SEED, 50000, "why")
    assert asked == []  # no sample meets the training seeds: no VAR file to hash
    check_held_out(ModelArgs(preset="tiny"), sampling, meta, 0, 50000, "why")  # another VAR's pairs
    assert len(asked) == 1
    monkeypatch.setattr(radar_train.models, "var_identity_value", lambda *a, **k: "tiny:seed=0")
    with pytest.raises(ValueError, match=r"^--base_seed 0: 64 of the 50000 samples.*: why; give a --base_seed of"):
        check_held_out(ModelArgs(preset="tiny"), sampling, meta, 0, 50000, "why")


def test_the_var_identity_without_loading_is_the_loaded_models(tmp_path):
    import torch

    from radar_train.models import load_models, var_identity_value

    _, var, _, loaded = load_models("tiny", init_seed=3)
    assert var_identity_value("tiny", init_seed=3) == loaded.value == "tiny:seed=3"
    torch.save(var.state_dict(), tmp_path / "var.pth")
    _, _, _, from_file = load_models("tiny", var_checkpoint=str(tmp_path / "var.pth"), init_seed=3)
    assert var_identity_value("tiny", var_checkpoint=str(tmp_path / "var.pth"), init_seed=3) == from_file.value
    assert from_file.kind == "file" and len(from_file.value) == 64


def test_a_sample_in_two_of_the_adapters_caches_counts_once():
    """An adapter trained on a FastVAR and a StageVAR cache of the same plan holds each pair twice: '4 of the 2
    samples' before."""
    two = {"caches": _meta()["caches"] * 2}
    two["caches"][1] = {**two["caches"][1], "path": "cache/stagevar"}
    hit = fid_overlap(two, "tiny:seed=0", SAMPLING, 10, 0, 100)
    assert (hit.count, hit.caches) == (64, ("cache/tiny", "cache/stagevar"))
    assert fid_overlap(two, "tiny:seed=0", SAMPLING, 10, 0, 2).count == 2
    assert grid_overlap(two, "tiny:seed=0", SAMPLING, [0, 0, 1, 1], [0, 1, 0, 1]).count == 2


@pytest.mark.parametrize("edit", [
    lambda r: r.update(model="x"), lambda r: r["model"].update(var="x"), lambda r: r["plan"].update(shard_size=0),
    lambda r: r["plan"].update(images_per_class="8"), lambda r: r["plan"].update(base_seed=None),
    lambda r: r["plan"].update(classes="0-3"), lambda r: r.update(train_shards="0-3"), lambda r: r.pop("plan")])
def test_a_cache_record_that_does_not_read_is_left_out_without_a_traceback(edit):
    meta = _meta()
    edit(meta["caches"][0])
    assert fid_overlap(meta, "tiny:seed=0", SAMPLING, 10, 0, 100) is None
    assert grid_overlap(meta, "tiny:seed=0", SAMPLING, [0], [0]) is None
    for odd in ({"caches": "x"}, {"caches": ["x"]}, "x", None):
        assert fid_overlap(odd, "tiny:seed=0", SAMPLING, 10, 0, 100) is None


@pytest.mark.parametrize("name, said", [("nope.pt", "nope.pt: checkpoint file not found"),
                                        ("folder", "folder: is a directory, expected a checkpoint file")])
def test_a_var_file_that_is_not_one_is_named_as_the_model_loading_names_it(name, said, trained_run, tmp_path):
    (tmp_path / "folder").mkdir()
    argv = ["--config", str(ROOT / "configs/generate/tiny.yaml"), "--adapter", str(trained_run["adapter"]), "--device",
            "cpu", "--num_samples", "2", "--save_npz", "true", "--base_seed", "0", "--model.var_checkpoint", name,
            "--output", "fid"]
    code, err = call_cli("fid", argv, tmp_path)
    assert code == 2 and assert_one_line_error(err) == f"error: {said}"
