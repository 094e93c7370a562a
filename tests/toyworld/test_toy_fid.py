"""Toy FID (Fréchet distance in the toy classifier's feature space), the FID gap closed, several adapters per
setting in `radar-toy measure`, and its report."""
from __future__ import annotations

import json
import math

import pytest
import torch

from radar_train.inference.fid import GaussianStats
from radar_train.toyworld.classifier import ToyClassifier
from radar_train.toyworld.common import make_bank
from radar_train.toyworld.fid import ToyFID, bank01, sample_count_notes, toy_features, toy_fid
from radar_train.toyworld.measure import (MeasureConfig, adapter_group, adapter_table, fid_gaps, group_summary,
                                          load_classifier, markdown_table, run_measure)


def _rotation(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


# ------------------------------------------------------------------------------------------ toy FID
def test_toy_fid_of_gaussians_with_known_parameters_is_the_closed_form():
    """Covariances R diag(a) Rᵀ and R diag(b) Rᵀ commute, so Tr((S1 S2)^½) = Σ √(a b) and the distance is
    ‖μ1 − μ2‖² + Σ (√a − √b)²."""
    R = _rotation(6, 0)
    a = torch.tensor([4.0, 1.0, 0.25, 2.0, 9.0, 0.5], dtype=torch.float64)
    b = torch.tensor([1.0, 1.0, 1.0, 3.0, 4.0, 2.0], dtype=torch.float64)
    mu1, mu2 = torch.arange(6.0, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    closed = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())  # 51 + 3.5 + …
    s1 = GaussianStats.from_moments(mu1, R @ torch.diag(a) @ R.T)
    s2 = GaussianStats.from_moments(mu2, R @ torch.diag(b) @ R.T)
    assert toy_fid(s1, s2) == pytest.approx(closed, rel=1e-9)
    assert toy_fid(s1, s1) == pytest.approx(0.0, abs=1e-9)


def test_toy_fid_from_samples_approaches_the_closed_form():
    """Feature statistics accumulated from samples of two known Gaussians (in batches, as the measurement
    feeds them): the distance converges to the closed form."""
    g = torch.Generator().manual_seed(1)
    R = _rotation(4, 2)
    a, b = torch.tensor([1.0, 4.0, 0.25, 1.0]), torch.tensor([2.0, 1.0, 1.0, 0.5])
    mu1, mu2 = torch.tensor([0.0, 1.0, 0.0, -1.0]), torch.tensor([0.5, 0.0, 0.0, 1.0])
    closed = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    stats = []
    for mu, var in ((mu1, a), (mu2, b)):
        s = GaussianStats()
        for _ in range(10):
            x = torch.randn(20_000, 4, generator=g, dtype=torch.float64) * var.sqrt().double()
            s.update(x @ R.T + mu.double())
        stats.append(s)
    assert toy_fid(*stats) == pytest.approx(closed, rel=0.02)


def test_toy_features_are_what_the_classifier_head_reads():
    torch.manual_seed(0)
    clf = ToyClassifier(width=8).eval()
    x = torch.rand(5, 3, 64, 64)
    f = toy_features(clf, x, batch_size=2)
    assert f.shape == (5, 64)
    torch.testing.assert_close(clf.head(f), clf(x), rtol=1e-5, atol=1e-5)


def test_toy_fid_against_the_reference_and_the_vanilla_samples():
    fid = ToyFID(load_classifier(), num_reference=12)
    vanilla = bank01(make_bank(3, 10))
    other = vanilla * 0.5  # darker renders of the same shapes
    v = fid.set_vanilla(vanilla)
    m = fid.measure(other)
    assert set(m) == {"toy_fid", "toy_fid_vs_vanilla"}
    assert fid.measure(vanilla)["toy_fid_vs_vanilla"] == pytest.approx(0.0, abs=1e-3)  # round-off only
    assert fid.measure(vanilla)["toy_fid"] == pytest.approx(v["toy_fid"])
    assert m["toy_fid_vs_vanilla"] > 0.1 * v["toy_fid"] > 0


def test_sample_count_notes_flag_rank_deficient_covariances():
    assert len(sample_count_notes(200, 128)) == 1
    few = sample_count_notes(100, 128)
    assert len(few) == 2 and "rank-deficient" in few[1] and "129" in few[1]


# ------------------------------------------------------------------------------------------ gap closed
def test_fid_gap_closed_is_the_papers_formula():
    acc, vanilla = {"toy_fid": 30.0, "toy_fid_vs_vanilla": 20.0}, {"toy_fid": 10.0}
    paa = {"toy_fid": 20.0, "toy_fid_vs_vanilla": 5.0}
    gaps = fid_gaps(acc, paa, vanilla)
    assert gaps["fid_gap_closed"] == pytest.approx((30 - 20) / (30 - 10))
    assert gaps["fid_gap_closed_vs_vanilla"] == pytest.approx((20 - 5) / 20)  # vanilla vs itself is 0
    assert fid_gaps(acc, {"toy_fid": 40.0, "toy_fid_vs_vanilla": 25.0}, vanilla)["fid_gap_closed"] == pytest.approx(-0.5)
    assert fid_gaps({"toy_fid": 10.0}, paa, vanilla)["fid_gap_closed"] is None  # no gap to close


# ------------------------------------------------------------------------------------------ several adapters
def test_adapter_table_accepts_one_folder_or_named_folders():
    table = adapter_table({"fastvar:aggressive": {"paa_s0": "a", "paa_s1": "b"}, "stagevar:paper": "c"},
                          ["fastvar:aggressive", "stagevar:paper"])
    assert table == {"fastvar:aggressive": {"paa_s0": "a", "paa_s1": "b"}, "stagevar:paper": {"paa": "c"}}
    with pytest.raises(ValueError, match="not in --setup.methods"):
        adapter_table({"stagevar:paper": "c"}, ["fastvar:default"])
    with pytest.raises(ValueError, match="adapter name"):
        adapter_table({"fastvar:default": {"a b": "c"}}, ["fastvar:default"])
    with pytest.raises(ValueError, match="non-empty mapping"):
        adapter_table({"fastvar:default": {}}, ["fastvar:default"])


@pytest.mark.parametrize("name, group", [("paa_s0", "paa"), ("paa_s12", "paa"), ("label_cond-s1", "label_cond"),
                                         ("radar_seed2", "radar"), ("paa_3", "paa"), ("paa", "paa"),
                                         ("label_cond", "label_cond"), ("s0", "s0")])
def test_adapter_group_drops_a_seed_suffix(name, group):
    assert adapter_group(name) == group


def test_group_summary_gives_mean_and_spread_per_group():
    rows = {"paa_s0": {"adapter": "a", "g_mse": 0.4, "toy_fid": 20.0},
            "paa_s1": {"adapter": "b", "g_mse": 0.6, "toy_fid": 24.0},
            "label_s0": {"adapter": "c", "g_mse": 0.7, "toy_fid": 18.0}}
    groups = group_summary(rows)
    assert list(groups) == ["paa", "label"]
    paa = groups["paa"]
    assert paa["adapters"] == ["paa_s0", "paa_s1"] and paa["n"] == 2
    assert paa["g_mse"]["mean"] == pytest.approx(0.5) and paa["g_mse"]["std"] == pytest.approx(math.sqrt(0.02), abs=1e-4)
    assert paa["toy_fid"] == {"mean": 22.0, "std": pytest.approx(2.8284, abs=1e-4), "min": 20.0, "max": 24.0}
    assert groups["label"]["g_mse"]["std"] is None and "adapter" not in paa


def _report(methods: dict) -> dict:
    return {"reconstruction": {"num_images": 8, "psnr_db": 24.5},
            "toy_fid": {"num_samples": 200, "features": "f", "reference": {"num_images": 1000, "world_seed": 2},
                        "baselines": {"real_renders": 1.5}, "notes": ["n"]},
            "vanilla": {"class_accuracy": 0.9, "toy_fid": 3.0}, "methods": methods}


def test_markdown_table_has_a_row_per_adapter_and_per_group_of_several():
    rows = {"paa_s0": {"psnr_vs_vanilla": 21.0, "class_accuracy": 0.7, "toy_fid": 5.0, "g_mse": 0.5},
            "paa_s1": {"psnr_vs_vanilla": 22.0, "class_accuracy": 0.8, "toy_fid": 6.0, "g_mse": 0.6},
            "label": {"psnr_vs_vanilla": 23.0, "class_accuracy": 0.9, "toy_fid": 4.0, "g_mse": 0.7}}
    md = markdown_table(_report({"fastvar:aggressive": {"psnr_vs_vanilla": 19.0, "class_accuracy": 0.5,
                                                        "toy_fid": 9.0, "adapters": rows,
                                                        "groups": group_summary(rows)}}))
    body = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| run") and "---" not in ln]
    assert [ln.split(" | ")[0][2:] for ln in body] == [
        "vanilla", "fastvar:aggressive", "fastvar:aggressive + paa_s0", "fastvar:aggressive + paa_s1",
        "fastvar:aggressive + label", "fastvar:aggressive + paa (mean ± sd of 2)"]
    assert "| 21.50 ± 0.71 | 75.0 % ± 7.1 % | 5.50 ± 0.71 |" in body[-1]
    assert "toy FID" in md.splitlines()[4] and "200 samples per run" in md


# ------------------------------------------------------------------------------------------ radar-toy measure
@pytest.fixture(scope="module")
def toy_adapters(tmp_path_factory) -> dict[str, str]:
    """Two adapters (random LoRA weights) for the shipped toy VQ-VAE."""
    from radar_train.bench.pipeline import random_adapter
    from radar_train.export.adapter import save_adapter
    from radar_train.models import load_models

    vqvae, _, vae_id, _ = load_models("toy", with_var=False)
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for i, name in enumerate(["paa_s0", "paa_s1"]):
        peft_model, _ = random_adapter(vqvae.latent_decoder(), rank=2, seed=i)
        out[name] = str(save_adapter(peft_model, root / name, {"base": {"vae": vae_id.to_dict()}}))
    return out


def test_measure_reports_toy_fid_and_each_adapter(toy_adapters, tmp_path):
    cfg = MeasureConfig(methods=["fastvar:aggressive"], adapters={"fastvar:aggressive": toy_adapters},
                        images_per_class=1, num_heldout_images=2, fid_reference_images=12, grid_samples=1)
    report = run_measure(cfg, str(tmp_path))
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["num_samples"] == 10 and doc["toy_fid"]["num_samples"] == 10
    assert doc["toy_fid"]["reference"] == {"kind": "toy renders", "world_seed": 2, "num_images": 12}
    assert len(doc["toy_fid"]["notes"]) == 2  # 10 samples < 129: rank-deficient, said so
    assert {"class_accuracy", "toy_fid"} <= set(doc["vanilla"])
    row = doc["methods"]["fastvar:aggressive"]
    assert {"class_accuracy", "psnr_vs_vanilla", "toy_fid", "toy_fid_vs_vanilla"} <= set(row)
    assert set(row["adapters"]) == {"paa_s0", "paa_s1"} and row["groups"]["paa"]["n"] == 2
    for name, r in row["adapters"].items():
        assert {"class_accuracy", "psnr_vs_vanilla", "toy_fid", "g_mse", "fid_gap_closed", "delta_psnr"} <= set(r)
        assert r["adapter_dir"] == toy_adapters[name]
        expected = (row["toy_fid"] - r["toy_fid"]) / (row["toy_fid"] - doc["vanilla"]["toy_fid"])
        assert r["fid_gap_closed"] == pytest.approx(expected, abs=2e-4)
    assert "fastvar:aggressive + paa (mean ± sd of 2)" in report["markdown"]
    assert [(r["run"], r["adapter"]) for r in doc["rows"]] == [
        ("vanilla", None), ("fastvar:aggressive", None), ("fastvar:aggressive + paa_s0", "paa_s0"),
        ("fastvar:aggressive + paa_s1", "paa_s1")]
    assert doc["rows"][2]["g_mse"] == row["adapters"]["paa_s0"]["g_mse"]
    assert {"device", "torch", "commit", "date", "command"} <= set(doc)


def test_measure_checks_a_label_conditioned_adapter_against_the_var_s_class_count(tmp_path, monkeypatch):
    """A FiLM adapter of 7 classes is loaded for a VAR of 7 classes (not checked against the toy world's 10),
    and refused for the shipped 10-class toy VAR. The 7-class VAR is the toy one with its class count changed:
    the run is stopped once the adapters are loaded."""
    import types

    from radar_train.bench.pipeline import random_adapter
    from radar_train.export.adapter import save_adapter
    from radar_train.export.label_conditioning import ClassFiLM, group_norms
    from radar_train.models import load_models
    from radar_train.toyworld import measure

    models = load_models("toy")
    vqvae, var, vae_id, _ = models
    peft_model, _ = random_adapter(vqvae.latent_decoder(), rank=2)
    film = ClassFiLM(group_norms(peft_model), 7, 4)
    folder = str(save_adapter(peft_model, tmp_path / "film7", {"base": {"vae": vae_id.to_dict()}}, conditioning=film))
    cfg = MeasureConfig(methods=["fastvar:aggressive"], adapters={"fastvar:aggressive": folder}, images_per_class=1)

    class Loaded(Exception):
        pass

    def stop(_cfg):
        raise Loaded

    monkeypatch.setattr(measure, "sample_plan", stop)
    var7 = types.SimpleNamespace(num_classes=7, patch_nums=var.patch_nums, depth=var.depth)
    monkeypatch.setattr(measure, "load_models", lambda *a, **k: (vqvae, var7, vae_id, None))
    with pytest.raises(Loaded):
        run_measure(cfg)
    monkeypatch.setattr(measure, "load_models", lambda *a, **k: models)
    with pytest.raises(ValueError, match="conditioned on 7 classes, the model has 10"):
        run_measure(cfg)


def test_measure_refuses_to_replace_an_earlier_result_before_any_work(tmp_path):
    (tmp_path / "metrics.json").write_text("earlier")
    with pytest.raises(ValueError, match="--overwrite"):
        run_measure(MeasureConfig(methods=["fastvar:aggressive"], images_per_class=1), str(tmp_path))
    assert (tmp_path / "metrics.json").read_text() == "earlier"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
