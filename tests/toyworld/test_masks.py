"""radar-toy masks: achieved attention shares on hand-checked cases, the settings and their specs, the 50 %
cache configs equal to the experiment's settings, and a smoke run of the command (files, adapter, refusal)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from radar_train.accel import FastVAR
from radar_train.accel.spec import build_spec
from radar_train.toyworld.masks import (MasksConfig, adapters_by_spec, attention_share, pair_shares, plan_settings,
                                        scale_pairs)

TOY = (1, 2, 3, 4, 6, 8)
REPO = Path(__file__).resolve().parents[2]


def test_vanilla_pairs_per_scale():
    # l * e: 1*1, 4*5, 9*14, 16*30, 36*66, 64*130
    assert scale_pairs(TOY) == {1: 1, 2: 20, 3: 126, 4: 480, 6: 2376, 8: 8320}


def test_fastvar_pair_shares_by_hand():
    # scale 8 keeps 64 - 32 = 32 queries, which attend to the 66 cached keys and their own 32: 32 * 98 of 64 * 130
    s = pair_shares(FastVAR(prune=((8, 0.5),)), TOY, depth=4)
    assert s[8] == pytest.approx(32 * 98 / (64 * 130)) and all(s[p] == 1.0 for p in (1, 2, 3, 4, 6))
    # over scales 4, 6, 8: (480 + 2376 + 3136) / 11176; over every scale: (11323 - 8320 + 3136) / 11323
    assert attention_share(s, TOY, (4, 6, 8)) == pytest.approx(5992 / 11176)
    assert attention_share(s, TOY) == pytest.approx(6139 / 11323)
    # pruning scale 6 leaves scale 8 fewer keys: 18 of 36 kept (30 + 18 keys); scale 8 whole: 64 * (48 + 64)
    s = pair_shares(FastVAR(prune=((6, 0.5),)), TOY, depth=4)
    assert s[6] == pytest.approx(18 * 48 / (36 * 66)) and s[8] == pytest.approx(64 * 112 / (64 * 130))
    # ratio 1 skips the scale; pruning only in blocks 0 and 1 of 4 halves the saving
    assert pair_shares(FastVAR(prune=((6, 0.5), (8, 1.0))), TOY, depth=4)[8] == 0.0
    half = pair_shares(FastVAR(prune=((8, 0.5),), layers=(0, 1)), TOY, depth=4)[8]
    assert half == pytest.approx((2 * 32 * 98 / (64 * 130) + 2) / 4)


def test_sca_pair_share_of_the_smallest_window_mask_by_hand():
    # tile 8, scale 4 (tokens 14-29, keys 0-29 in key tiles of 8, 8, 8, 6): each of the 2 query tiles keeps only
    # its protected tiles (the sink tile 0 and the two tiles its tokens overlap): 8 * (8 + 8 + 8) + 8 * (8 + 8 + 6)
    m = build_spec("sca:window+compute_budget=0.1+tile=8", TOY, 4)
    assert pair_shares(m, TOY, 4)[4] == pytest.approx(368 / 480)
    assert pair_shares(build_spec("sca:window+compute_budget=1+tile=8", TOY, 4), TOY, 4) == {p: 1.0 for p in TOY}


def test_settings_specs_and_adapter_keys():
    settings = plan_settings(MasksConfig(budgets=[1.0, 0.5]), TOY, 4)
    names = [s.name for s in settings]
    assert names == ["sca@1", "sca@0.5", "window@1", "window@0.5", "pts@1", "pts@0.5"]
    by = {s.name: s for s in settings}
    assert [by[n].vanilla for n in names] == [True, False, True, False, True, False]
    assert by["window@0.5"].spec == "sca:window+compute_budget=0.5+tile=8"  # the mask file's tile
    assert by["pts@0.5"].spec == "fastvar:budget=0.5"
    assert by["sca@0.5"].method.tile == 8 and by["sca@0.5"].method.memory_budget == 1.0
    for s in settings:  # every budget-0.5 setting lands near half of the active scales' attention
        share = attention_share(s.shares, TOY, (4, 6, 8))
        assert share == 1.0 if s.vanilla else 0.45 < share < 0.56
    spec_key = adapters_by_spec({"sca@0.5": "a", by["pts@0.5"].spec: "b"}, settings)
    assert spec_key == {by["sca@0.5"].spec: "a", "fastvar:budget=0.5": "b"}
    with pytest.raises(ValueError, match="'pts@0.25' is not a measured setting"):
        adapters_by_spec({"pts@0.25": "a"}, settings)
    with pytest.raises(ValueError, match="exactly what vanilla computes"):
        adapters_by_spec({"window@1": "a"}, settings)


@pytest.mark.parametrize("cfg, match", [
    (MasksConfig(families=["sca", "lite"]), "--setup.families"),
    (MasksConfig(budgets=[0.5, 0.0]), r"--setup.budgets \[0.5, 0.0\]"),
    (MasksConfig(budgets=[0.5, 0.5]), "lists a budget twice"),
    (MasksConfig(mask_file="missing.safetensors"), "--setup.mask_file: missing.safetensors"),
])
def test_bad_settings_are_refused(cfg, match):
    with pytest.raises(ValueError, match=match):
        plan_settings(cfg, TOY, 4)


@pytest.mark.parametrize("family", ["sca", "window", "pts"])
def test_the_50_percent_cache_configs_run_the_experiments_setting(family):
    from radar_train.accel import build_accel
    from radar_train.cli.cache import build_run_parser, run_args

    path = REPO / "configs" / "cache" / f"toy_large_{family}50.yaml"
    args = run_args(build_run_parser().parse_args(["--config", str(path)]))
    assert (args.plan.images_per_class, args.plan.shard_size, args.plan.base_seed) == (256, 64, 0)
    assert (args.sampling.cfg, args.sampling.top_k, args.sampling.top_p) == (3.0, 32, 0.0)
    setting = {s.family: s for s in plan_settings(MasksConfig(budgets=[0.5]), TOY, 4)}[family]
    method = build_accel(args.accel, TOY, 4)
    assert method == setting.method and method.describe() == setting.method.describe() | (
        {"mask_file": method.describe()["mask_file"]} if family == "sca" else {})


def _adapter(root: Path) -> str:
    from radar_train.bench.pipeline import random_adapter
    from radar_train.export.adapter import save_adapter
    from radar_train.models import load_models

    vqvae, _, vae_id, _ = load_models("toy", with_var=False)
    peft_model, _ = random_adapter(vqvae.latent_decoder(), rank=2, seed=0)
    return str(save_adapter(peft_model, root, {"base": {"vae": vae_id.to_dict()}}))


def _main(*argv: str) -> int:
    from radar_train.cli.toy import main

    with pytest.raises(SystemExit) as e:
        main(list(argv))
    return e.value.code


def test_radar_toy_masks_smoke(tmp_path, capsys, caplog):
    caplog.set_level("INFO")
    out = tmp_path / "out"
    args = ["masks", "--setup.families", "[sca, pts]", "--setup.budgets", "[1.0, 0.5]",
            "--setup.adapters", json.dumps({"sca@0.5": _adapter(tmp_path / "paa")}),
            "--setup.images_per_class", "1", "--setup.fid_reference_images", "12", "--setup.num_heldout_images", "4",
            "--setup.batch_size", "10", "--output", str(out)]
    assert _main(*args) == 0
    progress = [m for m in caplog.messages if m.startswith("radar-toy ")]  # (they said radar-toy measure)
    assert progress and all(m.startswith("radar-toy masks: ") for m in progress), progress
    assert sorted(p.name for p in out.iterdir()) == ["masks.json", "masks.md", "masks.png"]
    doc = json.loads((out / "masks.json").read_text())
    assert {"device", "torch", "commit", "date", "command"} <= set(doc)
    rows = {r["name"]: r for r in doc["settings"]}
    assert list(rows) == ["sca@1", "sca@0.5", "pts@1", "pts@0.5"]
    assert rows["sca@1"]["same_as_vanilla"] and rows["sca@1"]["class_accuracy"] == doc["vanilla"]["class_accuracy"]
    for name in ("sca@0.5", "pts@0.5"):
        r = rows[name]
        assert 0 <= r["class_accuracy"] <= 1 and r["psnr_vs_vanilla"] < 60 and r["toy_fid"] > 0
        assert set(r["attention_share"]["per_scale"]) == {"4", "6", "8"}
        assert 0.45 < r["attention_share"]["active_scales"] < 0.56
    paa = rows["sca@0.5"]["adapters"]["paa"]
    assert {"class_accuracy", "psnr_vs_vanilla", "toy_fid", "g_mse"} <= set(paa) and "adapters" not in rows["pts@0.5"]
    t = doc["targets"]
    assert t["sca_vs_pts_at_0.5"]["met"] == (rows["sca@0.5"]["class_accuracy"] >= rows["pts@0.5"]["class_accuracy"])
    assert t["paa_at_0.5"]["sca+paa"]["class_accuracy"] == paa["class_accuracy"]
    md = (out / "masks.md").read_text()
    assert "| sca@0.5 + paa |" in md and "attention kept (4 / 6 / 8)" in md
    # the toy FID's floor at this count and the warning below D + 1 samples, as the other toy-FID reports state them
    assert "(the floor at this count)" in md and "the sample covariances are rank-deficient" in md
    with Image.open(out / "masks.png") as im:
        assert im.format == "PNG" and im.size == (1600, 560)

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert _main(*args) == 2  # an earlier result is not replaced without --overwrite, checked before any work
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--overwrite" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_chart_lines_join_a_series_and_hlines_are_drawn():
    import numpy as np

    from radar_train.images import ChartPoint, scatter_chart

    red, blue = (214, 39, 40), (31, 119, 180)
    pts = [ChartPoint(0.25, 0.6, "", "a"), ChartPoint(1.0, 1.0, "", "a"), ChartPoint(0.5, 0.9, "PAA", "b")]
    styles = {"a": (red, "circle"), "b": (blue, "diamond")}

    def count(img, colour):
        return int((np.asarray(img) == np.array(colour, dtype=np.uint8)).all(-1).sum())

    plain = scatter_chart(pts, "x", "y", styles=styles)
    joined = scatter_chart(pts, "x", "y", styles=styles, lines=["a"])
    assert count(joined, red) > count(plain, red) + 100  # a line of some 400 px between the two points
    assert count(joined, blue) == count(plain, blue)  # series b is not joined
    ref = scatter_chart(pts, "x", "y", styles=styles, hlines=[(0.95, "vanilla")])
    assert count(ref, (40, 40, 40)) > count(plain, (40, 40, 40)) + 100
