"""radar-fid: Fréchet distance against torchmetrics, extractor / reference loading errors, the sample loop,
and the CLI on the tiny preset with tiny TorchScript extractors."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fid_helpers import Pool, save_extractors
from radar_train.inference.fid import (FidError, GaussianStats, evaluate_generation, frechet_distance,
                                       inception_score_parts, load_inception, reference_stats, sample_count_notes)

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


class _Identity(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture(scope="module")
def extractors(tmp_path_factory) -> dict:
    return save_extractors(tmp_path_factory.mktemp("inception"))


def test_frechet_distance_matches_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 16, generator=g, dtype=torch.float64)
    fake = torch.randn(200, 16, generator=g, dtype=torch.float64) @ (torch.eye(16, dtype=torch.float64)
                                                                     + 0.3 * torch.randn(16, 16, generator=g,
                                                                                         dtype=torch.float64)) + 0.5
    tm = FrechetInceptionDistance(feature=_Identity(16), normalize=True)
    tm.update(real, real=True)
    tm.update(fake, real=False)
    want = float(tm.compute())

    a, b = GaussianStats(), GaussianStats()
    for chunk in real.split(64):  # streaming statistics equal the one-shot ones
        a.update(chunk)
    b.update(fake)
    torch.testing.assert_close(a.sigma, torch.cov(real.T), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.mu, real.mean(0), rtol=1e-12, atol=1e-12)
    got = frechet_distance(b.mu, b.sigma, a.mu, a.sigma)
    assert want > 1.0 and got == pytest.approx(want, rel=1e-6)
    assert frechet_distance(a.mu, a.sigma, b.mu, b.sigma) == pytest.approx(got, rel=1e-9)  # symmetric


def test_fid_of_a_set_with_itself_is_zero():
    g = torch.Generator().manual_seed(1)
    for n in (500, 10):  # full-rank and rank-deficient (n < D) covariances
        s = GaussianStats()
        s.update(torch.randn(n, 16, generator=g) * 3 + 1)
        # 1e-7: square roots of round-off at the zero eigenvalues of a rank-deficient covariance
        assert abs(frechet_distance(s.mu, s.sigma, s.mu, s.sigma)) < 1e-7 * float(s.sigma.trace())


def test_the_rank_note_starts_where_the_covariance_loses_rank():
    for n, deficient in ((16, True), (17, False)):  # 16 samples in 16-d: rank 15 at most
        s = GaussianStats()
        s.update(torch.randn(n, 16, generator=torch.Generator().manual_seed(n)))
        assert (int(torch.linalg.matrix_rank(s.sigma)) < 16) == deficient
        assert any("rank-deficient" in note for note in sample_count_notes(n, 16)) == deficient


def test_reference_npz_and_its_errors(tmp_path):
    mu, sigma = np.arange(4.0), np.eye(4) * 2
    np.savez(tmp_path / "ref.npz", mu=mu, sigma=sigma, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    s = reference_stats(str(tmp_path / "ref.npz"))
    assert s.dim == 4 and torch.equal(s.mu, torch.arange(4.0, dtype=torch.float64))
    np.savez(tmp_path / "nomu.npz", sigma=sigma, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(FidError, match=r"nomu\.npz: no mu array \(keys: arr_0, sigma\)") as e:
        reference_stats(str(tmp_path / "nomu.npz"))
    assert "\n" not in str(e.value)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(FidError, match=r"bad\.npz: not a readable \.npz"):
        reference_stats(str(tmp_path / "bad.npz"))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        reference_stats(str(tmp_path / "missing.npz"))


def test_reference_statistics_whose_sigma_is_no_covariance_are_refused(tmp_path):
    """A sigma that is not symmetric positive semi-definite, or complex statistics, gave a FID below zero (or one
    whose imaginary part was dropped) with exit 0; a true covariance with float rounding in it is accepted."""
    g = np.random.default_rng(0)
    x = g.standard_normal((50, 6))
    mu, cov = x.mean(0), np.cov(x, rowvar=False)
    low_rank = np.cov(x[:4], rowvar=False)  # 4 samples, 6 dimensions: singular, eigenvalues ~0 of either sign
    jitter = cov + np.triu(np.full((6, 6), 1e-9 * np.abs(cov).max()), 1)  # rounding-sized asymmetry
    for name, sigma in (("cov", cov), ("low_rank", low_rank), ("jitter", jitter)):
        np.savez(tmp_path / f"{name}.npz", mu=mu, sigma=sigma)
        assert reference_stats(str(tmp_path / f"{name}.npz")).dim == 6
    cases = {"negative": (mu, -np.eye(6), "sigma has a negative eigenvalue (-1)"),
             "triangular": (mu, np.triu(np.ones((6, 6))), "sigma is not symmetric"),
             "indefinite": (mu, np.diag([1.0, 1, 1, 1, 1, -0.5]), "sigma has a negative eigenvalue (-0.5)"),
             "complex": (mu + 1j, cov.astype(complex), "mu / sigma are complex, not real")}
    for name, (m, sigma, reason) in cases.items():
        np.savez(tmp_path / f"{name}.npz", mu=m, sigma=sigma)
        with pytest.raises(FidError) as e:
            reference_stats(str(tmp_path / f"{name}.npz"))
        assert str(e.value).startswith(f"--reference {tmp_path / name}.npz: {reason}"), str(e.value)
        assert str(e.value).endswith("damaged reference statistics")


def test_load_inception_contract_and_errors(extractors, tmp_path):
    ext = load_inception(str(extractors["features"]))
    out = ext(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8))
    assert out.shape == (3, 16) and out.dtype == torch.float32
    with pytest.raises(FileNotFoundError, match=r"--inception .*nope\.pt: file not found"):
        load_inception(str(tmp_path / "nope.pt"))
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 10)
    torch.save(Pool(16, 0).state_dict(), tmp_path / "state.pt")
    for name in ("junk.pt", "state.pt"):
        with pytest.raises(FidError, match=rf"{name}: not a TorchScript .* archive") as e:
            load_inception(str(tmp_path / name))
        assert "\n" not in str(e.value)


def test_load_torch_export_archive(tmp_path):
    batch = torch.export.Dim("batch")
    ep = torch.export.export(Pool(16, 0), (torch.zeros(2, 3, 32, 32, dtype=torch.uint8),),
                             dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(tmp_path / "pool16.pt2"))
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(load_inception(str(tmp_path / "pool16.pt2"))(x), Pool(16, 0)(x))


class _StubPipe:
    """compare(labels, seeds): vanilla images from the seed, accelerated = vanilla + strong noise,
    accelerated+adapter = vanilla + weaker noise."""

    def __init__(self):
        self.var = SimpleNamespace(num_classes=3)
        self.device = torch.device("cpu")
        self.calls = []

    def compare(self, labels, seeds):
        self.calls.append((list(labels), list(seeds)))
        van, acc, ada = [], [], []
        for c, s in zip(labels, seeds):
            g = torch.Generator().manual_seed(s)
            base = torch.rand(3, 16, 16, generator=g) * 200 + c * 10
            noise = torch.randn(3, 16, 16, generator=g)
            van.append(base)
            acc.append(base + 40 * noise)
            ada.append(base + 15 * noise)
        u8 = lambda xs: torch.stack(xs).round().clamp(0, 255).to(torch.uint8)  # noqa: E731
        return {"vanilla": u8(van), "accelerated": u8(acc), "accelerated+adapter": u8(ada)}


def test_sample_loop_classes_seeds_and_gap(extractors):
    feats, logits = load_inception(str(extractors["features"])), load_inception(str(extractors["logits"]), "--il")
    pipe = _StubPipe()
    ref = GaussianStats()
    for i in range(0, 40, 8):  # reference = the vanilla distribution of other seeds
        ref.update(feats(pipe.compare([j % 3 for j in range(i, i + 8)], list(range(1000 + i, 1008 + i)))["vanilla"]))
    pipe.calls.clear()
    r = evaluate_generation(pipe, feats, logits, ref, num_samples=30, batch_size=8, base_seed=5, is_splits=3)
    assert [len(c[0]) for c in pipe.calls] == [8, 8, 8, 6]
    assert sum((c[0] for c in pipe.calls), []) == [i % 3 for i in range(30)]
    assert sum((c[1] for c in pipe.calls), []) == [5 + i for i in range(30)]
    assert r["runs"] == ["vanilla", "accelerated", "accelerated+adapter"] and r["num_samples"] == 30
    van = r["fid_vs_vanilla"]
    assert set(van) == {"accelerated", "accelerated+adapter"} and van["accelerated"] > van["accelerated+adapter"] > 0
    ref_fid = r["fid_vs_reference"]
    assert ref_fid["accelerated"] > ref_fid["accelerated+adapter"] and ref_fid["accelerated"] > ref_fid["vanilla"]
    gap = r["gap_closed"]
    assert gap["fid_vs_vanilla"] == pytest.approx(1 - van["accelerated+adapter"] / van["accelerated"])
    assert gap["fid_vs_reference"] == pytest.approx((ref_fid["accelerated"] - ref_fid["accelerated+adapter"])
                                                    / (ref_fid["accelerated"] - ref_fid["vanilla"]))
    assert set(r["inception_score"]) == set(r["runs"]) and all(v["mean"] >= 1.0 for v in r["inception_score"].values())
    again = evaluate_generation(_StubPipe(), feats, logits, ref, num_samples=30, batch_size=16, base_seed=5,
                                is_splits=3)
    assert again["fid_vs_reference"] == pytest.approx(ref_fid, rel=1e-5)  # batch-size independent (fp32 features)
    assert again["inception_score"] == r["inception_score"]


def _main(argv):
    from radar_train.cli.fid import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def test_cli_writes_fid_json_on_the_tiny_preset(extractors, tmp_path, capsys):
    refdir = tmp_path / "real"
    refdir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(refdir / f"{i}.png")
    out = tmp_path / "fid"
    common = ["--config", str(ROOT / "configs/generate/tiny.yaml"), "--device", "cpu", "--num_samples", "12",
              "--batch_size", "6", "--inception", str(extractors["features"])]
    code = _main(common + ["--inception_logits", str(extractors["logits"]), "--reference", str(refdir),
                           "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    r = json.loads((out / "fid.json").read_text())
    for key in ("num_samples", "runs", "fid_vs_reference", "fid_vs_vanilla", "inception_score", "gap_closed",
                "feature_dim", "image_size", "notes", "protocol"):
        assert key in r, key
    assert r["num_samples"] == 12 and r["runs"] == ["vanilla", "accelerated"] and r["feature_dim"] == 16
    assert set(r["fid_vs_reference"]) == {"vanilla", "accelerated"} and set(r["fid_vs_vanilla"]) == {"accelerated"}
    assert r["fid_vs_vanilla"]["accelerated"] > 0 and r["gap_closed"] is None
    assert set(r["inception_score"]) == {"vanilla", "accelerated"}
    assert r["is_splits"] == 6 and any("IS over 6 parts, not the 10 asked for" in n for n in r["notes"])  # 12 = 6 x 2
    assert r["protocol"]["model"] == "tiny" and len(r["protocol"]["inception"]["sha256"]) == 64
    assert r["protocol"]["sampling"]["top_k"] == 64 and r["protocol"]["reference"]["num_images"] == 6
    # the precisions as used (--precision auto is float32 on the CPU), named as generate.json names them
    assert (r["protocol"]["precision"], r["protocol"]["decode_precision"]) == ("torch.float32", "torch.float32")
    assert "| accelerated |" in (out / "fid.md").read_text()
    # the saved folder statistics are reusable as --reference and give the same numbers
    out2 = tmp_path / "fid2"
    assert _main(common + ["--reference", str(out / "reference_stats.npz"), "--output", str(out2)]) == 0
    r2 = json.loads((out2 / "fid.json").read_text())
    assert r2["fid_vs_reference"] == pytest.approx(r["fid_vs_reference"], rel=1e-9)
    assert r2["inception_score"] is None
    # again into the first folder: its reference_stats.npz as this run's --reference stays; any other .npz
    # reference makes it an earlier run's file, which --overwrite removes (it would stand beside this fid.json)
    saved = (out / "reference_stats.npz").read_bytes()
    again = common + ["--output", str(out), "--overwrite", "true", "--reference"]
    assert _main(again + [str(out / "reference_stats.npz")]) == 0
    assert (out / "reference_stats.npz").read_bytes() == saved
    (tmp_path / "elsewhere.npz").write_bytes(saved)
    assert _main(again + [str(tmp_path / "elsewhere.npz")]) == 0
    assert not (out / "reference_stats.npz").exists() and (tmp_path / "elsewhere.npz").read_bytes() == saved


class _FloatOnly(nn.Module):
    """An Inception-like network saved as it is: it wants float input, not the contract's uint8."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


@pytest.mark.parametrize("case", ["missing_inception", "corrupt_inception", "reference_without_mu",
                                  "float_only_inception", "reference_of_another_dimension",
                                  "more_splits_than_samples"])
def test_cli_errors_are_one_line_exit_2(case, extractors, tmp_path, capsys, monkeypatch):
    from radar_train.inference import RadarPipeline

    def no_sampling(*a, **k):
        raise AssertionError("the error must come before the pipeline is built and sampling starts")

    monkeypatch.setattr(RadarPipeline, "from_config", no_sampling)
    bad = tmp_path / "bad.bin"
    args = ["--model.preset", "tiny", "--device", "cpu", "--num_samples", "4", "--output", str(tmp_path / "o")]
    if case == "missing_inception":
        args += ["--inception", str(bad)]
    elif case == "corrupt_inception":
        bad.write_bytes(b"PK\x03\x04 not really a zip")
        args += ["--inception", str(bad)]
    elif case == "float_only_inception":
        bad = tmp_path / "float_only.pt"
        torch.jit.save(torch.jit.script(_FloatOnly()), str(bad))
        args += ["--inception", str(bad)]
    elif case == "more_splits_than_samples":
        bad = "--is_splits"
        args += ["--inception", str(extractors["features"]), "--inception_logits", str(extractors["logits"]),
                 "--is_splits", "10"]
    else:
        bad = tmp_path / "ref.npz"
        if case == "reference_without_mu":
            np.savez(bad, sigma=np.eye(16))
        else:
            np.savez(bad, mu=np.zeros(8), sigma=np.eye(8))  # the extractor gives 16-d features
        args += ["--inception", str(extractors["features"]), "--reference", str(bad)]
    assert _main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(bad) in err, err
    assert not (tmp_path / "o" / "fid.json").exists()


def test_inception_score_parts_are_those_torchmetrics_makes():
    for n, splits in [(50_000, 10), (25, 10), (12, 10), (12, 5), (4, 4), (7, 1)]:
        assert inception_score_parts(n, splits) == len(torch.arange(n).chunk(splits)), (n, splits)
    assert inception_score_parts(50_000, 10) == 10 and inception_score_parts(25, 10) == 9


def _original_inception_score(logits: np.ndarray, splits: int) -> tuple[float, float]:
    """The original evaluator's formula (Salimans et al.), in numpy: contiguous parts, softmax, per part
    exp(mean over its samples of sum_y p(y|x) (log p(y|x) - log p(y))), mean and np.std over the parts."""
    e = np.exp(logits - logits.max(1, keepdims=True))
    preds = e / e.sum(1, keepdims=True)
    size = -(-len(preds) // splits)
    scores = []
    for i in range(0, len(preds), size):
        part = preds[i:i + size]
        kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_is_the_original_evaluators_on_the_samples_in_order():
    """(torchmetrics' InceptionScore, used until 2026-12-06, shuffles the samples before it splits them: its
    mean was not the evaluator's on the same logits.)"""
    from torchmetrics.image.inception import InceptionScore

    from radar_train.inference.fid import inception_score

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=g, dtype=torch.float64) * 3
    for splits in (1, 3, 5, 10):
        mean, std = _original_inception_score(logits.numpy(), splits)
        got = inception_score(logits.float(), splits)
        assert got["mean"] == pytest.approx(mean, rel=1e-6) and got["std"] == pytest.approx(std, rel=1e-5, abs=1e-9)
    tm = InceptionScore(feature=torch.nn.Identity(), splits=1)  # one part: its shuffle changes nothing
    tm.update(logits.float())
    assert inception_score(logits.float(), 1)["mean"] == pytest.approx(float(tm.compute()[0]), rel=1e-5)
    # half the samples certain of class 0, then half of class 1: each of 2 parts in order holds one class, whose
    # marginal is itself (IS 1); parts of a shuffled order hold both (IS near 2)
    ordered = torch.cat([torch.tensor([[30.0, 0.0]]).expand(20, 2), torch.tensor([[0.0, 30.0]]).expand(20, 2)])
    assert inception_score(ordered, 2) == pytest.approx({"mean": 1.0, "std": 0.0}, abs=1e-9)
    assert inception_score(ordered, 1)["mean"] == pytest.approx(2.0, rel=1e-9)


def test_official_noise_is_reproducible_at_the_same_batch_size_and_the_note_says_so(extractors):
    """sampling.noise official: each batch's generator is seeded with its first sample's seed, not drawn from
    the global RNG; the numbers repeat under another global seed, and change with the batch size."""
    from radar_train.config import AccelArgs, ModelArgs, SamplingConfig
    from radar_train.inference import PipelineArgs, RadarPipeline

    pipe = RadarPipeline.from_config(PipelineArgs(model=ModelArgs("tiny"), accel=AccelArgs("fastvar"),
                                                  sampling=SamplingConfig(top_k=64, noise="official"), device="cpu"))
    feats = load_inception(str(extractors["features"]))
    runs = []
    for global_seed, batch_size in ((1000, 4), (1001, 4), (1000, 8)):
        torch.manual_seed(global_seed)
        runs.append(evaluate_generation(pipe, feats, num_samples=8, batch_size=batch_size))
    assert runs[0]["fid_vs_vanilla"] == runs[1]["fid_vs_vanilla"]
    assert runs[0]["fid_vs_vanilla"] != runs[2]["fid_vs_vanilla"]  # a sample depends on its batch
    note = [n for n in runs[0]["notes"] if "sampling.noise" in n]
    assert len(note) == 1 and "reproducible at the same --batch_size" in note[0]
    assert "depends on the batch" in note[0] and "global RNG" not in note[0] and "not reproducible" not in note[0]


def test_cli_refuses_one_sample_before_reading_the_reference_or_loading_anything(extractors, tmp_path, capsys,
                                                                                  monkeypatch):
    import radar_train.inference.fid as fid_module
    from radar_train.inference import RadarPipeline

    def too_late(*a, **k):
        raise AssertionError("--num_samples 1 must be refused before the extractors, reference and model load")

    for name in ("load_inception", "reference_stats"):
        monkeypatch.setattr(fid_module, name, too_late)
    monkeypatch.setattr(RadarPipeline, "from_config", too_late)
    refdir = tmp_path / "real"
    refdir.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(refdir / "0.png")
    args = ["--model.preset", "tiny", "--device", "cpu", "--num_samples", "1", "--inception",
            str(extractors["features"]), "--reference", str(refdir), "--output", str(tmp_path / "o")]
    assert _main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --num_samples must be >= 2, got 1", err
    assert not (tmp_path / "o").exists()


def test_save_npz_writes_each_runs_samples_for_the_guided_diffusion_evaluator(extractors, tmp_path, capsys):
    """--save_npz: samples_<run>.npz with arr_0 uint8 (N, H, W, 3), sample i at row i (class i mod num_classes,
    seed base_seed + i), the same images the FID is computed from; the extractor is optional then."""
    from radar_train.config import AccelArgs, ModelArgs, SamplingConfig
    from radar_train.inference import PipelineArgs, RadarPipeline

    out = tmp_path / "fid"
    common = ["--config", str(ROOT / "configs/generate/tiny.yaml"), "--device", "cpu", "--num_samples", "7",
              "--batch_size", "3", "--base_seed", "11", "--save_npz", "true"]
    assert _main(common + ["--output", str(out)]) == 0, capsys.readouterr().err  # no --inception: samples only
    r = json.loads((out / "fid.json").read_text())
    assert r["samples_npz"] == {"vanilla": "samples_vanilla.npz", "accelerated": "samples_accelerated.npz"}
    assert r["fid_vs_reference"] is None and r["fid_vs_vanilla"] is None and r["feature_dim"] is None
    assert sorted(p.name for p in out.iterdir()) == ["fid.json", "fid.md", "samples_accelerated.npz",
                                                     "samples_vanilla.npz"]
    arrays = {run: np.load(out / f"samples_{run}.npz") for run in ("vanilla", "accelerated")}
    assert all(list(a.keys()) == ["arr_0"] for a in arrays.values())
    van, acc = arrays["vanilla"]["arr_0"], arrays["accelerated"]["arr_0"]
    assert van.dtype == np.uint8 and van.shape == (7, 32, 32, 3) and acc.shape == van.shape
    assert not np.array_equal(van, acc)
    # the rows are the samples: one drawn on its own (batch of one, per-sample noise) is row i
    pipe = RadarPipeline.from_config(PipelineArgs(ModelArgs(preset="tiny"), AccelArgs("fastvar"),
                                                  SamplingConfig(cfg=1.5, top_k=64, top_p=0.96), device="cpu"))
    num_classes = int(pipe.var.num_classes)
    for i in (0, 5):
        images = pipe.compare([i % num_classes], [11 + i])
        for run, want in (("vanilla", van), ("accelerated", acc)):
            got = images[run][0].permute(1, 2, 0).numpy()
            assert np.abs(got.astype(int) - want[i].astype(int)).max() <= 1, (run, i)  # (batch float round-off)
    # with the extractor, the FID is of the same images
    out2 = tmp_path / "fid2"
    assert _main(common + ["--inception", str(extractors["features"]), "--output", str(out2)]) == 0
    feats = load_inception(str(extractors["features"]))
    stats = {run: GaussianStats() for run in ("vanilla", "accelerated")}
    for run in stats:
        a = np.load(out2 / f"samples_{run}.npz")["arr_0"]
        stats[run].update(feats(torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()))
    fid = frechet_distance(stats["accelerated"].mu, stats["accelerated"].sigma, stats["vanilla"].mu,
                           stats["vanilla"].sigma)
    assert json.loads((out2 / "fid.json").read_text())["fid_vs_vanilla"]["accelerated"] == pytest.approx(fid, rel=1e-6)


def test_nothing_to_measure_or_write_and_a_reference_without_an_extractor_are_refused(tmp_path, capsys):
    args = ["--model.preset", "tiny", "--device", "cpu", "--num_samples", "4", "--output", str(tmp_path / "o")]
    assert _main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "--save_npz" in err and "--inception" in err
    assert _main(args + ["--save_npz", "true", "--reference", str(tmp_path / "ref.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--reference" in err and "needs --inception" in err
    assert not (tmp_path / "o").exists()


def test_an_interrupted_run_keeps_its_progress_and_an_earlier_runs_npz(tmp_path, monkeypatch, capsys):
    """Ctrl-C in the second batch: one line saying what is saved, status 130; the earlier run's samples file is
    untouched (it is replaced only when this run's report is in place), and the same command goes on."""
    from radar_train.inference.fid_progress import FidProgress

    out = tmp_path / "fid"
    out.mkdir()
    (out / "samples_vanilla.npz").write_bytes(b"an earlier run's")
    args = ["--config", str(ROOT / "configs/generate/tiny.yaml"), "--device", "cpu", "--num_samples", "6",
            "--batch_size", "3", "--save_npz", "true", "--output", str(out)]
    assert _main(args) == 2  # refused without --overwrite, naming the file
    assert "samples_vanilla.npz" in capsys.readouterr().err
    real = FidProgress.write_images
    calls = []

    def dies_in_the_second_batch(self, run, imgs):
        calls.append(run)
        if len(calls) > 2:
            raise KeyboardInterrupt
        real(self, run, imgs)

    monkeypatch.setattr(FidProgress, "write_images", dies_in_the_second_batch)
    assert _main(args + ["--overwrite", "true"]) == 130  # Ctrl-C: one line, status 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"radar-fid: interrupted; 3 of 6 samples are saved in {out / 'fid-progress'}: run the same " \
                   f"command to go on from there"
    assert sorted(p.name for p in out.iterdir()) == ["fid-progress", "samples_vanilla.npz"]
    assert (out / "samples_vanilla.npz").read_bytes() == b"an earlier run's"
    monkeypatch.setattr(FidProgress, "write_images", real)
    assert _main(args + ["--overwrite", "true"]) == 0
    assert "going on from sample 3 of 6" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["fid.json", "fid.md", "samples_accelerated.npz",
                                                     "samples_vanilla.npz"]
    assert np.load(out / "samples_vanilla.npz")["arr_0"].shape == (6, 32, 32, 3)
    assert json.loads((out / "fid.json").read_text())["protocol"]["resumed_at"] == [3]


def test_overwrite_removes_an_earlier_runs_samples_that_this_run_does_not_write(tmp_path, capsys):
    """A run without an adapter into the folder of one with an adapter: the earlier samples_accelerated_adapter.npz
    (needs --overwrite, and then goes) must not stand beside this run's files as if it were part of it."""
    out = tmp_path / "fid"
    out.mkdir()
    (out / "samples_accelerated_adapter.npz").write_bytes(b"an earlier run's adapter samples")
    args = ["--config", str(ROOT / "configs/generate/tiny.yaml"), "--device", "cpu", "--num_samples", "2",
            "--batch_size", "2", "--output", str(out)]
    assert _main(args + ["--save_npz", "true"]) == 2  # refused without --overwrite, naming the file
    assert "samples_accelerated_adapter.npz" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["samples_accelerated_adapter.npz"]
    assert _main(args + ["--save_npz", "true", "--overwrite", "true"]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["fid.json", "fid.md", "samples_accelerated.npz",
                                                     "samples_vanilla.npz"]


def test_a_batch_adds_to_the_tally_on_the_device_of_its_features():
    """The sums of the FID statistics and the IS logits stay where the Inception networks ran: a copy to the CPU after
    every batch waited for the device (the host could not queue the next batch meanwhile). A device that cannot
    copy to the CPU (meta) shows it; a tally resumed from the CPU moves there once; stats and merges are on the CPU."""
    from radar_train.inference.fid import Tally, _advance, merge_tallies

    f, lg = torch.randn(4, 8), torch.randn(4, 10)
    t = _advance(Tally(), {"vanilla": f.to("meta")}, {"vanilla": lg.to("meta")}, 4)
    (s, outer), = t.sums.values()
    assert (s.device.type, s.dtype, tuple(s.shape), outer.device.type, tuple(outer.shape)) == \
        ("meta", torch.float64, (8,), "meta", (8, 8))
    assert t.logits["vanilla"][0].device.type == "meta" and t.done == 4
    resumed = _advance(Tally(4, {"vanilla": (f.double().sum(0), f.double().T @ f.double())}), {"vanilla": f.to("meta")},
                       {}, 4)
    assert resumed.sums["vanilla"][1].device.type == "meta" and resumed.done == 8
    # on the CPU: the sums of the two batches, as one batch of both gives them
    a = _advance(_advance(Tally(), {"vanilla": f}, {"vanilla": lg}, 4), {"vanilla": -f}, {"vanilla": lg}, 4)
    both = torch.cat([f, -f]).double()
    torch.testing.assert_close(a.stats("vanilla").sigma, GaussianStats.from_sums(8, both.sum(0), both.T @ both).sigma)
    merged = merge_tallies([a, a])
    assert merged.done == 16 and merged.sums["vanilla"][0].device.type == "cpu" and len(merged.logits["vanilla"]) == 4
    # a reference folder's statistics too (their sums where the features are; mu and sigma on the CPU)
    ref = GaussianStats()
    ref.update(f.to("meta"))
    assert ref._sum.device.type == "meta" and ref.n == 4
    cpu = GaussianStats()
    cpu.update(f)
    cpu.update(-f)
    torch.testing.assert_close(cpu.sigma, a.stats("vanilla").sigma)


def _stripes(width: int, height: int) -> Image.Image:
    """Black, white, black: three vertical bands of equal width."""
    a = np.zeros((height, width, 3), dtype=np.uint8)
    a[:, width // 3: 2 * width // 3] = 255
    return Image.fromarray(a)


def test_center_crop_resize_keeps_the_centre_of_the_short_side_scaled_image():
    """600 x 300 to 64: scaled to 128 x 64 (white columns 42.7-85.3), the centre 64 columns cropped (32-96), so
    white from about column 11 to 53 of the crop. 1200 x 600 is halved once first (box), which gives exactly the
    600 x 300 image, so the same result."""
    from radar_train.images import center_crop_resize

    out = np.asarray(center_crop_resize(_stripes(600, 300), 64))
    assert out.shape == (64, 64, 3)
    row = out[32, :, 0].astype(int)
    assert (row[:9] < 30).all() and (row[14:51] > 225).all() and (row[56:] < 30).all()
    assert np.array_equal(np.asarray(center_crop_resize(_stripes(1200, 600), 64)), out)
    tall = np.asarray(center_crop_resize(_stripes(90, 300), 30))  # the short side is the width: nothing cropped there
    assert tall.shape == (30, 30, 3) and tall[15, 15, 0] > 225 and tall[15, 2, 0] < 30


def test_a_reference_folder_is_brought_to_the_generators_size(tmp_path):
    """The extractor sees every reference image at the generator's size, as it sees the samples (a folder of
    ImageNet photos fed at their own sizes gave other statistics); one of that size already is read as it is."""
    from radar_train.images import center_crop_resize, load_rgb

    seen = []

    class MeanColour(nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[1:]))
            return x.double().mean(dim=(2, 3))

    rng = np.random.default_rng(0)
    folder = tmp_path / "real"
    folder.mkdir()
    images = {"a.png": (32, 32), "b.png": (60, 40), "c.jpg": (130, 70), "d.png": (40, 90)}
    for name, (w, h) in images.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name, quality=95)
    stats = reference_stats(str(folder), MeanColour(), batch_size=2, image_size=32)
    assert set(seen) == {(3, 32, 32)} and stats.n == 4
    want = torch.stack([torch.from_numpy(np.array(center_crop_resize(Image.open(folder / n).convert("RGB"), 32)))
                        .permute(2, 0, 1).double().mean(dim=(1, 2)) for n in sorted(images)])
    torch.testing.assert_close(stats.mu, want.mean(0))
    assert torch.equal(load_rgb(folder / "a.png", 32), load_rgb(folder / "a.png"))
