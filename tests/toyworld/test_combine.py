"""radar-toy combine: measure results of separate runs as one, the adapter groups summarised again over all of
them, refused when the runs did not measure the same thing. Synthetic results (the shape of radar-toy
measure's metrics.json), so every expected number is worked out by hand."""
from __future__ import annotations

import copy
import json

import pytest

from radar_train.toyworld.combine import combine, run_combine

SETTING = {"class_accuracy": 0.55, "psnr_vs_vanilla": 19.0632, "toy_fid": 76.92}


def adapter(g_mse: float, fid: float, folder: str) -> dict:
    return {"adapter_dir": folder, "group": "paa", "class_accuracy": 0.75, "g_mse": g_mse, "toy_fid": fid}


def result(adapters: dict, commit: str = "aaaaaaa", base_seed: int = 1000000) -> dict:
    return {"device": "cpu", "torch": "2.13.0", "cuda": None, "commit": commit, "date": "2026-12-02T00:00:00Z",
            "command": "radar-toy measure", "config": {"model": {"preset": "toy"}, "base_seed": base_seed,
                                                       "images_per_class": 20, "methods": ["fastvar:aggressive"]},
            "num_samples": 200, "reconstruction": {"psnr_db": 24.672, "num_images": 200},
            "toy_fid": {"baselines": {"real_renders": 6.39}, "notes": ["a note"], "num_samples": 200,
                        "features": "f", "reference": {"num_images": 1000, "world_seed": 2}},
            "sharpness": {"baselines": {"real_renders": 1.2, "vqvae_reconstructions": 0.8}},
            "vanilla": {"class_accuracy": 0.92, "toy_fid": 27.0125},
            "methods": {"fastvar:aggressive": {**SETTING, "adapters": adapters}}}


def test_seeds_from_two_runs_form_one_group_with_mean_and_sd(tmp_path):
    a = result({"paa_s0": adapter(0.50, 42.0, "run0/final"), "other": adapter(0.4, 50.0, "x/final")})
    b = result({"paa_s1": adapter(0.60, 44.0, "run1/final"), "other": adapter(0.4, 50.0, "y/final")}, commit="bbbbbbb")
    for doc, name in ((a, "a.json"), (b, "b.json")):
        (tmp_path / name).write_text(json.dumps(doc))
    report = run_combine([str(tmp_path / "a.json"), str(tmp_path / "b.json")], str(tmp_path / "out"))
    row = report["methods"]["fastvar:aggressive"]
    assert list(row["adapters"]) == ["paa_s0", "other", "paa_s1"]  # `other`, the same in both, once
    assert row["adapters"]["other"]["adapter_dir"] == "x/final"
    g = row["groups"]["paa"]
    assert g["adapters"] == ["paa_s0", "paa_s1"] and g["n"] == 2
    assert g["g_mse"] == {"mean": 0.55, "std": 0.0707, "min": 0.5, "max": 0.6}  # sd: sqrt(2 * 0.05^2 / 1)
    assert g["toy_fid"]["mean"] == 43.0 and g["toy_fid"]["std"] == 1.4142
    assert row["class_accuracy"] == 0.55 and report["vanilla"] == a["vanilla"]
    assert [s["commit"] for s in report["sources"]] == ["aaaaaaa", "bbbbbbb"]
    assert [r["run"] for r in report["rows"]] == ["vanilla", "fastvar:aggressive", "fastvar:aggressive + paa_s0",
                                                  "fastvar:aggressive + other", "fastvar:aggressive + paa_s1"]
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["methods"] == report["methods"] and "markdown" not in written
    md = (tmp_path / "out" / "metrics.md").read_text()
    assert "| fastvar:aggressive + paa (mean ± sd of 2) | – | 75.0 % ± 0.0 % | 43.00 ± 1.41 |" in md
    assert f"`{tmp_path / 'b.json'}`: commit bbbbbbb" in md


@pytest.mark.parametrize("change,needle", [
    (lambda d: d["vanilla"].update(class_accuracy=0.91), "vanilla.class_accuracy: 0.92 vs 0.91"),
    (lambda d: d["config"].update(base_seed=5), "config.base_seed: 1000000 vs 5"),
    (lambda d: d["reconstruction"].update(psnr_db=24.0), "reconstruction.psnr_db: 24.672 vs 24.0"),
    (lambda d: d["toy_fid"]["baselines"].update(real_renders=6.4), "toy_fid.baselines.real_renders: 6.39 vs 6.4"),
    (lambda d: d["sharpness"]["baselines"].update(real_renders=1.25),
     "sharpness.baselines.real_renders: 1.2 vs 1.25"),
    (lambda d: d["methods"]["fastvar:aggressive"].update(toy_fid=77.0),
     "setting fastvar:aggressive differently from an earlier input (fastvar:aggressive.toy_fid: 76.92 vs 77.0)"),
    (lambda d: d["methods"]["fastvar:aggressive"]["adapters"]["paa_s0"].update(g_mse=0.51),
     "adapter paa_s0 of fastvar:aggressive is in a.json and in b.json with different results"),
])
def test_runs_that_measured_something_else_are_refused(change, needle):
    a = result({"paa_s0": adapter(0.50, 42.0, "run0/final")})
    b = copy.deepcopy(a)
    change(b)
    with pytest.raises(ValueError) as e:
        combine([a, b], ["a.json", "b.json"])
    assert needle in str(e.value) and "b.json" in str(e.value)


def test_a_setting_one_run_did_not_measure_is_taken_from_the_other():
    a = result({"paa_s0": adapter(0.50, 42.0, "r/final")})
    b = result({})
    b["methods"]["stagevar:paper"] = {"class_accuracy": 0.265}
    del b["methods"]["fastvar:aggressive"]["adapters"]
    report = combine([a, b], ["a.json", "b.json"])
    assert list(report["methods"]) == ["fastvar:aggressive", "stagevar:paper"]
    assert "adapters" not in report["methods"]["stagevar:paper"]
    assert report["methods"]["fastvar:aggressive"]["groups"]["paa"]["g_mse"]["std"] is None


def test_bad_inputs_name_the_file_and_write_nothing(tmp_path):
    good = tmp_path / "a.json"
    good.write_text(json.dumps(result({})))
    (tmp_path / "junk.json").write_text("{not json")
    (tmp_path / "other.json").write_text("{}")
    (tmp_path / "bad_config.json").write_text(json.dumps({**result({}), "config": [1]}))
    for files, needle in (([good], "at least two"), ([good, tmp_path / "nope.json"], "nope.json is not a file"),
                          ([good, tmp_path / "junk.json"], "junk.json is not JSON"),
                          ([good, tmp_path / "other.json"], "other.json is not a radar-toy measure metrics.json"),
                          ([good, tmp_path / "bad_config.json"], "bad_config.json is not a radar-toy measure")):
        with pytest.raises(ValueError, match=needle):
            run_combine([str(f) for f in files], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
