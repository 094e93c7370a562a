"""radar-bench tradeoff: the Pareto front, the chart file, and smoke runs on the tiny model and the toy world."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from radar_train.bench.tradeoff import (SERIES_STYLES, TimingArgs, TradeoffConfig, chart_points, draw_chart,
                                        pareto_front, resolve_metric, run_tradeoff)
from radar_train.config import ModelArgs


def _adapters(preset: str, root: Path, names: list[str]) -> dict[str, str]:
    """Adapters with random LoRA weights for the preset's VQ-VAE, one folder per name."""
    from radar_train.bench.pipeline import random_adapter
    from radar_train.export.adapter import save_adapter
    from radar_train.models import load_models

    vqvae, _, vae_id, _ = load_models(preset, with_var=False)
    out = {}
    for i, name in enumerate(names):
        peft_model, _ = random_adapter(vqvae.latent_decoder(), rank=2, seed=i)
        out[name] = str(save_adapter(peft_model, root / name, {"base": {"vae": vae_id.to_dict()}}))
    return out


# ------------------------------------------------------------------------------------------ Pareto front
def test_pareto_front_keeps_the_points_nothing_beats_in_both_speed_and_quality():
    pts = [(1.0, 30.0), (1.5, 28.0), (1.5, 25.0), (2.0, 29.0), (3.0, 10.0), (2.5, 10.0), (0.9, 31.0)]
    # (1.5, 28) and (1.5, 25) lose to (2.0, 29); (2.5, 10) loses to (3.0, 10)
    assert pareto_front(pts) == [6, 0, 3, 4]


def test_pareto_front_of_a_lower_is_better_metric_flips_the_quality():
    pts = [(1.0, 5.0), (2.0, 8.0), (2.0, 20.0), (3.0, 30.0), (1.5, 9.0)]  # e.g. FID: smaller is better
    assert pareto_front(pts, higher_is_better=False) == [0, 1, 3]


def test_pareto_front_keeps_equal_points_and_a_single_point():
    assert pareto_front([(2.0, 1.0), (2.0, 1.0), (1.0, 0.5)]) == [0, 1]
    assert pareto_front([(1.0, 1.0)]) == [0]


def test_toy_metrics_are_refused_on_other_models():
    assert resolve_metric("auto", toy=True) == "toy_fid" and resolve_metric("auto", toy=False) == "psnr_vs_vanilla"
    with pytest.raises(ValueError, match="only on the toy world"):
        resolve_metric("class_accuracy", toy=False)
    with pytest.raises(ValueError, match="choose one of"):
        resolve_metric("fid", toy=True)


# ------------------------------------------------------------------------------------------ chart
def _doc(metric: str = "toy_fid") -> dict:
    rows = [{"setting": "vanilla", "adapter": None, "paa": False, "speedup_e2e": 1.0, "toy_fid": 10.0},
            {"setting": "fastvar:aggressive", "adapter": None, "paa": False, "speedup_e2e": 2.5, "toy_fid": 40.0},
            {"setting": "fastvar:aggressive", "adapter": "paa_s0", "paa": True, "speedup_e2e": 2.5, "toy_fid": 20.0},
            {"setting": "fastvar:aggressive", "adapter": "paa_s1", "paa": True, "speedup_e2e": 2.5, "toy_fid": 24.0},
            {"setting": "stagevar:paper", "adapter": None, "paa": False, "speedup_e2e": 1.8, "toy_fid": 60.0}]
    groups = [{"setting": "fastvar:aggressive", "group": "paa", "adapters": ["paa_s0", "paa_s1"], "n": 2,
               "toy_fid": {"mean": 22.0, "std": 2.83, "min": 20.0, "max": 24.0}}]
    return {"rows": rows, "groups": groups, "quality_metric": metric, "speed_axis": "e2e", "num_samples": 200,
            "device": "cpu", "config": {"model": {"preset": "toy"}}}


def test_chart_points_put_each_adapter_group_at_its_mean_and_mark_the_front():
    points, front, links = chart_points(_doc()["rows"], _doc()["groups"], "toy_fid")
    assert [(p.label, p.series, p.x, p.y) for p in points] == [
        ("vanilla", "vanilla", 1.0, 10.0), ("fv:aggr", "accelerated", 2.5, 40.0),
        ("sv:paper", "accelerated", 1.8, 60.0), ("fv:aggr+paa", "accelerated + PAA", 2.5, 22.0)]
    assert points[3].yerr == 2.83
    assert [points[i].label for i in front] == ["vanilla", "fv:aggr+paa"]  # lower FID is better
    assert links == [(1, 3)]


@pytest.mark.parametrize("metric,values,self_value,front", [
    ("psnr_vs_vanilla", (20.0, 30.0, 25.0, 21.0, 22.0), math.inf, ["vanilla", "fv:aggr+paa"]),
    ("ssim_vs_vanilla", (0.6, 0.8, 0.7, 0.5, 0.9), 1.0, ["vanilla", "fv:aggr+paa"]),
    ("latent_distance", (0.3, None, None, 0.2, 0.1), 0.0, ["vanilla", "sv:paper", "fv:aggr"]),
])
def test_vanilla_is_the_reference_of_a_metric_against_vanilla_and_beats_every_slower_setting(metric, values,
                                                                                              self_value, front):
    """The rows record no PSNR / SSIM / latent distance of vanilla against itself: vanilla was left off the chart and
    the front, so a setting slower than vanilla and worse than it (here one at 0.8x) was on the Pareto front."""
    doc = _doc(metric)
    doc["rows"].append({"setting": "fastvar:mild", "adapter": None, "paa": False, "speedup_e2e": 0.8})
    for r, v in zip(doc["rows"][1:], values):
        r[metric] = v
    doc["groups"][0][metric] = None if values[1] is None else {"mean": (values[1] + values[2]) / 2, "std": 1.0}
    points, front_ix, _ = chart_points(doc["rows"], doc["groups"], metric)
    assert (points[0].label, points[0].x, points[0].y) == ("vanilla", 1.0, self_value)
    assert [points[i].label for i in front_ix] == front  # (fv:mild, 0.8x: off it)
    draw_chart(doc)  # (the infinite PSNR drawn above the others)


def test_chart_is_a_png_of_the_requested_size_with_each_series_drawn(tmp_path):
    path = tmp_path / "chart.png"
    draw_chart(_doc(), size=(800, 500)).save(path)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (800, 500)
        colours = {c for _, c in im.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert all(style[0] in colours for style in SERIES_STYLES.values())


def test_redraw_draws_an_earlier_result_with_another_metric(tmp_path, capsys):
    from radar_train.bench.tradeoff import redraw

    doc = _doc() | {"toy_fid": {"num_samples": 200}}
    for r, acc in zip(doc["rows"], (0.9, 0.5, 0.7, 0.75, 0.3)):
        r["class_accuracy"] = acc
    doc["groups"][0]["class_accuracy"] = {"mean": 0.725, "std": 0.035, "min": 0.7, "max": 0.75}
    result = tmp_path / "tradeoff.json"
    result.write_text(json.dumps(doc))
    assert redraw(str(result), str(tmp_path / "acc.png"), quality_metric="class_accuracy", speed="e2e") == 0
    with Image.open(tmp_path / "acc.png") as im:
        assert im.format == "PNG" and im.size == (960, 640)
    with pytest.raises(ValueError, match="--overwrite") as e:
        redraw(str(result), str(tmp_path / "acc.png"), quality_metric="class_accuracy")
    assert str(e.value).startswith("output ") and "--output" not in str(e.value)  # positionals: by their names
    with pytest.raises(ValueError, match="is the input result") as e:
        redraw(str(result), str(result), overwrite=True)
    assert "--output" not in str(e.value) and "--result" not in str(e.value)
    with pytest.raises(ValueError, match="not a radar-bench tradeoff result"):
        (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
        redraw(str(tmp_path / "other.json"), str(tmp_path / "x.png"))
    # the keys it checks, but a config the chart cannot be drawn from: one line, not draw_chart's KeyError
    (tmp_path / "other.json").write_text(json.dumps({k: doc[k] for k in ("rows", "groups", "quality_metric",
                                                                         "num_samples", "device")} | {"config": {}}))
    with pytest.raises(ValueError, match=r"not a radar-bench tradeoff result its chart can be drawn from \(KeyError"):
        redraw(str(tmp_path / "other.json"), str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


def test_the_redraw_module_help_names_the_command_to_type():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "radar_train.bench.tradeoff", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: python -m radar_train.bench.tradeoff "), r.stdout[:200]


# ------------------------------------------------------------------------------------------ smoke runs
def _run(argv: list[str]) -> int:
    from radar_train.cli.bench import main

    with pytest.raises(SystemExit) as e:
        main(["tradeoff", *argv])
    return e.value.code


def test_radar_bench_tradeoff_on_the_tiny_model(tmp_path, capsys):
    ads = _adapters("tiny", tmp_path / "adapters", ["paa_s0", "paa_s1"])
    out = tmp_path / "out"
    args = ["--setup.model.preset", "tiny", "--setup.settings", "[fastvar:aggressive, stagevar:default]",
            "--setup.adapters", json.dumps({"fastvar:aggressive": ads}), "--setup.num_samples", "4",
            "--setup.batch_size", "4", "--setup.timing.batch_size", "2", "--setup.timing.warmup", "0",
            "--setup.timing.repeats", "1", "--output", str(out)]
    assert _run(args) == 0
    captured = capsys.readouterr()  # (the progress on stderr, the table on stdout)
    assert "speed: 4 jobs" in captured.err and "quality: 3 sampling runs of 4 samples" in captured.err
    assert "speed: 4 jobs" not in captured.out and "| run | " in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["tradeoff.json", "tradeoff.md", "tradeoff.png"]
    doc = json.loads((out / "tradeoff.json").read_text())
    assert {"device", "torch", "commit", "date", "command", "rows", "groups", "pareto_front"} <= set(doc)
    assert doc["quality_metric"] == "psnr_vs_vanilla" and doc["num_samples"] == 4
    names = [(r["setting"], r["adapter"]) for r in doc["rows"]]
    assert names == [("vanilla", None), ("fastvar:aggressive", None), ("fastvar:aggressive", "paa_s0"),
                     ("fastvar:aggressive", "paa_s1"), ("stagevar:default", None)]
    by = {n: r for n, r in zip(names, doc["rows"])}
    assert by[("vanilla", None)]["speedup"] == 1.0 and by[("vanilla", None)]["psnr_vs_vanilla"] is None
    for r in doc["rows"][1:]:
        assert r["images_per_s"] > 0 and r["images_per_s_e2e"] > 0 and r["psnr_vs_vanilla"] < 100
        assert 0 < r["ssim_vs_vanilla"] < 1
    assert by[("fastvar:aggressive", None)]["latent_distance"] > 0
    s1 = by[("fastvar:aggressive", "paa_s1")]
    assert s1["timed_as"] == "paa_s0" and s1["speedup_e2e"] == by[("fastvar:aggressive", "paa_s0")]["speedup_e2e"]
    assert "g_mse" in s1 and "toy_fid" not in s1
    assert doc["groups"][0]["group"] == "paa" and doc["groups"][0]["n"] == 2
    with Image.open(out / "tradeoff.png") as im:
        assert im.format == "PNG" and im.size == (960, 640)
    assert "fastvar:aggressive + paa (mean ± sd of 2)" in (out / "tradeoff.md").read_text()

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _run(args) == 2  # an earlier result is not replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_radar_bench_tradeoff_checks_its_inputs_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--setup.model.preset", "tiny", "--output", str(out)]
    assert _run(base + ["--setup.settings", "[fastvar:nonsense]"]) == 2
    assert _run(base + ["--setup.settings", "[fastvar:default]",
                        "--setup.adapters", json.dumps({"fastvar:default": str(tmp_path / "missing")})]) == 2
    assert _run(base + ["--setup.quality_metric", "toy_fid"]) == 2
    toy = _adapters("toy", tmp_path / "adapters", ["paa"])["paa"]  # (an adapter of another model's VQ-VAE)
    assert _run(base + ["--setup.settings", "[fastvar:default]", "--setup.adapters",
                        json.dumps({"fastvar:default": toy}), "--setup.num_samples", "2", "--setup.batch_size", "2",
                        "--setup.timing.batch_size", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("error: ") for line in err), err
    assert "missing" in err[1] and "toy world" in err[2]
    assert err[3].startswith(f"error: --setup.adapters: adapter {toy} was trained for the VQ-VAE file:"), err[3]
    assert not out.exists()


def test_tradeoff_on_the_toy_world_reports_class_accuracy_toy_fid_and_the_fid_gap(tmp_path):
    ads = _adapters("toy", tmp_path / "adapters", ["paa"])
    cfg = TradeoffConfig(settings=["fastvar:aggressive"], adapters={"fastvar:aggressive": ads["paa"]},
                         model=ModelArgs(preset="toy"), num_samples=10, batch_size=10, fid_reference_images=12,
                         timing=TimingArgs(batch_size=2, warmup=0, repeats=1, device="cpu"))
    doc = run_tradeoff(cfg, log=lambda s: None)
    vanilla, acc, paa = doc["rows"]
    assert doc["quality_metric"] == "toy_fid" and doc["toy_fid"]["reference"]["num_images"] == 12
    assert vanilla["toy_fid_vs_vanilla"] == 0.0 and 0 <= vanilla["class_accuracy"] <= 1
    assert {"class_accuracy", "toy_fid", "toy_fid_vs_vanilla", "psnr_vs_vanilla"} <= set(acc)
    expected = (acc["toy_fid"] - paa["toy_fid"]) / (acc["toy_fid"] - vanilla["toy_fid"])
    assert paa["fid_gap_closed"] == pytest.approx(expected, abs=2e-4) and "g_mse" in paa
    assert "| toy FID |" in doc["markdown"]


def test_chart_labels_are_short():
    from radar_train.bench.tradeoff import _label

    assert _label("fastvar:aggressive") == "fv:aggr" and _label("stagevar:default") == "sv:def"
    assert _label("sca:scores+compute_budget=0.5+memory_budget=1+mask_file=w/toy_sca_mask_tile8.safetensors") \
        == "sca:c0.5+m1+mask"
    assert _label("sca:window+compute_budget=0.25") == "sca:window+c0.25"


def test_speed_ups_are_ratios_of_the_medians_and_images_per_s_keep_their_digits_on_a_slow_model():
    """A slow model (VAR-d36 on a CPU: about 0.005 images/s): the speed-ups came from images/s already rounded to 4
    decimals (StageVAR e2e 0.9687 for a true 0.9769), and the table showed images/s as 0.0."""
    from radar_train.bench.tradeoff import _fmt, speeds

    s = speeds({"vanilla": (443.79, 626.09), "stagevar:default": (443.10, 640.87)}, batch_size=2)
    assert s["stagevar:default"]["speedup_e2e"] == round(626.09 / 640.87, 4) == 0.9769
    assert s["stagevar:default"]["speedup"] == round(443.79 / 443.10, 4)
    assert s["vanilla"]["speedup"] == 1.0 and s["vanilla"]["images_per_s_e2e"] == 0.003194
    assert [_fmt(v, "ips") for v in (0.003194, 0.4521, 4.521, 45.21, 452.1)] == \
        ["0.00319", "0.452", "4.52", "45.2", "452.1"]
