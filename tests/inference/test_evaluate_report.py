"""radar-eval's report when the gap is undefined: strict JSON, and the markdown says why."""
import errno
import json

import pytest
import torch

from radar_train.inference import evaluate
from radar_train.inference.evaluate import _finite, markdown_table
from radar_train.train.metrics import RestorationStats


def _report(t: torch.Tensor) -> dict:
    """radar-eval's report of one batch whose accelerated and adapted decodes equal the vanilla one `t`."""
    stats = RestorationStats(torch.device("cpu"))
    stats.update(t, t.clone(), t.clone())  # accelerated == vanilla: MSE(baseline) = 0
    m = stats.compute()
    return {"num_pairs": 2, "shards": [1], "cache": "c", "held_out": True, "psnr_baseline": m["psnr_baseline"],
            "psnr_adapted": m["psnr_student"], "ssim_baseline": m["ssim_baseline"], "ssim_adapted": m["ssim_student"],
            "gap_closed": _finite(m["gap_closed_mse"]), "delta_psnr": m["delta_psnr"], "delta_ssim": m["delta_ssim"]}


def test_an_accelerated_decode_equal_to_the_vanilla_one_gives_no_nan_in_the_report():
    r = _report(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert r["gap_closed"] is None
    json.dumps(r, allow_nan=False)  # what a strict reader accepts
    assert "G_mse = 1 − MSE(adapted)/MSE(baseline): undefined: MSE(baseline) is 0" in markdown_table(r)


def test_a_report_write_that_fails_leaves_the_earlier_pair_or_no_folder(tmp_path, monkeypatch):
    """eval.json and eval.md go in together: a disk that fills while the second is written leaves the earlier
    run's pair byte-identical (not a new eval.json beside an old eval.md), and no folder the call created."""
    r = _report(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    old = tmp_path / "old"
    evaluate.write_report({**r, "num_pairs": 7}, old)
    before = {p.name: p.read_bytes() for p in old.iterdir()}

    def full_disk(_r):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(evaluate, "markdown_table", full_disk)
    for out in (old, tmp_path / "new"):
        with pytest.raises(OSError):
            evaluate.write_report(r, out)
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert not (tmp_path / "new").exists()


def test_radar_eval_lpips_is_the_mean_lpips_of_each_decode_against_the_vanilla_one(trained_run, tmp_path):
    """LPIPS (a local VGG16 file with random weights in torchvision's layout; the heads not given, so
    torchmetrics' copy of the lpips v0.1 heads) of the baseline and the adapted decode against the vanilla decode,
    per pair and averaged, and ΔLPIPS (methods §5.1: the same deltas as for PSNR and SSIM), against a computation
    of its own through RadarPipeline's decoders with that heads file named."""
    from radar_train.cache.reader import PairDataset
    from radar_train.config import AccelArgs, ModelArgs, SamplingConfig
    from radar_train.inference import PipelineArgs, RadarPipeline
    from radar_train.inference.evaluate import LpipsArgs, evaluate_restoration
    from radar_train.train.lpips import LPIPS, load_lpips, shipped_heads

    torch.manual_seed(0)
    ref = LPIPS()
    torch.save({f"features.{k}": v for k, v in ref.features.state_dict().items()}, tmp_path / "vgg16.pth")
    lpips = LpipsArgs(vgg=str(tmp_path / "vgg16.pth"))
    r = evaluate_restoration(str(trained_run["cache"]), str(trained_run["adapter"]), batch_size=5, lpips=lpips)

    pipe = RadarPipeline.from_config(PipelineArgs(model=ModelArgs(), accel=AccelArgs("fastvar"),
                                                  sampling=SamplingConfig(), adapter=str(trained_run["adapter"]),
                                                  merge_adapter=False, device="cpu"))
    lp = load_lpips(lpips.vgg, str(shipped_heads())).eval()
    ds = PairDataset(trained_run["cache"], shards=[4])
    hq = torch.stack([ds[i]["fhat_hq"] for i in range(len(ds))])
    lq = torch.stack([ds[i]["fhat_lq"] for i in range(len(ds))])
    with torch.no_grad():
        t, q, s = pipe.decode(hq, adapter=False), pipe.decode(lq, adapter=False), pipe.decode(lq, adapter=True)
        base, adapted = (lp(x * 2 - 1, t * 2 - 1).double().mean().item() for x in (q, s))
    assert r["num_pairs"] == len(ds) == 16 and r["shards"] == [4]
    assert abs(r["lpips_baseline"] - base) < 1e-5 and abs(r["lpips_adapted"] - adapted) < 1e-5
    assert r["delta_lpips"] == r["lpips_adapted"] - r["lpips_baseline"]
    assert r["lpips_baseline"] > 0 and r["delta_lpips"] != 0
    assert f"ΔLPIPS: {r['delta_lpips']:+.4f}" in markdown_table(r)


def test_radar_eval_refuses_a_shard_whose_data_is_not_what_was_written(trained_run, tmp_path):
    """A chunk file gone (an interrupted copy): Zarr reads it as zeros, and radar-eval measured those zeros as
    latents (PSNR 3.5 dB lower, exit 0). It is one error line naming the shard, before anything is written."""
    import shutil
    import subprocess
    import sys

    cache = tmp_path / "cache"
    shutil.copytree(trained_run["cache"], cache)
    chunks = sorted(p for p in (cache / "shard-00004.zarr" / "fhat_lq").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert chunks
    chunks[-1].unlink()
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, "-m", "radar_train.cli.eval", "--cache", str(cache), "--adapter",
                        str(trained_run["adapter"]), "--output", str(out), "--device", "cpu"],
                       capture_output=True, text=True, timeout=300)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stderr[-2000:]
    assert err[0].startswith("error: ") and "shard-00004.zarr" in err[0] and "fhat_lq differs from its stored checksum" in err[0]
    assert not out.exists()


def test_radar_eval_bins_the_pairs_by_latent_distance(trained_run):
    """methods §5.1's diagnostic: the pairs sorted by d = ‖f_HQ − f_LQ‖/‖f_HQ‖ in equal-count bins (16 pairs in 3:
    6, 5, 5), each with the PSNR of both decodes and the gap closed over the bin, against a computation of its own
    through RadarPipeline's decoders; the bins add up to the whole."""
    import numpy as np

    from radar_train.cache.reader import PairDataset
    from radar_train.config import AccelArgs, ModelArgs, SamplingConfig
    from radar_train.inference import PipelineArgs, RadarPipeline
    from radar_train.inference.evaluate import evaluate_restoration

    r = evaluate_restoration(str(trained_run["cache"]), str(trained_run["adapter"]), batch_size=5, distance_bins=3)
    pipe = RadarPipeline.from_config(PipelineArgs(model=ModelArgs(), accel=AccelArgs("fastvar"),
                                                  sampling=SamplingConfig(), adapter=str(trained_run["adapter"]),
                                                  merge_adapter=False, device="cpu"))
    ds = PairDataset(trained_run["cache"], shards=[4])
    hq = torch.stack([ds[i]["fhat_hq"] for i in range(len(ds))])
    lq = torch.stack([ds[i]["fhat_lq"] for i in range(len(ds))])
    d = [float(torch.linalg.vector_norm(a.double() - b.double()) / torch.linalg.vector_norm(a.double()))
         for a, b in zip(hq, lq)]
    with torch.no_grad():
        t, q, s = pipe.decode(hq, adapter=False), pipe.decode(lq, adapter=False), pipe.decode(lq, adapter=True)
    mse_q = [float(((x - y) ** 2).mean()) for x, y in zip(q, t)]
    mse_s = [float(((x - y) ** 2).mean()) for x, y in zip(s, t)]
    order = sorted(range(len(d)), key=lambda i: d[i])
    bins = r["by_latent_distance"]
    assert [b["num_pairs"] for b in bins] == [6, 5, 5]
    start = 0
    for b in bins:
        idx = order[start:start + b["num_pairs"]]
        start += b["num_pairs"]
        assert b["d_min"] == pytest.approx(d[idx[0]], rel=1e-6) and b["d_max"] == pytest.approx(d[idx[-1]], rel=1e-6)
        psnr_q = np.mean([10 * np.log10(1 / mse_q[i]) for i in idx])
        psnr_s = np.mean([10 * np.log10(1 / mse_s[i]) for i in idx])
        assert b["psnr_baseline"] == pytest.approx(psnr_q, abs=1e-3) and b["psnr_adapted"] == pytest.approx(psnr_s, abs=1e-3)
        gap = 1 - sum(mse_s[i] for i in idx) / sum(mse_q[i] for i in idx)
        assert b["gap_closed"] == pytest.approx(gap, abs=1e-4)
    assert bins[0]["d_max"] <= bins[1]["d_min"] and bins[1]["d_max"] <= bins[2]["d_min"]
    assert sum(b["psnr_adapted"] * b["num_pairs"] for b in bins) / 16 == pytest.approx(r["psnr_adapted"], abs=1e-9)
    assert r["latent_distance"]["max"] == pytest.approx(max(d), rel=1e-6)
    md = markdown_table(r)
    assert "By latent distance (3 bins of equal pair count, d ascending):" in md
    assert f"| {bins[2]['d_min']:.4f} – {bins[2]['d_max']:.4f} | 5 |" in md
    assert "by_latent_distance" not in evaluate_restoration(str(trained_run["cache"]), str(trained_run["adapter"]),
                                                            batch_size=8, distance_bins=0)


def test_radar_eval_reports_per_scale_token_agreement_of_the_evaluated_pairs(trained_run):
    """methods §5.1's second diagnostic: per scale, the share of LQ tokens equal to HQ's over the evaluated
    shard, against the shard's stored indices (FastVAR: the early scales agree fully, a pruned one does not)."""
    import json

    import numpy as np
    import zarr

    from radar_train.inference.evaluate import evaluate_restoration

    r = evaluate_restoration(str(trained_run["cache"]), str(trained_run["adapter"]), batch_size=8)
    patch_nums = json.loads((trained_run["cache"] / "manifest.json").read_text())["patch_nums"]
    g = zarr.open_group(str(trained_run["cache"] / "shard-00004.zarr"), mode="r")
    hq, lq = np.asarray(g["indices_hq"][:]), np.asarray(g["indices_lq"][:])
    want, off = {}, 0
    for pn in patch_nums:
        want[str(pn)] = float((hq[:, off:off + pn * pn] == lq[:, off:off + pn * pn]).mean())
        off += pn * pn
    assert r["token_agreement"] == want
    assert want[str(patch_nums[0])] == 1.0 and min(want.values()) < 1.0
    assert "- LQ tokens equal to HQ, per scale " + ", ".join(map(str, patch_nums)) in markdown_table(r)
