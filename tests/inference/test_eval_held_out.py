"""radar-eval's held-out rule across copies of a cache: a copy made with a larger plan, another shard size or
another sampling engine holds the same pairs (label, seed), so the adapter's training pairs are refused there
too, and its validation pairs are found there by default. And the message for a --vae_checkpoint given for a
cache made with a randomly initialised VQ-VAE."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from radar_train.cache.schema import Manifest
from radar_train.inference.evaluate import (_adapter_shards, evaluate_restoration, train_shard_overlap,
                                            unknown_training_shards)

CLASSES = list(range(10))
RULE = "label = classes[i % len(classes)], seed = base_seed + i"


def _plan(per_class: int = 8, shard_size: int = 16, base_seed: int = 0) -> dict:
    n = per_class * len(CLASSES)
    return {"classes": CLASSES, "images_per_class": per_class, "num_samples": n, "base_seed": base_seed,
            "shard_size": shard_size, "num_shards": -(-n // shard_size), "rule": RULE}


def _manifest(plan: dict, engine: str = "auto", prune6: float = 0.5, vae_checkpoint=None) -> Manifest:
    model = {"preset": "tiny", "vae": {"kind": "random", "value": "tiny:seed=0", "config": {}},
             "var": {"kind": "random", "value": "tiny:seed=0", "config": {}}, "vae_checkpoint": vae_checkpoint,
             "var_checkpoint": None}
    accel = {"method": "fastvar", "preset": "default", "prune": {6: prune6, 8: 0.75}, "cache_scale": None,
             "layers": None}
    sampling = {"cfg": 1.5, "top_k": 64, "top_p": 0.96, "noise": "per_sample", "more_smooth": False, "engine": engine}
    d = {"format_version": 1, "radar_train_version": "0", "plan": plan, "model": model, "sampling": sampling,
         "accel": accel, "latent_shape": [8, 8, 8], "latent_dtype": "float16", "patch_nums": [1, 2], "precision":
         "float32", "storage": {"chunk_size": 16}}
    return Manifest.from_dict(json.loads(json.dumps(d)))


def _adapter_meta(trained_on: Manifest) -> dict:
    """An adapter's metadata as radar-train writes it: trained on shards 0-3 (samples 0..63), validated on
    shard 4 (samples 64..79) of `trained_on`, whose path (relative to another folder) names nothing here."""
    m = trained_on.to_dict()
    record = {"path": "elsewhere/cache/tiny", "format": "zarr", "train_shards": [0, 1, 2, 3], "val_shards": [4],
              **{k: m[k] for k in ("model", "accel", "sampling", "plan", "latent_shape", "latent_dtype", "precision")}}
    return {"caches": [record]}


META = _adapter_meta(_manifest(_plan()))


def _check(manifest: Manifest, shards) -> tuple[list[int], list[int] | None]:
    """(training shards among `shards`, default validation shards) of the adapter META in this cache."""
    return train_shard_overlap(META, Path("here"), manifest, shards), _adapter_shards(META, Path("here"), manifest)


def test_a_copy_with_a_larger_plan_holds_the_training_pairs_in_the_same_shards():
    assert _check(_manifest(_plan(per_class=16)), range(10)) == ([0, 1, 2, 3], [4])


def test_a_copy_with_another_shard_size_maps_the_pairs_by_sample_index():
    # shards of 32: [0, 32) and [32, 64) are training samples, [64, 80) the validation ones
    assert _check(_manifest(_plan(shard_size=32)), range(3)) == ([0, 1], [2])
    # shards of 24: shard 2 = [48, 72) holds training and validation samples: refused, and not a default
    assert _check(_manifest(_plan(per_class=16, shard_size=24)), range(7)) == ([0, 1, 2], [3])


def test_the_same_method_settings_given_one_by_one_are_the_same_cache():
    """A cache made with `--accel.fastvar.preset null` and the default preset's prune written out holds the same
    pairs (pipeline.accel_differences calls it the same method): its training shards were called held-out."""
    m = _manifest(_plan()).to_dict()
    m["accel"]["preset"] = None
    assert _check(Manifest.from_dict(m), range(5)) == ([0, 1, 2, 3], [4])
    m["accel"]["prune"] = {"6": 0.5, "8": 0.9}  # (other settings: another cache, whatever the preset says)
    assert _check(Manifest.from_dict(m), range(5)) == ([], None)


def test_execution_only_fields_do_not_make_another_cache():
    assert _check(_manifest(_plan(), engine="eager", vae_checkpoint="/somewhere/vae.pth"), range(5)) == (
        [0, 1, 2, 3], [4])


def test_another_method_setting_or_other_samples_are_another_cache():
    assert _check(_manifest(_plan(), prune6=0.25), range(5)) == ([], None)  # other LQ latents: other pairs
    # a base seed 10 later (the class count): sample i there is sample i + 10 here, the same (label, seed)
    assert _check(_manifest(_plan(base_seed=10)), range(5)) == ([0, 1, 2, 3], [4])
    # a base seed 5 later: the same seeds come with other labels, so no pair is the adapter's
    assert _check(_manifest(_plan(base_seed=5)), range(5)) == ([], None)
    # a held-out cache past the adapter's seeds: nothing refused, no default shards (pass --shards)
    assert _check(_manifest(_plan(base_seed=80)), range(5)) == ([], None)


def test_a_cache_of_another_transformer_precision_holds_other_pairs(tmp_path):
    """bf16 draws other tokens for the same seeds: the adapter's pairs are not this cache's (its record named
    the same pairs before 2026-12-06). A record of before then (no precision) is not compared on it."""
    bf16 = _manifest(_plan())
    bf16.precision = "bfloat16"
    assert _check(bf16, range(5)) == ([], None)
    old = copy.deepcopy(META)
    del old["caches"][0]["precision"]
    assert train_shard_overlap(old, Path("here"), bf16, range(5)) == [0, 1, 2, 3]


def test_a_record_without_the_cache_content_matches_by_path_only(tmp_path):
    old = copy.deepcopy(META)
    for key in ("model", "accel", "sampling", "plan"):
        del old["caches"][0][key]
    old["caches"][0]["path"] = str(tmp_path)
    m = _manifest(_plan(shard_size=32))
    assert train_shard_overlap(old, tmp_path, m, [0, 1, 2]) == [0, 1, 2]  # its shard numbers, as they are
    assert train_shard_overlap(old, tmp_path / "other", m, [0, 1, 2]) == []
    # ... and where its path names another folder from here (it is relative to where training ran), whether the
    # adapter trained on this cache is unknown, not "no": the shards are then not called held-out
    assert unknown_training_shards(old, tmp_path, m) is None
    assert unknown_training_shards(old, tmp_path / "other", m) == (
        f"its radar_config.yaml records a training cache by path only ({tmp_path}, relative to the folder training "
        f"ran in: an older adapter's record, without the cache's model, accel, sampling and plan), which may be this "
        f"cache")


def test_radar_eval_of_an_older_adapter_whose_cache_path_names_nothing_from_here_is_not_called_held_out(
        trained_run, tmp_path):
    """An older adapter's record (path only, relative to the folder training ran in) evaluated from another
    folder: the shards are refused as of unknown training status, and with --allow_train_shards the report says
    held-out unknown. It had said held-out on the very shards the adapter trained on."""
    import yaml

    adapter = tmp_path / "adapter"
    shutil.copytree(trained_run["adapter"], adapter)
    meta = yaml.safe_load((adapter / "radar_config.yaml").read_text(encoding="utf-8"))
    for key in ("model", "accel", "sampling", "plan"):
        del meta["caches"][0][key]
    meta["caches"][0]["path"] = "cache/toy"
    (adapter / "radar_config.yaml").write_text(yaml.safe_dump(meta), encoding="utf-8")
    train = meta["caches"][0]["train_shards"][:1]
    cache = str(trained_run["cache"])
    with pytest.raises(ValueError, match=r"records a training cache by path only \(cache/toy, .*, which may be this "
                                         r"cache, so whether --shards .* hold pairs it was trained on is unknown"):
        evaluate_restoration(cache, str(adapter), shards=train)
    with pytest.warns(UserWarning, match="may include pairs it was trained on"):
        r = evaluate_restoration(cache, str(adapter), shards=train, allow_train_shards=True)
    assert r["held_out"] is None and r["train_shard_overlap"] == []


def _copy(cache, dest, edit) -> str:
    """A copy of the cache folder whose manifest `edit` changes (as a cache made with other settings)."""
    shutil.copytree(cache, dest)
    m = json.loads((dest / "manifest.json").read_text())
    edit(m)
    (dest / "manifest.json").write_text(json.dumps(m))
    return str(dest)


def test_radar_eval_refuses_training_pairs_in_a_larger_copy_of_the_cache(trained_run, tmp_path):
    def sixteen_per_class(m):
        m["plan"].update(images_per_class=16, num_samples=160, num_shards=10)

    big = _copy(trained_run["cache"], tmp_path / "other" / "big", sixteen_per_class)
    with pytest.raises(ValueError, match=r"--shards 0-3 of .*big are training shards of the adapter"):
        evaluate_restoration(big, str(trained_run["adapter"]), shards=[0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"--shards 2 of .*big are training shards"):
        evaluate_restoration(big, str(trained_run["adapter"]), shards=[2, 4, 7])


def test_radar_eval_on_an_engine_eager_copy_refuses_the_training_shards_and_finds_the_validation_ones(
        trained_run, tmp_path):
    def eager(m):
        m["sampling"]["engine"] = "eager"

    other = _copy(trained_run["cache"], tmp_path / "eager", eager)
    with pytest.raises(ValueError, match=r"--shards 0-3 of .*eager are training shards of the adapter"):
        evaluate_restoration(other, str(trained_run["adapter"]), shards=[0, 1, 2, 3])
    r = evaluate_restoration(other, str(trained_run["adapter"]))
    assert r["shards"] == [4] and r["held_out"] is True and r["train_shard_overlap"] == [] and r["num_pairs"] == 16


def test_radar_eval_warns_on_a_cache_of_another_acceleration_and_records_how_it_differs(trained_run, tmp_path):
    """(It warned on neither: eval.json named the cache's acceleration alone, and RadarPipeline warned.)"""
    import warnings

    def aggressive(m):  # (the record of FastVAR's aggressive preset on the tiny model; a preset alone names settings)
        m["accel"].update(preset="aggressive", prune={"4": 0.5, "6": 0.75, "8": 0.9})

    other = _copy(trained_run["cache"], tmp_path / "aggressive", aggressive)
    with pytest.warns(UserWarning, match=r"radar-eval: adapter .* was trained on latents of another acceleration "
                                         r"than .*aggressive's \(preset: default vs aggressive; prune: .*, trained vs "
                                         r"the cache's\)"):
        r = evaluate_restoration(other, str(trained_run["adapter"]), shards=[4])
    assert r["accel_differences"] == ["preset: default vs aggressive",
                                      "prune: {'6': 0.5, '8': 0.75} vs {'4': 0.5, '6': 0.75, '8': 0.9}"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the cache it was trained on: no warning
        r = evaluate_restoration(str(trained_run["cache"]), str(trained_run["adapter"]), shards=[4])
    assert r["accel_differences"] == [] and r["accel"]["preset"] == "default"


def test_a_vae_checkpoint_for_a_cache_of_a_random_init_vqvae_is_refused_naming_that_identity(tmp_path):
    from radar_train.inference.evaluate import load_decoders

    ckpt = tmp_path / "vae.pth"
    ckpt.write_bytes(b"weights")
    with pytest.raises(ValueError) as e:
        load_decoders(_manifest(_plan()), META, str(tmp_path), str(ckpt), "cpu")
    msg = str(e.value)
    assert "random:tiny:seed=0" in msg and "leave out --vae_checkpoint" in msg and str(ckpt) in msg
    assert "file None" not in msg


def test_a_vae_checkpoint_that_does_not_load_for_a_cache_of_a_packaged_vqvae_names_the_preset(tmp_path):
    """A cache of the toy preset records no vae_checkpoint (its VQ-VAE is the packaged file): the refusal of a
    --vae_checkpoint that does not load said "the cache was made with the VQ-VAE file None"."""
    from radar_train.inference.evaluate import load_decoders

    manifest = _manifest(_plan())
    manifest.model.update(preset="toy", vae={"kind": "file", "value": "3aed887a09b0" + "0" * 52, "config": {}})
    ckpt = tmp_path / "vae.pth"
    ckpt.write_bytes(b"weights")
    with pytest.raises(ValueError) as e:
        load_decoders(manifest, META, str(tmp_path), str(ckpt), "cpu")
    msg = str(e.value)
    assert msg.startswith(f"--vae_checkpoint {ckpt} does not load: ")
    assert msg.endswith("(the cache was made with the VQ-VAE file packaged with the toy preset (sha256 3aed887a09b0…))")


def test_a_cache_whose_vqvae_file_is_gone_says_so_not_that_the_presets_own_weights_differ(tmp_path):
    """Without --vae_checkpoint the recorded file is loaded if it is still there; gone, the preset's own (random)
    weights were, and the line said "VQ-VAE random:tiny:seed=0 is not the one the cache was made with"."""
    from radar_train.inference.evaluate import load_decoders

    manifest = _manifest(_plan(), vae_checkpoint=str(tmp_path / "moved" / "vae.safetensors"))
    manifest.model.update(vae={"kind": "file", "value": "ab12" * 16, "config": {}})
    with pytest.raises(FileNotFoundError) as e:
        load_decoders(manifest, META, str(tmp_path), None, "cpu")
    assert str(e.value) == (f"the cache was made with the VQ-VAE file '{tmp_path / 'moved' / 'vae.safetensors'}' "
                            f"(sha256 ab12ab12ab12…), which is not here: pass --vae_checkpoint")


def test_an_adapter_whose_metadata_does_not_record_its_training_shards_is_not_called_held_out(trained_run, tmp_path):
    """A hand-made or edited radar_config.yaml (radar-train always writes caches[*].train_shards): which shards
    the adapter trained on is unknown, so the shards named are refused, and with --allow_train_shards the
    report says held-out unknown, not held-out."""
    import warnings

    import yaml

    from radar_train.inference.evaluate import markdown_table, unknown_training_shards

    adapter = tmp_path / "adapter"
    shutil.copytree(trained_run["adapter"], adapter)
    meta = yaml.safe_load((adapter / "radar_config.yaml").read_text(encoding="utf-8"))
    del meta["caches"][0]["train_shards"]
    (adapter / "radar_config.yaml").write_text(yaml.safe_dump(meta), encoding="utf-8")
    cache = str(trained_run["cache"])
    with pytest.raises(ValueError, match=r"record of this cache has no train_shards, so whether --shards 0 of .* hold "
                                         r"pairs it was trained on is unknown; pass --allow_train_shards"):
        evaluate_restoration(cache, str(adapter), shards=[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = evaluate_restoration(cache, str(adapter), shards=[0], allow_train_shards=True)
    assert r["held_out"] is None and r["train_shard_overlap"] == [] and r["num_pairs"] == 16
    assert any("may include pairs it was trained on" in str(w.message) for w in caught)
    assert "held-out UNKNOWN" in markdown_table(r).splitlines()[0]
    assert unknown_training_shards({"caches": []}, Path(cache), Manifest.from_dict(json.loads(
        (Path(cache) / "manifest.json").read_text()))) == "its radar_config.yaml records no training caches"
    assert unknown_training_shards(META, Path("here"), _manifest(_plan())) is None
